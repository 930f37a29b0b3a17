//! Slow consumers: a client that stops reading is closed with 1013 while a fast client on
//! the same pattern receives every event. In its own test binary because it reads the
//! process-wide slow-consumer counter.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

const EVENT_PAD: usize = 10 * 1024;
const MAX_EVENTS: usize = 3000;

async fn slow_closes(server: &Server) -> f64 {
    metric_value(
        &server.metrics().await,
        "eventgate_slow_consumer_closes_total",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_fast_one_gets_everything() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_queued_messages: 8,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let pattern = json!({"source": ["load"]});
    let mut slow = server.small_buffer_client().await;
    slow.hello().await;
    slow.subscribe("s", &pattern).await;
    let mut fast = server.announced().await;
    fast.subscribe("f", &pattern).await;

    // The fast client reads continuously in its own task and counts events up to the
    // final marker; `progress` tells the publisher how far it got.
    let progress = Arc::new(AtomicUsize::new(0));
    let reader_progress = progress.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let (message, event) = fast.next_event().await;
            assert_eq!(message["Rules"], json!(["f"]));
            if event["detail-type"] == "done" {
                return seen;
            }
            seen.push(event["detail"]["n"].as_u64().expect("n"));
            reader_progress.store(seen.len(), Ordering::Relaxed);
        }
    });
    // A fast client keeps up: every few events the publisher waits until the reader has
    // them, so only the stalled client can fall behind (the reader shares the test's two
    // threads with the server and the publisher, and could otherwise be starved).
    let caught_up = |published: usize| {
        let progress = progress.clone();
        async move {
            while progress.load(Ordering::Relaxed) < published {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    let before = slow_closes(&server).await;
    let pad = "x".repeat(EVENT_PAD);
    let mut published = 0usize;
    let mut closed = false;
    while published < MAX_EVENTS {
        server
            .publish_event("load", "item", json!({"n": published, "pad": pad}))
            .await;
        published += 1;
        if published.is_multiple_of(4) {
            tokio::time::timeout(Duration::from_secs(10), caught_up(published))
                .await
                .expect("the fast client keeps up");
        }
        if published.is_multiple_of(16) && slow_closes(&server).await > before {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the stalled client was not closed after {published} events of {EVENT_PAD} bytes"
    );
    // A few more after the close, then the marker.
    for _ in 0..10 {
        server
            .publish_event("load", "item", json!({"n": published, "pad": pad}))
            .await;
        published += 1;
    }
    server.publish_event("load", "done", json!({})).await;

    let seen = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the fast client received the marker")
        .expect("reader task");
    let expected: Vec<u64> = (0..published as u64).collect();
    assert_eq!(seen.len(), published, "the fast client missed events");
    assert_eq!(seen, expected, "the fast client got events out of order");

    // The slow client, reading at last, finds its close frame 1013 after what was queued.
    let mut slow_events = 0usize;
    let frame = loop {
        match slow.next_within(Duration::from_secs(10)).await {
            Some(Received::Text(message)) => {
                assert_eq!(message["Action"], "Event", "{message}");
                slow_events += 1;
            }
            Some(Received::Closed(frame)) => break frame,
            other => panic!("expected events then a close, got {other:?}"),
        }
    };
    eprintln!("published {published}, the slow client read {slow_events} before its close");
    let (code, reason) = frame.expect("a close frame");
    assert_eq!(code, 1013, "{reason}");
    assert!(
        slow_events < published,
        "the slow client got all {published} events"
    );
}
