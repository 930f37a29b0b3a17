//! Redis Streams source: a consumer group member that reads entries with a blocking
//! `XREADGROUP` on its own connection, maps each entry's fields onto an event, hands the
//! batch to the hub and only then `XACK`s it. Entries left pending by dead consumers are
//! taken over with `XAUTOCLAIM` after `claim_idle`; unmappable entries go to
//! `<stream>.dlq` with their reason and are acked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value as RedisValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use eventgate_protocol::envelope::Event;

use super::{
    decode_fields, default_batch_size, default_detail_type_field, to_event, Backoff, MapError,
    Mapped, SourceContext, SourceError,
};
use crate::telemetry;
use crate::units::Seconds;

/// `[[sources]] kind = "redis_streams"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamsConfig {
    pub name: String,
    /// `redis://host:port/db` (or `rediss://`).
    pub url: String,
    /// Streams to read, e.g. `["supermq.users"]`.
    pub streams: Vec<String>,
    /// Consumer group; created (with MKSTREAM) if missing.
    pub group: String,
    /// This gateway's consumer name inside the group; unique per gateway instance.
    pub consumer: String,
    /// Where a newly created group starts: `"$"` (new entries only, default) or `"0"`.
    #[serde(default = "default_start_id")]
    pub start_id: String,
    /// Entries read per `XREADGROUP` / `XAUTOCLAIM`.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long one `XREADGROUP` blocks.
    #[serde(default = "default_block")]
    pub block: Seconds,
    /// Entries pending this long on another (dead) consumer are claimed.
    #[serde(default = "default_claim_idle")]
    pub claim_idle: Seconds,
    /// Overrides the event `source` (default: the stream name).
    #[serde(default)]
    pub source: Option<String>,
    /// Field whose value becomes `detail-type`.
    #[serde(default = "default_detail_type_field")]
    pub detail_type_field: String,
    /// Fields holding JSON text, decoded into `detail`.
    #[serde(default = "default_json_fields")]
    pub json_fields: Vec<String>,
    /// Fields holding base64 of JSON text, decoded into `detail`.
    #[serde(default)]
    pub base64_json_fields: Vec<String>,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Seconds,
}

fn default_start_id() -> String {
    "$".to_owned()
}

fn default_block() -> Seconds {
    Seconds(Duration::from_secs(5))
}

fn default_claim_idle() -> Seconds {
    Seconds(Duration::from_secs(60))
}

fn default_json_fields() -> Vec<String> {
    vec!["metadata".to_owned()]
}

fn default_max_backoff() -> Seconds {
    Seconds(Duration::from_secs(30))
}

/// Runs the source until `context.shutdown` is cancelled, reconnecting on errors.
pub async fn run(config: RedisStreamsConfig, context: SourceContext) {
    let mut backoff = Backoff::reconnect(config.max_backoff.0);
    loop {
        let result = session(&config, &context, &mut backoff).await;
        if !context.again(&config.name, &mut backoff, result).await {
            break;
        }
    }
}

/// One entry read from a stream.
struct Entry {
    stream: String,
    id: String,
    fields: Vec<(String, Vec<u8>)>,
}

async fn session(
    config: &RedisStreamsConfig,
    context: &SourceContext,
    backoff: &mut Backoff,
) -> Result<(), SourceError> {
    if config.streams.is_empty() {
        return Err(SourceError::Config("streams must not be empty".into()));
    }
    let client = redis::Client::open(config.url.as_str())?;
    let connect = Duration::from_secs(5);
    let mut commands = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect))
                .set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await?;
    // The blocking read gets its own connection: a multiplexed connection would hold every
    // other command behind it, and the default 500 ms response timeout would cut it short.
    let mut reader = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect))
                .set_response_timeout(Some(config.block.0 + Duration::from_secs(10))),
        )
        .await?;
    for stream in &config.streams {
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&config.group)
            .arg(&config.start_id)
            .arg("MKSTREAM")
            .query_async(&mut commands)
            .await;
        match created {
            Ok(()) => {
                tracing::info!(source = %config.name, stream, group = %config.group, "consumer group created")
            }
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(error.into()),
        }
    }
    tracing::info!(source = %config.name, "connected to redis");
    context.status.set(true, "consuming");
    let mut next_lag_report = Instant::now();

    // First our own pending entries (read but not acked before a crash), then new ones.
    let mut pending_done = false;
    let mut next_claim = Instant::now();
    let block_ms = config.block.0.as_millis().max(1) as u64;
    loop {
        if context.shutdown.is_cancelled() {
            return Ok(());
        }
        if Instant::now() >= next_lag_report {
            report_lag(config, &mut commands).await?;
            next_lag_report = Instant::now() + LAG_REPORT_INTERVAL;
        }
        if Instant::now() >= next_claim {
            for stream in &config.streams {
                claim(config, context, &mut commands, stream).await?;
            }
            next_claim = Instant::now() + (config.claim_idle.0 / 2).max(Duration::from_secs(1));
        }
        let start = if pending_done { ">" } else { "0" };
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&config.group)
            .arg(&config.consumer)
            .arg("COUNT")
            .arg(config.batch_size.max(1));
        if pending_done {
            command.arg("BLOCK").arg(block_ms);
        }
        command.arg("STREAMS").arg(&config.streams);
        for _ in &config.streams {
            command.arg(start);
        }
        let reply: RedisValue = tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            reply = command.query_async(&mut reader) => reply?,
        };
        backoff.reset();
        let entries = parse_read_reply(reply);
        if entries.is_empty() {
            pending_done = true;
            continue;
        }
        process(config, context, &mut commands, entries).await?;
    }
}

/// How often the group's lag is read for the `eventgate_source_lag` gauge.
const LAG_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Sums the group's `lag` (entries not yet delivered to it, Redis 7+) and pending entries
/// over the streams.
async fn report_lag(
    config: &RedisStreamsConfig,
    commands: &mut MultiplexedConnection,
) -> Result<(), SourceError> {
    let mut total = 0u64;
    for stream in &config.streams {
        let reply: RedisValue = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(commands)
            .await?;
        total += group_lag(&reply, &config.group);
    }
    telemetry::source_lag(&config.name, total);
    Ok(())
}

/// `lag + pending` of `group` in an `XINFO GROUPS` reply (RESP2 flat arrays or RESP3 maps).
fn group_lag(reply: &RedisValue, group: &str) -> u64 {
    let RedisValue::Array(groups) = reply else {
        return 0;
    };
    for entry in groups {
        let pairs: Vec<(&RedisValue, &RedisValue)> = match entry {
            RedisValue::Array(flat) => flat
                .chunks(2)
                .filter_map(|pair| Some((pair.first()?, pair.get(1)?)))
                .collect(),
            RedisValue::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| text(key).as_deref() == Some(name))
                .map(|(_, value)| *value)
        };
        if field("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let number = |value: Option<&RedisValue>| match value {
            Some(RedisValue::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        return number(field("lag")) + number(field("pending"));
    }
    0
}

/// Takes over entries pending longer than `claim_idle` on any consumer of the group.
async fn claim(
    config: &RedisStreamsConfig,
    context: &SourceContext,
    commands: &mut MultiplexedConnection,
    stream: &str,
) -> Result<(), SourceError> {
    let mut cursor = "0-0".to_owned();
    // Bounded so a huge backlog does not starve the live read.
    for _ in 0..10 {
        let reply: RedisValue = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(&config.group)
            .arg(&config.consumer)
            .arg(config.claim_idle.0.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(config.batch_size.max(1))
            .query_async(commands)
            .await?;
        let RedisValue::Array(parts) = reply else {
            break;
        };
        let mut parts = parts.into_iter();
        let next = parts.next().and_then(|v| text(&v)).unwrap_or_default();
        let entries = parts
            .next()
            .map(|v| parse_entries(stream, v))
            .unwrap_or_default();
        if !entries.is_empty() {
            tracing::info!(source = %config.name, stream, count = entries.len(), "claimed pending entries");
            process(config, context, commands, entries).await?;
        }
        if next == "0-0" || next.is_empty() {
            break;
        }
        cursor = next;
    }
    Ok(())
}

fn text(value: &RedisValue) -> Option<String> {
    match value {
        RedisValue::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        RedisValue::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `XREADGROUP` reply: `[[stream, [[id, [f, v, ..]], ..]], ..]` (RESP2) or a map (RESP3).
fn parse_read_reply(reply: RedisValue) -> Vec<Entry> {
    let pairs: Vec<(RedisValue, RedisValue)> = match reply {
        RedisValue::Array(streams) => streams
            .into_iter()
            .filter_map(|item| match item {
                RedisValue::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Some((pair.next()?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        RedisValue::Map(map) => map,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .flat_map(|(stream, entries)| {
            let stream = text(&stream).unwrap_or_default();
            parse_entries(&stream, entries)
        })
        .collect()
}

/// `[[id, [f, v, ..]], ..]`; entries deleted while pending come back as `[id, nil]`.
fn parse_entries(stream: &str, entries: RedisValue) -> Vec<Entry> {
    let RedisValue::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let RedisValue::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = text(&parts.next()?)?;
            let fields = match parts.next() {
                Some(RedisValue::Array(items)) => {
                    let mut fields = Vec::with_capacity(items.len() / 2);
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        let key = text(&key).unwrap_or_default();
                        let value = match value {
                            RedisValue::BulkString(bytes) => bytes,
                            RedisValue::SimpleString(text) => text.into_bytes(),
                            RedisValue::Int(n) => n.to_string().into_bytes(),
                            _ => Vec::new(),
                        };
                        fields.push((key, value));
                    }
                    fields
                }
                Some(RedisValue::Map(items)) => items
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            text(&k).unwrap_or_default(),
                            text(&v).unwrap_or_default().into_bytes(),
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some(Entry {
                stream: stream.to_owned(),
                id,
                fields,
            })
        })
        .collect()
}

fn map_entry(
    config: &RedisStreamsConfig,
    context: &SourceContext,
    entry: &Entry,
) -> Result<Event, MapError> {
    let mut detail = Map::new();
    for (key, value) in &entry.fields {
        let value = std::str::from_utf8(value).map_err(|_| MapError::NotUtf8(key.clone()))?;
        detail.insert(key.clone(), Value::String(value.to_owned()));
    }
    decode_fields(&mut detail, &config.json_fields, &config.base64_json_fields)?;
    to_event(
        Mapped {
            id: entry.id.clone(),
            source: config.source.as_deref().unwrap_or(&entry.stream),
            detail_type_field: &config.detail_type_field,
            detail,
        },
        &context.fill(),
    )
}

/// Maps a batch, hands the good events to the hub, dead-letters the rest, then acks all.
async fn process(
    config: &RedisStreamsConfig,
    context: &SourceContext,
    commands: &mut MultiplexedConnection,
    entries: Vec<Entry>,
) -> Result<(), SourceError> {
    let name = &config.name;
    telemetry::source_consumed(name, entries.len() as u64);
    let mut events = Vec::with_capacity(entries.len());
    let mut to_ack: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut dead = Vec::new();
    for entry in &entries {
        if entry.fields.is_empty() {
            // Deleted from the stream while pending: nothing to deliver.
            to_ack.entry(&entry.stream).or_default().push(&entry.id);
            continue;
        }
        match map_entry(config, context, entry) {
            Ok(event) => {
                events.push(Arc::new(event));
                to_ack.entry(&entry.stream).or_default().push(&entry.id);
            }
            Err(reason) => dead.push((entry, reason)),
        }
    }
    let dispatched = events.len() as u64;
    context.hand_off(events).await?;
    telemetry::source_dispatched(name, dispatched);
    for (entry, reason) in dead {
        let payload: Map<String, Value> = entry
            .fields
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        let reason = reason.to_string();
        let _: String = redis::cmd("XADD")
            .arg(format!("{}.dlq", entry.stream))
            .arg("*")
            .arg("original_id")
            .arg(&entry.id)
            .arg("reason")
            .arg(&reason)
            .arg("payload")
            .arg(Value::Object(payload).to_string())
            .arg("source")
            .arg(name)
            .query_async(commands)
            .await?;
        telemetry::source_dead_lettered(name, &entry.id, &reason);
        to_ack.entry(&entry.stream).or_default().push(&entry.id);
    }
    for (stream, ids) in to_ack {
        let _: i64 = redis::cmd("XACK")
            .arg(stream)
            .arg(&config.group)
            .arg(&ids)
            .query_async(commands)
            .await?;
    }
    Ok(())
}
