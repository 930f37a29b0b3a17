//! Shared helpers for the integration tests: start a gateway on 127.0.0.1:0, build
//! `header` values, open WebSockets, speak the protocol and publish over HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub use eventgate::units::Seconds;
pub use eventgate::Config;
use eventgate_protocol::header::{api_key, encode_base64};

pub const STACK_ID: &str = "3f1c6a1e-5b0e-4a6a-9d51-7e1f2b3c4d5e";
pub const CLIENT_ID: &str = "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f";

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test listens to prove that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn ms(millis: u64) -> Seconds {
    Seconds(Duration::from_millis(millis))
}

/// A dev-mode configuration with a fixed stack id.
/// An admin token for servers whose tests read [`Server::totals`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn dev_config() -> Config {
    Config {
        dev: true,
        stack_id: Some(STACK_ID.into()),
        shutdown_grace: ms(2000),
        ..Default::default()
    }
}

pub fn dev_key() -> String {
    api_key(STACK_ID, None)
}

/// A running gateway.
pub struct Server {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub handle: Option<JoinHandle<Result<(), eventgate::RunError>>>,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let token = CancellationToken::new();
        let handle = tokio::spawn(eventgate::run(config, listener, token.clone()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Server {
            addr,
            token,
            handle: Some(handle),
            http,
        }
    }

    pub async fn dev() -> Server {
        Server::start(dev_config()).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `header` value a dev client of this server sends.
    pub fn dev_header(&self) -> String {
        header(&json!({"Host": "127.0.0.1", "ApiKey": dev_key(), "Id": CLIENT_ID}))
    }

    /// `ws://127.0.0.1:PORT{path}?header=<url-encoded value>`.
    pub fn ws_url_with(&self, path: &str, header_value: &str) -> String {
        format!(
            "ws://{}{path}?header={}",
            self.addr,
            url_encode(header_value)
        )
    }

    pub fn ws_url(&self) -> String {
        self.ws_url_with("/", &self.dev_header())
    }

    /// Opens a dev-mode connection (not yet announced).
    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Opens a dev-mode connection whose socket has a 4 KiB receive buffer, so that the
    /// server's writes stall soon after the client stops reading (not yet announced).
    pub async fn small_buffer_client(&self) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(self.addr).await.expect("connect");
        let request = self.ws_url().into_client_request().expect("request");
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Opens a connection and sends Hello.
    pub async fn announced(&self) -> Client {
        let mut client = self.connect().await;
        client.hello().await;
        client
    }

    /// `POST /events` with a JSON body and the given content type; returns status and body.
    pub async fn post_events(&self, content_type: &str, body: impl Into<String>) -> (u16, Value) {
        let response = self
            .http
            .post(self.http_url("/events"))
            .header("content-type", content_type)
            .body(body.into())
            .send()
            .await
            .expect("POST /events");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {text:?}"));
        (status, value)
    }

    /// `POST /events` of one small event from `source`, with `authorization` when given;
    /// returns status and body.
    pub async fn post_event_as(&self, authorization: Option<&str>, source: &str) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.http_url("/events"))
            .header("content-type", "application/json")
            .body(json!({"source": source, "detail-type": "t", "detail": {}}).to_string());
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("POST /events");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Publishes and asserts that every entry was accepted.
    pub async fn publish(&self, body: &Value) -> Value {
        let (status, reply) = self.post_events("application/json", body.to_string()).await;
        assert_eq!(status, 200, "publish failed: {reply}");
        assert_eq!(reply["FailedEntryCount"], 0, "publish failed: {reply}");
        reply
    }

    /// Publishes one EventBridge event.
    pub async fn publish_event(&self, source: &str, detail_type: &str, detail: Value) -> String {
        let reply = self
            .publish(&json!({"source": source, "detail-type": detail_type, "detail": detail}))
            .await;
        reply["Entries"][0]["EventId"]
            .as_str()
            .expect("EventId")
            .to_owned()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(self.http_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    pub async fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        text
    }

    /// This server's own totals (`GET /admin/api/totals`, with [`ADMIN_TOKEN`]: the server
    /// must be configured with it). Unlike the metrics, which every server in the test
    /// process shares, they count this server's connections and rules only.
    pub async fn totals(&self) -> Value {
        let response = self
            .http
            .get(self.http_url("/admin/api/totals"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /admin/api/totals: {e}"));
        assert_eq!(
            response.status().as_u16(),
            200,
            "admin_token = ADMIN_TOKEN?"
        );
        response.json().await.expect("totals JSON")
    }

    /// Cancels the token and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), eventgate::RunError> {
        self.token.cancel();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("run returns after shutdown")
            .expect("run task did not panic")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A masked client text frame (payloads under 126 bytes).
pub fn client_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Base64 of a JSON document (standard alphabet, padded).
pub fn header(doc: &Value) -> String {
    encode_base64(doc.to_string().as_bytes())
}

/// Percent-encodes everything except unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What an upgrade attempt ended with.
#[derive(Debug)]
pub enum Upgrade {
    Accepted(Box<Ws>),
    Refused { status: u16, body: String },
}

/// Attempts an upgrade with a URL or a request built by the caller.
pub async fn try_upgrade<R: IntoClientRequest + Unpin>(request: R) -> Upgrade {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade answered in time")
    {
        Ok((ws, _)) => Upgrade::Accepted(Box::new(ws)),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Upgrade::Refused { status, body }
        }
        Err(other) => panic!("upgrade failed with a non-HTTP error: {other}"),
    }
}

/// Asserts an upgrade is refused with `status` and a JSON body `{"error": "..."}`;
/// returns the error text.
pub async fn expect_refused<R: IntoClientRequest + Unpin>(request: R, status: u16) -> String {
    match try_upgrade(request).await {
        Upgrade::Accepted(_) => panic!("upgrade accepted, expected {status}"),
        Upgrade::Refused { status: got, body } => {
            assert_eq!(got, status, "status (body {body})");
            let value: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {body:?}"));
            let error = value["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no \"error\" string in {body}"));
            assert!(!error.is_empty());
            error.to_owned()
        }
    }
}

pub async fn expect_accepted<R: IntoClientRequest + Unpin>(request: R) -> Client {
    match try_upgrade(request).await {
        Upgrade::Accepted(ws) => Client { ws: *ws },
        Upgrade::Refused { status, body } => panic!("upgrade refused: {status} {body}"),
    }
}

/// Something read from a WebSocket.
#[derive(Debug)]
pub enum Received {
    Text(Value),
    Binary,
    Closed(Option<(u16, String)>),
}

/// A protocol client on top of tokio-tungstenite.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        expect_accepted(url).await
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send text frame");
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    /// Next text frame, close or end within `timeout`; `None` on timeout. Pings and pongs
    /// are skipped (tungstenite answers pings itself).
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(frame) => frame,
            };
            return Some(match frame {
                None => Received::Closed(None),
                Some(Err(_)) => Received::Closed(None),
                Some(Ok(Message::Text(text))) => Received::Text(
                    serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {text}")),
                ),
                Some(Ok(Message::Binary(_))) => Received::Binary,
                Some(Ok(Message::Close(frame))) => {
                    Received::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// Next text message, skipping KeepAlives; panics on anything else.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_within(WAIT).await {
                Some(Received::Text(value)) if value["Action"] == "KeepAlive" => continue,
                Some(Received::Text(value)) => return value,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next non-KeepAlive text message within `timeout`, if any.
    pub async fn try_recv(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                None => return None,
                Some(Received::Text(value)) if value["Action"] == "KeepAlive" => continue,
                Some(Received::Text(value)) => return Some(value),
                Some(other) => panic!("expected a text message or nothing, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame (skipping any text before it).
    pub async fn expect_close(&mut self) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                None => panic!("connection was not closed in time"),
                Some(Received::Closed(frame)) => return frame,
                Some(_) => continue,
            }
        }
    }

    /// Sends an action and returns its Ack.
    pub async fn request(&mut self, action: &Value) -> Value {
        self.send_json(action).await;
        let ack = self.recv().await;
        assert_eq!(ack["Action"], "Ack", "expected an Ack, got {ack}");
        ack
    }

    pub async fn hello(&mut self) {
        let ack = self
            .request(&json!({"Action": "Hello", "RequestId": "hello"}))
            .await;
        assert_ok(&ack, "hello");
    }

    /// Subscribes with the pattern double-encoded (the LambdaSharp way); returns the Ack.
    pub async fn subscribe_ack(&mut self, rule: &str, pattern: &Value) -> Value {
        let request_id = format!("sub-{rule}");
        self.request(&json!({
            "Action": "Subscribe",
            "RequestId": request_id,
            "Rule": rule,
            "Pattern": pattern.to_string(),
        }))
        .await
    }

    pub async fn subscribe(&mut self, rule: &str, pattern: &Value) {
        let ack = self.subscribe_ack(rule, pattern).await;
        assert_ok(&ack, &format!("sub-{rule}"));
    }

    pub async fn unsubscribe(&mut self, rule: &str) {
        let request_id = format!("unsub-{rule}");
        let ack = self
            .request(&json!({"Action": "Unsubscribe", "RequestId": request_id, "Rule": rule}))
            .await;
        assert_ok(&ack, &request_id);
    }

    /// The next Event notification (KeepAlives skipped), with its `Event` string parsed.
    pub async fn next_event(&mut self) -> (Value, Value) {
        let message = self.recv().await;
        assert_eq!(
            message["Action"], "Event",
            "expected an Event, got {message}"
        );
        let event: Value = serde_json::from_str(
            message["Event"]
                .as_str()
                .unwrap_or_else(|| panic!("Event is not a string in {message}")),
        )
        .expect("Event holds JSON");
        (message, event)
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

pub fn assert_ok(ack: &Value, request_id: &str) {
    assert_eq!(
        ack,
        &json!({"Action": "Ack", "RequestId": request_id, "Status": "Ok"}),
        "expected Ok"
    );
}

/// Asserts an error Ack for `request_id` whose message starts with `prefix`; returns it.
pub fn assert_error(ack: &Value, request_id: Option<&str>, prefix: &str) -> String {
    assert_eq!(ack["Action"], "Ack", "{ack}");
    assert_eq!(ack["Status"], "Error", "{ack}");
    match request_id {
        Some(id) => assert_eq!(ack["RequestId"], id, "{ack}"),
        None => assert!(
            ack.get("RequestId").is_none(),
            "no RequestId expected: {ack}"
        ),
    }
    let message = ack["Message"].as_str().expect("Message").to_owned();
    assert!(
        message.starts_with(prefix),
        "message {message:?} should start with {prefix:?}"
    );
    message
}

/// Value of an unlabelled metric line `name value` (or the sum of its labelled series).
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Runs `check` every `every` until it returns `Ok`, and fails the test with its last `Err`
/// once `within` has passed: the tests' one wait-until-true loop (a node becoming ready, a
/// counter catching up, a table emptying).
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) => assert!(
                tokio::time::Instant::now() < deadline,
                "not within {within:?}: {why}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}
