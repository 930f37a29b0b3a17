//! Positions, the in-memory log and `Resume`, over real sockets: a client whose connection is
//! cut (through a TCP proxy this test controls) resumes and gets every event exactly once and
//! in order; expired positions, positions from another epoch and too many missed events are
//! each their own error; events accepted while a connection resumes are neither lost nor
//! sent twice.

use crate::common;
use crate::sources_common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;
use sources_common::TcpProxy;

/// `ws://` through `proxy` to `server`, with the dev header.
fn ws_url_via(proxy: &TcpProxy, server: &Server) -> String {
    format!(
        "ws://{}/?header={}",
        proxy.addr,
        url_encode(&server.dev_header())
    )
}

fn config_with(history: impl FnOnce(&mut eventgate::history::HistoryConfig)) -> Config {
    let mut config = dev_config();
    history(&mut config.history);
    config
}

/// Hello with a position to resume after: live events are held until `resume`.
async fn hello_at(client: &mut Client, position: &str) {
    let ack = client
        .request(&json!({"Action": "Hello", "RequestId": "hello", "Position": position}))
        .await;
    assert_ok(&ack, "hello");
}

async fn resume(client: &mut Client) -> Value {
    client
        .request(&json!({"Action": "Resume", "RequestId": "resume"}))
        .await
}

/// A `Resume` Ack that succeeded: returns how many events it says follow.
fn replayed(ack: &Value) -> u64 {
    assert_eq!(ack["Status"], "Ok", "{ack}");
    assert_eq!(ack["RequestId"], "resume", "{ack}");
    assert!(ack["Position"].is_string(), "{ack}");
    ack["Replayed"].as_u64().expect("Replayed")
}

async fn publish_seq(server: &Server, range: std::ops::Range<u64>) {
    let events: Vec<Value> = range
        .map(|seq| json!({"source": "seq", "detail-type": "tick", "detail": {"seq": seq}}))
        .collect();
    server.publish(&Value::Array(events)).await;
}

/// The next Event's sequence number and position.
async fn next_seq(client: &mut Client) -> (u64, String) {
    let (message, event) = client.next_event().await;
    let position = message["Position"].as_str().expect("Position").to_owned();
    (event["detail"]["seq"].as_u64().expect("seq"), position)
}

const SEQ: &str = "seq";

#[tokio::test]
async fn every_event_carries_a_position_in_acceptance_order() {
    let server = Server::dev().await;
    let mut client = server.announced().await;
    client.subscribe("r", &json!({"source": [SEQ]})).await;
    publish_seq(&server, 0..3).await;
    let mut positions = Vec::new();
    for expected in 0..3 {
        let (seq, position) = next_seq(&mut client).await;
        assert_eq!(seq, expected);
        positions.push(position);
    }
    let parsed: Vec<(&str, u64)> = positions
        .iter()
        .map(|p| {
            let (epoch, seq) = p.split_once(':').expect("epoch:seq");
            (epoch, seq.parse().expect("seq"))
        })
        .collect();
    assert!(parsed.iter().all(|(epoch, _)| *epoch == parsed[0].0));
    assert!(
        parsed.windows(2).all(|w| w[1].1 == w[0].1 + 1),
        "{positions:?}"
    );
    let metrics = server.metrics().await;
    assert!(metric_value(&metrics, "eventgate_history_events").unwrap_or(0.0) >= 3.0);
}

#[tokio::test]
async fn a_cut_connection_resumes_with_every_event_exactly_once_in_order() {
    const TOTAL: u64 = 3000;
    let mut config = config_with(|history| history.max_replay = 4000);
    config.limits.max_queued_messages = 8192;
    config.limits.max_queued_bytes = 16 * 1024 * 1024;
    let server = Arc::new(Server::start(config).await);
    let proxy = TcpProxy::start(&server.addr.to_string()).await;
    let pattern = json!({"source": [SEQ]});
    let mut client = Client::connect(&ws_url_via(&proxy, &server)).await;
    client.hello().await;
    client.subscribe("r", &pattern).await;

    // A steady stream: 10 events every 10 ms (1,000/s when the machine keeps up).
    let publisher = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            for start in (0..TOTAL).step_by(10) {
                ticker.tick().await;
                publish_seq(&server, start..start + 10).await;
            }
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let mut last_position = String::new();
    while seen.len() < 500 {
        let (seq, position) = next_seq(&mut client).await;
        seen.push(seq);
        last_position = position;
    }
    proxy.cut();
    // Read what was in flight until the connection ends.
    loop {
        match client.next_within(WAIT).await {
            Some(Received::Text(message)) if message["Action"] == "Event" => {
                let event: Value =
                    serde_json::from_str(message["Event"].as_str().expect("Event")).expect("JSON");
                seen.push(event["detail"]["seq"].as_u64().expect("seq"));
                last_position = message["Position"].as_str().expect("Position").to_owned();
            }
            Some(Received::Text(_)) => {}
            Some(Received::Closed(_)) | Some(Received::Binary) | None => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    let mut client = Client::connect(&ws_url_via(&proxy, &server)).await;
    hello_at(&mut client, &last_position).await;
    client.subscribe("r", &pattern).await;
    let ack = resume(&mut client).await;
    let count = replayed(&ack);
    assert!(count > 0, "events were published during the cut: {ack}");
    let before_resume = seen.len() as u64;
    while seen.last() != Some(&(TOTAL - 1)) {
        seen.push(next_seq(&mut client).await.0);
    }
    publisher.await.expect("publisher");
    assert_eq!(client.try_recv(QUIET).await, None, "nothing after the last");
    let expected: Vec<u64> = (0..TOTAL).collect();
    assert_eq!(seen.len(), expected.len(), "every event exactly once");
    assert!(seen == expected, "in order, no gap, no duplicate");
    assert!(seen.len() as u64 - before_resume >= count);
}

#[tokio::test]
async fn events_accepted_while_resuming_are_held_then_replayed_once() {
    let server = Server::dev().await;
    let pattern = json!({"source": [SEQ]});
    let mut first = server.announced().await;
    first.subscribe("r", &pattern).await;
    publish_seq(&server, 0..2).await;
    let (_, _) = next_seq(&mut first).await;
    let (_, position) = next_seq(&mut first).await;
    first.close().await;
    publish_seq(&server, 2..4).await;

    let mut client = server.connect().await;
    hello_at(&mut client, &position).await;
    client.subscribe("r", &pattern).await;
    // Accepted after the rule and before the Resume: held, not delivered live.
    publish_seq(&server, 4..6).await;
    assert_eq!(client.try_recv(QUIET).await, None, "held until Resume");
    let ack = resume(&mut client).await;
    assert_eq!(replayed(&ack), 4, "{ack}");
    publish_seq(&server, 6..7).await;
    for expected in 2..7 {
        assert_eq!(next_seq(&mut client).await.0, expected);
    }
    assert_eq!(client.try_recv(QUIET).await, None);

    // A connection resumes once.
    let again = resume(&mut client).await;
    assert_error(&again, Some("resume"), "cannot resume: ");
}

#[tokio::test]
async fn an_empty_position_resumes_from_the_hello() {
    let server = Server::dev().await;
    publish_seq(&server, 0..3).await;
    let mut client = server.connect().await;
    hello_at(&mut client, "").await;
    client.subscribe("r", &json!({"source": [SEQ]})).await;
    publish_seq(&server, 3..5).await;
    let ack = resume(&mut client).await;
    assert_eq!(replayed(&ack), 2, "only what came after the Hello: {ack}");
    assert_eq!(next_seq(&mut client).await.0, 3);
    assert_eq!(next_seq(&mut client).await.0, 4);
}

#[tokio::test]
async fn resume_errors_are_specific_and_end_the_hold() {
    let config = config_with(|history| {
        history.max_events = 5;
        history.max_replay = 3;
    });
    let server = Server::start(config).await;
    let pattern = json!({"source": [SEQ]});
    let mut first = server.announced().await;
    first.subscribe("r", &pattern).await;
    publish_seq(&server, 0..1).await;
    let (_, position) = next_seq(&mut first).await;

    // Four missed events: over max_replay (3), and all still retained.
    publish_seq(&server, 1..5).await;
    let mut client = server.connect().await;
    hello_at(&mut client, &position).await;
    client.subscribe("r", &pattern).await;
    let ack = resume(&mut client).await;
    let message = assert_error(&ack, Some("resume"), "too many missed events: ");
    assert!(message.contains("max_replay"), "{message}");
    let (epoch, _) = position.split_once(':').expect("epoch:seq");
    assert_eq!(ack["Position"], format!("{epoch}:5"), "the seam: {ack}");
    // The hold is over: live events flow again.
    publish_seq(&server, 5..6).await;
    assert_eq!(next_seq(&mut client).await.0, 5);

    // Six more events push the first position's successors out of the log (5 retained).
    publish_seq(&server, 6..12).await;
    let mut late = server.connect().await;
    hello_at(&mut late, &position).await;
    late.subscribe("r", &pattern).await;
    let ack = resume(&mut late).await;
    assert_error(&ack, Some("resume"), "position expired: ");

    // A position of another gateway (another epoch, as after a restart).
    let other = Server::dev().await;
    let mut elsewhere = other.connect().await;
    hello_at(&mut elsewhere, &position).await;
    let ack = resume(&mut elsewhere).await;
    let message = assert_error(&ack, Some("resume"), "position expired: ");
    assert!(message.contains("another epoch"), "{message}");

    // Not a position at all, and a position ahead of the log.
    for (bad, prefix) in [
        ("nonsense", "invalid position: "),
        ("0000000000000000:1:2", "invalid position: "),
    ] {
        let mut client = server.connect().await;
        hello_at(&mut client, bad).await;
        assert_error(&resume(&mut client).await, Some("resume"), prefix);
    }
    let mut ahead = server.connect().await;
    hello_at(&mut ahead, &format!("{epoch}:999")).await;
    assert_error(
        &resume(&mut ahead).await,
        Some("resume"),
        "invalid position: ",
    );

    // Resume without a position in Hello, and before Hello.
    let mut plain = server.announced().await;
    assert_error(&resume(&mut plain).await, Some("resume"), "cannot resume: ");
    let mut early = server.connect().await;
    assert_error(
        &resume(&mut early).await,
        Some("resume"),
        "client is unannounced",
    );

    let metrics = server.metrics().await;
    assert!(metrics.contains("eventgate_resumes_total{result=\"too_many\"}"));
    assert!(metrics.contains("eventgate_resumes_total{result=\"expired\"}"));
    assert!(metrics.contains("eventgate_history_evicted_total{reason=\"max_events\"}"));
}

#[tokio::test]
async fn a_replay_must_fit_the_outbound_queue() {
    let mut config = config_with(|history| history.max_replay = 100);
    config.limits.max_queued_bytes = 4096;
    let server = Server::start(config).await;
    let pattern = json!({"source": ["big"]});
    let mut client = server.connect().await;
    hello_at(&mut client, "").await;
    client.subscribe("r", &pattern).await;
    let padding = "x".repeat(1000);
    let events: Vec<Value> = (0..10)
        .map(|n| json!({"source": "big", "detail-type": "t", "detail": {"n": n, "p": padding}}))
        .collect();
    server.publish(&Value::Array(events)).await;
    let ack = resume(&mut client).await;
    let message = assert_error(&ack, Some("resume"), "too many missed events: ");
    assert!(message.contains("outbound queue"), "{message}");
    // Nothing was queued, the connection stays open and goes live.
    server.publish_event("big", "t", json!({"n": 10})).await;
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"]["n"], 10);
}

#[tokio::test]
async fn without_history_there_is_no_position_and_no_resume() {
    let server = Server::start(config_with(|history| history.enabled = false)).await;
    let mut client = server.connect().await;
    hello_at(&mut client, "").await;
    client.subscribe("r", &json!({"source": [SEQ]})).await;
    let ack = resume(&mut client).await;
    assert_error(&ack, Some("resume"), "cannot resume: ");
    publish_seq(&server, 0..1).await;
    let (message, _) = client.next_event().await;
    assert!(message.get("Position").is_none(), "{message}");
}

/// A `common::Client` on a `sources_common::Gateway` (another stack id), not yet announced.
async fn connect_gateway(gateway: &sources_common::Gateway) -> Client {
    let key = eventgate_protocol::header::api_key(sources_common::STACK_ID, None);
    let header = header(&json!({"Host": "127.0.0.1", "ApiKey": key, "Id": CLIENT_ID}));
    Client::connect(&format!(
        "ws://{}/?header={}",
        gateway.addr,
        url_encode(&header)
    ))
    .await
}

/// In a cluster over the pub/sub backplane each node positions the events it delivers in
/// its own log: a client resumes on its node with every event (wherever it was accepted)
/// exactly once and in order; on another node its position is from another epoch.
#[tokio::test]
async fn in_a_cluster_a_client_resumes_on_its_node() {
    const REDIS: &str = "127.0.0.1:6379";
    if !sources_common::broker_available("redis", REDIS).await {
        return;
    }
    let toml = format!(
        "[cluster]\nbackend = \"redis\"\nurl = \"redis://{REDIS}/\"\nchannel = \"history.{}\"\n",
        sources_common::unique()
    );
    let (a, b) = (
        sources_common::Gateway::start(&toml).await,
        sources_common::Gateway::start(&toml).await,
    );
    for node in [&a, &b] {
        node.wait_ready().await;
    }
    let pattern = json!({"source": [SEQ]});
    let events = |range: std::ops::Range<u64>| {
        Value::Array(
            range
                .map(|seq| json!({"source": SEQ, "detail-type": "tick", "detail": {"seq": seq}}))
                .collect(),
        )
    };
    let mut client = connect_gateway(&b).await;
    hello_at(&mut client, "").await;
    client.subscribe("r", &pattern).await;
    assert_eq!(replayed(&resume(&mut client).await), 0);
    a.post_events(&events(0..3)).await;
    let mut seen = Vec::new();
    let mut position = String::new();
    for _ in 0..3 {
        let (seq, at) = next_seq(&mut client).await;
        seen.push(seq);
        position = at;
    }
    client.close().await;

    a.post_events(&events(3..7)).await;
    let mut client = connect_gateway(&b).await;
    hello_at(&mut client, &position).await;
    client.subscribe("r", &pattern).await;
    let ack = resume(&mut client).await;
    assert_eq!(ack["Status"], "Ok", "{ack}");
    // The events may still be on their way over the backplane: replayed or live, each once.
    while seen.len() < 7 {
        seen.push(next_seq(&mut client).await.0);
    }
    assert_eq!(seen, (0..7).collect::<Vec<u64>>());
    assert_eq!(client.try_recv(QUIET).await, None);

    let mut elsewhere = connect_gateway(&a).await;
    hello_at(&mut elsewhere, &position).await;
    let message = assert_error(
        &resume(&mut elsewhere).await,
        Some("resume"),
        "position expired: ",
    );
    assert!(message.contains("another epoch"), "{message}");
    a.shutdown().await;
    b.shutdown().await;
}
