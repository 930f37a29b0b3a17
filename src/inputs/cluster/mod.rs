//! Multi-node fan-out over an existing engine (`[cluster] backend = "redis" | "nats" |
//! "redis_stream" | "jetstream"`).
//!
//! Two kinds of backplane. The shared logs (`redis_stream`, `jetstream`, see `log`) put every
//! accepted event in one log that every node reads in the same order, so positions are the
//! log's ids, valid on every node and across restarts: a client resumes anywhere. The
//! pub/sub backplanes (`redis`, `nats`) are cheaper and keep no history between nodes:
//! every event a node accepts (HTTP ingest or a broker source) is delivered to that node's
//! own clients at once and also published once to the backplane (a Redis pub/sub channel or
//! a NATS subject), stamped with the node's id. Every node delivers what it hears on the
//! backplane to its own matching clients, skipping its own messages, so each matching
//! connection gets an event exactly once whichever node accepted it. Subscriptions stay
//! local to each node: nothing about rules crosses the backplane.
//!
//! Owns the [`Publisher`] through which ingest and the sources publish (it wraps this
//! node's hub), the `[cluster]` configuration, the pub/sub message format, the forwarding queue
//! (bounded; when it is full or the backplane is down, events are counted as not forwarded
//! and local delivery goes on) and the backplane tasks' readiness. Does not own matching or
//! fan-out (the hub does).

mod jetstream;
mod log;
mod nats;
mod redis;
mod redis_stream;

pub use log::LogAppender;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use eventgate_protocol::envelope::{self, Event, Fill};

use crate::backoff::Backoff;
use crate::history::HistoryConfig;
use crate::hub::{Hub, HubStopped, PublishError};
use crate::readiness::{Component, Readiness};
use crate::telemetry;
use crate::units::Seconds;

/// Which engine carries events between nodes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Redis pub/sub (no shared history).
    Redis,
    /// NATS core subjects (no shared history).
    Nats,
    /// A Redis Stream as the shared log.
    RedisStream,
    /// A NATS JetStream stream as the shared log.
    Jetstream,
}

impl Backend {
    /// Events go through a shared log that every node reads (positions valid everywhere).
    pub fn shared_log(self) -> bool {
        matches!(self, Backend::RedisStream | Backend::Jetstream)
    }

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Nats => "nats",
            Backend::RedisStream => "redis_stream",
            Backend::Jetstream => "jetstream",
        }
    }

    /// Its `url` is a Redis one (else a NATS one).
    pub fn redis(self) -> bool {
        matches!(self, Backend::Redis | Backend::RedisStream)
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub backend: Backend,
    /// `redis://127.0.0.1:6379/` or `nats://127.0.0.1:4222`.
    pub url: String,
    /// Redis channel, NATS subject, Redis stream key (`redis_stream`) or the subject of the
    /// JetStream stream (`jetstream`) shared by the nodes.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// `jetstream`: the stream's name (created when missing, its limits set from `[history]`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// This node's id on the backplane (default: a fresh UUID at start-up); must differ
    /// between nodes.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Event batches waiting to be forwarded; beyond this they are counted as not forwarded.
    #[serde(default = "default_forward_queue")]
    pub forward_queue: usize,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Seconds,
}

fn default_channel() -> String {
    "eventgate.events".to_owned()
}

fn default_stream() -> String {
    "EVENTGATE".to_owned()
}

fn default_forward_queue() -> usize {
    1024
}

fn default_max_backoff() -> Seconds {
    Seconds(Duration::from_secs(5))
}

/// Why the backplane connection failed; the task reconnects after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("nats: {0}")]
    Nats(String),
    #[error("the backplane connection ended")]
    Ended,
}

/// Why a backplane message was ignored.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a backplane message: {0}")]
    Malformed(String),
    #[error("event {index}: {error}")]
    Event {
        index: usize,
        error: envelope::EntryError,
    },
}

/// Where accepted events go (`POST /events`, broker sources): this node's hub and, on a
/// cluster node, the backplane. The cluster wraps the hub; the hub knows nothing of it.
#[derive(Debug, Clone)]
pub struct Publisher {
    hub: Hub,
    /// Set on a cluster node.
    forwarder: Option<Forwarder>,
}

impl Publisher {
    /// Events go to `hub`, and through `forwarder` to the other nodes when there is one.
    pub fn new(hub: Hub, forwarder: Option<Forwarder>) -> Publisher {
        Publisher { hub, forwarder }
    }

    /// Waits for room in the ingest backlog (broker sources slow down this way), then: on a
    /// shared log, queues the events for the log only (every node, this one included,
    /// delivers what it reads back); otherwise queues them for this node's dispatcher, in
    /// order after every subscription acknowledged before this call, and on a pub/sub
    /// cluster also for the other nodes (without waiting: see [`Forwarder::forward`]).
    pub async fn publish(&self, events: Vec<Arc<Event>>) -> Result<(), HubStopped> {
        let Some(forwarder) = &self.forwarder else {
            return self.hub.publish(events).await;
        };
        if events.is_empty() {
            return Ok(());
        }
        let held = self.hub.admit(&events).await;
        if let Some(log) = forwarder.log() {
            return log.append(events, held).await;
        }
        let permit = self.hub.reserve().await?;
        forwarder.forward(&events);
        permit.send(events, held);
        Ok(())
    }

    /// [`Publisher::publish`] to this node's clients only (a source every node reads
    /// itself: see `sources::SourceContext::local_only`).
    pub async fn publish_local(&self, events: Vec<Arc<Event>>) -> Result<(), HubStopped> {
        self.hub.publish(events).await
    }

    /// [`Publisher::publish`] without waiting (ingest): refused when the ingest backlog has
    /// no room for the batch, the dispatcher's queue is full or the shared log is down.
    pub fn try_publish(&self, events: Vec<Arc<Event>>) -> Result<(), PublishError> {
        let Some(forwarder) = &self.forwarder else {
            return self.hub.try_publish(events);
        };
        if events.is_empty() {
            return Ok(());
        }
        let held = self.hub.try_admit(&events)?;
        if let Some(log) = forwarder.log() {
            return log.try_append(events, held);
        }
        let permit = self.hub.try_reserve()?;
        forwarder.forward(&events);
        permit.send(events, held);
        Ok(())
    }
}

/// The hub's end of the backplane: the forwarding queue (pub/sub) or the queue to the
/// shared log.
#[derive(Debug, Clone)]
pub struct Forwarder {
    route: Route,
    /// This node's id and the nodes heard on the backplane (for the admin console).
    pub peers: Arc<Peers>,
}

/// Most other nodes remembered; beyond it the one heard from longest ago is forgotten.
pub const MAX_PEERS: usize = 256;

/// This node's id on the backplane and the other nodes heard on it: a node is heard only
/// when it forwards events, so a quiet node is not missing, only silent.
#[derive(Debug)]
pub struct Peers {
    pub node_id: Arc<str>,
    heard: std::sync::Mutex<std::collections::HashMap<String, Heard>>,
}

/// When a node was last heard, and how many events it sent.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    pub last: std::time::SystemTime,
    pub events: u64,
}

impl Peers {
    fn heard(&self, node: &str, events: usize) {
        let mut heard = self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !heard.contains_key(node) && heard.len() >= MAX_PEERS {
            let oldest = heard
                .iter()
                .min_by_key(|(_, heard)| heard.last)
                .map(|(node, _)| node.clone());
            if let Some(oldest) = oldest {
                heard.remove(&oldest);
            }
        }
        let entry = heard.entry(node.to_owned()).or_insert(Heard {
            last: std::time::SystemTime::now(),
            events: 0,
        });
        entry.last = std::time::SystemTime::now();
        entry.events += events as u64;
    }

    /// The nodes heard, by id.
    pub fn list(&self) -> Vec<(String, Heard)> {
        let mut list: Vec<(String, Heard)> = self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(node, heard)| (node.clone(), *heard))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

#[derive(Debug, Clone)]
enum Route {
    /// Pub/sub: events are delivered locally and also forwarded.
    Broadcast(mpsc::Sender<Vec<Arc<Event>>>),
    /// Shared log: events are only appended; every node delivers what it reads.
    Log(LogAppender),
}

impl Forwarder {
    /// Queues events for a pub/sub backplane without waiting; counts them as not forwarded
    /// when the queue is full. (Nothing to do with a shared log: see [`Forwarder::log`].)
    pub fn forward(&self, events: &[Arc<Event>]) {
        if let Route::Broadcast(sender) = &self.route {
            if sender.try_send(events.to_vec()).is_err() {
                telemetry::cluster_not_forwarded(events.len() as u64, "queue_full");
            }
        }
    }

    /// The queue to the shared log, when the backplane is one: published events go there
    /// instead of to this node's dispatcher.
    pub fn log(&self) -> Option<&LogAppender> {
        match &self.route {
            Route::Log(appender) => Some(appender),
            Route::Broadcast(_) => None,
        }
    }
}

/// A backplane message: `{"node":"<id>","events":[<event>, ...]}`, events as the exact JSON
/// clients receive.
pub fn encode(node: &str, events: &[Arc<Event>]) -> String {
    let size = events
        .iter()
        .map(|event| event.json.len() + 1)
        .sum::<usize>();
    let mut text = String::with_capacity(size + node.len() + 24);
    text.push_str("{\"node\":");
    text.push_str(&serde_json::Value::String(node.to_owned()).to_string());
    text.push_str(",\"events\":[");
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&event.json);
    }
    text.push_str("]}");
    text
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    node: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Decodes a backplane message; `None` for this node's own messages.
pub fn decode(own_node: &str, payload: &[u8]) -> Result<Option<Vec<Arc<Event>>>, DecodeError> {
    Ok(decode_from(own_node, payload)?.map(|(_, events)| events))
}

/// An event as a shared log holds it: the exact JSON clients receive, complete.
fn event_from_log(payload: &[u8]) -> Result<Arc<Event>, DecodeError> {
    let raw: &RawValue = serde_json::from_slice(payload)
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    envelope::from_eventbridge(raw, &complete())
        .map(Arc::new)
        .map_err(|error| DecodeError::Event { index: 0, error })
}

/// Events on the backplane are complete: nothing is filled in.
fn complete() -> Fill {
    Fill {
        id: String::new(),
        time: String::new(),
        account: String::new(),
        region: String::new(),
    }
}

/// The id of the node that sent a backplane message, and its events.
type FromNode = (String, Vec<Arc<Event>>);

/// [`decode`], with the id of the node that sent the message.
fn decode_from(own_node: &str, payload: &[u8]) -> Result<Option<FromNode>, DecodeError> {
    let message: Message<'_> = serde_json::from_slice(payload)
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if message.node == own_node {
        return Ok(None);
    }
    let fill = complete();
    let mut events = Vec::with_capacity(message.events.len());
    for (index, raw) in message.events.into_iter().enumerate() {
        let event = envelope::from_eventbridge(raw, &fill)
            .map_err(|error| DecodeError::Event { index, error })?;
        events.push(Arc::new(event));
    }
    Ok(Some((message.node.into_owned(), events)))
}

/// What the backplane tasks share.
#[derive(Debug, Clone)]
struct Node {
    id: Arc<str>,
    config: ClusterConfig,
    /// `[history]`: the shared log's retention and how much of it a node loads.
    retention: HistoryConfig,
    hub: Hub,
    shutdown: CancellationToken,
    peers: Arc<Peers>,
}

impl Node {
    /// Delivers a message heard on the backplane to this node's clients.
    async fn deliver(&self, payload: &[u8]) -> Result<(), HubStopped> {
        match decode_from(&self.id, payload) {
            Ok(None) => Ok(()),
            Ok(Some((node, events))) => {
                self.peers.heard(&node, events.len());
                telemetry::cluster_received(events.len() as u64);
                self.hub.publish(events).await
            }
            Err(error) => {
                telemetry::cluster_bad_message(&error);
                Ok(())
            }
        }
    }
}

/// Starts the backplane tasks and returns the hub's forwarder. `hub` is the local hub the
/// received events go to.
pub fn start(
    config: &ClusterConfig,
    retention: &HistoryConfig,
    hub: Hub,
    readiness: &Readiness,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Forwarder {
    let id: Arc<str> = config
        .node_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        .into();
    tracing::info!(node = %id, backend = ?config.backend, channel = %config.channel, "joining the cluster");
    let peers = Arc::new(Peers {
        node_id: Arc::clone(&id),
        heard: std::sync::Mutex::default(),
    });
    let node = Node {
        id,
        config: config.clone(),
        retention: retention.clone(),
        hub,
        shutdown,
        peers: Arc::clone(&peers),
    };
    let route = match config.backend {
        Backend::Redis | Backend::Nats => {
            let (sender, receiver) = mpsc::channel(config.forward_queue.max(1));
            start_broadcast(node, receiver, readiness, tracker);
            Route::Broadcast(sender)
        }
        Backend::RedisStream | Backend::Jetstream => {
            let (appender, receiver, up) = LogAppender::new(config.forward_queue);
            let up = log::Up(up);
            if config.backend == Backend::RedisStream {
                tracker.spawn(log::append::<redis_stream::Appender>(
                    node.clone(),
                    receiver,
                    up,
                    readiness.component("cluster:append"),
                ));
                tracker.spawn(redis_stream::read(
                    node,
                    readiness.component("cluster:read"),
                ));
            } else {
                tracker.spawn(log::append::<jetstream::Appender>(
                    node.clone(),
                    receiver,
                    up,
                    readiness.component("cluster:append"),
                ));
                tracker.spawn(jetstream::read(node, readiness.component("cluster:read")));
            }
            Route::Log(appender)
        }
    };
    Forwarder { route, peers }
}

fn start_broadcast(
    node: Node,
    receiver: mpsc::Receiver<Vec<Arc<Event>>>,
    readiness: &Readiness,
    tracker: &TaskTracker,
) {
    match node.config.backend {
        Backend::Redis => {
            tracker.spawn(redis::publish(
                node.clone(),
                receiver,
                readiness.component("cluster:publish"),
            ));
            tracker.spawn(redis::subscribe(
                node,
                readiness.component("cluster:subscribe"),
            ));
        }
        _ => {
            tracker.spawn(nats::run(node, receiver, readiness.component("cluster")));
        }
    }
}

/// Most events carried in one backplane message.
const MAX_EVENTS_PER_MESSAGE: usize = 512;

/// Takes what is queued (at least one batch, waiting for it) and joins it into messages of
/// at most `MAX_EVENTS_PER_MESSAGE` events. `None` when the queue is closed.
async fn next_messages(
    receiver: &mut mpsc::Receiver<Vec<Arc<Event>>>,
    buffer: &mut Vec<Vec<Arc<Event>>>,
) -> Option<Vec<Vec<Arc<Event>>>> {
    if receiver.recv_many(buffer, 64).await == 0 {
        return None;
    }
    let mut messages: Vec<Vec<Arc<Event>>> = Vec::new();
    for batch in buffer.drain(..) {
        match messages.last_mut() {
            Some(last) if last.len() + batch.len() <= MAX_EVENTS_PER_MESSAGE => last.extend(batch),
            _ => messages.push(batch),
        }
    }
    Some(messages)
}

/// Counts everything still queued as not forwarded (the backplane is down).
/// The reconnect policy every task of the cluster shares (backplanes and shared logs): after
/// a failed session, report the error, mark the task's `status` not ready and wait a capped
/// backoff before the next; when the task ends, mark it `stopped`. Each task loops: run a
/// session with `&mut reconnects.backoff` (reset once connected), then ask `again` with its
/// result whether to run another.
struct Reconnects<'a> {
    node: &'a Node,
    status: &'a Component,
    /// Reset by a session once it is connected.
    backoff: Backoff,
}

impl<'a> Reconnects<'a> {
    fn new(node: &'a Node, status: &'a Component) -> Self {
        Reconnects {
            node,
            status,
            backoff: Backoff::reconnect(node.config.max_backoff.0),
        }
    }

    /// After a session ended with `result`: `true` when another should start (it failed and
    /// the delay has passed), `false` when the task ends (the session ended cleanly or the
    /// node stops; `status` then says `stopped`).
    async fn again(&mut self, result: Result<(), ClusterError>) -> bool {
        let Err(error) = result else {
            return self.stop();
        };
        let delay = self.failed(&error);
        tokio::select! {
            () = self.node.shutdown.cancelled() => self.stop(),
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// [`Reconnects::again`] for a pub/sub publisher: while it waits, what is queued for the
    /// backplane is counted as not forwarded (`backplane_down`) rather than left to fill the
    /// queue; the task also ends when the queue closes.
    async fn again_draining(
        &mut self,
        result: Result<(), ClusterError>,
        receiver: &mut mpsc::Receiver<Vec<Arc<Event>>>,
    ) -> bool {
        let Err(error) = result else {
            return self.stop();
        };
        let delay = self.failed(&error);
        discard_queued(receiver, "backplane_down");
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = self.node.shutdown.cancelled() => return self.stop(),
                () = &mut sleep => return true,
                batch = receiver.recv() => match batch {
                    Some(batch) => {
                        telemetry::cluster_not_forwarded(batch.len() as u64, "backplane_down");
                    }
                    None => return self.stop(),
                },
            }
        }
    }

    /// Reports a failed session; the delay before the next.
    fn failed(&mut self, error: &ClusterError) -> Duration {
        self.status.set(false, "reconnecting");
        telemetry::cluster_error(error);
        let delay = self.backoff.next_delay();
        telemetry::cluster_reconnecting(delay.as_millis());
        delay
    }

    fn stop(&self) -> bool {
        self.status.set(false, "stopped");
        false
    }
}

fn discard_queued(receiver: &mut mpsc::Receiver<Vec<Arc<Event>>>, reason: &'static str) {
    while let Ok(batch) = receiver.try_recv() {
        telemetry::cluster_not_forwarded(batch.len() as u64, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Arc<Event> {
        let raw = RawValue::from_string(json.to_owned()).unwrap();
        let fill = Fill {
            id: "id-1".into(),
            time: "2026-01-01T00:00:00Z".into(),
            account: "1".into(),
            region: "r".into(),
        };
        Arc::new(envelope::from_eventbridge(&raw, &fill).unwrap())
    }

    #[test]
    fn messages_round_trip_with_exact_numbers() {
        let events = vec![
            event(
                r#"{"source":"a","detail-type":"t","detail":{"n":1.50,"big":12345678901234567890}}"#,
            ),
            event(r#"{"source":"b","detail-type":"u"}"#),
        ];
        let text = encode("node-a", &events);
        assert_eq!(
            decode("node-a", text.as_bytes()).unwrap().map(|e| e.len()),
            None
        );
        let decoded = decode("node-b", text.as_bytes()).unwrap().unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].json, events[0].json);
        assert!(decoded[0].json.contains("12345678901234567890"));
        assert!(decoded[0].json.contains("1.50"));
        assert_eq!(decoded[1].source, "b");
        assert_eq!(decoded[1].detail_type, "u");
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert!(decode("n", b"not json").is_err());
        assert!(decode("n", br#"{"node":"x","events":[{"detail-type":"t"}]}"#).is_err());
        assert!(decode("n", br#"{"node":"x"}"#).is_err());
        assert!(decode("n", br#"{"node":"x","events":[]}"#)
            .unwrap()
            .unwrap()
            .is_empty());
    }
}
