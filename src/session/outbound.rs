//! One connection's outbound queue: the notifications the dispatcher has handed over and the
//! session has not yet written, bounded in messages and in bytes.
//!
//! Owns the bound check, the order of messages and the wake-up of the session when its queue
//! stops being empty. An offer never waits: it is queued or refused on the spot, and the
//! caller (the dispatcher, see `hub`) decides what a refusal means. Does not own sockets or
//! the slow-consumer policy.
//!
//! A mutex over a `VecDeque` instead of a channel: an idle connection's queue holds no
//! buffer at all (a tokio channel allocates a block of 32 slots per connection up front), and
//! neither end takes a semaphore.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::stop::{StopReason, StopSignal};

/// Above this many slots, a queue that has drained gives its buffer back.
const KEPT_CAPACITY: usize = 64;

/// The state both ends share. It lives inside the connection's [`StopSignal`], so that the
/// dispatcher's offer and the session's turn, which read both, touch one allocation (each
/// separate allocation was a cache miss per notification at 10,000 connections).
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    /// The session's task, woken when the queue stops being empty or the dispatcher lets go.
    reader: AtomicWaker,
}

#[derive(Debug, Default)]
struct QueueState {
    /// The oldest message, held in the queue's own allocation: a connection that is sent one
    /// notification at a time (the common case) never allocates `later`, and an offer and a
    /// take touch no memory beyond this struct (each is a cache miss at 10,000 connections).
    next: Option<Utf8Bytes>,
    /// The messages after `next`, in order (empty whenever `next` is `None`).
    later: VecDeque<Utf8Bytes>,
    bytes: usize,
    /// The session dropped its end: every offer is refused.
    reader_gone: bool,
    /// The dispatcher dropped its end: the session reads what is queued, then the end.
    writer_gone: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl QueueState {
    fn len(&self) -> usize {
        usize::from(self.next.is_some()) + self.later.len()
    }

    fn push(&mut self, message: Utf8Bytes) {
        self.bytes += message.len();
        if self.next.is_none() {
            self.next = Some(message);
        } else {
            self.later.push_back(message);
        }
    }

    fn pop(&mut self) -> Option<Utf8Bytes> {
        let message = self.next.take()?;
        self.bytes -= message.len();
        self.next = self.later.pop_front();
        if self.later.is_empty() && self.later.capacity() > KEPT_CAPACITY {
            self.later = VecDeque::new();
        }
        Some(message)
    }

    fn clear(&mut self) {
        self.next = None;
        self.later = VecDeque::new();
        self.bytes = 0;
    }
}

/// The dispatcher's end of a connection's outbound queue.
#[derive(Debug)]
pub struct Outbox {
    /// The session's signal, which holds the queue; set when the connection cannot keep up.
    signal: Arc<StopSignal>,
    max_messages: usize,
}

/// The session's end of its outbound queue.
#[derive(Debug)]
pub struct Inbox {
    signal: Arc<StopSignal>,
}

/// The two ends of a connection's bounded outbound queue (at least one message), which is
/// held by `signal` (the session's own, see `stop`). The dispatcher sets the signal when
/// the queue overflows. A signal has one queue: call this once per signal.
pub fn outbound_queue(max_messages: usize, signal: Arc<StopSignal>) -> (Outbox, Inbox) {
    (
        Outbox {
            signal: Arc::clone(&signal),
            max_messages: max_messages.max(1),
        },
        Inbox { signal },
    )
}

/// What became of one offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue is full (`too_slow`) or its session has ended.
    Refused {
        too_slow: bool,
    },
}

impl Outbox {
    /// Stops the session (a slow consumer).
    pub fn stop(&self, reason: StopReason) {
        self.signal.stop(reason);
    }

    fn queue(&self) -> &Queue {
        self.signal.outbound()
    }

    /// Messages and bytes queued and not yet taken by the session (for the admin console).
    pub fn queued(&self) -> (usize, usize) {
        let state = self.queue().lock();
        (state.len(), state.bytes)
    }

    /// Queues `frame` without waiting when the queue has room in messages and in bytes (an
    /// empty queue always takes one frame, however large).
    pub fn offer(&self, frame: Utf8Bytes, max_queued_bytes: usize) -> Offer {
        let mut state = self.queue().lock();
        if state.reader_gone {
            return Offer::Refused { too_slow: false };
        }
        let queued = state.bytes;
        if state.len() >= self.max_messages
            || (queued != 0 && queued + frame.len() > max_queued_bytes)
        {
            return Offer::Refused { too_slow: true };
        }
        let was_empty = state.next.is_none();
        state.push(frame);
        drop(state);
        // A session that found the queue empty has registered (or is about to register and
        // then look again), so only this transition needs a wake-up.
        if was_empty {
            self.queue().reader.wake();
        }
        Offer::Queued
    }
}

impl Outbox {
    /// Queues all of `frames` or none of them (a replay, see `history`): refused when they
    /// do not all fit in messages and in bytes beside what is already queued.
    pub fn offer_all(&self, frames: Vec<Utf8Bytes>, max_queued_bytes: usize) -> Offer {
        let mut state = self.queue().lock();
        if state.reader_gone {
            return Offer::Refused { too_slow: false };
        }
        let bytes: usize = frames.iter().map(|frame| frame.len()).sum();
        if state.len() + frames.len() > self.max_messages || state.bytes + bytes > max_queued_bytes
        {
            return Offer::Refused { too_slow: true };
        }
        if frames.is_empty() {
            return Offer::Queued;
        }
        let was_empty = state.next.is_none();
        for frame in frames {
            state.push(frame);
        }
        drop(state);
        if was_empty {
            self.queue().reader.wake();
        }
        Offer::Queued
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.queue().lock().writer_gone = true;
        self.queue().reader.wake();
    }
}

impl Inbox {
    fn queue(&self) -> &Queue {
        self.signal.outbound()
    }

    /// The next message; `Ready(None)` once the dispatcher has let go of the connection and
    /// nothing is left.
    pub fn poll_recv(&mut self, context: &mut Context<'_>) -> Poll<Option<Utf8Bytes>> {
        if let Some(taken) = self.take() {
            return Poll::Ready(taken);
        }
        self.queue().reader.register(context.waker());
        // An offer between the look above and the registration woke no one: look again.
        match self.take() {
            Some(taken) => Poll::Ready(taken),
            None => Poll::Pending,
        }
    }

    /// A message that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        self.take().flatten()
    }

    /// `Some(Some(message))`, `Some(None)` at the end, `None` when empty for now.
    fn take(&mut self) -> Option<Option<Utf8Bytes>> {
        let mut state = self.queue().lock();
        match state.pop() {
            Some(message) => Some(Some(message)),
            None if state.writer_gone => Some(None),
            None => None,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.queue().lock();
        state.reader_gone = true;
        state.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::CountingTask;
    use std::task::Waker;

    fn queue(max_messages: usize) -> (Outbox, Inbox) {
        outbound_queue(max_messages, Arc::new(StopSignal::default()))
    }

    fn frame(text: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(text)
    }

    #[test]
    fn messages_come_out_in_order_and_free_their_bytes() {
        let (outbox, mut inbox) = queue(8);
        for text in ["a", "bb", "ccc"] {
            assert_eq!(outbox.offer(frame(text), 6), Offer::Queued);
        }
        // Six bytes queued: a seventh does not fit until one is read.
        assert_eq!(
            outbox.offer(frame("d"), 6),
            Offer::Refused { too_slow: true }
        );
        assert_eq!(inbox.try_recv().as_deref(), Some("a"));
        assert_eq!(outbox.offer(frame("d"), 6), Offer::Queued);
        let rest: Vec<String> = std::iter::from_fn(|| inbox.try_recv())
            .map(|message| message.to_string())
            .collect();
        assert_eq!(rest, ["bb", "ccc", "d"]);
        assert_eq!(inbox.try_recv(), None);
    }

    #[test]
    fn the_message_bound_holds_and_an_empty_queue_takes_one_large_frame() {
        let (outbox, mut inbox) = queue(2);
        assert_eq!(
            outbox.offer(frame("larger than the byte limit"), 4),
            Offer::Queued
        );
        assert_eq!(
            outbox.offer(frame("x"), 4),
            Offer::Refused { too_slow: true }
        );
        assert!(inbox.try_recv().is_some());
        assert_eq!(outbox.offer(frame("x"), 100), Offer::Queued);
        assert_eq!(outbox.offer(frame("y"), 100), Offer::Queued);
        assert_eq!(
            outbox.offer(frame("z"), 100),
            Offer::Refused { too_slow: true }
        );
    }

    #[test]
    fn a_queue_without_its_session_refuses_as_gone_not_slow() {
        let (outbox, inbox) = queue(2);
        drop(inbox);
        assert_eq!(
            outbox.offer(frame("x"), 100),
            Offer::Refused { too_slow: false }
        );
    }

    #[test]
    fn the_session_reads_what_is_left_then_the_end() {
        let (outbox, mut inbox) = queue(4);
        assert_eq!(outbox.offer(frame("last"), 100), Offer::Queued);
        drop(outbox);
        let waker = Waker::from(Arc::new(CountingTask::default()));
        let mut context = Context::from_waker(&waker);
        assert_eq!(
            inbox
                .poll_recv(&mut context)
                .map(|m| m.map(|m| m.to_string())),
            Poll::Ready(Some("last".to_owned()))
        );
        assert_eq!(inbox.poll_recv(&mut context), Poll::Ready(None));
    }

    #[test]
    fn a_waiting_session_is_woken_once_when_its_queue_fills_and_when_it_ends() {
        let (outbox, mut inbox) = queue(8);
        let counter = Arc::new(CountingTask::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut context = Context::from_waker(&waker);
        assert_eq!(inbox.poll_recv(&mut context), Poll::Pending);
        assert_eq!(outbox.offer(frame("a"), 100), Offer::Queued);
        assert_eq!(outbox.offer(frame("b"), 100), Offer::Queued);
        assert_eq!(counter.wakes(), 1);
        assert!(inbox.try_recv().is_some() && inbox.try_recv().is_some());
        assert_eq!(inbox.poll_recv(&mut context), Poll::Pending);
        drop(outbox);
        assert_eq!(counter.wakes(), 2);
        assert_eq!(inbox.poll_recv(&mut context), Poll::Ready(None));
    }

    #[test]
    fn offer_all_queues_everything_or_nothing() {
        let (outbox, mut inbox) = queue(4);
        assert_eq!(outbox.offer(frame("a"), 100), Offer::Queued);
        assert_eq!(
            outbox.offer_all(vec![frame("b"), frame("c"), frame("d"), frame("e")], 100),
            Offer::Refused { too_slow: true }
        );
        assert_eq!(
            outbox.offer_all(vec![frame("b"), frame("cc")], 3),
            Offer::Refused { too_slow: true }
        );
        assert_eq!(
            outbox.offer_all(vec![frame("b"), frame("c")], 100),
            Offer::Queued
        );
        let all: Vec<String> = std::iter::from_fn(|| inbox.try_recv())
            .map(|message| message.to_string())
            .collect();
        assert_eq!(all, ["a", "b", "c"]);
    }

    #[test]
    fn one_message_at_a_time_allocates_no_buffer() {
        let (outbox, mut inbox) = queue(8);
        for text in ["a", "b", "c"] {
            assert_eq!(outbox.offer(frame(text), 100), Offer::Queued);
            assert_eq!(inbox.try_recv().as_deref(), Some(text));
        }
        assert_eq!(inbox.queue().lock().later.capacity(), 0);
        assert_eq!(outbox.queued(), (0, 0));
        // Two queued: the second waits in the buffer, in order, and counts.
        assert_eq!(outbox.offer(frame("dd"), 100), Offer::Queued);
        assert_eq!(outbox.offer(frame("e"), 100), Offer::Queued);
        assert_eq!(outbox.queued(), (2, 3));
        assert_eq!(inbox.try_recv().as_deref(), Some("dd"));
        assert_eq!(inbox.try_recv().as_deref(), Some("e"));
        assert_eq!(inbox.try_recv(), None);
    }

    #[test]
    fn a_drained_queue_gives_back_a_large_buffer() {
        let (outbox, mut inbox) = queue(1024);
        for _ in 0..200 {
            assert_eq!(outbox.offer(frame("x"), 1 << 20), Offer::Queued);
        }
        while inbox.try_recv().is_some() {}
        assert!(inbox.queue().lock().later.capacity() <= KEPT_CAPACITY);
    }
}
