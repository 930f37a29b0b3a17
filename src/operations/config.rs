//! Gateway configuration: the TOML file, `EVENTGATE_*` environment variables and command
//! line flags, merged in that order of precedence (flags win), then validated.
//!
//! Owns every key, its default and its environment name. Does not own secrets handling
//! beyond reading them (auth hashes them) nor the meaning of limits (the modules that
//! enforce them do).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use eventgate_protocol::pattern::{PatternLimits, RuleBudget};

use crate::tls::TlsConfig;
pub use crate::units::{parse_duration, Seconds};

/// Why configuration could not be loaded; `main` exits with code 64 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Limits on what clients and publishers may send. Every one has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest inbound WebSocket message (and frame), in bytes.
    pub max_frame_bytes: usize,
    /// Rules one connection may hold.
    pub max_rules_per_connection: usize,
    /// Longest rule name, in bytes.
    pub max_rule_name_bytes: usize,
    /// Largest pattern, in bytes.
    pub max_pattern_bytes: usize,
    /// Deepest nesting of objects in a pattern.
    pub max_pattern_depth: usize,
    /// Most alternatives (values after `$or` expansion) in one pattern.
    pub max_pattern_alternatives: usize,
    /// Most `*` in one wildcard.
    pub max_wildcard_stars: usize,
    /// Notifications queued for one connection before it is closed as too slow (1013).
    pub max_queued_messages: usize,
    /// Bytes queued for one connection before it is closed as too slow (1013).
    pub max_queued_bytes: usize,
    /// Actions a connection may send per second (sustained); bursts up to twice that.
    pub max_actions_per_second: u32,
    /// Largest ingest request body.
    pub max_body_bytes: usize,
    /// Largest single event after normalisation.
    pub max_event_bytes: usize,
    /// Most entries in one ingest request.
    pub max_entries: usize,

    // Abuse limits (see `limits`); 0 turns a count or rate off.
    /// Open WebSockets on this gateway; beyond it the upgrade answers 503.
    pub max_connections: usize,
    /// Open WebSockets from one client address; beyond it the upgrade answers 429.
    pub max_connections_per_ip: usize,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed: the right-most address in it
    /// that is not itself a trusted proxy is then the client address.
    pub trusted_proxies: Vec<String>,
    /// New WebSockets per second from one client address (token bucket, bursts of as
    /// many); beyond it 429 with `Retry-After`.
    pub new_connections_per_second_per_ip: u32,
    /// Time a client has to finish the TLS handshake and send its HTTP request head.
    pub upgrade_timeout: Seconds,
    /// Events per second one ingest token may publish (bursts of as many); beyond it 429
    /// with `Retry-After`.
    pub max_ingest_events_per_second_per_token: u32,

    // Hostile HTTP callers (see `http_body`, `server`'s pattern tester and `ingest`).
    /// Time a request body has to arrive in full once its head was read; a slower one is
    /// answered 408 and its connection closed.
    pub body_timeout: Seconds,
    /// Largest `POST /test-pattern` body; a larger one (declared or sent) gets 413.
    pub max_test_pattern_body_bytes: usize,
    /// CPU time budget of one `POST /test-pattern` evaluation; past it the request gets 503.
    pub test_pattern_timeout: Seconds,
    /// `POST /test-pattern` requests served at once (body read and evaluation); beyond it
    /// 503 with `Retry-After`.
    pub max_concurrent_test_patterns: usize,
    /// Bytes of events (their JSON) accepted but not yet matched by the dispatcher; beyond
    /// it `POST /events` answers 503 with `Retry-After` and broker sources wait for room.
    pub max_ingest_backlog_bytes: usize,
    // Peers that do not read (see `session` and `docs/operations.md`, "Peers that do not read").
    /// Longest a write to a WebSocket may stay pending; a peer that reads nothing for this
    /// long is closed (1013 when the close frame still fits, else dropped).
    pub write_timeout: Seconds,
    /// `SO_SNDBUF` of accepted sockets (the kernel doubles it); 0 keeps the kernel's
    /// autotuning, which lets one socket hold up to `net.ipv4.tcp_wmem`'s maximum.
    pub send_buffer_bytes: usize,
    // Rule budgets (see `docs/operations.md`, "Rule budgets").
    /// Highest matching cost of one rule (steps per event, worst case).
    pub max_rule_cost: u64,
    /// Highest total matching cost of one connection's rules.
    pub max_connection_cost: u64,
    /// Highest total memory weight of one connection's rules, in bytes.
    pub max_connection_rule_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let pattern = PatternLimits::default();
        Self {
            max_frame_bytes: 64 * 1024,
            max_rules_per_connection: 100,
            max_rule_name_bytes: 256,
            max_pattern_bytes: pattern.max_pattern_bytes,
            max_pattern_depth: pattern.max_depth,
            max_pattern_alternatives: pattern.max_alternatives,
            max_wildcard_stars: pattern.max_wildcard_stars,
            max_queued_messages: 1024,
            max_queued_bytes: 4 * 1024 * 1024,
            max_actions_per_second: 50,
            max_body_bytes: 1024 * 1024,
            max_event_bytes: 256 * 1024,
            max_entries: 500,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            trusted_proxies: Vec::new(),
            new_connections_per_second_per_ip: 0,
            upgrade_timeout: Seconds(Duration::from_secs(10)),
            max_ingest_events_per_second_per_token: 0,
            body_timeout: Seconds(Duration::from_secs(10)),
            max_test_pattern_body_bytes: 64 * 1024,
            test_pattern_timeout: Seconds(Duration::from_secs(1)),
            max_concurrent_test_patterns: 1,
            max_ingest_backlog_bytes: 32 * 1024 * 1024,
            write_timeout: Seconds(Duration::from_secs(10)),
            send_buffer_bytes: 64 * 1024,
            max_rule_cost: RuleBudget::default().max_rule_cost,
            max_connection_cost: RuleBudget::default().max_connection_cost,
            max_connection_rule_bytes: RuleBudget::default().max_connection_rule_bytes,
        }
    }
}

impl Limits {
    pub fn pattern_limits(&self) -> PatternLimits {
        PatternLimits {
            max_pattern_bytes: self.max_pattern_bytes,
            max_depth: self.max_pattern_depth,
            max_alternatives: self.max_pattern_alternatives,
            max_wildcard_stars: self.max_wildcard_stars,
        }
    }

    pub fn rule_budget(&self) -> RuleBudget {
        RuleBudget {
            max_rule_cost: self.max_rule_cost,
            max_connection_cost: self.max_connection_cost,
            max_connection_rule_bytes: self.max_connection_rule_bytes,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Dev mode: generated stack id when unset, `base64(StackId)` keys accepted, ingest
    /// open to loopback when no token is configured, demo page config, debug logs.
    pub dev: bool,
    /// The server secret every API key is derived from.
    pub stack_id: Option<String>,
    /// App version ids whose keys are accepted (several at once for rolling deploys).
    pub app_version_ids: Vec<String>,
    /// Hosts clients must name in the `header` document; empty = the request's Host.
    pub public_hosts: Vec<String>,
    /// Origins allowed to open a WebSocket; empty = any.
    pub allowed_origins: Vec<String>,
    /// Paths that accept the WebSocket upgrade.
    pub ws_paths: Vec<String>,
    /// Bearer tokens accepted by `POST /events`.
    pub ingest_tokens: Vec<String>,
    /// `account` filled into events that have none.
    pub account: String,
    /// `region` filled into events that have none.
    pub region: String,
    /// Time a new connection has to send Hello.
    pub hello_timeout: Seconds,
    /// Interval of KeepAlive notifications and WebSocket pings.
    pub keepalive_interval: Seconds,
    /// A connection that has answered nothing (no frame, no pong) for this long is dead.
    pub idle_timeout: Seconds,
    /// Time allowed for draining on shutdown.
    pub shutdown_grace: Seconds,
    pub limits: Limits,
    /// Broker sources (`[[sources]]`), see `docs/sources.md`.
    #[serde(default)]
    pub sources: Vec<crate::sources::SourceConfig>,
    /// Multi-node fan-out (`[cluster]`); absent = this node alone, in-process.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Verified identities and scopes (`[identity]`), see `docs/auth.md`; absent = key only.
    pub identity: Option<crate::identity::IdentityConfig>,
    /// Serve `https`/`wss` on the listener (`[tls]`); absent = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Bearer token of the admin console and API under `/admin/` (plain, at least
    /// `MIN_ADMIN_TOKEN_BYTES` long, or `sha256:<hex>`); absent = no console (404), except
    /// in dev mode, where it is open to loopback clients.
    pub admin_token: Option<String>,
    /// File holding `admin_token`; excludes `admin_token`.
    pub admin_token_file: Option<PathBuf>,
    /// File holding `stack_id` (Docker/Kubernetes secrets); excludes `stack_id`.
    pub stack_id_file: Option<PathBuf>,
    /// File holding `ingest_tokens`, one a line; excludes `ingest_tokens`.
    pub ingest_tokens_file: Option<PathBuf>,
    /// Who may call `POST /test-pattern`.
    pub test_pattern: TestPatternAccess,
    /// Test only, and only with `dev`: every WebSocket echoes its text and binary messages
    /// instead of speaking the protocol, for the Autobahn|Testsuite (`scripts/autobahn.sh`).
    pub dev_websocket_echo: bool,
    /// Log lines as human-readable text or as one JSON object a line.
    pub log_format: LogFormat,
    /// After SIGTERM: how long `/readyz` answers 503 (and new WebSockets are refused with
    /// 503) while open sessions keep running, so that load balancers stop sending new
    /// clients before sessions are closed. Unset: [`DEFAULT_DRAIN_PERIOD`], 0 in dev mode.
    pub drain_period: Option<Seconds>,
    /// Event history and resume (`[history]`), see `crate::history`.
    pub history: crate::history::HistoryConfig,
}

/// `drain_period` when it is not set (outside dev mode).
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(5);

/// `log_format`: `"text"` (the default) or `"json"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `test_pattern`: who may call `POST /test-pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestPatternAccess {
    /// Callers with an ingest token (in dev mode without tokens: loopback callers too).
    #[default]
    Token,
    /// Anyone, without a credential.
    Open,
    /// The endpoint is not served (404).
    Off,
}

/// Shortest plain `admin_token` accepted: it guards disconnecting anyone.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// Prefix of a secret given as its SHA-256 digest: `sha256:<64 hex digits>`.
pub const SHA256_PREFIX: &str = "sha256:";

/// The 32 bytes of a `sha256:<64 hex>` value; `None` when `value` is not one.
pub fn sha256_digest(value: &str) -> Option<[u8; 32]> {
    let hex = value.strip_prefix(SHA256_PREFIX)?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            dev: false,
            stack_id: None,
            app_version_ids: Vec::new(),
            public_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            ws_paths: vec!["/".to_owned(), "/LATEST".to_owned()],
            ingest_tokens: Vec::new(),
            account: "000000000000".to_owned(),
            region: "local".to_owned(),
            hello_timeout: Seconds(Duration::from_secs(10)),
            keepalive_interval: Seconds(Duration::from_secs(30)),
            idle_timeout: Seconds(Duration::from_secs(75)),
            shutdown_grace: Seconds(Duration::from_secs(10)),
            limits: Limits::default(),
            sources: Vec::new(),
            cluster: None,
            identity: None,
            tls: None,
            admin_token: None,
            admin_token_file: None,
            stack_id_file: None,
            ingest_tokens_file: None,
            test_pattern: TestPatternAccess::Token,
            dev_websocket_echo: false,
            log_format: LogFormat::Text,
            drain_period: None,
            history: crate::history::HistoryConfig::default(),
        }
    }
}

impl Config {
    /// The draining period in force: `drain_period`, or its default (0 in dev mode).
    pub fn drain_period(&self) -> Duration {
        match self.drain_period {
            Some(period) => period.0,
            None if self.dev => Duration::ZERO,
            None => DEFAULT_DRAIN_PERIOD,
        }
    }

    /// What `load` leaves out because it reads files or asks client libraries, done before
    /// the server says it listens: the `[tls]` certificate and key must be readable and
    /// form a usable pair, the AMQP sources' certificate files readable and `password_env`
    /// set, and every broker and backplane URL must parse.
    pub fn preflight(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls {
            crate::tls::Tls::new(tls).map_err(|error| {
                let key = match &error {
                    crate::tls::TlsError::Read { path, .. }
                        if *path == tls.key.display().to_string() =>
                    {
                        "tls.key"
                    }
                    crate::tls::TlsError::Read { .. } | crate::tls::TlsError::NoCertificate(_) => {
                        "tls.cert"
                    }
                    crate::tls::TlsError::NoKey { .. } => "tls.key",
                    crate::tls::TlsError::Rustls(_) => "tls.cert / tls.key",
                };
                ConfigError::Invalid(format!("{key}: {error}"))
            })?;
        }
        if let Some(cluster) = &self.cluster {
            let parsed = if cluster.backend.redis() {
                redis_url(&cluster.url)
            } else {
                nats_url(&cluster.url)
            };
            parsed.map_err(|error| ConfigError::Invalid(format!("cluster.url: {error}")))?;
        }
        for (index, source) in self.sources.iter().enumerate() {
            let entry = format!("[[sources]] entry {} ({:?})", index + 1, source.name());
            let url = match source {
                crate::sources::SourceConfig::RedisStreams(redis) => redis_url(&redis.url),
                crate::sources::SourceConfig::NatsJetstream(nats) => nats_url(&nats.url),
                crate::sources::SourceConfig::Amqp(_) => Ok(()),
            };
            url.map_err(|error| ConfigError::Invalid(format!("{entry}: url: {error}")))?;
            let crate::sources::SourceConfig::Amqp(amqp) = source else {
                continue;
            };
            for (key, path) in [
                ("ca_file", &amqp.ca_file),
                ("client_cert_file", &amqp.client_cert_file),
                ("client_key_file", &amqp.client_key_file),
            ] {
                if let Some(path) = path {
                    std::fs::read(path).map_err(|error| {
                        ConfigError::Invalid(format!(
                            "{entry}: {key}: cannot read {}: {error}",
                            path.display()
                        ))
                    })?;
                }
            }
            if let Some(variable) = &amqp.password_env {
                if std::env::var_os(variable).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "{entry}: password_env: the environment variable {variable} is not set"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Environment variables: `EVENTGATE_<NAME>` → key path in the TOML document.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("LISTEN", "listen", Kind::Text),
    ("DEV", "dev", Kind::Bool),
    ("STACK_ID", "stack_id", Kind::Text),
    ("APP_VERSION_IDS", "app_version_ids", Kind::List),
    ("PUBLIC_HOSTS", "public_hosts", Kind::List),
    ("ALLOWED_ORIGINS", "allowed_origins", Kind::List),
    ("WS_PATHS", "ws_paths", Kind::List),
    ("INGEST_TOKENS", "ingest_tokens", Kind::List),
    ("ADMIN_TOKEN", "admin_token", Kind::Text),
    ("ADMIN_TOKEN_FILE", "admin_token_file", Kind::Text),
    ("ACCOUNT", "account", Kind::Text),
    ("REGION", "region", Kind::Text),
    ("HELLO_TIMEOUT", "hello_timeout", Kind::Text),
    ("KEEPALIVE_INTERVAL", "keepalive_interval", Kind::Text),
    ("IDLE_TIMEOUT", "idle_timeout", Kind::Text),
    ("SHUTDOWN_GRACE", "shutdown_grace", Kind::Text),
    ("IDENTITY_MODE", "identity.mode", Kind::Text),
    ("IDENTITY_HMAC_SECRET", "identity.hmac_secret", Kind::Text),
    (
        "IDENTITY_HMAC_SECRET_FILE",
        "identity.hmac_secret_file",
        Kind::Text,
    ),
    ("IDENTITY_JWKS_URL", "identity.jwks_url", Kind::Text),
    ("IDENTITY_JWKS_FILE", "identity.jwks_file", Kind::Text),
    ("IDENTITY_ISSUERS", "identity.issuers", Kind::List),
    ("IDENTITY_AUDIENCES", "identity.audiences", Kind::List),
    ("IDENTITY_SCOPE", "identity.scope", Kind::Text),
    ("IDENTITY_SCOPE_CLAIM", "identity.scope_claim", Kind::Text),
    ("IDENTITY_LEEWAY", "identity.leeway", Kind::Text),
    ("IDENTITY_EXPIRY_GRACE", "identity.expiry_grace", Kind::Text),
    ("IDENTITY_HOOK_URL", "identity.hook.url", Kind::Text),
    ("MAX_FRAME_BYTES", "limits.max_frame_bytes", Kind::Integer),
    (
        "MAX_RULES_PER_CONNECTION",
        "limits.max_rules_per_connection",
        Kind::Integer,
    ),
    (
        "MAX_RULE_NAME_BYTES",
        "limits.max_rule_name_bytes",
        Kind::Integer,
    ),
    (
        "MAX_PATTERN_BYTES",
        "limits.max_pattern_bytes",
        Kind::Integer,
    ),
    (
        "MAX_PATTERN_DEPTH",
        "limits.max_pattern_depth",
        Kind::Integer,
    ),
    (
        "MAX_PATTERN_ALTERNATIVES",
        "limits.max_pattern_alternatives",
        Kind::Integer,
    ),
    (
        "MAX_WILDCARD_STARS",
        "limits.max_wildcard_stars",
        Kind::Integer,
    ),
    (
        "MAX_QUEUED_MESSAGES",
        "limits.max_queued_messages",
        Kind::Integer,
    ),
    ("MAX_QUEUED_BYTES", "limits.max_queued_bytes", Kind::Integer),
    (
        "MAX_ACTIONS_PER_SECOND",
        "limits.max_actions_per_second",
        Kind::Integer,
    ),
    ("MAX_BODY_BYTES", "limits.max_body_bytes", Kind::Integer),
    ("MAX_EVENT_BYTES", "limits.max_event_bytes", Kind::Integer),
    ("MAX_ENTRIES", "limits.max_entries", Kind::Integer),
    ("CLUSTER_BACKEND", "cluster.backend", Kind::Text),
    ("CLUSTER_URL", "cluster.url", Kind::Text),
    ("CLUSTER_CHANNEL", "cluster.channel", Kind::Text),
    ("CLUSTER_STREAM", "cluster.stream", Kind::Text),
    ("CLUSTER_NODE_ID", "cluster.node_id", Kind::Text),
    ("MAX_CONNECTIONS", "limits.max_connections", Kind::Integer),
    (
        "MAX_CONNECTIONS_PER_IP",
        "limits.max_connections_per_ip",
        Kind::Integer,
    ),
    ("TRUSTED_PROXIES", "limits.trusted_proxies", Kind::List),
    (
        "NEW_CONNECTIONS_PER_SECOND_PER_IP",
        "limits.new_connections_per_second_per_ip",
        Kind::Integer,
    ),
    ("UPGRADE_TIMEOUT", "limits.upgrade_timeout", Kind::Text),
    (
        "MAX_INGEST_EVENTS_PER_SECOND_PER_TOKEN",
        "limits.max_ingest_events_per_second_per_token",
        Kind::Integer,
    ),
    ("WRITE_TIMEOUT", "limits.write_timeout", Kind::Text),
    (
        "SEND_BUFFER_BYTES",
        "limits.send_buffer_bytes",
        Kind::Integer,
    ),
    ("TLS_CERT", "tls.cert", Kind::Text),
    ("TLS_KEY", "tls.key", Kind::Text),
    ("TLS_RELOAD_INTERVAL", "tls.reload_interval", Kind::Text),
    ("STACK_ID_FILE", "stack_id_file", Kind::Text),
    ("INGEST_TOKENS_FILE", "ingest_tokens_file", Kind::Text),
    ("TEST_PATTERN", "test_pattern", Kind::Text),
    ("BODY_TIMEOUT", "limits.body_timeout", Kind::Text),
    (
        "MAX_TEST_PATTERN_BODY_BYTES",
        "limits.max_test_pattern_body_bytes",
        Kind::Integer,
    ),
    (
        "TEST_PATTERN_TIMEOUT",
        "limits.test_pattern_timeout",
        Kind::Text,
    ),
    (
        "MAX_CONCURRENT_TEST_PATTERNS",
        "limits.max_concurrent_test_patterns",
        Kind::Integer,
    ),
    (
        "MAX_INGEST_BACKLOG_BYTES",
        "limits.max_ingest_backlog_bytes",
        Kind::Integer,
    ),
    ("LOG_FORMAT", "log_format", Kind::Text),
    ("DRAIN_PERIOD", "drain_period", Kind::Text),
    // [history]
    ("HISTORY_ENABLED", "history.enabled", Kind::Bool),
    ("HISTORY_MAX_EVENTS", "history.max_events", Kind::Integer),
    ("HISTORY_MAX_BYTES", "history.max_bytes", Kind::Integer),
    ("HISTORY_MAX_AGE", "history.max_age", Kind::Text),
    ("HISTORY_MAX_REPLAY", "history.max_replay", Kind::Integer),
    ("MAX_RULE_COST", "limits.max_rule_cost", Kind::Integer),
    (
        "MAX_CONNECTION_COST",
        "limits.max_connection_cost",
        Kind::Integer,
    ),
    (
        "MAX_CONNECTION_RULE_BYTES",
        "limits.max_connection_rule_bytes",
        Kind::Integer,
    ),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Bool,
    Integer,
    List,
}

/// The names of all environment variables, for documentation and `--help`.
pub fn env_names() -> impl Iterator<Item = (String, &'static str)> {
    ENV_KEYS
        .iter()
        .map(|(name, path, _)| (format!("EVENTGATE_{name}"), *path))
}

/// `EVENTGATE_*` variables read elsewhere than the configuration (`main`, logging).
const OTHER_ENV_NAMES: &[&str] = &["CONFIG", "LOG"];

/// An `EVENTGATE_*` environment variable that names no setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    /// The known variable whose name is closest.
    pub closest: String,
}

impl std::fmt::Display for UnknownVariable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "unknown environment variable {} ignored (the closest setting is {})",
            self.name, self.closest
        )?;
        let suffix = self.name.trim_start_matches("EVENTGATE_");
        if suffix == "PORT" || suffix.starts_with("PORT_") || suffix.starts_with("SERVICE_") {
            formatter.write_str(
                "; Kubernetes sets such variables for a Service named eventgate, and they are harmless",
            )?;
        }
        Ok(())
    }
}

/// The `EVENTGATE_*` variables of `environment` that name no setting, each with the closest
/// known name. They are warned about, never fatal: Kubernetes injects `EVENTGATE_PORT`,
/// `EVENTGATE_SERVICE_HOST`, … into every pod of a namespace holding a Service named
/// `eventgate`. (Unknown keys in a config file stay errors.)
pub fn unknown_environment(
    environment: impl IntoIterator<Item = (String, String)>,
) -> Vec<UnknownVariable> {
    let known: Vec<&str> = ENV_KEYS
        .iter()
        .map(|(key, _, _)| *key)
        .chain(OTHER_ENV_NAMES.iter().copied())
        .collect();
    let mut unknown: Vec<UnknownVariable> = environment
        .into_iter()
        .filter_map(|(name, _)| {
            let suffix = name.strip_prefix("EVENTGATE_")?;
            if known.contains(&suffix) {
                return None;
            }
            let closest = known
                .iter()
                .min_by_key(|key| strsim::damerau_levenshtein(suffix, key))
                .copied()
                .unwrap_or_default();
            Some(UnknownVariable {
                closest: format!("EVENTGATE_{closest}"),
                name,
            })
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.to_owned(), value);
}

fn env_value(name: &str, raw: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Text => toml::Value::String(raw.to_owned()),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" | "" => toml::Value::Boolean(false),
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{name}={raw:?} is not a boolean"
                )))
            }
        },
        Kind::Integer => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!("{name}={raw:?} is not a whole number"))
            })?)
        }
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
    })
}

/// Builds the configuration from a TOML text (may be empty), the environment and
/// flag overrides given as `(key path, value)`.
pub fn load(
    file_text: Option<&str>,
    environment: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<(&str, toml::Value)>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table = match file_text {
        Some(text) => toml::from_str(text).map_err(|err| ConfigError::Invalid(err.to_string()))?,
        None => toml::Table::new(),
    };
    for (name, raw) in environment {
        // Unknown `EVENTGATE_*` variables are not errors: see `unknown_environment`.
        let Some((_, path, kind)) = name
            .strip_prefix("EVENTGATE_")
            .and_then(|suffix| ENV_KEYS.iter().find(|(key, _, _)| *key == suffix))
        else {
            continue;
        };
        set_path(&mut table, path, env_value(&name, &raw, *kind)?);
    }
    for (path, value) in overrides {
        set_path(&mut table, path, value);
    }
    let sources = table.remove("sources").map(sources_of).transpose()?;
    let mut config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|err: toml::de::Error| ConfigError::Invalid(err.to_string()))?;
    config.sources = sources.unwrap_or_default();
    config.read_secret_files()?;
    config.validate()?;
    Ok(config)
}

fn redis_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
        return Err(format!(
            "{url:?} is not a Redis URL (scheme {scheme:?}); write redis://host:6379/"
        ));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|error| format!("{url:?} is not a Redis URL ({error}); write redis://host:6379/"))
}

fn nats_url(url: &str) -> Result<(), String> {
    url.parse::<async_nats::ServerAddr>()
        .map(drop)
        .map_err(|error| format!("{url:?} is not a NATS URL ({error}); write nats://host:4222"))
}

/// `[[sources]]`, one entry at a time, so that an error names the entry: `sources[1]
/// ("users"): unknown field ...`. Two entries with one name are refused too (the name keys
/// the metrics, the DLQ and `/readyz`).
fn sources_of(value: toml::Value) -> Result<Vec<crate::sources::SourceConfig>, ConfigError> {
    let toml::Value::Array(entries) = value else {
        return Err(ConfigError::Invalid(
            "sources must be an array of tables: write each entry as [[sources]]".into(),
        ));
    };
    let mut sources: Vec<crate::sources::SourceConfig> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let name = entry
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| "no name".to_owned(), |name| format!("{name:?}"));
        let source: crate::sources::SourceConfig =
            entry.try_into().map_err(|err: toml::de::Error| {
                ConfigError::Invalid(format!(
                    "[[sources]] entry {} ({name}): {}",
                    index + 1,
                    err.message()
                ))
            })?;
        if sources.iter().any(|other| other.name() == source.name()) {
            return Err(ConfigError::Invalid(format!(
                "[[sources]] entry {} ({name}): another source has this name; names must differ",
                index + 1
            )));
        }
        sources.push(source);
    }
    Ok(sources)
}

fn read_secret_file(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Config {
    /// Fills `stack_id` and `ingest_tokens` from their `_file` keys; a value and its file
    /// both set is an error.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.stack_id_file {
            if self.stack_id.is_some() {
                return Err(ConfigError::Invalid(
                    "stack_id and stack_id_file are both set; use one".into(),
                ));
            }
            let text = read_secret_file(path)?;
            self.stack_id = Some(text.trim().to_owned());
        }
        if let Some(path) = &self.ingest_tokens_file {
            if !self.ingest_tokens.is_empty() {
                return Err(ConfigError::Invalid(
                    "ingest_tokens and ingest_tokens_file are both set; use one".into(),
                ));
            }
            self.ingest_tokens = read_secret_file(path)?
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect();
        }
        if let Some(path) = &self.admin_token_file {
            if self.admin_token.is_some() {
                return Err(ConfigError::Invalid(
                    "admin_token and admin_token_file are both set; use one".into(),
                ));
            }
            self.admin_token = Some(read_secret_file(path)?.trim().to_owned());
        }
        Ok(())
    }

    fn validate_serving(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Invalid(message));
        if let Some(token) = &self.admin_token {
            if !token.starts_with(SHA256_PREFIX) && token.len() < MIN_ADMIN_TOKEN_BYTES {
                return fail(format!(
                    "admin_token must be at least {MIN_ADMIN_TOKEN_BYTES} characters (or sha256:<hex>)"
                ));
            }
        }
        let stack_id_key = if self.stack_id_file.is_some() {
            "stack_id_file"
        } else {
            "stack_id"
        };
        let tokens_key = if self.ingest_tokens_file.is_some() {
            "ingest_tokens_file"
        } else {
            "ingest_tokens"
        };
        let secrets = self
            .stack_id
            .iter()
            .map(|value| (stack_id_key.to_owned(), value));
        let tokens = self
            .ingest_tokens
            .iter()
            .enumerate()
            .map(|(index, value)| (format!("{tokens_key} (entry {})", index + 1), value));
        let admin = self
            .admin_token
            .iter()
            .map(|value| ("admin_token".to_owned(), value));
        for (key, value) in secrets.chain(tokens).chain(admin) {
            if value.starts_with(SHA256_PREFIX) && sha256_digest(value).is_none() {
                return fail(format!(
                    "{key}: a secret starting with {SHA256_PREFIX:?} must be followed by 64 hex digits (the SHA-256 of the secret, e.g. `printf %s SECRET | sha256sum`)"
                ));
            }
        }
        for cidr in &self.limits.trusted_proxies {
            if crate::units::parse_cidr(cidr).is_none() {
                return fail(format!(
                    "limits.trusted_proxies: {cidr:?} is not an address or CIDR"
                ));
            }
        }
        if self.limits.upgrade_timeout.0.is_zero() {
            return fail("limits.upgrade_timeout must be greater than zero".into());
        }
        self.validate_http_limits()?;
        if self.limits.write_timeout.0.is_zero() {
            return fail("limits.write_timeout must be greater than zero".into());
        }
        if self.dev_websocket_echo && !self.dev {
            return fail("dev_websocket_echo is a test mode: it needs dev = true".into());
        }
        if let Some(tls) = &self.tls {
            if tls.reload_interval.0.is_zero() {
                return fail("tls.reload_interval must be greater than zero".into());
            }
        }
        self.history.validate().map_err(ConfigError::Invalid)?;
        if let Some(cluster) = &self.cluster {
            if cluster.backend.shared_log() && !self.history.enabled {
                return fail(
                    "cluster.backend = \"redis_stream\" or \"jetstream\" is a shared event log: it needs history.enabled = true (its [history] keys set the log's retention)"
                        .into(),
                );
            }
            if cluster.backend == crate::cluster::Backend::Jetstream
                && (cluster.stream.is_empty()
                    || cluster
                        .stream
                        .contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)))
            {
                return fail(format!(
                    "cluster.stream: {:?} is not a JetStream stream name (no spaces, '.', '*', '>', '/' or '\\')",
                    cluster.stream
                ));
            }
        }
        Ok(())
    }

    /// The limits on hostile HTTP callers.
    fn validate_http_limits(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Invalid(message));
        let limits = &self.limits;
        for (name, value) in [
            ("limits.body_timeout", limits.body_timeout.0),
            ("limits.test_pattern_timeout", limits.test_pattern_timeout.0),
        ] {
            if value.is_zero() {
                return fail(format!("{name} must be greater than zero"));
            }
        }
        for (name, value) in [
            (
                "limits.max_test_pattern_body_bytes",
                limits.max_test_pattern_body_bytes,
            ),
            (
                "limits.max_concurrent_test_patterns (use test_pattern = \"off\" to turn the endpoint off)",
                limits.max_concurrent_test_patterns,
            ),
        ] {
            if value == 0 {
                return fail(format!("{name} must be greater than zero"));
            }
        }
        if limits.max_ingest_backlog_bytes < limits.max_body_bytes {
            return fail(format!(
                "limits.max_ingest_backlog_bytes ({}) must be at least limits.max_body_bytes ({}): a request that alone exceeds it could never be accepted",
                limits.max_ingest_backlog_bytes, limits.max_body_bytes
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_serving()?;
        if let Some(identity) = &self.identity {
            crate::identity::Identity::new(Some(identity), self.limits.pattern_limits())
                .map_err(ConfigError::Invalid)?;
        }
        let fail = |message: String| Err(ConfigError::Invalid(message));
        if !self.dev && self.stack_id.as_deref().is_none_or(str::is_empty) {
            return fail("stack_id is required outside dev mode (or run with --dev)".into());
        }
        if !self.dev && self.app_version_ids.is_empty() {
            return fail(
                "app_version_ids needs at least one id outside dev mode (keys are base64(\"<AppVersionId>:<StackId>\"))"
                    .into(),
            );
        }
        if self.ws_paths.is_empty() || self.ws_paths.iter().any(|p| !p.starts_with('/')) {
            return fail("ws_paths must be a non-empty list of paths starting with '/'".into());
        }
        for (name, value) in [
            ("hello_timeout", self.hello_timeout.0),
            ("keepalive_interval", self.keepalive_interval.0),
            ("idle_timeout", self.idle_timeout.0),
        ] {
            if value.is_zero() {
                return fail(format!("{name} must be greater than zero"));
            }
        }
        let limits = &self.limits;
        for (name, value) in [
            ("limits.max_frame_bytes", limits.max_frame_bytes),
            (
                "limits.max_rules_per_connection",
                limits.max_rules_per_connection,
            ),
            ("limits.max_rule_name_bytes", limits.max_rule_name_bytes),
            ("limits.max_pattern_bytes", limits.max_pattern_bytes),
            ("limits.max_queued_messages", limits.max_queued_messages),
            ("limits.max_queued_bytes", limits.max_queued_bytes),
            ("limits.max_body_bytes", limits.max_body_bytes),
            ("limits.max_event_bytes", limits.max_event_bytes),
            ("limits.max_entries", limits.max_entries),
            (
                "limits.max_actions_per_second",
                limits.max_actions_per_second as usize,
            ),
            ("limits.max_rule_cost", limits.max_rule_cost as usize),
            (
                "limits.max_connection_cost",
                limits.max_connection_cost as usize,
            ),
            (
                "limits.max_connection_rule_bytes",
                limits.max_connection_rule_bytes as usize,
            ),
        ] {
            if value == 0 {
                return fail(format!("{name} must be greater than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn admin_token_forms() {
        let digest = format!("sha256:{}", "cd".repeat(32));
        for (file, ok) in [
            ("dev = true\nadmin_token = \"0123456789abcdef\"", true),
            (&*format!("dev = true\nadmin_token = \"{digest}\""), true),
            ("dev = true\nadmin_token = \"short\"", false),
            ("dev = true\nadmin_token = \"sha256:00\"", false),
        ] {
            assert_eq!(load(Some(file), env(&[]), vec![]).is_ok(), ok, "{file}");
        }
        let dir = std::env::temp_dir().join(format!("eventgate-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("admin_token");
        std::fs::write(&path, "  0123456789abcdef-from-file\n").expect("write");
        let config = load(
            Some("dev = true"),
            env(&[("EVENTGATE_ADMIN_TOKEN_FILE", &path.display().to_string())]),
            vec![],
        )
        .expect("valid");
        assert_eq!(
            config.admin_token.as_deref(),
            Some("0123456789abcdef-from-file")
        );
        let both = format!(
            "dev = true\nadmin_token = \"0123456789abcdef\"\nadmin_token_file = {:?}",
            path.display().to_string()
        );
        assert!(load(Some(&both), env(&[]), vec![]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn precedence_is_flags_then_env_then_file() {
        let file = "dev = true\nregion = \"file\"\naccount = \"file\"\nhello_timeout = \"3s\"\n[limits]\nmax_entries = 7\n";
        let config = load(
            Some(file),
            env(&[
                ("EVENTGATE_REGION", "env"),
                ("EVENTGATE_ACCOUNT", "env"),
                ("PATH", "/bin"),
            ]),
            vec![("account", toml::Value::String("flag".into()))],
        )
        .expect("valid");
        assert_eq!(config.region, "env");
        assert_eq!(config.account, "flag");
        assert_eq!(config.hello_timeout, Seconds(Duration::from_secs(3)));
        assert_eq!(config.limits.max_entries, 7);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        for (file, vars) in [
            ("dev = true\nbogus = 1", vec![]),
            ("dev = true\n[limits]\nbogus = 1", vec![]),
            ("dev = true\nhello_timeout = \"ten\"", vec![]),
            ("", vec![("EVENTGATE_DEV", "maybe")]),
            ("", vec![]),
            ("stack_id = \"s\"", vec![]),
        ] {
            assert!(
                load(Some(file), env(&vars), vec![]).is_err(),
                "{file} {vars:?}"
            );
        }
    }

    #[test]
    fn serving_keys() {
        let config = load(
            Some("dev = true\n[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n"),
            env(&[
                ("EVENTGATE_TLS_CERT", "/c.pem"),
                ("EVENTGATE_TLS_KEY", "/k.pem"),
                ("EVENTGATE_UPGRADE_TIMEOUT", "2s"),
                ("EVENTGATE_MAX_CONNECTIONS_PER_IP", "7"),
            ]),
            vec![],
        )
        .expect("valid");
        let tls = config.tls.expect("tls");
        assert_eq!(tls.reload_interval, Seconds(Duration::from_secs(10)));
        assert_eq!(
            config.limits.upgrade_timeout,
            Seconds(Duration::from_secs(2))
        );
        assert_eq!(config.limits.max_connections_per_ip, 7);
        for file in [
            "dev = true\n[limits]\ntrusted_proxies = [\"proxy\"]",
            "dev = true\n[limits]\nupgrade_timeout = \"0s\"",
            "dev = true\n[tls]\ncert = \"/c\"",
            "dev = true\n[tls]\ncert = \"/c\"\nkey = \"/k\"\nbogus = 1",
            "dev = true\nstack_id = \"sha256:00\"",
        ] {
            assert!(load(Some(file), env(&[]), vec![]).is_err(), "{file}");
        }
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(sha256_digest(&digest), Some([0xab; 32]));
        assert_eq!(sha256_digest("ab"), None);
    }

    #[test]
    fn unknown_environment_variables_warn_with_the_closest_name() {
        let vars = env(&[
            ("EVENTGATE_PORT", "tcp://10.96.0.12:8080"),
            ("EVENTGATE_SERVICE_HOST", "10.96.0.12"),
            ("EVENTGATE_STACKID", "s"),
            ("EVENTGATE_DEV", "1"),
            ("EVENTGATE_LOG", "warn"),
            ("PATH", "/bin"),
        ]);
        let config = load(None, vars.clone(), vec![]).expect("unknown variables are not fatal");
        assert!(config.dev);
        let unknown = unknown_environment(vars);
        let names: Vec<(&str, &str)> = unknown
            .iter()
            .map(|u| (u.name.as_str(), u.closest.as_str()))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&("EVENTGATE_STACKID", "EVENTGATE_STACK_ID")));
        let port = unknown
            .iter()
            .find(|u| u.name == "EVENTGATE_PORT")
            .expect("EVENTGATE_PORT");
        assert!(port.to_string().contains("Kubernetes"), "{port}");
        let stack = unknown
            .iter()
            .find(|u| u.name == "EVENTGATE_STACKID")
            .expect("EVENTGATE_STACKID");
        assert!(!stack.to_string().contains("Kubernetes"), "{stack}");
    }

    #[test]
    fn http_limits_are_validated() {
        let config = load(
            Some("dev = true\ntest_pattern = \"off\"\n[limits]\nbody_timeout = \"2s\"\nmax_ingest_backlog_bytes = 2097152\n"),
            env(&[("EVENTGATE_MAX_CONCURRENT_TEST_PATTERNS", "4")]),
            vec![],
        )
        .expect("valid");
        assert_eq!(config.test_pattern, TestPatternAccess::Off);
        assert_eq!(config.limits.body_timeout, Seconds(Duration::from_secs(2)));
        assert_eq!(config.limits.max_concurrent_test_patterns, 4);
        for file in [
            "dev = true\ntest_pattern = \"maybe\"",
            "dev = true\n[limits]\nbody_timeout = \"0s\"",
            "dev = true\n[limits]\ntest_pattern_timeout = 0",
            "dev = true\n[limits]\nmax_concurrent_test_patterns = 0",
            "dev = true\n[limits]\nmax_test_pattern_body_bytes = 0",
            "dev = true\n[limits]\nmax_ingest_backlog_bytes = 1000",
        ] {
            let error = load(Some(file), env(&[]), vec![]).expect_err(file);
            assert!(
                error.to_string().contains("test_pattern") || error.to_string().contains("limits."),
                "{file}: {error}"
            );
        }
    }

    #[test]
    fn shared_log_keys() {
        let config = load(
            Some(
                "dev = true\n[cluster]\nbackend = \"jetstream\"\nurl = \"nats://127.0.0.1:4222\"\n",
            ),
            env(&[("EVENTGATE_CLUSTER_STREAM", "EG_PROD")]),
            vec![],
        )
        .expect("valid");
        let cluster = config.cluster.expect("cluster");
        assert!(cluster.backend.shared_log());
        assert_eq!(cluster.stream, "EG_PROD");
        for (file, key) in [
            (
                "dev = true\n[history]\nenabled = false\n[cluster]\nbackend = \"redis_stream\"\nurl = \"redis://127.0.0.1/\"\n",
                "history.enabled",
            ),
            (
                "dev = true\n[cluster]\nbackend = \"jetstream\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"a.b\"\n",
                "cluster.stream",
            ),
        ] {
            let error = load(Some(file), env(&[]), vec![]).expect_err(file);
            assert!(error.to_string().contains(key), "{file}: {error}");
        }
        // URLs are checked before the server listens.
        let file =
            "dev = true\n[cluster]\nbackend = \"redis_stream\"\nurl = \"nats://127.0.0.1:4222\"\n";
        let error = load(Some(file), env(&[]), vec![])
            .expect("loads")
            .preflight()
            .expect_err("a NATS URL for a Redis backend");
        assert!(error.to_string().contains("cluster.url"), "{error}");
    }

    #[test]
    fn history_keys() {
        let config = load(
            Some("dev = true\n[history]\nmax_events = 50\nmax_age = \"2m\"\n"),
            env(&[("EVENTGATE_HISTORY_MAX_REPLAY", "20")]),
            vec![],
        )
        .expect("valid");
        assert_eq!(config.history.max_events, 50);
        assert_eq!(config.history.max_age, Seconds(Duration::from_secs(120)));
        assert_eq!(config.history.max_replay, 20);
        for file in [
            "dev = true\n[history]\nmax_events = 0",
            "dev = true\n[history]\nmax_replay = 0",
            "dev = true\n[history]\nbogus = 1",
        ] {
            let error = load(Some(file), env(&[]), vec![]).expect_err(file);
            assert!(error.to_string().contains("history"), "{error}");
        }
    }

    #[test]
    fn write_timeout_send_buffer_and_echo_mode() {
        let config = load(
            Some("dev = true\ndev_websocket_echo = true"),
            env(&[
                ("EVENTGATE_WRITE_TIMEOUT", "2500ms"),
                ("EVENTGATE_SEND_BUFFER_BYTES", "0"),
            ]),
            vec![],
        )
        .expect("valid");
        assert_eq!(
            config.limits.write_timeout,
            Seconds(Duration::from_millis(2500))
        );
        assert_eq!(config.limits.send_buffer_bytes, 0);
        assert!(config.dev_websocket_echo);
        let defaults = Limits::default();
        assert_eq!(defaults.write_timeout, Seconds(Duration::from_secs(10)));
        assert_eq!(defaults.send_buffer_bytes, 64 * 1024);
        for file in [
            "dev = true\n[limits]\nwrite_timeout = \"0s\"",
            "stack_id = \"s\"\napp_version_ids = [\"v\"]\ndev_websocket_echo = true",
        ] {
            let error = load(Some(file), env(&[]), vec![]).expect_err(file);
            assert!(
                error.to_string().contains("write_timeout")
                    || error.to_string().contains("dev_websocket_echo"),
                "{error}"
            );
        }
    }

    #[test]
    fn errors_name_their_key_and_source_entry() {
        let message = |file: &str| match load(Some(file), env(&[]), vec![]) {
            Ok(_) => panic!("{file} loaded"),
            Err(error) => error.to_string(),
        };
        let text = message("dev = true\nstack_id = \"sha256:00\"");
        assert!(text.contains("stack_id: "), "{text}");
        let text = message("dev = true\ningest_tokens = [\"a\", \"sha256:zz\"]");
        assert!(text.contains("ingest_tokens (entry 2)"), "{text}");
        let redis = "kind = \"redis_streams\"\nurl = \"redis://127.0.0.1/\"\nstreams = [\"s\"]\ngroup = \"g\"\nconsumer = \"c\"";
        let text = message(&format!(
            "dev = true\n[[sources]]\nname = \"a\"\n{redis}\n[[sources]]\nname = \"users\"\n{redis}\nbogus = 1\n"
        ));
        assert!(text.contains("[[sources]] entry 2 (\"users\")"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        let text = message(&format!(
            "dev = true\n[[sources]]\nname = \"a\"\n{redis}\n[[sources]]\nname = \"a\"\n{redis}\n"
        ));
        assert!(text.contains("entry 2 (\"a\"): another source"), "{text}");
    }

    #[test]
    fn log_format_and_drain_period() {
        let config = load(
            Some("stack_id = \"s\"\napp_version_ids = [\"v\"]"),
            env(&[("EVENTGATE_LOG_FORMAT", "json")]),
            vec![],
        )
        .expect("valid");
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.drain_period(), DEFAULT_DRAIN_PERIOD);
        let config = load(Some("dev = true"), env(&[]), vec![]).expect("valid");
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(
            config.drain_period(),
            Duration::ZERO,
            "dev mode does not drain"
        );
        let config = load(
            Some("dev = true\ndrain_period = \"250ms\""),
            env(&[]),
            vec![],
        )
        .expect("valid");
        assert_eq!(config.drain_period(), Duration::from_millis(250));
        assert!(load(Some("dev = true\nlog_format = \"xml\""), env(&[]), vec![]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7 days").is_err());
    }
}
