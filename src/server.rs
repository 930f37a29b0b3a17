//! The HTTP face of the gateway: the router, the WebSocket upgrade, health, metrics, the
//! pattern tester and the dev-mode demo page, plus `run`, which serves until shutdown and
//! then drains.
//!
//! Owns wiring and the shutdown tree (stop accepting, close sessions with 1001, wait for
//! them within the grace period). Does not own protocol decisions: handlers call auth,
//! session, ingest and hub.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use eventgate_protocol::pattern::{Pattern, PatternLimits};

use crate::auth::Auth;
use crate::config::Config;
use crate::errors::UpgradeError;
use crate::hub::{Hub, HubSettings};
use crate::readiness::Readiness;
use crate::{session, telemetry};

/// Shared state of one running gateway.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub auth: Auth,
    pub hub: Hub,
    pub pattern_limits: PatternLimits,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    pub draining: AtomicBool,
    /// Sources and the cluster backplane report their state here for `/readyz`.
    pub readiness: Readiness,
    pub next_connection: AtomicU64,
    pub metrics: PrometheusHandle,
    /// What the dev-mode demo page is pre-filled with.
    pub dev_api_key: Option<String>,
    /// Connection caps and rate limits (see `limits`).
    pub limiter: Arc<crate::limits::Limiter>,
}

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error("stack_id is required")]
    MissingStackId,
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

#[derive(Deserialize)]
struct UpgradeQuery {
    header: Option<String>,
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<UpgradeQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let slot = if state.draining.load(Ordering::Relaxed) {
        None
    } else {
        match reserve_slot(&state, peer, &headers) {
            Ok(slot) => Some(slot),
            Err(error) => {
                telemetry::limit_rejected(error.label());
                return UpgradeError::Limit(error).into_response();
            }
        }
    };
    let checked = if state.draining.load(Ordering::Relaxed) {
        Err(UpgradeError::Draining)
    } else {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        state
            .auth
            .check_origin(origin)
            .and_then(|()| state.auth.check_header(query.header.as_deref(), host))
    };
    let identity = match checked {
        Ok(identity) => identity,
        Err(error) => {
            telemetry::auth_failed(error.reason());
            return error.into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let connection = state.next_connection.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(connection, client = %identity.app_instance_id, "websocket accepted");
    let limits = &state.config.limits;
    let tracker = state.sessions.clone();
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(limits.max_queued_bytes.max(64 * 1024) * 2)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                session::run(socket, state, connection).await;
                drop(slot);
            })
        })
}

/// The abuse limits of an upgrade, checked before auth: new-connection rate, then a slot
/// under the global and per-address caps.
fn reserve_slot(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<crate::limits::ConnectionSlot, crate::limits::LimitError> {
    let client = state.limiter.client_ip(peer.ip(), headers);
    state.limiter.check_new_connection(client)?;
    state.limiter.reserve_connection(client)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPatternRequest {
    #[serde(rename = "EventPattern")]
    event_pattern: Value,
    #[serde(rename = "Event")]
    event: Value,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "Error": message }))).into_response()
}

/// `POST /test-pattern`: `{"EventPattern": .., "Event": ..}` → `{"Result": bool}`.
async fn test_pattern(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let request: TestPatternRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return bad_request(format!(
                "the body must be {{\"EventPattern\": <pattern>, \"Event\": <event>}}: {error}"
            ))
        }
    };
    match evaluate_pattern(
        &request.event_pattern,
        &request.event,
        &state.pattern_limits,
    ) {
        Ok(result) => Json(json!({ "Result": result })).into_response(),
        Err(message) => bad_request(message),
    }
}

/// Shared by `POST /test-pattern` and `eventgate test-pattern`: a pattern and an event, each
/// a JSON value or a string holding JSON.
pub fn evaluate_pattern(
    pattern: &Value,
    event: &Value,
    limits: &PatternLimits,
) -> Result<bool, String> {
    let pattern = match pattern {
        Value::String(text) => Pattern::parse(text, limits),
        other => Pattern::from_value(other, limits),
    }
    .map_err(|error| format!("invalid pattern: {error}"))?;
    let event = match event {
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|error| format!("invalid event: not JSON: {error}"))?,
        other => other.clone(),
    };
    if !event.is_object() {
        return Err("invalid event: an event must be a JSON object".to_owned());
    }
    Ok(pattern.matches(&event))
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// 200 when accepting and every source and the backplane are up; 503 while draining or
/// while any of them is not, with each component's state in the body.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (components_ready, components) = state.readiness.report();
    let (status, text) = if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !components_ready {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    } else {
        (StatusCode::OK, "ready")
    };
    (
        status,
        Json(json!({ "status": text, "components": components })),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

const DEMO_FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../web-demo/index.html"),
    ),
    (
        "eventgate-client.js",
        "text/javascript; charset=utf-8",
        include_str!("../web-demo/eventgate-client.js"),
    ),
    (
        "eventgate-client.d.ts",
        "text/plain; charset=utf-8",
        include_str!("../web-demo/eventgate-client.d.ts"),
    ),
    (
        "demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../web-demo/demo.js"),
    ),
    (
        "demo.css",
        "text/css; charset=utf-8",
        include_str!("../web-demo/demo.css"),
    ),
];

async fn demo_file(path: Option<Path<String>>) -> Response {
    let name = path.map_or_else(|| "index.html".to_owned(), |Path(name)| name);
    match DEMO_FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such demo file" })),
        )
            .into_response(),
    }
}

async fn demo_index() -> Response {
    demo_file(None).await
}

async fn demo_config(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| state.config.listen.to_string(), str::to_owned);
    let (ws, http) = if state.config.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    Json(json!({
        "url": format!("{ws}://{host}/"),
        "apiKey": state.dev_api_key,
        "ingestUrl": format!("{http}://{host}/events"),
    }))
    .into_response()
}

fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/events", post(crate::ingest::post_events))
        .route("/test-pattern", post(test_pattern))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for path in &state.config.ws_paths {
        router = router.route(path, get(upgrade));
    }
    if state.config.dev {
        router = router
            .route(
                "/demo",
                get(|| async { axum::response::Redirect::permanent("/demo/") }),
            )
            .route("/demo/", get(demo_index))
            .route("/demo/config.json", get(demo_config))
            .route(
                "/demo/{file}",
                get(|path: Path<String>| demo_file(Some(path))),
            );
    }
    router.with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then drains: stops
/// accepting, closes every WebSocket with 1001 and waits for sessions within
/// `shutdown_grace`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_with_reload(config, listener, shutdown, crate::tls::CertReload::new()).await
}

/// [`run`], plus a handle that reloads the TLS certificate on demand (the binary calls it
/// on SIGHUP).
pub async fn run_with_reload(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    reload: crate::tls::CertReload,
) -> Result<(), RunError> {
    let stack_id = config.stack_id.clone().ok_or(RunError::MissingStackId)?;
    let tls = config.tls.as_ref().map(crate::tls::Tls::new).transpose()?;
    let auth = Auth::new(&config, &stack_id);
    let background = TaskTracker::new();
    let hub_stop = CancellationToken::new();
    let hub = Hub::spawn(
        HubSettings {
            max_rules_per_connection: config.limits.max_rules_per_connection,
            max_queued_bytes: config.limits.max_queued_bytes,
            keepalive_interval: config.keepalive_interval.0,
        },
        hub_stop.clone(),
        &background,
    );
    let readiness = Readiness::default();
    let cluster_stop = hub_stop.child_token();
    let hub = match &config.cluster {
        Some(cluster) => {
            let forwarder = crate::cluster::start(
                cluster,
                hub.clone(),
                &readiness,
                cluster_stop.clone(),
                &background,
            );
            hub.with_forwarder(forwarder)
        }
        None => hub,
    };
    let sources_stop = hub_stop.child_token();
    crate::sources::start(
        &config.sources,
        &hub,
        &config.account,
        &config.region,
        &readiness,
        &sources_stop,
        &background,
    );
    let sessions_stop = CancellationToken::new();
    let state = Arc::new(AppState {
        pattern_limits: config.limits.pattern_limits(),
        dev_api_key: (config.dev && crate::config::sha256_digest(&stack_id).is_none())
            .then(|| eventgate_protocol::header::api_key(&stack_id, None)),
        limiter: Arc::new(crate::limits::Limiter::new(&config.limits)),
        config,
        auth,
        hub,
        shutdown: sessions_stop.clone(),
        sessions: TaskTracker::new(),
        draining: AtomicBool::new(false),
        readiness,
        next_connection: AtomicU64::new(1),
        metrics: telemetry::prometheus(),
    });
    let app = router(state.clone());
    let drain_state = state.clone();
    let drain_sources = sources_stop.clone();
    if let (Some(tls), Some(settings)) = (&tls, &state.config.tls) {
        tls.spawn_reloader(
            settings.reload_interval.0,
            reload,
            hub_stop.child_token(),
            &background,
        );
    }
    let serving = crate::listener::Serving {
        tls,
        upgrade_timeout: state.config.limits.upgrade_timeout.0,
        grace: state.config.shutdown_grace.0,
    };
    let serve = crate::listener::serve(listener, app, serving, async move {
        shutdown.cancelled().await;
        // No new broker messages once draining starts: unread ones stay in the broker.
        drain_sources.cancel();
        drain_state.draining.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: closing connections");
        sessions_stop.cancel();
    });
    let served = serve.await;
    state.draining.store(true, Ordering::Relaxed);
    state.shutdown.cancel();
    state.sessions.close();
    if tokio::time::timeout(state.config.shutdown_grace.0, state.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with connections still open");
    }
    // Sources stop first (they may be in the middle of handing off), then the backplane
    // (it forwards what is still queued), then the hub.
    sources_stop.cancel();
    cluster_stop.cancel();
    hub_stop.cancel();
    background.close();
    background.wait().await;
    served.map_err(RunError::Serve)
}
