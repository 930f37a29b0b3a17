//! The NATS JetStream source against a real NATS server at 127.0.0.1:4222: SuperMQ events
//! reach WebSocket subscribers, malformed messages are published to the DLQ subject with
//! their reason and terminated.

use crate::common::eventually;
use crate::sources_common;

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::json;

use sources_common::{broker_available, unique, whole_seconds_utc, Gateway, TcpProxy, NATS, WAIT};

/// `user.create` exactly as SuperMQ publishes it on `events.supermq.users`.
const USER_CREATE: &str = r#"{"created_at":"2023-10-05T12:41:04.743529Z","id":"0a5f2e21-1a8b-460e-bfa9-732e570df095","identity":"[email protected]","metadata":"e30=","name":"wizardly_hopper","occurred_at":1696509664755440542,"operation":"user.create","status":"enabled"}"#;
const USER_VIEW_PROFILE: &str = sources_common::SUPERMQ_USER_VIEW_PROFILE;

#[tokio::test]
async fn supermq_user_create_reaches_the_websocket_and_bad_messages_are_dead_lettered() {
    if !broker_available("nats", &NATS).await {
        return;
    }
    let id = unique();
    let stream_name = format!("EG_{id}");
    let prefix = format!("events.{id}");
    let subject = format!("{prefix}.supermq.users");
    let dlq_subject = format!("eventgate.dlq.{id}");
    let name = format!("nats-{id}");
    let durable = format!("eventgate-{id}");

    let client = async_nats::connect(NATS.as_str())
        .await
        .expect("nats connects");
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let mut dead_letters = client
        .subscribe(dlq_subject.clone())
        .await
        .expect("subscribe to the dlq subject");
    client.flush().await.expect("flush");

    let gateway = Gateway::start(&format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"nats_jetstream\"\nurl = \"nats://{NATS}\"\n\
         stream = \"{stream_name}\"\nsubjects = [\"{prefix}.supermq.>\"]\ndurable = \"{durable}\"\n\
         ack_wait = \"5s\"\nmax_ack_pending = 100\ndlq_subject = \"{dlq_subject}\"\n"
    ))
    .await;
    let mut ws = gateway
        .subscriber("users", &json!({"detail-type": [{"prefix": "user."}]}))
        .await;

    js.publish(subject.clone(), USER_CREATE.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let event = ws.next_event().await;
    assert_eq!(event["source"], subject.as_str());
    assert_eq!(event["detail-type"], "user.create");
    assert_eq!(event["id"], format!("{stream_name}-1"));
    assert_eq!(event["time"], "2023-10-05T12:41:04Z");
    assert_eq!(
        event["detail"],
        json!({
            "created_at": "2023-10-05T12:41:04.743529Z",
            "id": "0a5f2e21-1a8b-460e-bfa9-732e570df095",
            "identity": "[email protected]",
            "metadata": {},
            "name": "wizardly_hopper",
            "occurred_at": 1696509664755440542u64,
            "operation": "user.create",
            "status": "enabled",
        })
    );

    // Not JSON: dead-lettered with its reason; the next good message still flows.
    js.publish(subject.clone(), "{not json".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    js.publish(subject.clone(), USER_VIEW_PROFILE.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let event = ws.next_event().await;
    assert_eq!(event["detail-type"], "user.view_profile", "{event}");
    assert_eq!(event["detail"]["metadata"], json!({"role": "admin"}));

    let dead = tokio::time::timeout(WAIT, dead_letters.next())
        .await
        .expect("a dead letter in time")
        .expect("subscription open");
    assert_eq!(dead.payload.as_ref(), b"{not json");
    let headers = dead.headers.expect("dead letter has headers");
    let reason = headers
        .get("Eventgate-Dlq-Reason")
        .expect("reason header")
        .to_string();
    assert!(reason.contains("not a JSON object"), "reason: {reason}");
    assert_eq!(
        headers
            .get("Eventgate-Original-Subject")
            .map(|v| v.to_string()),
        Some(subject.clone())
    );
    assert_eq!(
        headers
            .get("Eventgate-Original-Sequence")
            .map(|v| v.to_string()),
        Some("2".to_owned())
    );

    // All three were acked (terminated for the bad one).
    let stream = js.get_stream(&stream_name).await.expect("stream");
    eventually(WAIT, Duration::from_millis(50), async || {
        let info = stream.consumer_info(&durable).await.expect("consumer info");
        if info.num_ack_pending == 0 && info.ack_floor.stream_sequence == 3 {
            Ok(())
        } else {
            Err(format!("not all acked: {info:?}"))
        }
    })
    .await;
    let metrics = gateway.metrics().await;
    for (metric, value) in [
        ("eventgate_source_consumed_total", 3),
        ("eventgate_source_dispatched_total", 2),
        ("eventgate_source_dead_lettered_total", 1),
    ] {
        let line = format!("{metric}{{source=\"{name}\"}} {value}");
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }

    gateway.shutdown().await;
    js.delete_stream(&stream_name).await.expect("delete stream");
}

#[tokio::test]
async fn a_missing_stream_is_retried_until_it_exists() {
    if !broker_available("nats", &NATS).await {
        return;
    }
    let id = unique();
    let stream_name = format!("EG_{id}");
    let subject = format!("events.{id}.supermq.users");
    let name = format!("nats-late-{id}");
    let gateway = Gateway::start(&format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"nats_jetstream\"\nurl = \"nats://{NATS}\"\n\
         stream = \"{stream_name}\"\ndurable = \"eventgate-{id}\"\nmax_backoff = \"500ms\"\n"
    ))
    .await;
    let mut ws = gateway
        .subscriber("users", &json!({"detail-type": ["user.create"]}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = async_nats::connect(NATS.as_str())
        .await
        .expect("nats connects");
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("events.{id}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js.publish(subject.clone(), USER_CREATE.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let event = ws.next_event().await;
    assert_eq!(event["source"], subject.as_str());
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(&format!(
            "eventgate_source_reconnects_total{{source=\"{name}\"}}"
        )),
        "{metrics}"
    );
    gateway.shutdown().await;
    js.delete_stream(&stream_name).await.expect("delete stream");
}

#[tokio::test]
async fn a_cut_connection_loses_nothing_and_acks_only_what_was_dispatched() {
    if !broker_available("nats", &NATS).await {
        return;
    }
    let id = unique();
    let stream_name = format!("EG_CUT_{id}");
    let subject = format!("events.{id}.supermq.users");
    let name = format!("nats-cut-{id}");
    let durable = format!("eventgate-{id}");
    let client = async_nats::connect(NATS.as_str())
        .await
        .expect("nats connects");
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("events.{id}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let proxy = TcpProxy::start(&NATS).await;
    let gateway = Gateway::start(&format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"nats_jetstream\"\nurl = \"nats://{}\"\n\
         stream = \"{stream_name}\"\ndurable = \"{durable}\"\nack_wait = \"2s\"\n\
         batch_size = 7\nmax_backoff = \"300ms\"\n",
        proxy.addr
    ))
    .await;
    let mut ws = gateway
        .subscriber("users", &json!({"source": [&subject]}))
        .await;
    const TOTAL: usize = 60;
    let publish = |n: usize| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            let body = format!(r#"{{"operation":"user.update","n":{n}}}"#);
            js.publish(subject, body.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    };
    for n in 0..TOTAL / 2 {
        publish(n).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.cut();
    for n in TOTAL / 2..TOTAL {
        publish(n).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let mut seen = [false; TOTAL];
    while seen.iter().any(|s| !s) {
        let event = ws.next_event().await;
        let n = event["detail"]["n"].as_u64().expect("detail.n") as usize;
        seen[n] = true;
    }
    // Every message ends acked: nothing pending, nothing waiting for an ack.
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&stream_name)
        .await
        .expect("stream")
        .get_consumer(&durable)
        .await
        .expect("consumer");
    eventually(WAIT, Duration::from_millis(100), async || {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            Ok(())
        } else {
            Err(format!(
                "left unacked: {} pending, {} ack pending",
                info.num_pending, info.num_ack_pending
            ))
        }
    })
    .await;
    gateway.shutdown().await;
    let _ = js.delete_stream(&stream_name).await;
}

/// The mapping options every source shares: `json_fields` works on NATS as on Redis and
/// AMQP, and a message without `occurred_at` gets the receipt time in the one form.
#[tokio::test]
async fn json_fields_and_receipt_time_on_nats() {
    if !broker_available("nats", &NATS).await {
        return;
    }
    let id = unique();
    let stream_name = format!("EG_{id}");
    let subject = format!("events.{id}.supermq.clients");
    let client = async_nats::connect(NATS.as_str())
        .await
        .expect("nats connects");
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let gateway = Gateway::start(&format!(
        "[[sources]]\nname = \"nats-{id}\"\nkind = \"nats_jetstream\"\nurl = \"nats://{NATS}\"\n\
         stream = \"{stream_name}\"\ndurable = \"eventgate-{id}\"\njson_fields = [\"tags\"]\n"
    ))
    .await;
    let mut ws = gateway
        .subscriber("clients", &json!({"detail-type": ["client.create"]}))
        .await;
    js.publish(
        subject.clone(),
        r#"{"operation":"client.create","metadata":"e30=","tags":"[\"a\",\"b\"]"}"#.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let event = ws.next_event().await;
    assert_eq!(event["detail"]["tags"], json!(["a", "b"]), "{event}");
    assert_eq!(event["detail"]["metadata"], json!({}));
    assert!(whole_seconds_utc(&event["time"]), "{event}");
    gateway.shutdown().await;
    js.delete_stream(&stream_name).await.expect("delete stream");
}
