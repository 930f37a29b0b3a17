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

/// A duration written as `"10s"`, `"500ms"`, `"2m"`, `"1h"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(seconds) => Ok(Seconds(Duration::from_secs(seconds))),
            Raw::Text(text) => parse_duration(&text)
                .map(Seconds)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"10s"`, `"500ms"`, `"2m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"10s\" or \"500ms\""))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
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
    /// Serve `https`/`wss` on the listener (`[tls]`); absent = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// File holding `stack_id` (Docker/Kubernetes secrets); excludes `stack_id`.
    pub stack_id_file: Option<PathBuf>,
    /// File holding `ingest_tokens`, one a line; excludes `ingest_tokens`.
    pub ingest_tokens_file: Option<PathBuf>,
}

/// `[tls]`: PEM files of the certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the files' modification times are checked for a new certificate.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Seconds,
}

fn default_reload_interval() -> Seconds {
    Seconds(Duration::from_secs(10))
}

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
            tls: None,
            stack_id_file: None,
            ingest_tokens_file: None,
        }
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
    ("ACCOUNT", "account", Kind::Text),
    ("REGION", "region", Kind::Text),
    ("HELLO_TIMEOUT", "hello_timeout", Kind::Text),
    ("KEEPALIVE_INTERVAL", "keepalive_interval", Kind::Text),
    ("IDLE_TIMEOUT", "idle_timeout", Kind::Text),
    ("SHUTDOWN_GRACE", "shutdown_grace", Kind::Text),
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
    ("TLS_CERT", "tls.cert", Kind::Text),
    ("TLS_KEY", "tls.key", Kind::Text),
    ("TLS_RELOAD_INTERVAL", "tls.reload_interval", Kind::Text),
    ("STACK_ID_FILE", "stack_id_file", Kind::Text),
    ("INGEST_TOKENS_FILE", "ingest_tokens_file", Kind::Text),
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
    let environment: Vec<(String, String)> = environment.into_iter().collect();
    for (name, raw) in &environment {
        let Some(suffix) = name.strip_prefix("EVENTGATE_") else {
            continue;
        };
        if suffix == "CONFIG" || suffix == "LOG" {
            continue;
        }
        let Some((_, path, kind)) = ENV_KEYS.iter().find(|(key, _, _)| *key == suffix) else {
            return Err(ConfigError::Invalid(format!(
                "unknown environment variable {name}"
            )));
        };
        set_path(&mut table, path, env_value(name, raw, *kind)?);
    }
    for (path, value) in overrides {
        set_path(&mut table, path, value);
    }
    let mut config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|err: toml::de::Error| ConfigError::Invalid(err.to_string()))?;
    config.read_secret_files()?;
    config.validate()?;
    Ok(config)
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
        Ok(())
    }

    fn validate_serving(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Invalid(message));
        for value in self.ingest_tokens.iter().chain(&self.stack_id) {
            if value.starts_with(SHA256_PREFIX) && sha256_digest(value).is_none() {
                return fail(format!(
                    "a secret starting with {SHA256_PREFIX:?} must be followed by 64 hex digits"
                ));
            }
        }
        for cidr in &self.limits.trusted_proxies {
            if crate::limits::parse_cidr(cidr).is_none() {
                return fail(format!(
                    "limits.trusted_proxies: {cidr:?} is not an address or CIDR"
                ));
            }
        }
        if self.limits.upgrade_timeout.0.is_zero() {
            return fail("limits.upgrade_timeout must be greater than zero".into());
        }
        if let Some(tls) = &self.tls {
            if tls.reload_interval.0.is_zero() {
                return fail("tls.reload_interval must be greater than zero".into());
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_serving()?;
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
            ("", vec![("EVENTGATE_BOGUS", "1")]),
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
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7 days").is_err());
    }
}
