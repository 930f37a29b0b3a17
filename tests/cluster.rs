//! Multi-node fan-out: three gateways on 127.0.0.1 share the real Redis (pub/sub) or NATS
//! backplane. An event accepted by any node reaches every matching client on every node
//! exactly once; a node that stops does not disturb the others; a Redis stream consumed by
//! all three nodes (one consumer group) delivers each entry to each matching client once; a
//! node cut off from its backplane keeps serving its own clients and counts what it could not
//! forward.

use crate::common::eventually;
use crate::sources_common;

use std::time::Duration;

use serde_json::{json, Value};

use sources_common::{broker_available, unique, Client, Gateway, TcpProxy, NATS, REDIS};

/// How long to listen for a duplicate after the expected notifications arrived.
const QUIET: Duration = Duration::from_millis(700);

fn cluster_toml(backend: &str, url: &str, channel: &str) -> String {
    format!("[cluster]\nbackend = \"{backend}\"\nurl = \"{url}\"\nchannel = \"{channel}\"\n")
}

async fn start_nodes(toml: &str) -> Vec<Gateway> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Gateway::start(toml).await);
    }
    for node in &nodes {
        node.wait_ready().await;
    }
    nodes
}

fn event(source: &str, detail_type: &str, n: usize) -> Value {
    json!({"source": source, "detail-type": detail_type, "detail": {"n": n}})
}

/// Reads exactly `expected` events' `detail.n` from `client`, then checks nothing else comes.
async fn received_ns(client: &mut Client, expected: usize) -> Vec<u64> {
    let mut ns = Vec::new();
    for _ in 0..expected {
        let event = client.next_event().await;
        ns.push(event["detail"]["n"].as_u64().expect("detail.n"));
    }
    if let Some(extra) = client.next_within(QUIET).await {
        panic!("a duplicate or unexpected notification: {extra}");
    }
    ns.sort_unstable();
    ns
}

/// Clients on every node; events posted to each node in turn; every matching client gets
/// each event once, non-matching clients none.
async fn events_reach_every_matching_client_once(nodes: &[Gateway], source: &str) {
    let pattern = json!({"source": [source], "detail-type": [{"prefix": "order."}]});
    let mut matching = Vec::new();
    let mut others = Vec::new();
    for node in nodes {
        matching.push(node.subscriber("orders", &pattern).await);
        matching.push(node.subscriber("orders", &pattern).await);
        others.push(
            node.subscriber("other", &json!({"source": [format!("{source}.other")]}))
                .await,
        );
    }
    for (n, node) in nodes.iter().enumerate() {
        let answer = node
            .post_events(&json!([
                event(source, "order.created", n),
                event(source, "invoice.paid", 100 + n)
            ]))
            .await;
        assert_eq!(answer["FailedEntryCount"], 0, "{answer}");
    }
    let expected: Vec<u64> = (0..nodes.len() as u64).collect();
    for client in &mut matching {
        assert_eq!(received_ns(client, nodes.len()).await, expected);
    }
    for client in &mut others {
        assert_eq!(client.next_within(QUIET).await, None);
    }
}

#[tokio::test]
async fn redis_backplane_delivers_exactly_once_across_three_nodes() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let toml = cluster_toml("redis", &format!("redis://{REDIS}/"), &format!("eg.{id}"));
    let mut nodes = start_nodes(&toml).await;
    let source = format!("shop.{id}");
    events_reach_every_matching_client_once(&nodes, &source).await;

    // One node stops; the other two go on serving each other's clients.
    let stopped = nodes.remove(1);
    stopped.shutdown().await;
    events_reach_every_matching_client_once(&nodes, &source).await;
    let metrics = nodes[0].metrics().await;
    assert!(
        metrics.contains("eventgate_cluster_forwarded_total"),
        "{metrics}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn nats_backplane_delivers_exactly_once_across_three_nodes() {
    if !broker_available("nats", &NATS).await {
        return;
    }
    let id = unique();
    let toml = cluster_toml("nats", &format!("nats://{NATS}"), &format!("eg.{id}"));
    let mut nodes = start_nodes(&toml).await;
    let source = format!("shop.{id}");
    events_reach_every_matching_client_once(&nodes, &source).await;
    let stopped = nodes.remove(0);
    stopped.shutdown().await;
    events_reach_every_matching_client_once(&nodes, &source).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_stream_consumed_by_every_node_reaches_each_client_once() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let stream = format!("supermq.users.{id}");
    let mut toml = cluster_toml("redis", &format!("redis://{REDIS}/"), &format!("eg.{id}"));
    let mut nodes = Vec::new();
    for node in 0..3 {
        // One consumer group shared by the nodes, one consumer name each.
        let with_source = format!(
            "{toml}[[sources]]\nname = \"users\"\nkind = \"redis_streams\"\nurl = \"redis://{REDIS}/\"\n\
             streams = [\"{stream}\"]\ngroup = \"eventgate-{id}\"\nconsumer = \"node-{node}\"\n\
             start_id = \"0\"\nblock = \"200ms\"\nbatch_size = 5\n"
        );
        nodes.push(Gateway::start(&with_source).await);
    }
    toml.clear();
    for node in &nodes {
        node.wait_ready().await;
    }
    let pattern = json!({"source": [&stream], "detail-type": [{"prefix": "user."}]});
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.subscriber("users", &pattern).await);
    }
    let client = redis::Client::open(format!("redis://{REDIS}/")).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    const ENTRIES: usize = 60;
    for n in 0..ENTRIES {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(&[
                ("operation", "user.create".to_owned()),
                ("occurred_at", "1693307171925834295".to_owned()),
                ("n", n.to_string()),
                ("metadata", "{}".to_owned()),
            ])
            .query_async(&mut redis)
            .await
            .expect("XADD");
    }
    for client in &mut clients {
        let mut ns = Vec::new();
        for _ in 0..ENTRIES {
            let event = client.next_event().await;
            ns.push(
                event["detail"]["n"]
                    .as_str()
                    .and_then(|n| n.parse::<usize>().ok())
                    .expect("detail.n"),
            );
        }
        assert_eq!(client.next_within(QUIET).await, None, "a duplicate");
        ns.sort_unstable();
        assert_eq!(ns, (0..ENTRIES).collect::<Vec<_>>());
    }
    for node in nodes {
        node.shutdown().await;
    }
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn a_node_that_loses_the_backplane_keeps_serving_its_own_clients() {
    if !broker_available("redis", &REDIS).await {
        return;
    }
    let id = unique();
    let channel = format!("eg.{id}");
    let proxy = TcpProxy::start(&REDIS).await;
    // Node `cut` reaches Redis through the proxy, node `steady` directly.
    let cut = Gateway::start(&format!(
        "{}max_backoff = \"200ms\"\n",
        cluster_toml("redis", &format!("redis://{}/", proxy.addr), &channel)
    ))
    .await;
    let steady = Gateway::start(&cluster_toml(
        "redis",
        &format!("redis://{REDIS}/"),
        &channel,
    ))
    .await;
    cut.wait_ready().await;
    steady.wait_ready().await;
    let source = format!("shop.{id}");
    let pattern = json!({"source": [&source]});
    let mut local = cut.subscriber("orders", &pattern).await;
    let mut remote = steady.subscriber("orders", &pattern).await;

    proxy.cut();
    let body = eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || match cut.readyz().await {
            (503, body) => Ok(body),
            (_, body) => Err(format!("still ready: {body}")),
        },
    )
    .await;
    assert_eq!(body["status"], "not ready", "{body}");
    // Local delivery goes on; the other node does not get it, and the loss is counted.
    cut.post_events(&json!(event(&source, "order.created", 1)))
        .await;
    assert_eq!(local.next_event().await["detail"]["n"], 1);
    assert_eq!(remote.next_within(QUIET).await, None);
    let metrics = cut.metrics().await;
    assert!(
        // `publish_failed` when the publish noticed the cut, `backplane_down` afterwards.
        metrics.contains("eventgate_cluster_not_forwarded_total{reason="),
        "{metrics}"
    );
    // The other node is unaffected.
    steady
        .post_events(&json!(event(&source, "order.created", 2)))
        .await;
    assert_eq!(remote.next_event().await["detail"]["n"], 2);

    proxy.restore();
    cut.wait_ready().await;
    cut.post_events(&json!(event(&source, "order.created", 3)))
        .await;
    assert_eq!(local.next_event().await["detail"]["n"], 3);
    assert_eq!(remote.next_event().await["detail"]["n"], 3);
    cut.shutdown().await;
    steady.shutdown().await;
}

/// The value of `eventgate_cluster_not_forwarded_total{reason="<reason>"}` (0 when absent).
fn not_forwarded(metrics: &str, reason: &str) -> f64 {
    let series = format!("eventgate_cluster_not_forwarded_total{{reason=\"{reason}\"}}");
    crate::common::metric_value(metrics, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_node_that_cannot_reach_its_nats_backplane_serves_its_clients_and_counts_the_rest() {
    // Nothing listens there: every connect is refused, so the publisher waits out its
    // backoff between attempts, which is when queued events must not pile up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let id = unique();
    let node = Gateway::start(&format!(
        "{}max_backoff = \"200ms\"\nforward_queue = 4\n",
        cluster_toml(
            "nats",
            &format!("nats://127.0.0.1:{port}"),
            &format!("eg.{id}")
        )
    ))
    .await;
    let (status, body) = node.readyz().await;
    assert_eq!(status, 503, "ready without its backplane: {body}");
    let source = format!("shop.{id}");
    let mut local = node
        .subscriber("orders", &json!({"source": [&source]}))
        .await;
    let metrics = node.metrics().await;
    let (down, full) = (
        not_forwarded(&metrics, "backplane_down"),
        not_forwarded(&metrics, "queue_full"),
    );
    // More events than the forwarding queue holds, well within one backoff delay.
    for n in 0..12 {
        node.post_events(&json!(event(&source, "order.created", n)))
            .await;
        assert_eq!(local.next_event().await["detail"]["n"], n);
    }
    let metrics = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            let metrics = node.metrics().await;
            if not_forwarded(&metrics, "backplane_down") - down >= 12.0 {
                Ok(metrics)
            } else {
                Err(format!("not counted: {metrics}"))
            }
        },
    )
    .await;
    // Counted as lost to the backplane, not as an overflow of the queue.
    assert_eq!(not_forwarded(&metrics, "queue_full"), full, "{metrics}");
    node.shutdown().await;
}
