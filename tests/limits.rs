//! Abuse limits over real sockets: connection caps (global 503, per address 429),
//! `X-Forwarded-For` behind trusted proxies only, new connections per second per address,
//! the request-head timeout (slowloris) and ingest events per second per token. Each refusal
//! is counted in `eventgate_limit_rejections_total{limit=..}`.

use crate::common;

use std::time::Duration;

use common::*;
use eventgate::config::Limits;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn with_limits(limits: Limits) -> Config {
    Config {
        limits,
        ..dev_config()
    }
}

fn rejections(metrics: &str, limit: &str) -> f64 {
    let series = format!("eventgate_limit_rejections_total{{limit=\"{limit}\"}}");
    metric_value(metrics, &series).unwrap_or(0.0)
}

/// An upgrade request that claims to come through a proxy for `client`.
fn forwarded(server: &Server, client: &str) -> tungstenite::handshake::client::Request {
    let mut request = server.ws_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "x-forwarded-for",
        format!("203.0.113.9, {client}")
            .parse()
            .expect("header value"),
    );
    request
}

#[tokio::test]
async fn global_cap_refuses_with_503_and_frees_slots_on_close() {
    let server = Server::start(with_limits(Limits {
        max_connections: 2,
        ..Limits::default()
    }))
    .await;
    let first = server.announced().await;
    let _second = server.connect().await;
    let error = expect_refused(server.ws_url(), 503).await;
    assert!(error.contains("too many connections"), "{error}");
    assert!(rejections(&server.metrics().await, "max_connections") >= 1.0);

    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_upgrade(server.ws_url()).await {
            Upgrade::Accepted(_) => break,
            Upgrade::Refused { status, .. } => {
                assert_eq!(status, 503);
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn per_address_cap_uses_forwarded_for_only_from_trusted_proxies() {
    let server = Server::start(with_limits(Limits {
        max_connections_per_ip: 1,
        trusted_proxies: vec!["127.0.0.0/8".into()],
        ..Limits::default()
    }))
    .await;
    let _a = expect_accepted(forwarded(&server, "198.51.100.1")).await;
    let error = expect_refused(forwarded(&server, "198.51.100.1"), 429).await;
    assert!(error.contains("from this address"), "{error}");
    // Another client behind the same proxy has its own count.
    let _b = expect_accepted(forwarded(&server, "198.51.100.2")).await;
    assert!(rejections(&server.metrics().await, "max_connections_per_ip") >= 1.0);

    // Without trusted proxies the header is ignored: both count as 127.0.0.1.
    let untrusting = Server::start(with_limits(Limits {
        max_connections_per_ip: 1,
        ..Limits::default()
    }))
    .await;
    let _c = expect_accepted(forwarded(&untrusting, "198.51.100.1")).await;
    expect_refused(forwarded(&untrusting, "198.51.100.2"), 429).await;
}

#[tokio::test]
async fn new_connections_per_second_refused_with_retry_after() {
    let server = Server::start(with_limits(Limits {
        new_connections_per_second_per_ip: 2,
        ..Limits::default()
    }))
    .await;
    let _a = server.connect().await;
    let _b = server.connect().await;
    let refused = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws_url()))
        .await
        .expect("answered in time");
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON");
    assert!(body["error"].is_string(), "{body}");
    assert!(rejections(&server.metrics().await, "new_connections_per_second_per_ip") >= 1.0);
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _c = server.connect().await;
}

#[tokio::test]
async fn slow_request_heads_are_disconnected() {
    let server = Server::start(with_limits(Limits {
        upgrade_timeout: ms(300),
        ..Limits::default()
    }))
    .await;
    let mut slow = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("half a request");
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the slow client was not disconnected");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer {text:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Keep-alive: after a prompt first request, a dribbled second one is cut off too.
    let mut keep = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("first request");
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(WAIT, keep.read(&mut buffer))
        .await
        .expect("first response in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: 1")
        .await
        .expect("half a second request");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, keep.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the dribbling keep-alive client was not disconnected"
    );

    // A prompt client is unaffected, and so is a WebSocket that stays open longer.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let mut client = server.announced().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.subscribe("a", &json!({"source": ["x"]})).await;
    let metrics = server.metrics().await;
    assert!(
        rejections(&metrics, "upgrade_timeout") >= 1.0,
        "not counted:\n{metrics}"
    );
}

#[tokio::test]
async fn ingest_events_per_token_refused_with_retry_after() {
    let server = Server::start(Config {
        ingest_tokens: vec!["tok-a".into(), "tok-b".into()],
        ..with_limits(Limits {
            max_ingest_events_per_second_per_token: 3,
            ..Limits::default()
        })
    })
    .await;
    let post = |token: &'static str, count: usize| {
        let events: Vec<_> = (0..count)
            .map(|n| json!({"source": "s", "detail-type": "t", "detail": {"n": n}}))
            .collect();
        let request = server
            .http
            .post(server.http_url("/events"))
            .bearer_auth(token)
            .json(&events);
        async move { request.send().await.expect("POST /events") }
    };
    assert_eq!(post("tok-a", 3).await.status().as_u16(), 200);
    let refused = post("tok-a", 1).await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(retry_after, Some(1));
    let body: serde_json::Value = refused.json().await.expect("JSON body");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("per second")));
    // Another token has its own bucket; a batch larger than the burst never fits.
    assert_eq!(post("tok-b", 1).await.status().as_u16(), 200);
    assert_eq!(post("tok-b", 5).await.status().as_u16(), 429);
    assert!(
        rejections(
            &server.metrics().await,
            "max_ingest_events_per_second_per_token"
        ) >= 2.0
    );
}
