//! The JetStream shared log (`backend = "jetstream"`): events are published on
//! `cluster.channel` into the stream `cluster.stream` (created when missing, with the limits of
//! `[history]`: messages, bytes, age; oldest discarded first) and every node reads the stream
//! with an ordered consumer of its own, in the stream's order. An event's position is its
//! stream sequence, written `<epoch>:<seq>` where the epoch comes from the stream's name and
//! creation time, so positions of a deleted and recreated stream are recognised as another
//! epoch.
//!
//! At start the reader loads the stream's tail (at most `history.max_events` messages) into
//! the hub's log before going live. Sequences have no holes (this gateway never deletes
//! messages), so a jump in them means messages were removed before this node read them: the
//! hub's log skips them and every connection is closed (1012) so that its client resumes and
//! learns of the gap (see `Hub::log_gap`).
//!
//! Owns the stream's configuration, publishing with acknowledgements and the ordered
//! consumer; the queue policy is `cluster::log`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::log::{Append, AppendSession, Appending, Writer};
use super::{event_from_log, ClusterError, Node, Reconnects};
use crate::backoff::Backoff;
use crate::history::{Ids, LogId, Logged};
use crate::readiness::Component;
use crate::telemetry;

/// Most messages read, and most events awaited for acknowledgement, per batch.
const BATCH: usize = 512;

fn nats(error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(error.to_string())
}

/// Connects; `on_state(connected)` is called whenever the client (which reconnects by itself)
/// loses or regains the server, so that readiness and the appender's `up` flag follow it at
/// once instead of after a publish times out.
async fn connect(
    node: &Node,
    role: &'static str,
    on_state: impl Fn(bool) + Send + Sync + 'static,
) -> Result<Option<jetstream::Context>, ClusterError> {
    let on_state = Arc::new(on_state);
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .name(format!("eventgate node {} ({role})", node.id))
        .event_callback(move |event| {
            let on_state = Arc::clone(&on_state);
            async move {
                match event {
                    async_nats::Event::Connected => on_state(true),
                    async_nats::Event::Disconnected => on_state(false),
                    other => tracing::debug!(event = %other, role, "jetstream log event"),
                }
            }
        });
    tokio::select! {
        () = node.shutdown.cancelled() => Ok(None),
        client = options.connect(node.config.url.as_str()) => Ok(Some(jetstream::new(client.map_err(nats)?))),
    }
}

/// The stream, created with the `[history]` limits when it does not exist.
async fn open_stream(node: &Node, js: &jetstream::Context) -> Result<stream::Stream, ClusterError> {
    let retention = &node.retention;
    js.get_or_create_stream(stream::Config {
        name: node.config.stream.clone(),
        subjects: vec![node.config.channel.clone()],
        max_messages: i64::try_from(retention.max_events).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(retention.max_bytes).unwrap_or(i64::MAX),
        max_age: retention.max_age.0,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(nats)
}

/// The epoch of a stream's positions: its name and creation time, hashed.
fn epoch_of(info: &stream::Info) -> u64 {
    let mut hash = Sha256::new();
    hash.update(info.config.name.as_bytes());
    hash.update([0]);
    hash.update(info.created.to_string().as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Publishes what the hub queues, waiting for the stream's acknowledgements; reconnects with
/// a capped backoff. A batch that was not acknowledged is published again after the
/// reconnect; each message carries its event's id as `Nats-Msg-Id`, so the stream drops the
/// copies of what it had taken (within its duplicate window, 2 minutes by default).
pub(super) struct Appender;

impl AppendSession for Appender {
    async fn run(mut appending: Appending<'_>) -> Result<(), ClusterError> {
        let node = appending.node;
        let on_state = {
            let (status, up) = (appending.status.clone(), Arc::clone(&appending.up.0));
            move |connected: bool| {
                up.store(connected, Ordering::Release);
                status.set(
                    connected,
                    if connected {
                        "connected"
                    } else {
                        "reconnecting"
                    },
                );
            }
        };
        let Some(js) = connect(node, "append", on_state).await? else {
            return Ok(());
        };
        open_stream(node, &js).await?;
        appending.connected();
        tracing::info!(node = %node.id, stream = %node.config.stream, "cluster log appender connected to jetstream");
        appending
            .until_stopped(BATCH, &mut JetStreamWriter(js))
            .await
    }
}

/// Appends through one JetStream context.
struct JetStreamWriter(jetstream::Context);

impl Writer for JetStreamWriter {
    async fn write(&mut self, node: &Node, pending: &mut Vec<Append>) -> Result<(), ClusterError> {
        write(node, &self.0, pending).await
    }
}

/// Publishes every pending event, then waits for all their acknowledgements; `pending` is
/// emptied only when every one came.
async fn write(
    node: &Node,
    js: &jetstream::Context,
    pending: &mut Vec<Append>,
) -> Result<(), ClusterError> {
    let mut acks = Vec::new();
    for append in pending.iter() {
        for event in &append.events {
            // The event's id as the message id: a batch published again after a lost
            // acknowledgement is dropped by the stream's duplicate window, not logged twice.
            let message = jetstream::message::PublishMessage::build()
                .payload(event.json.clone().into())
                .message_id(&event.id);
            let ack = js
                .send_publish(node.config.channel.clone(), message)
                .await
                .map_err(nats)?;
            acks.push(ack);
        }
    }
    let count = acks.len() as u64;
    for ack in acks {
        ack.await.map_err(nats)?;
    }
    pending.clear();
    telemetry::cluster_forwarded(count);
    Ok(())
}

/// What the reader has handed to the hub: the stream's epoch and the last sequence.
#[derive(Debug, Clone, Copy)]
struct Seen {
    epoch: u64,
    seq: u64,
}

/// Reads the stream from its tail on, for ever, reconnecting with a capped backoff.
pub(super) async fn read(node: Node, status: Component) {
    let mut reconnects = Reconnects::new(&node, &status);
    let mut seen: Option<Seen> = None;
    loop {
        let result = read_session(&node, &status, &mut reconnects.backoff, &mut seen).await;
        if !reconnects.again(result).await {
            break;
        }
    }
}

async fn read_session(
    node: &Node,
    status: &Component,
    backoff: &mut Backoff,
    seen: &mut Option<Seen>,
) -> Result<(), ClusterError> {
    // Ready again on a reconnect only once the log's tail was loaded.
    let tail_loaded = Arc::new(AtomicBool::new(false));
    let on_state = {
        let (status, tail_loaded) = (status.clone(), Arc::clone(&tail_loaded));
        move |connected: bool| {
            if !connected {
                status.set(false, "reconnecting");
            } else if tail_loaded.load(Ordering::Acquire) {
                status.set(true, "reading");
            }
        }
    };
    let Some(js) = connect(node, "read", on_state).await? else {
        return Ok(());
    };
    let mut stream = open_stream(node, &js).await?;
    let info = stream.info().await.map_err(nats)?.clone();
    let epoch = epoch_of(&info);
    let ids = Ids::Sequence { epoch };
    let state = &info.state;
    let max = node.retention.max_events as u64;
    // Where to start reading, and what to do with what is read before the stream's newest
    // message of now: load it (a start, or a recreated stream) or deliver it (a reconnect).
    let (start, mut loading) = match *seen {
        Some(before) if before.epoch == epoch => {
            if state.first_sequence > before.seq + 1 && state.messages > 0 {
                let floor = LogId::seq(state.first_sequence - 1);
                tracing::warn!(node = %node.id, last_read = before.seq, first = state.first_sequence, "the shared log dropped messages this node had not read");
                if node.hub.log_gap(floor).await.is_err() {
                    return Ok(());
                }
                *seen = Some(Seen {
                    epoch,
                    seq: state.first_sequence - 1,
                });
                (state.first_sequence, None)
            } else {
                (before.seq + 1, None)
            }
        }
        _ => {
            let start = state
                .first_sequence
                .max(state.last_sequence.saturating_sub(max.saturating_sub(1)))
                .max(1);
            (start, Some(Vec::new()))
        }
    };
    // The load ends with the newest message of now (nothing to wait for when it is empty).
    let load_until = state.last_sequence;
    let floor = LogId::seq(start - 1);
    if let Some(events) = loading.take_if(|_| load_until < start) {
        if node.hub.load_log(ids, floor, events).await.is_err() {
            return Ok(());
        }
        *seen = Some(Seen {
            epoch,
            seq: start - 1,
        });
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?.ready_chunks(BATCH);
    if loading.is_none() {
        tail_loaded.store(true, Ordering::Release);
        status.set(true, "reading");
        backoff.reset();
    }
    tracing::info!(node = %node.id, stream = %node.config.stream, start, "cluster log reader reading jetstream");
    loop {
        let batch = tokio::select! {
            () = node.shutdown.cancelled() => return Ok(()),
            batch = messages.next() => batch,
        };
        let Some(batch) = batch else {
            return Err(ClusterError::Ended);
        };
        let at = Instant::now();
        let mut events = Vec::with_capacity(batch.len());
        let mut last_seq = seen.map_or(start - 1, |seen| seen.seq);
        for message in batch {
            let message = message.map_err(nats)?;
            let seq = message.info().map_err(nats)?.stream_sequence;
            if seq <= last_seq && loading.is_none() {
                continue;
            }
            if seq > last_seq + 1 && loading.is_none() {
                // Messages removed before this node read them.
                if !events.is_empty() {
                    telemetry::cluster_received(events.len() as u64);
                    if node
                        .hub
                        .publish_logged(std::mem::take(&mut events))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                tracing::warn!(node = %node.id, last_read = last_seq, next = seq, "the shared log dropped messages this node had not read");
                if node.hub.log_gap(LogId::seq(seq - 1)).await.is_err() {
                    return Ok(());
                }
            }
            last_seq = seq;
            match event_from_log(&message.payload) {
                Ok(event) => events.push(Logged {
                    id: LogId::seq(seq),
                    event,
                    at,
                }),
                Err(error) => telemetry::cluster_bad_message(&error),
            }
        }
        *seen = Some(Seen {
            epoch,
            seq: last_seq,
        });
        match &mut loading {
            Some(loaded) => {
                loaded.extend(events);
                if last_seq >= load_until {
                    let loaded = std::mem::take(loaded);
                    tracing::info!(node = %node.id, events = loaded.len(), floor = start - 1, "loaded the shared log's tail");
                    if node.hub.load_log(ids, floor, loaded).await.is_err() {
                        return Ok(());
                    }
                    loading = None;
                    tail_loaded.store(true, Ordering::Release);
                    status.set(true, "reading");
                    backoff.reset();
                }
            }
            None => {
                telemetry::cluster_received(events.len() as u64);
                if node.hub.publish_logged(events).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
