//! Every HTTP caller is a stranger: attacks on the HTTP side of the gateway over raw TCP and
//! real HTTP against the real server, each with the refusal it must get (status, JSON
//! reason, `Retry-After` / `Allow` / `Connection: close`), a healthy request beside it that
//! still succeeds, and the attacking connections closed. Also the `EVENTGATE_*`
//! environment of a Kubernetes pod, through the binary.

use crate::common;
use crate::sources_common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use eventgate::config::Limits;

const TOKEN: &str = "ingest-token-1";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A dev-mode server with `limits`.
async fn dev_with(limits: Limits) -> Server {
    Server::start(Config {
        limits,
        ..dev_config()
    })
    .await
}

/// A production-like configuration: keys need an app version, ingest needs a token.
fn production_config() -> Config {
    Config {
        dev: false,
        stack_id: Some(STACK_ID.into()),
        app_version_ids: vec!["v1".into()],
        ingest_tokens: vec![TOKEN.into()],
        shutdown_grace: ms(2000),
        ..Default::default()
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON, and the message under `key` (`"error"`, or `"Error"` for
    /// `/test-pattern`), which must be a non-empty string.
    fn reason(&self, key: &str) -> String {
        let value: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"));
        let reason = value[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key:?} string in {self:?}"));
        assert!(!reason.is_empty());
        reason.to_owned()
    }
}

/// A raw connection to the server.
struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Conn {
    async fn open(server: &Server) -> Conn {
        Conn {
            stream: TcpStream::connect(server.addr).await.expect("connect"),
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .await
            .expect("write to the server");
    }

    /// Reads more bytes; false when the server closed the connection.
    async fn fill(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(within, self.stream.read(&mut chunk))
            .await
            .expect("the server answered in time");
        match read {
            Ok(0) | Err(_) => false,
            Ok(read) => {
                self.buffer.extend_from_slice(&chunk[..read]);
                true
            }
        }
    }

    /// The next response (interim 1xx ones included), within `within`.
    async fn response_within(&mut self, within: Duration) -> Raw {
        let deadline = tokio::time::Instant::now() + within;
        let head_end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                self.fill(left).await,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        response
            .parse(&self.buffer[..head_end])
            .expect("a valid response head");
        let status = response.code.expect("a status");
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        self.buffer.drain(..head_end);
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        while self.buffer.len() < length {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(self.fill(left).await, "closed inside a response body");
        }
        let body = String::from_utf8_lossy(&self.buffer[..length]).into_owned();
        self.buffer.drain(..length);
        Raw {
            status,
            headers,
            body,
        }
    }

    async fn response(&mut self) -> Raw {
        self.response_within(WAIT).await
    }

    /// The final response, skipping interim ones.
    async fn final_response(&mut self) -> Raw {
        loop {
            let response = self.response().await;
            if response.status >= 200 {
                return response;
            }
        }
    }

    /// Asserts the server closes the connection (whatever bytes come first).
    async fn expect_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.fill(left).await {
                return;
            }
        }
    }
}

/// A request head for `POST path` on `server` with `extra` header lines.
fn post_head(server: &Server, path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{extra}\r\n",
        server.addr
    )
}

/// The target (`/?header=...`) of a dev client's upgrade.
fn upgrade_target(server: &Server) -> String {
    let url = server.ws_url();
    url[url.find("/?").expect("a path")..].to_owned()
}

/// An upgrade request for `/` whose header lines are exactly `lines` (Host included or not)
/// plus the WebSocket ones.
fn upgrade_with(server: &Server, lines: impl AsRef<[u8]>) -> Vec<u8> {
    let mut request = format!("GET {} HTTP/1.1\r\n", upgrade_target(server)).into_bytes();
    request.extend_from_slice(lines.as_ref());
    request.extend_from_slice(
        format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    request
}

fn host_line(server: &Server) -> String {
    format!("Host: {}\r\n", server.addr)
}

async fn post_test_pattern(
    server: &Server,
    authorization: Option<&str>,
    body: impl Into<String>,
) -> (u16, Value) {
    let mut request = server
        .http
        .post(server.http_url("/test-pattern"))
        .header("content-type", "application/json")
        .body(body.into());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("POST /test-pattern");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn pattern_request() -> String {
    json!({"EventPattern": {"source": ["orders"]}, "Event": {"source": "orders"}}).to_string()
}

/// `POST /events` of one small event with `authorization`; returns the status.
async fn publish_with(server: &Server, authorization: Option<&str>) -> u16 {
    server.post_event_as(authorization, "healthy").await.0
}

/// A POST to `path` declaring a huge body and sending none gets 413 (its JSON `key` naming
/// `limit`) and the connection closed.
async fn expect_413_unread(server: &Server, path: &str, key: &str, limit: &str) {
    let mut conn = Conn::open(server).await;
    conn.send(post_head(server, path, "Content-Length: 99999999999\r\n"))
        .await;
    let refused = conn.final_response().await;
    assert_eq!(refused.status, 413, "{path}: {refused:?}");
    assert!(refused.reason(key).contains(limit), "{path}: {refused:?}");
    assert_eq!(refused.header("connection"), Some("close"));
    conn.expect_closed().await;
}

fn metric_with_label(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn test_pattern_needs_an_ingest_token_outside_dev_mode() {
    let server = Server::start(production_config()).await;
    let (status, body) = post_test_pattern(&server, None, pattern_request()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["Error"].as_str().is_some_and(|e| e.contains("Bearer")));
    let (status, body) =
        post_test_pattern(&server, Some("Bearer not-the-token"), pattern_request()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["Error"].as_str().is_some_and(|e| !e.is_empty()));
    // RFC 9110 §11.1: the scheme is case-insensitive.
    for scheme in ["Bearer", "BEARER", "bearer"] {
        let authorization = format!("{scheme} {TOKEN}");
        let (status, body) =
            post_test_pattern(&server, Some(&authorization), pattern_request()).await;
        assert_eq!((status, body), (200, json!({"Result": true})), "{scheme}");
        assert_eq!(publish_with(&server, Some(&authorization)).await, 200);
    }
    let metrics = server.metrics().await;
    assert!(
        metric_with_label(
            &metrics,
            "eventgate_test_pattern_errors_total",
            "unauthorized"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn test_pattern_can_be_turned_off_or_opened_deliberately() {
    let off = Server::start(Config {
        test_pattern: eventgate::config::TestPatternAccess::Off,
        ..production_config()
    })
    .await;
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = post_test_pattern(&off, Some(&bearer), pattern_request()).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(publish_with(&off, Some(&bearer)).await, 200);

    let open = Server::start(Config {
        test_pattern: eventgate::config::TestPatternAccess::Open,
        ..production_config()
    })
    .await;
    let (status, body) = post_test_pattern(&open, None, pattern_request()).await;
    assert_eq!((status, body), (200, json!({"Result": true})));
    // Opening the tester opens nothing else.
    assert_eq!(publish_with(&open, None).await, 401);
}

#[tokio::test]
async fn test_pattern_bodies_and_events_are_bounded() {
    let server = dev_with(Limits {
        max_test_pattern_body_bytes: 2048,
        max_event_bytes: 512,
        body_timeout: ms(60_000),
        ..Default::default()
    })
    .await;
    let big = "x".repeat(3000);
    let body = json!({"EventPattern": {"source": ["a"]}, "Event": {"source": big}}).to_string();
    let (status, reply) = post_test_pattern(&server, None, body).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply["Error"].as_str().is_some_and(|e| e.contains("2048")));

    let event = json!({"source": "x".repeat(600)});
    let body = json!({"EventPattern": {"source": ["a"]}, "Event": event}).to_string();
    let (status, reply) = post_test_pattern(&server, None, body).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply["Error"]
        .as_str()
        .is_some_and(|e| e.contains("max_event_bytes")));
    // The same event as a string holding JSON.
    let body = json!({"EventPattern": {"source": ["a"]}, "Event": event.to_string()}).to_string();
    assert_eq!(post_test_pattern(&server, None, body).await.0, 413);

    // A huge declared length is refused before any of the body is sent.
    expect_413_unread(&server, "/test-pattern", "Error", "2048").await;

    let (status, reply) = post_test_pattern(&server, None, pattern_request()).await;
    assert_eq!((status, reply), (200, json!({"Result": true})));
}

#[tokio::test]
async fn slow_bodies_are_cut_with_408_and_their_connections_closed() {
    let server = dev_with(Limits {
        body_timeout: ms(500),
        ..Default::default()
    })
    .await;
    let mut slow = Vec::new();
    for path in ["/events", "/test-pattern"] {
        for _ in 0..10 {
            let mut conn = Conn::open(&server).await;
            conn.send(post_head(&server, path, "Content-Length: 1000\r\n"))
                .await;
            conn.send(b"{\"source\":").await;
            slow.push((path, conn));
        }
    }
    // Beside them, a healthy client publishes and tests patterns.
    let mut subscriber = server.announced().await;
    subscriber
        .subscribe("healthy", &json!({"source": ["healthy"]}))
        .await;
    assert_eq!(publish_with(&server, None).await, 200);
    let (_, event) = subscriber.next_event().await;
    assert_eq!(event["source"], "healthy");
    let (status, _) = post_test_pattern(&server, None, pattern_request()).await;
    assert_eq!(status, 200);

    for (path, mut conn) in slow {
        let cut = conn.response().await;
        assert_eq!(cut.status, 408, "{path}: {cut:?}");
        let key = if path == "/events" { "error" } else { "Error" };
        assert!(cut.reason(key).contains("body_timeout"), "{path}: {cut:?}");
        assert_eq!(cut.header("connection"), Some("close"), "{path}");
        conn.expect_closed().await;
    }
    // A slow body on a route that does not read bodies is not waited for either.
    let mut conn = Conn::open(&server).await;
    conn.send(format!(
        "GET /healthz HTTP/1.1\r\n{}Content-Length: 1000\r\n\r\n{{",
        host_line(&server)
    ))
    .await;
    assert_eq!(conn.response().await.status, 200);
    conn.expect_closed().await;
    let metrics = server.metrics().await;
    assert!(
        metric_with_label(&metrics, "eventgate_limit_rejections_total", "body_timeout") >= 20.0
    );
    // The healthy client is still served.
    assert_eq!(publish_with(&server, None).await, 200);
    subscriber.next_event().await;
}

#[tokio::test]
async fn a_huge_declared_length_gets_413_at_once_and_a_bad_chunk_400() {
    let server = dev_with(Limits {
        // Far longer than the test waits: the 413 cannot come from a timeout.
        body_timeout: ms(600_000),
        ..Default::default()
    })
    .await;
    expect_413_unread(&server, "/events", "error", "1048576").await;

    let mut conn = Conn::open(&server).await;
    conn.send(post_head(
        &server,
        "/events",
        "Transfer-Encoding: chunked\r\n",
    ))
    .await;
    conn.send(b"zz\r\n{}\r\n0\r\n\r\n").await;
    let malformed = conn.final_response().await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert!(malformed.reason("error").contains("malformed request body"));
    conn.expect_closed().await;

    // A well-formed chunked body is read as usual.
    let body = json!({"source": "healthy", "detail-type": "t", "detail": {}}).to_string();
    let mut conn = Conn::open(&server).await;
    conn.send(post_head(
        &server,
        "/events",
        "Transfer-Encoding: chunked\r\n",
    ))
    .await;
    conn.send(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()))
        .await;
    let accepted = conn.final_response().await;
    assert_eq!(accepted.status, 200, "{accepted:?}");
    assert_eq!(publish_with(&server, None).await, 200);
}

#[tokio::test]
async fn ingest_answers_503_past_the_backlog_bound() {
    // Deterministic: a batch whose events alone weigh more than the bound (tiny events
    // grow when normalised: id, time, account, region are filled in).
    let server = dev_with(Limits {
        max_body_bytes: 4096,
        max_ingest_backlog_bytes: 4096,
        ..Default::default()
    })
    .await;
    let mut subscriber = server.announced().await;
    subscriber
        .subscribe("all", &json!({"source": [{"prefix": ""}]}))
        .await;
    let batch: Vec<Value> = (0..60)
        .map(|n| json!({"source": "flood", "detail-type": "t", "detail": {"n": n}}))
        .collect();
    let body = Value::Array(batch).to_string();
    assert!(body.len() < 4096);
    let response = server
        .http
        .post(server.http_url("/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /events");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let reply: Value = response.json().await.expect("JSON");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_ingest_backlog_bytes")),
        "{reply}"
    );
    // Nothing of the refused batch was delivered; a small request beside it is.
    assert_eq!(publish_with(&server, None).await, 200);
    let (_, event) = subscriber.next_event().await;
    assert_eq!(event["source"], "healthy");
    assert!(subscriber.try_recv(QUIET).await.is_none());
    // Room is given back once a batch is matched: a publisher that honours 503 by retrying
    // gets every batch through, each about half the bound.
    for n in 0..20 {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"source": "retry", "detail-type": "t", "detail": {"n": n, "i": i}}))
            .collect();
        let body = Value::Array(batch).to_string();
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, reply) = server.post_events("application/json", body.clone()).await;
            if status == 200 {
                assert_eq!(reply["FailedEntryCount"], 0, "{reply}");
                break;
            }
            assert_eq!(status, 503, "{reply}");
            assert!(Instant::now() < deadline, "batch {n} never accepted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for _ in 0..200 {
        let (_, event) = subscriber.next_event().await;
        assert_eq!(event["source"], "retry");
    }
    let metrics = server.metrics().await;
    assert!(
        metric_with_label(
            &metrics,
            "eventgate_limit_rejections_total",
            "max_ingest_backlog_bytes"
        ) >= 1.0
    );
    assert!(metric_with_label(&metrics, "eventgate_ingest_errors_total", "backlog_full") >= 1.0);
}

#[tokio::test]
async fn a_missing_repeated_or_invalid_host_gets_400_on_every_path() {
    let server = dev_with(Limits {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let host = host_line(&server);
    let bad_hosts: [Vec<u8>; 4] = [
        Vec::new(),
        format!("{host}{host}").into_bytes(),
        b"Host: a b\r\n".to_vec(),
        b"Host: h\xff\r\n".to_vec(),
    ];
    for lines in &bad_hosts {
        // The listener's own parse of a first request.
        let mut conn = Conn::open(&server).await;
        conn.send(upgrade_with(&server, lines)).await;
        let refused = conn.response().await;
        assert_eq!(refused.status, 400, "{lines:?}: {refused:?}");
        assert!(refused.reason("error").contains("Host"), "{refused:?}");
        conn.expect_closed().await;

        // An upgrade after another request on a kept-alive connection (through hyper).
        let mut conn = Conn::open(&server).await;
        conn.send(format!("GET /healthz HTTP/1.1\r\n{host}\r\n"))
            .await;
        assert_eq!(conn.response().await.status, 200);
        conn.send(upgrade_with(&server, lines)).await;
        let refused = conn.response().await;
        assert_eq!(refused.status, 400, "{lines:?}: {refused:?}");
        assert!(refused.reason("error").contains("Host"));
        conn.expect_closed().await;

        // Any other request through hyper.
        let mut conn = Conn::open(&server).await;
        let mut request = b"GET /healthz HTTP/1.1\r\n".to_vec();
        request.extend_from_slice(lines);
        request.extend_from_slice(b"\r\n");
        conn.send(request).await;
        let refused = conn.response().await;
        assert_eq!(refused.status, 400, "{lines:?}: {refused:?}");
        conn.expect_closed().await;
    }
    // HTTP/1.0 may leave Host out.
    let mut conn = Conn::open(&server).await;
    conn.send("GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(conn.response().await.status, 200);
    // None of the refusals took the one connection slot.
    let client = server.announced().await;
    client.close().await;
    let metrics = server.metrics().await;
    assert!(metric_with_label(&metrics, "eventgate_bad_requests_total", "host") >= 3.0);
}

#[tokio::test]
async fn an_origin_that_is_not_utf8_is_refused_when_origins_are_listed() {
    let server = Server::start(Config {
        allowed_origins: vec!["https://app.example".into()],
        ..dev_config()
    })
    .await;
    let host = host_line(&server);
    for origin in [
        &b"Origin: https://app.example\xff\r\n"[..],
        b"Origin: \xff\r\n",
        b"Origin: https://app.example\r\nOrigin: https://app.example\r\n",
    ] {
        let mut conn = Conn::open(&server).await;
        let mut lines = host.clone().into_bytes();
        lines.extend_from_slice(origin);
        conn.send(upgrade_with(&server, lines)).await;
        let refused = conn.response().await;
        assert_eq!(refused.status, 403, "{origin:?}: {refused:?}");
        assert!(refused.reason("error").contains("Origin"));
    }
    let mut conn = Conn::open(&server).await;
    conn.send(upgrade_with(
        &server,
        format!("{host}Origin: https://app.example\r\n"),
    ))
    .await;
    assert_eq!(conn.response().await.status, 101);
}

#[tokio::test]
async fn an_upgrade_with_a_body_is_refused_and_the_body_never_read_as_frames() {
    let server = Server::dev().await;
    let host = host_line(&server);
    let hello = client_text_frame(r#"{"Action":"Hello","RequestId":"smuggled"}"#);
    let with_length = upgrade_with(
        &server,
        format!("{host}Content-Length: {}\r\n", hello.len()),
    );
    let chunked = upgrade_with(&server, format!("{host}Transfer-Encoding: chunked\r\n"));
    for (name, head) in [("content-length", with_length), ("chunked", chunked)] {
        for through_hyper in [false, true] {
            let mut conn = Conn::open(&server).await;
            if through_hyper {
                conn.send(format!("GET /healthz HTTP/1.1\r\n{host}\r\n"))
                    .await;
                assert_eq!(conn.response().await.status, 200);
            }
            let mut bytes = head.clone();
            if name == "chunked" {
                bytes.extend_from_slice(format!("{:x}\r\n", hello.len()).as_bytes());
                bytes.extend_from_slice(&hello);
                bytes.extend_from_slice(b"\r\n0\r\n\r\n");
            } else {
                bytes.extend_from_slice(&hello);
            }
            conn.send(bytes).await;
            let refused = conn.response().await;
            assert_eq!(refused.status, 400, "{name} {through_hyper}: {refused:?}");
            assert!(refused.reason("error").contains("body"), "{refused:?}");
            conn.expect_closed().await;
            assert!(
                !String::from_utf8_lossy(&conn.buffer).contains("smuggled"),
                "the body got an Ack"
            );
        }
    }
    let client = server.announced().await;
    client.close().await;
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let server = Server::dev().await;
    for (method, path, allowed) in [
        ("POST", "/", "GET"),
        ("GET", "/events", "POST"),
        ("PUT", "/test-pattern", "POST"),
    ] {
        let mut conn = Conn::open(&server).await;
        conn.send(format!(
            "{method} {path} HTTP/1.1\r\n{}Content-Length: 0\r\n\r\n",
            host_line(&server)
        ))
        .await;
        let refused = conn.response().await;
        assert_eq!(refused.status, 405, "{method} {path}: {refused:?}");
        assert_eq!(refused.header("allow"), Some(allowed), "{method} {path}");
        refused.reason("error");
    }
    let (status, _) = server.get("/no-such-thing").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_broker_source_waits_for_backlog_room_instead_of_failing() {
    const REDIS: &str = "127.0.0.1:6379";
    if !sources_common::broker_available("redis", REDIS).await {
        return;
    }
    let id = sources_common::unique();
    let stream = format!("hostile.backlog.{id}");
    // Every event alone weighs more than the whole bound: each hand-off must wait until
    // the backlog is empty, then goes alone.
    let gateway = sources_common::Gateway::start(&format!(
        "[limits]\nmax_body_bytes = 1024\nmax_ingest_backlog_bytes = 1024\n\
         [[sources]]\nname = \"backlog-{id}\"\nkind = \"redis_streams\"\n\
         url = \"redis://{REDIS}/\"\nstreams = [\"{stream}\"]\ngroup = \"g-{id}\"\n\
         consumer = \"c-{id}\"\nstart_id = \"0\"\nblock = \"1s\"\n"
    ))
    .await;
    let mut client = gateway
        .subscriber("all", &json!({"source": [stream.as_str()]}))
        .await;
    let mut conn = redis::Client::open(format!("redis://{REDIS}/"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let payload = "x".repeat(2000);
    for n in 0..300 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(&[
                ("operation", "bulk.write"),
                ("n", &n.to_string()),
                ("payload", &payload),
            ])
            .query_async(&mut conn)
            .await
            .expect("XADD");
    }
    for n in 0..300 {
        let event = client.next_event().await;
        assert_eq!(event["detail"]["n"], n.to_string(), "in order, none lost");
    }
    // Every message was acknowledged after its hand-off; none was dead-lettered.
    let deadline = Instant::now() + WAIT;
    loop {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(format!("g-{id}"))
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        if matches!(&pending, redis::Value::Array(parts) if matches!(parts.first(), Some(redis::Value::Int(0))))
        {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {pending:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead: i64 = redis::cmd("XLEN")
        .arg(format!("{stream}.dlq"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(dead, 0);
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{stream}.dlq"))
        .query_async(&mut conn)
        .await;
    gateway.shutdown().await;
}

/// Reads the child's stdout until the `listening on` line.
fn wait_for_listening(child: &mut std::process::Child) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) if line.starts_with("listening on ") => return Some(line),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// The binary with no `EVENTGATE_*` variable inherited.
fn eventgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventgate"));
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTGATE_") {
            command.env_remove(name);
        }
    }
    command.env("EVENTGATE_LOG", "warn");
    command
}

#[test]
fn kubernetes_service_variables_warn_and_the_server_still_starts() {
    let mut child = eventgate()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("EVENTGATE_PORT", "tcp://10.96.0.12:8080")
        .env("EVENTGATE_PORT_8080_TCP_ADDR", "10.96.0.12")
        .env("EVENTGATE_SERVICE_HOST", "10.96.0.12")
        .env("EVENTGATE_SERVICE_PORT", "8080")
        .env("EVENTGATE_HELO_TIMEOUT", "5s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn eventgate serve");
    let listening = wait_for_listening(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(listening.is_some(), "the server did not start: {stderr}");
    for name in [
        "EVENTGATE_PORT ",
        "EVENTGATE_PORT_8080_TCP_ADDR",
        "EVENTGATE_SERVICE_HOST",
        "EVENTGATE_SERVICE_PORT",
    ] {
        assert!(stderr.contains(name), "no warning for {name}: {stderr}");
    }
    assert!(stderr.contains("Kubernetes"), "{stderr}");
    assert!(
        stderr.contains(
            "EVENTGATE_HELO_TIMEOUT ignored (the closest setting is EVENTGATE_HELLO_TIMEOUT)"
        ),
        "{stderr}"
    );

    // Unknown keys in a config file stay errors.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("eventgate-hostile-{}.toml", std::process::id()));
    std::fs::write(&path, "dev = true\nhelo_timeout = \"5s\"\n").expect("write config");
    let output = eventgate()
        .args(["serve", "--config"])
        .arg(&path)
        .env("EVENTGATE_PORT", "tcp://10.96.0.12:8080")
        .output()
        .expect("run eventgate");
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("helo_timeout"));
}
