//! The Redis Stream shared log (`backend = "redis_stream"`): events are appended with `XADD`
//! (one entry per event, trimmed with `MAXLEN ~ history.max_events`), and every node reads the
//! stream with `XREAD` on its own connection, in the stream's order. An event's position is
//! its entry id (`<ms>-<seq>`), the same on every node and across gateway restarts.
//!
//! Each entry holds `n`, its number in the stream (from the counter `<stream key>:n`, taken
//! and used in one Lua script so numbers follow the entries' order without holes) and `e`,
//! the event's JSON. A reader that finds a hole in the numbers knows that entries were trimmed
//! before it read them (it was cut off, stopped or slowed down for longer than the log
//! retains): events were lost for this node, so the hub's log skips them and every connection
//! is closed (1012) so that its client resumes and learns of the gap (see `Hub::log_gap`).
//!
//! At start the reader loads the stream's tail (at most `history.max_events` entries) into
//! the hub's log, so a client can resume on a node that has just started.
//!
//! Owns the commands and replies; the queue policy is `cluster::log`'s.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{AsyncConnectionConfig, Value as RedisValue};

use super::log::{Append, AppendSession, Appending, Writer};
use super::{event_from_log, ClusterError, Node, Reconnects};
use crate::backoff::Backoff;
use crate::history::{Ids, LogId, Logged};
use crate::readiness::Component;
use crate::telemetry;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `XREAD` blocks waiting for new entries.
const BLOCK: Duration = Duration::from_secs(5);
/// Most entries read, and most events appended, per round trip.
const BATCH: usize = 512;

/// Appends one event: takes the stream's next number and adds the entry, atomically.
/// KEYS: the stream, its counter; ARGV: `MAXLEN ~` bound, the event's JSON.
const APPEND_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[2])
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'e', ARGV[2])
";

/// The key of the counter that numbers the stream's entries.
fn counter_key(node: &Node) -> String {
    format!("{}:n", node.config.channel)
}

async fn connect(
    node: &Node,
    response_timeout: Duration,
) -> Result<Option<redis::aio::MultiplexedConnection>, ClusterError> {
    let client = redis::Client::open(node.config.url.as_str())?;
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    tokio::select! {
        () = node.shutdown.cancelled() => Ok(None),
        connection = client.get_multiplexed_async_connection_with_config(&settings) => Ok(Some(connection?)),
    }
}

/// Appends what the hub queues, reconnecting with a capped backoff. A batch that could not
/// be appended is appended again after the reconnect.
pub(super) struct Appender;

impl AppendSession for Appender {
    async fn run(mut appending: Appending<'_>) -> Result<(), ClusterError> {
        let node = appending.node;
        let Some(mut connection) = connect(node, Duration::from_secs(5)).await? else {
            return Ok(());
        };
        // Loaded on every connection: a restarted Redis has forgotten it.
        let script: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(APPEND_SCRIPT)
            .query_async(&mut connection)
            .await?;
        if !appending.pending.is_empty() {
            drop_appended(node, &mut connection, appending.pending).await?;
        }
        appending.connected();
        tracing::info!(node = %node.id, stream = %node.config.channel, "cluster log appender connected to redis");
        let mut writer = RedisWriter { connection, script };
        appending.until_stopped(BATCH, &mut writer).await
    }
}

/// Appends through one connection with the append script loaded on it.
struct RedisWriter {
    connection: redis::aio::MultiplexedConnection,
    script: String,
}

impl Writer for RedisWriter {
    async fn write(&mut self, node: &Node, pending: &mut Vec<Append>) -> Result<(), ClusterError> {
        write(node, &mut self.connection, &self.script, pending).await
    }
}

/// Entries looked at, from the newest, for events of a batch whose append failed.
const RETRY_LOOKBACK: usize = 4096;

/// Before a failed batch is appended again: drops from it the events the stream already
/// holds (the connection broke after Redis ran their scripts, before their replies came), so
/// they are not logged, and delivered, twice. Looks at the newest `RETRY_LOOKBACK` entries,
/// by event id.
async fn drop_appended(
    node: &Node,
    connection: &mut redis::aio::MultiplexedConnection,
    pending: &mut Vec<Append>,
) -> Result<(), ClusterError> {
    let reply: RedisValue = redis::cmd("XREVRANGE")
        .arg(&node.config.channel)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(RETRY_LOOKBACK)
        .query_async(connection)
        .await?;
    let logged: std::collections::HashSet<String> = entries_of(reply)
        .into_iter()
        .filter_map(|entry| Some(event_from_log(&entry.payload).ok()?.id.clone()))
        .collect();
    let mut dropped = 0usize;
    for append in pending.iter_mut() {
        let before = append.events.len();
        append.events.retain(|event| !logged.contains(&event.id));
        dropped += before - append.events.len();
    }
    pending.retain(|append| !append.events.is_empty());
    if dropped > 0 {
        tracing::info!(node = %node.id, dropped, "events of a failed append were in the log already");
    }
    Ok(())
}

/// Appends every pending event in one pipeline; `pending` is emptied only when it worked.
async fn write(
    node: &Node,
    connection: &mut redis::aio::MultiplexedConnection,
    script: &str,
    pending: &mut Vec<Append>,
) -> Result<(), ClusterError> {
    let mut pipe = redis::pipe();
    let mut count = 0u64;
    let counter = counter_key(node);
    for append in pending.iter() {
        for event in &append.events {
            pipe.cmd("EVALSHA")
                .arg(script)
                .arg(2)
                .arg(&node.config.channel)
                .arg(&counter)
                .arg(node.retention.max_events)
                .arg(event.json.as_str())
                .ignore();
            count += 1;
        }
    }
    pipe.query_async::<()>(connection).await?;
    pending.clear();
    telemetry::cluster_forwarded(count);
    Ok(())
}

/// Reads the stream from its tail on, for ever, reconnecting with a capped backoff.
pub(super) async fn read(node: Node, status: Component) {
    let mut reconnects = Reconnects::new(&node, &status);
    // The newest entry handed to the hub (`None` until the tail is loaded).
    let mut last: Option<Seen> = None;
    loop {
        let result = read_session(&node, &status, &mut reconnects.backoff, &mut last).await;
        if !reconnects.again(result).await {
            break;
        }
    }
}

/// The newest entry the reader handed to the hub: its id and its number (`None` for an entry
/// without one, appended by an older eventgate: the next one is not checked for a hole).
#[derive(Debug, Clone, Copy)]
struct Seen {
    id: LogId,
    n: Option<u64>,
}

async fn read_session(
    node: &Node,
    status: &Component,
    backoff: &mut Backoff,
    last: &mut Option<Seen>,
) -> Result<(), ClusterError> {
    let Some(mut connection) = connect(node, BLOCK + Duration::from_secs(5)).await? else {
        return Ok(());
    };
    let seen = match *last {
        None => load(node, &mut connection).await?,
        // A hole made while this node was away shows in the next entry's number.
        Some(seen) => Some(seen),
    };
    let Some(mut seen) = seen else {
        return Ok(());
    };
    *last = Some(seen);
    status.set(true, "reading");
    backoff.reset();
    tracing::info!(node = %node.id, stream = %node.config.channel, after = %Ids::Stream.text(seen.id), "cluster log reader reading redis");
    loop {
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&node.config.channel)
            .arg(Ids::Stream.text(seen.id));
        let reply: RedisValue = tokio::select! {
            () = node.shutdown.cancelled() => return Ok(()),
            reply = command.query_async(&mut connection) => reply?,
        };
        let entries = read_reply_entries(reply);
        if entries.is_empty() {
            continue;
        }
        let at = Instant::now();
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.id <= seen.id {
                continue;
            }
            if let (Some(before), Some(n)) = (seen.n, entry.n) {
                if n > before + 1 {
                    // Entries trimmed before this node read them: deliver what came before
                    // the hole, then skip it.
                    tracing::warn!(node = %node.id, last_read = %Ids::Stream.text(seen.id), next = %Ids::Stream.text(entry.id), missed = n - before - 1, "the shared log was trimmed past what this node had read");
                    if !deliver(node, std::mem::take(&mut events)).await
                        || node.hub.log_gap(entry.id.before()).await.is_err()
                    {
                        return Ok(());
                    }
                }
            }
            seen = Seen {
                id: entry.id,
                n: entry.n,
            };
            match event_from_log(&entry.payload) {
                Ok(event) => events.push(Logged {
                    id: entry.id,
                    event,
                    at,
                }),
                Err(error) => telemetry::cluster_bad_message(&error),
            }
        }
        *last = Some(seen);
        if !deliver(node, events).await {
            return Ok(());
        }
    }
}

/// Hands events read from the log to the hub; `false` when the hub stopped (the node is
/// shutting down).
async fn deliver(node: &Node, events: Vec<Logged>) -> bool {
    if events.is_empty() {
        return true;
    }
    telemetry::cluster_received(events.len() as u64);
    node.hub.publish_logged(events).await.is_ok()
}

/// Loads the stream's tail into the hub's log; returns the newest entry (`None`: the hub
/// stopped).
async fn load(
    node: &Node,
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<Option<Seen>, ClusterError> {
    let max = node.retention.max_events;
    // One more than is kept: when it exists, the oldest is the floor (known, not kept).
    let reply: RedisValue = redis::cmd("XREVRANGE")
        .arg(&node.config.channel)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(max.saturating_add(1))
        .query_async(connection)
        .await?;
    let mut entries = entries_of(reply);
    entries.reverse();
    let info = stream_info(node, connection).await?;
    // The number of the newest entry, for the hole check of the next one: the counter when
    // the stream is empty.
    let newest_n = match entries.last() {
        Some(entry) => entry.n,
        None => {
            let counter: Option<u64> = redis::cmd("GET")
                .arg(counter_key(node))
                .query_async(connection)
                .await?;
            Some(counter.unwrap_or(0))
        }
    };
    let floor = if entries.len() > max {
        entries.remove(0).id
    } else if let Some(first) = entries.first().map(|entry| entry.id) {
        // Entries were trimmed before the first one, and which id came just before it is not
        // known: positions from the id just before it on can be resumed from.
        if info.entries_added > info.length {
            first.before()
        } else {
            LogId::ZERO
        }
    } else {
        // Empty: every id up to the last generated one is gone.
        info.last_generated
    };
    let now = Instant::now();
    let now_ms = unix_ms();
    let newest = entries.last().map_or(floor, |entry| entry.id).max(floor);
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        match event_from_log(&entry.payload) {
            Ok(event) => {
                let age = Duration::from_millis(now_ms.saturating_sub(entry.id.major));
                let at = now.checked_sub(age).unwrap_or(now);
                events.push(Logged {
                    id: entry.id,
                    event,
                    at,
                });
            }
            Err(error) => telemetry::cluster_bad_message(&error),
        }
    }
    tracing::info!(node = %node.id, events = events.len(), floor = %Ids::Stream.text(floor), "loaded the shared log's tail");
    if node.hub.load_log(Ids::Stream, floor, events).await.is_err() {
        return Ok(None);
    }
    Ok(Some(Seen {
        id: newest,
        n: newest_n,
    }))
}

/// What `XINFO STREAM` says (zeros for a stream that does not exist yet).
#[derive(Debug, Default)]
struct StreamInfo {
    length: u64,
    entries_added: u64,
    last_generated: LogId,
}

async fn stream_info(
    node: &Node,
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<StreamInfo, ClusterError> {
    let reply: Result<RedisValue, redis::RedisError> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&node.config.channel)
        .query_async(connection)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        // No such key: nothing was ever appended.
        Err(error)
            if error
                .to_string()
                .to_ascii_lowercase()
                .contains("no such key") =>
        {
            return Ok(StreamInfo::default())
        }
        Err(error) => return Err(error.into()),
    };
    let mut info = StreamInfo::default();
    for (key, value) in pairs(reply) {
        match text(&key).as_deref() {
            Some("length") => info.length = number(&value),
            Some("entries-added") => info.entries_added = number(&value),
            Some("last-generated-id") => {
                info.last_generated = text(&value)
                    .and_then(|id| parse_id(&id))
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    Ok(info)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A stream entry id `<ms>-<seq>`.
fn parse_id(text: &str) -> Option<LogId> {
    let (ms, seq) = text.split_once('-')?;
    Some(LogId {
        major: ms.parse().ok()?,
        minor: seq.parse().ok()?,
    })
}

fn text(value: &RedisValue) -> Option<String> {
    match value {
        RedisValue::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        RedisValue::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn number(value: &RedisValue) -> u64 {
    match value {
        RedisValue::Int(n) => u64::try_from(*n).unwrap_or(0),
        other => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

/// A flat `[k, v, k, v, ..]` array (RESP2) or a map (RESP3) as pairs.
fn pairs(value: RedisValue) -> Vec<(RedisValue, RedisValue)> {
    match value {
        RedisValue::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut items = flat.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                pairs.push((key, value));
            }
            pairs
        }
        RedisValue::Map(map) => map,
        _ => Vec::new(),
    }
}

/// `XREAD` reply: `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3); `nil` when
/// the block timed out.
fn read_reply_entries(reply: RedisValue) -> Vec<Entry> {
    let streams: Vec<RedisValue> = match reply {
        RedisValue::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                RedisValue::Array(pair) => pair.into_iter().nth(1),
                _ => None,
            })
            .collect(),
        RedisValue::Map(map) => map.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(entries_of).collect()
}

/// An entry of the stream: its id, its number (`n`) and its event's JSON (`e`; empty when
/// missing, which is then refused as a bad message).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    id: LogId,
    n: Option<u64>,
    payload: Vec<u8>,
}

/// `[[id, [field, value, ..]], ..]`.
fn entries_of(entries: RedisValue) -> Vec<Entry> {
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
            let id = parse_id(&text(&parts.next()?)?)?;
            let mut entry = Entry {
                id,
                n: None,
                payload: Vec::new(),
            };
            for (key, value) in pairs(parts.next()?) {
                match text(&key).as_deref() {
                    Some("e") => {
                        entry.payload = match value {
                            RedisValue::BulkString(bytes) => bytes,
                            RedisValue::SimpleString(text) => text.into_bytes(),
                            _ => Vec::new(),
                        }
                    }
                    Some("n") => entry.n = text(&value).and_then(|n| n.parse().ok()),
                    _ => {}
                }
            }
            Some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> RedisValue {
        RedisValue::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn replies_are_read_in_both_protocol_versions_and_junk_is_skipped() {
        let entry = |id: &str, json: &str| {
            RedisValue::Array(vec![
                bulk(id),
                RedisValue::Array(vec![bulk("n"), bulk("7"), bulk("e"), bulk(json)]),
            ])
        };
        let entries = RedisValue::Array(vec![
            entry("5-1", "{}"),
            RedisValue::Int(3),
            entry("not-an-id", "{}"),
            RedisValue::Array(vec![
                bulk("6-0"),
                RedisValue::Array(vec![bulk("x"), bulk("y")]),
            ]),
        ]);
        let resp2 = RedisValue::Array(vec![RedisValue::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = RedisValue::Map(vec![(bulk("s"), entries)]);
        for reply in [resp2, resp3] {
            let read = read_reply_entries(reply);
            assert_eq!(
                read,
                vec![
                    Entry {
                        id: LogId { major: 5, minor: 1 },
                        n: Some(7),
                        payload: b"{}".to_vec()
                    },
                    Entry {
                        id: LogId { major: 6, minor: 0 },
                        n: None,
                        payload: Vec::new()
                    },
                ]
            );
        }
        assert!(read_reply_entries(RedisValue::Nil).is_empty());
    }
}
