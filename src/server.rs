//! The HTTP face of the gateway: the router, the WebSocket upgrade, health, metrics, the
//! pattern tester and the dev-mode demo page, plus `run`, which serves until shutdown and
//! then drains.
//!
//! Owns wiring and the shutdown tree (stop accepting, close sessions with 1001, wait for
//! them within the grace period). Does not own protocol decisions: handlers call auth,
//! session, ingest and hub.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use eventgate_protocol::pattern::{Pattern, PatternLimits};

use crate::auth::{Auth, ClientIdentity};
use crate::config::{Config, TestPatternAccess};
use crate::errors::{TestPatternError, UpgradeError};
use crate::handshake::{self, Accepted, HandshakeError, RequestHead, UpgradeRequest};
use crate::hub::{Hub, HubSettings};
use crate::limits::ConnectionSlot;
use crate::listener::{Transport, WebSocketRoute};
use crate::readiness::Readiness;
use crate::state::AppState;
use crate::{session, telemetry};

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error("stack_id is required")]
    MissingStackId,
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Identity(String),
}

/// An upgrade that passed every check, holding its connection slot.
struct Admitted {
    accepted: Accepted,
    identity: ClientIdentity,
    slot: ConnectionSlot,
    /// Who it is, for the admin console's connection table (boxed, and only while the
    /// console is on: the session's future holds this struct for its whole life).
    listing: Option<Box<crate::admin::registry::Entry>>,
    /// The connection's scope and token expiry.
    grant: crate::identity::Grant,
}

/// Every check of a WebSocket upgrade, in order: the handshake itself, draining, the abuse
/// limits (new-connection rate, then a slot under the global and per-address caps), the
/// `Origin`, then the `header` query (host, API key, client id). Both ways an upgrade
/// arrives call this, so they refuse alike.
async fn admit(
    state: &AppState,
    peer: SocketAddr,
    request: &impl UpgradeRequest,
    query: Option<&str>,
) -> Result<Admitted, UpgradeError> {
    let accepted = handshake::check(request).map_err(UpgradeError::Handshake)?;
    let header = handshake::query_parameter(query.unwrap_or_default(), "header")
        .map_err(|error| UpgradeError::BadQuery(error.to_string()))?;
    if state.draining.load(Ordering::Relaxed) {
        return Err(UpgradeError::Draining);
    }
    let client = state
        .limiter
        .client_ip(peer.ip(), request.header_values("x-forwarded-for"));
    let slot = state
        .limiter
        .check_new_connection(client)
        .and_then(|()| state.limiter.reserve_connection(client))
        .map_err(UpgradeError::Limit)?;
    state.auth.check_origin(request.header_values("origin"))?;
    let identity = state
        .auth
        .check_header(header.as_deref(), request.header_str("host"))?;
    let grant = state
        .identity
        .admit(header.as_deref(), request)
        .await
        .map_err(UpgradeError::Identity)?;
    Ok(Admitted {
        accepted,
        identity,
        slot,
        listing: state.admin.enabled().then(|| {
            Box::new(crate::admin::registry::Entry {
                client,
                peer,
                since: std::time::SystemTime::now(),
            })
        }),
        grant,
    })
}

/// Counts a refused upgrade and turns it into its response.
fn refusal(error: UpgradeError) -> Response {
    match &error {
        UpgradeError::Limit(limit) => telemetry::limit_rejected(limit.label()),
        other => telemetry::auth_failed(other.reason()),
    }
    error.into_response()
}

/// The first request of a connection asked for a WebSocket path: answer it on the socket
/// (101 and the session, or a refusal with its JSON body), without hyper.
#[allow(clippy::manual_async_fn)] // an async fn would hold its arguments twice: see inside
pub fn accept_websocket(
    state: Arc<AppState>,
    mut io: Transport,
    peer: SocketAddr,
    head: RequestHead,
    rest: Vec<u8>,
) -> impl Future<Output = ()> + Send {
    // Not an `async fn`, for the reason given at `session::run`: this future holds the
    // session's for the connection's whole life.
    async move {
        let admitted = admit(&state, peer, &head, head.query()).await;
        // Not kept for the session's life.
        drop(head);
        match admitted {
            Ok(admitted) => {
                if io
                    .write_all(&handshake::switching_protocols(&admitted.accepted))
                    .await
                    .is_ok()
                {
                    let tracker = state.sessions.clone();
                    tracker
                        .track_future(run_session(state, io, rest, admitted))
                        .await;
                }
            }
            Err(error) => {
                let response = refusal(error);
                if write_response(&mut io, response).await.is_ok() {
                    let _ = io.shutdown().await;
                }
            }
        }
    }
}

/// Writes `response` as HTTP/1.1 and says the connection closes after it.
async fn write_response(io: &mut Transport, response: Response) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::CONNECTION {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
    }
    bytes.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&body);
    io.write_all(&bytes).await?;
    io.flush().await
}

/// An upgrade request that came through hyper (after other requests on a kept-alive
/// connection, say): the same checks, then hyper hands over the connection.
async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let admitted = match admit(&state, peer, &parts, parts.uri.query()).await {
        Ok(admitted) => admitted,
        Err(error) => {
            // Closed after the answer, as on the listener's path: an unread body (or
            // anything else the client sent after the head) is never taken as a request.
            let mut response = refusal(error);
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return refusal(UpgradeError::Handshake(HandshakeError::NotHttp11));
    };
    let response = handshake::switching_protocols_headers(&admitted.accepted)
        .into_iter()
        .fold(
            Response::builder().status(StatusCode::SWITCHING_PROTOCOLS),
            |response, (name, value)| response.header(name, value),
        )
        .body(axum::body::Body::empty());
    let tracker = state.sessions.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = Transport::Upgraded(hyper_util::rt::TokioIo::new(upgraded));
                run_session(state, io, Vec::new(), admitted).await;
            }
            Err(error) => tracing::debug!(%peer, %error, "upgrade failed"),
        }
    });
    response.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Each session's read buffer. tungstenite keeps it for the connection's life and fills it
/// with zeros before every read, so it is small: client actions are short, and a longer
/// message (up to `max_frame_bytes`) is read in several pieces.
const SESSION_READ_BUFFER_BYTES: usize = 1024;

/// Runs an admitted connection's session; its slot is freed when the session ends.
#[allow(clippy::manual_async_fn)] // an async fn would hold its arguments twice: see inside
fn run_session(
    state: Arc<AppState>,
    io: Transport,
    rest: Vec<u8>,
    mut admitted: Admitted,
) -> impl Future<Output = ()> + Send {
    // Not an `async fn`, for the reason given at `session::run`.
    async move {
        let connection = state.next_connection.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(connection, client = %admitted.identity.app_instance_id, "websocket accepted");
        let limits = &state.config.limits;
        let config = WebSocketConfig::default()
            .read_buffer_size(SESSION_READ_BUFFER_BYTES)
            .write_buffer_size(4 * 1024)
            .max_write_buffer_size(limits.max_queued_bytes.max(64 * 1024) * 2)
            .max_message_size(Some(limits.max_frame_bytes))
            .max_frame_size(Some(limits.max_frame_bytes));
        let socket =
            WebSocketStream::from_partially_read(io.shared(), rest, Role::Server, Some(config))
                .await;
        let listed = admitted
            .listing
            .take()
            .map(|entry| state.admin.connections.list(connection, *entry));
        session::run(socket, state, connection, admitted.grant).await;
        drop(listed);
        drop(admitted.slot);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPatternRequest {
    #[serde(rename = "EventPattern")]
    event_pattern: Value,
    #[serde(rename = "Event")]
    event: Value,
    /// A connection's scope: the answer is what a client with this scope would receive.
    #[serde(rename = "Scope", default)]
    scope: Option<Value>,
}

/// `POST /test-pattern`: `{"EventPattern": .., "Event": ..}` → `{"Result": bool}`.
///
/// No free CPU for strangers: unless `test_pattern = "open"` the caller needs an ingest
/// token (as `POST /events` does, so dev mode without tokens lets loopback callers in); the
/// body is at most `limits.max_test_pattern_body_bytes` and must arrive within
/// `limits.body_timeout`, the event is at most `limits.max_event_bytes`; parsing and
/// evaluation run on the blocking pool, never on the async workers, at most
/// `limits.max_concurrent_test_patterns` at once (more are refused with 503), and are
/// waited for at most `limits.test_pattern_timeout`.
async fn test_pattern(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    match run_test_pattern(&state, peer, request).await {
        Ok(result) => Json(json!({ "Result": result })).into_response(),
        Err(error) => {
            telemetry::test_pattern_error(error.code());
            if let Some(limit) = error.limit() {
                telemetry::limit_rejected(limit);
            }
            error.into_response()
        }
    }
}

async fn run_test_pattern(
    state: &AppState,
    peer: SocketAddr,
    request: axum::extract::Request,
) -> Result<bool, TestPatternError> {
    let (parts, body) = request.into_parts();
    if state.config.test_pattern == TestPatternAccess::Token {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        state
            .auth
            .check_ingest(authorization, peer.ip())
            .map_err(TestPatternError::Credential)?;
    }
    let limits = &state.config.limits;
    let body = crate::http_body::read(
        body,
        crate::http_body::BodyLimits {
            max_bytes: limits.max_test_pattern_body_bytes,
            max_bytes_key: "max_test_pattern_body_bytes",
            timeout: limits.body_timeout.0,
        },
    )
    .await
    .map_err(TestPatternError::Body)?;
    // Taken once the body is in: a slow body holds no evaluation place.
    let permit = Arc::clone(&state.test_patterns)
        .try_acquire_owned()
        .map_err(|_| TestPatternError::Busy(limits.max_concurrent_test_patterns))?;
    let pattern_limits = state.pattern_limits.clone();
    let max_event_bytes = limits.max_event_bytes;
    off_the_workers(permit, limits.test_pattern_timeout.0, move || {
        test_pattern_body(&body, &pattern_limits, max_event_bytes)
    })
    .await?
}

/// Runs `work` on the blocking pool, holding `permit` until it ends (so a request answered
/// at its timeout still counts while its evaluation runs on), and waits for it at most
/// `timeout`.
async fn off_the_workers<T: Send + 'static>(
    permit: tokio::sync::OwnedSemaphorePermit,
    timeout: std::time::Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestPatternError> {
    let task = tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    });
    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(TestPatternError::Timeout(timeout)),
        Ok(Err(_)) => Err(TestPatternError::Failed),
        Ok(Ok(result)) => Ok(result),
    }
}

/// Parses a `/test-pattern` body and evaluates it (on the blocking pool).
fn test_pattern_body(
    body: &[u8],
    limits: &PatternLimits,
    max_event_bytes: usize,
) -> Result<bool, TestPatternError> {
    let request: TestPatternRequest = serde_json::from_slice(body).map_err(|error| {
        TestPatternError::BadRequest(format!(
            "the body must be {{\"EventPattern\": <pattern>, \"Event\": <event>}}: {error}"
        ))
    })?;
    let size = match &request.event {
        Value::String(text) => text.len(),
        other => other.to_string().len(),
    };
    if size > max_event_bytes {
        return Err(TestPatternError::EventTooLarge {
            size,
            limit: max_event_bytes,
        });
    }
    evaluate_request(&request, limits).map_err(TestPatternError::BadRequest)
}

/// Shared by `POST /test-pattern` and `eventgate test-pattern`: a pattern and an event, each
/// a JSON value or a string holding JSON.
pub fn evaluate_pattern(
    pattern: &Value,
    event: &Value,
    limits: &PatternLimits,
) -> Result<bool, String> {
    let pattern = test_pattern_value(pattern, limits)?;
    Ok(pattern.matches(&test_event(event)?))
}

/// The pattern of a pattern test: a JSON object, or a string holding one.
fn test_pattern_value(pattern: &Value, limits: &PatternLimits) -> Result<Pattern, String> {
    match pattern {
        Value::String(text) => Pattern::parse(text, limits),
        other => Pattern::from_value(other, limits),
    }
    .map_err(|error| format!("invalid pattern: {error}"))
}

/// The event of a pattern test: a JSON object, or a string holding one.
fn test_event(event: &Value) -> Result<Value, String> {
    let event = match event {
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map_err(|error| format!("invalid event: not JSON: {error}"))?,
        other => other.clone(),
    };
    if !event.is_object() {
        return Err("invalid event: an event must be a JSON object".to_owned());
    }
    Ok(event)
}

/// A `/test-pattern` request; with a `Scope`, the pattern is ANDed with it, as a scoped
/// connection would subscribe it.
fn evaluate_request(request: &TestPatternRequest, limits: &PatternLimits) -> Result<bool, String> {
    let Some(scope) = &request.scope else {
        return evaluate_pattern(&request.event_pattern, &request.event, limits);
    };
    let pattern = test_pattern_value(&request.event_pattern, limits)?;
    let scoped = crate::identity::scoped_pattern(pattern, scope, limits)?;
    Ok(scoped.matches(&test_event(&request.event)?))
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
        "tokens": state.identity.can_mint(),
    }))
    .into_response()
}

/// `POST /demo/token` (dev mode): `{"tenant": ".."}` → `{"token": ".."}`, a short-lived
/// token signed with `identity.hmac_secret`, so the demo page can connect as a tenant.
async fn demo_token(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let tenant = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| {
            value
                .get("tenant")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|tenant| !tenant.is_empty() && tenant.len() <= 128);
    let Some(tenant) = tenant else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "the body must be {\"tenant\": \"<1 to 128 characters>\"}" })),
        )
            .into_response();
    };
    match state.identity.mint_dev_token(&tenant) {
        Some(token) => Json(json!({ "token": token })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no identity.hmac_secret is configured to sign demo tokens" })),
        )
            .into_response(),
    }
}

fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/events", post(crate::ingest::post_events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.admin.enabled() {
        router = router.merge(crate::admin::routes(Arc::clone(&state.admin)));
    }
    for path in &state.config.ws_paths {
        router = router.route(path, axum::routing::any(upgrade));
    }
    if state.config.test_pattern != TestPatternAccess::Off {
        router = router.route("/test-pattern", post(test_pattern));
    }
    if state.config.dev {
        router = router
            .route(
                "/demo",
                get(|| async { axum::response::Redirect::permanent("/demo/") }),
            )
            .route("/demo/", get(demo_index))
            .route("/demo/config.json", get(demo_config))
            .route("/demo/token", post(demo_token))
            .route(
                "/demo/{file}",
                get(|path: Path<String>| demo_file(Some(path))),
            );
    }
    // Refusals are JSON like every other error; axum adds `Allow` to the 405.
    router = router
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such endpoint" })),
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({ "error": "this endpoint does not take this method; see the Allow header" })),
            )
        });
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
    // The recorder first, so that every series exists (at zero) before anything counts.
    let metrics = telemetry::prometheus();
    let tls = config.tls.as_ref().map(crate::tls::Tls::new).transpose()?;
    let auth = Auth::new(&config, &stack_id);
    let identity =
        crate::identity::Identity::new(config.identity.as_ref(), config.limits.pattern_limits())
            .map_err(RunError::Identity)?;
    let background = TaskTracker::new();
    let hub_stop = CancellationToken::new();
    let hub = Hub::spawn(
        HubSettings {
            max_rules_per_connection: config.limits.max_rules_per_connection,
            max_queued_bytes: config.limits.max_queued_bytes,
            keepalive_interval: config.keepalive_interval.0,
            max_ingest_backlog_bytes: config.limits.max_ingest_backlog_bytes,
            history: config.history.clone(),
            max_queued_messages: config.limits.max_queued_messages,
            budget: config.limits.rule_budget(),
            shared_log: config
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.backend.shared_log()),
        },
        hub_stop.clone(),
        &background,
    );
    let readiness = Readiness::default();
    let cluster_stop = hub_stop.child_token();
    let forwarder = config.cluster.as_ref().map(|cluster| {
        crate::cluster::start(
            cluster,
            &config.history,
            hub.clone(),
            &readiness,
            cluster_stop.clone(),
            &background,
        )
    });
    let cluster_peers = forwarder
        .as_ref()
        .map(|forwarder| Arc::clone(&forwarder.peers));
    let publisher = crate::cluster::Publisher::new(hub.clone(), forwarder);
    let sources_stop = hub_stop.child_token();
    crate::sources::start(
        &config.sources,
        &publisher,
        &config.account,
        &config.region,
        &readiness,
        &sources_stop,
        &background,
    );
    let auth = Arc::new(auth);
    let session_stops = Arc::<crate::stop::SessionStops>::default();
    let draining = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(crate::admin::Console::new(
        &config,
        crate::admin::Gateway {
            auth: Arc::clone(&auth),
            hub: hub.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            session_stops: Arc::clone(&session_stops),
            draining: Arc::clone(&draining),
            cluster_peers,
        },
    ));
    crate::admin::spawn_sampler(&admin, hub_stop.child_token(), &background);
    let state = Arc::new(AppState {
        admin,
        pattern_limits: config.limits.pattern_limits(),
        dev_api_key: (config.dev && crate::config::sha256_digest(&stack_id).is_none())
            .then(|| eventgate_protocol::header::api_key(&stack_id, None)),
        limiter: Arc::new(crate::limits::Limiter::new(&config.limits)),
        test_patterns: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_concurrent_test_patterns,
        )),
        config,
        auth,
        identity,
        hub,
        publisher,
        session_stops,
        sessions: TaskTracker::new(),
        draining,
        readiness,
        next_connection: AtomicU64::new(1),
        metrics,
    });
    state
        .identity
        .spawn_refresher(hub_stop.child_token(), &background);
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
    let accept_state = state.clone();
    let websocket = WebSocketRoute {
        paths: state.config.ws_paths.clone(),
        accept: Arc::new(move |io, peer, head, rest| {
            Box::pin(accept_websocket(accept_state.clone(), io, peer, head, rest))
        }),
    };
    let serving = crate::listener::Serving {
        websocket,
        tls,
        upgrade_timeout: state.config.limits.upgrade_timeout.0,
        grace: state.config.shutdown_grace.0,
        send_buffer_bytes: state.config.limits.send_buffer_bytes,
    };
    let drain_period = state.config.drain_period();
    let serve = crate::listener::serve(listener, app, serving, async move {
        shutdown.cancelled().await;
        // No new broker messages once draining starts: unread ones stay in the broker.
        drain_sources.cancel();
        drain_state.draining.store(true, Ordering::Relaxed);
        // `drain_period`: still listening, `/readyz` answers 503 and new WebSockets are
        // refused with 503, so load balancers take the node out while its sessions run on.
        if !drain_period.is_zero() {
            tracing::info!(
                drain_period_ms = drain_period.as_millis() as u64,
                "draining: /readyz answers 503, new WebSockets are refused"
            );
            tokio::time::sleep(drain_period).await;
        }
        tracing::info!("shutting down: closing connections");
        drain_state.session_stops.stop_all();
    });
    // The accept loop runs as a task of the runtime, not in the caller's future: a caller
    // that is `block_on` (the binary) would otherwise accept on its own thread and hand
    // every connection's task to a worker through the runtime's global queue, waking a
    // worker (an eventfd write or futex) per connection.
    let served = match tokio::spawn(serve).await {
        Ok(served) => served,
        Err(error) => Err(std::io::Error::other(error)),
    };
    state.draining.store(true, Ordering::Relaxed);
    state.session_stops.stop_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluation past its time budget is answered at once, but keeps its place until it
    /// really ends, so abandoned evaluations cannot pile up on the blocking pool.
    #[tokio::test]
    async fn an_evaluation_over_its_budget_keeps_its_place_until_it_ends() {
        let places = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = Arc::clone(&places).try_acquire_owned().expect("a place");
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let budget = std::time::Duration::from_millis(50);
        let outcome = off_the_workers(permit, budget, move || finished.recv().is_ok()).await;
        assert!(matches!(outcome, Err(TestPatternError::Timeout(t)) if t == budget));
        // Still running: a second evaluation is refused.
        assert!(Arc::clone(&places).try_acquire_owned().is_err());
        finish.send(()).expect("the evaluation is waiting");
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if let Ok(permit) = Arc::clone(&places).try_acquire_owned() {
                    return permit;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the place is freed when the evaluation ends");
        let outcome = off_the_workers(again, budget, || 7).await;
        assert!(matches!(outcome, Ok(7)));
        assert_eq!(places.available_permits(), 1);
    }

    #[test]
    fn test_pattern_bodies_are_checked_before_evaluation() {
        let limits = PatternLimits::default();
        let body = br#"{"EventPattern":{"source":["a"]},"Event":{"source":"a"}}"#;
        assert!(matches!(test_pattern_body(body, &limits, 1000), Ok(true)));
        assert!(matches!(
            test_pattern_body(body, &limits, 10),
            Err(TestPatternError::EventTooLarge {
                size: 14,
                limit: 10
            })
        ));
        assert!(matches!(
            test_pattern_body(b"{", &limits, 1000),
            Err(TestPatternError::BadRequest(_))
        ));
    }
}
