//! Hostile WebSocket peers over raw TCP against the real server: a subscriber that stops
//! reading is closed (by `write_timeout`, or by the slow-consumer stop while it sits in a
//! write) and its connection and rules are freed while a healthy client beside it loses
//! nothing; every RFC 6455 framing violation gets a Close frame with its code (1002 / 1007)
//! and a reason. Its tests run one at a time; connections and rules are counted with the
//! server's own totals (the admin API), not the process-wide gauges that the tests beside
//! them move too.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// One stalled peer at a time: the tests fill kernel buffers on purpose.
static SERIAL: Mutex<()> = Mutex::const_new(());

const EVENT_PAD: usize = 10 * 1024;

/// The sum of a metric's series whose labels contain `label` (`reason="write_timeout"`).
fn labelled(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Connections closed with `reason` (`eventgate_connections_closed_total`). The counter is
/// process-wide: a test running beside this one can only add to it.
fn closes(metrics: &str, reason: &str) -> f64 {
    labelled(
        metrics,
        "eventgate_connections_closed_total",
        &format!("reason=\"{reason}\""),
    )
}

/// This server's connections and rules (its own totals, not the shared gauges).
async fn held(server: &Server) -> (u64, u64) {
    let totals = server.totals().await;
    (
        totals["connections"].as_u64().expect("connections"),
        totals["rules"].as_u64().expect("rules"),
    )
}

/// Waits until this server holds `want` connections and rules; panics after `within`.
async fn until_held(server: &Server, within: Duration, what: &str, want: (u64, u64)) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = held(server).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}: (connections, rules) {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `condition` holds on the server's metrics; panics after `within`.
async fn until_metrics(
    server: &Server,
    within: Duration,
    what: &str,
    condition: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let metrics = server.metrics().await;
        if condition(&metrics) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}; metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `count` padded events; the healthy client must get each one, in order, before
/// the next is published.
async fn publish_and_check_healthy(server: &Server, healthy: &mut Client, count: u64) {
    let pad = "x".repeat(EVENT_PAD);
    for n in 0..count {
        server
            .publish_event("load", "item", json!({"n": n, "pad": pad}))
            .await;
        let (_, event) = healthy.next_event().await;
        assert_eq!(
            event["detail"]["n"], n,
            "the healthy client missed an event"
        );
    }
}

/// Reads what a stalled client finally gets: events, then a close frame or the end of the
/// connection (a reset when its close frame could not be sent). Returns the close frame.
async fn drain(client: &mut Client) -> Option<(u16, String)> {
    loop {
        match client.next_within(WAIT).await {
            Some(Received::Text(message)) => {
                assert_eq!(message["Action"], "Event", "{message}");
            }
            Some(Received::Closed(frame)) => return frame,
            other => panic!("expected events then the end, got {other:?}"),
        }
    }
}

/// A server with a small send buffer on which only `write_timeout` or a stop can end a
/// stalled session within a test: the idle timeout, keepalive and shutdown grace are long.
async fn stalling_server(write_timeout: Seconds, max_queued_messages: usize) -> Server {
    Server::start(Config {
        idle_timeout: ms(120_000),
        keepalive_interval: ms(60_000),
        shutdown_grace: ms(60_000),
        limits: eventgate::config::Limits {
            write_timeout,
            send_buffer_bytes: 8 * 1024,
            max_queued_messages,
            ..Default::default()
        },
        admin_token: Some(ADMIN_TOKEN.into()),
        ..dev_config()
    })
    .await
}

/// A subscriber that stops reading after its Acks and a healthy one on the same pattern,
/// then 40 events of 10 KiB (far more than the stalled client's kernel buffer and the
/// server's send buffer hold), all of which the healthy client gets.
async fn stalled_beside_healthy(server: &Server) -> (Client, Client) {
    let pattern = json!({"source": ["load"]});
    let mut stalled = server.small_buffer_client().await;
    stalled.hello().await;
    stalled.subscribe("stalled", &pattern).await;
    let mut healthy = server.announced().await;
    healthy.subscribe("healthy", &pattern).await;
    publish_and_check_healthy(server, &mut healthy, 40).await;
    (stalled, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_by_write_timeout_and_freed() {
    let _serial = SERIAL.lock().await;
    // The default queue (1,024 messages, 4 MiB) holds the 40 events: it is the pending
    // write, not the queue, that must end the stalled session.
    let server = stalling_server(ms(1000), 1024).await;
    let (connections, rules) = held(&server).await;
    let timeouts = closes(&server.metrics().await, "write_timeout");
    let (mut stalled, mut healthy) = stalled_beside_healthy(&server).await;
    // Counted once its closing handshake is over.
    until_metrics(
        &server,
        Duration::from_secs(20),
        "a close counted as write_timeout",
        |m| closes(m, "write_timeout") > timeouts,
    )
    .await;
    // The healthy client is left, with its rule.
    until_held(
        &server,
        Duration::from_secs(10),
        "the stalled connection and its rule freed",
        (connections + 1, rules + 1),
    )
    .await;

    // The healthy client goes on receiving.
    publish_and_check_healthy(&server, &mut healthy, 5).await;
    // The stalled client, reading at last, finds the end: 1013 if the close frame could
    // still be sent, else a dropped connection.
    if let Some((code, reason)) = drain(&mut stalled).await {
        assert_eq!(code, 1013, "{reason}");
        assert!(reason.contains("too slow"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_stuck_in_a_write_is_stopped_and_freed() {
    let _serial = SERIAL.lock().await;
    // Neither the write timeout nor the idle timeout can end it within the test: only the
    // slow-consumer stop (a queue of 8), which the session must see while its write is
    // pending.
    let server = stalling_server(ms(120_000), 8).await;
    let (connections, rules) = held(&server).await;
    let slow_closes = closes(&server.metrics().await, "slow_consumer");
    let (mut stalled, mut healthy) = stalled_beside_healthy(&server).await;
    until_metrics(
        &server,
        Duration::from_secs(20),
        "a close counted as slow_consumer",
        |m| closes(m, "slow_consumer") > slow_closes,
    )
    .await;
    until_held(
        &server,
        Duration::from_secs(10),
        "the slow consumer and its rule freed",
        (connections + 1, rules + 1),
    )
    .await;
    publish_and_check_healthy(&server, &mut healthy, 5).await;
    if let Some((code, reason)) = drain(&mut stalled).await {
        assert_eq!(code, 1013, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_a_session_stuck_in_a_write() {
    let _serial = SERIAL.lock().await;
    let server = stalling_server(ms(120_000), 1024).await;
    let (stalled, _healthy) = stalled_beside_healthy(&server).await;
    // `shutdown` waits at most 10 s for `run` to return, which it does only once every
    // session has ended (the grace period is a minute): the stalled one must see the stop
    // while its write is pending.
    server.shutdown().await.expect("clean shutdown");
    drop(stalled);
}

/// Opens a WebSocket by hand on a raw TCP connection; returns the socket after the 101.
async fn raw_websocket(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let url = server.ws_url();
    let path = url
        .strip_prefix(&format!("ws://{}", server.addr))
        .expect("path");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("response in time")
            .expect("response byte");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// A client frame: `first` is FIN/RSV/opcode, the payload masked when `masked`.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut bytes = vec![first];
    let flag = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => bytes.push(flag | u8::try_from(len).expect("short")),
        len => {
            bytes.push(flag | 126);
            bytes.extend_from_slice(&u16::try_from(len).expect("medium").to_be_bytes());
        }
    }
    if masked {
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// Reads the server's next frame, which must be a Close; returns its code and reason, and
/// checks that the server then ends the connection.
async fn read_close(stream: &mut TcpStream) -> (u16, String) {
    let mut header = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("a frame in time")
        .expect("a frame, not the end of the connection");
    assert_eq!(
        header[0], 0x88,
        "expected a final Close frame, got {header:?}"
    );
    assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
    let length = usize::from(header[1] & 0x7f);
    assert!(
        (2..=125).contains(&length),
        "close payload of {length} bytes"
    );
    let mut payload = vec![0u8; length];
    stream
        .read_exact(&mut payload)
        .await
        .expect("close payload");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8(payload[2..].to_vec()).expect("UTF-8 reason");
    // Then the end of the connection (FIN), not more frames.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection");
    if let Ok(read) = read {
        assert_eq!(read, 0, "bytes after the Close frame: {rest:?}");
    }
    (code, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_violation_gets_a_close_frame_with_its_code_and_reason() {
    let _serial = SERIAL.lock().await;
    let server = Server::dev().await;
    let hello = br#"{"Action":"Hello"}"#;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("unmasked frame", frame(0x81, hello, false), 1002, "masked"),
        ("RSV1 set", frame(0xc1, hello, true), 1002, "RSV"),
        ("RSV3 set", frame(0x91, hello, true), 1002, "RSV"),
        (
            "reserved data opcode",
            frame(0x83, b"", true),
            1002,
            "opcode",
        ),
        (
            "reserved control opcode",
            frame(0x8b, b"", true),
            1002,
            "opcode",
        ),
        (
            "control frame over 125 bytes",
            frame(0x89, &[b'p'; 126], true),
            1002,
            "125",
        ),
        (
            "fragmented ping",
            frame(0x09, b"p", true),
            1002,
            "fragmented",
        ),
        (
            "fragmented close",
            frame(0x08, &[3, 232], true),
            1002,
            "fragmented",
        ),
        (
            "continuation without a message",
            frame(0x80, b"x", true),
            1002,
            "continuation",
        ),
        (
            "new message inside a fragmented one",
            [frame(0x01, b"{\"Act", true), frame(0x81, b"x", true)].concat(),
            1002,
            "fragmented",
        ),
        (
            "close with a 1-byte payload",
            frame(0x88, &[3], true),
            1002,
            "1-byte",
        ),
        (
            "invalid UTF-8 in a text frame",
            frame(0x81, &[b'{', 0xc3, 0x28, b'}'], true),
            1007,
            "UTF-8",
        ),
        (
            "invalid UTF-8 across fragments",
            [frame(0x01, b"ok", true), frame(0x80, &[0xff, 0xfe], true)].concat(),
            1007,
            "UTF-8",
        ),
        (
            "invalid UTF-8 in a close reason",
            frame(0x88, &[3, 232, 0xff, 0xfe], true),
            1007,
            "UTF-8",
        ),
    ];
    for (name, bytes, code, phrase) in cases {
        let mut stream = raw_websocket(&server).await;
        stream.write_all(&bytes).await.expect("send the frame");
        let (got, reason) = read_close(&mut stream).await;
        assert_eq!(got, code, "{name}: close code (reason {reason:?})");
        assert!(
            reason.contains(phrase),
            "{name}: reason {reason:?} should mention {phrase:?}"
        );
    }
    // An announced connection is answered the same way, and its peers are not disturbed.
    let mut healthy = server.announced().await;
    let mut stream = raw_websocket(&server).await;
    stream
        .write_all(&frame(0x81, hello, true))
        .await
        .expect("hello");
    let mut ack = [0u8; 2];
    stream.read_exact(&mut ack).await.expect("the Ack's header");
    assert_eq!(ack[0], 0x81, "a text frame (the Ack)");
    let mut body = vec![0u8; usize::from(ack[1] & 0x7f)];
    stream.read_exact(&mut body).await.expect("the Ack");
    stream
        .write_all(&frame(0xc1, hello, true))
        .await
        .expect("RSV1");
    assert_eq!(read_close(&mut stream).await.0, 1002);
    healthy
        .subscribe("still-here", &json!({"source": ["x"]}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_only_echo_mode_echoes_text_and_binary() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(Config {
        dev_websocket_echo: true,
        ..dev_config()
    })
    .await;
    let mut client = server.connect().await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for message in [
        Message::text("not an action"),
        Message::binary(vec![0u8, 159, 255]),
        Message::text("second"),
    ] {
        client.ws.send(message.clone()).await.expect("send");
        let echoed = loop {
            match client.ws.next().await.expect("a frame").expect("no error") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => break other,
            }
        };
        assert_eq!(echoed, message);
    }
}
