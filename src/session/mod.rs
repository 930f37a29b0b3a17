//! One WebSocket connection after the upgrade: reads actions, answers each with exactly one
//! Ack, writes queued notifications, pings the peer and closes with a specific code.
//!
//! Owns the connection's protocol state (announced or not), the Hello deadline, the
//! per-connection action rate limit, liveness, the deadline of every write
//! (`limits.write_timeout`: a peer that stops reading is closed, and the stop signal and the
//! idle timeout are seen while a write is pending), the mapping of RFC 6455 violations to
//! close codes (1002 / 1007 / 1009) and the close handshake. Also the test-only echo mode
//! (`dev_websocket_echo`) that the Autobahn|Testsuite runs against. Does not own matching or
//! fan-out (the hub does) nor the upgrade checks (auth does).

pub mod outbound;
pub mod stop;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use eventgate_protocol::pattern::Pattern;
use eventgate_protocol::wire::{self, ack_text, ClientAction, DecodeLimits, PatternSource};

use crate::errors::CloseReason;
use crate::hub::{ConnectionId, SubscribeError};
use crate::listener::Transport;
use crate::outbound::{encode_notification, outbound_queue, Offer};
use crate::state::AppState;
use crate::stop::{StopReason, StopSignal};
use crate::telemetry;

/// Most queued notifications written before one flush.
const WRITE_BATCH: usize = 64;

/// How long the server waits for the peer's Close after sending its own (RFC 6455 §7.1.1:
/// the side that closes first reads on until the peer answers, so TCP ends with FIN, not a
/// reset that would destroy the close frame in flight).
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// A token bucket: `rate` actions per second, bursts of twice that.
struct RateLimit {
    tokens: f64,
    capacity: f64,
    rate: f64,
    updated: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            tokens: rate * 2.0,
            capacity: rate * 2.0,
            rate,
            updated: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What woke a turn of the session loop.
enum Turn {
    Stop(StopReason),
    /// A queued notification, or `None` when the dispatcher let go of the connection.
    Queued(Option<Utf8Bytes>),
    Frame(Option<Result<Message, WsError>>),
    Timer,
    /// Acks are written but not yet sent, and no further frame has been read.
    Flush,
}

/// How the read/write loop ended.
enum Outcome {
    /// The server closes with this reason.
    Close(CloseReason),
    /// The peer started the close handshake.
    PeerClosed,
    /// The transport failed or ended.
    Gone,
}

struct Session {
    state: Arc<AppState>,
    connection: ConnectionId,
    announced: bool,
    /// Test-only echo mode (`dev_websocket_echo`): messages are echoed, not read as actions.
    echo: bool,
    outbox: Option<crate::outbound::Outbox>,
    decode_limits: DecodeLimits,
    rate: RateLimit,
    /// The identity's scope and token expiry (see `identity`); a Refresh replaces it.
    grant: crate::identity::Grant,
    /// When the connection closes with 1008 `token expired` unless refreshed.
    token_deadline: Option<Instant>,
}

/// How a bounded write ended.
enum Written {
    Done,
    Failed,
    Stopped(StopReason),
    /// Pending for `write_timeout`: the peer does not read.
    TimedOut,
    /// Pending until nothing had been heard from the peer for `idle_timeout`.
    Idle,
}

impl Written {
    /// `None` when the session goes on.
    fn outcome(self) -> Option<Outcome> {
        match self {
            Written::Done => None,
            Written::Failed => Some(Outcome::Gone),
            Written::Stopped(reason) => Some(Outcome::Close(stop_close(reason))),
            Written::TimedOut => {
                telemetry::write_timed_out();
                Some(Outcome::Close(CloseReason::WriteTimeout))
            }
            Written::Idle => Some(Outcome::Close(CloseReason::Idle)),
        }
    }
}

fn stop_close(reason: StopReason) -> CloseReason {
    match reason {
        StopReason::ShuttingDown => CloseReason::ShuttingDown,
        StopReason::SlowConsumer => CloseReason::SlowConsumer,
        StopReason::Disconnected => CloseReason::Disconnected,
        StopReason::LogGap => CloseReason::LogGap,
    }
}

/// Runs one write to the socket (`feed`, `flush` or `send`) until it completes, the peer
/// has read nothing for `write_timeout`, nothing has been heard from the peer since
/// `idle_deadline`, or the session is told to stop: a peer that stops reading must not hold
/// its task in a write where neither the stop signal nor the timers are seen.
///
/// A write that completes at once (the common case: the socket has room) costs one poll;
/// only a pending write takes the clock and arms `timer`, the session's one timer, which the
/// main loop re-arms afterwards (the signal is marked so that it does).
async fn bounded(
    write: impl Future<Output = Result<(), WsError>>,
    signal: &StopSignal,
    mut timer: Pin<&mut Sleep>,
    write_timeout: Duration,
    idle_deadline: Instant,
) -> Written {
    let mut write = pin!(write);
    let mut write_deadline: Option<Instant> = None;
    let written = std::future::poll_fn(|context| {
        if let Poll::Ready(result) = write.as_mut().poll(context) {
            return Poll::Ready(if result.is_ok() {
                Written::Done
            } else {
                Written::Failed
            });
        }
        signal.register(context.waker());
        if let Some(reason) = signal.reason() {
            return Poll::Ready(Written::Stopped(reason));
        }
        let due = *write_deadline.get_or_insert_with(|| {
            Instant::now()
                .checked_add(write_timeout)
                .unwrap_or(idle_deadline)
        });
        let deadline = due.min(idle_deadline);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(context).is_ready() {
            return Poll::Ready(if due <= idle_deadline {
                Written::TimedOut
            } else {
                Written::Idle
            });
        }
        Poll::Pending
    })
    .await;
    if write_deadline.is_some() {
        // The timer and the signal were registered with this task, not the side waker.
        signal.mark();
    }
    written
}

/// Runs a connection to its end.
#[allow(clippy::manual_async_fn)] // an async fn would hold its arguments twice: see inside
pub fn run(
    mut socket: WebSocketStream<Transport>,
    state: Arc<AppState>,
    connection: ConnectionId,
    grant: crate::identity::Grant,
) -> impl Future<Output = ()> + Send {
    // A function returning an async block, not an `async fn`: an `async fn` moves its
    // arguments into locals of its future, where they take room a second time beside the
    // captured ones (the socket is 336 bytes), for the connection's whole life. Measured
    // with `-Zprint-type-sizes` and in RSS per connection (`bench/findings.md`).
    async move {
        telemetry::connection_opened();
        let registration = state.session_stops.register_connection(connection);
        let (mut outbox, mut inbox) = outbound_queue(
            state.config.limits.max_queued_messages,
            Arc::clone(&registration.signal),
        );
        // A plain TCP connection lets the dispatcher write to it while the session is idle
        // (see `outbound`); TLS keeps its records in the session's own stream.
        if let Transport::Shared(stream) = socket.get_ref() {
            outbox.write_directly_to(stream.socket());
        }
        let token_deadline = grant.close_at(state.identity.expiry_grace);
        let mut session = Session {
            decode_limits: DecodeLimits {
                max_request_id_bytes: 128,
                max_rule_name_bytes: state.config.limits.max_rule_name_bytes,
            },
            rate: RateLimit::new(state.config.limits.max_actions_per_second),
            echo: state.config.dev && state.config.dev_websocket_echo,
            state,
            connection,
            announced: false,
            outbox: Some(outbox),
            token_deadline,
            grant,
        };
        let keepalive = session.state.config.keepalive_interval.0;
        let idle_timeout = session.state.config.idle_timeout.0;
        let write_timeout = session.state.config.limits.write_timeout.0;
        let max_queued_bytes = session.state.config.limits.max_queued_bytes;
        let hello_deadline = Instant::now() + session.state.config.hello_timeout.0;
        let mut last_heard = Instant::now();
        let mut next_ping = Instant::now() + keepalive;
        // The timer lives across loop turns: a turn per notification must not re-register
        // timer entries every time. The signal is this connection's own: set on shutdown and
        // when the dispatcher finds the connection too slow, and the waker of the socket and
        // the timer, so a turn woken by a queued notification alone polls neither.
        let signal = Arc::clone(&registration.signal);
        let side_waker = Waker::from(Arc::clone(&signal));
        let timer = tokio::time::sleep_until(hello_deadline.min(next_ping));
        tokio::pin!(timer);
        // Acks are written to the socket's buffer and sent once no complete frame is left to
        // read: a client that sends several actions at once (the JS client re-subscribing all
        // its rules after Hello) gets their Acks in one write, not one system call each.
        let mut acks_unsent = false;
        // Notifications bypass tungstenite (see `write_unwritten`): whatever tungstenite may
        // still hold (Acks, the Pong it answers a Ping with while reading) is flushed first.
        // `unwritten` holds the encoded notifications not yet on the wire; when a write is cut
        // short (stop signal, write deadline), the closing handshake writes the rest before its
        // Close frame, so the peer never sees a Close in the middle of a frame.
        let mut tungstenite_unflushed = false;
        let mut unwritten: Vec<u8> = Vec::new();

        let outcome: Outcome = 'session: loop {
            // An echo session has no Hello: it is served like an announced one.
            let serving = session.announced || session.echo;
            let next_timer = if serving {
                next_ping.min(last_heard + idle_timeout)
            } else {
                hello_deadline.min(next_ping)
            };
            let next_timer = session
                .token_deadline
                .map_or(next_timer, |deadline| deadline.min(next_timer));
            if timer.deadline() != next_timer || timer.is_elapsed() {
                timer.as_mut().reset(next_timer);
                signal.mark();
            }
            // In order: the stop signal, queued notifications, then the socket and the timer.
            let turn = std::future::poll_fn(|context| {
                if let Some(reason) = signal.reason() {
                    return Poll::Ready(Turn::Stop(reason));
                }
                if serving {
                    // With nothing of its own unsent (tungstenite may hold an Ack or a Pong
                    // until flushed), the session lets the dispatcher write to the socket
                    // while it is parked. Reading the socket below writes nothing then
                    // (tungstenite sends a Pong on the read after the Ping's); any turn
                    // that writes ends the permission first.
                    let idle = !acks_unsent && !tungstenite_unflushed;
                    if let Poll::Ready(message) = inbox.poll_recv(context, idle) {
                        return Poll::Ready(Turn::Queued(message));
                    }
                }
                if !signal.take_woken() {
                    return Poll::Pending;
                }
                signal.register(context.waker());
                // A stop between the check above and the registration woke no task.
                if let Some(reason) = signal.reason() {
                    return Poll::Ready(Turn::Stop(reason));
                }
                let mut side_context = Context::from_waker(&side_waker);
                // A source that is ready is not registered any more: poll both next time.
                if let Poll::Ready(frame) = socket.poll_next_unpin(&mut side_context) {
                    signal.mark();
                    inbox.end_direct();
                    return Poll::Ready(Turn::Frame(frame));
                }
                if timer.as_mut().poll(&mut side_context).is_ready() {
                    signal.mark();
                    inbox.end_direct();
                    return Poll::Ready(Turn::Timer);
                }
                if acks_unsent {
                    // (No permission was given: Acks are unsent.)
                    return Poll::Ready(Turn::Flush);
                }
                Poll::Pending
            })
            .await;
            // Every write below goes through `bounded`.
            macro_rules! bounded_write {
                ($label:lifetime, $write:expr) => {
                    if let Some(outcome) = bounded(
                        $write,
                        &signal,
                        timer.as_mut(),
                        write_timeout,
                        last_heard + idle_timeout,
                    )
                    .await
                    .outcome()
                    {
                        break $label outcome;
                    }
                };
            }
            match turn {
                Turn::Stop(reason) => break Outcome::Close(stop_close(reason)),
                Turn::Queued(message) => {
                    let Some(message) = message else {
                        break Outcome::Gone;
                    };
                    if acks_unsent || tungstenite_unflushed {
                        bounded_write!('session, socket.flush());
                        acks_unsent = false;
                        tungstenite_unflushed = false;
                    }
                    // Write what is already queued in one go (encoded as it is taken: no
                    // list of the batch is allocated on a turn).
                    encode_notification(&message, &mut unwritten);
                    drop(message);
                    // A direct write the socket did not take whole sent this frame's start.
                    let started = inbox.take_started().min(unwritten.len());
                    unwritten.drain(..started);
                    for _ in 1..WRITE_BATCH {
                        let Some(next) = inbox.try_recv() else { break };
                        encode_notification(&next, &mut unwritten);
                    }
                    bounded_write!('session, write_unwritten(socket.get_mut(), &mut unwritten));
                    // An idle connection keeps no write buffer.
                    unwritten = Vec::new();
                }
                Turn::Frame(frame) => {
                    last_heard = Instant::now();
                    // Reading may have queued a Pong in tungstenite's buffer.
                    tungstenite_unflushed = true;
                    let reply = match frame {
                        None => break Outcome::Gone,
                        Some(Err(error)) => match error_close(&error) {
                            Some(reason) => break Outcome::Close(reason),
                            None => break Outcome::Gone,
                        },
                        Some(Ok(Message::Close(_))) => break Outcome::PeerClosed,
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                            continue
                        }
                        Some(Ok(Message::Binary(data))) if session.echo => Message::Binary(data),
                        Some(Ok(Message::Binary(_))) => {
                            break Outcome::Close(CloseReason::BinaryFrame)
                        }
                        Some(Ok(Message::Text(text))) if session.echo => {
                            match session.echo_text(text, max_queued_bytes) {
                                Some(reason) => break Outcome::Close(reason),
                                None => continue,
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            if !session.rate.allow() {
                                telemetry::limit_rejected("max_actions_per_second");
                                break Outcome::Close(CloseReason::RateLimited);
                            }
                            // Boxed: an action's future (a Subscribe's budget checks, a
                            // Refresh's key fetch: 1.7 KB) would otherwise be part of every
                            // connection's state for its whole life; it is alive only while
                            // an action is handled (measured with -Zprint-type-sizes: the
                            // session's future 3,312 -> 1,911 bytes).
                            let reply = Box::pin(session.handle_text(&text)).await;
                            Message::Text(Utf8Bytes::from(reply))
                        }
                    };
                    let is_ack = reply.is_text();
                    bounded_write!('session, socket.feed(reply));
                    if is_ack {
                        acks_unsent = true;
                    } else {
                        bounded_write!('session, socket.flush());
                    }
                }
                Turn::Flush => {
                    acks_unsent = false;
                    tungstenite_unflushed = false;
                    bounded_write!('session, socket.flush());
                }
                Turn::Timer => {
                    let now = Instant::now();
                    if !serving && now >= hello_deadline {
                        break Outcome::Close(CloseReason::HelloTimeout);
                    }
                    if now >= last_heard + idle_timeout {
                        break Outcome::Close(CloseReason::Idle);
                    }
                    if session
                        .token_deadline
                        .is_some_and(|deadline| now >= deadline)
                    {
                        break Outcome::Close(CloseReason::TokenExpired);
                    }
                    if now >= next_ping {
                        next_ping = now + keepalive;
                        bounded_write!('session, socket.send(Message::Ping(Default::default())));
                    }
                }
            }
        };

        // From here the session writes its closing handshake: no direct write may be under
        // way or start (a stop wakes the session without a `poll_recv`).
        inbox.end_direct();
        let closed_by_server = match outcome {
            Outcome::Close(reason) => {
                let frame = match (reason, registration.operator_close()) {
                    (CloseReason::Disconnected, Some(close)) => CloseFrame {
                        code: close.code.into(),
                        reason: Utf8Bytes::from(close.reason),
                    },
                    _ => CloseFrame {
                        code: reason.code().into(),
                        reason: Utf8Bytes::from_static(reason.text()),
                    },
                };
                // Boxed: the closing handshake runs once, at the end; its future need not
                // have room in every connection's state.
                Box::pin(close(&mut socket, &mut unwritten, frame)).await;
                Some(reason)
            }
            Outcome::PeerClosed => {
                // tungstenite queued the Close reply when it read the peer's Close; the sink's
                // close flushes it (`WebSocketStream::close` would try to send a second Close).
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, SinkExt::close(&mut socket))
                    .await;
                None
            }
            Outcome::Gone => None,
        };
        if session.announced {
            session.state.hub.deregister(connection).await;
        }
        let label = closed_by_server.map_or("peer_closed", CloseReason::label);
        telemetry::connection_closed(label, session.announced);
    }
}

/// The server's side of the close handshake, all within [`CLOSE_HANDSHAKE_TIMEOUT`]: sends
/// the Close frame, reads on until the peer's Close (RFC 6455 §7.1.1: the side that closes
/// first reads on, so that TCP ends with FIN, not a reset that would destroy the close frame
/// in flight). When the stream ended without one (a protocol error ends it), the write side
/// is shut down and the rest of the peer's bytes are read and dropped until it closes, for
/// the same reason. A Close frame that cannot be sent in time (the peer does not read) is
/// given up: the socket is reset, so the kernel frees its send queue at once instead of
/// keeping an orphaned socket with unsent data.
async fn close(
    socket: &mut WebSocketStream<Transport>,
    unwritten: &mut Vec<u8>,
    frame: CloseFrame,
) {
    let mut sent = false;
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        // The rest of notifications whose write was cut short goes first.
        if write_unwritten(socket.get_mut(), unwritten).await.is_err() {
            return;
        }
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        sent = true;
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Close(_)) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let transport = socket.get_mut();
        if transport.shutdown().await.is_ok() {
            let mut rest = [0u8; 1024];
            while matches!(transport.read(&mut rest).await, Ok(read) if read > 0) {}
        }
    })
    .await;
    if !sent {
        reset(socket.get_ref());
    }
}

/// Writes `unwritten` to the transport, removing what was written as it goes: a write cut
/// short (its future dropped) leaves exactly the bytes still owed, to be written before
/// anything else (see [`close`]).
///
/// Notifications (encoded by `outbound::encode_notification`) are written this way,
/// straight to the transport, not through tokio-tungstenite's `Sink`: there, each
/// notification went through `poll_ready`, `start_send` and `poll_flush`, each registering
/// the task's waker with both of its stream proxies, and through tungstenite's frame
/// buffering: 6% of the gateway's CPU at 1,000 events/s to 10,000 connections (profile in
/// `bench/findings.md`). The session flushes tungstenite first when it may hold bytes
/// (Acks, a Pong), so frames never interleave.
async fn write_unwritten(
    transport: &mut Transport,
    unwritten: &mut Vec<u8>,
) -> Result<(), WsError> {
    while !unwritten.is_empty() {
        let written = transport.write(unwritten).await?;
        if written == 0 {
            return Err(WsError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        unwritten.drain(..written);
    }
    // TLS keeps records in rustls until flushed; a plain socket's flush does nothing.
    transport.flush().await?;
    Ok(())
}

/// Makes the coming close of `transport` a reset (`SO_LINGER` 0), discarding its unsent
/// bytes. A connection upgraded through hyper does not expose its socket and is closed as
/// usual.
fn reset(transport: &Transport) {
    let stream = match transport {
        Transport::Plain(stream) => stream,
        Transport::Shared(stream) => stream.tcp(),
        Transport::Tls(stream) => stream.get_ref().0,
        Transport::Upgraded(_) => return,
    };
    if let Err(error) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(%error, "SO_LINGER not set");
    }
}

/// The close reason for a read error that the server answers (a message over the limit, a
/// protocol violation, invalid UTF-8); `None` when the transport is simply gone.
fn error_close(error: &WsError) -> Option<CloseReason> {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            telemetry::limit_rejected("max_frame_bytes");
            Some(CloseReason::FrameTooLarge)
        }
        WsError::Utf8(_) => Some(CloseReason::InvalidUtf8),
        WsError::Protocol(violation) => protocol_violation(violation).map(CloseReason::Protocol),
        _ => None,
    }
}

/// The close reason text for a framing error of the peer (RFC 6455 §5, answered with 1002);
/// `None` for errors that mean the connection is gone or that cannot happen after the
/// handshake.
fn protocol_violation(error: &ProtocolError) -> Option<&'static str> {
    Some(match error {
        ProtocolError::NonZeroReservedBits => {
            "protocol error: RSV bits set without a negotiated extension"
        }
        ProtocolError::UnmaskedFrameFromClient => "protocol error: client frames must be masked",
        ProtocolError::FragmentedControlFrame => "protocol error: fragmented control frame",
        ProtocolError::ControlFrameTooBig => "protocol error: control frame over 125 bytes",
        ProtocolError::UnknownControlFrameType(_)
        | ProtocolError::UnknownDataFrameType(_)
        | ProtocolError::InvalidOpcode(_) => "protocol error: reserved opcode",
        ProtocolError::UnexpectedContinueFrame => {
            "protocol error: continuation frame without a message to continue"
        }
        ProtocolError::ExpectedFragment(_) => {
            "protocol error: new message before the fragmented one ended"
        }
        ProtocolError::InvalidCloseSequence => "protocol error: close frame with a 1-byte payload",
        _ => return None,
    })
}

impl Session {
    /// Echo mode: queues `text` on the connection's own outbound queue, to be written like a
    /// notification. `Some` closes the session.
    fn echo_text(&self, text: Utf8Bytes, max_queued_bytes: usize) -> Option<CloseReason> {
        match self.outbox.as_ref()?.offer(text, max_queued_bytes, false) {
            Offer::Queued | Offer::Written => None,
            Offer::Refused { .. } => Some(CloseReason::SlowConsumer),
        }
    }

    /// Handles one text frame and returns the Ack to send.
    async fn handle_text(&mut self, text: &str) -> String {
        let decoded = wire::decode_action(text, &self.decode_limits);
        let request_id = decoded.request_id.as_deref();
        let result = match decoded.action {
            Err(error) => {
                telemetry::action_rejected("malformed");
                Err(error.to_string())
            }
            Ok(ClientAction::Resume { position }) => {
                return self.resume(request_id, position).await
            }
            Ok(action) => self.apply(action).await,
        };
        match result {
            Ok(()) => wire::ack_ok(request_id),
            Err(message) => wire::ack_error(request_id, &message),
        }
    }

    async fn apply(&mut self, action: ClientAction) -> Result<(), String> {
        match action {
            ClientAction::Hello { position } => {
                let Some(outbox) = self.outbox.take() else {
                    telemetry::action_rejected("already_announced");
                    return Err(ack_text::ALREADY_ANNOUNCED.to_owned());
                };
                self.state
                    .hub
                    .register(self.connection, outbox)
                    .await
                    .map_err(|error| format!("internal error: {error}"))?;
                self.announced = true;
                telemetry::connection_announced();
                if let Some(position) = position {
                    // Resuming: live events wait for the Resume (see `history`).
                    self.state
                        .hub
                        .hold(self.connection, position)
                        .await
                        .map_err(|error| format!("internal error: {error}"))?;
                }
                Ok(())
            }
            ClientAction::Subscribe { .. } | ClientAction::Unsubscribe { .. }
                if !self.announced =>
            {
                telemetry::action_rejected("unannounced");
                Err(format!(
                    "{}: send Hello before Subscribe or Unsubscribe",
                    ack_text::UNANNOUNCED
                ))
            }
            ClientAction::Refresh { token } => self.refresh(&token).await,
            ClientAction::Subscribe { rule, pattern } => {
                // Within the identity's scope before the rule reaches the index.
                let pattern = self.grant.scoped(self.parse_pattern(pattern)?);
                self.state
                    .hub
                    .subscribe(self.connection, Arc::from(rule), pattern)
                    .await
                    .map_err(|error| match error {
                        SubscribeError::TooManyRules(limit) => {
                            telemetry::action_rejected("too_many_rules");
                            telemetry::limit_rejected("max_rules_per_connection");
                            format!(
                                "{}: this connection already has {limit} rules, the limit",
                                ack_text::TOO_MANY_RULES
                            )
                        }
                        SubscribeError::TooComplex(error) => {
                            telemetry::pattern_too_complex(error.budget());
                            error.to_string()
                        }
                        SubscribeError::ConnectionGone => "connection gone".to_owned(),
                    })
            }
            ClientAction::Unsubscribe { rule } => self
                .state
                .hub
                .unsubscribe(self.connection, Arc::from(rule))
                .await
                .map_err(|_| "connection gone".to_owned()),
            // Answered by `resume`, which has its own Ack.
            ClientAction::Resume { .. } => Err(ack_text::UNRECOGNIZED_ACTION.to_owned()),
        }
    }

    /// `Resume`: the hub replays what the connection missed; the Ack says how many events
    /// follow it and the position the connection is live from.
    async fn resume(&mut self, request_id: Option<&str>, position: Option<String>) -> String {
        if !self.announced {
            telemetry::action_rejected("unannounced");
            return wire::ack_error(
                request_id,
                &format!("{}: send Hello before Resume", ack_text::UNANNOUNCED),
            );
        }
        let resumed = self.state.hub.resume(self.connection, position).await;
        let position = resumed.position.as_deref();
        match resumed.replayed {
            Ok(count) => wire::ack_resumed(request_id, Ok(count), position),
            Err(error) => {
                telemetry::action_rejected("resume");
                wire::ack_resumed(request_id, Err(&error.to_string()), position)
            }
        }
    }

    /// A Refresh: the new token's grant replaces the old one (same scope), or the old stays.
    async fn refresh(&mut self, token: &str) -> Result<(), String> {
        let identity = &self.state.identity;
        match identity.refresh(&self.grant, token).await {
            Ok(grant) => {
                telemetry::token_refreshed("ok");
                self.token_deadline = grant.close_at(identity.expiry_grace);
                self.grant = grant;
                Ok(())
            }
            Err(error) => {
                telemetry::token_refreshed(error.label());
                Err(format!("{}: {error}", ack_text::TOKEN_REFUSED))
            }
        }
    }

    fn parse_pattern(&self, pattern: PatternSource) -> Result<Pattern, String> {
        let limits = &self.state.pattern_limits;
        let parsed = match pattern {
            PatternSource::Text(text) => {
                if text.len() > limits.max_pattern_bytes {
                    telemetry::action_rejected("pattern_too_large");
                    telemetry::limit_rejected("max_pattern_bytes");
                    return Err(format!(
                        "{}: the pattern is {} bytes, the limit is {}",
                        ack_text::PATTERN_TOO_LARGE,
                        text.len(),
                        limits.max_pattern_bytes
                    ));
                }
                Pattern::parse(&text, limits)
            }
            PatternSource::Object(value) => {
                let size = value.to_string().len();
                if size > limits.max_pattern_bytes {
                    telemetry::action_rejected("pattern_too_large");
                    telemetry::limit_rejected("max_pattern_bytes");
                    return Err(format!(
                        "{}: the pattern is {size} bytes, the limit is {}",
                        ack_text::PATTERN_TOO_LARGE,
                        limits.max_pattern_bytes
                    ));
                }
                Pattern::from_value(&value, limits)
            }
        };
        parsed.map_err(|error| {
            telemetry::action_rejected("invalid_pattern");
            format!("{}: {error}", ack_text::INVALID_PATTERN)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    /// Every length form of RFC 6455 §5.2 (7-bit, 16-bit, 64-bit), read back with
    /// tungstenite's own parser: final, text, unmasked, the payload intact, in order.
    #[test]
    fn notifications_are_encoded_as_whole_text_frames() {
        let lengths = [0usize, 1, 125, 126, 65_535, 65_536, 70_000];
        let frames: Vec<Utf8Bytes> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| Utf8Bytes::from(char::from(b'a' + i as u8).to_string().repeat(n)))
            .collect();
        let mut out = vec![0xAB];
        for frame in &frames {
            encode_notification(frame, &mut out);
        }
        assert_eq!(out[0], 0xAB, "what the buffer held stays in front");
        let mut cursor = Cursor::new(&out[1..]);
        for (frame, &n) in frames.iter().zip(&lengths) {
            let parsed = FrameHeader::parse(&mut cursor);
            let Ok(Some((header, length))) = parsed else {
                panic!("no header for a {n}-byte frame: {parsed:?}");
            };
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(length, n as u64);
            let start = cursor.position() as usize;
            assert_eq!(&out[1 + start..1 + start + n], frame.as_bytes());
            cursor.set_position((start + n) as u64);
        }
        assert_eq!(
            cursor.position() as usize,
            out.len() - 1,
            "nothing after the last frame"
        );
        // A frame of the same text through tungstenite's own encoder: the same bytes.
        let mut theirs = Vec::new();
        let text = Utf8Bytes::from_static("{\"Action\":\"Event\"}");
        let _ = Frame::message(text.clone(), OpCode::Data(Data::Text), true).format(&mut theirs);
        let mut ours = Vec::new();
        encode_notification(&text, &mut ours);
        assert_eq!(ours, theirs);
    }
}
