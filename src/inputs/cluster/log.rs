//! The shared-log backplanes' common part (`backend = "redis_stream" | "jetstream"`): the
//! queue between the hub and the task that appends events to the shared log, and the policy
//! at that queue.
//!
//! With a shared log, an event a node accepts is not delivered by that node at once: it is
//! appended to the log, and every node (this one included) delivers what it reads from the
//! log, in the log's order, under the log's ids. So positions are the same on every node and
//! survive a gateway restart, and a client resumes on any node (see `history`).
//!
//! Backpressure: the queue holds at most `cluster.forward_queue` batches, each keeping its
//! room in the ingest backlog until it is appended. Ingest is refused with 503 when the queue
//! is full or the log is unreachable (nothing is accepted that cannot be positioned); broker
//! sources wait. A batch whose append failed stays at the head of the queue and is appended
//! again once the log is back, so what was accepted is not lost while the gateway runs.
//! Does not own reading the log (each backend's reader does) or retention (the log's own
//! limits, set from `[history]`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use eventgate_protocol::envelope::Event;

use crate::hub::{HubStopped, PublishError};
use crate::limits::BacklogHeld;
use crate::telemetry;

/// A batch on its way to the shared log, holding its room in the ingest backlog.
#[derive(Debug)]
pub(super) struct Append {
    pub events: Vec<Arc<Event>>,
    /// Freed once the batch is appended.
    pub _held: BacklogHeld,
}

/// The hub's end of the queue to the shared log.
#[derive(Debug, Clone)]
pub struct LogAppender {
    sender: mpsc::Sender<Append>,
    /// The appending task is connected to the log.
    up: Arc<AtomicBool>,
}

impl LogAppender {
    pub(super) fn new(capacity: usize) -> (LogAppender, mpsc::Receiver<Append>, Arc<AtomicBool>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let up = Arc::new(AtomicBool::new(false));
        (
            LogAppender {
                sender,
                up: Arc::clone(&up),
            },
            receiver,
            up,
        )
    }

    /// Queues a batch, waiting for room (broker sources).
    pub async fn append(
        &self,
        events: Vec<Arc<Event>>,
        held: BacklogHeld,
    ) -> Result<(), HubStopped> {
        self.sender
            .send(Append {
                events,
                _held: held,
            })
            .await
            .map_err(|_| HubStopped)
    }

    /// Queues a batch without waiting (ingest): refused when the log is unreachable or the
    /// queue is full.
    pub fn try_append(
        &self,
        events: Vec<Arc<Event>>,
        held: BacklogHeld,
    ) -> Result<(), PublishError> {
        let count = events.len() as u64;
        if !self.up.load(Ordering::Acquire) {
            telemetry::cluster_not_forwarded(count, "log_unavailable");
            return Err(PublishError::LogUnavailable("unreachable"));
        }
        self.sender
            .try_send(Append {
                events,
                _held: held,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => {
                    telemetry::cluster_not_forwarded(count, "queue_full");
                    PublishError::LogUnavailable("behind (cluster.forward_queue is full)")
                }
                mpsc::error::TrySendError::Closed(_) => PublishError::Stopped(HubStopped),
            })
    }
}

/// Sets the appender's `up` flag for the lifetime of a connection to the log.
pub(super) struct Up(pub Arc<AtomicBool>);

impl Up {
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Release);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Takes what is queued (waiting for at least one batch) into `pending`, at most `max`
/// events unless one batch alone is larger. `false` when the queue is closed and empty.
pub(super) async fn next_appends(
    receiver: &mut mpsc::Receiver<Append>,
    pending: &mut Vec<Append>,
    max: usize,
) -> bool {
    if pending.is_empty() && receiver.recv_many(pending, 1).await == 0 {
        return false;
    }
    let mut events: usize = pending.iter().map(|append| append.events.len()).sum();
    while events < max {
        match receiver.try_recv() {
            Ok(append) => {
                events += append.events.len();
                pending.push(append);
            }
            Err(_) => break,
        }
    }
    true
}

/// Counts what could not be appended before the stop (the log stayed unreachable).
pub(super) fn count_lost(pending: &[Append], receiver: &mut mpsc::Receiver<Append>) {
    let mut lost: u64 = pending
        .iter()
        .map(|append| append.events.len() as u64)
        .sum();
    while let Ok(append) = receiver.try_recv() {
        lost += append.events.len() as u64;
    }
    if lost > 0 {
        telemetry::cluster_not_forwarded(lost, "log_unavailable");
    }
}

/// One connection of a shared log's appender: the backend's part of [`append`].
pub(super) trait AppendSession {
    /// Connects and appends what the hub queues (through [`Appending::until_stopped`]) until
    /// the queue closes or the node stops; an error ends the connection and leaves the
    /// unwritten batch in `pending`.
    async fn run(appending: Appending<'_>) -> Result<(), super::ClusterError>;
}

/// What [`append`] lends one connection of an appender for its life.
pub(super) struct Appending<'a> {
    pub node: &'a super::Node,
    /// The hub's queue of events to append.
    pub receiver: &'a mut mpsc::Receiver<Append>,
    /// What a failed connection left unappended: it goes first.
    pub pending: &'a mut Vec<Append>,
    pub up: &'a Up,
    pub status: &'a crate::readiness::Component,
    pub backoff: &'a mut crate::backoff::Backoff,
}

impl Appending<'_> {
    /// The log is reachable: ingest may take events again, `/readyz` says so, and the next
    /// reconnect starts from the shortest wait.
    pub fn connected(&mut self) {
        self.up.set(true);
        self.status.set(true, "connected");
        self.backoff.reset();
    }

    /// [`append_until_stopped`] on this connection's queue.
    pub async fn until_stopped(
        &mut self,
        batch: usize,
        writer: &mut impl Writer,
    ) -> Result<(), super::ClusterError> {
        append_until_stopped(self.node, self.receiver, self.pending, batch, writer).await
    }
}

/// Runs a shared log's appender, connection after connection (see `Reconnects`), until the
/// queue closes or the node stops. A batch a failed connection left in `pending` goes first
/// on the next one; what was never appended is counted at the end.
pub(super) async fn append<S: AppendSession>(
    node: super::Node,
    mut receiver: mpsc::Receiver<Append>,
    up: Up,
    status: crate::readiness::Component,
) {
    let mut reconnects = super::Reconnects::new(&node, &status);
    let mut pending: Vec<Append> = Vec::new();
    loop {
        let result = S::run(Appending {
            node: &node,
            receiver: &mut receiver,
            pending: &mut pending,
            up: &up,
            status: &status,
            backoff: &mut reconnects.backoff,
        })
        .await;
        if result.is_err() {
            up.set(false);
        }
        if !reconnects.again(result).await {
            break;
        }
    }
    up.set(false);
    count_lost(&pending, &mut receiver);
}

/// How a shared log's appender writes, for [`append_until_stopped`].
pub(super) trait Writer {
    /// Appends every pending event; empties `pending` only when it worked.
    async fn write(
        &mut self,
        node: &super::Node,
        pending: &mut Vec<Append>,
    ) -> Result<(), super::ClusterError>;
}

/// Appends what the hub queues, `batch` events at a time, until the queue closes or the node
/// stops (then what was accepted before the stop is appended too). An error leaves the
/// unwritten batch in `pending` for the next connection.
async fn append_until_stopped(
    node: &super::Node,
    receiver: &mut mpsc::Receiver<Append>,
    pending: &mut Vec<Append>,
    batch: usize,
    writer: &mut impl Writer,
) -> Result<(), super::ClusterError> {
    loop {
        let stopping = tokio::select! {
            biased;
            () = node.shutdown.cancelled() => true,
            more = next_appends(receiver, pending, batch) => {
                if !more {
                    return Ok(());
                }
                false
            }
        };
        if stopping {
            while let Ok(append) = receiver.try_recv() {
                pending.push(append);
            }
            if !pending.is_empty() {
                writer.write(node, pending).await?;
            }
            return Ok(());
        }
        writer.write(node, pending).await?;
    }
}
