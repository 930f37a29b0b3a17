//! Matching and fan-out: the Event notification shape, replace-in-place, rule sorting, one
//! notification per event and connection, unsubscribe.

use crate::common;

use common::*;
use serde_json::{json, Value};

/// Publishes a marker event and asserts it is the next thing `client` receives, proving
/// nothing else was delivered before it. `client` must hold a rule matching source "marker".
async fn expect_only_marker(server: &Server, client: &mut Client, tag: &str) {
    server
        .publish_event("marker", "marker", json!({"tag": tag}))
        .await;
    let (message, event) = client.next_event().await;
    assert_eq!(
        message["Source"], "marker",
        "expected the marker, got {message}"
    );
    assert_eq!(event["detail"]["tag"], tag);
}

#[tokio::test]
async fn event_notification_shape() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client.subscribe("r", &json!({"source": ["orders"]})).await;
    let id = server
        .publish_event("orders", "OrderPlaced", json!({"n": 1}))
        .await;
    let (message, event) = client.next_event().await;
    let object = message.as_object().expect("object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "Action",
            "Event",
            "Position",
            "RequestId",
            "Rules",
            "Source",
            "Type"
        ],
        "{message}"
    );
    assert_eq!(message["Rules"], json!(["r"]));
    assert_eq!(message["Source"], "orders");
    assert_eq!(message["Type"], "OrderPlaced");
    let request_id = message["RequestId"].as_str().expect("RequestId");
    assert_eq!(request_id.len(), 36, "a UUID: {request_id}");
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["source"], "orders");
    assert_eq!(event["detail-type"], "OrderPlaced");
    assert_eq!(event["detail"], json!({"n": 1}));
}

#[tokio::test]
async fn only_matching_connections_receive_events() {
    let server = Server::dev().await;
    let mut matching = server.announced().await;
    let mut other = server.announced().await;
    let mut unannounced = server.connect().await;
    matching
        .subscribe("m", &json!({"detail": {"n": [{"numeric": [">", 10]}]}}))
        .await;
    matching
        .subscribe("marker", &json!({"source": ["marker"]}))
        .await;
    other
        .subscribe("o", &json!({"source": ["elsewhere"]}))
        .await;
    other
        .subscribe("marker", &json!({"source": ["marker"]}))
        .await;

    server.publish_event("s", "t", json!({"n": 5})).await;
    server.publish_event("s", "t", json!({"n": 50})).await;
    let (message, event) = matching.next_event().await;
    assert_eq!(message["Rules"], json!(["m"]));
    assert_eq!(event["detail"]["n"], 50);
    // One marker: for both clients it is the next thing they receive.
    server
        .publish_event("marker", "marker", json!({"tag": "m"}))
        .await;
    for client in [&mut matching, &mut other] {
        let (message, _) = client.next_event().await;
        assert_eq!(message["Source"], "marker", "{message}");
        assert_eq!(message["Rules"], json!(["marker"]));
    }
    assert!(unannounced.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn subscribe_replaces_a_rule_in_place() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client
        .subscribe("marker", &json!({"source": ["marker"]}))
        .await;
    client.subscribe("a", &json!({"source": ["p1"]})).await;
    server.publish_event("p1", "t", json!({"step": 0})).await;
    let (message, _) = client.next_event().await;
    assert_eq!(message["Source"], "p1");

    client.subscribe("a", &json!({"source": ["p2"]})).await;
    server.publish_event("p1", "t", json!({"step": 1})).await;
    server.publish_event("p2", "t", json!({"step": 2})).await;
    let (message, event) = client.next_event().await;
    assert_eq!(
        message["Source"], "p2",
        "old pattern still matches: {message}"
    );
    assert_eq!(message["Rules"], json!(["a"]));
    assert_eq!(event["detail"]["step"], 2);
    expect_only_marker(&server, &mut client, "after-replace").await;

    // An event that the old and the new pattern would both match lists the rule once.
    client
        .subscribe("a", &json!({"detail-type": ["both"]}))
        .await;
    server.publish_event("p2", "both", json!({"step": 3})).await;
    let (message, _) = client.next_event().await;
    assert_eq!(message["Rules"], json!(["a"]), "{message}");
    expect_only_marker(&server, &mut client, "after-both").await;
}

#[tokio::test]
async fn rules_are_sorted_and_one_notification_per_event() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client
        .subscribe("marker", &json!({"source": ["marker"]}))
        .await;
    let pattern = json!({"source": ["x"]});
    for rule in ["b", "B", "a", "é", "_"] {
        client.subscribe(rule, &pattern).await;
    }
    // A rule matching by another field also joins the same notification.
    client
        .subscribe("Z", &json!({"detail": {"k": [{"prefix": "v"}]}}))
        .await;
    server.publish_event("x", "t", json!({"k": "value"})).await;
    let (message, _) = client.next_event().await;
    assert_eq!(message["Rules"], json!(["B", "Z", "_", "a", "b", "é"]));
    expect_only_marker(&server, &mut client, "sorted").await;

    // After Unsubscribe the rule is no longer listed.
    client.unsubscribe("B").await;
    client.unsubscribe("Z").await;
    server.publish_event("x", "t", json!({"k": "value"})).await;
    let (message, _) = client.next_event().await;
    assert_eq!(message["Rules"], json!(["_", "a", "b", "é"]));
    expect_only_marker(&server, &mut client, "after-unsubscribe").await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client
        .subscribe("marker", &json!({"source": ["marker"]}))
        .await;
    client.subscribe("a", &json!({"source": ["x"]})).await;
    client.unsubscribe("a").await;
    server.publish_event("x", "t", json!({})).await;
    expect_only_marker(&server, &mut client, "unsubscribed").await;
}

#[tokio::test]
async fn every_event_of_a_batch_is_delivered_in_order() {
    let server = Server::dev().await;
    let mut first = server.announced().await;
    let mut second = server.announced().await;
    let pattern = json!({"source": ["batch"]});
    first.subscribe("r", &pattern).await;
    second.subscribe("r", &pattern).await;
    let events: Vec<Value> = (0..5)
        .map(|n| json!({"source": "batch", "detail-type": "t", "detail": {"n": n}}))
        .collect();
    server.publish(&Value::Array(events)).await;
    for client in [&mut first, &mut second] {
        for n in 0..5 {
            let (_, event) = client.next_event().await;
            assert_eq!(event["detail"]["n"], n);
        }
    }
}

#[tokio::test]
async fn a_new_connection_never_inherits_the_rules_of_a_closed_one() {
    // The dispatcher reuses the table slots of closed connections and the ids of removed
    // rules: whoever takes them over must start clean.
    let server = Server::dev().await;
    for round in 0..3 {
        let mut old = server.announced().await;
        old.subscribe("old", &json!({"source": ["orders"]})).await;
        old.subscribe("old-2", &json!({"source": ["orders"]})).await;
        old.close().await;
        // Give the dispatcher time to forget the closed connection, so the next one takes
        // over its slot (if it does not, the test still holds, it just proves less).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        let mut new = server.announced().await;
        new.subscribe("new", &json!({"source": ["orders"]})).await;
        new.subscribe("marker", &json!({"source": ["marker"]}))
            .await;
        server
            .publish_event("orders", "OrderPlaced", json!({"round": round}))
            .await;
        let (message, event) = new.next_event().await;
        assert_eq!(message["Rules"], json!(["new"]), "round {round}: {message}");
        assert_eq!(event["detail"]["round"], round);
        expect_only_marker(&server, &mut new, &format!("round {round}")).await;
        new.close().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_subscribe_longer_than_the_read_buffer_is_read_whole() {
    // Each session reads in 1 KiB pieces; a 3.9 KB pattern arrives in one frame anyway.
    let server = Server::dev().await;
    let mut client = server.announced().await;
    let mut sources: Vec<String> = (0..150).map(|i| format!("decoy-source-{i:05}")).collect();
    sources.push("wanted".to_owned());
    let pattern = json!({ "source": sources });
    let text = pattern.to_string();
    assert!((3000..4096).contains(&text.len()), "{}", text.len());
    client.subscribe("long", &pattern).await;
    server.publish_event("wanted", "t", json!({"n": 1})).await;
    let (message, event) = client.next_event().await;
    assert_eq!(message["Rules"], json!(["long"]));
    assert_eq!(event["source"], "wanted");
}

/// Counts an Ack (which must be a success) or checks that an Event is event `next` of the
/// sequence and counts it.
fn take_in_order(message: Value, next: &mut u64, acks: &mut u64) {
    match message["Action"].as_str() {
        Some("Ack") => {
            assert_eq!(message["Status"], "Ok", "{message}");
            *acks += 1;
        }
        Some("Event") => {
            let event: Value =
                serde_json::from_str(message["Event"].as_str().expect("Event string"))
                    .expect("Event holds JSON");
            assert_eq!(event["detail"]["i"], *next, "in order, none missing");
            *next += 1;
        }
        _ => panic!("unexpected {message}"),
    }
}

/// The dispatcher writes a notification to an idle connection's socket itself, while the
/// session writes Acks, Pongs and whatever was queued (`session::outbound`): the two never
/// write at once. A client that keeps sending actions and pings while events arrive one
/// after another gets every event whole (tungstenite would fail on a torn frame), in order,
/// with none missing, and every Ack.
#[tokio::test]
async fn direct_writes_and_session_writes_never_interleave() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    const EVENTS: u64 = 300;
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client.subscribe("seq", &json!({"source": ["seq"]})).await;
    let before = metric_value(
        &server.metrics().await,
        "eventgate_notifications_written_directly_total",
    )
    .unwrap_or(0.0);
    let mut acks = 0u64;
    let mut subscribes = 0u64;
    let mut next = 0u64;
    for i in 0..EVENTS {
        if i % 7 == 3 {
            // The session is busy with this (and its Ack) while the event below is offered.
            client
                .send_json(&json!({
                    "Action": "Subscribe",
                    "RequestId": format!("extra-{i}"),
                    "Rule": format!("extra-{i}"),
                    "Pattern": json!({"source": ["never"]}).to_string(),
                }))
                .await;
            subscribes += 1;
        }
        if i % 11 == 5 {
            client
                .ws
                .send(Message::Ping(vec![1, 2, 3].into()))
                .await
                .expect("ping");
        }
        // A connection sent a notification within the last 5 ms gets the next through its
        // queue (the dispatcher's policy): space most events further apart than that.
        if i % 5 != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(6)).await;
        }
        server.publish_event("seq", "n", json!({"i": i})).await;
        // Events published while nothing else happens arrive through direct writes; read
        // them as they come, Acks in between.
        if i % 3 != 0 {
            continue;
        }
        while next <= i {
            take_in_order(client.recv().await, &mut next, &mut acks);
        }
    }
    while next < EVENTS || acks < subscribes {
        take_in_order(client.recv().await, &mut next, &mut acks);
    }
    assert_eq!((next, acks), (EVENTS, subscribes));
    let after = metric_value(
        &server.metrics().await,
        "eventgate_notifications_written_directly_total",
    )
    .unwrap_or(0.0);
    assert!(
        after - before >= (EVENTS / 3) as f64,
        "many events went out through direct writes: {before} -> {after}"
    );
}
