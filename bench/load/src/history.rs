//! Issue #16's history and resume benchmarks: `--publish-server` (POST events to another node
//! than the one the subscribers are on, for the cluster backplane runs) and `--resume-storm`.
//!
//! `--resume-storm`: `--connections` storm clients on `--server` (node A) each say
//! `Hello` with `"Position":""`, subscribe two rules that both match every storm event
//! (`{"source":["storm"]}` and `{"detail":{"kind":["storm","warmup"]}}`), `Resume` and go
//! live; `--live-connections` live clients on `--live-server` (node B) run the ordinary
//! workload (`--live-groups`, `--live-rate` events/s posted to `--publish-server`, default
//! node B). Then:
//!
//! 1. `--warmup-events` storm events are posted; every storm client records the `Position` of
//!    the last one it received;
//! 2. the live clients' latency is measured for `--quiet-secs` (the "quiet" reference);
//! 3. every storm client closes; `--storm-events` events (`detail.seq` 0..n) are posted;
//!    `--between-phases-cmd` runs (`sh -c`; the script restarts node A there and waits for
//!    its `/readyz`); node A's new pid is read from `--server-pid-file`;
//! 4. the storm: all storm clients reconnect at once (`--storm-concurrency` set-ups in
//!    flight) with `Hello` + their position, both `Subscribe`s and `Resume`. Each must get an
//!    Ack with `Replayed` = n and then seq 0..n-1 exactly once, in order; anything else is
//!    counted (resume errors, gaps, duplicates, missing). Time = from the first reconnect to
//!    the last client's n-th replayed event. The live latency is measured meanwhile;
//! 5. the live latency is measured `--quiet-secs` more ("after"), and duplicates arriving
//!    meanwhile are still counted.
//!
//! Owns the storm's phases, the storm clients and their exactly-once check, and the live
//! latency per phase. Does not own the ordinary workload (connection set-up of the live
//! clients, the live publisher, the histogram: `main.rs`), nor starting or restarting servers
//! (`bench/resume-storm.sh`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::{watch, Semaphore};

use super::*;

/// The history flags, flattened into the load tool's arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct HistoryArgs {
    /// POST events to this address instead of --server (a cluster's node A while the
    /// subscribers are on node B). With --resume-storm: default --live-server.
    #[arg(long)]
    pub publish_server: Option<SocketAddr>,
    /// Resume-storm mode (see `history.rs`): storm clients on --server, live ones on
    /// --live-server.
    #[arg(long)]
    pub resume_storm: bool,
    /// --resume-storm: the node the live clients are on (default --server).
    #[arg(long)]
    pub live_server: Option<SocketAddr>,
    /// --resume-storm: the live node's process id (RSS and CPU).
    #[arg(long)]
    pub live_server_pid: Option<u32>,
    /// --resume-storm: live clients beside the storm.
    #[arg(long, default_value_t = 1000)]
    pub live_connections: usize,
    /// --resume-storm: each live event matches 1/live-groups of the live clients.
    #[arg(long, default_value_t = 10)]
    pub live_groups: usize,
    /// --resume-storm: live events per second.
    #[arg(long, default_value_t = 200)]
    pub live_rate: u64,
    /// --resume-storm: events published while the storm clients are away (each must resume
    /// them all).
    #[arg(long, default_value_t = 100)]
    pub storm_events: u64,
    /// --resume-storm: events published before the close, to give every storm client a
    /// position.
    #[arg(long, default_value_t = 3)]
    pub warmup_events: u64,
    /// --resume-storm: shell command run after the storm clients closed and the storm events
    /// were published (restart node A there; return once it is ready).
    #[arg(long, default_value = "")]
    pub between_phases_cmd: String,
    /// --resume-storm: file holding node A's process id after --between-phases-cmd.
    #[arg(long)]
    pub server_pid_file: Option<PathBuf>,
    /// --resume-storm: reconnect set-ups in flight at once (default --concurrency).
    #[arg(long)]
    pub storm_concurrency: Option<usize>,
    /// --resume-storm: seconds of live latency measured before the close and after the storm.
    #[arg(long, default_value_t = 10)]
    pub quiet_secs: u64,
    /// --resume-storm: most seconds the storm may take before the missing events are counted.
    #[arg(long, default_value_t = 120)]
    pub storm_timeout: u64,
}

impl HistoryArgs {
    /// Where `POST /events` goes.
    pub fn publishes_to(&self, args: &Args) -> SocketAddr {
        self.publish_server.unwrap_or(args.server)
    }
}

// ---------------------------------------------------------------------------------------
// Live clients: latency per phase

/// What the live latency is recorded under: 0 set-up and warm-up, 1 the quiet reference, 2
/// close + publish + restart, 3 the storm, 4 after it. A notification counts in the phase in
/// which its event was published (its `sent` stamp), not the one in which it arrived: a
/// backlog the storm left behind is the storm's, not the next phase's.
const PHASE_NAMES: [&str; 5] = ["setup", "quiet", "restart", "storm", "after"];
const PHASE_AFTER: usize = 4;

struct Live {
    phase: AtomicU64,
    /// When each phase began (ns since the epoch, as `sent` stamps); 0 until it does.
    phase_started: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    latency: Vec<Histogram>,
    closed: AtomicU64,
    stopping: AtomicBool,
}

impl Live {
    fn new() -> Self {
        Live {
            phase: AtomicU64::new(0),
            phase_started: (0..PHASE_NAMES.len()).map(|_| AtomicU64::new(0)).collect(),
            received: (0..PHASE_NAMES.len()).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..PHASE_NAMES.len()).map(|_| Histogram::new()).collect(),
            closed: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// Starts `phase`.
    fn enter(&self, phase: usize) {
        self.phase_started[phase].store(now_nanos(), Ordering::Relaxed);
        self.phase.store(phase as u64, Ordering::Relaxed);
    }

    /// The phase in which an event stamped `sent` was published.
    fn phase_at(&self, sent: u64) -> usize {
        (1..PHASE_NAMES.len())
            .rev()
            .find(|&phase| {
                let started = self.phase_started[phase].load(Ordering::Relaxed);
                started != 0 && started <= sent
            })
            .unwrap_or(0)
    }

    fn received(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum()
    }
}

fn spawn_live_reader(mut ws: Ws, live: Arc<Live>) {
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                if !text.starts_with("{\"Action\":\"Event\"") {
                    continue;
                }
                match sent_stamp(&text) {
                    Some(sent) => {
                        let phase = live.phase_at(sent);
                        live.received[phase].fetch_add(1, Ordering::Relaxed);
                        live.latency[phase].record(now_nanos().saturating_sub(sent));
                    }
                    None => {
                        let phase = live.phase.load(Ordering::Relaxed) as usize;
                        live.received[phase].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if !live.stopping.load(Ordering::Relaxed) {
            live.closed.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// ---------------------------------------------------------------------------------------
// Storm clients

const STAGE_CLOSE: u8 = 1;
const STAGE_RECONNECT: u8 = 2;
const STAGE_STOP: u8 = 3;

#[derive(Default)]
struct Storm {
    ready: AtomicU64,
    setup_failed: AtomicU64,
    warm: AtomicU64,
    closed: AtomicU64,
    /// Storm clients whose resume ended (complete or not).
    finished: AtomicU64,
    complete: AtomicU64,
    reconnect_failed: AtomicU64,
    reconnect_retries: AtomicU64,
    resume_errors: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    missing: AtomicU64,
    replayed_total: AtomicU64,
    /// Nanoseconds since the epoch when the reconnects were let go.
    started_ns: AtomicU64,
    /// Per complete client: ns from the storm's start to its Resume Ack and to its last
    /// replayed event.
    acked_after: Mutex<Vec<u64>>,
    done_after: Mutex<Vec<u64>>,
    positions: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    /// Resume Acks that were not `Ok` with `Replayed` = n, by their first 60 characters.
    resume_acks: Mutex<BTreeMap<String, u64>>,
}

impl Storm {
    fn error(&self, text: String) {
        if let Ok(mut list) = self.errors.lock() {
            if list.len() < 10 {
                list.push(text);
            }
        }
    }
}

/// A parsed frame of a storm client.
enum Frame {
    Ack(Value),
    /// (detail.kind, detail.seq, Position)
    Event(String, u64, String),
    Other,
}

fn parse_frame(text: &str) -> Frame {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Frame::Other;
    };
    match value["Action"].as_str() {
        Some("Ack") => Frame::Ack(value),
        Some("Event") => {
            let event: Value = value["Event"]
                .as_str()
                .and_then(|e| serde_json::from_str(e).ok())
                .unwrap_or(Value::Null);
            Frame::Event(
                event["detail"]["kind"].as_str().unwrap_or("").to_owned(),
                event["detail"]["seq"].as_u64().unwrap_or(u64::MAX),
                value["Position"].as_str().unwrap_or("").to_owned(),
            )
        }
        _ => Frame::Other,
    }
}

async fn next_ack(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match parse_frame(&text) {
                Frame::Ack(ack) => return Ok(ack),
                Frame::Event(..) => return Err(format!("event before the Acks: {text}")),
                Frame::Other => continue,
            },
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed during set-up".into()),
        }
    }
}

/// Upgrade, Hello with `position`, both Subscribes and Resume (pipelined after Hello's Ack,
/// as the JS client does); returns the socket and the Resume Ack.
async fn storm_set_up(args: &Args, index: usize, position: &str) -> Result<(Ws, Value), String> {
    let stream = open_socket(args, index).await?;
    let url = format!(
        "ws://{}/?header={}",
        args.server,
        header(&args.server.ip().to_string(), &args.api_key, None)
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let hello = json!({"Action": "Hello", "RequestId": "h", "Position": position});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    let ack = next_ack(&mut ws).await?;
    if ack["Status"] != "Ok" {
        return Err(format!("hello: {ack}"));
    }
    let frames = [
        r#"{"Action":"Subscribe","RequestId":"s1","Rule":"storm","Pattern":"{\"source\":[\"storm\"]}"}"#,
        r#"{"Action":"Subscribe","RequestId":"s2","Rule":"kind","Pattern":"{\"detail\":{\"kind\":[\"storm\",\"warmup\"]}}"}"#,
        r#"{"Action":"Resume","RequestId":"r"}"#,
    ];
    for frame in frames {
        ws.feed(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    for _ in 0..2 {
        let ack = next_ack(&mut ws).await?;
        if ack["Status"] != "Ok" {
            return Err(format!("subscribe: {ack}"));
        }
    }
    let ack = next_ack(&mut ws).await?;
    Ok((ws, ack))
}

/// One storm client through every stage.
async fn storm_client(
    args: Arc<Args>,
    storm: Arc<Storm>,
    permits: Arc<Semaphore>,
    index: usize,
    mut stage: watch::Receiver<u8>,
) {
    let events = args.history.storm_events;
    let warmup = args.history.warmup_events;
    // Stage 0: set up (the connect semaphore is the same one, held for the set-up only).
    let set_up = {
        let _permit = permits.acquire().await;
        tokio::time::timeout(Duration::from_secs(30), storm_set_up(&args, index, "")).await
    };
    let (mut ws, ack) = match set_up {
        Ok(Ok(pair)) => pair,
        outcome => {
            storm.setup_failed.fetch_add(1, Ordering::Relaxed);
            storm.error(format!("set-up {index}: {}", describe(outcome)));
            return;
        }
    };
    let mut position = ack["Position"].as_str().unwrap_or("").to_owned();
    storm.ready.fetch_add(1, Ordering::Relaxed);
    let mut warm_seen = 0;
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Frame::Event(kind, _, pos) = parse_frame(&text) {
                        position = pos;
                        if kind == "warmup" {
                            warm_seen += 1;
                            if warm_seen == warmup {
                                storm.warm.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    storm.error(format!("client {index}: closed by the server before the storm"));
                    break;
                }
            },
            _ = stage.wait_for(|s| *s >= STAGE_CLOSE) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    drop(ws);
    if let Ok(mut positions) = storm.positions.lock() {
        *positions.entry(position.clone()).or_default() += 1;
    }
    storm.closed.fetch_add(1, Ordering::Relaxed);

    // Stage 2: reconnect and resume.
    if stage.wait_for(|s| *s >= STAGE_RECONNECT).await.is_err() {
        return;
    }
    let started_ns = storm.started_ns.load(Ordering::Relaxed);
    let mut attempt = 0;
    let (mut ws, ack) = loop {
        let outcome = {
            let _permit = permits.acquire().await;
            tokio::time::timeout(
                Duration::from_secs(30),
                storm_set_up(&args, index, &position),
            )
            .await
        };
        match outcome {
            Ok(Ok(pair)) => break pair,
            outcome if attempt < 2 => {
                attempt += 1;
                storm.reconnect_retries.fetch_add(1, Ordering::Relaxed);
                storm.error(format!(
                    "reconnect {index} (will retry): {}",
                    describe(outcome)
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            outcome => {
                storm.reconnect_failed.fetch_add(1, Ordering::Relaxed);
                storm.missing.fetch_add(events, Ordering::Relaxed);
                storm.finished.fetch_add(1, Ordering::Relaxed);
                storm.error(format!("reconnect {index}: {}", describe(outcome)));
                return;
            }
        }
    };
    let acked_ns = now_nanos();
    let replayed = ack["Replayed"].as_u64();
    if ack["Status"] != "Ok" || replayed != Some(events) {
        storm.resume_errors.fetch_add(1, Ordering::Relaxed);
        let text = format!(
            "{} {} Replayed {:?}",
            ack["Status"].as_str().unwrap_or("?"),
            ack["Message"].as_str().unwrap_or(""),
            replayed
        );
        if let Ok(mut acks) = storm.resume_acks.lock() {
            *acks.entry(text.chars().take(60).collect()).or_default() += 1;
        }
    }
    let mut next = 0u64;
    let mut finished = false;
    let finish = |storm: &Storm, next: u64| {
        storm.finished.fetch_add(1, Ordering::Relaxed);
        storm.replayed_total.fetch_add(next, Ordering::Relaxed);
        if next < events {
            storm.missing.fetch_add(events - next, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Frame::Event(kind, seq, _) = parse_frame(&text) else { continue };
                    if kind != "storm" || seq < next || finished {
                        storm.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if seq > next {
                        storm.gaps.fetch_add(1, Ordering::Relaxed);
                        storm.error(format!("client {index}: gap, seq {seq} after {next}"));
                    }
                    next = seq + 1;
                    if next >= events {
                        let now = now_nanos();
                        finished = true;
                        storm.complete.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut list) = storm.acked_after.lock() {
                            list.push(acked_ns.saturating_sub(started_ns));
                        }
                        if let Ok(mut list) = storm.done_after.lock() {
                            list.push(now.saturating_sub(started_ns));
                        }
                        finish(&storm, next);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    storm.error(format!("client {index}: closed by the server during the storm"));
                    break;
                }
            },
            _ = stage.wait_for(|s| *s >= STAGE_STOP) => break,
        }
    }
    if !finished {
        finish(&storm, next);
    }
}

fn describe<T>(outcome: Result<Result<T, String>, tokio::time::error::Elapsed>) -> String {
    match outcome {
        Ok(Ok(_)) => "ok".into(),
        Ok(Err(e)) => e,
        Err(_) => "timed out after 30s".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Publishing storm events

/// Posts storm events `first .. first + count` of `kind` to the publish server in batches of
/// 10, one request after the other (so they enter the log in seq order); returns how many
/// were accepted.
async fn post_storm_events(args: &Args, kind: &str, count: u64) -> u64 {
    let client = reqwest::Client::new();
    let url = format!("http://{}/events", args.history.publishes_to(args));
    let padding = "x".repeat(args.padding);
    let mut accepted = 0;
    let mut k = 0;
    while k < count {
        let n = (count - k).min(10);
        let body: Vec<String> = (k..k + n)
            .map(|seq| {
                format!(
                    r#"{{"source":"storm","detail-type":"storm","detail":{{"kind":"{kind}","seq":{seq},"sent":{},"padding":"{padding}"}}}}"#,
                    now_nanos()
                )
            })
            .collect();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(format!("[{}]", body.join(",")))
            .send()
            .await;
        if let Ok(r) = response {
            if r.status().is_success() {
                if let Ok(answer) = r.json::<Value>().await {
                    accepted += answer["Entries"].as_array().map_or(0, |entries| {
                        entries
                            .iter()
                            .filter(|e| e.get("ErrorCode").is_none())
                            .count() as u64
                    });
                }
            } else {
                eprintln!("storm publish: HTTP {}", r.status());
            }
        }
        k += n;
    }
    accepted
}

/// Waits until `done()` or `limit` passes; returns whether it became true.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

fn quantile_ms(sorted: &[u64], q: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    json!(round(sorted[rank - 1] as f64 / 1e6, 1))
}

fn phase_report(live: &Live, phase: usize) -> Value {
    let q = live.latency[phase].quantiles(&QUANTILES);
    json!({
        "received": live.received[phase].load(Ordering::Relaxed),
        "p50_ms": opt_round(q[2], 2),
        "p99_ms": opt_round(q[6], 2),
        "p999_ms": opt_round(q[8], 2),
        "max_ms": opt_round(q[11], 2),
    })
}

fn read_pid(path: &Option<PathBuf>) -> Option<u32> {
    std::fs::read_to_string(path.as_ref()?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------

pub async fn resume_storm(args: Args) {
    let h = args.history.clone();
    let live_server = h.live_server.unwrap_or(args.server);
    let mut args = args;
    if args.history.publish_server.is_none() {
        args.history.publish_server = Some(live_server);
    }
    if let Err(message) = raise_nofile((args.connections + h.live_connections + 300) as u64) {
        eprintln!("{message}");
        std::process::exit(2);
    }
    let args = Arc::new(args);
    let live = Arc::new(Live::new());

    // Live clients on node B (the ordinary workload's set-up).
    let live_args = Args {
        server: live_server,
        groups: h.live_groups.max(1),
        rate: h.live_rate.max(1),
        connections: h.live_connections,
        ..(*args).clone()
    };
    let members: Vec<AtomicU64> = (0..live_args.groups).map(|_| AtomicU64::new(0)).collect();
    let members = Arc::new(members);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::new();
    let live_failed = Arc::new(AtomicU64::new(0));
    for index in 0..h.live_connections {
        let (live_args, live, members, permits, live_failed) = (
            live_args.clone(),
            live.clone(),
            members.clone(),
            permits.clone(),
            live_failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await;
            let group = index % live_args.groups;
            match tokio::time::timeout(Duration::from_secs(30), set_up(&live_args, index, group))
                .await
            {
                Ok(Ok(ws)) => {
                    members[group].fetch_add(1, Ordering::Relaxed);
                    spawn_live_reader(ws, live);
                }
                outcome => {
                    live_failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("live {index}: {}", describe(outcome));
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    say(
        &args,
        format!(
            "live: {} clients on {live_server} in {:.1}s ({} failed)",
            h.live_connections as u64 - live_failed.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
            live_failed.load(Ordering::Relaxed)
        ),
    );

    // Storm clients on node A.
    let storm = Arc::new(Storm::default());
    let (stage_tx, stage_rx) = watch::channel(0u8);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        clients.push(tokio::spawn(storm_client(
            args.clone(),
            storm.clone(),
            permits.clone(),
            index,
            stage_rx.clone(),
        )));
    }
    let n = args.connections as u64;
    wait_until(Duration::from_secs(300), || {
        storm.ready.load(Ordering::Relaxed) + storm.setup_failed.load(Ordering::Relaxed) >= n
    })
    .await;
    let ready = storm.ready.load(Ordering::Relaxed);
    say(
        &args,
        format!(
            "storm clients: {ready} set up on {} in {:.1}s (Hello + 2 Subscribe + Resume), {} failed",
            args.server,
            started.elapsed().as_secs_f64(),
            storm.setup_failed.load(Ordering::Relaxed)
        ),
    );

    // The live stream runs from here to the end.
    let members: Arc<Vec<u64>> =
        Arc::new(members.iter().map(|m| m.load(Ordering::Relaxed)).collect());
    let publisher = Arc::new(Publisher {
        client: reqwest::Client::new(),
        padding: "x".repeat(args.padding),
        args: live_args.clone(),
        expected: AtomicU64::new(0),
        accepted_events: AtomicU64::new(0),
        failed_events: AtomicU64::new(0),
        lag: Histogram::new(),
        round_trip: Histogram::new(),
    });
    let live_publishing = tokio::spawn(publish(
        publisher.clone(),
        Arc::new(Stats::new(1)),
        members,
        Duration::from_secs(24 * 3600),
    ));

    // 1. Warm-up: every storm client gets a position.
    let warm_accepted = post_storm_events(&args, "warmup", h.warmup_events).await;
    let all_warm = wait_until(Duration::from_secs(30), || {
        storm.warm.load(Ordering::Relaxed) >= ready
    })
    .await;
    say(
        &args,
        format!(
            "warm-up: {warm_accepted} of {} events accepted; {} of {ready} storm clients got them all{}",
            h.warmup_events,
            storm.warm.load(Ordering::Relaxed),
            if all_warm { "" } else { " (timed out after 30 s)" }
        ),
    );

    // 2. Quiet reference.
    live.enter(1);
    tokio::time::sleep(Duration::from_secs(h.quiet_secs)).await;

    // 3. Close, publish, restart.
    live.enter(2);
    let restart_started = Instant::now();
    let _ = stage_tx.send(STAGE_CLOSE);
    wait_until(Duration::from_secs(60), || {
        storm.closed.load(Ordering::Relaxed) >= ready
    })
    .await;
    let close_s = restart_started.elapsed().as_secs_f64();
    let storm_accepted = post_storm_events(&args, "storm", h.storm_events).await;
    say(
        &args,
        format!(
            "closed {} storm clients in {close_s:.2}s; {storm_accepted} of {} storm events accepted",
            storm.closed.load(Ordering::Relaxed),
            h.storm_events
        ),
    );
    let cmd_started = Instant::now();
    let mut cmd_status = None;
    if !h.between_phases_cmd.is_empty() {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&h.between_phases_cmd)
            .status()
            .await;
        cmd_status = Some(status.as_ref().map_or(-1, |s| s.code().unwrap_or(-1)));
        say(
            &args,
            format!(
                "between-phases command: exit {:?} after {:.2}s",
                cmd_status,
                cmd_started.elapsed().as_secs_f64()
            ),
        );
    }
    let cmd_s = cmd_started.elapsed().as_secs_f64();
    let storm_pid = read_pid(&h.server_pid_file).or(args.server_pid);
    let rss_a_before = rss_kib(storm_pid);
    let rss_b_before = rss_kib(h.live_server_pid);
    let cpu_a_before = cpu_seconds(storm_pid);
    let cpu_b_before = cpu_seconds(h.live_server_pid);

    // 4. The storm.
    live.enter(3);
    let storm_started = Instant::now();
    storm.started_ns.store(now_nanos(), Ordering::Relaxed);
    let storm_permits = h.storm_concurrency.unwrap_or(args.concurrency).max(1);
    // The reconnects share one semaphore: widen it to the storm's concurrency.
    let current = args.concurrency.max(1);
    if storm_permits > current {
        permits.add_permits(storm_permits - current);
    } else if storm_permits < current {
        let _ = permits
            .acquire_many((current - storm_permits) as u32)
            .await
            .map(|p| p.forget());
    }
    let _ = stage_tx.send(STAGE_RECONNECT);
    let closed = storm.closed.load(Ordering::Relaxed);
    let all_done = wait_until(Duration::from_secs(h.storm_timeout), || {
        storm.finished.load(Ordering::Relaxed) >= closed
    })
    .await;
    let storm_s = storm_started.elapsed().as_secs_f64();
    let cpu_a_storm = cpu_seconds(storm_pid);
    let cpu_b_storm = cpu_seconds(h.live_server_pid);
    let rss_a_after = rss_kib(storm_pid);
    let rss_b_after = rss_kib(h.live_server_pid);

    // 5. After: live latency again; late duplicates are still counted.
    live.enter(PHASE_AFTER);
    tokio::time::sleep(Duration::from_secs(h.quiet_secs)).await;
    let _ = stage_tx.send(STAGE_STOP);
    live_publishing.abort();
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
    }
    // Drain the live stream: until everything arrived or nothing moved for 1 s (5 s cap).
    let expected = publisher.expected.load(Ordering::Relaxed);
    let mut last = live.received();
    let mut still_since = Instant::now();
    let drain_started = Instant::now();
    while drain_started.elapsed() < Duration::from_secs(5) && live.received() < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = live.received();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    live.stopping.store(true, Ordering::Relaxed);
    let live_received = live.received();

    let mut done_after = storm
        .done_after
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let mut acked_after = storm
        .acked_after
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    done_after.sort_unstable();
    acked_after.sort_unstable();
    let positions = storm.positions.lock().map(|p| p.len()).unwrap_or(0);
    let errors = storm.errors.lock().map(|l| l.clone()).unwrap_or_default();
    let resume_acks = storm
        .resume_acks
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    for (ack, n) in &resume_acks {
        eprintln!("resume Ack x{n}: {ack}");
    }
    for error in &errors {
        eprintln!("{error}");
    }
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let last_done = done_after.last().map(|ns| *ns as f64 / 1e9);
    say(
        &args,
        format!(
            "storm: {} of {closed} clients resumed all {} events; last one {:.2}s after the first reconnect{}; \
             resume errors {}, gaps {}, duplicates {}, missing {}, failed reconnects {} ({} retries)",
            count(&storm.complete),
            h.storm_events,
            last_done.unwrap_or(f64::NAN),
            if all_done { "" } else { " (timed out)" },
            count(&storm.resume_errors),
            count(&storm.gaps),
            count(&storm.duplicates),
            count(&storm.missing),
            count(&storm.reconnect_failed),
            count(&storm.reconnect_retries),
        ),
    );
    for (phase, name) in PHASE_NAMES.iter().enumerate().skip(1) {
        let q = live.latency[phase].quantiles(&QUANTILES);
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        say(
            &args,
            format!(
                "live latency ms, {:>7}: p50 {} p99 {} max {} ({} notifications)",
                name,
                fmt(q[2]),
                fmt(q[6]),
                fmt(q[11]),
                count(&live.received[phase])
            ),
        );
    }
    if let (Some(a), Some(b)) = (rss_a_before, rss_a_after) {
        say(
            &args,
            format!(
                "node A: rss {a} KiB after the restart, {b} KiB after the storm; cpu {:.2}s during {storm_s:.2}s",
                delta(cpu_a_before, cpu_a_storm).unwrap_or(f64::NAN)
            ),
        );
    }
    let report = json!({
        "label": args.label,
        "mode": "resume-storm",
        "storm_clients": args.connections,
        "storm_ready": ready,
        "storm_setup_failed": count(&storm.setup_failed),
        "warmup_accepted": warm_accepted,
        "distinct_positions_at_close": positions,
        "close_s": round(close_s, 3),
        "storm_events": h.storm_events,
        "storm_events_accepted": storm_accepted,
        "between_phases_cmd_s": round(cmd_s, 3),
        "between_phases_cmd_exit": cmd_status,
        "storm_concurrency": storm_permits,
        "storm_s_to_last_replayed": last_done.map(|s| round(s, 3)),
        "storm_complete_clients": count(&storm.complete),
        "storm_timed_out": !all_done,
        "resume_ack_ms": {"p50": quantile_ms(&acked_after, 0.5), "p99": quantile_ms(&acked_after, 0.99), "max": quantile_ms(&acked_after, 1.0)},
        "last_replayed_ms": {"p50": quantile_ms(&done_after, 0.5), "p99": quantile_ms(&done_after, 0.99), "max": quantile_ms(&done_after, 1.0)},
        "replayed_total": count(&storm.replayed_total),
        "resume_errors": count(&storm.resume_errors),
        "gaps": count(&storm.gaps),
        "duplicates": count(&storm.duplicates),
        "missing": count(&storm.missing),
        "reconnect_failed": count(&storm.reconnect_failed),
        "reconnect_retries": count(&storm.reconnect_retries),
        "errors": errors,
        "resume_acks_not_ok": resume_acks,
        "live_clients": h.live_connections as u64 - count(&live_failed),
        "live_rate": h.live_rate,
        "live_expected": expected,
        "live_received": live_received,
        "live_lost": expected.saturating_sub(live_received),
        "live_closed": count(&live.closed),
        "live_refused_events": count(&publisher.failed_events),
        "live": (1..PHASE_NAMES.len())
            .map(|p| (PHASE_NAMES[p].to_owned(), phase_report(&live, p)))
            .collect::<serde_json::Map<_, _>>(),
        "node_a_rss_kib": {"after_restart": rss_a_before, "after_storm": rss_a_after},
        "node_b_rss_kib": {"before_storm": rss_b_before, "after_storm": rss_b_after},
        "node_a_cpu_s_storm": opt_round(delta(cpu_a_before, cpu_a_storm), 2),
        "node_b_cpu_s_storm": opt_round(delta(cpu_b_before, cpu_b_storm), 2),
    });
    if args.json {
        println!("{report}");
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_counts_in_the_phase_its_event_was_published_in() {
        let live = Live::new();
        assert_eq!(live.phase_at(now_nanos()), 0, "before any phase: set-up");
        live.enter(1);
        let in_quiet = now_nanos();
        std::thread::sleep(Duration::from_millis(2));
        live.enter(3);
        let in_storm = now_nanos();
        std::thread::sleep(Duration::from_millis(2));
        live.enter(PHASE_AFTER);
        // Arriving now, in the phase after: still the quiet's and the storm's.
        assert_eq!(live.phase_at(in_quiet), 1);
        assert_eq!(live.phase_at(in_storm), 3);
        assert_eq!(live.phase_at(now_nanos()), PHASE_AFTER);
    }
}
