//! Resume over a shared log (`cluster.backend = "redis_stream" | "jetstream"`), against the
//! real Redis and NATS: a client whose node is stopped while events keep coming resumes on
//! another node with every event exactly once and in order; a client resumes across a
//! gateway restart; expired positions, positions of another log and too many missed events
//! are each their own error; ingest is refused (503) while the log is unreachable; a node
//! that could not read part of the log closes its connections (1012) so their clients learn
//! of the gap.

use crate::common;
use crate::sources_common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;
use sources_common::{Gateway, TcpProxy, NATS, REDIS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Log {
    Redis,
    JetStream,
}

impl Log {
    /// The broker answers (else the test is skipped, or fails in CI).
    async fn available(self) -> bool {
        match self {
            Log::Redis => sources_common::broker_available("redis", &REDIS).await,
            Log::JetStream => sources_common::broker_available("nats", &NATS).await,
        }
    }

    fn addr(self) -> String {
        match self {
            Log::Redis => REDIS.to_string(),
            Log::JetStream => NATS.to_string(),
        }
    }
}

/// A `[cluster]` on a fresh stream of `log` at `addr`, plus `extra` TOML.
fn toml_at(log: Log, addr: &str, name: &str, extra: &str) -> String {
    let cluster = match log {
        Log::Redis => format!(
            "[cluster]\nbackend = \"redis_stream\"\nurl = \"redis://{addr}/\"\nchannel = \"eventgate.test.{name}\"\nmax_backoff = \"1s\"\n"
        ),
        Log::JetStream => format!(
            "[cluster]\nbackend = \"jetstream\"\nurl = \"nats://{addr}\"\nchannel = \"eventgate.test.{name}\"\nstream = \"EG_TEST_{name}\"\nmax_backoff = \"1s\"\n"
        ),
    };
    format!("{cluster}{extra}")
}

const ROOMY: &str = "[history]\nmax_replay = 5000\n[limits]\nmax_queued_messages = 8192\nmax_queued_bytes = 16777216\n";

async fn start(toml: &str) -> Gateway {
    let node = Gateway::start(toml).await;
    node.wait_ready().await;
    node
}

/// A client on `node`, not yet announced.
async fn connect(node: &Gateway) -> Client {
    let key = eventgate_protocol::header::api_key(sources_common::STACK_ID, None);
    let header = header(&json!({"Host": "127.0.0.1", "ApiKey": key, "Id": CLIENT_ID}));
    Client::connect(&format!(
        "ws://{}/?header={}",
        node.addr,
        url_encode(&header)
    ))
    .await
}

const SEQ: &str = "seq";

fn pattern() -> Value {
    json!({"source": [SEQ]})
}

fn events(range: std::ops::Range<u64>) -> Value {
    Value::Array(
        range
            .map(|seq| json!({"source": SEQ, "detail-type": "tick", "detail": {"seq": seq}}))
            .collect(),
    )
}

/// Hello at `position`, the rule, then Resume: returns the Resume's Ack.
async fn resume_at(client: &mut Client, position: &str) -> Value {
    let ack = client
        .request(&json!({"Action": "Hello", "RequestId": "hello", "Position": position}))
        .await;
    assert_ok(&ack, "hello");
    client.subscribe("r", &pattern()).await;
    client
        .request(&json!({"Action": "Resume", "RequestId": "resume"}))
        .await
}

fn replayed(ack: &Value) -> u64 {
    assert_eq!(ack["Status"], "Ok", "{ack}");
    assert!(ack["Position"].is_string(), "{ack}");
    ack["Replayed"].as_u64().expect("Replayed")
}

/// The next Event's sequence number and position.
async fn next_seq(client: &mut Client) -> (u64, String) {
    let (message, event) = client.next_event().await;
    let position = message["Position"].as_str().expect("Position").to_owned();
    (event["detail"]["seq"].as_u64().expect("seq"), position)
}

async fn post(node: &Gateway, range: std::ops::Range<u64>) {
    node.post_events(&events(range)).await;
}

/// Three nodes on one log; events keep coming (500/s) through node `a`; the client's node
/// `b` stops; the client resumes on `c` and has every event once, in order.
async fn resumes_on_another_node(log: Log) {
    if !log.available().await {
        return;
    }
    const TOTAL: u64 = 2000;
    let toml = toml_at(log, &log.addr(), &sources_common::unique(), ROOMY);
    let a = Arc::new(start(&toml).await);
    let b = start(&toml).await;
    let c = start(&toml).await;
    let mut client = connect(&b).await;
    assert_eq!(replayed(&resume_at(&mut client, "").await), 0);

    let publisher = {
        let a = Arc::clone(&a);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            for start in (0..TOTAL).step_by(10) {
                ticker.tick().await;
                post(&a, start..start + 10).await;
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut position = String::new();
    while seen.len() < 300 {
        let (seq, at) = next_seq(&mut client).await;
        seen.push(seq);
        position = at;
    }
    // Node b stops (1001 to its clients); the client reads what was in flight.
    let stopping = tokio::spawn(b.shutdown());
    loop {
        match client.next_within(WAIT).await {
            Some(Received::Text(message)) if message["Action"] == "Event" => {
                let event: Value =
                    serde_json::from_str(message["Event"].as_str().expect("Event")).expect("JSON");
                seen.push(event["detail"]["seq"].as_u64().expect("seq"));
                position = message["Position"].as_str().expect("Position").to_owned();
            }
            Some(Received::Text(_)) => {}
            Some(Received::Closed(_)) | Some(Received::Binary) | None => break,
        }
    }
    stopping.await.expect("node b stops");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = connect(&c).await;
    let ack = resume_at(&mut client, &position).await;
    let count = replayed(&ack);
    assert!(count > 0, "events were published meanwhile: {ack}");
    while seen.last() != Some(&(TOTAL - 1)) {
        seen.push(next_seq(&mut client).await.0);
    }
    publisher.await.expect("publisher");
    assert_eq!(client.try_recv(QUIET).await, None, "nothing after the last");
    let expected: Vec<u64> = (0..TOTAL).collect();
    assert_eq!(seen.len(), expected.len(), "every event exactly once");
    assert!(seen == expected, "in order, no gap, no duplicate");
    drop(client);
    c.shutdown().await;
    if let Ok(a) = Arc::try_unwrap(a) {
        a.shutdown().await;
    }
}

#[tokio::test]
async fn redis_stream_a_client_resumes_on_another_node() {
    resumes_on_another_node(Log::Redis).await;
}

#[tokio::test]
async fn jetstream_a_client_resumes_on_another_node() {
    resumes_on_another_node(Log::JetStream).await;
}

/// One gateway, restarted: positions from before the restart resume on the new process.
async fn resumes_across_a_restart(log: Log) {
    if !log.available().await {
        return;
    }
    let toml = toml_at(log, &log.addr(), &sources_common::unique(), "");
    let node = start(&toml).await;
    let mut client = connect(&node).await;
    assert_eq!(replayed(&resume_at(&mut client, "").await), 0);
    post(&node, 0..5).await;
    let mut position = String::new();
    for expected in 0..5 {
        let (seq, at) = next_seq(&mut client).await;
        assert_eq!(seq, expected);
        position = at;
    }
    client.close().await;
    post(&node, 5..10).await;
    node.shutdown().await;

    let node = start(&toml).await;
    let mut client = connect(&node).await;
    let ack = resume_at(&mut client, &position).await;
    assert_eq!(replayed(&ack), 5, "{ack}");
    post(&node, 10..12).await;
    for expected in 5..12 {
        assert_eq!(next_seq(&mut client).await.0, expected);
    }
    assert_eq!(client.try_recv(QUIET).await, None);
    drop(client);
    node.shutdown().await;
}

#[tokio::test]
async fn redis_stream_a_client_resumes_across_a_restart() {
    resumes_across_a_restart(Log::Redis).await;
}

#[tokio::test]
async fn jetstream_a_client_resumes_across_a_restart() {
    resumes_across_a_restart(Log::JetStream).await;
}

/// Reads `client`'s events until the one numbered `last`.
async fn read_up_to(client: &mut Client, last: u64) {
    while next_seq(client).await.0 != last {}
}

/// Expired, another log's, too many: each its own error.
async fn resume_errors(log: Log) {
    if !log.available().await {
        return;
    }
    // JetStream keeps exactly max_events; a Redis stream trims by whole nodes (MAXLEN ~) but
    // the gateway's copy keeps max_events: both expire the oldest positions.
    let toml = toml_at(
        log,
        &log.addr(),
        &sources_common::unique(),
        "[history]\nmax_events = 10\nmax_replay = 3\n",
    );
    let node = start(&toml).await;
    // A live client: `POST /events` answers once the events are queued for the log, so the
    // node has read them only when they reach this observer.
    let mut observer = connect(&node).await;
    assert_eq!(replayed(&resume_at(&mut observer, "").await), 0);
    let mut client = connect(&node).await;
    assert_eq!(replayed(&resume_at(&mut client, "").await), 0);
    post(&node, 0..2).await;
    let (_, first) = next_seq(&mut client).await;
    let (_, second) = next_seq(&mut client).await;
    client.close().await;
    read_up_to(&mut observer, 1).await;

    // Four missed: over max_replay.
    post(&node, 2..6).await;
    read_up_to(&mut observer, 5).await;
    let mut client = connect(&node).await;
    let ack = resume_at(&mut client, &second).await;
    assert_error(&ack, Some("resume"), "too many missed events: ");
    drop(client);

    // Twenty more, five at a time (a burst larger than the log's 10 could be dropped by
    // JetStream before this node reads it: a gap, 1012): the first position is gone.
    for start in (6..26).step_by(5) {
        post(&node, start..start + 5).await;
        read_up_to(&mut observer, start + 4).await;
    }
    let mut client = connect(&node).await;
    let ack = resume_at(&mut client, &first).await;
    assert_error(&ack, Some("resume"), "position expired: ");
    drop(client);

    // A single gateway's position (another kind of log).
    let mut client = connect(&node).await;
    let ack = resume_at(&mut client, "00000000000000ab:3").await;
    let message = assert_error(&ack, Some("resume"), "position expired: ");
    assert!(message.contains("another epoch"), "{message}");
    drop(client);
    node.shutdown().await;
}

#[tokio::test]
async fn redis_stream_resume_errors() {
    resume_errors(Log::Redis).await;
}

#[tokio::test]
async fn jetstream_resume_errors() {
    resume_errors(Log::JetStream).await;
}

/// While the log is unreachable, ingest accepts nothing (503, JSON, Retry-After) and
/// `/readyz` says so; once it is back, events flow again.
async fn ingest_waits_for_the_log(log: Log) {
    if !log.available().await {
        return;
    }
    let proxy = TcpProxy::start(&log.addr()).await;
    let toml = toml_at(log, &proxy.addr.to_string(), &sources_common::unique(), "");
    let node = start(&toml).await;
    let mut client = connect(&node).await;
    assert_eq!(replayed(&resume_at(&mut client, "").await), 0);
    post(&node, 0..1).await;
    assert_eq!(next_seq(&mut client).await.0, 0);

    proxy.cut();
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let refused = eventually(WAIT, Duration::from_millis(100), async || {
        let response = http
            .post(format!("http://{}/events", node.addr))
            .json(&events(100..101))
            .send()
            .await
            .expect("POST /events");
        assert!(
            response.status() == 503 || response.status().is_success(),
            "{}",
            response.status()
        );
        match response.status().as_u16() {
            503 => Ok(response),
            _ => Err("ingest never noticed the log was gone".to_owned()),
        }
    })
    .await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = refused.json().await.expect("JSON error body");
    assert!(body.to_string().contains("shared event log"), "{body}");
    assert_eq!(node.readyz().await.0, 503);

    proxy.restore();
    node.wait_ready().await;
    eventually(WAIT, Duration::from_millis(100), async || {
        let response = http
            .post(format!("http://{}/events", node.addr))
            .json(&events(1..2))
            .send()
            .await
            .expect("POST /events");
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("ingest did not come back: {}", response.status()))
        }
    })
    .await;
    // What was accepted before the cut or after it arrives (events 100.. were either
    // refused, or accepted and appended once the log was back). The reader's consumer may
    // still be recovering from the cut when ingest is back (JetStream's ordered consumer
    // notices a dead subscription by its idle heartbeat, 5 s), so wait longer than `WAIT`.
    let mut seen = Vec::new();
    while seen.last() != Some(&1) {
        let Some(message) = client.try_recv(Duration::from_secs(30)).await else {
            panic!("no event within 30 s after the log came back; so far {seen:?}");
        };
        let event: Value = message["Event"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(|| panic!("not an Event: {message}"));
        seen.push(event["detail"]["seq"].as_u64().expect("seq"));
    }
    assert!(seen.iter().all(|seq| *seq == 1 || *seq == 100), "{seen:?}");
    drop(client);
    node.shutdown().await;
}

#[tokio::test]
async fn redis_stream_ingest_waits_for_the_log() {
    ingest_waits_for_the_log(Log::Redis).await;
}

#[tokio::test]
async fn jetstream_ingest_waits_for_the_log() {
    ingest_waits_for_the_log(Log::JetStream).await;
}

/// A node cut off from the log while the others append far more than it retains: when it is
/// back, it cannot deliver what was trimmed, so it closes its connections with 1012 and a
/// resume from before the gap is refused as expired.
#[tokio::test]
async fn redis_stream_a_node_that_missed_trimmed_events_closes_its_connections() {
    let log = Log::Redis;
    if !log.available().await {
        return;
    }
    let name = sources_common::unique();
    let extra = "[history]\nmax_events = 10\n";
    let proxy = TcpProxy::start(&log.addr()).await;
    let a = start(&toml_at(log, &log.addr(), &name, extra)).await;
    let b = start(&toml_at(log, &proxy.addr.to_string(), &name, extra)).await;
    let mut client = connect(&b).await;
    assert_eq!(replayed(&resume_at(&mut client, "").await), 0);
    post(&a, 0..1).await;
    let (_, position) = next_seq(&mut client).await;

    proxy.cut();
    // MAXLEN ~ trims whole radix nodes (100 entries by default): append well past them.
    for start in (1..1001).step_by(100) {
        post(&a, start..start + 100).await;
    }
    proxy.restore();
    let close = client.expect_close().await;
    assert_eq!(close.as_ref().map(|c| c.0), Some(1012), "{close:?}");
    b.wait_ready().await;
    let metrics = b.metrics().await;
    assert!(
        metric_value(&metrics, "eventgate_history_log_gaps_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    let mut client = connect(&b).await;
    let ack = resume_at(&mut client, &position).await;
    assert_error(&ack, Some("resume"), "position expired: ");
    drop(client);
    a.shutdown().await;
    b.shutdown().await;
}
