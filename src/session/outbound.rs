//! One connection's outbound queue: the notifications the dispatcher has handed over and the
//! session has not yet written, bounded in messages and in bytes.
//!
//! Owns the bound check, the order of messages and the wake-up of the session when its queue
//! stops being empty. An offer never waits: it is queued or refused on the spot, and the
//! caller (the dispatcher, see `hub`) decides what a refusal means. Does not own the
//! slow-consumer policy.
//!
//! **Direct writes.** While a session is idle (parked with an empty queue and nothing of its
//! own half-written) it lets the dispatcher write a notification straight to its plain TCP
//! socket, without a non-blocking write's worth of waiting: one `writev` of the frame header
//! and the shared text, under the queue's lock, and no wake-up of the session's task at all.
//! A write the socket does not take whole is queued as usual, with the count of its bytes
//! already sent, and the session writes the rest. The session gives the permission only
//! while it holds nothing unsent (so reading its socket writes nothing), and withdraws it
//! (under the same lock) when it takes a message and before any other write, so the two
//! never write at once and frames never interleave. This is the hot path at moderate
//! rates: a notification then costs one system call on the dispatcher's thread instead of a
//! task wake-up, a poll of the session and the system call (`bench/findings.md`).
//!
//! A mutex over a `VecDeque` instead of a channel: an idle connection's queue holds no
//! buffer at all (a tokio channel allocates a block of 32 slots per connection up front), and
//! neither end takes a semaphore.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
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
    /// Bytes of `next`'s frame (header included) that a direct write already sent.
    started: usize,
    /// The session is idle and lets the dispatcher write to its socket (see the module
    /// comment); only ever true while `next` is `None`.
    direct: bool,
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

    /// Queues `message`; the session writes it (and then what follows) itself, so direct
    /// writes end until the session is idle again: none may overtake it.
    fn push(&mut self, message: Utf8Bytes) {
        self.direct = false;
        self.bytes += message.len();
        if self.next.is_none() {
            self.next = Some(message);
        } else {
            self.later.push_back(message);
        }
    }

    /// The oldest message and how many bytes of its frame are already on the wire.
    fn pop(&mut self) -> Option<(Utf8Bytes, usize)> {
        let message = self.next.take()?;
        let started = std::mem::take(&mut self.started);
        self.bytes -= message.len();
        self.next = self.later.pop_front();
        if self.later.is_empty() && self.later.capacity() > KEPT_CAPACITY {
            self.later = VecDeque::new();
        }
        Some((message, started))
    }

    fn clear(&mut self) {
        self.direct = false;
        self.started = 0;
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
    /// The connection's socket, for direct writes (plain TCP only).
    socket: Option<Arc<TcpStream>>,
}

/// The session's end of its outbound queue.
#[derive(Debug)]
pub struct Inbox {
    signal: Arc<StopSignal>,
    /// Bytes of the frame of the message last taken that a direct write already sent.
    started: usize,
}

/// The two ends of a connection's bounded outbound queue (at least one message), which is
/// held by `signal` (the session's own, see `stop`). The dispatcher sets the signal when
/// the queue overflows. A signal has one queue: call this once per signal.
pub fn outbound_queue(max_messages: usize, signal: Arc<StopSignal>) -> (Outbox, Inbox) {
    (
        Outbox {
            signal: Arc::clone(&signal),
            max_messages: max_messages.max(1),
            socket: None,
        },
        Inbox { signal, started: 0 },
    )
}

/// The largest RFC 6455 header of an unmasked frame.
const MAX_HEADER: usize = 10;

/// The header of a final, unmasked text frame of `len` bytes (tungstenite's own encoding),
/// and its length.
fn text_header(len: usize) -> ([u8; MAX_HEADER], usize) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut bytes = [0u8; MAX_HEADER];
    let mut rest = &mut bytes[..];
    // At most MAX_HEADER bytes: the write into the array does not fail.
    let _ = header.format(len as u64, &mut rest);
    let used = MAX_HEADER - rest.len();
    (bytes, used)
}

/// Encodes a notification (the text of an `Event` frame, or an echo mode's message) as a
/// WebSocket frame behind what `out` already holds: its RFC 6455 header (final, text,
/// unmasked), then the text. The same bytes a direct write sends.
pub fn encode_notification(frame: &Utf8Bytes, out: &mut Vec<u8>) {
    let (header, used) = text_header(frame.len());
    out.reserve(used + frame.len());
    out.extend_from_slice(&header[..used]);
    out.extend_from_slice(frame.as_bytes());
}

/// What became of one offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written to the socket whole by the caller (a direct write): the session was not woken.
    Written,
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

    /// Lets offers that ask for it write to `socket` directly while the session is idle.
    pub fn write_directly_to(&mut self, socket: Arc<TcpStream>) {
        self.socket = Some(socket);
    }

    /// Messages and bytes queued and not yet taken by the session (for the admin console).
    pub fn queued(&self) -> (usize, usize) {
        let state = self.queue().lock();
        (state.len(), state.bytes)
    }

    /// Queues `frame` without waiting when the queue has room in messages and in bytes (an
    /// empty queue always takes one frame, however large). With `direct`, and while the
    /// session is idle, writes it to the socket instead when the socket takes it whole
    /// (see the module comment).
    pub fn offer(&self, frame: Utf8Bytes, max_queued_bytes: usize, direct: bool) -> Offer {
        let mut state = self.queue().lock();
        if state.reader_gone {
            return Offer::Refused { too_slow: false };
        }
        if direct && state.direct && state.next.is_none() {
            if let Some(socket) = &self.socket {
                let (header, used) = text_header(frame.len());
                let parts = [
                    IoSlice::new(&header[..used]),
                    IoSlice::new(frame.as_bytes()),
                ];
                match socket.try_write_vectored(&parts) {
                    Ok(written) if written >= used + frame.len() => return Offer::Written,
                    // The rest is queued below; the session writes it first.
                    Ok(written) => state.started = written,
                    // Full (the session waits for room, under its write deadline) or broken
                    // (the session's own write fails and ends it): queued below either way.
                    Err(_) => {}
                }
            }
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
    /// nothing is left. The session calls this at the start of each turn. A message taken
    /// ends direct writes; when there is none (`Pending`), `allow_direct` says whether the
    /// dispatcher may write to the socket until the next call (see the module comment: the
    /// session allows it only when it holds nothing unsent, and ends it with
    /// [`Inbox::end_direct`] before it writes for another reason).
    pub fn poll_recv(
        &mut self,
        context: &mut Context<'_>,
        allow_direct: bool,
    ) -> Poll<Option<Utf8Bytes>> {
        if let Some(taken) = self.take(false) {
            return Poll::Ready(taken);
        }
        self.queue().reader.register(context.waker());
        // An offer between the look above and the registration woke no one: look again,
        // and when the queue is still empty, set the permission under the same lock.
        match self.take(allow_direct) {
            Some(taken) => Poll::Ready(taken),
            None => Poll::Pending,
        }
    }

    /// A message that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        self.take(false).flatten()
    }

    /// How many bytes of the frame of the message last taken a direct write already sent
    /// (the session skips them); zero after the first call.
    pub fn take_started(&mut self) -> usize {
        std::mem::take(&mut self.started)
    }

    /// Ends direct writes (the session is about to write: an Ack, a Ping, its closing
    /// handshake); once this returns, no direct write is under way.
    pub fn end_direct(&self) {
        self.queue().lock().direct = false;
    }

    /// `Some(Some(message))`, `Some(None)` at the end, `None` when empty for now. Direct
    /// writes end (under the lock, so none is under way once this returns), unless the
    /// queue is empty and `direct_if_empty` allows them.
    fn take(&mut self, direct_if_empty: bool) -> Option<Option<Utf8Bytes>> {
        let mut state = self.queue().lock();
        state.direct = false;
        match state.pop() {
            Some((message, started)) => {
                drop(state);
                self.started = started;
                Some(Some(message))
            }
            None if state.writer_gone => Some(None),
            None => {
                state.direct = direct_if_empty;
                None
            }
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
            assert_eq!(outbox.offer(frame(text), 6, false), Offer::Queued);
        }
        // Six bytes queued: a seventh does not fit until one is read.
        assert_eq!(
            outbox.offer(frame("d"), 6, false),
            Offer::Refused { too_slow: true }
        );
        assert_eq!(inbox.try_recv().as_deref(), Some("a"));
        assert_eq!(outbox.offer(frame("d"), 6, false), Offer::Queued);
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
            outbox.offer(frame("larger than the byte limit"), 4, false),
            Offer::Queued
        );
        assert_eq!(
            outbox.offer(frame("x"), 4, false),
            Offer::Refused { too_slow: true }
        );
        assert!(inbox.try_recv().is_some());
        assert_eq!(outbox.offer(frame("x"), 100, false), Offer::Queued);
        assert_eq!(outbox.offer(frame("y"), 100, false), Offer::Queued);
        assert_eq!(
            outbox.offer(frame("z"), 100, false),
            Offer::Refused { too_slow: true }
        );
    }

    #[test]
    fn a_queue_without_its_session_refuses_as_gone_not_slow() {
        let (outbox, inbox) = queue(2);
        drop(inbox);
        assert_eq!(
            outbox.offer(frame("x"), 100, false),
            Offer::Refused { too_slow: false }
        );
    }

    #[test]
    fn the_session_reads_what_is_left_then_the_end() {
        let (outbox, mut inbox) = queue(4);
        assert_eq!(outbox.offer(frame("last"), 100, false), Offer::Queued);
        drop(outbox);
        let waker = Waker::from(Arc::new(CountingTask::default()));
        let mut context = Context::from_waker(&waker);
        assert_eq!(
            inbox
                .poll_recv(&mut context, false)
                .map(|m| m.map(|m| m.to_string())),
            Poll::Ready(Some("last".to_owned()))
        );
        assert_eq!(inbox.poll_recv(&mut context, false), Poll::Ready(None));
    }

    #[test]
    fn a_waiting_session_is_woken_once_when_its_queue_fills_and_when_it_ends() {
        let (outbox, mut inbox) = queue(8);
        let counter = Arc::new(CountingTask::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut context = Context::from_waker(&waker);
        assert_eq!(inbox.poll_recv(&mut context, false), Poll::Pending);
        assert_eq!(outbox.offer(frame("a"), 100, false), Offer::Queued);
        assert_eq!(outbox.offer(frame("b"), 100, false), Offer::Queued);
        assert_eq!(counter.wakes(), 1);
        assert!(inbox.try_recv().is_some() && inbox.try_recv().is_some());
        assert_eq!(inbox.poll_recv(&mut context, false), Poll::Pending);
        drop(outbox);
        assert_eq!(counter.wakes(), 2);
        assert_eq!(inbox.poll_recv(&mut context, false), Poll::Ready(None));
    }

    #[test]
    fn offer_all_queues_everything_or_nothing() {
        let (outbox, mut inbox) = queue(4);
        assert_eq!(outbox.offer(frame("a"), 100, false), Offer::Queued);
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
            assert_eq!(outbox.offer(frame(text), 100, false), Offer::Queued);
            assert_eq!(inbox.try_recv().as_deref(), Some(text));
        }
        assert_eq!(inbox.queue().lock().later.capacity(), 0);
        assert_eq!(outbox.queued(), (0, 0));
        // Two queued: the second waits in the buffer, in order, and counts.
        assert_eq!(outbox.offer(frame("dd"), 100, false), Offer::Queued);
        assert_eq!(outbox.offer(frame("e"), 100, false), Offer::Queued);
        assert_eq!(outbox.queued(), (2, 3));
        assert_eq!(inbox.try_recv().as_deref(), Some("dd"));
        assert_eq!(inbox.try_recv().as_deref(), Some("e"));
        assert_eq!(inbox.try_recv(), None);
    }

    /// The session parks with nothing unsent: direct writes allowed.
    fn idle(inbox: &mut Inbox) {
        let waker = Waker::from(Arc::new(CountingTask::default()));
        let mut context = Context::from_waker(&waker);
        assert_eq!(inbox.poll_recv(&mut context, true), Poll::Pending);
    }

    /// A connected pair of sockets: the server's end shared (as a session's), the client's.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    /// Reads whole text frames from `bytes`: their texts, in order, and nothing left over.
    fn texts(bytes: &[u8]) -> Vec<String> {
        let mut cursor = std::io::Cursor::new(bytes);
        let mut out = Vec::new();
        while (cursor.position() as usize) < bytes.len() {
            let Ok(Some((header, length))) = FrameHeader::parse(&mut cursor) else {
                panic!("no frame header at byte {}", cursor.position());
            };
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            let start = cursor.position() as usize;
            let end = start + length as usize;
            out.push(String::from_utf8(bytes[start..end].to_vec()).unwrap());
            cursor.set_position(end as u64);
        }
        out
    }

    #[tokio::test]
    async fn an_idle_session_lets_the_dispatcher_write_whole_frames_itself() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = socket_pair().await;
        let (mut outbox, mut inbox) = queue(8);
        outbox.write_directly_to(server);
        // Not idle yet: queued, as without a socket.
        assert_eq!(outbox.offer(frame("one"), 100, true), Offer::Queued);
        assert_eq!(inbox.try_recv().as_deref(), Some("one"));
        idle(&mut inbox);
        // An offer that does not ask for it is queued all the same.
        assert_eq!(outbox.offer(frame("two"), 100, false), Offer::Queued);
        assert_eq!(inbox.try_recv().as_deref(), Some("two"));
        // A message queued while the session is idle (the caller did not ask for a direct
        // write) is not overtaken by the next one.
        idle(&mut inbox);
        assert_eq!(outbox.offer(frame("2a"), 100, false), Offer::Queued);
        assert_eq!(outbox.offer(frame("2b"), 100, true), Offer::Queued);
        assert_eq!(inbox.try_recv().as_deref(), Some("2a"));
        assert_eq!(inbox.try_recv().as_deref(), Some("2b"));
        // Taking from the queue ended the permission: it must be given again.
        assert_eq!(outbox.offer(frame("three"), 100, true), Offer::Queued);
        assert_eq!(inbox.try_recv().as_deref(), Some("three"));
        idle(&mut inbox);
        assert_eq!(outbox.offer(frame("four"), 100, true), Offer::Written);
        assert_eq!(outbox.offer(frame("five"), 100, true), Offer::Written);
        assert_eq!(outbox.queued(), (0, 0));
        // A session that withdraws the permission (about to touch its socket) gets the rest.
        inbox.end_direct();
        assert_eq!(outbox.offer(frame("six"), 100, true), Offer::Queued);
        let mut bytes = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            read += client.read(&mut bytes[read..]).await.unwrap();
        }
        assert_eq!(texts(&bytes[..read]), ["four", "five"]);
        // With something queued, the dispatcher does not jump the queue.
        assert_eq!(outbox.offer(frame("seven"), 100, true), Offer::Queued);
        assert_eq!(outbox.queued(), (2, 8));
    }

    #[tokio::test]
    async fn a_direct_write_cut_short_is_finished_by_the_session_byte_exact() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = socket_pair().await;
        // A small send buffer, and a client that does not read yet: the socket soon takes
        // only part of a frame.
        socket2::SockRef::from(server.as_ref())
            .set_send_buffer_size(4096)
            .unwrap();
        let (mut outbox, mut inbox) = queue(1024);
        outbox.write_directly_to(Arc::clone(&server));
        let texts_sent: Vec<String> = (0..400)
            .map(|i| format!("{i:03}{}", "x".repeat(9_997)))
            .collect();
        let mut direct = 0;
        let mut queued_from = None;
        for (i, text) in texts_sent.iter().enumerate() {
            idle(&mut inbox);
            match outbox.offer(Utf8Bytes::from(text.clone()), 1 << 24, true) {
                Offer::Written => direct += 1,
                Offer::Queued => {
                    queued_from = Some(i);
                    break;
                }
                refused => panic!("{refused:?}"),
            }
        }
        let queued_from = queued_from.expect("the socket filled up");
        assert!(direct > 0, "some frames went out whole first");
        // The session's turn: the queued frame, less what is already on the wire.
        let mut unwritten = Vec::new();
        let message = inbox.try_recv().unwrap();
        encode_notification(&message, &mut unwritten);
        let started = inbox.take_started();
        assert!(started < unwritten.len());
        unwritten.drain(..started);
        assert_eq!(inbox.take_started(), 0, "counted once");
        // The rest of the messages go through the queue (the session is not idle).
        for text in &texts_sent[queued_from + 1..] {
            assert_eq!(
                outbox.offer(Utf8Bytes::from(text.clone()), 1 << 24, true),
                Offer::Queued
            );
        }
        while let Some(message) = inbox.try_recv() {
            encode_notification(&message, &mut unwritten);
        }
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        drop(outbox);
        let mut writer = Arc::try_unwrap(server).ok().unwrap();
        writer.write_all(&unwritten).await.unwrap();
        writer.shutdown().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(texts(&all), texts_sent, "every frame whole, in order");
    }

    #[test]
    fn a_drained_queue_gives_back_a_large_buffer() {
        let (outbox, mut inbox) = queue(1024);
        for _ in 0..200 {
            assert_eq!(outbox.offer(frame("x"), 1 << 20, false), Offer::Queued);
        }
        while inbox.try_recv().is_some() {}
        assert!(inbox.queue().lock().later.capacity() <= KEPT_CAPACITY);
    }
}
