//! NATS JetStream source: a durable pull consumer on an existing stream. Each message body
//! (a JSON object) is mapped onto an event, handed to the hub, and only then acked.
//! Unmappable messages are published to the dead-letter subject with the reason in a
//! header and terminated (JetStream will not redeliver them).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};

use eventgate_protocol::envelope::Event;

use super::{
    decode_fields, default_batch_size, default_detail_type_field, to_event, Backoff, MapError,
    Mapped, SourceContext, SourceError,
};
use crate::telemetry;
use crate::units::Seconds;

/// Header carrying the reason on a dead-lettered message.
pub const DLQ_REASON_HEADER: &str = "Eventgate-Dlq-Reason";
/// Header carrying the original subject on a dead-lettered message.
pub const DLQ_SUBJECT_HEADER: &str = "Eventgate-Original-Subject";
/// Header carrying the original stream sequence on a dead-lettered message.
pub const DLQ_SEQUENCE_HEADER: &str = "Eventgate-Original-Sequence";

/// Where a newly created durable consumer starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    New,
    Last,
    LastPerSubject,
}

/// `[[sources]] kind = "nats_jetstream"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub name: String,
    /// `nats://host:4222`.
    pub url: String,
    /// The JetStream stream (must exist), e.g. `"supermq"`.
    pub stream: String,
    /// Subjects the consumer filters on, e.g. `["events.supermq.>"]`; empty = all.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Durable consumer name; gateways sharing it share the work.
    pub durable: String,
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    /// Time the server waits for an ack before redelivering.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Seconds,
    /// Most unacked messages outstanding.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Messages handed to the hub at once (at most).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Subject dead-lettered messages are published to (default `eventgate.dlq.<name>`).
    #[serde(default)]
    pub dlq_subject: Option<String>,
    /// Overrides the event `source` (default: the message subject).
    #[serde(default)]
    pub source: Option<String>,
    /// Field whose value becomes `detail-type`.
    #[serde(default = "default_detail_type_field")]
    pub detail_type_field: String,
    /// Fields holding JSON text, decoded into `detail`.
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// Fields holding base64 of JSON text, decoded into `detail`.
    #[serde(default = "default_base64_json_fields")]
    pub base64_json_fields: Vec<String>,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Seconds,
}

fn default_ack_wait() -> Seconds {
    Seconds(Duration::from_secs(30))
}

fn default_max_ack_pending() -> i64 {
    1000
}

fn default_base64_json_fields() -> Vec<String> {
    vec!["metadata".to_owned()]
}

fn default_max_backoff() -> Seconds {
    Seconds(Duration::from_secs(30))
}

impl NatsConfig {
    fn dlq_subject(&self) -> String {
        self.dlq_subject
            .clone()
            .unwrap_or_else(|| format!("eventgate.dlq.{}", self.name))
    }
}

/// Runs the source until `context.shutdown` is cancelled, reconnecting on errors.
pub async fn run(config: NatsConfig, context: SourceContext) {
    let mut backoff = Backoff::reconnect(config.max_backoff.0);
    loop {
        let result = session(&config, &context, &mut backoff).await;
        if !context.again(&config.name, &mut backoff, result).await {
            break;
        }
    }
}

/// How often the consumer's pending count is read for the `eventgate_source_lag` gauge.
const LAG_REPORT_INTERVAL: Duration = Duration::from_secs(5);

async fn session(
    config: &NatsConfig,
    context: &SourceContext,
    backoff: &mut Backoff,
) -> Result<(), SourceError> {
    let client = tokio::select! {
        () = context.shutdown.cancelled() => return Ok(()),
        client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name(format!("eventgate source {}", config.name))
            .connect(config.url.as_str()) => client.map_err(SourceError::nats)?,
    };
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(&config.stream)
        .await
        .map_err(SourceError::nats)?;
    let deliver_policy = match config.deliver_policy {
        DeliverPolicy::All => jetstream::consumer::DeliverPolicy::All,
        DeliverPolicy::New => jetstream::consumer::DeliverPolicy::New,
        DeliverPolicy::Last => jetstream::consumer::DeliverPolicy::Last,
        DeliverPolicy::LastPerSubject => jetstream::consumer::DeliverPolicy::LastPerSubject,
    };
    let consumer = stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                filter_subjects: config.subjects.clone(),
                deliver_policy,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait.0,
                max_ack_pending: config.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(SourceError::nats)?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.batch_size.max(1))
        .messages()
        .await
        .map_err(SourceError::nats)?;
    tracing::info!(source = %config.name, stream = %config.stream, "connected to nats");
    context.status.set(true, "consuming");
    backoff.reset();
    let mut consumer = consumer;
    let mut lag_report = tokio::time::interval(LAG_REPORT_INTERVAL);
    let mut batches = messages.ready_chunks(config.batch_size.max(1));
    let dlq_subject = config.dlq_subject();
    loop {
        let batch = tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            _ = lag_report.tick() => {
                // Messages the stream holds for this consumer that it has not yet received.
                let info = consumer.info().await.map_err(SourceError::nats)?;
                telemetry::source_lag(&config.name, info.num_pending + info.num_ack_pending as u64);
                continue;
            }
            batch = batches.next() => batch,
        };
        let Some(batch) = batch else {
            return Err(SourceError::Nats("the message stream ended".into()));
        };
        let mut messages = Vec::with_capacity(batch.len());
        for message in batch {
            messages.push(message.map_err(SourceError::nats)?);
        }
        process(config, context, &client, &dlq_subject, messages).await?;
    }
}

fn map_message(
    config: &NatsConfig,
    context: &SourceContext,
    message: &jetstream::Message,
) -> Result<Event, MapError> {
    let mut detail: Map<String, Value> = match serde_json::from_slice(&message.payload) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(MapError::BodyNotObject(format!(
                "got {}",
                match other {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            )))
        }
        Err(error) => return Err(MapError::BodyNotObject(error.to_string())),
    };
    decode_fields(&mut detail, &config.json_fields, &config.base64_json_fields)?;
    let id = match message.info() {
        Ok(info) => format!("{}-{}", info.stream, info.stream_sequence),
        Err(_) => context.fill().id,
    };
    to_event(
        Mapped {
            id,
            source: config.source.as_deref().unwrap_or(message.subject.as_str()),
            detail_type_field: &config.detail_type_field,
            detail,
        },
        &context.fill(),
    )
}

async fn process(
    config: &NatsConfig,
    context: &SourceContext,
    client: &async_nats::Client,
    dlq_subject: &str,
    messages: Vec<jetstream::Message>,
) -> Result<(), SourceError> {
    let name = &config.name;
    telemetry::source_consumed(name, messages.len() as u64);
    let mut events = Vec::with_capacity(messages.len());
    let mut good = Vec::with_capacity(messages.len());
    let mut dead = Vec::new();
    for message in messages {
        match map_message(config, context, &message) {
            Ok(event) => {
                events.push(Arc::new(event));
                good.push(message);
            }
            Err(reason) => dead.push((message, reason)),
        }
    }
    let dispatched = events.len() as u64;
    context.hand_off(events).await?;
    telemetry::source_dispatched(name, dispatched);
    for message in good {
        message.ack().await.map_err(SourceError::nats)?;
    }
    for (message, reason) in dead {
        let reason = reason.to_string();
        let sequence = message
            .info()
            .map(|info| info.stream_sequence.to_string())
            .unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        // Header values cannot hold line breaks.
        headers.insert(
            DLQ_REASON_HEADER,
            reason.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(DLQ_SUBJECT_HEADER, message.subject.as_str());
        headers.insert(DLQ_SEQUENCE_HEADER, sequence.as_str());
        client
            .publish_with_headers(dlq_subject.to_owned(), headers, message.payload.clone())
            .await
            .map_err(SourceError::nats)?;
        client.flush().await.map_err(SourceError::nats)?;
        message
            .ack_with(AckKind::Term)
            .await
            .map_err(SourceError::nats)?;
        telemetry::source_dead_lettered(name, &sequence, &reason);
    }
    Ok(())
}
