//! The AMQP source against a real RabbitMQ at 127.0.0.1:5672 (guest/guest): Lamassu
//! CloudEvents and plain JSON reach WebSocket subscribers, malformed messages land in the
//! dead-letter queue with their reason, nothing is lost across a connection cut, stream
//! queues replay from `first`, and bad configuration is refused at load.

use crate::common::eventually;
use crate::sources_common;

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};

use sources_common::{broker_available, unique, Gateway, TcpProxy, RABBITMQ, REDIS, WAIT};

/// `lamassu.certificate.issued` as Lamassu's AMQP event bus publishes it.
const CERTIFICATE_ISSUED: &str = r#"{"id":"550e8400-e29b-41d4-a716-446655440000","type":"lamassu.certificate.issued","source":"ca-service","specversion":"1.0","time":"2024-01-15T10:30:00Z","datacontenttype":"application/json","data":{"serial_number":"1a2b3c4d5e6f","subject":"CN=device-001,O=Acme Corp","issuer_ca_id":"root-ca","valid_from":"2024-01-15T10:30:00Z","valid_to":"2025-01-15T10:30:00Z"}}"#;

fn certificate_issued(id: &str, serial: &str) -> String {
    let mut event: Value = serde_json::from_str(CERTIFICATE_ISSUED).expect("sample");
    event["id"] = json!(id);
    event["data"]["serial_number"] = json!(serial);
    event.to_string()
}

struct Rabbit {
    _connection: Connection,
    channel: Channel,
}

async fn rabbit() -> Rabbit {
    let connection = Connection::connect(
        &format!("amqp://guest:guest@{RABBITMQ}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("rabbitmq connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    Rabbit {
        _connection: connection,
        channel,
    }
}

impl Rabbit {
    /// The durable topic exchange and queue the source declares, bound with `keys`, so
    /// messages published before the gateway connects are kept.
    async fn declare(&self, exchange: &str, queue: &str, keys: &[&str], arguments: FieldTable) {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange declare");
        self.channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .expect("queue declare");
        for key in keys {
            self.channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("queue bind");
        }
    }

    async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirmed");
    }

    /// Ready messages in `queue`.
    async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// The next message of `queue`, waiting up to `WAIT` for one.
    async fn get(&self, queue: &str) -> lapin::message::Delivery {
        eventually(WAIT, Duration::from_millis(50), async || {
            let message = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            message
                .map(|message| message.delivery)
                .ok_or_else(|| format!("nothing in {queue}"))
        })
        .await
    }

    async fn delete(&self, exchange: &str, queue: &str) {
        for queue in [queue.to_owned(), format!("{queue}.dlq")] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [exchange.to_owned(), format!("{exchange}.dlx")] {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

fn source_toml(name: &str, addr: &str, exchange: &str, queue: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"amqp\"\nurl = \"amqp://guest:guest@{addr}/%2f\"\n\
         exchange = \"{exchange}\"\nqueue = \"{queue}\"\nmax_backoff = \"200ms\"\n\
         lag_interval = \"200ms\"\n{extra}"
    )
}

#[tokio::test]
async fn lamassu_cloudevents_and_plain_json_reach_the_websocket() {
    if !broker_available("rabbitmq", &RABBITMQ).await {
        return;
    }
    let id = unique();
    let (name, exchange, queue) = (
        format!("amqp-{id}"),
        format!("lamassu-events-{id}"),
        format!("eventgate-{id}"),
    );
    let rabbit = rabbit().await;
    rabbit
        .declare(
            &exchange,
            &queue,
            &["lamassu.certificate.*"],
            FieldTable::default(),
        )
        .await;
    let gateway = Gateway::start(&source_toml(
        &name,
        &RABBITMQ,
        &exchange,
        &queue,
        "binding_keys = [\"lamassu.certificate.*\"]\nsource = \"lamassu.plain\"\n",
    ))
    .await;
    let mut ws = gateway
        .subscriber(
            "certificates",
            &json!({"source": ["ca-service", "lamassu.plain"], "detail-type": [{"prefix": "lamassu.certificate."}]}),
        )
        .await;

    rabbit
        .publish(
            &exchange,
            "lamassu.certificate.issued",
            CERTIFICATE_ISSUED.as_bytes(),
        )
        .await;
    let event = ws.next_event().await;
    assert_eq!(event["source"], "ca-service", "{event}");
    assert_eq!(event["detail-type"], "lamassu.certificate.issued");
    assert_eq!(event["id"], "550e8400-e29b-41d4-a716-446655440000");
    assert_eq!(event["time"], "2024-01-15T10:30:00Z");
    assert_eq!(
        event["detail"],
        json!({
            "serial_number": "1a2b3c4d5e6f",
            "subject": "CN=device-001,O=Acme Corp",
            "issuer_ca_id": "root-ca",
            "valid_from": "2024-01-15T10:30:00Z",
            "valid_to": "2025-01-15T10:30:00Z",
        })
    );

    // A plain JSON object: detail-type = routing key, source = the configured one.
    rabbit
        .publish(
            &exchange,
            "lamassu.certificate.revoked",
            br#"{"serial_number":"1a2b3c4d5e6f","reason":"keyCompromise"}"#,
        )
        .await;
    let event = ws.next_event().await;
    assert_eq!(event["source"], "lamassu.plain", "{event}");
    assert_eq!(event["detail-type"], "lamassu.certificate.revoked");
    assert_eq!(
        event["detail"],
        json!({"serial_number": "1a2b3c4d5e6f", "reason": "keyCompromise"})
    );

    let expected = [
        format!("eventgate_source_consumed_total{{source=\"{name}\"}} 2"),
        format!("eventgate_source_dispatched_total{{source=\"{name}\"}} 2"),
        format!("eventgate_source_lag{{source=\"{name}\"}} 0"),
    ];
    eventually(WAIT, Duration::from_millis(100), async || {
        let metrics = gateway.metrics().await;
        if expected.iter().all(|line| metrics.contains(line)) {
            Ok(())
        } else {
            Err(format!("missing one of {expected:?} in\n{metrics}"))
        }
    })
    .await;
    gateway.shutdown().await;
    assert_eq!(rabbit.ready(&queue).await, 0, "everything was acked");
    rabbit.delete(&exchange, &queue).await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_with_their_reason() {
    if !broker_available("rabbitmq", &RABBITMQ).await {
        return;
    }
    let id = unique();
    let (name, exchange, queue) = (
        format!("amqp-dlq-{id}"),
        format!("lamassu-events-{id}"),
        format!("eventgate-{id}"),
    );
    let rabbit = rabbit().await;
    rabbit
        .declare(&exchange, &queue, &["#"], FieldTable::default())
        .await;
    // No `source` configured: plain JSON bodies cannot be mapped.
    let gateway = Gateway::start(&source_toml(&name, &RABBITMQ, &exchange, &queue, "")).await;
    let mut ws = gateway
        .subscriber("certificates", &json!({"source": ["ca-service"]}))
        .await;

    rabbit
        .publish(&exchange, "lamassu.certificate.issued", b"{not json")
        .await;
    rabbit
        .publish(&exchange, "lamassu.ca.created", br#"{"ca_id":"root-ca"}"#)
        .await;
    rabbit
        .publish(
            &exchange,
            "lamassu.certificate.issued",
            certificate_issued("second", "ffff").as_bytes(),
        )
        .await;
    let event = ws.next_event().await;
    assert_eq!(event["id"], "second", "{event}");
    assert_eq!(event["detail"]["serial_number"], "ffff");

    let dlq = format!("{queue}.dlq");
    let dead = rabbit.get(&dlq).await;
    assert_eq!(dead.data, b"{not json");
    assert_eq!(dead.routing_key.as_str(), "lamassu.certificate.issued");
    let reason = header(&dead, "x-eventgate-dlq-reason").expect("reason header");
    assert!(reason.contains("not a JSON object"), "reason: {reason}");
    assert_eq!(header(&dead, "x-eventgate-source"), Some(name.clone()));
    assert_eq!(
        header(&dead, "x-eventgate-original-exchange"),
        Some(exchange.clone())
    );
    assert_eq!(
        header(&dead, "x-eventgate-original-routing-key").as_deref(),
        Some("lamassu.certificate.issued")
    );

    let dead = rabbit.get(&dlq).await;
    assert_eq!(dead.data, br#"{"ca_id":"root-ca"}"#);
    let reason = header(&dead, "x-eventgate-dlq-reason").expect("reason header");
    assert!(reason.contains("`source`"), "reason: {reason}");

    let metrics = gateway.metrics().await;
    for (metric, value) in [
        ("eventgate_source_consumed_total", 3),
        ("eventgate_source_dispatched_total", 1),
        ("eventgate_source_dead_lettered_total", 2),
    ] {
        let line = format!("{metric}{{source=\"{name}\"}} {value}");
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    gateway.shutdown().await;
    assert_eq!(rabbit.ready(&queue).await, 0, "everything was acked");
    rabbit.delete(&exchange, &queue).await;
}

#[tokio::test]
async fn no_message_is_lost_when_the_connection_is_cut() {
    if !broker_available("rabbitmq", &RABBITMQ).await {
        return;
    }
    let id = unique();
    let (name, exchange, queue) = (
        format!("amqp-cut-{id}"),
        format!("events-{id}"),
        format!("eventgate-{id}"),
    );
    let rabbit = rabbit().await;
    rabbit
        .declare(&exchange, &queue, &["#"], FieldTable::default())
        .await;
    let proxy = TcpProxy::start(&RABBITMQ).await;
    let gateway = Gateway::start(&source_toml(
        &name,
        &proxy.addr.to_string(),
        &exchange,
        &queue,
        "body_format = \"json\"\nsource = \"test.cut\"\nprefetch = 4\nbatch_size = 2\n",
    ))
    .await;
    let mut ws = gateway
        .subscriber("all", &json!({"source": ["test.cut"]}))
        .await;

    const TOTAL: u64 = 60;
    let mut seen = BTreeSet::new();
    for n in 0..TOTAL / 2 {
        rabbit
            .publish(&exchange, "test.n", json!({"n": n}).to_string().as_bytes())
            .await;
    }
    // Cut while the first half is still flowing.
    while seen.len() < 5 {
        let event = ws.next_event().await;
        seen.insert(event["detail"]["n"].as_u64().expect("n"));
    }
    proxy.cut();
    for n in TOTAL / 2..TOTAL {
        rabbit
            .publish(&exchange, "test.n", json!({"n": n}).to_string().as_bytes())
            .await;
    }
    // Drain what was handed off before the cut, then let the source fail to reconnect.
    while let Some(message) = ws.next_within(Duration::from_millis(300)).await {
        let event: Value =
            serde_json::from_str(message["Event"].as_str().expect("an event")).expect("JSON");
        seen.insert(event["detail"]["n"].as_u64().expect("n"));
    }
    assert!(
        (seen.len() as u64) < TOTAL,
        "the cut came too late to test anything"
    );
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (seen.len() as u64) < TOTAL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing {:?}",
            (0..TOTAL).filter(|n| !seen.contains(n)).collect::<Vec<_>>()
        );
        let event = ws.next_event().await;
        seen.insert(event["detail"]["n"].as_u64().expect("n"));
    }
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(&format!(
            "eventgate_source_reconnects_total{{source=\"{name}\"}}"
        )),
        "{metrics}"
    );
    // Closing the gateway's connection requeues anything unacked: 0 ready means 0 unacked.
    gateway.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rabbit.ready(&queue).await, 0, "everything was acked");
    rabbit.delete(&exchange, &queue).await;
}

#[tokio::test]
async fn a_stream_queue_replays_from_first() {
    if !broker_available("rabbitmq", &RABBITMQ).await {
        return;
    }
    let id = unique();
    let (name, exchange, queue) = (
        format!("amqp-stream-{id}"),
        format!("events-{id}"),
        format!("eventgate-stream-{id}"),
    );
    let rabbit = rabbit().await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    rabbit.declare(&exchange, &queue, &["#"], arguments).await;
    for n in 0..3 {
        rabbit
            .publish(
                &exchange,
                "supermq.users",
                json!({"n": n, "operation": "user.create"})
                    .to_string()
                    .as_bytes(),
            )
            .await;
    }
    let gateway = Gateway::start(&source_toml(
        &name,
        &RABBITMQ,
        &exchange,
        &queue,
        "queue_type = \"stream\"\nstream_offset = \"first\"\nprefetch = 10\nsource = \"supermq\"\n",
    ))
    .await;
    let mut ws = gateway
        .subscriber("users", &json!({"source": ["supermq"]}))
        .await;
    for n in 0..3 {
        let event = ws.next_event().await;
        assert_eq!(event["detail"]["n"], n, "{event}");
        assert_eq!(event["detail-type"], "supermq.users");
        assert_eq!(event["id"], format!("{queue}-{n}"));
    }
    gateway.shutdown().await;
    rabbit.delete(&exchange, &queue).await;
}

/// A stream queue is read whole by every node of a cluster: those events must not also
/// cross the backplane, or clients would get them once per node.
#[tokio::test]
async fn a_stream_read_by_every_cluster_node_reaches_each_client_once() {
    if !broker_available("rabbitmq", &RABBITMQ).await || !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let (exchange, queue) = (format!("events-{id}"), format!("eventgate-stream-{id}"));
    let rabbit = rabbit().await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    rabbit.declare(&exchange, &queue, &["#"], arguments).await;
    const MESSAGES: u64 = 5;
    for n in 0..MESSAGES {
        rabbit
            .publish(
                &exchange,
                "supermq.users",
                json!({"n": n, "operation": "user.create"})
                    .to_string()
                    .as_bytes(),
            )
            .await;
    }
    let cluster = format!(
        "[cluster]\nbackend = \"redis\"\nurl = \"redis://{REDIS}/\"\nchannel = \"eg.{id}\"\n"
    );
    let mut nodes = Vec::new();
    for node in 0..2 {
        let toml = format!(
            "{cluster}{}",
            source_toml(
                &format!("stream-{node}-{id}"),
                &RABBITMQ,
                &exchange,
                &queue,
                "queue_type = \"stream\"\nstream_offset = \"first\"\nprefetch = 10\nsource = \"supermq\"\n",
            )
        );
        nodes.push(Gateway::start(&toml).await);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(
            node.subscriber("users", &json!({"source": ["supermq"]}))
                .await,
        );
    }
    for client in &mut clients {
        let mut ns = Vec::new();
        for _ in 0..MESSAGES {
            ns.push(
                client.next_event().await["detail"]["n"]
                    .as_u64()
                    .expect("n"),
            );
        }
        ns.sort_unstable();
        assert_eq!(ns, (0..MESSAGES).collect::<Vec<_>>());
        assert_eq!(
            client.next_within(Duration::from_millis(700)).await,
            None,
            "a duplicate"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
    rabbit.delete(&exchange, &queue).await;
}

#[test]
fn bad_amqp_configuration_is_refused_at_load() {
    let base = "[[sources]]\nname = \"a\"\nkind = \"amqp\"\nurl = \"amqp://127.0.0.1:5672/%2f\"\n\
                exchange = \"e\"\nqueue = \"q\"\n";
    let load = |extra: &str| {
        eventgate::config::load(
            Some(&format!("dev = true\n{base}{extra}")),
            Vec::new(),
            Vec::new(),
        )
    };
    assert!(load("").is_ok(), "{:?}", load("").err());
    assert!(load("queue_type = \"stream\"\nstream_offset = 12\n").is_ok());
    for (extra, needle) in [
        ("exchnge = \"typo\"\n", "exchnge"),
        ("body_format = \"json\"\n", "source"),
        ("stream_offset = \"first\"\n", "stream"),
        (
            "queue_type = \"stream\"\nstream_offset = \"soon\"\n",
            "soon",
        ),
        ("host = \"other\"\n", "url"),
        ("client_cert_file = \"c.pem\"\n", "client_key_file"),
        ("body_format = \"xml\"\n", "xml"),
    ] {
        let error = load(extra).expect_err(extra).to_string();
        assert!(error.contains(needle), "{extra}: {error}");
    }
}

/// The mapping options of the NATS and Redis sources work on AMQP with the same meaning, so a
/// SuperMQ event maps to the same EventBridge event whichever broker carried it; and every
/// `time` has one form (UTC, whole seconds), whether it came as a CloudEvents time with a
/// fraction and an offset or as `occurred_at`.
#[tokio::test]
async fn supermq_bodies_map_as_on_every_broker_and_times_have_one_form() {
    if !broker_available("rabbitmq", &RABBITMQ).await {
        return;
    }
    let id = unique();
    let (name, exchange, queue) = (
        format!("amqp-{id}"),
        format!("supermq-{id}"),
        format!("eventgate-{id}"),
    );
    let rabbit = rabbit().await;
    rabbit
        .declare(&exchange, &queue, &["supermq.#"], FieldTable::default())
        .await;
    let gateway = Gateway::start(&source_toml(
        &name,
        &RABBITMQ,
        &exchange,
        &queue,
        "binding_keys = [\"supermq.#\"]\nsource = \"supermq.users\"\n\
         detail_type_field = \"operation\"\nbase64_json_fields = [\"metadata\"]\n",
    ))
    .await;
    let mut ws = gateway
        .subscriber("all", &json!({"source": ["supermq.users", "ca-service"]}))
        .await;

    rabbit
        .publish(
            &exchange,
            "supermq.users.view",
            sources_common::SUPERMQ_USER_VIEW_PROFILE.as_bytes(),
        )
        .await;
    let event = ws.next_event().await;
    assert_eq!(event["source"], "supermq.users", "{event}");
    assert_eq!(event["detail-type"], "user.view_profile");
    assert_eq!(event["time"], "2023-10-05T16:41:01Z");
    assert_eq!(
        event["detail"],
        json!({
            "created_at": "2023-10-05T11:59:02.029606Z",
            "id": "97466511-6317-4c98-8d58-7bd78bcaf587",
            "identity": "[email protected]",
            "metadata": {"role": "admin"},
            "name": "admin",
            "occurred_at": 1696524061363472648u64,
            "operation": "user.view_profile",
            "status": "enabled",
        })
    );

    // A CloudEvent's time with a fraction and an offset: UTC, whole seconds.
    let mut cloudevent: Value = serde_json::from_str(CERTIFICATE_ISSUED).expect("sample");
    cloudevent["time"] = json!("2026-12-06T05:41:28.073770+02:00");
    rabbit
        .publish(
            &exchange,
            "supermq.certs",
            cloudevent.to_string().as_bytes(),
        )
        .await;
    let event = ws.next_event().await;
    assert_eq!(event["source"], "ca-service", "{event}");
    assert_eq!(event["time"], "2026-12-06T03:41:28Z");

    // No `operation`: dead-lettered with the reason naming the field.
    rabbit
        .publish(&exchange, "supermq.users.view", br#"{"id":"x"}"#)
        .await;
    let dead = rabbit.get(&format!("{queue}.dlq")).await;
    let reason = header(&dead, "x-eventgate-dlq-reason").expect("reason header");
    assert!(reason.contains("\"operation\""), "{reason}");

    gateway.shutdown().await;
    rabbit.delete(&exchange, &queue).await;
}

#[test]
fn field_mapping_keys_are_refused_where_they_cannot_apply() {
    let load = |extra: &str| {
        eventgate::config::load(
            Some(&format!(
                "dev = true\n[[sources]]\nname = \"a\"\nkind = \"amqp\"\n\
                 url = \"amqp://127.0.0.1:5672/%2f\"\nexchange = \"e\"\nqueue = \"q\"\n{extra}"
            )),
            Vec::new(),
            Vec::new(),
        )
    };
    for extra in [
        "source = \"s\"\ndetail_type_field = \"operation\"\njson_fields = [\"a\"]\nbase64_json_fields = [\"b\"]\n",
        "body_format = \"json\"\nsource = \"s\"\ndetail_type_field = \"operation\"\n",
    ] {
        assert!(load(extra).is_ok(), "{extra}");
    }
    for format in ["cloudevents", "eventbridge"] {
        let error = load(&format!(
            "body_format = \"{format}\"\ndetail_type_field = \"operation\"\n"
        ))
        .expect_err("refused")
        .to_string();
        assert!(error.contains("detail_type_field"), "{error}");
    }
}
