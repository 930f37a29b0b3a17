//! The decided differences from EventBridge / event-ruler (`docs/patterns.md`) that depend
//! on the gateway itself, end to end: HTTP ingest of raw event text, the server's rule
//! index and WebSocket delivery.

use crate::common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn ingest_and_matching_follow_the_decided_differences() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    // Row 1: anything-but prefix accepts a null, a number or a boolean, as in EventBridge.
    client
        .subscribe(
            "not-init",
            &json!({"source": ["fid"], "detail": {"state": [{"anything-but": {"prefix": "init"}}]}}),
        )
        .await;
    // Row 4: a key given twice in one object: the last value counts.
    client
        .subscribe("dup", &json!({"source": ["fid"], "detail": {"a": ["y"]}}))
        .await;
    // Raw text: duplicate keys, an out-of-range number and a lone surrogate cannot be
    // written with `json!`.
    let body = r#"[
        {"source":"fid","detail-type":"t","detail":{"n":0,"state":null}},
        {"source":"fid","detail-type":"t","detail":{"n":1,"state":"initializing"}},
        {"source":"fid","detail-type":"t","detail":{"n":2,"a":"y","a":"x"}},
        {"source":"fid","detail-type":"t","detail":{"n":3,"a":"x","a":"y"}},
        {"source":"fid","detail-type":"t","detail":{"n":4,"a":"y","b":1e400}},
        {"source":"fid","detail-type":"t","detail":{"n":5,"a":"y","b":"\udc00"}},
        {"source":"fid","detail-type":"t","detail":{"n":6,"state":7}},
        {"source":"fid","detail-type":"t","detail":{"n":7,"state":true}}
    ]"#;
    let (status, reply) = server.post_events("application/json", body).await;
    assert_eq!(status, 200, "{reply}");
    // Rows 5 and 6: refused at ingest, each entry alone.
    assert_eq!(reply["FailedEntryCount"], 2, "{reply}");
    let entries = reply["Entries"].as_array().expect("Entries");
    for (index, reason) in [(4, "number out of range"), (5, "surrogate")] {
        let entry = &entries[index];
        assert_eq!(entry["ErrorCode"], "MalformedDetail", "{reply}");
        assert!(
            entry["ErrorMessage"]
                .as_str()
                .is_some_and(|m| m.contains(reason)),
            "{reply}"
        );
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let (message, event) = client.next_event().await;
        got.push(event["detail"]["n"].as_i64().expect("n"));
        if event["detail"]["n"] == 3 {
            // Delivered as sent: both keys are in the text, a JSON parser keeps the last.
            let text = message["Event"].as_str().expect("Event");
            assert!(text.contains(r#""a":"x","a":"y""#), "{text}");
            assert_eq!(event["detail"]["a"], "y");
        }
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 3, 6, 7]);
    assert!(client.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn patterns_event_ruler_refuses_are_refused_with_a_reason() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    let ack = client
        .subscribe_ack("or", &json!({"$or": [{"prefix": ["x"]}, {"b": ["y"]}]}))
        .await;
    let message = assert_error(&ack, Some("sub-or"), "invalid pattern");
    assert!(
        message.contains("\"prefix\" is a reserved operator name"),
        "{message}"
    );
    let ack = client
        .subscribe_ack("ab", &json!({"a": [{"anything-but": {"suffix": ""}}]}))
        .await;
    let message = assert_error(&ack, Some("sub-ab"), "invalid pattern");
    assert!(message.contains("must not be an empty string"), "{message}");
    // Outside `$or` an operator name is an ordinary field name.
    client.subscribe("plain", &json!({"prefix": ["x"]})).await;
}
