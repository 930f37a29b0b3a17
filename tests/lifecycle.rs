//! Health, readiness, metrics, the pattern tester, the demo page and graceful shutdown.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001_and_run_returns() {
    let server = Server::dev().await;
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);

    let mut announced = server.announced().await;
    announced.subscribe("a", &json!({"source": ["x"]})).await;
    let mut unannounced = server.connect().await;
    let addr = server.addr;

    let started = Instant::now();
    let token = server.token.clone();
    let closer = tokio::spawn(async move {
        let first = announced.expect_close().await;
        let second = unannounced.expect_close().await;
        (first, second)
    });
    token.cancel();
    let result = server.shutdown().await;
    assert!(result.is_ok(), "run returned {result:?}");
    let (first, second) = closer.await.expect("closer");
    for frame in [first, second] {
        let (code, reason) = frame.expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "shutdown waited for the whole grace period: {:?}",
        started.elapsed()
    );
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_with_an_idle_http_keepalive_connection() {
    let server = Server::dev().await;
    // Leave a pooled keep-alive connection open in the client.
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 200);
    let started = Instant::now();
    server.shutdown().await.expect("run returns Ok");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A connection that has not sent a request yet (an HTTP client's pool opens them ahead of
/// need) is dropped at shutdown: it does not hold the graceful wait for `shutdown_grace`.
#[tokio::test]
async fn shutdown_with_a_connection_that_sent_nothing() {
    let server = Server::start(Config {
        shutdown_grace: ms(60_000),
        ..dev_config()
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // Accepted and waiting for its first request head.
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 200);
    let started = Instant::now();
    server.shutdown().await.expect("run returns Ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut byte = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut silent, &mut byte).await;
    assert!(matches!(read, Ok(0) | Err(_)), "the server closed it");
}

#[tokio::test]
async fn metrics_after_activity() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client.subscribe("a", &json!({"source": ["metrics"]})).await;
    server.publish_event("metrics", "t", json!({})).await;
    client.next_event().await;
    let refused = expect_refused(format!("ws://{}/", server.addr), 401).await;
    assert!(!refused.is_empty());

    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "eventgate_connections",
        "eventgate_rules",
        "eventgate_events_ingested_total",
        "eventgate_notifications_sent_total",
        "eventgate_auth_failures_total",
    ] {
        assert!(
            metric_value(&text, name).is_some(),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(metric_value(&text, "eventgate_connections").unwrap_or(0.0) >= 1.0);
    assert!(metric_value(&text, "eventgate_rules").unwrap_or(0.0) >= 1.0);
    assert!(metric_value(&text, "eventgate_events_ingested_total").unwrap_or(0.0) >= 1.0);
    assert!(metric_value(&text, "eventgate_notifications_sent_total").unwrap_or(0.0) >= 1.0);
    assert!(metric_value(&text, "eventgate_auth_failures_total").unwrap_or(0.0) >= 1.0);
}

async fn test_pattern(server: &Server, body: String) -> (u16, Value) {
    let response = server
        .http
        .post(server.http_url("/test-pattern"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /test-pattern");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn test_pattern_endpoint() {
    let server = Server::dev().await;
    let event = json!({"source": "orders", "detail": {"price": 12.5}});
    let matching = json!({"source": ["orders"], "detail": {"price": [{"numeric": [">", 10]}]}});
    let other = json!({"source": ["billing"]});
    let (status, body) = test_pattern(
        &server,
        json!({"EventPattern": matching, "Event": event}).to_string(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"Result": true})));
    let (status, body) = test_pattern(
        &server,
        json!({"EventPattern": other, "Event": event}).to_string(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"Result": false})));
    // Both may be strings holding JSON.
    let (status, body) = test_pattern(
        &server,
        json!({"EventPattern": matching.to_string(), "Event": event.to_string()}).to_string(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"Result": true})));
    for bad in [
        json!({"EventPattern": {"detail": {"n": [{"numeric": [">"]}]}}, "Event": event})
            .to_string(),
        json!({"EventPattern": matching, "Event": "not json"}).to_string(),
        json!({"EventPattern": matching, "Event": [1]}).to_string(),
        json!({"EventPattern": matching}).to_string(),
        json!({"EventPattern": matching, "Event": event, "Extra": 1}).to_string(),
        "{".to_owned(),
    ] {
        let (status, body) = test_pattern(&server, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["Error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {body}"
        );
    }
}

#[tokio::test]
async fn demo_page_in_dev_mode_only() {
    let server = Server::dev().await;
    let (status, html) = server.get("/demo/").await;
    assert_eq!(status, 200);
    assert!(html.to_ascii_lowercase().contains("<html"), "{html:.200}");
    let (status, config) = server.get("/demo/config.json").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["apiKey"], dev_key());
    let (status, _) = server.get("/demo/missing.js").await;
    assert_eq!(status, 404);

    let production = Server::start(Config {
        dev: false,
        stack_id: Some(STACK_ID.into()),
        app_version_ids: vec!["v1".into()],
        ..Default::default()
    })
    .await;
    let (status, _) = production.get("/demo/").await;
    assert_eq!(status, 404);
    let (status, _) = production.get("/demo/config.json").await;
    assert_eq!(status, 404);
}
