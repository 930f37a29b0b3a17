//! One WebSocket connection after the upgrade: reads actions, answers each with exactly one
//! Ack, writes queued notifications, pings the peer and closes with a specific code.
//!
//! Owns the connection's protocol state (announced or not), the Hello deadline, the
//! per-connection action rate limit and liveness. Does not own matching or fan-out (the
//! hub does) nor the upgrade checks (auth does).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use eventgate_protocol::pattern::Pattern;
use eventgate_protocol::wire::{self, ack_text, ClientAction, DecodeLimits, PatternSource};

use crate::errors::CloseReason;
use crate::hub::{ConnectionId, SubscribeError};
use crate::listener::Transport;
use crate::outbound::outbound_queue;
use crate::server::AppState;
use crate::stop::StopReason;
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

enum Step {
    Continue,
    Close(CloseReason),
    /// The peer sent Close: answer it, then end.
    PeerClosed,
    Gone,
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
    outbox: Option<crate::outbound::Outbox>,
    decode_limits: DecodeLimits,
    rate: RateLimit,
}

/// Runs a connection to its end.
pub async fn run(
    mut socket: WebSocketStream<Transport>,
    state: Arc<AppState>,
    connection: ConnectionId,
) {
    telemetry::connection_opened();
    let registration = state.session_stops.register();
    let (outbox, mut inbox) = outbound_queue(
        state.config.limits.max_queued_messages,
        Arc::clone(&registration.signal),
    );
    let mut session = Session {
        decode_limits: DecodeLimits {
            max_request_id_bytes: 128,
            max_rule_name_bytes: state.config.limits.max_rule_name_bytes,
        },
        rate: RateLimit::new(state.config.limits.max_actions_per_second),
        state,
        connection,
        announced: false,
        outbox: Some(outbox),
    };
    let keepalive = session.state.config.keepalive_interval.0;
    let idle_timeout = session.state.config.idle_timeout.0;
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

    let outcome: Outcome = loop {
        let next_timer = if session.announced {
            next_ping.min(last_heard + idle_timeout)
        } else {
            hello_deadline.min(next_ping)
        };
        if timer.deadline() != next_timer || timer.is_elapsed() {
            timer.as_mut().reset(next_timer);
            signal.mark();
        }
        // In order: the stop signal, queued notifications, then the socket and the timer.
        let turn = std::future::poll_fn(|context| {
            if let Some(reason) = signal.reason() {
                return Poll::Ready(Turn::Stop(reason));
            }
            if session.announced {
                if let Poll::Ready(message) = inbox.poll_recv(context) {
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
                return Poll::Ready(Turn::Frame(frame));
            }
            if timer.as_mut().poll(&mut side_context).is_ready() {
                signal.mark();
                return Poll::Ready(Turn::Timer);
            }
            if acks_unsent {
                return Poll::Ready(Turn::Flush);
            }
            Poll::Pending
        })
        .await;
        match turn {
            Turn::Stop(reason) => {
                break Outcome::Close(match reason {
                    StopReason::ShuttingDown => CloseReason::ShuttingDown,
                    StopReason::SlowConsumer => CloseReason::SlowConsumer,
                })
            }
            Turn::Queued(message) => {
                let Some(message) = message else {
                    break Outcome::Gone;
                };
                // Write what is already queued in one go, then flush once.
                let mut written = socket.feed(Message::Text(message)).await;
                let mut batch = 1;
                while written.is_ok() && batch < WRITE_BATCH {
                    let Some(next) = inbox.try_recv() else { break };
                    written = socket.feed(Message::Text(next)).await;
                    batch += 1;
                }
                if written.is_err() || socket.flush().await.is_err() {
                    break Outcome::Gone;
                }
                acks_unsent = false;
            }
            Turn::Frame(frame) => {
                last_heard = Instant::now();
                let step = match frame {
                    None => Step::Gone,
                    Some(Err(error)) => match error_close(&error) {
                        Some(reason) => Step::Close(reason),
                        None => Step::Gone,
                    },
                    Some(Ok(Message::Text(text))) => {
                        if session.rate.allow() {
                            let reply = session.handle_text(&text).await;
                            if socket
                                .feed(Message::Text(Utf8Bytes::from(reply)))
                                .await
                                .is_err()
                            {
                                Step::Gone
                            } else {
                                acks_unsent = true;
                                Step::Continue
                            }
                        } else {
                            telemetry::limit_rejected("max_actions_per_second");
                            Step::Close(CloseReason::RateLimited)
                        }
                    }
                    Some(Ok(Message::Binary(_))) => Step::Close(CloseReason::BinaryFrame),
                    Some(Ok(Message::Close(_))) => Step::PeerClosed,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        Step::Continue
                    }
                };
                match step {
                    Step::Continue => {}
                    Step::Close(reason) => break Outcome::Close(reason),
                    Step::PeerClosed => break Outcome::PeerClosed,
                    Step::Gone => break Outcome::Gone,
                }
            }
            Turn::Flush => {
                acks_unsent = false;
                if socket.flush().await.is_err() {
                    break Outcome::Gone;
                }
            }
            Turn::Timer => {
                let now = Instant::now();
                if !session.announced && now >= hello_deadline {
                    break Outcome::Close(CloseReason::HelloTimeout);
                }
                if now >= last_heard + idle_timeout {
                    break Outcome::Close(CloseReason::Idle);
                }
                if now >= next_ping {
                    next_ping = now + keepalive;
                    if socket
                        .send(Message::Ping(Default::default()))
                        .await
                        .is_err()
                    {
                        break Outcome::Gone;
                    }
                }
            }
        }
    };

    let closed_by_server = match outcome {
        Outcome::Close(reason) => {
            let frame = CloseFrame {
                code: reason.code().into(),
                reason: Utf8Bytes::from_static(reason.text()),
            };
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                if socket.send(Message::Close(Some(frame))).await.is_ok() {
                    // Read on until the peer's Close (or the end of the stream).
                    while let Some(Ok(frame)) = socket.next().await {
                        if matches!(frame, Message::Close(_)) {
                            break;
                        }
                    }
                }
            })
            .await;
            Some(reason)
        }
        Outcome::PeerClosed => {
            // tungstenite queued the Close reply when it read the peer's Close; the sink's
            // close flushes it (`WebSocketStream::close` would try to send a second Close).
            let _ =
                tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, SinkExt::close(&mut socket)).await;
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

/// The close reason for a read error that the server answers (a message over the limit);
/// `None` when the transport is simply gone.
fn error_close(error: &WsError) -> Option<CloseReason> {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            telemetry::limit_rejected("max_frame_bytes");
            Some(CloseReason::FrameTooLarge)
        }
        _ => None,
    }
}

impl Session {
    /// Handles one text frame and returns the Ack to send.
    async fn handle_text(&mut self, text: &str) -> String {
        let decoded = wire::decode_action(text, &self.decode_limits);
        let request_id = decoded.request_id.as_deref();
        let result = match decoded.action {
            Err(error) => {
                telemetry::action_rejected("malformed");
                Err(error.to_string())
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
            ClientAction::Hello => {
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
            ClientAction::Subscribe { rule, pattern } => {
                let pattern = self.parse_pattern(pattern)?;
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
        }
    }

    fn parse_pattern(&self, pattern: PatternSource) -> Result<Pattern, String> {
        let limits = &self.state.pattern_limits;
        let parsed = match pattern {
            PatternSource::Text(text) => {
                if text.len() > limits.max_pattern_bytes {
                    telemetry::action_rejected("pattern_too_large");
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
