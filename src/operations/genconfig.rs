//! `eventgate genconfig`: a commented, working configuration file with freshly generated
//! secrets (a stack id, an app version id, an ingest token), and what a user needs next
//! (the API key, the start command, a curl line).
//!
//! Owns the template and secret generation. Does not own the keys' meaning or validation
//! (see `config`); the tests load every generated file through `config::load`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use eventgate_protocol::header::api_key;

/// Why no configuration was written.
#[derive(Debug, thiserror::Error)]
pub enum GenconfigError {
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The freshly generated secrets of one configuration.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The server secret every API key derives from.
    pub stack_id: String,
    /// The app version whose key clients present.
    pub app_version_id: String,
    /// The bearer token of `POST /events`.
    pub ingest_token: String,
}

impl Secrets {
    /// New secrets from the operating system's random source.
    pub fn generate() -> Result<Secrets, GenconfigError> {
        Ok(Secrets {
            stack_id: random_uuid()?,
            app_version_id: random_uuid()?,
            ingest_token: random_token()?,
        })
    }

    /// The API key browser clients present: `base64("<app_version_id>:<stack_id>")`.
    pub fn api_key(&self) -> String {
        api_key(&self.stack_id, Some(&self.app_version_id))
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], GenconfigError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| GenconfigError::Random(error.to_string()))?;
    Ok(bytes)
}

/// A random (version 4) UUID from the operating system's random source.
fn random_uuid() -> Result<String, GenconfigError> {
    Ok(uuid::Builder::from_random_bytes(random_bytes::<16>()?)
        .into_uuid()
        .to_string())
}

/// 32 random bytes, base64url without padding (43 characters).
fn random_token() -> Result<String, GenconfigError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// The configuration text for `secrets`, binding `listen`.
pub fn render(secrets: &Secrets, listen: &str) -> String {
    let Secrets {
        stack_id,
        app_version_id,
        ingest_token,
    } = secrets;
    format!(
        r##"# eventgate configuration, written by `eventgate genconfig`.
# Start:  eventgate serve --config <this file>
# Every key is described in docs/operations.md (sources: docs/sources.md). Each key can
# also be set as EVENTGATE_<KEY> (lists comma-separated); flags beat the environment,
# which beats this file. Unknown keys are errors (exit 64).
#
# This file holds secrets: keep it private (it was written readable by its owner only).

listen = "{listen}"                # 0.0.0.0:8080 accepts other machines

# The server secret every API key derives from. Changing it invalidates every key.
# Instead of the value: stack_id_file = "/run/secrets/stack_id", or "sha256:<64 hex>".
stack_id = "{stack_id}"

# Browser clients present base64("<app version id>:<stack_id>") as ApiKey:
#   eventgate key --stack-id <stack_id> --app-version <id>
# List several ids to roll a new app version out before retiring the old one.
app_version_ids = ["{app_version_id}"]

# POST /events needs "Authorization: Bearer <token>". A token may also be written as
# "sha256:<64 hex>" of itself; ingest_tokens_file reads one token a line.
ingest_tokens = ["{ingest_token}"]

# Host names clients put in the `header` document; empty = the request's Host header.
# public_hosts = ["events.example.com"]
# Origins allowed to open a WebSocket; empty = any origin.
# allowed_origins = ["https://app.example.com"]
# ws_paths = ["/"]

# Filled into events that have none.
# account = "000000000000"
# region = "local"

# hello_timeout = "10s"            # time a new connection has to send Hello
# keepalive_interval = "30s"       # KeepAlive notifications and pings
# idle_timeout = "75s"             # no frame or pong for this long: closed
# shutdown_grace = "10s"           # draining on SIGTERM

# [limits]                         # safe defaults for 100,000 connections; see docs/operations.md
# max_connections = 100000
# max_connections_per_ip = 0       # 0 = off; set trusted_proxies behind a load balancer
# new_connections_per_second_per_ip = 0
# max_ingest_events_per_second_per_token = 0
# trusted_proxies = ["10.0.0.0/8"]

# Serve https/wss on the same listener; files are reloaded when they change or on SIGHUP.
# [tls]
# cert = "/etc/eventgate/tls/cert.pem"
# key = "/etc/eventgate/tls/key.pem"

# Several gateways share events over Redis or NATS. "redis_stream" and "jetstream" are a
# shared log: clients resume on any node and across restarts; "redis" and "nats" are pub/sub.
# [cluster]
# backend = "redis_stream"         # or "jetstream", "redis", "nats"
# url = "redis://127.0.0.1:6379/"
# channel = "eventgate.events"

# Consume events from brokers (docs/sources.md); any number of entries.
# [[sources]]
# name = "lamassu"
# kind = "amqp"                    # or "redis_streams", "nats_jetstream"
# url = "amqp://guest:guest@127.0.0.1:5672/%2f"
# exchange = "lamassu-events"
# binding_keys = ["lamassu.certificate.*"]
# queue = "eventgate"
"##
    )
}

/// What to print after writing: the key, how to start, a curl line.
pub fn next_steps(secrets: &Secrets, path: &str, listen: &str) -> String {
    let host = match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_owned(),
    };
    format!(
        "api key: {key}\n\
         start: eventgate serve --config {path}\n\
         websocket url: ws://{host}/\n\
         publish: curl -s -X POST http://{host}/events -H 'authorization: Bearer {token}' -H 'content-type: application/json' -d '{{\"source\":\"demo\",\"detail-type\":\"hello\",\"detail\":{{\"n\":1}}}}'\n",
        key = secrets.api_key(),
        token = secrets.ingest_token,
    )
}

/// Writes `text` to `path` (owner read/write only on Unix); refuses an existing file
/// unless `force`.
pub fn write(path: &Path, text: &str, force: bool) -> Result<(), GenconfigError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            GenconfigError::Exists(path.to_owned())
        } else {
            GenconfigError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    file.write_all(text.as_bytes())
        .map_err(|source| GenconfigError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_file_loads_with_its_secrets() {
        let secrets = Secrets::generate().unwrap();
        let text = render(&secrets, "127.0.0.1:8080");
        let config = crate::config::load(Some(&text), Vec::new(), Vec::new()).unwrap();
        assert!(!config.dev);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.stack_id.as_deref(), Some(secrets.stack_id.as_str()));
        assert_eq!(config.app_version_ids, vec![secrets.app_version_id.clone()]);
        assert_eq!(config.ingest_tokens, vec![secrets.ingest_token.clone()]);
        assert!(config.tls.is_none() && config.sources.is_empty());
    }

    #[test]
    fn secrets_are_fresh_and_long() {
        let (a, b) = (Secrets::generate().unwrap(), Secrets::generate().unwrap());
        assert_ne!(a.stack_id, b.stack_id);
        assert_ne!(a.app_version_id, b.app_version_id);
        assert_ne!(a.ingest_token, b.ingest_token);
        assert_eq!(a.ingest_token.len(), 43);
        assert_eq!(
            uuid::Uuid::parse_str(&a.stack_id)
                .unwrap()
                .get_version_num(),
            4
        );
        assert_eq!(
            a.api_key(),
            api_key(&a.stack_id, Some(a.app_version_id.as_str()))
        );
    }

    #[test]
    fn an_existing_file_is_kept_without_force() {
        let dir =
            std::env::temp_dir().join(format!("eventgate-genconfig-{}", random_uuid().unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eventgate.toml");
        write(&path, "first", false).unwrap();
        assert!(matches!(
            write(&path, "second", false),
            Err(GenconfigError::Exists(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        write(&path, "third", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
