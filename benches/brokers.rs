//! Broker source and backplane throughput, against the real brokers on this machine:
//!
//! - `redis_streams` / `nats_jetstream`: a stream is pre-filled with N SuperMQ-shaped
//!   entries, then a gateway starts with that source and the time until all N were handed
//!   to the dispatcher (acked after hand-off) gives events/s into the dispatcher.
//! - `amqp`: the same with a durable RabbitMQ queue (N/2 Lamassu CloudEvents), prefetch 1000.
//! - `cluster`: notifications per second delivered to WebSocket clients by one node, then by
//!   three nodes sharing the Redis backplane (clients spread over the nodes, events posted
//!   round-robin); the ratio is the backplane's cost.
//!
//! Run: `cargo bench --bench brokers` (optionally `-- redis_streams nats_jetstream cluster`
//! to pick, `EVENTGATE_BENCH_EVENTS=N` to size). Prints one `[brokers] ...` line per
//! figure. Needs Redis at 127.0.0.1:6379, NATS at 127.0.0.1:4222 and RabbitMQ at 127.0.0.1:5672.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use eventgate::Config;
use eventgate_protocol::header::{api_key, encode_base64};

const STACK_ID: &str = "0b5e6d3a-5f1c-4e57-9c1e-3a9d2b7c8e10";
const REDIS: &str = "127.0.0.1:6379";
const NATS: &str = "127.0.0.1:4222";

struct Node {
    addr: SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), eventgate::RunError>>,
}

async fn start(extra_toml: &str) -> Node {
    let text = format!(
        "dev = true\nstack_id = \"{STACK_ID}\"\nshutdown_grace = \"2s\"\n\
         [limits]\nmax_queued_messages = 100000\nmax_queued_bytes = 268435456\n{extra_toml}"
    );
    let config: Config =
        eventgate::config::load(Some(&text), Vec::new(), Vec::new()).expect("config loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = CancellationToken::new();
    let handle = tokio::spawn(eventgate::run(config, listener, token.clone()));
    Node {
        addr,
        token,
        handle,
    }
}

impl Node {
    async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> u64 {
        let Ok(response) = http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
        else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum()
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        for _ in 0..200 {
            if let Ok(response) = http
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await
            {
                if response.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node not ready");
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(16)
        .build()
        .expect("http client")
}

fn events_to_run() -> usize {
    std::env::var("EVENTGATE_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000)
}

/// Waits until the source's dispatched counter reaches `count`; returns the elapsed time.
/// (Metrics are process-wide: the counter is read by the source's own name.)
async fn time_until_dispatched(
    node: &Node,
    source: &str,
    started: Instant,
    count: u64,
) -> Duration {
    let http = http();
    let deadline = started + Duration::from_secs(120);
    let metric = format!("eventgate_source_dispatched_total{{source=\"{source}\"}}");
    loop {
        let dispatched = node.metric(&http, &metric).await;
        if dispatched >= count {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {dispatched} of {count} dispatched"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn report(name: &str, count: usize, elapsed: Duration) {
    println!(
        "[brokers] {name}: {count} events into the dispatcher in {:.2} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}

async fn redis_streams(count: usize) {
    let client = redis::Client::open(format!("redis://{REDIS}/")).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("bench.supermq.users.{id}");
    // Pre-fill in pipelines of 1,000.
    for chunk in 0..count.div_ceil(1000) {
        let mut pipe = redis::pipe();
        for n in chunk * 1000..((chunk + 1) * 1000).min(count) {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(&[
                    ("occurred_at", "1693307171925834295".to_owned()),
                    ("operation", "user.create".to_owned()),
                    ("id", format!("user-{n}")),
                    ("status", "enabled".to_owned()),
                    ("name", "bench-user".to_owned()),
                    ("metadata", "{\"plan\":\"pro\"}".to_owned()),
                ])
                .ignore();
        }
        let _: () = pipe.query_async(&mut redis).await.expect("XADD pipeline");
    }
    let started = Instant::now();
    let node = start(&format!(
        "[[sources]]\nname = \"bench-redis\"\nkind = \"redis_streams\"\nurl = \"redis://{REDIS}/\"\n\
         streams = [\"{stream}\"]\ngroup = \"bench\"\nconsumer = \"bench\"\nstart_id = \"0\"\nbatch_size = 500\n"
    ))
    .await;
    let elapsed = time_until_dispatched(&node, "bench-redis", started, count as u64).await;
    report("redis_streams", count, elapsed);
    node.stop().await;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("DEL");
}

async fn nats_jetstream(count: usize) {
    let client = async_nats::connect(NATS).await.expect("nats connects");
    let js = async_nats::jetstream::new(client.clone());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("BENCH_{id}");
    let subject = format!("bench.{id}.supermq.users");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("bench.{id}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let body = r#"{"created_at":"2023-10-05T12:41:04.743529Z","id":"0a5f2e21-1a8b-460e-bfa9-732e570df095","identity":"[email protected]","metadata":"e30=","name":"wizardly_hopper","occurred_at":1696509664755440542,"operation":"user.create","status":"enabled"}"#;
    // Publish with bounded outstanding acks.
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..count {
        acks.push(
            js.publish(subject.clone(), body.into())
                .await
                .expect("publish"),
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("stored");
    }
    let started = Instant::now();
    let node = start(&format!(
        "[[sources]]\nname = \"bench-nats\"\nkind = \"nats_jetstream\"\nurl = \"nats://{NATS}\"\n\
         stream = \"{name}\"\ndurable = \"bench\"\nbatch_size = 500\nmax_ack_pending = 20000\n"
    ))
    .await;
    let elapsed = time_until_dispatched(&node, "bench-nats", started, count as u64).await;
    report("nats_jetstream", count, elapsed);
    node.stop().await;
    let _ = js.delete_stream(&name).await;
}

async fn amqp(count: usize) {
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

    let connection = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .expect("rabbitmq connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (exchange, queue) = (format!("bench-{id}"), format!("bench-{id}"));
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let body = r#"{"id":"550e8400-e29b-41d4-a716-446655440000","type":"lamassu.certificate.issued","source":"ca-service","specversion":"1.0","time":"2024-01-15T10:30:00Z","datacontenttype":"application/json","data":{"serial_number":"1a2b3c4d5e6f","subject":"CN=device-001,O=Acme Corp","issuer_ca_id":"root-ca"}}"#;
    let mut confirms = Vec::with_capacity(1000);
    for _ in 0..count {
        confirms.push(
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "lamassu.certificate.issued".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish"),
        );
        if confirms.len() == 1000 {
            for confirm in confirms.drain(..) {
                confirm.await.expect("confirmed");
            }
        }
    }
    for confirm in confirms.drain(..) {
        confirm.await.expect("confirmed");
    }
    let started = Instant::now();
    let node = start(&format!(
        "[[sources]]\nname = \"bench-amqp\"\nkind = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         exchange = \"{exchange}\"\nbinding_keys = [\"#\"]\nqueue = \"{queue}\"\nprefetch = 1000\nbatch_size = 250\n"
    ))
    .await;
    let elapsed = time_until_dispatched(&node, "bench-amqp", started, count as u64).await;
    report("amqp", count, elapsed);
    node.stop().await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .queue_delete(
            format!("{queue}.dlq").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
}

/// Opens `per_node` announced connections on each node; connection `i` subscribes to
/// group `i % groups`. Returns the shared received counter.
async fn clients(
    nodes: &[&Node],
    per_node: usize,
    groups: usize,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut index = 0usize;
    for node in nodes {
        for _ in 0..per_node {
            let group = index % groups;
            index += 1;
            let header = json!({"Host": "127.0.0.1", "ApiKey": api_key(STACK_ID, None), "Id": uuid::Uuid::new_v4().to_string()});
            let header = encode_base64(header.to_string().as_bytes())
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D");
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://{}/?header={header}", node.addr))
                    .await
                    .expect("connect");
            let pattern = json!({"source": ["bench"], "detail": {"group": [group]}}).to_string();
            for action in [
                json!({"Action": "Hello", "RequestId": "h"}),
                json!({"Action": "Subscribe", "RequestId": "s", "Rule": "g", "Pattern": pattern}),
            ] {
                ws.send(Message::Text(action.to_string().into()))
                    .await
                    .expect("send");
                loop {
                    let Some(Ok(Message::Text(text))) = ws.next().await else {
                        panic!("no ack")
                    };
                    let value: Value = serde_json::from_str(&text).expect("json");
                    if value["Action"] == "Ack" {
                        assert_eq!(value["Status"], "Ok", "{value}");
                        break;
                    }
                }
            }
            let received = received.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        message = ws.next() => match message {
                            Some(Ok(Message::Text(text))) if text.contains("\"Action\":\"Event\"") => {
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
            });
        }
    }
}

/// Posts `events` events round-robin over `nodes` in batches and waits for the expected
/// notifications; returns notifications per second.
async fn delivery_rate(nodes: &[&Node], connections: usize, groups: usize, events: usize) -> f64 {
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    clients(
        nodes,
        connections / nodes.len(),
        groups,
        received.clone(),
        stop.clone(),
    )
    .await;
    let http = http();
    let per_group = connections / groups;
    let expected = (events * per_group) as u64;
    let started = Instant::now();
    let batch = 100;
    let mut posts = Vec::new();
    for (number, first) in (0..events).step_by(batch).enumerate() {
        let body: Vec<Value> = (first..(first + batch).min(events))
            .map(|k| json!({"source": "bench", "detail-type": "load", "detail": {"group": k % groups, "k": k}}))
            .collect();
        let node = nodes[number % nodes.len()];
        let request = http
            .post(format!("http://{}/events", node.addr))
            .json(&body)
            .send();
        posts.push(request);
        if posts.len() == 8 {
            for response in futures_util::future::join_all(posts.drain(..)).await {
                assert!(response.expect("POST").status().is_success());
            }
        }
    }
    for response in futures_util::future::join_all(posts.drain(..)).await {
        assert!(response.expect("POST").status().is_success());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let got = received.load(Ordering::Relaxed);
    stop.cancel();
    assert_eq!(got, expected, "lost or duplicated notifications");
    got as f64 / elapsed.as_secs_f64()
}

async fn cluster(events: usize) {
    const CONNECTIONS: usize = 300;
    const GROUPS: usize = 10;
    let events = events / 10;
    let single = start("").await;
    let single_rate = delivery_rate(&[&single], CONNECTIONS, GROUPS, events).await;
    single.stop().await;
    println!("[brokers] cluster: 1 node, {CONNECTIONS} connections, 1/{GROUPS} matching: {single_rate:.0} notifications/s");

    let id = uuid::Uuid::new_v4().simple().to_string();
    let toml = format!(
        "[cluster]\nbackend = \"redis\"\nurl = \"redis://{REDIS}/\"\nchannel = \"bench.{id}\"\n"
    );
    let http = http();
    let nodes = [start(&toml).await, start(&toml).await, start(&toml).await];
    for node in &nodes {
        node.wait_ready(&http).await;
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let cluster_rate = delivery_rate(&refs, CONNECTIONS, GROUPS, events).await;
    println!(
        "[brokers] cluster: 3 nodes over redis, same load: {cluster_rate:.0} notifications/s = {:.2}x the single node",
        cluster_rate / single_rate
    );
    for node in nodes {
        node.stop().await;
    }
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wants = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.contains(w.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let count = events_to_run();
    runtime.block_on(async {
        if wants("redis_streams") {
            redis_streams(count).await;
        }
        if wants("nats_jetstream") {
            nats_jetstream(count).await;
        }
        if wants("amqp") {
            amqp(count / 2).await;
        }
        if wants("cluster") {
            cluster(count).await;
        }
    });
}
