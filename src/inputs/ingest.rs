//! `POST /events`: turns a request body in any accepted shape into envelopes, refuses bad
//! entries one by one, and hands the good ones to the hub.
//!
//! Accepted shapes: one EventBridge event object, a JSON array of them, the PutEvents shape
//! `{"Entries":[...]}`, and CloudEvents 1.0 in structured, batch and binary mode. Owns the
//! PutEvents-style response, and the ingest side of backpressure: a request whose events do
//! not fit in the ingest backlog (`limits.max_ingest_backlog_bytes`) is refused with 503 and
//! `Retry-After` as a whole, never queued without bound. Does not own auth (auth does) or the envelope rules (the
//! protocol crate does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use eventgate_protocol::envelope::{self, EntryError, Event, Fill};

use crate::errors::IngestError;
use crate::http_body::BodyLimits;
use crate::hub::PublishError;
use crate::state::AppState;
use crate::telemetry;

enum Shape {
    EventBridge,
    PutEvents,
    CloudEvent,
}

fn fill(state: &AppState) -> Fill {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    Fill {
        id: uuid::Uuid::new_v4().to_string(),
        time: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        account: state.config.account.clone(),
        region: state.config.region.clone(),
    }
}

fn parse_entry(state: &AppState, raw: &RawValue, shape: &Shape) -> Result<Event, EntryError> {
    let limit = state.config.limits.max_event_bytes;
    if raw.get().len() > limit {
        return Err(EntryError::TooLarge {
            size: raw.get().len(),
            limit,
        });
    }
    let fill = fill(state);
    let event = match shape {
        Shape::EventBridge => envelope::from_eventbridge(raw, &fill),
        Shape::PutEvents => envelope::from_put_events_entry(raw, &fill),
        Shape::CloudEvent => envelope::from_cloudevent(raw, &fill),
    }?;
    if event.json.len() > limit {
        return Err(EntryError::TooLarge {
            size: event.json.len(),
            limit,
        });
    }
    Ok(event)
}

fn entries_of<'a>(
    body: &'a str,
    media: &str,
    max_entries: usize,
) -> Result<(Vec<&'a RawValue>, Shape), IngestError> {
    let malformed = |err: serde_json::Error| IngestError::MalformedJson(err.to_string());
    let top: &RawValue = serde_json::from_str(body).map_err(malformed)?;
    let first = top.get().trim_start().as_bytes().first().copied();
    let (entries, shape) = match (media, first) {
        ("application/cloudevents+json", Some(b'{')) => (vec![top], Shape::CloudEvent),
        ("application/cloudevents+json", _) => {
            return Err(IngestError::BadRequest(
                "a structured CloudEvent must be a JSON object".into(),
            ))
        }
        ("application/cloudevents-batch+json", Some(b'[')) => (
            serde_json::from_str::<Vec<&RawValue>>(top.get()).map_err(malformed)?,
            Shape::CloudEvent,
        ),
        ("application/cloudevents-batch+json", _) => {
            return Err(IngestError::BadRequest(
                "a CloudEvents batch must be a JSON array".into(),
            ))
        }
        (_, Some(b'[')) => (
            serde_json::from_str::<Vec<&RawValue>>(top.get()).map_err(malformed)?,
            Shape::EventBridge,
        ),
        (_, Some(b'{')) => {
            let fields: BTreeMap<&str, &RawValue> =
                serde_json::from_str(top.get()).map_err(malformed)?;
            match fields.get("Entries") {
                Some(list) => match serde_json::from_str::<Vec<&RawValue>>(list.get()) {
                    Ok(entries) => (entries, Shape::PutEvents),
                    Err(_) => {
                        return Err(IngestError::BadRequest(
                            "\"Entries\" must be an array of entries".into(),
                        ))
                    }
                },
                None => (vec![top], Shape::EventBridge),
            }
        }
        _ => {
            return Err(IngestError::BadRequest(
                "the body must be an event object, an array of events or {\"Entries\":[...]}"
                    .into(),
            ))
        }
    };
    if entries.is_empty() {
        return Err(IngestError::BadRequest("no entries in the request".into()));
    }
    if entries.len() > max_entries {
        telemetry::limit_rejected("max_entries");
        return Err(IngestError::BadRequest(format!(
            "too many entries: {}, the limit is {max_entries}",
            entries.len()
        )));
    }
    Ok((entries, shape))
}

fn binary_cloudevent(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    media: &str,
) -> Result<Event, EntryError> {
    let attributes: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("ce-")?;
            Some((name.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    if body.len() > state.config.limits.max_event_bytes {
        return Err(EntryError::TooLarge {
            size: body.len(),
            limit: state.config.limits.max_event_bytes,
        });
    }
    let is_json = media == "application/json" || media.ends_with("+json") || media.is_empty();
    envelope::from_binary_cloudevent(&attributes, body, is_json, &fill(state))
}

/// The `POST /events` handler.
pub async fn post_events(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    match ingest(&state, peer, request).await {
        Ok(response) => response,
        Err(error) => {
            let code = match (&error, error.status().as_u16()) {
                (IngestError::Body(body), _) => body.code(),
                (_, 401) => "unauthorized",
                (_, 403) => "forbidden",
                (_, 415) => "unsupported_media_type",
                (_, 429) => "rate_limited",
                (IngestError::Limit(_), 503) => "backlog_full",
                (_, 503) => "unavailable",
                _ => "bad_request",
            };
            telemetry::ingest_error(code, &error);
            error.into_response()
        }
    }
}

/// `limits.max_ingest_events_per_second_per_token`: every entry costs one token.
fn check_rate(state: &AppState, token: &[u8; 32], entries: usize) -> Result<(), IngestError> {
    state.limiter.check_ingest(token, entries).map_err(|error| {
        telemetry::limit_rejected(error.label());
        IngestError::Limit(error)
    })
}

async fn ingest(
    state: &AppState,
    peer: SocketAddr,
    request: Request<Body>,
) -> Result<Response, IngestError> {
    let (parts, body) = request.into_parts();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let token = state.auth.check_ingest(authorization, peer.ip())?;
    let limits = BodyLimits {
        max_bytes: state.config.limits.max_body_bytes,
        max_bytes_key: "max_body_bytes",
        timeout: state.config.limits.body_timeout.0,
    };
    let body = crate::http_body::read(body, limits)
        .await
        .map_err(IngestError::Body)?;
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default();

    let results: Vec<Result<Event, EntryError>> = if parts.headers.contains_key("ce-specversion") {
        check_rate(state, &token, 1)?;
        vec![binary_cloudevent(state, &parts.headers, &body, &media)]
    } else {
        if !matches!(
            media.as_str(),
            "" | "application/json"
                | "application/cloudevents+json"
                | "application/cloudevents-batch+json"
        ) {
            return Err(IngestError::UnsupportedMediaType(media));
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| IngestError::MalformedJson("the body is not UTF-8".into()))?;
        let (entries, shape) = entries_of(text, &media, state.config.limits.max_entries)?;
        check_rate(state, &token, entries.len())?;
        entries
            .into_iter()
            .map(|raw| parse_entry(state, raw, &shape))
            .collect()
    };

    let mut accepted = Vec::new();
    let mut entries = Vec::with_capacity(results.len());
    let mut failed = 0usize;
    for result in results {
        match result {
            Ok(event) => {
                entries.push(json!({ "EventId": event.id }));
                accepted.push(Arc::new(event));
            }
            Err(error) => {
                failed += 1;
                if matches!(error, EntryError::TooLarge { .. }) {
                    telemetry::limit_rejected("max_event_bytes");
                }
                telemetry::ingest_error(telemetry::entry_error_code(&error), &error);
                entries
                    .push(json!({ "ErrorCode": error.code(), "ErrorMessage": error.to_string() }));
            }
        }
    }
    let count = accepted.len() as u64;
    state
        .publisher
        .try_publish(accepted)
        .map_err(|error| match error {
            PublishError::Busy(limit) => {
                telemetry::limit_rejected(limit.label());
                IngestError::Limit(limit)
            }
            PublishError::Stopped(_) => IngestError::Unavailable,
            PublishError::LogUnavailable(state) => IngestError::LogUnavailable(state),
        })?;
    telemetry::events_ingested(count);
    let body: Value = json!({ "FailedEntryCount": failed, "Entries": entries });
    Ok(Json(body).into_response())
}
