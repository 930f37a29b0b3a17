//! The operator's console: a JSON API and a web page under `/admin/` to see and steer a
//! running gateway (connections with their rules and queues, disconnecting one, totals,
//! sources, the cluster backplane).
//!
//! Owns who may use the console (the `admin_token` bearer token, compared in constant time
//! by `auth`, never logged; open to loopback clients in dev mode without a token; absent
//! otherwise, so that every `/admin/` path answers 404), the connection table it lists
//! from (`registry`), the numbers it shows (`stats`), its routes (`api`) and its page
//! (`web-admin/`, embedded). Does not own connections, rules or stopping a session: it asks
//! the hub, `stop` and the readiness table, through the handles `server::run` gives it
//! ([`Gateway`]); it never sees the server's shared state.

mod api;
mod page;
pub mod registry;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::cluster::{ClusterConfig, Peers};
use crate::config::Config;
use crate::hub::Hub;
use crate::readiness::Readiness;
use crate::stop::SessionStops;

pub use api::routes;

/// Who may use the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token, not dev mode: no `/admin/` route exists.
    Off,
    /// `admin_token` is configured: every API request carries it as a bearer token.
    Token,
    /// Dev mode without a token: loopback clients only, and not through a proxy.
    Loopback,
}

/// The parts of a running gateway the console reads and steers, handed over by
/// `server::run` (each a shared handle onto what the server uses itself).
#[derive(Debug)]
pub struct Gateway {
    /// Checks the admin token (in constant time).
    pub auth: Arc<Auth>,
    /// Answers what connections hold (`hub::Inspect`).
    pub hub: Hub,
    pub metrics: PrometheusHandle,
    /// The sources' and the backplane's states.
    pub readiness: Readiness,
    /// Stops one session (`disconnect`).
    pub session_stops: Arc<SessionStops>,
    /// Set once shutdown has begun.
    pub draining: Arc<AtomicBool>,
    /// This node's id and the nodes heard on the backplane, on a cluster node.
    pub cluster_peers: Option<Arc<Peers>>,
}

/// The console's state: who may use it, its connection table, its graph's history, the
/// configuration it reports and the gateway's handles.
#[derive(Debug)]
pub struct Console {
    access: Access,
    /// Every open connection while the console is on (the upgrade lists each one).
    pub connections: Arc<registry::Registry>,
    history: stats::History,
    /// Each configured source's name and kind.
    sources: Vec<(String, &'static str)>,
    cluster: Option<ClusterConfig>,
    gateway: Gateway,
}

/// Why an admin request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("an Authorization: Bearer <admin_token> header is required")]
    MissingToken,
    #[error("the admin token is not valid")]
    WrongToken,
    #[error("not found")]
    NotLoopback,
    #[error("no connection {0} on this node")]
    NoSuchConnection(u64),
    #[error("{0}")]
    BadRequest(String),
    #[error("the server is shutting down")]
    Stopping,
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::MissingToken | AdminError::WrongToken => StatusCode::UNAUTHORIZED,
            AdminError::NotLoopback | AdminError::NoSuchConnection(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(self, AdminError::MissingToken | AdminError::WrongToken) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"eventgate admin\""),
            );
        }
        response
    }
}

impl From<crate::hub::HubStopped> for AdminError {
    fn from(_: crate::hub::HubStopped) -> Self {
        AdminError::Stopping
    }
}

impl Console {
    pub fn new(config: &Config, gateway: Gateway) -> Console {
        let access = if config.admin_token.is_some() {
            Access::Token
        } else if config.dev {
            Access::Loopback
        } else {
            Access::Off
        };
        Console {
            access,
            connections: Arc::default(),
            history: stats::History::default(),
            sources: config
                .sources
                .iter()
                .map(|source| (source.name().to_owned(), source_kind(source)))
                .collect(),
            cluster: config.cluster.clone(),
            gateway,
        }
    }

    pub fn enabled(&self) -> bool {
        self.access != Access::Off
    }
}

fn source_kind(source: &crate::sources::SourceConfig) -> &'static str {
    use crate::sources::SourceConfig;
    match source {
        SourceConfig::RedisStreams(_) => "redis_streams",
        SourceConfig::NatsJetstream(_) => "nats_jetstream",
        SourceConfig::Amqp(_) => "amqp",
    }
}

/// A request from a loopback address that no proxy relayed.
fn direct_loopback(peer: SocketAddr, headers: &HeaderMap) -> bool {
    peer.ip().to_canonical().is_loopback()
        && !headers.contains_key("x-forwarded-for")
        && !headers.contains_key(header::FORWARDED)
}

/// May this request see the page's files?
fn may_see_page(console: &Console, peer: SocketAddr, headers: &HeaderMap) -> bool {
    match console.access {
        Access::Off => false,
        // The page holds nothing secret: it asks for the token and sends it to the API.
        Access::Token => true,
        Access::Loopback => direct_loopback(peer, headers),
    }
}

/// Checks an API request's credentials; counts and explains a refusal.
fn authorize(console: &Console, peer: SocketAddr, headers: &HeaderMap) -> Result<(), AdminError> {
    let refused = |reason: &'static str, error: AdminError| {
        crate::telemetry::admin_refused(reason);
        Err(error)
    };
    match console.access {
        Access::Off => refused("off", AdminError::NotLoopback),
        Access::Loopback if direct_loopback(peer, headers) => Ok(()),
        Access::Loopback => refused("not_loopback", AdminError::NotLoopback),
        Access::Token => {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| {
                    value
                        .strip_prefix("Bearer ")
                        .or_else(|| value.strip_prefix("bearer "))
                });
            match token {
                None => refused("missing_token", AdminError::MissingToken),
                Some(token) if console.gateway.auth.admin_token_matches(token.trim()) => Ok(()),
                Some(_) => refused("wrong_token", AdminError::WrongToken),
            }
        }
    }
}

/// Samples the totals for the console's graph until `stop`, when the console is on.
pub fn spawn_sampler(console: &Arc<Console>, stop: CancellationToken, tracker: &TaskTracker) {
    if !console.enabled() {
        return;
    }
    let console = Arc::clone(console);
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(stats::SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let metrics = stats::Metrics::parse(&console.gateway.metrics.render());
                    console.history.record(&metrics, console.connections.len());
                }
            }
        }
    });
}
