//! Helpers for the broker source tests: broker reachability (skip loudly, or fail in CI),
//! a gateway with sources configured, and a minimal WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use eventgate::units::Seconds;
use eventgate::Config;
use eventgate_protocol::header::{api_key, encode_base64};

pub const STACK_ID: &str = "9d3c1f5e-7a2b-4c8d-9e0f-1a2b3c4d5e6f";
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker's address for the tests: `host:port` from the environment variable `var`,
/// else `default`. Derefs to `&str` and prints as the address, so it fits `format!`.
pub struct BrokerAddr {
    var: &'static str,
    default: &'static str,
    value: std::sync::OnceLock<String>,
}

impl BrokerAddr {
    pub const fn new(var: &'static str, default: &'static str) -> Self {
        Self {
            var,
            default,
            value: std::sync::OnceLock::new(),
        }
    }

    pub fn as_str(&self) -> &str {
        self.value.get_or_init(|| {
            std::env::var(self.var)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .unwrap_or_else(|| self.default.to_owned())
        })
    }
}

impl std::ops::Deref for BrokerAddr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The brokers the source and cluster tests use (`scripts/test.sh` checks the same ones).
pub static REDIS: BrokerAddr = BrokerAddr::new("EVENTGATE_TEST_REDIS", "127.0.0.1:6379");
pub static RABBITMQ: BrokerAddr = BrokerAddr::new("EVENTGATE_TEST_RABBITMQ", "127.0.0.1:5672");
pub static NATS: BrokerAddr = BrokerAddr::new("EVENTGATE_TEST_NATS", "127.0.0.1:4222");

/// True when the broker answers on `addr`. When it does not: in CI (`CI=true`) the test
/// fails; elsewhere the test is skipped (the caller returns), which is printed and, when
/// `EVENTGATE_TEST_SKIPS` names a file, appended to it as one line so `scripts/test.sh`
/// can show every skip in its summary (the test runner itself reports a skip as a pass).
pub async fn broker_available(kind: &str, addr: &str) -> bool {
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    );
    if reachable {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        panic!("{kind} not reachable at {addr}, and brokers are mandatory in CI (CI=true)");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a broker test")
        .to_owned();
    let line = format!("{test}: {kind} not reachable at {addr}");
    eprintln!("\n*** SKIPPED {line} ***\n");
    if let Some(path) = std::env::var_os("EVENTGATE_TEST_SKIPS") {
        use std::io::Write as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = written {
            panic!(
                "cannot record the skip in {}: {error}",
                path.to_string_lossy()
            );
        }
    }
    false
}

/// True for `YYYY-MM-DDTHH:MM:SSZ`, the one form of every event's `time`.
pub fn whole_seconds_utc(time: &Value) -> bool {
    let Some(text) = time.as_str() else {
        return false;
    };
    let bytes = text.as_bytes();
    bytes.len() == 20
        && bytes[19] == b'Z'
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            10 => *byte == b'T',
            13 | 16 => *byte == b':',
            19 => true,
            _ => byte.is_ascii_digit(),
        })
}

/// `user.view_profile` as SuperMQ publishes it on JetStream (`operation`, base64
/// `metadata`, `occurred_at`), and with the same body to RabbitMQ.
pub const SUPERMQ_USER_VIEW_PROFILE: &str = r#"{"created_at":"2023-10-05T11:59:02.029606Z","id":"97466511-6317-4c98-8d58-7bd78bcaf587","identity":"[email protected]","metadata":"eyJyb2xlIjoiYWRtaW4ifQ==","name":"admin","occurred_at":1696524061363472648,"operation":"user.view_profile","status":"enabled"}"#;

/// A unique suffix for stream, group and consumer names.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A running gateway with the `[[sources]]` of `sources_toml`.
pub struct Gateway {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), eventgate::RunError>>,
}

impl Gateway {
    pub async fn start(sources_toml: &str) -> Gateway {
        let text = format!(
            "dev = true\nstack_id = \"{STACK_ID}\"\nshutdown_grace = \"2s\"\n{sources_toml}"
        );
        let mut config: Config =
            eventgate::config::load(Some(&text), Vec::new(), Vec::new()).expect("config loads");
        config.shutdown_grace = Seconds(Duration::from_secs(2));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let handle = tokio::spawn(eventgate::run(config, listener, token.clone()));
        Gateway {
            addr,
            token,
            handle,
        }
    }

    /// Connects, says Hello and subscribes `pattern` as rule `rule`.
    pub async fn subscriber(&self, rule: &str, pattern: &Value) -> Client {
        let header = json!({"Host": "127.0.0.1", "ApiKey": api_key(STACK_ID, None), "Id": uuid::Uuid::new_v4().to_string()});
        let header = encode_base64(header.to_string().as_bytes())
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let url = format!("ws://{}/?header={header}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        let mut client = Client { ws };
        client
            .request(json!({"Action": "Hello", "RequestId": "hello"}))
            .await;
        client
            .request(json!({
                "Action": "Subscribe",
                "RequestId": "sub",
                "Rule": rule,
                "Pattern": pattern.to_string(),
            }))
            .await;
        client
    }

    pub async fn metrics(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// `POST /events` (dev mode: loopback needs no token); returns the response body.
    pub async fn post_events(&self, body: &Value) -> Value {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
            .post(format!("http://{}/events", self.addr))
            .json(body)
            .send()
            .await
            .expect("POST /events");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("ingest answer")
    }

    /// `GET /readyz`: the status code and the body.
    pub async fn readyz(&self) -> (u16, Value) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
            .get(format!("http://{}/readyz", self.addr))
            .send()
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        (status, response.json().await.expect("readyz body"))
    }

    /// Waits until `/readyz` answers 200 (every source and the backplane up), for [`WAIT`].
    pub async fn wait_ready(&self) {
        crate::common::eventually(WAIT, Duration::from_millis(50), async || {
            match self.readyz().await {
                (200, _) => Ok(()),
                (_, body) => Err(format!("node not ready: {body}")),
            }
        })
        .await
    }

    pub async fn shutdown(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("run returns after shutdown")
            .expect("run did not panic")
            .expect("run ends cleanly");
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Next JSON text frame (KeepAlives skipped), or None after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = tokio::time::timeout(left, self.ws.next()).await.ok()??;
            match message.expect("websocket read") {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("frame is JSON");
                    if value["Action"] == "KeepAlive" {
                        continue;
                    }
                    return Some(value);
                }
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    async fn request(&mut self, action: Value) {
        self.ws
            .send(Message::Text(action.to_string().into()))
            .await
            .expect("send");
        let ack = self.next_within(WAIT).await.expect("an Ack");
        assert_eq!(ack["Action"], "Ack", "{ack}");
        assert_eq!(ack["Status"], "Ok", "{ack}");
    }

    /// The next Event notification's event, parsed.
    pub async fn next_event(&mut self) -> Value {
        let message = self
            .next_within(WAIT)
            .await
            .expect("an event within the wait");
        assert_eq!(message["Action"], "Event", "{message}");
        serde_json::from_str(message["Event"].as_str().expect("Event is a string"))
            .expect("Event holds JSON")
    }
}

/// A TCP proxy in front of a broker that a test can cut and restore, to simulate a
/// network failure: `cut()` drops every live connection and drops new ones on accept
/// until `restore()`.
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    stop: CancellationToken,
}

struct ProxyState {
    cut: bool,
    /// Cancelled by `cut()`: closes the connections opened before it.
    epoch: CancellationToken,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState {
            cut: false,
            epoch: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let upstream = upstream.to_owned();
        let accept_state = state.clone();
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = accept_stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let epoch = {
                    let state = accept_state.lock().expect("proxy state");
                    if state.cut {
                        drop(inbound);
                        continue;
                    }
                    state.epoch.clone()
                };
                let upstream = upstream.clone();
                let stop = accept_stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = epoch.cancelled() => {}
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        TcpProxy { addr, state, stop }
    }

    /// Drops all live connections and every new one until `restore()`.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.cut = true;
        state.epoch.cancel();
        state.epoch = CancellationToken::new();
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.lock().expect("proxy state").cut = false;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
