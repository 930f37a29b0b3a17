//! The dispatcher: one task that owns the pattern index and the table of announced
//! connections, and turns each event into at most one `Event` notification per matching
//! connection.
//!
//! Owns rule registration order (a Subscribe acknowledged before an event was accepted is
//! always applied before that event is matched), fan-out, keep-alives and the backpressure
//! policy: every connection has a bounded outbound queue (`outbound`); a delivery
//! that does not fit closes that connection with 1013 and drops its rules. The dispatcher
//! never waits on a connection. Each published batch holds its room in the ingest backlog
//! (`limits::Backlog`) until it has been matched: ingest is refused and sources wait while
//! the backlog is full. Does not own sockets (see `session`) or ingest parsing.
//!
//! History (see `history`): every published event is appended to the log when it enters this
//! task's order and its notifications carry its `Position`. On a cluster node with a shared
//! log (`cluster::log`), the cluster's `Publisher` sends published events to the shared log
//! instead, and this task's order is the shared log's: the log reader hands every event in
//! with its id, this node's own events included. The hub knows nothing of the cluster. A connection that
//! announced a position in Hello is *held* (gets no live events) until its `Resume`, which
//! replays the missed events matching its rules here, in the same order: no gap and no
//! duplicate at the seam.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use eventgate_protocol::envelope::Event;
use eventgate_protocol::pattern::{BudgetError, Pattern, RuleBudget, RuleCost, RuleIndex};
use eventgate_protocol::wire;

use crate::history::{HistoryConfig, Ids, LogId, Logged, MemoryLog, ResumeError, Resumed};
use crate::limits::{Backlog, BacklogHeld, LimitError};
use crate::outbound::{Offer, Outbox};
use crate::stop::StopReason;
use crate::telemetry;

pub type ConnectionId = u64;

/// A matched rule: the slot of the connection that holds it and the rule's id.
type Delivered = (u32, u32);

/// Distinct rule-name lists per event whose frames are built once and shared.
const MAX_SHARED_FRAMES: usize = 8;

/// Why a subscription was refused by the dispatcher.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many rules: this connection already has {0}, the limit")]
    TooManyRules(usize),
    /// Over a cost or memory budget (see `RuleBudget`); displays as the Ack text.
    #[error(transparent)]
    TooComplex(BudgetError),
    #[error("connection gone")]
    ConnectionGone,
}

/// The dispatcher is gone (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the dispatcher has stopped")]
pub struct HubStopped;

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
        /// The batch's room in the ingest backlog, freed once it has been matched.
        held: BacklogHeld,
    },
    /// Events read from the shared log, in its order, with their ids.
    PublishLogged {
        events: Vec<Logged>,
    },
    /// What the shared log holds when its reader starts: replaces the log's content.
    LoadLog {
        ids: Ids,
        floor: LogId,
        events: Vec<Logged>,
    },
    /// The shared log's reader could not read some events (trimmed while it was away): the
    /// log resumes after `floor` and every announced connection is closed so that its client
    /// resumes (and learns of the gap).
    LogGap {
        floor: LogId,
    },
    Inspect {
        query: Inspect,
        reply: oneshot::Sender<Inspection>,
    },
    // History: hold a connection's live events until it resumes, then replay.
    Hold {
        connection: ConnectionId,
        position: String,
    },
    Resume {
        connection: ConnectionId,
        position: Option<String>,
        reply: oneshot::Sender<Resumed>,
    },
}

/// What the admin console asks the dispatcher about announced connections (see `admin`).
#[derive(Debug, Clone)]
pub enum Inspect {
    /// These connections, those of them that are announced, in the order given.
    Connections(Vec<ConnectionId>),
    /// Connections with a rule whose name or pattern text contains `text` (ASCII case
    /// ignored), by id, after `after`, at most `limit`. A scan of every connection.
    Search {
        text: String,
        after: ConnectionId,
        limit: usize,
    },
}

/// An announced connection as the dispatcher sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionView {
    pub id: ConnectionId,
    pub rules: Vec<RuleView>,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// Event notifications queued for it since it announced (keep-alives not counted).
    pub notifications: u64,
}

/// One rule of a connection: its name and its pattern as compact JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleView {
    pub name: String,
    pub pattern: String,
}

/// The answer to an [`Inspect`].
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    pub connections: Vec<ConnectionView>,
    /// For a search: every matching connection, not only those returned.
    pub matched: usize,
    /// Announced connections and rules on this node.
    pub announced: usize,
    pub rules: usize,
}

/// A cheap handle to the dispatcher.
#[derive(Clone, Debug)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
    /// Events handed over and not yet matched (`limits.max_ingest_backlog_bytes`).
    backlog: Arc<Backlog>,
}

/// Why [`Hub::try_publish`] (or the cluster's `Publisher::try_publish`) did not take a
/// batch.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Busy(LimitError),
    /// The shared log (`cluster.backend = "redis_stream" | "jetstream"`) is unreachable:
    /// nothing was accepted.
    #[error("the shared event log is {0}; nothing was accepted; retry later")]
    LogUnavailable(&'static str),
    #[error(transparent)]
    Stopped(#[from] HubStopped),
}

/// A place in the dispatcher's queue for one published batch (see [`Hub::reserve`]).
pub struct PublishPermit<'a>(mpsc::Permit<'a, Command>);

impl PublishPermit<'_> {
    /// Queues `events`; they hold `held` of the ingest backlog until they are matched.
    pub fn send(self, events: Vec<Arc<Event>>, held: BacklogHeld) {
        self.0.send(Command::Publish { events, held });
    }
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
    /// `limits.max_ingest_backlog_bytes`.
    pub max_ingest_backlog_bytes: usize,
    pub history: HistoryConfig,
    /// `limits.max_queued_messages`: caps `history.max_replay`.
    pub max_queued_messages: usize,
    /// The history is a shared log's tail, read by `cluster::log` (filled by
    /// [`Hub::load_log`], positions are the shared log's ids).
    pub shared_log: bool,
    /// Per-connection budgets on the matching cost and memory weight of its rules.
    pub budget: RuleBudget,
}

impl Hub {
    /// Starts the dispatcher task; it stops when `shutdown` is cancelled.
    pub fn spawn(
        settings: HubSettings,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Hub {
        let (commands, receiver) = mpsc::channel(8192);
        let backlog = Backlog::new(settings.max_ingest_backlog_bytes);
        let history = settings.history.enabled.then(|| {
            if settings.shared_log {
                MemoryLog::shared(settings.history.clone(), Ids::Stream)
            } else {
                MemoryLog::start(settings.history.clone())
            }
        });
        let dispatcher = Dispatcher {
            history,
            settings,
            index: RuleIndex::new(),
            rules: SlotTable::default(),
            slots: SlotTable::default(),
            slot_of: HashMap::new(),
            matched: Vec::new(),
            deliveries: Vec::new(),
            direct: false,
        };
        tracker.spawn(dispatcher.run(receiver, shutdown));
        Hub { commands, backlog }
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

    /// Answers an admin console's question about announced connections.
    pub async fn inspect(&self, query: Inspect) -> Result<Inspection, HubStopped> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Inspect { query, reply }).await?;
        answer.await.map_err(|_| HubStopped)
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

    /// Hands events to this node's dispatcher, first waiting for room in the ingest backlog
    /// (broker sources slow down this way). Returns once they are queued, in order after
    /// every subscription acknowledged before this call. On a cluster node,
    /// `cluster::Publisher` wraps this to reach the other nodes too.
    pub async fn publish(&self, events: Vec<Arc<Event>>) -> Result<(), HubStopped> {
        if events.is_empty() {
            return Ok(());
        }
        let held = self.admit(&events).await;
        self.reserve().await?.send(events, held);
        Ok(())
    }

    /// [`Hub::publish`] without waiting (ingest): refused when the ingest backlog has no
    /// room for the batch or the dispatcher's queue is full.
    pub fn try_publish(&self, events: Vec<Arc<Event>>) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let held = self.try_admit(&events)?;
        self.try_reserve()?.send(events, held);
        Ok(())
    }

    /// Waits for room for `events` in the ingest backlog, held until the dispatcher has
    /// matched them (or the holder is dropped unsent).
    pub async fn admit(&self, events: &[Arc<Event>]) -> BacklogHeld {
        self.backlog.hold(Backlog::weight(events)).await
    }

    /// [`Hub::admit`] without waiting: refused when the backlog has no room.
    pub fn try_admit(&self, events: &[Arc<Event>]) -> Result<BacklogHeld, PublishError> {
        self.backlog
            .try_hold(Backlog::weight(events))
            .map_err(PublishError::Busy)
    }

    /// A place in the dispatcher's queue for one batch, waiting for one.
    pub async fn reserve(&self) -> Result<PublishPermit<'_>, HubStopped> {
        let permit = self.commands.reserve().await.map_err(|_| HubStopped)?;
        Ok(PublishPermit(permit))
    }

    /// [`Hub::reserve`] without waiting: refused when the dispatcher's queue is full.
    pub fn try_reserve(&self) -> Result<PublishPermit<'_>, PublishError> {
        let permit = self.commands.try_reserve().map_err(|error| match error {
            mpsc::error::TrySendError::Full(()) => {
                PublishError::Busy(LimitError::IngestBacklogFull {
                    limit: self.backlog.limit(),
                })
            }
            mpsc::error::TrySendError::Closed(()) => PublishError::Stopped(HubStopped),
        })?;
        Ok(PublishPermit(permit))
    }

    /// Events read from the shared log, in its order: waits for room in the dispatcher's
    /// queue (the reader slows down), not for the ingest backlog (they were admitted when
    /// they were appended).
    pub async fn publish_logged(&self, events: Vec<Logged>) -> Result<(), HubStopped> {
        if events.is_empty() {
            return Ok(());
        }
        self.send(Command::PublishLogged { events }).await
    }

    /// Fills the log with what the shared log holds (its reader's start).
    pub async fn load_log(
        &self,
        ids: Ids,
        floor: LogId,
        events: Vec<Logged>,
    ) -> Result<(), HubStopped> {
        self.send(Command::LoadLog { ids, floor, events }).await
    }

    /// The shared log's reader skipped events: see `Command::LogGap`.
    pub async fn log_gap(&self, floor: LogId) -> Result<(), HubStopped> {
        self.send(Command::LogGap { floor }).await
    }

    /// Holds back the connection's live events until it resumes after `position` (`""`: after
    /// the newest event now).
    pub async fn hold(&self, connection: ConnectionId, position: String) -> Result<(), HubStopped> {
        self.send(Command::Hold {
            connection,
            position,
        })
        .await
    }

    /// Replays the missed events matching the connection's rules into its outbound queue and
    /// ends its hold; `position` overrides the one given in `hold`.
    pub async fn resume(&self, connection: ConnectionId, position: Option<String>) -> Resumed {
        let gone = || Resumed {
            replayed: Err(ResumeError::Gone),
            position: None,
        };
        let (reply, answer) = oneshot::channel();
        let sent = self
            .send(Command::Resume {
                connection,
                position,
                reply,
            })
            .await;
        if sent.is_err() {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

/// A connection as the dispatcher knows it.
struct ConnectionEntry {
    id: ConnectionId,
    outbox: Outbox,
    /// Rule name → rule id.
    rules: HashMap<Arc<str>, u32>,
    /// Event notifications queued for it (for the admin console).
    notifications: u64,
    /// When it was last handed a notification (see [`DIRECT_WRITE_MIN_GAP`]).
    last_notified: Option<std::time::Instant>,
    /// Set from Hello to Resume: the position to resume after (text, `""` = `held_at`) and
    /// the id that was newest when the hold began. No live events meanwhile.
    hold: Option<(String, LogId)>,
    /// A shared log's position this node had not read yet when the connection resumed from
    /// it (the client came from a node that had read further): live events up to it were
    /// delivered already, on the other node, and are skipped.
    skip_until: Option<LogId>,
    /// Total cost and weight of its rules (checked against `HubSettings::budget`).
    held: RuleCost,
}

/// Who holds a rule: the slot of its connection, its name and its cost.
struct RuleOwner {
    slot: u32,
    name: Arc<str>,
    cost: RuleCost,
}

/// Values under small integer ids, reused after removal: a lookup is an array read.
struct SlotTable<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for SlotTable<T> {
    fn default() -> Self {
        SlotTable {
            items: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T> SlotTable<T> {
    /// Stores `item` under a free id.
    fn insert(&mut self, item: T) -> u32 {
        self.live += 1;
        match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = Some(item);
                id
            }
            None => {
                self.items.push(Some(item));
                (self.items.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, id: u32) -> Option<T> {
        let item = self.items.get_mut(id as usize)?.take()?;
        self.free.push(id);
        self.live -= 1;
        Some(item)
    }

    fn get(&self, id: u32) -> Option<&T> {
        self.items.get(id as usize)?.as_ref()
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.items.get_mut(id as usize)?.as_mut()
    }

    fn len(&self) -> usize {
        self.live
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(id, item)| Some((id as u32, item.as_ref()?)))
    }
}

/// The dispatcher's state. Connections and rules live in slot tables (vectors indexed by
/// slot / rule id, reused after removal), so fanning an event out to thousands of
/// connections costs array reads, not hash probes or reference-count traffic.
struct Dispatcher {
    settings: HubSettings,
    /// The in-memory log (`None` when `history.enabled` is off).
    history: Option<MemoryLog>,
    index: RuleIndex<u32>,
    /// Rule id (the index's key) → owner.
    rules: SlotTable<RuleOwner>,
    /// Connection slots.
    slots: SlotTable<ConnectionEntry>,
    /// Connection id → slot.
    slot_of: HashMap<ConnectionId, u32>,
    matched: Vec<u32>,
    deliveries: Vec<Delivered>,
    /// Whether this batch of commands may write notifications straight to idle
    /// connections' sockets (see `session::outbound`): only when the dispatcher is keeping
    /// up, i.e. the batch is small ([`DIRECT_WRITE_MAX_BATCH`]).
    direct: bool,
}

/// The backpressure policy of direct writes. A notification written by the dispatcher
/// itself saves the session's wake-up and poll (16% of the CPU per notification at 1,000
/// events/s, `bench/findings.md`), but the write runs on the dispatcher's one thread, one
/// system call per notification. So the dispatcher writes only while it keeps up: when its
/// last batch held at most this many commands, and, within a fan-out, only until another
/// command waits behind it. It also leaves to the session a connection it handed a
/// notification less than [`DIRECT_WRITE_MIN_GAP`] ago: notifications that pile up there
/// are written several per system call by the session, which at high rates is worth more
/// than the saved wake-up. Everything else is queued to the sessions, which write on every
/// worker.
const DIRECT_WRITE_MAX_BATCH: usize = 2;

/// See [`DIRECT_WRITE_MAX_BATCH`]: a connection sent notifications closer together than
/// this gets them through its queue.
const DIRECT_WRITE_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(5);

/// `held` without `rule`.
fn release(held: RuleCost, rule: RuleCost) -> RuleCost {
    RuleCost {
        cost: held.cost.saturating_sub(rule.cost),
        bytes: held.bytes.saturating_sub(rule.bytes),
    }
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
                    self.direct = received <= DIRECT_WRITE_MAX_BATCH;
                    for command in batch.drain(..) {
                        self.handle(command, &receiver);
                    }
                    self.report_history();
                }
                _ = keepalive.tick() => {
                    if let Some(log) = &mut self.history {
                        log.expire(std::time::Instant::now());
                    }
                    self.report_history();
                    self.keep_alive();
                }
            }
        }
        telemetry::rules_changed(-(self.rules.len() as f64));
    }

    /// Runs one command; `waiting` is the dispatcher's queue, which a fan-out watches for
    /// work arriving behind it (see [`DIRECT_WRITE_MAX_BATCH`]).
    fn handle(&mut self, command: Command, waiting: &mpsc::Receiver<Command>) {
        match command {
            Command::Register { connection, outbox } => {
                // A repeated id replaces the old entry and its rules.
                self.drop_connection(connection);
                let entry = ConnectionEntry {
                    id: connection,
                    outbox,
                    rules: HashMap::new(),
                    notifications: 0,
                    last_notified: None,
                    hold: None,
                    skip_until: None,
                    held: RuleCost::default(),
                };
                let slot = self.slots.insert(entry);
                self.slot_of.insert(connection, slot);
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
                let removed = self
                    .entry_mut(connection)
                    .and_then(|entry| entry.rules.remove(&rule));
                if let Some(id) = removed {
                    let cost = self.rules.get(id).map(|r| r.cost).unwrap_or_default();
                    if let Some(entry) = self.entry_mut(connection) {
                        entry.held = release(entry.held, cost);
                    }
                    self.remove_rule(id);
                    telemetry::rules_changed(-1.0);
                }
                let _ = reply.send(());
            }
            Command::Publish { events, held } => {
                for event in events {
                    self.dispatch(&event, None, waiting);
                }
                drop(held);
            }
            Command::PublishLogged { events } => {
                for logged in events {
                    self.dispatch(&logged.event, Some((logged.id, logged.at)), waiting);
                }
            }
            Command::LoadLog { ids, floor, events } => {
                if let Some(log) = &mut self.history {
                    log.load(ids, floor, events);
                }
            }
            Command::LogGap { floor } => {
                if let Some(log) = &mut self.history {
                    log.skip_to(floor);
                }
                telemetry::history_log_gap();
                let ids: Vec<ConnectionId> = self.slots.iter().map(|(_, entry)| entry.id).collect();
                tracing::warn!(
                    connections = ids.len(),
                    "the shared log moved past events this node had not read; closing every connection so that its client resumes"
                );
                for id in ids {
                    if let Some(entry) = self.entry_mut(id) {
                        entry.outbox.stop(StopReason::LogGap);
                    }
                    self.drop_connection(id);
                }
            }
            Command::Inspect { query, reply } => {
                let _ = reply.send(self.inspect(query));
            }
            Command::Hold {
                connection,
                position,
            } => {
                let newest = self.history.as_ref().map_or(LogId::ZERO, MemoryLog::newest);
                if let Some(entry) = self.entry_mut(connection) {
                    entry.hold = Some((position, newest));
                }
            }
            Command::Resume {
                connection,
                position,
                reply,
            } => {
                let replayed = self.resume(connection, position);
                telemetry::resumed(
                    replayed.as_ref().map_or_else(ResumeError::label, |_| "ok"),
                    *replayed.as_ref().unwrap_or(&0),
                );
                // Live from the newest event, or from the client's position when this node has
                // not read up to it yet.
                let skip = self
                    .entry_mut(connection)
                    .and_then(|entry| entry.skip_until);
                let position = self
                    .history
                    .as_ref()
                    .map(|log| log.text(log.newest().max(skip.unwrap_or_default())));
                let _ = reply.send(Resumed { replayed, position });
            }
        }
    }

    fn inspect(&self, query: Inspect) -> Inspection {
        let mut inspection = Inspection {
            announced: self.slots.len(),
            rules: self.rules.len(),
            ..Inspection::default()
        };
        let slots: Vec<u32> = match query {
            Inspect::Connections(ids) => ids
                .iter()
                .filter_map(|id| self.slot_of.get(id).copied())
                .collect(),
            Inspect::Search { text, after, limit } => {
                let text = text.to_ascii_lowercase();
                let contains = |haystack: &str| haystack.to_ascii_lowercase().contains(&text);
                let mut found: Vec<(ConnectionId, u32)> = self
                    .slots
                    .iter()
                    .filter(|(_, entry)| {
                        entry.rules.iter().any(|(name, id)| {
                            contains(name)
                                || self
                                    .index
                                    .pattern(*id)
                                    .is_some_and(|pattern| contains(pattern.source()))
                        })
                    })
                    .map(|(slot, entry)| (entry.id, slot))
                    .collect();
                inspection.matched = found.len();
                found.retain(|(id, _)| *id > after);
                found.sort_unstable();
                found
                    .into_iter()
                    .take(limit)
                    .map(|(_, slot)| slot)
                    .collect()
            }
        };
        inspection.connections = slots
            .into_iter()
            .filter_map(|slot| self.slots.get(slot))
            .map(|entry| {
                let (queued_messages, queued_bytes) = entry.outbox.queued();
                let mut rules: Vec<RuleView> = entry
                    .rules
                    .iter()
                    .map(|(name, id)| RuleView {
                        name: name.to_string(),
                        pattern: self
                            .index
                            .pattern(*id)
                            .map(|pattern| pattern.source().to_owned())
                            .unwrap_or_default(),
                    })
                    .collect();
                rules.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                ConnectionView {
                    id: entry.id,
                    rules,
                    queued_messages,
                    queued_bytes,
                    notifications: entry.notifications,
                }
            })
            .collect();
        inspection
    }

    fn entry_mut(&mut self, connection: ConnectionId) -> Option<&mut ConnectionEntry> {
        let slot = *self.slot_of.get(&connection)?;
        self.slots.get_mut(slot)
    }

    fn subscribe(
        &mut self,
        connection: ConnectionId,
        rule: Arc<str>,
        pattern: &Pattern,
    ) -> Result<(), SubscribeError> {
        let slot = *self
            .slot_of
            .get(&connection)
            .ok_or(SubscribeError::ConnectionGone)?;
        let max_rules = self.settings.max_rules_per_connection;
        let cost = pattern.cost();
        let entry = self
            .slots
            .get_mut(slot)
            .ok_or(SubscribeError::ConnectionGone)?;
        if let Some(&id) = entry.rules.get(&rule) {
            // Replace in place: same id, new pattern; the old one's cost is given back.
            let owner = self
                .rules
                .get_mut(id)
                .ok_or(SubscribeError::ConnectionGone)?;
            let others = release(entry.held, owner.cost);
            self.settings
                .budget
                .admit(others, cost)
                .map_err(SubscribeError::TooComplex)?;
            entry.held = others + cost;
            owner.cost = cost;
            self.index.insert(id, pattern);
            return Ok(());
        }
        if entry.rules.len() >= max_rules {
            return Err(SubscribeError::TooManyRules(max_rules));
        }
        self.settings
            .budget
            .admit(entry.held, cost)
            .map_err(SubscribeError::TooComplex)?;
        entry.held = entry.held + cost;
        let id = self.rules.insert(RuleOwner {
            slot,
            name: rule.clone(),
            cost,
        });
        entry.rules.insert(rule, id);
        self.index.insert(id, pattern);
        telemetry::rules_changed(1.0);
        Ok(())
    }

    /// Takes a rule out of the index and frees its id.
    ///
    /// (The connection's `held` total is adjusted by the callers that keep the
    /// connection; a dropped connection's entry goes with its totals.)
    fn remove_rule(&mut self, id: u32) {
        self.index.remove(id);
        self.rules.remove(id);
    }

    fn drop_connection(&mut self, connection: ConnectionId) {
        let Some(slot) = self.slot_of.remove(&connection) else {
            return;
        };
        let Some(entry) = self.slots.remove(slot) else {
            return;
        };
        for id in entry.rules.values() {
            self.remove_rule(*id);
        }
        telemetry::rules_changed(-(entry.rules.len() as f64));
    }

    /// Matches one event and queues its notifications. `logged`: its id in the shared log and
    /// when it entered it (`None`: the gateway's own log numbers it).
    fn dispatch(
        &mut self,
        event: &Arc<Event>,
        logged: Option<(LogId, std::time::Instant)>,
        waiting: &mpsc::Receiver<Command>,
    ) {
        let id = match (&mut self.history, logged) {
            (Some(log), Some((id, at))) => {
                if !log.append_at(id, event, at) {
                    // Read before (the reader re-read after reconnecting): delivered then.
                    return;
                }
                Some(id)
            }
            (Some(log), None) if !log.is_shared() => {
                Some(log.append(event, std::time::Instant::now()))
            }
            (None, Some((id, _))) => Some(id),
            _ => None,
        };
        self.matched.clear();
        self.index.matches(&event.value, &mut self.matched);
        if self.matched.is_empty() {
            telemetry::event_dispatched(&event.id, &event.source, &event.detail_type, 0);
            return;
        }
        let mut deliveries = std::mem::take(&mut self.deliveries);
        deliveries.clear();
        let rules = &self.rules;
        deliveries.extend(
            self.matched
                .iter()
                .filter_map(|&id| Some((rules.get(id)?.slot, id))),
        );
        // Group by connection: one notification per connection, listing every rule of it
        // that matched.
        deliveries.sort_unstable();
        let position = id.and_then(|id| Some(self.history.as_ref()?.text(id)));
        let tail = wire::event_tail_at(
            position.as_deref(),
            &event.source,
            &event.detail_type,
            &event.json,
        );
        // One RequestId per event: each connection still sees a new one in every
        // notification, and connections that matched the same rule names share one frame
        // (a reference-counted buffer) instead of a copy of the event each.
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut frames: Vec<(Vec<&str>, Utf8Bytes)> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut refused: Vec<(u32, bool)> = Vec::new();
        let mut sent = 0u64;
        let mut written = 0u64;
        let now = std::time::Instant::now();
        for group in deliveries.chunk_by(|a, b| a.0 == b.0) {
            names.clear();
            names.extend(
                group
                    .iter()
                    .filter_map(|(_, id)| Some(&*rules.get(*id)?.name)),
            );
            if names.len() > 1 {
                names.sort_unstable();
            }
            let frame = match frames.iter().find(|(cached, _)| *cached == names) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let frame = Utf8Bytes::from(wire::event_frame(
                        &request_id,
                        names.iter().copied(),
                        &tail,
                    ));
                    if frames.len() < MAX_SHARED_FRAMES {
                        frames.push((names.clone(), frame.clone()));
                    }
                    frame
                }
            };
            let slot = group[0].0;
            let Some(entry) = self.slots.get_mut(slot) else {
                continue;
            };
            if entry.hold.is_some() {
                // Resuming: the replay will carry this event.
                continue;
            }
            if let Some(skip) = entry.skip_until {
                if id.is_some_and(|id| id <= skip) {
                    // Delivered on the node the client resumed from.
                    continue;
                }
                entry.skip_until = None;
            }
            // Written here only while nothing waits behind this event (once a command
            // arrives, the rest of the fan-out goes to the sessions, on every worker, and
            // the dispatcher moves on), and not to a connection notified moments ago (its
            // session batches): see `DIRECT_WRITE_MAX_BATCH`.
            let recent = entry
                .last_notified
                .is_some_and(|last| now.saturating_duration_since(last) < DIRECT_WRITE_MIN_GAP);
            let direct = self.direct && !recent && waiting.is_empty();
            match entry
                .outbox
                .offer(frame, self.settings.max_queued_bytes, direct)
            {
                Offer::Written => {
                    sent += 1;
                    written += 1;
                    entry.notifications += 1;
                    entry.last_notified = Some(now);
                }
                Offer::Queued => {
                    sent += 1;
                    entry.notifications += 1;
                    entry.last_notified = Some(now);
                }
                Offer::Refused { too_slow } => refused.push((slot, too_slow)),
            }
        }
        drop(frames);
        drop(names);
        self.deliveries = deliveries;
        for (slot, too_slow) in refused {
            self.refuse(slot, too_slow);
        }
        telemetry::notifications_sent(sent, written);
        telemetry::event_dispatched(&event.id, &event.source, &event.detail_type, sent);
    }

    /// A connection whose queue refused a notification: closed as too slow (1013) when its
    /// queue was full, and forgotten with its rules either way.
    fn refuse(&mut self, slot: u32, too_slow: bool) {
        let Some(entry) = self.slots.get(slot) else {
            return;
        };
        let connection = entry.id;
        if too_slow {
            entry.outbox.stop(StopReason::SlowConsumer);
            telemetry::slow_consumer_closed(connection);
        }
        self.drop_connection(connection);
    }

    // ---- History: resume (see the module comment) ----

    /// Ends the connection's hold and queues, all at once, every retained event after its
    /// position that matches its rules now. Any error ends the hold too: the connection goes
    /// live from here and its client refetches its state.
    fn resume(
        &mut self,
        connection: ConnectionId,
        position: Option<String>,
    ) -> Result<usize, ResumeError> {
        let slot = *self.slot_of.get(&connection).ok_or(ResumeError::Gone)?;
        let entry = self.slots.get_mut(slot).ok_or(ResumeError::Gone)?;
        let (held_position, held_at) = entry.hold.take().ok_or(ResumeError::NotHeld)?;
        let log = self.history.as_mut().ok_or(ResumeError::Disabled)?;
        log.expire(std::time::Instant::now());
        let position = position.unwrap_or(held_position);
        let after = if position.is_empty() {
            held_at
        } else {
            log.resolve(&position)?
        };
        if after > log.newest() {
            // A shared log's position this node has not read up to yet: nothing to replay,
            // and the live events up to it are skipped.
            entry.skip_until = Some(after);
            return Ok(0);
        }
        // Only this connection's own patterns are evaluated against the retained events: the
        // cost of a resume is its rules times the retained events, whatever the number of
        // other connections (matching through the whole index made a storm of N resumes
        // cost N² when the events match everyone). A connection resumes at most once. Each
        // pattern's matches come from the log's replay memo (`MemoryLog::matching`), so the
        // connections that resume with the same patterns share one evaluation.
        let mut own: Vec<(&str, &Pattern)> = entry
            .rules
            .iter()
            .filter_map(|(name, id)| Some((&**name, self.index.pattern(*id)?)))
            .collect();
        own.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let max_replay = self
            .settings
            .history
            .max_replay
            .min(self.settings.max_queued_messages);
        // (event, rule) pairs, in event order and then name order (`own` is sorted), as the
        // live notifications list the names; `None` when a rule matches more than
        // `max_replay` events, which the replay below refuses as it always did.
        let mut hits: Option<Vec<(LogId, usize)>> = Some(Vec::new());
        for (rule, (_, pattern)) in own.iter().enumerate() {
            let ids = log.matching(after, pattern, max_replay);
            match (&mut hits, ids) {
                (Some(hits), Some(ids)) => hits.extend(ids.into_iter().map(|id| (id, rule))),
                _ => {
                    hits = None;
                    break;
                }
            }
        }
        let log = &*log;
        let matched: Box<dyn Iterator<Item = (LogId, &Arc<Event>, Vec<&str>)>> = match hits {
            Some(mut hits) => {
                hits.sort_unstable();
                let events: Vec<_> = hits
                    .chunk_by(|a, b| a.0 == b.0)
                    .filter_map(|group| {
                        let id = group[0].0;
                        let names = group.iter().map(|(_, rule)| own[*rule].0).collect();
                        Some((id, log.get(id)?, names))
                    })
                    .collect();
                Box::new(events.into_iter())
            }
            None => Box::new(log.after(after).filter_map(|(id, event)| {
                let names: Vec<&str> = own
                    .iter()
                    .filter(|(_, pattern)| pattern.matches(&event.value))
                    .map(|(name, _)| *name)
                    .collect();
                (!names.is_empty()).then_some((id, event, names))
            })),
        };
        // Frames are built as events match, and the replay stops as soon as it is over
        // `max_replay` or the queue's byte bound: a resume never builds more than one queue.
        let max_bytes = self.settings.max_queued_bytes;
        let mut frames: Vec<Utf8Bytes> = Vec::new();
        let mut bytes = 0usize;
        let mut refused = None;
        for (id, event, names) in matched {
            if frames.len() == max_replay {
                telemetry::limit_rejected("history.max_replay");
                refused = Some(ResumeError::TooMany(max_replay));
                break;
            }
            let position = log.text(id);
            let tail = wire::event_tail_at(
                Some(&position),
                &event.source,
                &event.detail_type,
                &event.json,
            );
            let request_id = uuid::Uuid::new_v4().to_string();
            let frame = Utf8Bytes::from(wire::event_frame(&request_id, names, &tail));
            bytes += frame.len();
            frames.push(frame);
            if bytes > max_bytes {
                telemetry::limit_rejected("max_queued_bytes");
                refused = Some(ResumeError::QueueFull(frames.len(), bytes));
                break;
            }
        }
        drop(own);
        if let Some(error) = refused {
            return Err(error);
        }
        let count = frames.len();
        let entry = self.slots.get(slot).ok_or(ResumeError::Gone)?;
        match entry.outbox.offer_all(frames, max_bytes) {
            Offer::Queued | Offer::Written => Ok(count),
            Offer::Refused { too_slow: true } => {
                telemetry::limit_rejected("max_queued_bytes");
                Err(ResumeError::QueueFull(count, bytes))
            }
            Offer::Refused { too_slow: false } => Err(ResumeError::Gone),
        }
    }

    /// Publishes the log's size and evictions to the metrics (once per batch of commands).
    fn report_history(&mut self) {
        if let Some(log) = &mut self.history {
            let evicted = log.take_evictions();
            telemetry::history_retained(
                log.len(),
                log.bytes(),
                [
                    ("max_events", evicted.count),
                    ("max_bytes", evicted.bytes),
                    ("max_age", evicted.age),
                ],
            );
        }
    }

    fn keep_alive(&mut self) {
        let mut refused = Vec::new();
        for (slot, entry) in self.slots.iter() {
            let frame = Utf8Bytes::from(wire::keep_alive(&uuid::Uuid::new_v4().to_string()));
            if let Offer::Refused { too_slow } =
                entry
                    .outbox
                    .offer(frame, self.settings.max_queued_bytes, false)
            {
                refused.push((slot, too_slow));
            }
        }
        for (slot, too_slow) in refused {
            self.refuse(slot, too_slow);
        }
    }
}
