//! `POST /events`: every accepted shape, per-entry failures, defaults, numbers kept
//! verbatim, whole-request errors and bearer tokens.

use crate::common;

use common::*;
use serde_json::{json, Value};

async fn subscriber(server: &Server, sources: &[&str]) -> Client {
    let mut client = server.announced().await;
    client.subscribe("all", &json!({ "source": sources })).await;
    client
}

fn event_ids(reply: &Value) -> Vec<Option<String>> {
    reply["Entries"]
        .as_array()
        .expect("Entries")
        .iter()
        .map(|entry| entry["EventId"].as_str().map(str::to_owned))
        .collect()
}

fn assert_error_body(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error text: {body}"
    );
}

#[tokio::test]
async fn eventbridge_object_with_defaults_and_verbatim_numbers() {
    let server = Server::start(Config {
        account: "123456789012".into(),
        region: "eu-test-1".into(),
        ..dev_config()
    })
    .await;
    let mut client = subscriber(&server, &["numbers"]).await;
    let body = r#"{"source":"numbers","detail-type":"Measured","detail":{"price":1.50,"big":12345678901234567890123,"neg":-0.0,"exp":2.50E+3}}"#;
    let (status, reply) = server.post_events("application/json", body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["FailedEntryCount"], 0);
    let id = event_ids(&reply)[0].clone().expect("EventId");
    assert!(!id.is_empty());

    let (message, event) = client.next_event().await;
    let text = message["Event"].as_str().expect("Event string");
    assert!(text.contains("1.50"), "{text}");
    assert!(text.contains("12345678901234567890123"), "{text}");
    assert!(
        text.contains(
            r#""detail":{"price":1.50,"big":12345678901234567890123,"neg":-0.0,"exp":2.50E+3}"#
        ),
        "detail not forwarded byte for byte: {text}"
    );
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["version"], "0");
    assert_eq!(event["account"], "123456789012");
    assert_eq!(event["region"], "eu-test-1");
    assert_eq!(event["resources"], json!([]));
    let time = event["time"].as_str().expect("time");
    assert!(time.len() >= 20 && time.contains('T'), "{time}");
    assert_eq!(event["source"], "numbers");
    assert_eq!(event["detail-type"], "Measured");
}

#[tokio::test]
async fn given_envelope_fields_are_kept() {
    let server = Server::dev().await;
    let mut client = subscriber(&server, &["kept"]).await;
    let body = json!({
        "version": "1", "id": "my-id", "source": "kept", "detail-type": "t",
        "account": "999", "time": "2020-01-01T00:00:00Z", "region": "r",
        "resources": ["arn:1"],
    });
    let reply = server.publish(&body).await;
    assert_eq!(event_ids(&reply), [Some("my-id".to_owned())]);
    let (_, event) = client.next_event().await;
    assert_eq!(event["id"], "my-id");
    assert_eq!(event["version"], "1");
    assert_eq!(event["account"], "999");
    assert_eq!(event["time"], "2020-01-01T00:00:00Z");
    assert_eq!(event["region"], "r");
    assert_eq!(event["resources"], json!(["arn:1"]));
    // Missing detail becomes {}.
    assert_eq!(event["detail"], json!({}));
}

#[tokio::test]
async fn array_with_bad_entries_failing_alone() {
    let server = Server::dev().await;
    let mut client = subscriber(&server, &["arr"]).await;
    let body = json!([
        {"source": "arr", "detail-type": "t", "detail": {"n": 0}},
        {"source": "arr", "detail": {"n": 1}},
        {"source": "arr", "detail-type": "t", "detail": [1, 2]},
        {"source": "arr", "detail-type": "t", "detail": {"n": 3}, "bogus": true},
        "not an object",
        {"source": "arr", "detail-type": "t", "detail": {"n": 5}},
    ]);
    let (status, reply) = server
        .post_events("application/json", body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["FailedEntryCount"], 4, "{reply}");
    let entries = reply["Entries"].as_array().expect("Entries");
    assert_eq!(entries.len(), 6);
    for (index, entry) in entries.iter().enumerate() {
        if index == 0 || index == 5 {
            assert!(entry["EventId"].is_string(), "{entry}");
            assert!(entry.get("ErrorCode").is_none(), "{entry}");
        } else {
            assert!(entry.get("EventId").is_none(), "{entry}");
            assert!(entry["ErrorCode"].is_string(), "{entry}");
            assert!(entry["ErrorMessage"].is_string(), "{entry}");
        }
    }
    assert_eq!(entries[1]["ErrorCode"], "InvalidArgument");
    assert_eq!(entries[2]["ErrorCode"], "MalformedDetail");
    assert_eq!(entries[3]["ErrorCode"], "InvalidArgument");
    assert_eq!(entries[4]["ErrorCode"], "InvalidArgument");
    for n in [0, 5] {
        let (message, event) = client.next_event().await;
        assert_eq!(event["detail"]["n"], n, "{message}");
        assert_eq!(
            event["id"].as_str(),
            entries[n as usize]["EventId"].as_str()
        );
    }
    assert!(client.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn put_events_entries() {
    let server = Server::dev().await;
    let mut client = subscriber(&server, &["pe"]).await;
    let body = json!({"Entries": [
        {"Source": "pe", "DetailType": "A", "Detail": "{\"price\":1.50,\"big\":12345678901234567890123}", "Resources": ["r1"]},
        {"Source": "pe", "DetailType": "B", "Detail": "not json"},
        {"Source": "pe", "DetailType": "C", "Detail": "{}", "EventBusName": "default"},
        {"Source": "pe", "Detail": "{}"},
    ]});
    let (status, reply) = server
        .post_events("application/json", body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["FailedEntryCount"], 2, "{reply}");
    let entries = &reply["Entries"];
    assert_eq!(entries[1]["ErrorCode"], "MalformedDetail");
    assert_eq!(entries[3]["ErrorCode"], "InvalidArgument");
    let (message, event) = client.next_event().await;
    assert_eq!(message["Type"], "A");
    let text = message["Event"].as_str().expect("Event");
    assert!(
        text.contains("1.50") && text.contains("12345678901234567890123"),
        "{text}"
    );
    assert_eq!(event["resources"], json!(["r1"]));
    assert_eq!(event["id"].as_str(), entries[0]["EventId"].as_str());
    let (message, _) = client.next_event().await;
    assert_eq!(message["Type"], "C");
    assert!(client.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn structured_cloudevent() {
    let server = Server::dev().await;
    let mut client = subscriber(&server, &["ce"]).await;
    let body = r#"{"specversion":"1.0","id":"ce-1","source":"ce","type":"com.example.t","subject":"sub-1","time":"2021-02-03T04:05:06Z","data":{"price":1.50}}"#;
    let (status, reply) = server
        .post_events("application/cloudevents+json; charset=utf-8", body)
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(event_ids(&reply), [Some("ce-1".to_owned())]);
    let (message, event) = client.next_event().await;
    assert_eq!(message["Type"], "com.example.t");
    assert!(message["Event"].as_str().expect("Event").contains("1.50"));
    assert_eq!(event["id"], "ce-1");
    assert_eq!(event["resources"], json!(["sub-1"]));
    assert_eq!(event["time"], "2021-02-03T04:05:06Z");
    assert_eq!(event["detail"], json!({"price": 1.5}));

    // A bad structured CloudEvent fails as an entry.
    let (status, reply) = server
        .post_events(
            "application/cloudevents+json",
            r#"{"specversion":"0.3","id":"x","source":"ce","type":"t"}"#,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["FailedEntryCount"], 1);
    assert_eq!(reply["Entries"][0]["ErrorCode"], "InvalidArgument");
    // Not an object is a bad request.
    let (status, reply) = server
        .post_events("application/cloudevents+json", "[]")
        .await;
    assert_error_body(status, &reply, 400);
}

#[tokio::test]
async fn cloudevents_batch() {
    let server = Server::dev().await;
    let mut client = subscriber(&server, &["ceb"]).await;
    let body = json!([
        {"specversion": "1.0", "id": "b-1", "source": "ceb", "type": "t", "data": {"n": 1}},
        {"specversion": "1.0", "source": "ceb", "type": "t"},
        {"specversion": "1.0", "id": "b-3", "source": "ceb", "type": "t", "data": "text"},
        {"specversion": "1.0", "id": "b-4", "source": "ceb", "type": "t", "data_base64": "AAE="},
    ]);
    let (status, reply) = server
        .post_events("application/cloudevents-batch+json", body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["FailedEntryCount"], 1, "{reply}");
    assert_eq!(
        event_ids(&reply),
        [
            Some("b-1".into()),
            None,
            Some("b-3".into()),
            Some("b-4".into())
        ]
    );
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"], json!({"n": 1}));
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"], json!({"data": "text"}));
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"], json!({"data_base64": "AAE="}));
    let (status, reply) = server
        .post_events("application/cloudevents-batch+json", "{}")
        .await;
    assert_error_body(status, &reply, 400);
}

#[tokio::test]
async fn binary_cloudevent() {
    let server = Server::dev().await;
    let mut client = subscriber(&server, &["bin"]).await;
    let response = server
        .http
        .post(server.http_url("/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "bin")
        .header("ce-type", "com.example.binary")
        .header("ce-subject", "thing")
        .body(r#"{"price":1.50,"big":12345678901234567890123}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 200);
    let reply: Value = response.json().await.expect("JSON");
    assert_eq!(event_ids(&reply), [Some("bin-1".to_owned())]);
    let (message, event) = client.next_event().await;
    assert_eq!(message["Type"], "com.example.binary");
    let text = message["Event"].as_str().expect("Event");
    assert!(
        text.contains("1.50") && text.contains("12345678901234567890123"),
        "{text}"
    );
    assert_eq!(event["resources"], json!(["thing"]));

    // Text data becomes {"data": "..."}; a missing id fails the entry.
    let response = server
        .http
        .post(server.http_url("/events"))
        .header("content-type", "text/plain")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-2")
        .header("ce-source", "bin")
        .header("ce-type", "t")
        .body("hello")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 200);
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"], json!({"data": "hello"}));
    let response = server
        .http
        .post(server.http_url("/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-source", "bin")
        .header("ce-type", "t")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 200);
    let reply: Value = response.json().await.expect("JSON");
    assert_eq!(reply["FailedEntryCount"], 1);
}

#[tokio::test]
async fn whole_request_errors() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_body_bytes: 2048,
            max_entries: 3,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let event = json!({"source": "s", "detail-type": "t"});
    for (content_type, body, expected) in [
        ("application/json", "{".to_owned(), 400),
        ("application/json", "".to_owned(), 400),
        ("application/json", "5".to_owned(), 400),
        ("application/json", "[]".to_owned(), 400),
        ("application/json", json!({"Entries": 5}).to_string(), 400),
        (
            "application/json",
            json!([event, event, event, event]).to_string(),
            400,
        ),
        (
            "application/json",
            json!({"Entries": [1, 2, 3, 4]}).to_string(),
            400,
        ),
        ("text/plain", event.to_string(), 415),
        ("application/xml", "<a/>".to_owned(), 415),
        (
            "application/json",
            json!({"source": "s", "detail-type": "t", "detail": {"pad": "x".repeat(4096)}})
                .to_string(),
            413,
        ),
    ] {
        let (status, reply) = server.post_events(content_type, body.clone()).await;
        assert_error_body(status, &reply, expected);
        let _ = body;
    }
    // Exactly max_entries is fine.
    server.publish(&json!([event, event, event])).await;
}

#[tokio::test]
async fn oversized_entries_fail_alone() {
    let server = Server::start(Config {
        limits: eventgate::config::Limits {
            max_event_bytes: 512,
            ..Default::default()
        },
        ..dev_config()
    })
    .await;
    let body = json!([
        {"source": "s", "detail-type": "t", "detail": {"pad": "x".repeat(1024)}},
        {"source": "s", "detail-type": "t"},
    ]);
    let (status, reply) = server
        .post_events("application/json", body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["FailedEntryCount"], 1);
    assert_eq!(reply["Entries"][0]["ErrorCode"], "EntryTooLarge");
    assert!(reply["Entries"][1]["EventId"].is_string());
}

async fn post_with_auth(server: &Server, authorization: Option<&str>) -> (u16, Value) {
    server.post_event_as(authorization, "tok").await
}

#[tokio::test]
async fn bearer_tokens() {
    let server = Server::start(Config {
        ingest_tokens: vec!["first-token".into(), "second-token".into()],
        ..dev_config()
    })
    .await;
    let mut client = subscriber(&server, &["tok"]).await;
    let (status, body) = post_with_auth(&server, None).await;
    assert_error_body(status, &body, 401);
    let (status, body) = post_with_auth(&server, Some("Basic Zmlyc3QtdG9rZW4=")).await;
    assert_error_body(status, &body, 401);
    let (status, body) = post_with_auth(&server, Some("Bearer wrong-token")).await;
    assert_error_body(status, &body, 403);
    assert!(!body.to_string().contains("first-token"));
    for token in ["first-token", "second-token"] {
        let (status, body) = post_with_auth(&server, Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["FailedEntryCount"], 0);
        client.next_event().await;
    }
    // Refused requests published nothing.
    assert!(client.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn tokens_are_required_outside_dev_mode() {
    let server = Server::start(Config {
        dev: false,
        stack_id: Some(STACK_ID.into()),
        app_version_ids: vec!["v1".into()],
        ..Default::default()
    })
    .await;
    let (status, body) = post_with_auth(&server, None).await;
    assert_error_body(status, &body, 401);
    let (status, body) = post_with_auth(&server, Some("Bearer anything")).await;
    assert_error_body(status, &body, 403);
}

#[tokio::test]
async fn dev_mode_loopback_publishes_without_a_token() {
    let server = Server::dev().await;
    let (status, body) = post_with_auth(&server, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["FailedEntryCount"], 0);
}
