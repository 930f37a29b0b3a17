//! Telling sessions to stop: one [`StopSignal`] per connection, set by the dispatcher when
//! the connection cannot keep up or by shutdown, and the [`SessionStops`] registry through
//! which shutdown reaches every session, announced or not.
//!
//! A session checks its signal on every wake-up, so the check is one atomic load in memory
//! the session owns, and waiting registers the task's waker without a lock. (A child
//! `CancellationToken` per connection took a mutex on every check and on every connect and
//! disconnect.) Does not own what a session does when told to stop (see `session`).

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Why a session must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its outbound queue overflowed (1013).
    SlowConsumer,
    /// The server is draining (1001).
    ShuttingDown,
}

const RUNNING: u8 = 0;
const SLOW_CONSUMER: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

/// One connection's stop flag. The first reason set wins.
#[derive(Debug, Default)]
pub struct StopSignal {
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl StopSignal {
    /// Sets `reason` (unless a reason is already set) and wakes the session.
    pub fn stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::SlowConsumer => SLOW_CONSUMER,
            StopReason::ShuttingDown => SHUTTING_DOWN,
        };
        let _ = self
            .reason
            .compare_exchange(RUNNING, code, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// The reason, once one is set.
    pub fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::Acquire) {
            SLOW_CONSUMER => Some(StopReason::SlowConsumer),
            SHUTTING_DOWN => Some(StopReason::ShuttingDown),
            _ => None,
        }
    }

    fn poll_stopped(&self, context: &mut Context<'_>) -> Poll<StopReason> {
        if let Some(reason) = self.reason() {
            return Poll::Ready(reason);
        }
        self.waker.register(context.waker());
        // A stop between the first check and the registration woke no one: look again.
        match self.reason() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }

    /// Completes with the reason once one is set. Keep the future across wake-ups: each
    /// poll is one load and, while running, one waker registration.
    pub fn stopped(&self) -> impl Future<Output = StopReason> + '_ {
        std::future::poll_fn(move |context| self.poll_stopped(context))
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
        let signal = Arc::new(StopSignal::default());
        let mut registry = self.lock();
        if registry.shutting_down {
            signal.stop(StopReason::ShuttingDown);
        }
        let entry = Some(Arc::clone(&signal));
        let index = match registry.free.pop() {
            Some(index) => {
                registry.signals[index] = entry;
                index
            }
            None => {
                registry.signals.push(entry);
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

    /// Sessions registered now.
    pub fn len(&self) -> usize {
        let registry = self.lock();
        registry.signals.len() - registry.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.stops.lock();
        if let Some(slot) = registry.signals.get_mut(self.index) {
            *slot = None;
            registry.free.push(self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_wakes_the_waiter() {
        let signal = Arc::new(StopSignal::default());
        let waiter = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.stopped().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(signal.reason(), None);
        signal.stop(StopReason::SlowConsumer);
        signal.stop(StopReason::ShuttingDown);
        assert_eq!(waiter.await.ok(), Some(StopReason::SlowConsumer));
        assert_eq!(signal.reason(), Some(StopReason::SlowConsumer));
    }

    #[tokio::test]
    async fn stop_all_reaches_registered_and_later_sessions_and_slots_are_reused() {
        let stops = Arc::new(SessionStops::default());
        let first = stops.register();
        let second = stops.register();
        drop(second);
        let third = stops.register();
        assert_eq!(third.index, 1, "a freed slot is reused");
        assert_eq!(stops.len(), 2);
        stops.stop_all();
        assert_eq!(first.signal.reason(), Some(StopReason::ShuttingDown));
        assert_eq!(third.signal.reason(), Some(StopReason::ShuttingDown));
        let late = stops.register();
        assert_eq!(late.signal.stopped().await, StopReason::ShuttingDown);
        drop((first, third, late));
        assert!(stops.is_empty());
    }
}
