//! `eventgate-bench`: the project's load tool. Opens N WebSocket connections to a running
//! gateway (spread over up to 250 source addresses 127.0.0.x so 100k connections do not run
//! out of ephemeral ports), subscribes each, publishes events over HTTP at a rate (or as
//! fast as the subscribers keep up) and reports:
//!
//! - connection set-up rate (upgrade + Hello + Subscribe + Acks, per second),
//! - delivered notifications per second,
//! - ingest-to-client latency p50/p99/p999 (the send time travels in the event),
//! - lost notifications, computed exactly: for every event the server accepted, the number
//!   of successfully set-up connections in its group, minus what arrived,
//! - the server's resident memory per connection from `/proc/<pid>/status` (the process
//!   and its direct children, so an nginx master plus its workers), before vs after
//!   connecting, and the server's CPU time during publishing.
//!
//! Workload (`--target eventgate`): connection `i` subscribes rule `hit` =
//! `{"source":["bench"],"detail":{"group":[i % groups]}}` and rule `miss` =
//! `{"source":["never"]}`; event `k` carries group `k % groups`, so each event matches
//! `1/groups` of the connections (`--groups 100` = 1%). Events go out in PutEvents batches
//! of `--batch`.
//!
//! `--target nchan`: connection `i` opens an Nchan WebSocket subscription on
//! `ws://server/sub/<i % groups>`; event `k` is POSTed alone to `http://server/pub/<k % groups>`
//! (Nchan publishes one message per request). Same latency and loss accounting.
//!
//! `--publish-server ADDR`, `--resume-storm` (issue #16, history and resume): see the
//! `history` module.
//!
//! `--churn`: soak mode. `--connections` workers each loop connect/subscribe/hold/
//! (unsubscribe)/close (clean or abrupt) until `--duration` ends, while events flow at
//! `--rate`.
//!
//! `--adversaries N` (eventgate): N more connections beside the workload, each filling its
//! rule budgets with hostile patterns (an `anything-but` list of 256 wildcards on `source`,
//! then `anything-but` lists of 256 strings on `source` until the gateway answers `pattern too
//! complex` or `too many rules`). Their rules match every event, so they receive
//! everything; they read and discard it and are not counted. Run once with and once
//! without to compare the healthy connections' latency and throughput.
//!
//! `--token-alg hs256|es256 --token-key <secret | PEM private key file>` (eventgate): every
//! connection presents its own signed token (`Token` in the `header` document; claims `sub`,
//! `tenant` = `t<i % --tenants>`, `iat`, `exp` a day ahead), all minted before the storm so
//! signing stays out of the timed set-up. `--tenants N` also puts `detail.tenant` =
//! `t<k % N>` in event `k`; `--tenant-rules` says where a connection's tenant condition comes
//! from: `client` (written into both rules by the client), `scope` (rules without it, the
//! gateway ANDs the token's scope in) or `none` (nowhere: deliveries ignore the tenant).
//! With `client` and `scope` an event reaches the connections of its tenant and group only,
//! and the loss accounting counts it so.
//!
//! `--json` prints one JSON object on stdout (human-readable lines go to stderr).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod history;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Eventgate,
    Nchan,
}

/// Signature algorithm of the tokens the connections present.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum TokenAlg {
    /// HMAC-SHA256 with the `--token-key` secret (the gateway's `identity.hmac_secret`).
    Hs256,
    /// ECDSA P-256 with the `--token-key` PKCS#8 PEM private key file.
    Es256,
}

/// Where a connection's tenant condition comes from (with `--tenants`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum TenantRules {
    /// Nowhere: rules without a tenant, every event reaches its whole group.
    None,
    /// The client writes `"tenant":["t<i>"]` into the `detail` of both its rules.
    Client,
    /// Rules without a tenant; the gateway ANDs the token's scope (a tenant template) in.
    Scope,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "eventgate-bench",
    about = "Load tool for eventgate (and Nchan, for comparison)"
)]
struct Args {
    /// History and resume benchmarks (`--publish-server`, `--resume-storm`): `history.rs`.
    #[command(flatten)]
    history: history::HistoryArgs,
    /// What the server is: eventgate (App.EventBus protocol) or nchan (/sub/<ch>, /pub/<ch>).
    #[arg(long, value_enum, default_value = "eventgate")]
    target: Target,
    /// Server address, e.g. 127.0.0.1:8080.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// API key to present (eventgate only).
    #[arg(long, default_value = "")]
    api_key: String,
    /// Connections to open (with --churn: concurrent churn workers).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Each event matches 1/groups of the connections (nchan: one channel per group).
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Events per second to publish; 0 = as fast as the subscribers keep up (see --window).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Events per POST (eventgate only: Nchan takes one message per POST). The default, one
    /// event per request, loads both servers the same way; PutEvents clients may send up to 10.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// nchan: publish, instead of the bare detail, a body shaped like eventgate's `Event`
    /// notification (request id, rules, source, type, and the whole EventBridge envelope as
    /// an escaped string), so both servers write frames of the same size.
    #[arg(long)]
    nchan_envelope: bool,
    /// POST requests in flight at once.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// At --rate 0: most notifications published but not yet received before the publisher
    /// waits (keeps the maximum-rate run from overflowing per-connection queues).
    #[arg(long, default_value_t = 10_000)]
    window: u64,
    /// Server process id (its direct children are added: nginx master + workers).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N, at most 250.
    #[arg(long, default_value_t = 250)]
    source_addresses: u8,
    /// Connection set-ups in flight at once (more than the server's listen backlog, e.g.
    /// nginx's 511, overflows it and costs a 1 s SYN retransmit).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Only connect and report memory; publish nothing.
    #[arg(long)]
    idle: bool,
    /// eventgate: stop each set-up after the authenticated WebSocket upgrade (no Hello, no
    /// Subscribe), the same work as an Nchan subscription; only with --idle.
    #[arg(long)]
    upgrade_only: bool,
    /// eventgate: send each set-up action only after the previous one's Ack (by default the
    /// two Subscribes go out together after Hello's Ack, as the JS client sends them).
    #[arg(long)]
    one_action_at_a_time: bool,
    /// Seconds to hold idle connections before reading memory.
    #[arg(long, default_value_t = 2)]
    hold: u64,
    /// Bytes of padding in each event's detail.
    #[arg(long, default_value_t = 600)]
    padding: usize,
    /// Soak mode: connect/subscribe/disconnect churn for --duration seconds.
    #[arg(long)]
    churn: bool,
    /// Print one JSON object with every figure on stdout.
    #[arg(long)]
    json: bool,
    /// A label copied into the JSON output.
    #[arg(long, default_value = "")]
    label: String,
    /// Hostile connections at their full rule budgets beside the workload (eventgate).
    #[arg(long, default_value_t = 0)]
    adversaries: usize,
    /// Present a signed token per connection (eventgate), minted before the storm.
    #[arg(long, value_enum, requires = "token_key")]
    token_alg: Option<TokenAlg>,
    /// hs256: the shared secret; es256: a PKCS#8 PEM private key file.
    #[arg(long)]
    token_key: Option<String>,
    /// Tenants: connection `i` belongs to `t<i % N>` (its token's `tenant` claim) and event
    /// `k` carries `detail.tenant` = `t<k % N>`; 0 = no tenant in events.
    #[arg(long, default_value_t = 0)]
    tenants: usize,
    /// Where the tenant condition of a connection's rules comes from (see the module doc).
    #[arg(long, value_enum, default_value = "none")]
    tenant_rules: TenantRules,
    /// The minted tokens, connection `i` presents `tokens[i % len]` (empty: none).
    #[arg(skip)]
    tokens: Arc<Vec<String>>,
}

impl Args {
    /// True when an event reaches only the connections of its own tenant.
    fn tenant_restricts(&self) -> bool {
        self.tenants > 0 && self.tenant_rules != TenantRules::None
    }

    /// Audiences the loss accounting counts members of: one per group, or one per
    /// (tenant, group) when the tenant restricts deliveries.
    fn cells(&self) -> usize {
        let groups = self.groups.max(1);
        if self.tenant_restricts() {
            groups * self.tenants
        } else {
            groups
        }
    }

    /// The audience of connection `index` subscribed to `group`.
    fn connection_cell(&self, index: usize, group: usize) -> usize {
        if self.tenant_restricts() {
            (index % self.tenants) * self.groups.max(1) + group
        } else {
            group
        }
    }

    /// The audience event `k` is delivered to.
    fn event_cell(&self, k: u64) -> usize {
        let groups = self.groups.max(1) as u64;
        if self.tenant_restricts() {
            ((k % self.tenants as u64) * groups + k % groups) as usize
        } else {
            (k % groups) as usize
        }
    }

    /// The token connection `index` presents, if any.
    fn token(&self, index: usize) -> Option<&str> {
        (!self.tokens.is_empty()).then(|| self.tokens[index % self.tokens.len()].as_str())
    }
}

/// One token per connection: claims `sub`, `tenant`, `iat`, `exp` (a day ahead).
fn mint_tokens(args: &Args) -> Result<Vec<String>, String> {
    let Some(alg) = args.token_alg else {
        return Ok(Vec::new());
    };
    eventgate::identity::crypto::install();
    let key_text = args.token_key.as_deref().unwrap_or_default();
    let (algorithm, key) = match alg {
        TokenAlg::Hs256 => (
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::EncodingKey::from_secret(key_text.as_bytes())
                .map_err(|e| format!("--token-key: {e}"))?,
        ),
        TokenAlg::Es256 => {
            let pem =
                std::fs::read(key_text).map_err(|e| format!("--token-key {key_text}: {e}"))?;
            (
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_pem(&pem)
                    .map_err(|e| format!("--token-key {key_text}: {e}"))?,
            )
        }
    };
    let header = jsonwebtoken::Header::new(algorithm);
    let now = now_nanos() / 1_000_000_000;
    let tenants = args.tenants.max(1);
    (0..args.connections.max(1))
        .map(|i| {
            let claims = json!({
                "sub": format!("bench-{i}"),
                "tenant": format!("t{}", i % tenants),
                "iat": now,
                "exp": now + 86_400,
            });
            jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing: {e}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// /proc readings

/// The process and its direct children (nginx: master + workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(child) {
                if stat.0 == pid {
                    pids.push(child);
                }
            }
        }
    }
    pids
}

/// (ppid, utime + stime in clock ticks) from `/proc/<pid>/stat`.
fn read_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn rss_one(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident KiB of the server (summed over the process tree).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let pids = process_tree(pid);
    Some(pids.iter().filter_map(|p| rss_one(*p)).sum())
}

/// CPU seconds used so far by the server (summed over the process tree).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let pid = pid?;
    let ticks: u64 = process_tree(pid)
        .iter()
        .filter_map(|p| read_stat(*p).map(|s| s.1))
        .sum();
    Some(ticks as f64 / 100.0)
}

/// Raises RLIMIT_NOFILE so `wanted` sockets fit; explains what to do when it cannot.
fn raise_nofile(wanted: u64) -> Result<u64, String> {
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .map_err(|e| format!("getrlimit: {e}"))?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted {
        // Root may raise the hard limit up to fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(hard);
        let target = wanted.max(hard).min(nr_open);
        let _ = rlimit::Resource::NOFILE.set(target, target);
    }
    let _ = rlimit::increase_nofile_limit(wanted);
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .map_err(|e| format!("getrlimit: {e}"))?;
    if soft < wanted {
        return Err(format!(
            "need {wanted} open files but RLIMIT_NOFILE is {soft} (hard {hard}) and cannot be \
             raised: run `ulimit -n {wanted}` (as root, or raise the hard limit in \
             /etc/security/limits.conf) before eventgate-bench, and give the server as many"
        ));
    }
    Ok(soft)
}

// ---------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets in microseconds, 64 sub-buckets per power of two
// (under 1.6% error), lock-free.

const SUB: u64 = 64;
const BUCKETS: usize = 128 + 40 * SUB as usize;

struct Histogram {
    counts: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(micros: u64) -> usize {
        if micros < 2 * SUB {
            return micros as usize;
        }
        let msb = 63 - u64::from(micros.leading_zeros());
        let shift = msb - 6;
        let index = 2 * SUB + (shift - 1) * SUB + ((micros >> shift) - SUB);
        (index as usize).min(BUCKETS - 1)
    }

    fn value(index: usize) -> f64 {
        let index = index as u64;
        if index < 2 * SUB {
            return index as f64;
        }
        let shift = (index - 2 * SUB) / SUB + 1;
        let mantissa = (index - 2 * SUB) % SUB + SUB;
        ((mantissa << shift) + (1 << shift) / 2) as f64
    }

    fn record(&self, nanos: u64) {
        self.counts[Self::index(nanos / 1000)].fetch_add(1, Ordering::Relaxed);
    }

    /// Quantiles in milliseconds.
    fn quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        quantiles_of(&counts, qs)
    }
}

/// Quantiles in milliseconds of a histogram's bucket counts.
fn quantiles_of(counts: &[u64], qs: &[f64]) -> Vec<Option<f64>> {
    let total: u64 = counts.iter().sum();
    qs.iter()
        .map(|q| {
            if total == 0 {
                return None;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (index, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return Some(Histogram::value(index) / 1000.0);
                }
            }
            None
        })
        .collect()
}

// ---------------------------------------------------------------------------------------

/// Counters of the reader tasks on one thread. Reader tasks on different threads never
/// write the same cache line, so counting costs the load tool almost nothing (shared
/// atomics bounced between the cores on every frame and took CPU from the server).
#[repr(align(128))]
struct Shard {
    received: AtomicU64,
    /// Bytes of the notifications counted in `received` (the frames' payloads).
    received_bytes: AtomicU64,
    last_received_ns: AtomicU64,
    latency: Histogram,
    /// From the moment the POST left (not when it was due): delivery alone.
    from_send: Histogram,
}

impl Shard {
    fn new() -> Self {
        Shard {
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            last_received_ns: AtomicU64::new(0),
            latency: Histogram::new(),
            from_send: Histogram::new(),
        }
    }
}

/// Shards per run; threads beyond this share them (the runtime has one worker per core).
const SHARDS: usize = 8;

/// This thread's shard number, handed out in order of first use.
fn shard_index() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static INDEX: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
    }
    INDEX.with(|index| *index)
}

struct Stats {
    shards: Vec<Shard>,
    /// Connections set up per group.
    members: Vec<AtomicU64>,
    /// Connections that ended while the run was measuring (server closed them).
    closed: AtomicU64,
    stopping: AtomicBool,
}

impl Stats {
    fn new(groups: usize) -> Self {
        Stats {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            members: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            closed: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// Payload bytes of the notifications received so far (all threads).
    fn received_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.received_bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Notifications received so far (all threads).
    fn received(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum()
    }

    fn last_received_ns(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.last_received_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    fn latency_quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        self.quantiles(qs, |shard| &shard.latency)
    }

    fn send_latency_quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        self.quantiles(qs, |shard| &shard.from_send)
    }

    fn quantiles(&self, qs: &[f64], which: impl Fn(&Shard) -> &Histogram) -> Vec<Option<f64>> {
        let mut counts = vec![0u64; BUCKETS];
        for shard in &self.shards {
            for (sum, count) in counts.iter_mut().zip(&which(shard).counts) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
        quantiles_of(&counts, qs)
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn header(host: &str, api_key: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |token| format!(",\"Token\":\"{token}\""));
    let document = format!(
        "{{\"Host\":\"{host}\",\"ApiKey\":\"{api_key}\",\"Id\":\"{}\"{token}}}",
        uuid::Uuid::new_v4()
    );
    eventgate_protocol::header::encode_base64(document.as_bytes())
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A UUID-shaped text (36 characters) made from `k`, for bodies that imitate eventgate's.
fn uuid_like(k: u64) -> String {
    let h = format!("{:016x}{:016x}", k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Finds `sent":<digits>` (plain, as Nchan delivers it) or `sent\":<digits>` (escaped
/// inside eventgate's Event string) without parsing the whole frame: the time the event was
/// due by the schedule.
fn sent_stamp(text: &str) -> Option<u64> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("sent"));
    stamp_after(text, &FINDER, 4)
}

/// The `left` stamp: the time the POST carrying the event actually left the publisher.
fn left_stamp(text: &str) -> Option<u64> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("left"));
    stamp_after(text, &FINDER, 4)
}

fn stamp_after(text: &str, finder: &memchr::memmem::Finder<'_>, len: usize) -> Option<u64> {
    let start = finder.find(text.as_bytes())? + len;
    let rest = text[start..].trim_start_matches(['\\', '"', ':']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

type Ws = WebSocketStream<TcpStream>;

async fn open_socket(args: &Args, index: usize) -> Result<TcpStream, String> {
    let sources = u64::from(args.source_addresses.clamp(1, 250));
    let source = Ipv4Addr::new(127, 0, 0, 1 + (index as u64 % sources) as u8);
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    socket
        .connect(args.server)
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Upgrade (+ Hello + Subscribe + Acks for eventgate); returns the open socket.
async fn set_up(args: &Args, index: usize, group: usize) -> Result<Ws, String> {
    let stream = open_socket(args, index).await?;
    let url = match args.target {
        Target::Eventgate => format!(
            "ws://{}/?header={}",
            args.server,
            header(
                &args.server.ip().to_string(),
                &args.api_key,
                args.token(index)
            )
        ),
        Target::Nchan => format!("ws://{}/sub/{group}", args.server),
    };
    // Small buffers: the default 128 KiB read buffer per socket would cost the client
    // gigabytes (and one mmap each) at 100k connections. Frames fed without a flush are
    // held until one (so pipelined actions leave in one write).
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    if args.target == Target::Nchan || args.upgrade_only {
        return Ok(ws);
    }
    let frames = match (args.tenant_rules, args.tenants) {
        (TenantRules::Client, tenants) if tenants > 0 => {
            // The tenant condition written by the client, where a scope would put it.
            let tenant = index % tenants;
            [
                r#"{"Action":"Hello","RequestId":"h"}"#.to_owned(),
                format!(
                    r#"{{"Action":"Subscribe","RequestId":"s1","Rule":"hit","Pattern":"{{\"source\":[\"bench\"],\"detail\":{{\"group\":[{group}],\"tenant\":[\"t{tenant}\"]}}}}"}}"#
                ),
                format!(
                    r#"{{"Action":"Subscribe","RequestId":"s2","Rule":"miss","Pattern":"{{\"source\":[\"never\"],\"detail\":{{\"tenant\":[\"t{tenant}\"]}}}}"}}"#
                ),
            ]
        }
        _ => [
            r#"{"Action":"Hello","RequestId":"h"}"#.to_owned(),
            format!(
                r#"{{"Action":"Subscribe","RequestId":"s1","Rule":"hit","Pattern":"{{\"source\":[\"bench\"],\"detail\":{{\"group\":[{group}]}}}}"}}"#
            ),
            r#"{"Action":"Subscribe","RequestId":"s2","Rule":"miss","Pattern":"{\"source\":[\"never\"]}"}"#.to_owned(),
        ],
    };
    if args.one_action_at_a_time {
        for frame in frames {
            ws.send(Message::Text(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
            wait_ack(&mut ws).await?;
        }
        return Ok(ws);
    }
    // As the JS client does: Hello, its Ack, then every Subscribe at once.
    let [hello, subscribes @ ..] = frames;
    ws.send(Message::Text(hello.into()))
        .await
        .map_err(|e| e.to_string())?;
    wait_ack(&mut ws).await?;
    let acks_due = subscribes.len();
    for frame in subscribes {
        ws.feed(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    for _ in 0..acks_due {
        wait_ack(&mut ws).await?;
    }
    Ok(ws)
}

async fn wait_ack(ws: &mut Ws) -> Result<(), String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"Ack\"") => {
                if !text.contains("\"Ok\"") {
                    return Err(format!("ack error: {text}"));
                }
                return Ok(());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed during set-up".into()),
        }
    }
}

/// The `k`-th hostile pattern of adversary `conn` (see `--adversaries`).
fn adversary_pattern(conn: usize, k: usize) -> Value {
    if k == 0 {
        let list: Vec<String> = (0..256).map(|j| format!("*a{conn}x{j}*")).collect();
        return json!({"source": [{"anything-but": {"wildcard": list}}]});
    }
    let list: Vec<String> = (0..256).map(|j| format!("a{conn}-{k}-{j:04}")).collect();
    json!({"source": [{"anything-but": list}]})
}

/// Opens adversary `conn` and subscribes hostile patterns until the gateway refuses one
/// for a budget; returns the socket and the number of rules it holds.
async fn set_up_adversary(args: &Args, conn: usize) -> Result<(Ws, usize), String> {
    let stream = open_socket(args, conn).await?;
    let url = format!(
        "ws://{}/?header={}",
        args.server,
        header(
            &args.server.ip().to_string(),
            &args.api_key,
            args.token(conn)
        )
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    ws.send(Message::Text(
        r#"{"Action":"Hello","RequestId":"h"}"#.into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    wait_ack(&mut ws).await?;
    for k in 0..1000 {
        let frame = json!({
            "Action": "Subscribe",
            "RequestId": format!("a{k}"),
            "Rule": format!("a{k}"),
            "Pattern": adversary_pattern(conn, k).to_string(),
        });
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
        match wait_ack(&mut ws).await {
            Ok(()) => {}
            Err(e) if e.contains("pattern too complex") || e.contains("too many rules") => {
                return Ok((ws, k));
            }
            Err(e) => return Err(e),
        }
    }
    Err("the gateway accepted 1000 hostile rules: no budget?".into())
}

/// Sets up `--adversaries` connections; their readers discard everything.
async fn set_up_adversaries(args: &Args) -> (usize, usize) {
    let mut held = 0;
    let mut open = 0;
    for conn in 0..args.adversaries {
        match set_up_adversary(args, args.connections + conn).await {
            Ok((mut ws, rules)) => {
                held += rules;
                open += 1;
                tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
            }
            Err(e) => eprintln!("adversary {conn}: {e}"),
        }
    }
    (open, held)
}

/// Counts one delivered frame if it is a notification.
fn on_frame(target: Target, text: &str, stats: &Stats) {
    if target == Target::Eventgate && !text.starts_with("{\"Action\":\"Event\"") {
        return;
    }
    let received_at = now_nanos();
    let shard = stats.shard();
    shard.received.fetch_add(1, Ordering::Relaxed);
    shard
        .received_bytes
        .fetch_add(text.len() as u64, Ordering::Relaxed);
    shard
        .last_received_ns
        .fetch_max(received_at, Ordering::Relaxed);
    if let Some(sent) = sent_stamp(text) {
        shard.latency.record(received_at.saturating_sub(sent));
    }
    if let Some(left) = left_stamp(text) {
        shard.from_send.record(received_at.saturating_sub(left));
    }
}

fn spawn_reader(target: Target, mut ws: Ws, stats: Arc<Stats>) {
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                on_frame(target, &text, &stats);
            }
        }
        if !stats.stopping.load(Ordering::Relaxed) {
            stats.closed.fetch_add(1, Ordering::Relaxed);
        }
    });
}

fn say(args: &Args, line: String) {
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

// ---------------------------------------------------------------------------------------
// Publishing

struct Publisher {
    client: reqwest::Client,
    args: Args,
    padding: String,
    /// Notifications owed for events the server accepted.
    expected: AtomicU64,
    accepted_events: AtomicU64,
    failed_events: AtomicU64,
    /// How late each POST left against its schedule (fixed rates only).
    lag: Histogram,
    /// Each POST's round trip: sent to answered.
    round_trip: Histogram,
}

impl Publisher {
    /// Event `k`: `sent` is when it was due (the latency stamp), `left` when its POST left.
    fn event(&self, k: u64, sent: u64, left: u64) -> String {
        let groups = self.args.groups.max(1) as u64;
        // The detail both servers carry (Nchan sends it as the whole body).
        let detail = || {
            format!(
                r#"{{"group":{},"seq":{k},"sent":{sent},"left":{left},"padding":"{}"}}"#,
                k % groups,
                self.padding
            )
        };
        match self.args.target {
            Target::Eventgate if self.args.tenants > 0 => format!(
                r#"{{"source":"bench","detail-type":"load","detail":{{"group":{},"tenant":"t{}","seq":{k},"sent":{sent},"left":{left},"padding":"{}"}}}}"#,
                k % groups,
                k % self.args.tenants as u64,
                self.padding
            ),
            Target::Eventgate => format!(
                r#"{{"source":"bench","detail-type":"load","detail":{}}}"#,
                detail()
            ),
            Target::Nchan if self.args.nchan_envelope => {
                // What eventgate writes for the same event: its `Event` notification around
                // the EventBridge envelope (an escaped JSON string), so both frames weigh alike.
                let envelope = format!(
                    r#"{{"version":"0","id":"{}","detail-type":"load","source":"bench","account":"000000000000","time":"2026-12-06T12:00:00Z","region":"us-east-1","resources":[],"detail":{}}}"#,
                    uuid_like(k),
                    detail()
                );
                json!({
                    "Action": "Event",
                    "RequestId": uuid_like(k ^ u64::MAX),
                    "Rules": ["hit"],
                    "Position": format!("{k:016x}"),
                    "Source": "bench",
                    "Type": "load",
                    "Event": envelope,
                })
                .to_string()
            }
            Target::Nchan => detail(),
        }
    }

    /// Posts events `first .. first + count`, stamped `sent` (nanoseconds since the epoch);
    /// records what the server accepted.
    async fn post(&self, first: u64, count: u64, members: &[u64], sent: u64) {
        let groups = self.args.groups.max(1) as u64;
        let accepted: Vec<bool> = match self.args.target {
            Target::Eventgate => {
                let left = now_nanos();
                let mut body = String::from("[");
                for k in first..first + count {
                    if k > first {
                        body.push(',');
                    }
                    body.push_str(&self.event(k, sent, left));
                }
                body.push(']');
                let url = format!(
                    "http://{}/events",
                    self.args.history.publishes_to(&self.args)
                );
                let response = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(answer) => {
                            let entries = answer["Entries"].as_array().cloned().unwrap_or_default();
                            (0..count as usize)
                                .map(|i| {
                                    entries.get(i).is_some_and(|e| e.get("ErrorCode").is_none())
                                })
                                .collect()
                        }
                        Err(_) => vec![false; count as usize],
                    },
                    _ => vec![false; count as usize],
                }
            }
            Target::Nchan => {
                let mut out = Vec::with_capacity(count as usize);
                for k in first..first + count {
                    let url = format!("http://{}/pub/{}", self.args.server, k % groups);
                    let ok = matches!(
                        self.client.post(url).body(self.event(k, sent, now_nanos())).send().await,
                        Ok(r) if r.status().is_success()
                    );
                    out.push(ok);
                }
                out
            }
        };
        for (offset, ok) in accepted.iter().enumerate() {
            let k = first + offset as u64;
            if *ok {
                self.accepted_events.fetch_add(1, Ordering::Relaxed);
                self.expected.fetch_add(
                    members[self.args.event_cell(k) % members.len().max(1)],
                    Ordering::Relaxed,
                );
            } else {
                self.failed_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Publishes for `duration` from a thread and runtime of its own; returns (events attempted,
/// seconds spent). On the readers' runtime, each POST would wait in a run queue behind
/// thousands of reader tasks, so the publisher would fall behind its schedule by the load
/// tool's own delays (it did, by hundreds of milliseconds, at 100k notifications/s): the
/// publisher would be the bottleneck, and the server that sends more bytes per notification
/// (more reader work) would be published to later.
async fn publish(
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    members: Arc<Vec<u64>>,
    duration: Duration,
) -> (u64, f64) {
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("publisher runtime: {error}");
                    std::process::exit(1);
                }
            };
            let outcome = runtime.block_on(publish_here(publisher, stats, members, duration));
            let _ = done.send(outcome);
        });
    if let Err(error) = spawned {
        eprintln!("publisher thread: {error}");
        std::process::exit(1);
    }
    result.await.unwrap_or((0, 0.0))
}

async fn publish_here(
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    members: Arc<Vec<u64>>,
    duration: Duration,
) -> (u64, f64) {
    let args = &publisher.args;
    let batch = match args.target {
        Target::Eventgate => args.batch.max(1) as u64,
        Target::Nchan => 1,
    };
    // Notifications one event owes on average, over a whole cycle of its audiences.
    let cycle = members.len().max(1) as u64;
    let per_event: u64 = (0..cycle)
        .map(|k| members.get(args.event_cell(k)).copied().unwrap_or(0))
        .sum::<u64>()
        / cycle;
    let started = Instant::now();
    let started_ns = now_nanos();
    let deadline = started + duration;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.in_flight.max(1)));
    let mut published: u64 = 0;
    let mut owed: u64 = 0;
    while Instant::now() < deadline {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(published as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        } else {
            // Closed loop: keep at most `window` notifications outstanding.
            while owed.saturating_sub(stats.received()) > args.window && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        // At a fixed rate the events carry the time they were due, not the time they left:
        // when the server is slow to take requests, the publisher falls behind, and
        // measuring from the late send would hide that wait (coordinated omission).
        // At maximum rate (closed loop) there is no schedule: the send time is the stamp.
        let scheduled = (args.rate > 0)
            .then(|| started_ns + (published as u128 * 1_000_000_000 / args.rate as u128) as u64);
        let first = published;
        published += batch;
        owed += batch * per_event.max(1);
        let publisher = publisher.clone();
        let members = members.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let now = now_nanos();
            let sent = match scheduled {
                Some(due) => {
                    publisher.lag.record(now.saturating_sub(due));
                    due
                }
                None => now,
            };
            let started = now_nanos();
            publisher.post(first, batch, &members, sent).await;
            publisher
                .round_trip
                .record(now_nanos().saturating_sub(started));
        });
    }
    let _ = in_flight.acquire_many(args.in_flight.max(1) as u32).await;
    (published, started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------

async fn connect_all(args: &Args, stats: &Arc<Stats>) -> (u64, u64, f64, Vec<String>) {
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let failures = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let args = args.clone();
        let stats = stats.clone();
        let failures = failures.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let group = index % args.groups.max(1);
            match tokio::time::timeout(Duration::from_secs(30), set_up(&args, index, group)).await {
                Ok(Ok(ws)) => {
                    stats.members[args.connection_cell(index, group)]
                        .fetch_add(1, Ordering::Relaxed);
                    spawn_reader(args.target, ws, stats);
                }
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e,
                        _ => "set-up timed out after 30s".into(),
                    };
                    if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                        if let Ok(mut list) = errors.lock() {
                            list.push(format!("connection {index}: {error}"));
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    let list = errors.lock().map(|l| l.clone()).unwrap_or_default();
    (args.connections as u64 - failed, failed, seconds, list)
}

const QUANTILES: [f64; 12] = [
    0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn opt_round(value: Option<f64>, digits: i32) -> Value {
    value.map_or(Value::Null, |v| json!(round(v, digits)))
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.target == Target::Eventgate && args.api_key.is_empty() {
        eprintln!("--api-key is required for --target eventgate (see `eventgate key`)");
        std::process::exit(2);
    }
    let wanted = args.connections as u64 + 200;
    let nofile = match raise_nofile(wanted) {
        Ok(limit) => limit,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if args.history.resume_storm {
        history::resume_storm(args).await;
        return;
    }
    if args.upgrade_only && !args.idle {
        eprintln!(
            "--upgrade-only needs --idle: upgraded but unannounced connections get no events"
        );
        std::process::exit(2);
    }
    if args.tenant_rules != TenantRules::None && args.tenants == 0 {
        eprintln!("--tenant-rules client|scope needs --tenants N");
        std::process::exit(2);
    }
    // Signing stays out of the timed set-up: every token exists before the first connect.
    let minting = Instant::now();
    match mint_tokens(&args) {
        Ok(tokens) => args.tokens = Arc::new(tokens),
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    }
    let mint_s = minting.elapsed().as_secs_f64();
    if let Some(alg) = args.token_alg {
        say(
            &args,
            format!(
                "minted {} {alg:?} tokens in {mint_s:.2}s (before the storm, not timed)",
                args.tokens.len()
            ),
        );
    }
    if args.churn {
        churn(args).await;
        return;
    }
    let groups = args.groups.max(1);
    let stats = Arc::new(Stats::new(args.cells()));
    let rss_before = rss_kib(args.server_pid);

    // Phase 1: connection storm.
    let setup_cpu_before = cpu_seconds(args.server_pid);
    let (connected, failed, setup_s, errors) = connect_all(&args, &stats).await;
    let (adversaries, adversary_rules) = if args.adversaries > 0 {
        let (open, held) = set_up_adversaries(&args).await;
        say(
            &args,
            format!("adversaries: {open} connections at their full budgets, {held} rules"),
        );
        (open, held)
    } else {
        (0, 0)
    };
    let setup_cpu = match (setup_cpu_before, cpu_seconds(args.server_pid)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    for error in &errors {
        eprintln!("{error}");
    }
    let setup_rate = connected as f64 / setup_s;
    say(
        &args,
        format!(
            "connections: {connected} set up in {setup_s:.2}s = {setup_rate:.0}/s ({}), {failed} failed",
            match args.target {
                Target::Eventgate if args.upgrade_only => "authenticated upgrade",
                Target::Eventgate if args.one_action_at_a_time => {
                    "upgrade + Hello + 2 Subscribe + Acks, one at a time"
                }
                Target::Eventgate => "upgrade + Hello + 2 Subscribe + Acks",
                Target::Nchan => "upgrade",
            }
        ),
    );
    // Server CPU per set-up: the cost the rate hides when the load tool shares the cores.
    let setup_cpu_us = setup_cpu
        .filter(|_| connected > 0)
        .map(|cpu| cpu * 1e6 / connected as f64);
    if let (Some(cpu), Some(per)) = (setup_cpu, setup_cpu_us) {
        say(
            &args,
            format!("server cpu during set-up: {cpu:.2}s, {per:.0} µs per connection"),
        );
    }
    tokio::time::sleep(Duration::from_secs(if args.idle { args.hold } else { 1 })).await;
    let rss_after = rss_kib(args.server_pid);
    let rss_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected > 0 => {
            Some(after.saturating_sub(before) as f64 / connected as f64)
        }
        _ => None,
    };
    if let (Some(before), Some(after), Some(per)) = (rss_before, rss_after, rss_per_connection) {
        say(
            &args,
            format!(
                "server rss: {before} KiB before, {after} KiB after; {per:.2} KiB per connection"
            ),
        );
    }
    let mut report = json!({
        "label": args.label,
        "target": format!("{:?}", args.target).to_lowercase(),
        "connections": args.connections,
        "connected": connected,
        "failed": failed,
        "groups": groups,
        "rate": args.rate,
        "duration_s": args.duration,
        "batch": if args.target == Target::Eventgate { args.batch } else { 1 },
        "source_addresses": args.source_addresses.clamp(1, 250),
        "nofile_limit": nofile,
        "setup_s": round(setup_s, 3),
        "setup_per_s": round(setup_rate, 1),
        "setup_server_cpu_us": opt_round(setup_cpu_us, 1),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_kib": opt_round(rss_per_connection, 3),
        "errors": errors,
        "adversaries": adversaries,
        "adversary_rules": adversary_rules,
        "token_alg": args.token_alg.map(|alg| format!("{alg:?}").to_lowercase()),
        "token_mint_s": round(mint_s, 3),
        "tenants": args.tenants,
        "tenant_rules": format!("{:?}", args.tenant_rules).to_lowercase(),
    });

    if !args.idle {
        // Phase 2: publish.
        let members: Arc<Vec<u64>> = Arc::new(
            stats
                .members
                .iter()
                .map(|m| m.load(Ordering::Relaxed))
                .collect(),
        );
        let publisher = Arc::new(Publisher {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(args.in_flight.max(1))
                .build()
                .unwrap_or_default(),
            padding: "x".repeat(args.padding),
            args: args.clone(),
            expected: AtomicU64::new(0),
            accepted_events: AtomicU64::new(0),
            failed_events: AtomicU64::new(0),
            lag: Histogram::new(),
            round_trip: Histogram::new(),
        });
        let cpu_before = cpu_seconds(args.server_pid);
        let tool_cpu_before = cpu_seconds(Some(std::process::id()));
        let received_before = stats.received();
        let bytes_before = stats.received_bytes();
        let publish_started_ns = now_nanos();
        let (published, publish_s) = publish(
            publisher.clone(),
            stats.clone(),
            members,
            Duration::from_secs(args.duration),
        )
        .await;
        // Let deliveries finish: until everything arrived or nothing moved for 1 s (5 s cap).
        let expected = publisher.expected.load(Ordering::Relaxed);
        let drain_started = Instant::now();
        let mut last = stats.received();
        let mut still_since = Instant::now();
        while drain_started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = stats.received() - received_before;
            if now >= expected {
                break;
            }
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        stats.stopping.store(true, Ordering::Relaxed);
        let cpu_after = cpu_seconds(args.server_pid);
        let tool_cpu_after = cpu_seconds(Some(std::process::id()));
        let received = stats.received() - received_before;
        let received_bytes = stats.received_bytes() - bytes_before;
        let last_ns = stats.last_received_ns();
        let delivery_s = (last_ns.saturating_sub(publish_started_ns) as f64 / 1e9).max(publish_s);
        let accepted = publisher.accepted_events.load(Ordering::Relaxed);
        let rejected = publisher.failed_events.load(Ordering::Relaxed);
        let lost = expected.saturating_sub(received);
        let rate = received as f64 / delivery_s;
        let q = stats.latency_quantiles(&QUANTILES);
        let from_send = stats.send_latency_quantiles(&QUANTILES);
        let lag = publisher.lag.quantiles(&QUANTILES);
        let round_trip = publisher.round_trip.quantiles(&QUANTILES);
        let closed = stats.closed.load(Ordering::Relaxed);
        let server_cpu = match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        say(
            &args,
            format!(
                "published: {published} events in {publish_s:.2}s = {:.0} events/s ({accepted} accepted, {rejected} refused)",
                published as f64 / publish_s
            ),
        );
        say(
            &args,
            format!(
                "notifications: {received} received of {expected} expected ({lost} lost) = {rate:.0}/s; {closed} connections closed during the run"
            ),
        );
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        say(
            &args,
            format!(
                "latency ms: p50 {} p99 {} p999 {} max {}",
                fmt(q[2]),
                fmt(q[6]),
                fmt(q[8]),
                fmt(q[11])
            ),
        );
        if let Some(cpu) = server_cpu {
            say(
                &args,
                format!("server cpu: {cpu:.2}s during {delivery_s:.2}s"),
            );
        }
        let extra = json!({
            "published": published,
            "publish_s": round(publish_s, 3),
            "events_per_s": round(published as f64 / publish_s, 1),
            "accepted_per_s": round(accepted as f64 / publish_s, 1),
            "accepted_events": accepted,
            "message_bytes": round(received_bytes as f64 / received.max(1) as f64, 1),
            "tool_cpu_s": opt_round(
                tool_cpu_before.zip(tool_cpu_after).map(|(a, b)| b - a),
                2
            ),
            "refused_events": rejected,
            "expected": expected,
            "received": received,
            "lost": lost,
            "closed_during_run": closed,
            "delivery_s": round(delivery_s, 3),
            "notifications_per_s": round(rate, 1),
            "latency_ms": {
                "p50": opt_round(q[2], 3),
                "p90": opt_round(q[4], 3),
                "p99": opt_round(q[6], 3),
                "p999": opt_round(q[8], 3),
                "max": opt_round(q[11], 3),
            },
            "latency_cdf": QUANTILES.iter().zip(&q)
                .map(|(qq, v)| json!([qq, opt_round(*v, 3)]))
                .collect::<Vec<_>>(),
            "server_cpu_s": opt_round(server_cpu, 2),
            "latency_from_send_ms": {
                "p50": opt_round(from_send[2], 3),
                "p99": opt_round(from_send[6], 3),
                "p999": opt_round(from_send[8], 3),
                "max": opt_round(from_send[11], 3),
            },
            "post_round_trip_ms": {
                "p50": opt_round(round_trip[2], 3),
                "p99": opt_round(round_trip[6], 3),
                "max": opt_round(round_trip[11], 3),
            },
            "publisher_lag_ms": {
                "p50": opt_round(lag[2], 3),
                "p99": opt_round(lag[6], 3),
                "max": opt_round(lag[11], 3),
            },
        });
        if let (Value::Object(base), Value::Object(more)) = (&mut report, extra) {
            base.extend(more);
        }
    }
    report["rss_end_kib"] = json!(rss_kib(args.server_pid));
    if args.json {
        println!("{report}");
    }
    // Exit without closing 100k sockets one by one.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------
// Churn (soak) mode

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn churn(args: Args) {
    let groups = args.groups.max(1);
    let stats = Arc::new(Stats::new(groups));
    let cycles = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for worker in 0..args.connections {
        let args = args.clone();
        let stats = stats.clone();
        let cycles = cycles.clone();
        let failures = failures.clone();
        workers.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (worker as u64 + 1).wrapping_mul(0x2545_F491);
            let mut round = 0usize;
            // Stagger the first connections over a second.
            tokio::time::sleep(Duration::from_millis(next_random(&mut seed) % 1000)).await;
            while Instant::now() < deadline {
                round += 1;
                let index = worker + round * args.connections;
                let group = (next_random(&mut seed) % groups as u64) as usize;
                let Ok(Ok(mut ws)) =
                    tokio::time::timeout(Duration::from_secs(10), set_up(&args, index, group))
                        .await
                else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                // Hold 0.5–4 s, reading notifications.
                let hold = Duration::from_millis(500 + next_random(&mut seed) % 3500);
                let until = (Instant::now() + hold).min(deadline);
                while let Ok(Some(Ok(message))) =
                    tokio::time::timeout_at(until.into(), ws.next()).await
                {
                    if let Message::Text(text) = message {
                        on_frame(args.target, &text, &stats);
                    }
                }
                match next_random(&mut seed) % 4 {
                    // Abrupt: drop the socket without a Close frame.
                    0 => drop(ws),
                    // Unsubscribe first, then close cleanly.
                    1 if args.target == Target::Eventgate => {
                        let _ = ws
                            .send(Message::Text(
                                r#"{"Action":"Unsubscribe","RequestId":"u","Rule":"hit"}"#.into(),
                            ))
                            .await;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), wait_ack(&mut ws)).await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    }
                    _ => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            let _ = ws.close(None).await;
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                    }
                }
                cycles.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Events flow meanwhile; every group "has" connections/groups members on average, but
    // under churn nobody can say exactly who was subscribed, so loss is not computed here.
    let members = Arc::new(vec![0u64; groups]);
    let publisher = Arc::new(Publisher {
        client: reqwest::Client::new(),
        padding: "x".repeat(args.padding),
        args: Args {
            rate: args.rate.max(1),
            ..args.clone()
        },
        expected: AtomicU64::new(0),
        accepted_events: AtomicU64::new(0),
        failed_events: AtomicU64::new(0),
        lag: Histogram::new(),
        round_trip: Histogram::new(),
    });
    let publishing = tokio::spawn(publish(
        publisher.clone(),
        stats.clone(),
        members,
        Duration::from_secs(args.duration),
    ));
    let mut reporter = tokio::time::interval(Duration::from_secs(30));
    reporter.tick().await;
    loop {
        tokio::select! {
            _ = reporter.tick() => {
                eprintln!(
                    "churn {:>5.0}s: {} cycles, {} failed set-ups, {} notifications",
                    started.elapsed().as_secs_f64(),
                    cycles.load(Ordering::Relaxed),
                    failures.load(Ordering::Relaxed),
                    stats.received()
                );
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let (published, _) = publishing.await.unwrap_or((0, 0.0));
    let q = stats.latency_quantiles(&QUANTILES);
    let total_cycles = cycles.load(Ordering::Relaxed);
    let failed = failures.load(Ordering::Relaxed);
    let received = stats.received();
    let seconds = started.elapsed().as_secs_f64();
    say(
        &args,
        format!(
            "churn: {total_cycles} connect/subscribe/disconnect cycles in {seconds:.0}s ({:.0}/s), {failed} failed set-ups, {published} events published ({} refused), {received} notifications, p99 {:?} ms",
            total_cycles as f64 / seconds,
            publisher.failed_events.load(Ordering::Relaxed),
            q[6]
        ),
    );
    if args.json {
        println!(
            "{}",
            json!({
                "label": args.label,
                "mode": "churn",
                "workers": args.connections,
                "seconds": round(seconds, 1),
                "cycles": total_cycles,
                "cycles_per_s": round(total_cycles as f64 / seconds, 1),
                "failed_setups": failed,
                "published": published,
                "refused_events": publisher.failed_events.load(Ordering::Relaxed),
                "received": received,
                "latency_ms": {"p50": opt_round(q[2], 3), "p99": opt_round(q[6], 3), "p999": opt_round(q[8], 3)},
            })
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_stamp_reads_plain_and_escaped_frames() {
        assert_eq!(
            sent_stamp(r#"{"group":3,"seq":9,"sent":12345,"padding":"x"}"#),
            Some(12345)
        );
        let frame =
            r#"{"Action":"Event","Rules":["hit"],"Event":"{\"detail\":{\"seq\":9,\"sent\":678}}"}"#;
        assert_eq!(sent_stamp(frame), Some(678));
        assert_eq!(sent_stamp(r#"{"Action":"KeepAlive"}"#), None);
    }

    #[test]
    fn tenant_cells_match_events_to_their_connections() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["eventgate-bench", "--api-key", "k", "--groups", "100"];
            argv.extend_from_slice(extra);
            Args::parse_from(argv)
        };
        // Tenant in the rules: event k reaches connection i only if both tenant and group agree.
        let args = parse(&["--tenants", "1000", "--tenant-rules", "scope"]);
        assert_eq!(args.cells(), 100_000);
        for k in [0u64, 7, 999, 1_000, 12_345] {
            let receivers = (0..10_000)
                .filter(|i| args.connection_cell(*i, i % 100) == args.event_cell(k))
                .count();
            assert_eq!(receivers, 10, "event {k}");
        }
        // No tenant in the rules: the whole group receives it.
        let args = parse(&["--tenants", "1000"]);
        assert_eq!(args.cells(), 100);
        let receivers = (0..10_000)
            .filter(|i| args.connection_cell(*i, i % 100) == args.event_cell(42))
            .count();
        assert_eq!(receivers, 100);
    }

    #[test]
    fn tokens_carry_the_tenant_and_verify() {
        let secret = "0123456789abcdef0123456789abcdef";
        let mut args = Args::parse_from([
            "eventgate-bench",
            "--api-key",
            "k",
            "--connections",
            "3",
            "--tenants",
            "2",
            "--token-alg",
            "hs256",
            "--token-key",
            secret,
        ]);
        args.tokens = Arc::new(mint_tokens(&args).expect("minted"));
        let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).expect("key");
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        let tenants: Vec<String> = (0..3)
            .map(|i| {
                let token = args.token(i).expect("a token");
                let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("valid");
                data.claims["tenant"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(tenants, ["t0", "t1", "t0"]);
    }

    #[test]
    fn quantiles_merge_shards() {
        let stats = Stats::new(1);
        stats.shards[0].latency.record(1_000_000); // 1 ms
        stats.shards[1].latency.record(3_000_000); // 3 ms
        let q = stats.latency_quantiles(&[0.5, 1.0]);
        let (median, max) = (q[0].unwrap_or(0.0), q[1].unwrap_or(0.0));
        assert!((median - 1.0).abs() < 0.02, "median {median}");
        assert!((max - 3.0).abs() < 0.05, "max {max}");
    }
}
