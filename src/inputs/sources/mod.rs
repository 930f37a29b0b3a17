//! Broker sources: tasks that consume events from a message broker (Redis Streams, NATS
//! JetStream) and hand them to the hub, acknowledging each message only after the hub has
//! queued it ("hand-off"), so delivery into the gateway is at-least-once.
//!
//! Owns the `[[sources]]` configuration, starting and stopping the source tasks, the mapping
//! helpers shared by every source (field map → EventBridge envelope), reconnect backoff and
//! the per-source error type. Does not own fan-out (see `hub`) nor the envelope rules (see
//! `eventgate_protocol::envelope`).

pub mod amqp;
pub mod nats;
pub mod redis_streams;

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use eventgate_protocol::envelope::{self, EntryError, Event, Fill};

use crate::backoff::Backoff;
use crate::cluster::Publisher;
use crate::hub::HubStopped;
use crate::readiness::{Component, Readiness};

/// One `[[sources]]` entry; `kind` selects the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    RedisStreams(redis_streams::RedisStreamsConfig),
    NatsJetstream(nats::NatsConfig),
    Amqp(amqp::AmqpConfig),
}

impl SourceConfig {
    /// True for sources that deliver every message to every consumer (a RabbitMQ stream
    /// queue read by each node), as opposed to sharing the messages out between consumers.
    pub fn every_node_reads_everything(&self) -> bool {
        matches!(self, SourceConfig::Amqp(config) if config.queue_type == amqp::QueueType::Stream)
    }

    /// The configured name, used in logs, metrics and the DLQ.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::RedisStreams(config) => &config.name,
            SourceConfig::NatsJetstream(config) => &config.name,
            SourceConfig::Amqp(config) => &config.name,
        }
    }
}

/// Why a source lost its broker session (it reconnects after a backoff) or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("nats: {0}")]
    Nats(String),
    #[error("amqp: {0}")]
    Amqp(String),
    #[error("invalid source configuration: {0}")]
    Config(String),
    #[error("the hub has stopped")]
    HubStopped(#[from] HubStopped),
}

impl SourceError {
    pub(crate) fn nats(error: impl std::fmt::Display) -> Self {
        SourceError::Nats(error.to_string())
    }
}

/// Why one message could not be turned into an event; the message is dead-lettered with
/// this text as its reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MapError {
    #[error("field {0:?} is not UTF-8")]
    NotUtf8(String),
    #[error("the body is not a JSON object: {0}")]
    BodyNotObject(String),
    #[error("field {field:?} is not valid JSON: {error}")]
    FieldNotJson { field: String, error: String },
    #[error("field {field:?} is not valid base64: {error}")]
    FieldNotBase64 { field: String, error: String },
    #[error("field {field:?} must be a string")]
    FieldNotString { field: String },
    #[error("the detail-type field {0:?} is missing or not a non-empty string")]
    MissingDetailType(String),
    #[error("occurred_at {0:?} is not a time in epoch nanoseconds")]
    BadOccurredAt(String),
    #[error("{0}")]
    Envelope(#[from] EntryError),
}

/// What every source needs from the gateway.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// This node's hub and, on a cluster node, the backplane.
    pub publisher: Publisher,
    pub account: String,
    pub region: String,
    pub shutdown: CancellationToken,
    /// This source's line in `/readyz`.
    pub status: Component,
    /// True when every cluster node reads every message of this source itself (a RabbitMQ
    /// stream queue): its events then go to this node's clients only, never over the
    /// backplane, or clients on other nodes would get them twice.
    pub local_only: bool,
}

impl SourceContext {
    pub(crate) fn fill(&self) -> Fill {
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        Fill {
            id: uuid::Uuid::new_v4().to_string(),
            time: rfc3339(now),
            account: self.account.clone(),
            region: self.region.clone(),
        }
    }

    /// Hands events to the hub; returns once they are queued for the dispatcher.
    pub(crate) async fn hand_off(&self, events: Vec<Arc<Event>>) -> Result<(), HubStopped> {
        if events.is_empty() {
            return Ok(());
        }
        if self.local_only {
            self.publisher.publish_local(events).await
        } else {
            self.publisher.publish(events).await
        }
    }
}

impl SourceContext {
    /// After a broker session of source `name` ended with `result`: `true` when another
    /// should start (it failed: the error is counted, `reconnecting` reported and the next
    /// backoff delay waited), `false` when the source ends (the session ended cleanly, the
    /// hub stopped or the gateway shuts down; `stopped` is reported). Each source loops: run
    /// a session with its `Backoff`, then ask this with the result whether to run another.
    pub(crate) async fn again(
        &self,
        name: &str,
        backoff: &mut Backoff,
        result: Result<(), SourceError>,
    ) -> bool {
        match result {
            Ok(()) | Err(SourceError::HubStopped(_)) => {}
            Err(error) => {
                self.status.set(false, "reconnecting");
                crate::telemetry::source_error(name, &error);
                if backoff.wait(name, &self.shutdown).await {
                    return true;
                }
            }
        }
        self.status.set(false, "stopped");
        tracing::info!(source = %name, "source stopped");
        false
    }
}

/// Starts one task per configured source on `tracker`; they stop when `shutdown` is
/// cancelled.
pub fn start(
    configs: &[SourceConfig],
    publisher: &Publisher,
    account: &str,
    region: &str,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    for config in configs {
        let context = SourceContext {
            publisher: publisher.clone(),
            account: account.to_owned(),
            region: region.to_owned(),
            shutdown: shutdown.clone(),
            status: readiness.component(format!("source:{}", config.name())),
            local_only: config.every_node_reads_everything(),
        };
        tracing::info!(source = config.name(), "starting source");
        crate::telemetry::source_registered(config.name());
        match config.clone() {
            SourceConfig::RedisStreams(config) => {
                tracker.spawn(redis_streams::run(config, context));
            }
            SourceConfig::NatsJetstream(config) => {
                tracker.spawn(nats::run(config, context));
            }
            SourceConfig::Amqp(config) => {
                tracker.spawn(amqp::run(config, context));
            }
        }
    }
}

fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `occurred_at` (epoch nanoseconds, as a number or a string) → an RFC 3339 time with
/// second precision, like EventBridge's `time`.
pub(crate) fn time_from_epoch_nanos(value: &Value) -> Result<String, MapError> {
    let bad = || MapError::BadOccurredAt(value.to_string());
    let nanos: i128 = match value {
        Value::Number(number) => number.as_u64().map(i128::from).ok_or_else(bad)?,
        Value::String(text) => text.trim().parse().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
    let time = time.replace_nanosecond(0).map_err(|_| bad())?;
    Ok(rfc3339(time))
}

/// Replaces the string field `field` of `detail` by the JSON it holds.
fn decode_json_field(detail: &mut Map<String, Value>, field: &str) -> Result<(), MapError> {
    let Some(value) = detail.get_mut(field) else {
        return Ok(());
    };
    let Value::String(text) = value else {
        return Err(MapError::FieldNotString {
            field: field.to_owned(),
        });
    };
    let decoded: Value = serde_json::from_str(text).map_err(|error| MapError::FieldNotJson {
        field: field.to_owned(),
        error: error.to_string(),
    })?;
    *value = decoded;
    Ok(())
}

/// Replaces the string field `field` of `detail` by the JSON its base64 text holds.
fn decode_base64_json_field(detail: &mut Map<String, Value>, field: &str) -> Result<(), MapError> {
    let Some(value) = detail.get_mut(field) else {
        return Ok(());
    };
    let Value::String(text) = value else {
        return Err(MapError::FieldNotString {
            field: field.to_owned(),
        });
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|error| MapError::FieldNotBase64 {
            field: field.to_owned(),
            error: error.to_string(),
        })?;
    let decoded: Value =
        serde_json::from_slice(&bytes).map_err(|error| MapError::FieldNotJson {
            field: field.to_owned(),
            error: error.to_string(),
        })?;
    *value = decoded;
    Ok(())
}

/// The field decoding every source offers with the same meaning (`json_fields`,
/// `base64_json_fields`): each named field of `detail` that is present (a string) is replaced
/// by the JSON it holds; an absent field is left alone, a field that does not decode is a
/// [`MapError`] (the message is dead-lettered).
pub(crate) fn decode_fields(
    detail: &mut Map<String, Value>,
    json_fields: &[String],
    base64_json_fields: &[String],
) -> Result<(), MapError> {
    for field in json_fields {
        decode_json_field(detail, field)?;
    }
    for field in base64_json_fields {
        decode_base64_json_field(detail, field)?;
    }
    Ok(())
}

/// What a source extracted from one message.
#[derive(Debug)]
pub(crate) struct Mapped<'a> {
    pub id: String,
    pub source: &'a str,
    pub detail_type_field: &'a str,
    pub detail: Map<String, Value>,
}

/// Builds the EventBridge envelope: `detail-type` from the configured field, `time` from
/// `occurred_at` when present, `detail` = the whole field map.
pub(crate) fn to_event(mapped: Mapped<'_>, fill: &Fill) -> Result<Event, MapError> {
    let detail_type = match mapped.detail.get(mapped.detail_type_field) {
        Some(Value::String(text)) if !text.is_empty() => text.clone(),
        _ => {
            return Err(MapError::MissingDetailType(
                mapped.detail_type_field.to_owned(),
            ))
        }
    };
    let mut envelope = Map::new();
    envelope.insert("id".to_owned(), Value::String(mapped.id));
    envelope.insert("source".to_owned(), Value::String(mapped.source.to_owned()));
    envelope.insert("detail-type".to_owned(), Value::String(detail_type));
    if let Some(occurred_at) = mapped.detail.get("occurred_at") {
        envelope.insert(
            "time".to_owned(),
            Value::String(time_from_epoch_nanos(occurred_at)?),
        );
    }
    envelope.insert("detail".to_owned(), Value::Object(mapped.detail));
    let text = Value::Object(envelope).to_string();
    let raw = serde_json::value::RawValue::from_string(text)
        .map_err(|error| MapError::BodyNotObject(error.to_string()))?;
    Ok(envelope::from_eventbridge(&raw, fill)?)
}

fn default_detail_type_field() -> String {
    "operation".to_owned()
}

fn default_batch_size() -> usize {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill() -> Fill {
        Fill {
            id: "generated".into(),
            time: "2026-01-01T00:00:00Z".into(),
            account: "000000000000".into(),
            region: "local".into(),
        }
    }

    #[test]
    fn occurred_at_becomes_rfc3339() {
        assert_eq!(
            time_from_epoch_nanos(&Value::String("1693307171925834295".into())).unwrap(),
            "2023-08-29T11:06:11Z"
        );
        assert_eq!(
            time_from_epoch_nanos(&serde_json::json!(1696509664755440542u64)).unwrap(),
            "2023-10-05T12:41:04Z"
        );
        assert!(time_from_epoch_nanos(&Value::String("yesterday".into())).is_err());
    }

    #[test]
    fn fields_map_onto_the_envelope() {
        let mut detail = Map::new();
        detail.insert("operation".into(), "user.create".into());
        detail.insert("metadata".into(), "{\"a\":1}".into());
        detail.insert("occurred_at".into(), "1693307171925834295".into());
        decode_json_field(&mut detail, "metadata").unwrap();
        let event = to_event(
            Mapped {
                id: "1-0".into(),
                source: "supermq.users",
                detail_type_field: "operation",
                detail,
            },
            &fill(),
        )
        .unwrap();
        assert_eq!(event.value["detail-type"], "user.create");
        assert_eq!(event.value["source"], "supermq.users");
        assert_eq!(event.value["id"], "1-0");
        assert_eq!(event.value["time"], "2023-08-29T11:06:11Z");
        assert_eq!(event.value["detail"]["metadata"]["a"], 1);
        assert_eq!(event.value["account"], "000000000000");
    }

    #[test]
    fn bad_messages_have_reasons() {
        let mut detail = Map::new();
        detail.insert("metadata".into(), "e30=".into());
        decode_base64_json_field(&mut detail, "metadata").unwrap();
        assert_eq!(detail["metadata"], serde_json::json!({}));
        detail.insert("metadata".into(), "not base64!".into());
        let error = decode_base64_json_field(&mut detail, "metadata").unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");
        let error = to_event(
            Mapped {
                id: "1".into(),
                source: "s",
                detail_type_field: "operation",
                detail: Map::new(),
            },
            &fill(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("operation"), "{error}");
    }
}
