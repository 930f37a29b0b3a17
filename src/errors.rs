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
        LimitError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
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
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported content type {0:?}; use application/json, application/cloudevents+json, application/cloudevents-batch+json or CloudEvents binary mode")]
    UnsupportedMediaType(String),
    #[error("the server is shutting down")]
    Unavailable,
    #[error("{0}")]
    Limit(LimitError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngestError::MalformedJson(_) | IngestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
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
        json_error(self.status(), self.to_string(), limit)
    }
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
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ShuttingDown | CloseReason::Idle => 1001,
            CloseReason::HelloTimeout | CloseReason::RateLimited | CloseReason::TokenExpired => {
                1008
            }
            CloseReason::BinaryFrame => 1003,
            CloseReason::FrameTooLarge => 1009,
            CloseReason::SlowConsumer => 1013,
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
        }
    }
}
