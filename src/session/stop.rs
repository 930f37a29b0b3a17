//! Telling sessions to stop: one [`StopSignal`] per connection, set by the dispatcher when
//! the connection cannot keep up or by shutdown, and the [`SessionStops`] registry through
//! which shutdown reaches every session, announced or not.
//!
//! A session checks its signal on every wake-up, so the check is one atomic load in memory
//! the session owns, and waiting registers the task's waker without a lock. (A child
//! `CancellationToken` per connection took a mutex on every check and on every connect and
//! disconnect.) The same signal is the waker of the session's socket and timer, so that a
//! turn knows whether they woke it. The signal's allocation also carries the connection's
//! outbound queue, whose logic `outbound` owns: one allocation for what a notification's
//! wake-up reads. Does not own what a session does when told to stop (see `session`).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

use super::outbound::Queue;

/// Why a session must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its outbound queue overflowed (1013).
    SlowConsumer,
    /// The server is draining (1001).
    ShuttingDown,
    /// An operator closed it through the admin API, with the code and reason recorded by
    /// [`SessionStops::disconnect`].
    Disconnected,
    /// The shared log moved past events this node had not read (1012): the client must
    /// resume to learn of the gap.
    LogGap,
}

/// The close frame an operator chose for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorClose {
    pub code: u16,
    pub reason: String,
}

const RUNNING: u8 = 0;
const SLOW_CONSUMER: u8 = 1;
const SHUTTING_DOWN: u8 = 2;
const DISCONNECTED: u8 = 3;
const LOG_GAP: u8 = 4;

/// One connection's stop flag, the waker its session hands to its socket and timer, and
/// its outbound queue (see `outbound`, which alone reads and writes it).
///
/// All three live in one small allocation because the session reads them on every wake-up:
/// `reason` at the top of each turn, `woken` to learn whether the socket, the timer or a
/// stop woke it (a turn woken only by a queued notification polls neither again, since
/// each such poll registers a waker anew, the socket's under a lock). The first reason set
/// wins.
#[derive(Debug)]
pub struct StopSignal {
    reason: AtomicU8,
    woken: AtomicBool,
    task: AtomicWaker,
    outbound: Queue,
}

impl Default for StopSignal {
    /// Marked as woken, so that a session's first turn polls (and registers) everything.
    fn default() -> Self {
        Self {
            reason: AtomicU8::new(RUNNING),
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
            outbound: Queue::default(),
        }
    }
}

impl StopSignal {
    /// Sets `reason` (unless a reason is already set) and wakes the session.
    pub fn stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::SlowConsumer => SLOW_CONSUMER,
            StopReason::ShuttingDown => SHUTTING_DOWN,
            StopReason::Disconnected => DISCONNECTED,
            StopReason::LogGap => LOG_GAP,
        };
        let _ = self
            .reason
            .compare_exchange(RUNNING, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake_task();
    }

    /// The connection's outbound queue (its two ends come from `outbound::outbound_queue`).
    pub(crate) fn outbound(&self) -> &Queue {
        &self.outbound
    }

    /// The reason, once one is set.
    pub fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::Acquire) {
            SLOW_CONSUMER => Some(StopReason::SlowConsumer),
            SHUTTING_DOWN => Some(StopReason::ShuttingDown),
            DISCONNECTED => Some(StopReason::Disconnected),
            LOG_GAP => Some(StopReason::LogGap),
            _ => None,
        }
    }

    /// Records a wake-up for the session's next turn without waking it (a source became
    /// ready and is not registered any more, or the timer moved).
    pub fn mark(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// True once after the socket, the timer or a stop woke the session (or after `mark`).
    pub fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// The task to wake. A wake consumes it and marks the signal, so a session registers
    /// again when `take_woken` is true, before it polls its sources.
    pub fn register(&self, task: &Waker) {
        self.task.register(task);
    }

    fn wake_task(&self) {
        self.mark();
        self.task.wake();
    }
}

/// The socket's and the timer's waker: records the wake-up, then wakes the task.
impl Wake for StopSignal {
    fn wake(self: Arc<Self>) {
        self.wake_task();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_task();
    }
}

/// Every running session's signal, so that shutdown can stop them all.
#[derive(Debug, Default)]
pub struct SessionStops {
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    shutting_down: bool,
    signals: Vec<Option<Arc<StopSignal>>>,
    free: Vec<usize>,
    /// The connection id of each slot of `signals` (0: registered without one).
    connections: Vec<u64>,
    /// Operator closes not yet read by their session, by slot.
    closes: std::collections::HashMap<usize, OperatorClose>,
}

/// A session's place in [`SessionStops`], given back on drop.
#[derive(Debug)]
pub struct Registration {
    stops: Arc<SessionStops>,
    index: usize,
    pub signal: Arc<StopSignal>,
}

impl SessionStops {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session's signal; already stopped when shutdown has begun.
    pub fn register(self: &Arc<Self>) -> Registration {
        self.register_connection(0)
    }

    /// [`register`](Self::register), under the connection's id so that
    /// [`disconnect`](Self::disconnect) can find it.
    pub fn register_connection(self: &Arc<Self>, connection: u64) -> Registration {
        let signal = Arc::new(StopSignal::default());
        let mut registry = self.lock();
        if registry.shutting_down {
            signal.stop(StopReason::ShuttingDown);
        }
        let entry = Some(Arc::clone(&signal));
        let index = match registry.free.pop() {
            Some(index) => {
                registry.signals[index] = entry;
                registry.connections[index] = connection;
                index
            }
            None => {
                registry.signals.push(entry);
                registry.connections.push(connection);
                registry.signals.len() - 1
            }
        };
        drop(registry);
        Registration {
            stops: Arc::clone(self),
            index,
            signal,
        }
    }

    /// Stops every registered session and every session registered from now on.
    pub fn stop_all(&self) {
        let signals: Vec<Arc<StopSignal>> = {
            let mut registry = self.lock();
            registry.shutting_down = true;
            registry.signals.iter().flatten().cloned().collect()
        };
        for signal in signals {
            signal.stop(StopReason::ShuttingDown);
        }
    }

    /// Stops connection `connection` with the operator's close; false when no running
    /// session has that id. A session already stopping keeps its first reason. (A scan of
    /// the registry: an operator's action, not a hot path.)
    pub fn disconnect(&self, connection: u64, close: OperatorClose) -> bool {
        let mut registry = self.lock();
        let Some(index) = registry
            .connections
            .iter()
            .zip(&registry.signals)
            .position(|(id, signal)| *id == connection && connection != 0 && signal.is_some())
        else {
            return false;
        };
        let Some(signal) = registry.signals[index].clone() else {
            return false;
        };
        if signal.reason().is_none() {
            registry.closes.insert(index, close);
        }
        drop(registry);
        signal.stop(StopReason::Disconnected);
        true
    }
}

impl Registration {
    /// The close an operator chose for this session, once it was disconnected.
    pub fn operator_close(&self) -> Option<OperatorClose> {
        self.stops.lock().closes.remove(&self.index)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.stops.lock();
        if let Some(slot) = registry.signals.get_mut(self.index) {
            *slot = None;
            registry.free.push(self.index);
        }
        registry.closes.remove(&self.index);
        if let Some(id) = registry.connections.get_mut(self.index) {
            *id = 0;
        }
    }
}

/// A stand-in for a task in unit tests: it counts its wake-ups.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct CountingTask(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl CountingTask {
    pub(crate) fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Wake for CountingTask {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(stops: &SessionStops) -> usize {
        let registry = stops.lock();
        registry.signals.len() - registry.free.len()
    }

    #[test]
    fn the_first_reason_wins_and_wakes_the_registered_task() {
        let signal = StopSignal::default();
        let task = Arc::new(CountingTask::default());
        assert!(
            signal.take_woken(),
            "a new signal makes the first turn poll everything"
        );
        assert!(!signal.take_woken());
        signal.register(&Waker::from(Arc::clone(&task)));
        assert_eq!(signal.reason(), None);
        signal.stop(StopReason::SlowConsumer);
        signal.stop(StopReason::ShuttingDown);
        assert_eq!(signal.reason(), Some(StopReason::SlowConsumer));
        assert_eq!(task.wakes(), 1, "a wake consumes the registration");
        assert!(signal.take_woken());
    }

    #[test]
    fn as_a_waker_it_marks_then_wakes_the_task() {
        let signal = Arc::new(StopSignal::default());
        let task = Arc::new(CountingTask::default());
        let _ = signal.take_woken();
        signal.register(&Waker::from(Arc::clone(&task)));
        let side = Waker::from(Arc::clone(&signal));
        side.wake_by_ref();
        assert_eq!(task.wakes(), 1);
        assert!(signal.take_woken());
        assert_eq!(signal.reason(), None, "a wake-up is not a stop");
        // Without a new registration a second wake reaches no task, but is still recorded.
        side.wake_by_ref();
        assert_eq!(task.wakes(), 1);
        assert!(signal.take_woken());
    }

    #[test]
    fn stop_all_reaches_registered_and_later_sessions_and_slots_are_reused() {
        let stops = Arc::new(SessionStops::default());
        let first = stops.register();
        let second = stops.register();
        drop(second);
        let third = stops.register();
        assert_eq!(third.index, 1, "a freed slot is reused");
        assert_eq!(registered(&stops), 2);
        stops.stop_all();
        assert_eq!(first.signal.reason(), Some(StopReason::ShuttingDown));
        assert_eq!(third.signal.reason(), Some(StopReason::ShuttingDown));
        let late = stops.register();
        assert_eq!(late.signal.reason(), Some(StopReason::ShuttingDown));
        drop((first, third, late));
        assert_eq!(registered(&stops), 0);
    }

    #[test]
    fn disconnect_finds_a_connection_by_id_and_hands_its_close_to_the_session() {
        let stops = Arc::new(SessionStops::default());
        let first = stops.register_connection(7);
        let other = stops.register_connection(8);
        let close = OperatorClose {
            code: 4000,
            reason: "bye".into(),
        };
        assert!(!stops.disconnect(9, close.clone()), "no such connection");
        assert!(!stops.disconnect(0, close.clone()), "0 is no connection");
        assert!(stops.disconnect(7, close.clone()));
        assert_eq!(first.signal.reason(), Some(StopReason::Disconnected));
        assert_eq!(other.signal.reason(), None);
        assert_eq!(first.operator_close(), Some(close.clone()));
        // A session already stopping keeps its reason and gets no operator close.
        other.signal.stop(StopReason::SlowConsumer);
        assert!(stops.disconnect(8, close.clone()));
        assert_eq!(other.signal.reason(), Some(StopReason::SlowConsumer));
        assert_eq!(other.operator_close(), None);
        drop(first);
        assert!(!stops.disconnect(7, close), "a finished session is gone");
    }
}
