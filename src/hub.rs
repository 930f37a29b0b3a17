//! The dispatcher: one task that owns the pattern index and the table of announced
//! connections, and turns each event into at most one `Event` notification per matching
//! connection.
//!
//! Owns rule registration order (a Subscribe acknowledged before an event was accepted is
//! always applied before that event is matched), fan-out, keep-alives and the backpressure
//! policy: every connection has a bounded outbound queue (messages and bytes); a delivery
//! that does not fit closes that connection with 1013 and drops its rules. The dispatcher
//! never waits on a connection. Does not own sockets (see `session`) or ingest parsing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use eventgate_protocol::envelope::Event;
use eventgate_protocol::pattern::{Pattern, RuleIndex};
use eventgate_protocol::wire;

use crate::telemetry;

pub type ConnectionId = u64;

/// A matched rule: the connection that holds it and its name.
type Delivered = (ConnectionId, Arc<str>);

/// Distinct rule-name lists per event whose frames are built once and shared.
const MAX_SHARED_FRAMES: usize = 8;

/// Why a subscription was refused by the dispatcher.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many rules: this connection already has {0}, the limit")]
    TooManyRules(usize),
    #[error("connection gone")]
    ConnectionGone,
}

/// The dispatcher is gone (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the dispatcher has stopped")]
pub struct HubStopped;

/// The dispatcher's end of a connection's outbound queue.
#[derive(Debug)]
pub struct Outbox {
    sender: mpsc::Sender<Utf8Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    slow: CancellationToken,
}

/// The session's end of its outbound queue.
#[derive(Debug)]
pub struct Inbox {
    receiver: mpsc::Receiver<Utf8Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    /// Cancelled by the dispatcher when the connection could not keep up.
    pub slow: CancellationToken,
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        let message = self.receiver.recv().await?;
        self.queued_bytes
            .fetch_sub(message.len(), Ordering::Relaxed);
        Some(message)
    }

    /// A message that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let message = self.receiver.try_recv().ok()?;
        self.queued_bytes
            .fetch_sub(message.len(), Ordering::Relaxed);
        Some(message)
    }
}

/// A bounded outbound queue for one connection.
pub fn outbound_queue(max_messages: usize) -> (Outbox, Inbox) {
    let (sender, receiver) = mpsc::channel(max_messages.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let slow = CancellationToken::new();
    (
        Outbox {
            sender,
            queued_bytes: queued_bytes.clone(),
            slow: slow.clone(),
        },
        Inbox {
            receiver,
            queued_bytes,
            slow,
        },
    )
}

enum Command {
    Register {
        connection: ConnectionId,
        outbox: Outbox,
    },
    Deregister {
        connection: ConnectionId,
    },
    Subscribe {
        connection: ConnectionId,
        rule: Arc<str>,
        pattern: Box<Pattern>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    Unsubscribe {
        connection: ConnectionId,
        rule: Arc<str>,
        reply: oneshot::Sender<()>,
    },
    Publish {
        events: Vec<Arc<Event>>,
    },
}

/// A cheap handle to the dispatcher.
#[derive(Clone, Debug)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
    /// Set on a cluster node: published events also go to the other nodes.
    forwarder: Option<crate::cluster::Forwarder>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub max_rules_per_connection: usize,
    pub max_queued_bytes: usize,
    pub keepalive_interval: Duration,
}

impl Hub {
    /// Starts the dispatcher task; it stops when `shutdown` is cancelled.
    pub fn spawn(
        settings: HubSettings,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Hub {
        let (commands, receiver) = mpsc::channel(8192);
        let dispatcher = Dispatcher {
            settings,
            index: RuleIndex::new(),
            rules: HashMap::new(),
            connections: HashMap::new(),
            next_rule_id: 0,
            matched: Vec::new(),
            deliveries: Vec::new(),
        };
        tracker.spawn(dispatcher.run(receiver, shutdown));
        Hub {
            commands,
            forwarder: None,
        }
    }

    /// This hub, with every event given to `publish` also forwarded to the cluster.
    pub fn with_forwarder(self, forwarder: crate::cluster::Forwarder) -> Hub {
        Hub {
            forwarder: Some(forwarder),
            ..self
        }
    }

    async fn send(&self, command: Command) -> Result<(), HubStopped> {
        self.commands.send(command).await.map_err(|_| HubStopped)
    }

    /// Announces a connection: it will get keep-alives and can hold rules.
    pub async fn register(
        &self,
        connection: ConnectionId,
        outbox: Outbox,
    ) -> Result<(), HubStopped> {
        self.send(Command::Register { connection, outbox }).await
    }

    /// Forgets a connection and all its rules.
    pub async fn deregister(&self, connection: ConnectionId) {
        let _ = self.send(Command::Deregister { connection }).await;
    }

    /// Creates or replaces a rule; returns once the index holds it.
    pub async fn subscribe(
        &self,
        connection: ConnectionId,
        rule: Arc<str>,
        pattern: Pattern,
    ) -> Result<(), SubscribeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Subscribe {
            connection,
            rule,
            pattern: Box::new(pattern),
            reply,
        })
        .await
        .map_err(|_| SubscribeError::ConnectionGone)?;
        answer.await.unwrap_or(Err(SubscribeError::ConnectionGone))
    }

    /// Deletes a rule (no error when it did not exist).
    pub async fn unsubscribe(
        &self,
        connection: ConnectionId,
        rule: Arc<str>,
    ) -> Result<(), HubStopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Unsubscribe {
            connection,
            rule,
            reply,
        })
        .await?;
        answer.await.map_err(|_| HubStopped)
    }

    /// Hands events to the dispatcher. Returns once they are queued, in order after every
    /// subscription acknowledged before this call.
    /// On a cluster node the events are also queued for the other nodes (without waiting).
    pub async fn publish(&self, events: Vec<Arc<Event>>) -> Result<(), HubStopped> {
        if events.is_empty() {
            return Ok(());
        }
        if let Some(forwarder) = &self.forwarder {
            forwarder.forward(&events);
        }
        self.send(Command::Publish { events }).await
    }

    /// Hands events to this node's dispatcher only (events heard from other nodes).
    pub async fn publish_local(&self, events: Vec<Arc<Event>>) -> Result<(), HubStopped> {
        if events.is_empty() {
            return Ok(());
        }
        self.send(Command::Publish { events }).await
    }
}

struct ConnectionEntry {
    outbox: Outbox,
    rules: HashMap<Arc<str>, u64>,
}

struct Dispatcher {
    settings: HubSettings,
    index: RuleIndex<u64>,
    /// Rule id → (connection, rule name).
    rules: HashMap<u64, (ConnectionId, Arc<str>)>,
    connections: HashMap<ConnectionId, ConnectionEntry>,
    next_rule_id: u64,
    matched: Vec<u64>,
    deliveries: Vec<Delivered>,
}

enum Delivery {
    Queued,
    Dropped,
}

impl Dispatcher {
    async fn run(mut self, mut receiver: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut keepalive = tokio::time::interval(self.settings.keepalive_interval);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = receiver.recv_many(&mut batch, 256) => {
                    if received == 0 {
                        break;
                    }
                    for command in batch.drain(..) {
                        self.handle(command);
                    }
                }
                _ = keepalive.tick() => self.keep_alive(),
            }
        }
        let rules = self.rules.len();
        telemetry::rules_changed(-(rules as f64));
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register { connection, outbox } => {
                self.connections.insert(
                    connection,
                    ConnectionEntry {
                        outbox,
                        rules: HashMap::new(),
                    },
                );
            }
            Command::Deregister { connection } => self.drop_connection(connection),
            Command::Subscribe {
                connection,
                rule,
                pattern,
                reply,
            } => {
                let result = self.subscribe(connection, rule, &pattern);
                let _ = reply.send(result);
            }
            Command::Unsubscribe {
                connection,
                rule,
                reply,
            } => {
                if let Some(entry) = self.connections.get_mut(&connection) {
                    if let Some(id) = entry.rules.remove(&rule) {
                        self.index.remove(id);
                        self.rules.remove(&id);
                        telemetry::rules_changed(-1.0);
                    }
                }
                let _ = reply.send(());
            }
            Command::Publish { events } => {
                for event in events {
                    self.dispatch(&event);
                }
            }
        }
    }

    fn subscribe(
        &mut self,
        connection: ConnectionId,
        rule: Arc<str>,
        pattern: &Pattern,
    ) -> Result<(), SubscribeError> {
        let entry = self
            .connections
            .get_mut(&connection)
            .ok_or(SubscribeError::ConnectionGone)?;
        if let Some(&id) = entry.rules.get(&rule) {
            // Replace in place: same id, new pattern.
            self.index.insert(id, pattern);
            return Ok(());
        }
        if entry.rules.len() >= self.settings.max_rules_per_connection {
            return Err(SubscribeError::TooManyRules(
                self.settings.max_rules_per_connection,
            ));
        }
        let id = self.next_rule_id;
        self.next_rule_id += 1;
        entry.rules.insert(rule.clone(), id);
        self.index.insert(id, pattern);
        self.rules.insert(id, (connection, rule));
        telemetry::rules_changed(1.0);
        Ok(())
    }

    fn drop_connection(&mut self, connection: ConnectionId) {
        if let Some(entry) = self.connections.remove(&connection) {
            for id in entry.rules.values() {
                self.index.remove(*id);
                self.rules.remove(id);
            }
            telemetry::rules_changed(-(entry.rules.len() as f64));
        }
    }

    fn dispatch(&mut self, event: &Event) {
        self.matched.clear();
        self.index.matches(&event.value, &mut self.matched);
        if self.matched.is_empty() {
            return;
        }
        self.deliveries.clear();
        for id in &self.matched {
            if let Some((connection, rule)) = self.rules.get(id) {
                self.deliveries.push((*connection, rule.clone()));
            }
        }
        self.deliveries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
        });
        let tail = wire::event_tail(&event.source, &event.detail_type, &event.json);
        // One RequestId per event: each connection still sees a new one in every
        // notification, and connections that matched the same rule names share one frame
        // (a reference-counted buffer) instead of a copy of the event each.
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut frames: Vec<(&[Delivered], Utf8Bytes)> = Vec::new();
        let deliveries = std::mem::take(&mut self.deliveries);
        let mut sent = 0u64;
        let mut start = 0;
        while start < deliveries.len() {
            let connection = deliveries[start].0;
            let end = deliveries[start..]
                .iter()
                .position(|(other, _)| *other != connection)
                .map_or(deliveries.len(), |offset| start + offset);
            let rules = &deliveries[start..end];
            let same_rules = |(cached, _): &&(&[Delivered], Utf8Bytes)| {
                cached.len() == rules.len()
                    && cached.iter().zip(rules).all(|((_, a), (_, b))| a == b)
            };
            let frame = match frames.iter().find(same_rules) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let frame = Utf8Bytes::from(wire::event_frame(
                        &request_id,
                        rules.iter().map(|(_, rule)| &**rule),
                        &tail,
                    ));
                    if frames.len() < MAX_SHARED_FRAMES {
                        frames.push((rules, frame.clone()));
                    }
                    frame
                }
            };
            if let Delivery::Queued = self.deliver(connection, frame) {
                sent += 1;
            }
            start = end;
        }
        drop(frames);
        self.deliveries = deliveries;
        telemetry::notifications_sent(sent);
    }

    fn deliver(&mut self, connection: ConnectionId, frame: Utf8Bytes) -> Delivery {
        let Some(entry) = self.connections.get(&connection) else {
            return Delivery::Dropped;
        };
        let size = frame.len();
        let queued = entry.outbox.queued_bytes.load(Ordering::Relaxed);
        let fits = queued + size <= self.settings.max_queued_bytes || queued == 0;
        let outcome = if fits {
            entry.outbox.queued_bytes.fetch_add(size, Ordering::Relaxed);
            match entry.outbox.sender.try_send(frame) {
                Ok(()) => Ok(()),
                Err(error) => {
                    entry.outbox.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                    Err(matches!(error, mpsc::error::TrySendError::Full(_)))
                }
            }
        } else {
            Err(true)
        };
        match outcome {
            Ok(()) => Delivery::Queued,
            Err(too_slow) => {
                if too_slow {
                    entry.outbox.slow.cancel();
                    telemetry::slow_consumer_closed(connection);
                }
                self.drop_connection(connection);
                Delivery::Dropped
            }
        }
    }

    fn keep_alive(&mut self) {
        let connections: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for connection in connections {
            let frame = wire::keep_alive(&uuid::Uuid::new_v4().to_string());
            self.deliver(connection, Utf8Bytes::from(frame));
        }
    }
}
