//! The console's routes: the JSON API under `/admin/api/` (documented with its shapes in
//! `docs/operations.md`, "The admin console") and the page's files under `/admin/`.
//!
//! Owns request parsing, paging and the JSON shapes. Does not own the data: the registry,
//! the hub, `stop`, the readiness table and the metrics answer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::registry::Entry;
use super::stats::{unix_millis, Metrics, SAMPLE_INTERVAL};
use super::{authorize, AdminError, Console};
use crate::hub::{ConnectionId, ConnectionView, Inspect, Inspection};
use crate::stop::OperatorClose;
use crate::telemetry;

/// Connections per page unless `limit` says otherwise, and the most `limit` may ask.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;
/// Longest search text, in bytes.
pub const MAX_SEARCH_BYTES: usize = 256;
/// Longest close reason (a close frame carries at most 123 bytes of it).
pub const MAX_REASON_BYTES: usize = 123;

/// The console's routes, on its own state; [`crate::server`] adds them when the console is on.
pub fn routes<S>(console: Arc<Console>) -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(super::page::index))
        .route("/admin/{file}", get(super::page::file))
        .route("/admin/api/connections", get(list_connections))
        .route("/admin/api/connections/{id}", get(one_connection))
        .route("/admin/api/connections/{id}/disconnect", post(disconnect))
        .route("/admin/api/totals", get(totals))
        .route("/admin/api/sources", get(sources))
        .route("/admin/api/cluster", get(cluster))
        .route("/admin/api/{*rest}", any(unknown))
        .with_state(console)
}

/// An API request whose credentials passed [`authorize`].
pub struct Authorized;

impl FromRequestParts<Arc<Console>> for Authorized {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer)
            .ok_or(AdminError::NotLoopback)?;
        authorize(console, peer, &parts.headers).map(|()| Authorized)
    }
}

async fn unknown(_: Authorized) -> AdminError {
    AdminError::BadRequest("no such admin API endpoint; see docs/operations.md".into())
}

fn parameter(query: Option<&str>, name: &str) -> Result<Option<String>, AdminError> {
    crate::handshake::query_parameter(query.unwrap_or_default(), name)
        .map(|value| value.map(|value| value.into_owned()))
        .map_err(|error| AdminError::BadRequest(error.to_string()))
}

fn number(query: Option<&str>, name: &str, default: u64) -> Result<u64, AdminError> {
    match parameter(query, name)? {
        None => Ok(default),
        Some(text) => text.trim().parse().map_err(|_| {
            AdminError::BadRequest(format!("{name} must be a whole number, not {text:?}"))
        }),
    }
}

fn connection_id(text: &str) -> Result<ConnectionId, AdminError> {
    text.parse()
        .map_err(|_| AdminError::BadRequest(format!("{text:?} is not a connection id")))
}

fn rfc3339(time: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One connection's JSON: who it is from the registry, what it holds from the hub.
fn connection_json(id: ConnectionId, entry: &Entry, view: Option<&ConnectionView>) -> Value {
    let connected_seconds = entry.since.elapsed().map_or(0, |elapsed| elapsed.as_secs());
    json!({
        "id": id,
        "client": entry.client.to_string(),
        "peer": entry.peer.to_string(),
        "connected_since": rfc3339(entry.since),
        "connected_seconds": connected_seconds,
        "announced": view.is_some(),
        "rules": view.map_or(json!([]), |view| json!(view.rules)),
        "queued_messages": view.map_or(0, |view| view.queued_messages),
        "queued_bytes": view.map_or(0, |view| view.queued_bytes),
        "notifications": view.map_or(0, |view| view.notifications),
    })
}

/// `GET /admin/api/connections?after=&limit=&q=`: a page of connections in id order.
async fn list_connections(
    _: Authorized,
    State(console): State<Arc<Console>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let query = query.as_deref();
    let after = number(query, "after", 0)?;
    let limit = number(query, "limit", DEFAULT_PAGE as u64)?;
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(AdminError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let limit = limit as usize;
    let search = parameter(query, "q")?.filter(|text| !text.trim().is_empty());
    let registry = &console.connections;
    let (mut rows, total): (Vec<Value>, usize) = match search {
        Some(text) => {
            if text.len() > MAX_SEARCH_BYTES {
                return Err(AdminError::BadRequest(format!(
                    "q is longer than {MAX_SEARCH_BYTES} bytes"
                )));
            }
            let found = console
                .gateway
                .hub
                .inspect(Inspect::Search {
                    text: text.trim().to_owned(),
                    after,
                    limit: limit + 1,
                })
                .await?;
            let rows = found
                .connections
                .iter()
                .filter_map(|view| {
                    let entry = registry.get(view.id)?;
                    Some(connection_json(view.id, &entry, Some(view)))
                })
                .collect();
            (rows, found.matched)
        }
        None => {
            let page = registry.page(after, limit + 1);
            let ids = page.iter().map(|(id, _)| *id).collect();
            let found = console
                .gateway
                .hub
                .inspect(Inspect::Connections(ids))
                .await?;
            let rows = page
                .iter()
                .map(|(id, entry)| {
                    let view = found.connections.iter().find(|view| view.id == *id);
                    connection_json(*id, entry, view)
                })
                .collect();
            (rows, registry.len())
        }
    };
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_after = more
        .then(|| rows.last().and_then(|row| row["id"].as_u64()))
        .flatten();
    Ok(Json(json!({
        "connections": rows,
        "total": total,
        "next_after": next_after,
    }))
    .into_response())
}

/// `GET /admin/api/connections/{id}`.
async fn one_connection(
    _: Authorized,
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id = connection_id(&id)?;
    let entry = console
        .connections
        .get(id)
        .ok_or(AdminError::NoSuchConnection(id))?;
    let found = console
        .gateway
        .hub
        .inspect(Inspect::Connections(vec![id]))
        .await?;
    Ok(Json(connection_json(id, &entry, found.connections.first())).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    code: Option<u16>,
    reason: Option<String>,
}

/// Close codes an operator may choose: the standard ones that fit a server's close, and
/// the private range.
fn allowed_close_code(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 1011 | 1013 | 4000..=4999)
}

/// `POST /admin/api/connections/{id}/disconnect` with an optional
/// `{"code": 4000, "reason": "..."}`: the session closes with that frame.
async fn disconnect(
    _: Authorized,
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let id = connection_id(&id)?;
    let request: DisconnectRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            AdminError::BadRequest(format!(
                "the body must be {{\"code\": <close code>, \"reason\": <text>}} (both optional): {error}"
            ))
        })?
    };
    let default = crate::errors::CloseReason::Disconnected;
    let code = request.code.unwrap_or(default.code());
    if !allowed_close_code(code) {
        return Err(AdminError::BadRequest(format!(
            "code {code} is not allowed: use 1000, 1001, 1008, 1011, 1013 or 4000-4999"
        )));
    }
    let reason = request.reason.unwrap_or_else(|| default.text().to_owned());
    if reason.len() > MAX_REASON_BYTES {
        return Err(AdminError::BadRequest(format!(
            "reason is {} bytes; a close frame holds at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    let close = OperatorClose {
        code,
        reason: reason.clone(),
    };
    if !console.gateway.session_stops.disconnect(id, close) {
        return Err(AdminError::NoSuchConnection(id));
    }
    telemetry::admin_disconnected(id, code);
    Ok(Json(json!({ "disconnected": id, "code": code, "reason": reason })).into_response())
}

fn counts(map: std::collections::BTreeMap<String, f64>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(key, value)| (key, json!(value)))
            .collect(),
    )
}

/// `GET /admin/api/totals`: this node's live numbers and the graph's history.
async fn totals(
    _: Authorized,
    State(console): State<Arc<Console>>,
) -> Result<Response, AdminError> {
    let Inspection {
        announced, rules, ..
    } = console
        .gateway
        .hub
        .inspect(Inspect::Connections(Vec::new()))
        .await?;
    let metrics = Metrics::parse(&console.gateway.metrics.render());
    Ok(Json(json!({
        "time": unix_millis(std::time::SystemTime::now()),
        "draining": console.gateway.draining.load(Ordering::Relaxed),
        "connections": console.connections.len(),
        "announced": announced,
        "rules": rules,
        "events_in": {
            "total": metrics.events_in(),
            "ingest": metrics.total(telemetry::EVENTS_INGESTED),
            "sources": metrics.total(telemetry::SOURCE_DISPATCHED),
            "cluster": metrics.total(telemetry::CLUSTER_RECEIVED),
        },
        "notifications_out": metrics.total(telemetry::NOTIFICATIONS_SENT),
        "slow_consumer_closes": metrics.total(telemetry::SLOW_CONSUMER_CLOSES),
        "closes": counts(metrics.by_label(telemetry::CONNECTIONS_CLOSED, "reason")),
        "refusals": {
            "upgrade": counts(metrics.by_label(telemetry::AUTH_FAILURES, "reason")),
            "limits": counts(metrics.by_label(telemetry::LIMIT_REJECTIONS, "limit")),
            "actions": counts(metrics.by_label(telemetry::ACTION_ERRORS, "kind")),
            "ingest": counts(metrics.by_label(telemetry::INGEST_ERRORS, "code")),
            "admin": counts(metrics.by_label(telemetry::ADMIN_REFUSALS, "reason")),
        },
        "history": {
            "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            "points": console.history.points(),
        },
    }))
    .into_response())
}

/// `GET /admin/api/sources`: each configured broker source, its state and its lag.
async fn sources(_: Authorized, State(console): State<Arc<Console>>) -> Response {
    let (_, components) = console.gateway.readiness.report();
    let metrics = Metrics::parse(&console.gateway.metrics.render());
    let per_source = |name: &str| metrics.by_label(name, "source");
    let (lag, consumed, dispatched, dead, errors, reconnects) = (
        per_source(telemetry::SOURCE_LAG),
        per_source(telemetry::SOURCE_CONSUMED),
        per_source(telemetry::SOURCE_DISPATCHED),
        per_source(telemetry::SOURCE_DEAD_LETTERED),
        per_source(telemetry::SOURCE_ERRORS),
        per_source(telemetry::SOURCE_RECONNECTS),
    );
    let rows: Vec<Value> = console
        .sources
        .iter()
        .map(|(name, kind)| {
            let name = name.as_str();
            let component = &components[format!("source:{name}")];
            let of = |map: &std::collections::BTreeMap<String, f64>| {
                map.get(name).copied().unwrap_or(0.0)
            };
            json!({
                "name": name,
                "kind": kind,
                "ready": component["ready"].as_bool().unwrap_or(false),
                "state": component["state"].as_str().unwrap_or("unknown"),
                "lag": lag.get(name).copied(),
                "consumed": of(&consumed),
                "dispatched": of(&dispatched),
                "dead_lettered": of(&dead),
                "errors": of(&errors),
                "reconnects": of(&reconnects),
            })
        })
        .collect();
    Json(json!({ "sources": rows })).into_response()
}

/// `GET /admin/api/cluster`: the backplane's configuration, state and traffic.
async fn cluster(_: Authorized, State(console): State<Arc<Console>>) -> Response {
    let Some(config) = &console.cluster else {
        return Json(json!({ "enabled": false })).into_response();
    };
    let (_, components) = console.gateway.readiness.report();
    let backplane: Map<String, Value> = components
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.starts_with("cluster"))
        .map(|(name, status)| (name.clone(), status.clone()))
        .collect();
    let metrics = Metrics::parse(&console.gateway.metrics.render());
    let peers = console.gateway.cluster_peers.as_deref();
    let heard: Vec<Value> = peers
        .map(crate::cluster::Peers::list)
        .unwrap_or_default()
        .into_iter()
        .map(|(node, heard)| {
            json!({
                "node_id": node,
                "last_heard": rfc3339(heard.last),
                "seconds_ago": heard.last.elapsed().map_or(0, |elapsed| elapsed.as_secs()),
                "events": heard.events,
            })
        })
        .collect();
    Json(json!({
        "enabled": true,
        "backend": config.backend.name(),
        "channel": config.channel,
        "node_id": peers.map(|peers| &*peers.node_id),
        "peers": heard,
        "forward_queue": config.forward_queue,
        "backplane": backplane,
        "forwarded": metrics.total(telemetry::CLUSTER_FORWARDED),
        "not_forwarded": counts(metrics.by_label(telemetry::CLUSTER_NOT_FORWARDED, "reason")),
        "received": metrics.total(telemetry::CLUSTER_RECEIVED),
        "errors": counts(metrics.by_label(telemetry::CLUSTER_ERRORS, "kind")),
        "reconnects": metrics.total(telemetry::CLUSTER_RECONNECTS),
    }))
    .into_response()
}
