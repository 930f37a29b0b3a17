//! The state every handler of one running gateway shares: its configuration, auth and
//! identity, the hub, the limiter, the sessions' stop signals and tracker, readiness, the
//! metrics handle and the admin console.
//!
//! Its own module so that the HTTP wiring (`server`), the session and ingest depend on it
//! rather than on each other. The admin console has a state of its own (`admin::Console`,
//! held here) and does not see this one. Owns no behaviour: `server::run` builds it.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;

use eventgate_protocol::pattern::PatternLimits;

use crate::auth::Auth;
use crate::cluster::Publisher;
use crate::config::Config;
use crate::hub::Hub;
use crate::readiness::Readiness;

/// Shared state of one running gateway.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub auth: Arc<Auth>,
    /// Verified identities and scopes (see `identity`).
    pub identity: crate::identity::Identity,
    pub hub: Hub,
    /// Where accepted events go: the hub and, on a cluster node, the backplane.
    pub publisher: Publisher,
    pub pattern_limits: PatternLimits,
    /// Every session's stop signal: shutdown closes them all with 1001.
    pub session_stops: Arc<crate::stop::SessionStops>,
    pub sessions: TaskTracker,
    /// Set once shutdown has begun (shared with the admin console).
    pub draining: Arc<AtomicBool>,
    /// Sources and the cluster backplane report their state here for `/readyz`.
    pub readiness: Readiness,
    pub next_connection: AtomicU64,
    pub metrics: PrometheusHandle,
    /// The operator's console under `/admin/` (see `admin`): the upgrade lists each
    /// connection in its table.
    pub admin: Arc<crate::admin::Console>,
    /// What the dev-mode demo page is pre-filled with.
    pub dev_api_key: Option<String>,
    /// Connection caps and rate limits (see `limits`).
    pub limiter: Arc<crate::limits::Limiter>,
    /// `POST /test-pattern` evaluations running (`limits.max_concurrent_test_patterns`).
    pub test_patterns: Arc<tokio::sync::Semaphore>,
}
