//! `eventgate-bench`: the project's load tool. Opens N WebSocket connections to a running
//! gateway (spread over 127.0.0.x source addresses), announces each with rules, publishes
//! events over HTTP at a rate (or as fast as possible) and reports connection set-up rate,
//! delivered notifications per second, ingest-to-client latency percentiles (the send time
//! travels in the event), lost notifications and the server's resident memory per
//! connection from `/proc`.
//!
//! Workload: connection `i` subscribes rule `hit` = `{"source":["bench"],"detail":{"group":[i % groups]}}`
//! and rule `miss` = `{"source":["never"]}`; event `k` carries group `k % groups`, so each
//! event matches `1/groups` of the connections (`--groups 100` = 1%).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(name = "eventgate-bench", about = "Load tool for eventgate")]
struct Args {
    /// Gateway address, e.g. 127.0.0.1:8080.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// API key to present.
    #[arg(long)]
    api_key: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Each event matches 1/groups of the connections.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Events per second to publish; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Events per POST.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Server process id, for resident memory figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N (so many connections do not run out of ports).
    #[arg(long, default_value_t = 4)]
    source_addresses: u8,
    /// Only connect and report memory; publish nothing.
    #[arg(long)]
    idle: bool,
    /// Bytes of padding in each event's detail.
    #[arg(long, default_value_t = 600)]
    padding: usize,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn header(host: &str, api_key: &str) -> String {
    let document = format!(
        "{{\"Host\":\"{host}\",\"ApiKey\":\"{api_key}\",\"Id\":\"{}\"}}",
        uuid::Uuid::new_v4()
    );
    eventgate_protocol::header::encode_base64(document.as_bytes())
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

struct Stats {
    received: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    measuring: std::sync::atomic::AtomicBool,
}

async fn connect_one(args: &Args, index: usize, stats: Arc<Stats>) -> Result<(), String> {
    let source = Ipv4Addr::new(
        127,
        0,
        0,
        1 + (index % usize::from(args.source_addresses.max(1))) as u8,
    );
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| e.to_string())?;
    let stream = socket
        .connect(args.server)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "ws://{}/?header={}",
        args.server,
        header(&args.server.ip().to_string(), &args.api_key)
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| e.to_string())?;
    let group = index % args.groups.max(1);
    let frames = [
        r#"{"Action":"Hello","RequestId":"h"}"#.to_owned(),
        format!(
            r#"{{"Action":"Subscribe","RequestId":"s1","Rule":"hit","Pattern":"{{\"source\":[\"bench\"],\"detail\":{{\"group\":[{group}]}}}}"}}"#
        ),
        r#"{"Action":"Subscribe","RequestId":"s2","Rule":"miss","Pattern":"{\"source\":[\"never\"]}"}"#.to_owned(),
    ];
    for frame in frames {
        ws.send(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains("\"Ack\"") => {
                    if !text.contains("\"Ok\"") {
                        return Err(format!("ack error: {text}"));
                    }
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed during set-up".into()),
            }
        }
    }
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if !text.starts_with("{\"Action\":\"Event\"") {
                continue;
            }
            let received_at = now_nanos();
            stats.received.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = sent_stamp(&text) {
                if stats.measuring.load(Ordering::Relaxed) {
                    if let Ok(mut latencies) = stats.latencies.lock() {
                        latencies.push(received_at.saturating_sub(sent));
                    }
                }
            }
        }
    });
    Ok(())
}

/// Finds `sent\":<digits>` in the escaped Event string without parsing the whole frame.
fn sent_stamp(text: &str) -> Option<u64> {
    let start = text.find("sent\\\":")? + "sent\\\":".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1e6
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        measuring: std::sync::atomic::AtomicBool::new(false),
    });
    let rss_before = args.server_pid.and_then(rss_kib);

    // Phase 1: connection storm.
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(200));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let permit = semaphore.clone().acquire_owned().await;
        let args = args.clone();
        let stats = stats.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connect_one(&args, index, stats).await {
                if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("connection {index}: {error}");
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let setup = started.elapsed();
    let failed = failures.load(Ordering::Relaxed);
    let connected = args.connections as u64 - failed;
    println!(
        "connections: {connected} set up in {:.2}s = {:.0}/s (upgrade + Hello + 2 Subscribe + Acks), {failed} failed",
        setup.as_secs_f64(),
        connected as f64 / setup.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let (Some(pid), Some(before)) = (args.server_pid, rss_before) {
        if let Some(after) = rss_kib(pid) {
            println!(
                "server rss: {before} KiB before, {after} KiB after; {:.1} KiB per connection",
                (after.saturating_sub(before)) as f64 / connected.max(1) as f64
            );
        }
    }
    if args.idle {
        return;
    }

    // Phase 2: publish.
    let client = reqwest::Client::new();
    let url = format!("http://{}/events", args.server);
    let padding = "x".repeat(args.padding);
    let groups = args.groups.max(1) as u64;
    // Connections that set up successfully, per group (failed ones are not expected).
    let members_per_group: Vec<u64> = (0..groups as usize)
        .map(|group| {
            (0..args.connections)
                .filter(|i| i % groups as usize == group)
                .count() as u64
        })
        .collect();
    let members_per_group: Vec<u64> = if failed == 0 {
        members_per_group
    } else {
        members_per_group
            .iter()
            .map(|m| m * connected / args.connections.max(1) as u64)
            .collect()
    };
    stats.measuring.store(true, Ordering::Relaxed);
    let publish_started = Instant::now();
    let deadline = publish_started + Duration::from_secs(args.duration);
    let mut published: u64 = 0;
    let mut expected: u64 = 0;
    let batch = args.batch.max(1) as u64;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
    while Instant::now() < deadline {
        if args.rate > 0 {
            let due =
                publish_started + Duration::from_secs_f64(published as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let sent = now_nanos();
        let mut body = String::from("[");
        for offset in 0..batch {
            let k = published + offset;
            if offset > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"source":"bench","detail-type":"load","detail":{{"group":{},"seq":{k},"sent":{sent},"padding":"{padding}"}}}}"#,
                k % groups
            ));
            expected += members_per_group[(k % groups) as usize];
        }
        body.push(']');
        published += batch;
        let permit = in_flight.clone().acquire_owned().await;
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
        });
    }
    let _ = in_flight.acquire_many(4).await;
    let publish_time = publish_started.elapsed();
    // Let deliveries finish.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.received.load(Ordering::Relaxed);
        if now >= expected || (now == last && now > 0) {
            break;
        }
        last = now;
    }
    let total_time = publish_started.elapsed();
    let received = stats.received.load(Ordering::Relaxed);
    let mut latencies = stats
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    println!(
        "published: {published} events in {:.2}s = {:.0} events/s",
        publish_time.as_secs_f64(),
        published as f64 / publish_time.as_secs_f64()
    );
    println!(
        "notifications: {received} received of {expected} expected ({} lost) = {:.0}/s",
        expected.saturating_sub(received),
        received as f64 / total_time.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0)
    );
    if let Some(pid) = args.server_pid {
        if let Some(rss) = rss_kib(pid) {
            println!("server rss at end: {rss} KiB");
        }
    }
}
