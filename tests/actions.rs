//! Client actions and their Acks, the Hello deadline, KeepAlive and the close codes of a
//! misbehaving connection.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hello_is_acknowledged_once() {
    let server = Server::dev().await;
    let mut client = server.connect().await;
    let ack = client
        .request(&json!({"Action": "Hello", "RequestId": "r1"}))
        .await;
    assert_ok(&ack, "r1");
    let ack = client
        .request(&json!({"Action": "Hello", "RequestId": "r2"}))
        .await;
    let message = assert_error(&ack, Some("r2"), "client is already announced");
    assert_eq!(message, "client is already announced");
    // The connection still works.
    client.subscribe("a", &json!({"source": ["x"]})).await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_before_hello_are_refused() {
    let server = Server::dev().await;
    let mut client = server.connect().await;
    let ack = client
        .request(&json!({"Action": "Subscribe", "RequestId": "s", "Rule": "a", "Pattern": "{\"source\":[\"x\"]}"}))
        .await;
    assert_error(&ack, Some("s"), "client is unannounced");
    let ack = client
        .request(&json!({"Action": "Unsubscribe", "RequestId": "u", "Rule": "a"}))
        .await;
    assert_error(&ack, Some("u"), "client is unannounced");
    // After Hello the same Subscribe works.
    client.hello().await;
    client.subscribe("a", &json!({"source": ["x"]})).await;
}

#[tokio::test]
async fn unknown_actions_are_unrecognized() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    for (frame, id) in [
        (json!({"Action": "Publish", "RequestId": "p"}), "p"),
        (json!({"Action": "hello", "RequestId": "h"}), "h"),
        (json!({"RequestId": "m"}), "m"),
        (json!({"Action": 7, "RequestId": "n"}), "n"),
    ] {
        let ack = client.request(&frame).await;
        assert_error(&ack, Some(id), "unrecognized action");
    }
}

#[tokio::test]
async fn missing_or_empty_rule_names() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_rule_name_bytes: 16,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let mut client = server.announced().await;
    let pattern = json!({"source": ["x"]}).to_string();
    for (frame, id) in [
        (
            json!({"Action": "Subscribe", "RequestId": "1", "Pattern": pattern}),
            "1",
        ),
        (
            json!({"Action": "Subscribe", "RequestId": "2", "Rule": "", "Pattern": pattern}),
            "2",
        ),
        (
            json!({"Action": "Subscribe", "RequestId": "3", "Rule": 5, "Pattern": pattern}),
            "3",
        ),
        (
            json!({"Action": "Subscribe", "RequestId": "4", "Rule": "r".repeat(17), "Pattern": pattern}),
            "4",
        ),
        (json!({"Action": "Unsubscribe", "RequestId": "5"}), "5"),
        (
            json!({"Action": "Unsubscribe", "RequestId": "6", "Rule": ""}),
            "6",
        ),
    ] {
        let ack = client.request(&frame).await;
        assert_error(&ack, Some(id), "missing or invalid rule name");
    }
    // A name at the limit is fine.
    client
        .subscribe(&"r".repeat(16), &json!({"source": ["x"]}))
        .await;
}

#[tokio::test]
async fn invalid_patterns_name_the_path_and_reason() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    let ack = client
        .subscribe_ack("n", &json!({"detail": {"n": [{"numeric": [">"]}]}}))
        .await;
    let message = assert_error(&ack, Some("sub-n"), "invalid pattern: ");
    assert!(
        message.starts_with("invalid pattern: detail.n: "),
        "path missing in {message:?}"
    );
    assert!(message.contains("numeric"), "reason missing in {message:?}");

    // Not JSON inside the string.
    let ack = client
        .request(
            &json!({"Action": "Subscribe", "RequestId": "j", "Rule": "j", "Pattern": "{not json"}),
        )
        .await;
    assert_error(&ack, Some("j"), "invalid pattern: ");
    // Pattern of the wrong type, and missing.
    let ack = client
        .request(&json!({"Action": "Subscribe", "RequestId": "t", "Rule": "t", "Pattern": 5}))
        .await;
    assert_error(&ack, Some("t"), "invalid pattern: ");
    let ack = client
        .request(&json!({"Action": "Subscribe", "RequestId": "m", "Rule": "m"}))
        .await;
    assert_error(&ack, Some("m"), "invalid pattern: ");
    // A leaf that is not an array.
    let ack = client.subscribe_ack("l", &json!({"source": "x"})).await;
    assert_error(&ack, Some("sub-l"), "invalid pattern: ");
    // An object pattern (not double-encoded) is accepted too.
    let ack = client
        .request(&json!({"Action": "Subscribe", "RequestId": "o", "Rule": "o", "Pattern": {"source": ["x"]}}))
        .await;
    assert_ok(&ack, "o");
}

#[tokio::test]
async fn malformed_frames_get_an_error_ack_without_request_id() {
    let server = Server::dev().await;
    let mut client = server.connect().await;
    for frame in [
        "not json".to_owned(),
        "[1,2]".to_owned(),
        json!({"Action": "Hello"}).to_string(),
        json!({"Action": "Hello", "RequestId": 7}).to_string(),
        json!({"Action": "Hello", "RequestId": ""}).to_string(),
        json!({"Action": "Hello", "RequestId": "x".repeat(200)}).to_string(),
    ] {
        client.send_text(frame.clone()).await;
        let ack = client.recv().await;
        assert_error(&ack, None, "");
        assert!(
            ack["Message"].as_str().is_some_and(|m| !m.is_empty()),
            "{frame}: {ack}"
        );
    }
    // None of these announced the client.
    client.hello().await;
}

#[tokio::test]
async fn too_many_rules() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_rules_per_connection: 3,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let mut client = server.announced().await;
    for rule in ["a", "b", "c"] {
        client.subscribe(rule, &json!({"source": [rule]})).await;
    }
    let ack = client.subscribe_ack("d", &json!({"source": ["d"]})).await;
    assert_error(&ack, Some("sub-d"), "too many rules");
    // Replacing an existing rule is not a new rule.
    client.subscribe("c", &json!({"source": ["c2"]})).await;
    // Unsubscribing makes room.
    client.unsubscribe("a").await;
    client.subscribe("d", &json!({"source": ["d"]})).await;
    // The limit is per connection.
    let mut other = server.announced().await;
    for rule in ["a", "b", "c"] {
        other.subscribe(rule, &json!({"source": [rule]})).await;
    }
}

#[tokio::test]
async fn pattern_too_large() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_pattern_bytes: 64,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let mut client = server.announced().await;
    let big = json!({"source": ["x".repeat(80)]});
    let ack = client.subscribe_ack("big", &big).await;
    assert_error(&ack, Some("sub-big"), "pattern too large");
    // As an object pattern too.
    let ack = client
        .request(&json!({"Action": "Subscribe", "RequestId": "o", "Rule": "o", "Pattern": big}))
        .await;
    assert_error(&ack, Some("o"), "pattern too large");
    client.subscribe("small", &json!({"source": ["x"]})).await;
}

#[tokio::test]
async fn unsubscribe_of_an_unknown_rule_is_ok() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client.unsubscribe("never-subscribed").await;
    client.subscribe("a", &json!({"source": ["x"]})).await;
    client.unsubscribe("a").await;
    client.unsubscribe("a").await;
}

#[tokio::test]
async fn hello_timeout_closes_with_1008() {
    let server = Server::start(Config {
        hello_timeout: ms(300),
        ..dev_config()
    })
    .await;
    let started = Instant::now();
    let mut late = server.connect().await;
    let mut on_time = server.announced().await;
    let (code, reason) = late.expect_close().await.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(!reason.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
    // The announced client is not affected.
    tokio::time::sleep(Duration::from_millis(100)).await;
    on_time.subscribe("a", &json!({"source": ["x"]})).await;
}

#[tokio::test]
async fn keepalive_only_for_announced_connections() {
    let server = Server::start(Config {
        keepalive_interval: ms(200),
        ..dev_config()
    })
    .await;
    let mut quiet = server.connect().await;
    let mut announced = server.announced().await;
    // The announced connection gets KeepAlives.
    let mut keepalives = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while keepalives < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match announced.next_within(left).await {
            Some(Received::Text(message)) => {
                assert_eq!(message["Action"], "KeepAlive", "{message}");
                let id = message["RequestId"].as_str().expect("RequestId");
                assert!(!id.is_empty());
                assert_eq!(message.as_object().map(|o| o.len()), Some(2), "{message}");
                keepalives += 1;
            }
            other => panic!("expected KeepAlive, got {other:?}"),
        }
    }
    // The unannounced one got nothing in the meantime (pings are skipped).
    assert!(
        quiet.next_within(Duration::from_millis(50)).await.is_none(),
        "an unannounced connection received a message"
    );
    // After its Hello it gets them too.
    quiet.hello().await;
    match quiet.next_within(Duration::from_millis(1500)).await {
        Some(Received::Text(message)) => assert_eq!(message["Action"], "KeepAlive"),
        other => panic!("expected KeepAlive after Hello, got {other:?}"),
    }
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let (code, _) = client.expect_close().await.expect("a close frame");
    assert_eq!(code, 1003);
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_frame_bytes: 1024,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let mut client = server.announced().await;
    // Just under the limit is fine.
    let ack = client
        .request(&json!({"Action": "Unsubscribe", "RequestId": "ok", "Rule": "r".repeat(200)}))
        .await;
    assert_eq!(ack["RequestId"], "ok");
    let big = json!({"Action": "Hello", "RequestId": "big", "Pad": "x".repeat(4096)});
    let _ = client.ws.send(Message::text(big.to_string())).await;
    let (code, _) = client.expect_close().await.expect("a close frame");
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn action_flood_closes_with_1008() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_actions_per_second: 5,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let mut client = server.announced().await;
    for n in 0..40 {
        let frame = json!({"Action": "Unsubscribe", "RequestId": format!("f{n}"), "Rule": "a"});
        if client
            .ws
            .send(Message::text(frame.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut acks = 0;
    let close = loop {
        match client.next_within(WAIT).await {
            Some(Received::Text(message)) => {
                assert_eq!(message["Action"], "Ack", "{message}");
                acks += 1;
            }
            Some(Received::Closed(frame)) => break frame,
            other => panic!("expected Acks then a close, got {other:?}"),
        }
    };
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    // The burst allowance (twice the rate, minus the Hello) was answered.
    assert!((5..=12).contains(&acks), "{acks} acks before the close");
}

#[tokio::test]
async fn client_close_is_answered_with_a_close_frame() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client
        .ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("send close");
    // RFC 6455 §5.5.1: the server answers a Close with a Close before dropping TCP.
    let mut answered = false;
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut client.ws)).await {
            Err(_) => panic!("no answer to the client's close"),
            Ok(Some(Ok(Message::Close(_)))) => answered = true,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) | Ok(None) => {
                break
            }
            Ok(Some(Err(error))) => panic!("close handshake not completed: {error}"),
        }
    }
    assert!(
        answered,
        "the server dropped the connection without a close frame"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_and_live_ones_kept() {
    let server = Server::start(Config {
        keepalive_interval: ms(100),
        idle_timeout: ms(500),
        ..dev_config()
    })
    .await;
    let mut live = server.announced().await;
    let mut idle = server.announced().await;
    // `live` keeps reading (tungstenite answers pings); `idle` reads nothing for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match live.next_within(left).await {
            None => break,
            Some(Received::Text(message)) => assert_eq!(message["Action"], "KeepAlive"),
            Some(other) => panic!("the live connection got {other:?}"),
        }
    }
    live.subscribe("still-here", &json!({"source": ["x"]}))
        .await;
    let (code, reason) = idle.expect_close().await.expect("a close frame");
    assert_eq!(code, 1001, "{reason}");
}
