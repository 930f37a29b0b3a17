//! The Redis Streams source against a real Redis at 127.0.0.1:6379: SuperMQ events reach
//! WebSocket subscribers, malformed entries land in `<stream>.dlq`, pending entries of a
//! dead consumer are claimed.

use crate::common::eventually;
use crate::sources_common;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value as RedisValue;
use serde_json::{json, Value};

use sources_common::{broker_available, unique, whole_seconds_utc, Gateway, TcpProxy, REDIS, WAIT};

async fn redis() -> MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}/"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects")
}

/// XADD with fields in the given order; returns the entry id.
async fn xadd(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &str)]) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(fields)
        .query_async(conn)
        .await
        .expect("XADD")
}

/// The `user.create` entry exactly as SuperMQ writes it to `supermq.users`.
const USER_CREATE: &[(&str, &str)] = &[
    ("occurred_at", "1693307171925834295"),
    ("operation", "user.create"),
    ("id", "e1b982d8-a332-4bc2-aaff-4bbaa86880fc"),
    ("status", "enabled"),
    ("created_at", "2023-08-29T11:06:11.914074Z"),
    ("name", "-dry-sun"),
    ("metadata", "{}"),
    ("identity", "[email protected]"),
];

fn source_toml(name: &str, stream: &str, group: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"redis_streams\"\nurl = \"redis://{REDIS}/\"\n\
         streams = [\"{stream}\"]\ngroup = \"{group}\"\nconsumer = \"gw-{name}\"\nstart_id = \"0\"\n\
         block = \"1s\"\n{extra}"
    )
}

async fn pending_count(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let reply: RedisValue = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .expect("XPENDING");
    match reply {
        RedisValue::Array(parts) => match parts.first() {
            Some(RedisValue::Int(n)) => *n,
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

async fn cleanup(conn: &mut MultiplexedConnection, stream: &str) {
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(stream)
        .arg(format!("{stream}.dlq"))
        .query_async(conn)
        .await;
}

#[tokio::test]
async fn supermq_user_create_reaches_the_websocket_and_bad_entries_are_dead_lettered() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let stream = format!("supermq.users.{id}");
    let group = format!("eventgate-{id}");
    let name = format!("redis-{id}");
    let mut conn = redis().await;
    let gateway = Gateway::start(&source_toml(&name, &stream, &group, "")).await;
    let mut client = gateway
        .subscriber("users", &json!({"detail-type": [{"prefix": "user."}]}))
        .await;

    let entry_id = xadd(&mut conn, &stream, USER_CREATE).await;
    let event = client.next_event().await;
    assert_eq!(event["source"], stream.as_str());
    assert_eq!(event["detail-type"], "user.create");
    assert_eq!(event["id"], entry_id.as_str());
    assert_eq!(event["time"], "2023-08-29T11:06:11Z");
    assert_eq!(event["account"], "000000000000");
    assert_eq!(event["region"], "local");
    assert_eq!(
        event["detail"],
        json!({
            "occurred_at": "1693307171925834295",
            "operation": "user.create",
            "id": "e1b982d8-a332-4bc2-aaff-4bbaa86880fc",
            "status": "enabled",
            "created_at": "2023-08-29T11:06:11.914074Z",
            "name": "-dry-sun",
            "metadata": {},
            "identity": "[email protected]",
        })
    );

    // metadata that is not JSON: dead-lettered with its reason, acked, and the next good
    // entry still flows.
    let bad_id = xadd(
        &mut conn,
        &stream,
        &[
            ("occurred_at", "1693307172248000000"),
            ("operation", "user.update"),
            ("metadata", "{not json"),
        ],
    )
    .await;
    let good_id = xadd(
        &mut conn,
        &stream,
        &[
            ("operation", "user.view"),
            ("metadata", "{\"role\":\"admin\"}"),
            ("occurred_at", "1693307172247989798"),
        ],
    )
    .await;
    let event = client.next_event().await;
    assert_eq!(event["detail-type"], "user.view", "{event}");
    assert_eq!(event["id"], good_id.as_str());
    assert_eq!(event["detail"]["metadata"], json!({"role": "admin"}));

    let dlq: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{stream}.dlq"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE dlq");
    assert_eq!(dlq.ids.len(), 1, "one dead letter: {dlq:?}");
    let dead = &dlq.ids[0];
    let field = |key: &str| -> String {
        dead.get(key)
            .unwrap_or_else(|| panic!("no {key} in {dead:?}"))
    };
    assert_eq!(field("original_id"), bad_id);
    let reason = field("reason");
    assert!(
        reason.contains("metadata") && reason.contains("not valid JSON"),
        "reason: {reason}"
    );
    assert_eq!(field("source"), name);
    let payload: Value = serde_json::from_str(&field("payload")).expect("payload is JSON");
    assert_eq!(payload["metadata"], "{not json");
    assert_eq!(payload["operation"], "user.update");

    // Everything was acked (the ack follows the hand-off, so allow it a moment).
    wait_acked(&mut conn, &stream, &group, "entries left pending").await;
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
    cleanup(&mut conn, &stream).await;
}

#[tokio::test]
async fn entries_pending_on_a_dead_consumer_are_claimed() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let stream = format!("supermq.users.{id}");
    let group = format!("eventgate-{id}");
    let name = format!("redis-claim-{id}");
    let mut conn = redis().await;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let entry_id = xadd(&mut conn, &stream, USER_CREATE).await;
    // Another gateway read the entry and died before acking it.
    let _: RedisValue = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("dead-gateway")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    assert_eq!(pending_count(&mut conn, &stream, &group).await, 1);

    let gateway = Gateway::start(&source_toml(
        &name,
        &stream,
        &group,
        "claim_idle = \"300ms\"\n",
    ))
    .await;
    let mut client = gateway
        .subscriber("users", &json!({"detail-type": ["user.create"]}))
        .await;
    // The first claim pass may run before the entry is idle long enough; the next one
    // (every claim_idle / 2, at least 1 s) takes it.
    let event = client.next_event().await;
    assert_eq!(event["id"], entry_id.as_str());
    wait_acked(&mut conn, &stream, &group, "claimed entry not acked").await;
    gateway.shutdown().await;
    cleanup(&mut conn, &stream).await;
}

#[test]
fn source_config_is_strict() {
    let base = "dev = true\nstack_id = \"s\"\n";
    let good = format!(
        "{base}[[sources]]\nname = \"a\"\nkind = \"redis_streams\"\nurl = \"redis://127.0.0.1/\"\nstreams = [\"supermq.users\"]\ngroup = \"g\"\nconsumer = \"c\"\n"
    );
    let config = eventgate::config::load(Some(&good), Vec::new(), Vec::new()).expect("valid");
    assert_eq!(config.sources.len(), 1);
    assert_eq!(config.sources[0].name(), "a");
    let unknown_key = format!("{good}bogus = 1\n");
    let error = eventgate::config::load(Some(&unknown_key), Vec::new(), Vec::new())
        .expect_err("unknown key");
    assert!(error.to_string().contains("bogus"), "{error}");
    let unknown_kind = good.replace("redis_streams", "kafka");
    assert!(eventgate::config::load(Some(&unknown_kind), Vec::new(), Vec::new()).is_err());
}

/// Receives events until every `detail.n` in `0..count` was seen at least once.
async fn receive_all_ns(client: &mut sources_common::Client, count: usize) {
    let mut seen = vec![false; count];
    while seen.iter().any(|s| !s) {
        let event = client.next_event().await;
        let n: usize = event["detail"]["n"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .expect("detail.n");
        seen[n] = true;
    }
}

#[tokio::test]
async fn a_cut_connection_loses_nothing_and_acks_only_what_was_dispatched() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let stream = format!("supermq.users.{id}");
    let group = format!("eventgate-{id}");
    let name = format!("redis-cut-{id}");
    let mut conn = redis().await;
    let proxy = TcpProxy::start(&REDIS).await;
    let toml = format!(
        "[[sources]]\nname = \"{name}\"\nkind = \"redis_streams\"\nurl = \"redis://{}/\"\n\
         streams = [\"{stream}\"]\ngroup = \"{group}\"\nconsumer = \"gw\"\nstart_id = \"0\"\n\
         block = \"200ms\"\nbatch_size = 7\nmax_backoff = \"300ms\"\n",
        proxy.addr
    );
    let gateway = Gateway::start(&toml).await;
    let mut client = gateway
        .subscriber("users", &json!({"source": [&stream]}))
        .await;
    const TOTAL: usize = 60;
    let add = |conn: &mut MultiplexedConnection, n: usize| {
        let n = n.to_string();
        let stream = stream.clone();
        let mut conn = conn.clone();
        async move {
            xadd(
                &mut conn,
                &stream,
                &[("operation", "user.update"), ("n", n.as_str())],
            )
            .await
        }
    };
    for n in 0..TOTAL / 2 {
        add(&mut conn, n).await;
    }
    // Cut the broker connection while the first half is flowing, write the second half
    // meanwhile, then let the source reconnect.
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.cut();
    for n in TOTAL / 2..TOTAL {
        add(&mut conn, n).await;
    }
    let (status, body) = wait_for_readyz(&gateway, 503).await;
    assert_eq!(status, 503, "{body}");
    proxy.restore();
    receive_all_ns(&mut client, TOTAL).await;
    let (status, body) = wait_for_readyz(&gateway, 200).await;
    assert_eq!(status, 200, "{body}");
    wait_acked(&mut conn, &stream, &group, "entries left pending").await;
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(&format!(
            "eventgate_source_reconnects_total{{source=\"{name}\"}}"
        )),
        "{metrics}"
    );
    gateway.shutdown().await;
    cleanup(&mut conn, &stream).await;
}

/// Waits until the group has no pending entry (every one acked), failing with `what`.
async fn wait_acked(conn: &mut MultiplexedConnection, stream: &str, group: &str, what: &str) {
    eventually(
        WAIT,
        Duration::from_millis(50),
        async || match pending_count(conn, stream, group).await {
            0 => Ok(()),
            pending => Err(format!("{what}: {pending} pending")),
        },
    )
    .await
}

/// Polls `/readyz` until it answers `want` (or the wait ends); returns the last answer.
async fn wait_for_readyz(gateway: &Gateway, want: u16) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = gateway.readyz().await;
        if status == want || tokio::time::Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The mapping options every source shares: `base64_json_fields` works on Redis as on NATS
/// and AMQP, and an entry without `occurred_at` gets the receipt time in the one form.
#[tokio::test]
async fn base64_json_fields_and_receipt_time_on_redis() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let stream = format!("supermq.clients.{id}");
    let group = format!("eventgate-{id}");
    let name = format!("redis-{id}");
    let mut conn = redis().await;
    let gateway = Gateway::start(&source_toml(
        &name,
        &stream,
        &group,
        "json_fields = [\"tags\"]\nbase64_json_fields = [\"metadata\"]\ndetail_type_field = \"op\"\n",
    ))
    .await;
    let mut client = gateway
        .subscriber("clients", &json!({"detail-type": ["client.create"]}))
        .await;
    xadd(
        &mut conn,
        &stream,
        &[
            ("op", "client.create"),
            ("metadata", "eyJyb2xlIjoiYWRtaW4ifQ=="),
            ("tags", "[\"a\",\"b\"]"),
        ],
    )
    .await;
    let event = client.next_event().await;
    assert_eq!(
        event["detail"]["metadata"],
        json!({"role": "admin"}),
        "{event}"
    );
    assert_eq!(event["detail"]["tags"], json!(["a", "b"]));
    assert!(whole_seconds_utc(&event["time"]), "{event}");
    gateway.shutdown().await;
    cleanup(&mut conn, &stream).await;
}
