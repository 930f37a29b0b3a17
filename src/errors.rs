//! Every error the gateway shows to the outside, and how it is shown: HTTP statuses with a
//! JSON body for the upgrade and ingest, WebSocket close codes with a reason for sessions.
//!
//! Owns the mapping in one place. Does not own the decisions (auth, ingest and the session
//! decide), nor Ack texts (those come from the protocol crate).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use eventgate_protocol::header::HeaderError;

use crate::handshake::HandshakeError;
use crate::limits::LimitError;

/// Status of a limit refusal: 503 when the whole server is full, 429 otherwise.
fn limit_status(error: &LimitError) -> StatusCode {
    match error {
        LimitError::TooManyConnections | LimitError::IngestBacklogFull { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        LimitError::TooManyConnectionsFromIp
        | LimitError::NewConnectionRate { .. }
        | LimitError::IngestRate { .. }
        | LimitError::IngestBatchTooLarge => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// `{"error": message}` with `status`, plus `Retry-After` when the limit says when.
fn json_error(status: StatusCode, message: String, limit: Option<&LimitError>) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if let Some(seconds) = limit.and_then(LimitError::retry_after_seconds) {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(seconds),
        );
    }
    response
}

/// Why a WebSocket upgrade was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Handshake(HandshakeError),
    #[error("the query string is not valid: {0}")]
    BadQuery(String),
    #[error("the header query parameter is missing")]
    MissingHeader,
    #[error("{0}")]
    BadHeader(HeaderError),
    #[error("the Host in the header is not this server")]
    WrongHost,
    #[error("the ApiKey in the header is not valid")]
    WrongApiKey,
    #[error("the Id in the header is not a GUID")]
    InvalidClientId,
    #[error("this Origin may not open a connection")]
    OriginNotAllowed,
    #[error("the server is shutting down")]
    Draining,
    #[error("{0}")]
    Limit(LimitError),
    #[error("{0}")]
    Identity(crate::identity::IdentityError),
}

impl UpgradeError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpgradeError::Handshake(HandshakeError::MethodNotGet) => StatusCode::METHOD_NOT_ALLOWED,
            // RFC 6455 §4.4 and RFC 9110 §15.5.22: say what to upgrade to.
            UpgradeError::Handshake(
                HandshakeError::NotWebSocket | HandshakeError::UnsupportedVersion,
            ) => StatusCode::UPGRADE_REQUIRED,
            UpgradeError::Handshake(_) | UpgradeError::BadQuery(_) => StatusCode::BAD_REQUEST,
            UpgradeError::MissingHeader => StatusCode::UNAUTHORIZED,
            UpgradeError::BadHeader(_) => StatusCode::BAD_REQUEST,
            UpgradeError::WrongHost
            | UpgradeError::WrongApiKey
            | UpgradeError::InvalidClientId
            | UpgradeError::OriginNotAllowed => StatusCode::FORBIDDEN,
            UpgradeError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            UpgradeError::Limit(limit) => limit_status(limit),
            UpgradeError::Identity(error) => error.status(),
        }
    }

    /// Label for the auth-failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            UpgradeError::Handshake(_) => "bad_handshake",
            UpgradeError::BadQuery(_) => "bad_query",
            UpgradeError::MissingHeader => "missing_header",
            UpgradeError::BadHeader(_) => "bad_header",
            UpgradeError::WrongHost => "wrong_host",
            UpgradeError::WrongApiKey => "wrong_api_key",
            UpgradeError::InvalidClientId => "invalid_client_id",
            UpgradeError::OriginNotAllowed => "origin_not_allowed",
            UpgradeError::Draining => "draining",
            UpgradeError::Limit(limit) => limit.label(),
            UpgradeError::Identity(error) => error.label(),
        }
    }
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> Response {
        let limit = match &self {
            UpgradeError::Limit(limit) => Some(limit),
            _ => None,
        };
        if let UpgradeError::Identity(error) = &self {
            // `{"error": .., "reason": <metric label>}`: clients can tell a missing token
            // from an expired one without parsing the text.
            let body = serde_json::json!({ "error": error.to_string(), "reason": error.label() });
            return (self.status(), Json(body)).into_response();
        }
        let mut response = json_error(self.status(), self.to_string(), limit);
        let headers = response.headers_mut();
        match &self {
            // RFC 9110 §15.5.6: a 405 says which methods the resource takes.
            UpgradeError::Handshake(HandshakeError::MethodNotGet) => {
                headers.insert(
                    axum::http::header::ALLOW,
                    axum::http::HeaderValue::from_static("GET"),
                );
            }
            UpgradeError::Handshake(HandshakeError::NotWebSocket) => {
                headers.insert(
                    axum::http::header::UPGRADE,
                    axum::http::HeaderValue::from_static("websocket"),
                );
            }
            UpgradeError::Handshake(HandshakeError::UnsupportedVersion) => {
                headers.insert(
                    axum::http::header::UPGRADE,
                    axum::http::HeaderValue::from_static("websocket"),
                );
                headers.insert(
                    axum::http::header::SEC_WEBSOCKET_VERSION,
                    axum::http::HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        response
    }
}

/// Whole-request ingest failures (per-entry failures are reported in the body instead).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Body(BodyError),
    #[error("unsupported content type {0:?}; use application/json, application/cloudevents+json, application/cloudevents-batch+json or CloudEvents binary mode")]
    UnsupportedMediaType(String),
    #[error("the server is shutting down")]
    Unavailable,
    #[error("the shared event log is {0}; nothing was accepted; retry later")]
    LogUnavailable(&'static str),
    #[error("{0}")]
    Limit(LimitError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngestError::MalformedJson(_) | IngestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngestError::Body(error) => error.status(),
            IngestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Unavailable | IngestError::LogUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngestError::Limit(limit) => limit_status(limit),
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let limit = match &self {
            IngestError::Limit(limit) => Some(limit),
            _ => None,
        };
        let mut response = json_error(self.status(), self.to_string(), limit);
        if matches!(self, IngestError::Body(_)) {
            close_after(&mut response);
        }
        if matches!(self, IngestError::LogUnavailable(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// Why a request body was not read (see `http_body`). The rest of such a body is never
/// read, so the connection is closed after the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body did not arrive within limits.body_timeout ({0:?})")]
    Timeout(std::time::Duration),
    #[error("malformed request body: {0}")]
    Malformed(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `code` label of the endpoint's error counter.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Timeout(_) => "body_timeout",
            BodyError::Malformed(_) => "malformed_body",
        }
    }
}

/// `Connection: close`: hyper closes the connection once the response is written.
fn close_after(response: &mut Response) {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
}

/// Why `POST /test-pattern` did not answer with a result. Rendered as `{"Error": message}`,
/// the endpoint's documented error shape.
#[derive(Debug, thiserror::Error)]
pub enum TestPatternError {
    /// No or a wrong ingest token (the endpoint's credential).
    #[error("{0}")]
    Credential(IngestError),
    #[error("too many pattern tests in progress (limits.max_concurrent_test_patterns = {0}); retry later")]
    Busy(usize),
    #[error("{0}")]
    Body(BodyError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the event is {size} bytes, the limit is {limit} (limits.max_event_bytes)")]
    EventTooLarge { size: usize, limit: usize },
    #[error("the evaluation did not finish within limits.test_pattern_timeout ({0:?})")]
    Timeout(std::time::Duration),
    #[error("the evaluation failed")]
    Failed,
}

impl TestPatternError {
    pub fn status(&self) -> StatusCode {
        match self {
            TestPatternError::Credential(error) => error.status(),
            TestPatternError::Busy(_) | TestPatternError::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            TestPatternError::Body(error) => error.status(),
            TestPatternError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TestPatternError::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TestPatternError::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `code` label of `eventgate_test_pattern_errors_total`.
    pub fn code(&self) -> &'static str {
        match self {
            TestPatternError::Credential(IngestError::Forbidden(_)) => "forbidden",
            TestPatternError::Credential(_) => "unauthorized",
            TestPatternError::Busy(_) => "busy",
            TestPatternError::Body(error) => error.code(),
            TestPatternError::BadRequest(_) => "bad_request",
            TestPatternError::EventTooLarge { .. } => "event_too_large",
            TestPatternError::Timeout(_) => "timeout",
            TestPatternError::Failed => "failed",
        }
    }

    /// The config key of the limit that refused the request, if one did (body limits are
    /// counted where the body is read).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            TestPatternError::Busy(_) => Some("max_concurrent_test_patterns"),
            TestPatternError::Timeout(_) => Some("test_pattern_timeout"),
            _ => None,
        }
    }
}

impl IntoResponse for TestPatternError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(serde_json::json!({ "Error": self.to_string() })),
        )
            .into_response();
        match &self {
            TestPatternError::Busy(_) => {
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(1),
                );
            }
            TestPatternError::Body(_) => close_after(&mut response),
            _ => {}
        }
        response
    }
}

/// A request refused before any route saw it (a missing, repeated or invalid `Host`):
/// 400 with `{"error": message}`, and the connection closed.
pub fn bad_request(message: String) -> Response {
    let mut response = json_error(StatusCode::BAD_REQUEST, message, None);
    close_after(&mut response);
    response
}

/// Why the server closes a WebSocket, with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1001: the server is shutting down.
    ShuttingDown,
    /// 1008: no Hello within `hello_timeout`.
    HelloTimeout,
    /// 1008: the connection's token expired (plus `identity.expiry_grace`) without a Refresh.
    TokenExpired,
    /// 1003: binary frames are not part of the protocol.
    BinaryFrame,
    /// 1009: a message over `max_frame_bytes`.
    FrameTooLarge,
    /// 1008: actions over the per-connection rate.
    RateLimited,
    /// 1013: the client does not read its notifications fast enough.
    SlowConsumer,
    /// 1001: nothing heard from the peer within `idle_timeout`.
    Idle,
    /// 1013: a write stayed pending for `limits.write_timeout` (the peer does not read).
    WriteTimeout,
    /// 1002: the peer broke RFC 6455 framing; the text says how.
    Protocol(&'static str),
    /// 1007: a text message or a close reason that is not UTF-8.
    InvalidUtf8,
    /// 1008 unless the operator chose another code: closed through the admin API.
    Disconnected,
    /// 1012: this node could not read part of the shared log; the client resumes elsewhere
    /// or later and learns of the gap.
    LogGap,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ShuttingDown | CloseReason::Idle => 1001,
            CloseReason::HelloTimeout
            | CloseReason::RateLimited
            | CloseReason::Disconnected
            | CloseReason::TokenExpired => 1008,
            CloseReason::BinaryFrame => 1003,
            CloseReason::FrameTooLarge => 1009,
            CloseReason::SlowConsumer | CloseReason::WriteTimeout => 1013,
            CloseReason::Protocol(_) => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::LogGap => 1012,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::HelloTimeout => "no Hello received in time",
            CloseReason::TokenExpired => "token expired",
            CloseReason::BinaryFrame => "binary frames are not supported; send JSON text frames",
            CloseReason::FrameTooLarge => "message too large",
            CloseReason::RateLimited => "too many actions per second",
            CloseReason::SlowConsumer => "client too slow: outbound queue full",
            CloseReason::Idle => "connection idle: no pong received",
            CloseReason::WriteTimeout => "client too slow: a write did not complete in time",
            CloseReason::Protocol(text) => text,
            CloseReason::InvalidUtf8 => "invalid UTF-8 in a text message or close reason",
            CloseReason::Disconnected => "disconnected by the operator",
            CloseReason::LogGap => "events were missed on this node: reconnect and resume",
        }
    }

    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ShuttingDown => "shutdown",
            CloseReason::HelloTimeout => "hello_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::BinaryFrame => "binary_frame",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Idle => "idle",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_payload",
            CloseReason::Disconnected => "disconnected",
            CloseReason::LogGap => "log_gap",
        }
    }
}
