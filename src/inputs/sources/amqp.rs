//! AMQP 0-9-1 (RabbitMQ) source: declares a durable exchange, a durable queue shared by
//! every gateway node (classic, quorum or stream) bound with the configured keys, and
//! consumes it with manual acks and a `basic_qos` prefetch. Each batch of deliveries is
//! mapped onto events (structured or binary CloudEvents, EventBridge events, or plain JSON
//! objects), handed to the hub, and only then acked with one `multiple` ack. Unmappable
//! deliveries are published (with publisher confirms) to the dead-letter exchange with the
//! reason in a header, then acked. Queue depth is reported as a gauge.
//!
//! Owns the AMQP connection, topology, consume loop, mapping of message bodies and the DLQ.
//! Does not own the envelope rules (see `eventgate_protocol::envelope`), reconnect timing
//! (see `Backoff`) nor fan-out (see `hub`).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use eventgate_protocol::envelope::{self, EntryError, Event, Fill};

use super::{
    decode_fields, default_batch_size, time_from_epoch_nanos, Backoff, MapError, SourceContext,
    SourceError,
};
use crate::telemetry;
use crate::units::{NumberOrText, Seconds};

/// Header carrying the reason on a dead-lettered message.
pub const DLQ_REASON_HEADER: &str = "x-eventgate-dlq-reason";
/// Header carrying the source name on a dead-lettered message.
pub const DLQ_SOURCE_HEADER: &str = "x-eventgate-source";
/// Header carrying the exchange the message was originally published to.
pub const DLQ_EXCHANGE_HEADER: &str = "x-eventgate-original-exchange";
/// Header carrying the original routing key.
pub const DLQ_ROUTING_KEY_HEADER: &str = "x-eventgate-original-routing-key";
/// Header RabbitMQ puts on stream deliveries (and the consume argument to start from).
const STREAM_OFFSET: &str = "x-stream-offset";

/// How message bodies are read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// CloudEvents (structured with `specversion`, or binary in `cloudEvents:*` headers),
    /// else an EventBridge event (has `source` and `detail-type`), else a plain JSON object.
    #[default]
    Auto,
    Cloudevents,
    Eventbridge,
    Json,
}

/// The queue's `x-queue-type`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOffset {
    First,
    Last,
    Next,
    /// A stream offset.
    Offset(u64),
    /// Messages stored at or after this time (Unix seconds).
    Timestamp(u64),
    /// A RabbitMQ interval such as `"1h"` or `"7D"`: messages newer than that.
    Interval(String),
}

impl<'de> Deserialize<'de> for StreamOffset {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(offset) => Ok(StreamOffset::Offset(offset)),
            NumberOrText::Text(text) => {
                parse_stream_offset(&text).map_err(serde::de::Error::custom)
            }
        }
    }
}

fn parse_stream_offset(text: &str) -> Result<StreamOffset, String> {
    let text = text.trim();
    match text {
        "first" => return Ok(StreamOffset::First),
        "last" => return Ok(StreamOffset::Last),
        "next" => return Ok(StreamOffset::Next),
        _ => {}
    }
    if let Ok(offset) = text.parse::<u64>() {
        return Ok(StreamOffset::Offset(offset));
    }
    if let Ok(time) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return u64::try_from(time.unix_timestamp())
            .map(StreamOffset::Timestamp)
            .map_err(|_| format!("stream_offset {text:?} is before 1970"));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
    let (number, unit) = text.split_at(split);
    if !number.is_empty() && matches!(unit, "Y" | "M" | "D" | "h" | "m" | "s") {
        return Ok(StreamOffset::Interval(text.to_owned()));
    }
    Err(format!(
        "stream_offset {text:?} is not \"first\", \"last\", \"next\", an offset, an RFC 3339 time or an interval like \"1h\""
    ))
}

/// `[[sources]] kind = "amqp"`, checked when the configuration loads.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "AmqpSettings")]
/// Boxed: the settings are large next to the other sources' (clippy::large_enum_variant).
pub struct AmqpConfig(Box<AmqpSettings>);

impl Deref for AmqpConfig {
    type Target = AmqpSettings;
    fn deref(&self) -> &AmqpSettings {
        &self.0
    }
}

impl TryFrom<AmqpSettings> for AmqpConfig {
    type Error = String;
    fn try_from(settings: AmqpSettings) -> Result<Self, String> {
        settings.validate()?;
        Ok(AmqpConfig(Box::new(settings)))
    }
}

/// The keys of an AMQP source; see `docs/sources.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub name: String,
    /// `amqp://user:pass@host:5672/vhost` or `amqps://...`; or use `host`/`port`/`vhost`.
    #[serde(default)]
    pub url: Option<String>,
    /// Broker host when `url` is not set (default `localhost`).
    #[serde(default)]
    pub host: Option<String>,
    /// Broker port when `url` is not set (default 5672, or 5671 with `tls`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Virtual host when `url` is not set (default `/`).
    #[serde(default)]
    pub vhost: Option<String>,
    /// Use `amqps` when `url` is not set.
    #[serde(default)]
    pub tls: bool,
    /// Overrides the user name of the URL (default `guest`).
    #[serde(default)]
    pub username: Option<String>,
    /// Name of an environment variable holding the password (overrides the URL's).
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file of CA(s) trusted for the broker certificate (amqps), besides the webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// AMQP heartbeat interval asked of the broker.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Seconds,
    /// Exchange to bind to; declared durable.
    pub exchange: String,
    /// Type of `exchange` when declared: `topic` (default), `direct`, `fanout`, `headers`.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Binding keys, e.g. `["lamassu.certificate.*"]`.
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    /// Durable queue shared by every gateway node.
    pub queue: String,
    #[serde(default)]
    pub queue_type: QueueType,
    /// Where a stream consumer starts (only with `queue_type = "stream"`; default `next`).
    #[serde(default)]
    pub stream_offset: Option<StreamOffset>,
    /// Unacked deliveries the broker may have in flight to this gateway.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Deliveries handed to the hub at once (at most).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub body_format: BodyFormat,
    /// `source` of events made from plain JSON bodies (required for them).
    #[serde(default)]
    pub source: Option<String>,
    /// Plain JSON bodies: the body field whose value becomes `detail-type` (default: the
    /// routing key).
    #[serde(default)]
    pub detail_type_field: Option<String>,
    /// Plain JSON bodies: fields holding JSON text, decoded into `detail`.
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// Plain JSON bodies: fields holding base64 of JSON text, decoded into `detail`.
    #[serde(default)]
    pub base64_json_fields: Vec<String>,
    /// Dead-letter exchange (default `<exchange>.dlx`), declared durable, type topic.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Dead-letter queue (default `<queue>.dlq`), bound to the DLX with `#`.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// How often the queue depth gauge is refreshed.
    #[serde(default = "default_lag_interval")]
    pub lag_interval: Seconds,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Seconds,
}

fn default_heartbeat() -> Seconds {
    Seconds(Duration::from_secs(30))
}

fn default_exchange_type() -> String {
    "topic".to_owned()
}

fn default_binding_keys() -> Vec<String> {
    vec!["#".to_owned()]
}

fn default_prefetch() -> u16 {
    256
}

fn default_lag_interval() -> Seconds {
    Seconds(Duration::from_secs(5))
}

fn default_max_backoff() -> Seconds {
    Seconds(Duration::from_secs(30))
}

impl AmqpSettings {
    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if let Some(url) = &self.url {
            if self.host.is_some() || self.port.is_some() || self.vhost.is_some() || self.tls {
                return Err(format!(
                    "source {name:?}: set either url or host/port/vhost/tls, not both"
                ));
            }
            url.parse::<AMQPUri>()
                .map_err(|error| format!("source {name:?}: url: {error}"))?;
        }
        if self.exchange.is_empty() || self.queue.is_empty() {
            return Err(format!(
                "source {name:?}: exchange and queue must not be empty"
            ));
        }
        if self.binding_keys.is_empty() {
            return Err(format!("source {name:?}: binding_keys must not be empty"));
        }
        if self.body_format == BodyFormat::Json && self.source.is_none() {
            return Err(format!(
                "source {name:?}: body_format = \"json\" needs `source` (the event source)"
            ));
        }
        let maps_fields = self.detail_type_field.is_some()
            || !self.json_fields.is_empty()
            || !self.base64_json_fields.is_empty();
        if maps_fields
            && matches!(
                self.body_format,
                BodyFormat::Cloudevents | BodyFormat::Eventbridge
            )
        {
            return Err(format!(
                "source {name:?}: detail_type_field, json_fields and base64_json_fields map plain \
                 JSON bodies; they do not apply with body_format = \"cloudevents\" or \"eventbridge\""
            ));
        }
        if self.stream_offset.is_some() && self.queue_type != QueueType::Stream {
            return Err(format!(
                "source {name:?}: stream_offset only applies to queue_type = \"stream\""
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(format!(
                "source {name:?}: client_cert_file and client_key_file go together"
            ));
        }
        if self.prefetch == 0 {
            return Err(format!("source {name:?}: prefetch must be at least 1"));
        }
        Ok(())
    }

    fn dead_letter_exchange(&self) -> String {
        self.dead_letter_exchange
            .clone()
            .unwrap_or_else(|| format!("{}.dlx", self.exchange))
    }

    fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.queue))
    }

    fn exchange_kind(&self) -> ExchangeKind {
        match self.exchange_type.as_str() {
            "topic" => ExchangeKind::Topic,
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            other => ExchangeKind::Custom(other.to_owned()),
        }
    }

    /// The broker URI with credentials and heartbeat applied.
    fn uri(&self) -> Result<AMQPUri, SourceError> {
        let mut uri = match &self.url {
            Some(url) => url
                .parse::<AMQPUri>()
                .map_err(|error| SourceError::Config(format!("url: {error}")))?,
            None => {
                let mut uri = AMQPUri::default();
                if self.tls {
                    uri.scheme = AMQPScheme::AMQPS;
                }
                uri.authority.host = self.host.clone().unwrap_or_else(|| "localhost".into());
                uri.authority.port = self.port.unwrap_or(if self.tls { 5671 } else { 5672 });
                uri.vhost = self.vhost.clone().unwrap_or_else(|| "/".into());
                uri
            }
        };
        if let Some(username) = &self.username {
            uri.authority.userinfo.username = username.clone();
        }
        if let Some(variable) = &self.password_env {
            uri.authority.userinfo.password = std::env::var(variable)
                .map_err(|_| SourceError::Config(format!("password_env: {variable} is not set")))?;
        }
        uri.query.heartbeat = Some(u16::try_from(self.heartbeat.0.as_secs()).unwrap_or(u16::MAX));
        Ok(uri)
    }

    async fn tls(&self) -> Result<OwnedTLSConfig, SourceError> {
        let read = |path: PathBuf| async move {
            tokio::fs::read(&path).await.map_err(|error| {
                SourceError::Config(format!("cannot read {}: {error}", path.display()))
            })
        };
        let cert_chain = match &self.ca_file {
            Some(path) => Some(String::from_utf8_lossy(&read(path.clone()).await?).into_owned()),
            None => None,
        };
        let identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert.clone()).await?,
                key: read(key.clone()).await?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

fn amqp(error: impl std::fmt::Display) -> SourceError {
    SourceError::Amqp(error.to_string())
}

/// Where a stream consumer resumes after a reconnect: just after the last offset handed
/// to the hub (RabbitMQ keeps no consumer offsets for AMQP 0-9-1 stream consumers).
#[derive(Debug, Default)]
struct StreamCursor {
    next: Option<u64>,
}

/// Runs the source until `context.shutdown` is cancelled, reconnecting on errors.
pub async fn run(config: AmqpConfig, context: SourceContext) {
    let mut backoff = Backoff::reconnect(config.max_backoff.0);
    let mut cursor = StreamCursor::default();
    loop {
        let result = session(&config, &context, &mut backoff, &mut cursor).await;
        if !context.again(&config.name, &mut backoff, result).await {
            break;
        }
    }
}

/// The channels of one connection.
struct Channels {
    /// Consumes and acks.
    consume: Channel,
    /// Publishes dead letters, in confirm mode.
    publish: Channel,
    /// Passive declares for the depth gauge, kept off the consuming channel (a failed
    /// declare closes its channel; the session then ends and reconnects).
    status: Channel,
}

impl Channels {
    /// Closes each channel and waits for the broker's reply, before the connection is
    /// closed: a channel only dropped closes in the background, and that close then races
    /// the connection's and fails (lapin logged `invalid channel state: Closing` as an
    /// ERROR on every clean shutdown).
    async fn close(&self) {
        for channel in [&self.status, &self.publish, &self.consume] {
            if channel.status().connected() {
                let closing = channel.close(200, "eventgate source stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
            }
        }
    }
}

async fn session(
    config: &AmqpConfig,
    context: &SourceContext,
    backoff: &mut Backoff,
    cursor: &mut StreamCursor,
) -> Result<(), SourceError> {
    let uri = config.uri()?;
    let tls = config.tls().await?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("eventgate source {}", config.name).into());
    let runtime = lapin::runtime::default_runtime().map_err(amqp)?;
    let connect = Connection::connect_uri_with_config(uri, properties, tls, runtime);
    let connection = tokio::select! {
        () = context.shutdown.cancelled() => return Ok(()),
        connection = tokio::time::timeout(Duration::from_secs(10), connect) => connection
            .map_err(|_| SourceError::Amqp("connecting timed out".into()))?
            .map_err(amqp)?,
    };
    let result = consume(config, context, backoff, cursor, &connection).await;
    if connection.status().connected() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "eventgate source stopping".into()),
        )
        .await;
    }
    result
}

async fn consume(
    config: &AmqpConfig,
    context: &SourceContext,
    backoff: &mut Backoff,
    cursor: &mut StreamCursor,
    connection: &Connection,
) -> Result<(), SourceError> {
    let channels = Channels {
        consume: connection.create_channel().await.map_err(amqp)?,
        publish: connection.create_channel().await.map_err(amqp)?,
        status: connection.create_channel().await.map_err(amqp)?,
    };
    channels
        .publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp)?;
    let depth = declare(config, &channels.consume).await?;
    telemetry::source_lag(&config.name, u64::from(depth));

    channels
        .consume
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp)?;
    let mut arguments = FieldTable::default();
    if config.queue_type == QueueType::Stream {
        let offset = match cursor.next {
            Some(next) => StreamOffset::Offset(next),
            None => config.stream_offset.clone().unwrap_or(StreamOffset::Next),
        };
        arguments.insert(STREAM_OFFSET.into(), stream_offset_value(&offset));
    }
    let tag = format!(
        "eventgate-{}-{}",
        config.name,
        uuid::Uuid::new_v4().simple()
    );
    let consumer = channels
        .consume
        .basic_consume(
            config.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .map_err(amqp)?;
    tracing::info!(source = %config.name, queue = %config.queue, "connected to amqp");
    context.status.set(true, "consuming");
    backoff.reset();

    let mut batches = consumer.ready_chunks(config.batch_size.max(1));
    let mut lag_tick = tokio::time::interval(config.lag_interval.0.max(Duration::from_millis(100)));
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => {
                channels.close().await;
                return Ok(());
            }
            _ = lag_tick.tick() => {
                let queue = channels
                    .status
                    .queue_declare(
                        config.queue.as_str().into(),
                        QueueDeclareOptions { passive: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(amqp)?;
                telemetry::source_lag(&config.name, u64::from(queue.message_count()));
            }
            batch = batches.next() => {
                let Some(batch) = batch else {
                    return Err(SourceError::Amqp("the consumer was cancelled".into()));
                };
                let mut deliveries = Vec::with_capacity(batch.len());
                for delivery in batch {
                    deliveries.push(delivery.map_err(amqp)?);
                }
                process(config, context, &channels, cursor, deliveries).await?;
            }
        }
    }
}

/// Declares the exchange, queue, bindings and dead-letter topology; returns the queue's
/// ready message count.
async fn declare(config: &AmqpConfig, channel: &Channel) -> Result<u32, SourceError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            config.exchange_kind(),
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    let mut arguments = FieldTable::default();
    match config.queue_type {
        QueueType::Classic => {}
        QueueType::Quorum => {
            arguments.insert("x-queue-type".into(), long_string("quorum"));
        }
        QueueType::Stream => {
            arguments.insert("x-queue-type".into(), long_string("stream"));
        }
    }
    let queue = channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .map_err(amqp)?;
    for key in &config.binding_keys {
        channel
            .queue_bind(
                config.queue.as_str().into(),
                config.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
    }
    let dlx = config.dead_letter_exchange();
    let dlq = config.dead_letter_queue();
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    Ok(queue.message_count())
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

fn stream_offset_value(offset: &StreamOffset) -> AMQPValue {
    match offset {
        StreamOffset::First => long_string("first"),
        StreamOffset::Last => long_string("last"),
        StreamOffset::Next => long_string("next"),
        StreamOffset::Offset(offset) => {
            AMQPValue::LongLongInt(i64::try_from(*offset).unwrap_or(i64::MAX))
        }
        StreamOffset::Timestamp(seconds) => AMQPValue::Timestamp(*seconds),
        StreamOffset::Interval(interval) => long_string(interval),
    }
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
}

fn value_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

fn value_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        AMQPValue::Timestamp(_)
        | AMQPValue::LongLongInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_) => value_u64(value).map(|n| n.to_string()),
        AMQPValue::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn stream_offset_of(delivery: &Delivery) -> Option<u64> {
    header(&delivery.properties, STREAM_OFFSET).and_then(value_u64)
}

/// Binary-mode CloudEvent attributes (`cloudEvents:` / `cloudEvents_` headers, names
/// lower-cased without the prefix), if the message carries a `specversion`.
fn binary_cloudevent_attributes(properties: &BasicProperties) -> Option<Vec<(String, String)>> {
    let headers = properties.headers().as_ref()?;
    let mut attributes = Vec::new();
    for (key, value) in headers.inner() {
        let key = key.as_str();
        let name = key
            .strip_prefix("cloudEvents:")
            .or_else(|| key.strip_prefix("cloudEvents_"));
        if let (Some(name), Some(value)) = (name, value_text(value)) {
            attributes.push((name.to_ascii_lowercase(), value));
        }
    }
    if !attributes.iter().any(|(name, _)| name == "specversion") {
        return None;
    }
    if let Some(content_type) = properties.content_type() {
        if !attributes.iter().any(|(name, _)| name == "datacontenttype") {
            attributes.push(("datacontenttype".into(), content_type.as_str().to_owned()));
        }
    }
    Some(attributes)
}

fn unix_seconds_rfc3339(seconds: u64) -> Option<String> {
    let seconds = i64::try_from(seconds).ok()?;
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Maps one delivery onto an event according to `body_format`.
fn map_delivery(
    config: &AmqpSettings,
    fill: &Fill,
    delivery: &Delivery,
) -> Result<Event, MapError> {
    let properties = &delivery.properties;
    if matches!(
        config.body_format,
        BodyFormat::Auto | BodyFormat::Cloudevents
    ) {
        if let Some(attributes) = binary_cloudevent_attributes(properties) {
            let body_is_json = properties
                .content_type()
                .as_ref()
                .is_none_or(|content_type| content_type.as_str().contains("json"));
            return Ok(envelope::from_binary_cloudevent(
                &attributes,
                &delivery.data,
                body_is_json,
                fill,
            )?);
        }
    }
    let text = std::str::from_utf8(&delivery.data).map_err(|_| MapError::NotUtf8("body".into()))?;
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|error| MapError::BodyNotObject(error.to_string()))?;
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|error| MapError::BodyNotObject(error.to_string()))?;
    let format = match config.body_format {
        BodyFormat::Auto if fields.contains_key("specversion") => BodyFormat::Cloudevents,
        BodyFormat::Auto if fields.contains_key("source") && fields.contains_key("detail-type") => {
            BodyFormat::Eventbridge
        }
        BodyFormat::Auto => BodyFormat::Json,
        other => other,
    };
    match format {
        BodyFormat::Cloudevents => Ok(envelope::from_cloudevent(raw, fill)?),
        BodyFormat::Eventbridge => Ok(envelope::from_eventbridge(raw, fill)?),
        _ => {
            let Some(source) = config.source.as_deref() else {
                return Err(MapError::Envelope(EntryError::InvalidArgument(
                    "the body is a plain JSON object (neither a CloudEvent nor an EventBridge event) and this source has no `source` configured for such bodies".into(),
                )));
            };
            let id = match (properties.message_id(), stream_offset_of(delivery)) {
                (Some(id), _) if !id.as_str().is_empty() => id.as_str().to_owned(),
                (_, Some(offset)) => format!("{}-{offset}", config.queue),
                _ => fill.id.clone(),
            };
            map_plain_json(config, source, id, delivery, raw, &fields, fill)
        }
    }
}

/// A plain JSON object body, mapped as every source maps one (docs/sources.md): `detail-type`
/// from `detail_type_field` (else the routing key), `time` from `occurred_at` (else the AMQP
/// `timestamp` property), `json_fields` / `base64_json_fields` decoded; `detail` stays the
/// body byte for byte when there is nothing to decode.
fn map_plain_json(
    config: &AmqpSettings,
    source: &str,
    id: String,
    delivery: &Delivery,
    raw: &RawValue,
    fields: &BTreeMap<String, &RawValue>,
    fill: &Fill,
) -> Result<Event, MapError> {
    let detail_type = match config.detail_type_field.as_deref() {
        Some(field) => match fields
            .get(field)
            .map(|value| serde_json::from_str::<Value>(value.get()))
        {
            Some(Ok(Value::String(text))) if !text.is_empty() => text,
            _ => return Err(MapError::MissingDetailType(field.to_owned())),
        },
        None => delivery.routing_key.as_str().to_owned(),
    };
    let time = match fields.get("occurred_at") {
        Some(value) => {
            let value: Value = serde_json::from_str(value.get())
                .map_err(|error| MapError::BodyNotObject(error.to_string()))?;
            Some(time_from_epoch_nanos(&value)?)
        }
        None => (*delivery.properties.timestamp()).and_then(unix_seconds_rfc3339),
    };
    let decodes = config
        .json_fields
        .iter()
        .chain(&config.base64_json_fields)
        .any(|field| fields.contains_key(field));
    let decoded;
    let detail = if decodes {
        let mut detail: Map<String, Value> = serde_json::from_str(raw.get())
            .map_err(|error| MapError::BodyNotObject(error.to_string()))?;
        decode_fields(&mut detail, &config.json_fields, &config.base64_json_fields)?;
        decoded = Value::Object(detail).to_string();
        decoded.as_str()
    } else {
        raw.get()
    };
    let time = time
        .map(|time| format!("\"time\":{},", quote(&time)))
        .unwrap_or_default();
    let envelope = format!(
        "{{\"id\":{},\"source\":{},\"detail-type\":{},{time}\"detail\":{}}}",
        quote(&id),
        quote(source),
        quote(&detail_type),
        detail
    );
    let envelope = RawValue::from_string(envelope)
        .map_err(|error| MapError::BodyNotObject(error.to_string()))?;
    Ok(envelope::from_eventbridge(&envelope, fill)?)
}

/// Maps a batch, hands the good events to the hub, dead-letters the rest, then acks all
/// of them with one `multiple` ack.
async fn process(
    config: &AmqpConfig,
    context: &SourceContext,
    channels: &Channels,
    cursor: &mut StreamCursor,
    deliveries: Vec<Delivery>,
) -> Result<(), SourceError> {
    let name = &config.name;
    let Some(last_tag) = deliveries.iter().map(|d| d.delivery_tag).max() else {
        return Ok(());
    };
    telemetry::source_consumed(name, deliveries.len() as u64);
    let mut events = Vec::with_capacity(deliveries.len());
    let mut dead = Vec::new();
    for delivery in &deliveries {
        match map_delivery(config, &context.fill(), delivery) {
            Ok(event) => events.push(Arc::new(event)),
            Err(reason) => dead.push((delivery, reason)),
        }
    }
    let dispatched = events.len() as u64;
    context.hand_off(events).await?;
    telemetry::source_dispatched(name, dispatched);
    for (delivery, reason) in dead {
        let reason = reason.to_string();
        dead_letter(config, &channels.publish, delivery, &reason).await?;
        let id = properties_id(delivery);
        telemetry::source_dead_lettered(name, &id, &reason);
    }
    if let Some(offset) = deliveries.iter().filter_map(stream_offset_of).max() {
        cursor.next = Some(offset + 1);
    }
    channels
        .consume
        .basic_ack(last_tag, BasicAckOptions { multiple: true })
        .await
        .map_err(amqp)?;
    Ok(())
}

fn properties_id(delivery: &Delivery) -> String {
    if let Some(id) = delivery.properties.message_id() {
        return id.as_str().to_owned();
    }
    match stream_offset_of(delivery) {
        Some(offset) => format!("offset {offset}"),
        None => format!("delivery {}", delivery.delivery_tag),
    }
}

/// Publishes `delivery` to the dead-letter exchange with the reason and origin in headers
/// and waits for the broker's confirm.
async fn dead_letter(
    config: &AmqpConfig,
    channel: &Channel,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), SourceError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    // The stream offset header belongs to the original queue.
    let offset = stream_offset_of(delivery);
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner() {
        if key.as_str() != STREAM_OFFSET {
            kept.insert(key.clone(), value.clone());
        }
    }
    headers = kept;
    headers.insert(DLQ_REASON_HEADER.into(), long_string(reason));
    headers.insert(DLQ_SOURCE_HEADER.into(), long_string(&config.name));
    headers.insert(
        DLQ_EXCHANGE_HEADER.into(),
        long_string(delivery.exchange.as_str()),
    );
    headers.insert(
        DLQ_ROUTING_KEY_HEADER.into(),
        long_string(delivery.routing_key.as_str()),
    );
    if let Some(offset) = offset {
        headers.insert(
            ShortString::from("x-eventgate-original-stream-offset"),
            AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
        );
    }
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            config.dead_letter_exchange().into(),
            delivery.routing_key.clone(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await
        .map_err(amqp)?
        .await
        .map_err(amqp)?;
    match confirm {
        Confirmation::Nack(_) => Err(SourceError::Amqp(
            "the broker refused the dead letter (nack)".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> AmqpSettings {
        let text = format!("name = \"t\"\nexchange = \"e\"\nqueue = \"q\"\n{extra}");
        toml::from_str(&text).expect("settings")
    }

    fn fill() -> Fill {
        Fill {
            id: "generated".into(),
            time: "2026-01-01T00:00:00Z".into(),
            account: "000000000000".into(),
            region: "local".into(),
        }
    }

    fn delivery(routing_key: &str, body: &str) -> Delivery {
        Delivery::mock(
            1,
            "e".into(),
            routing_key.into(),
            false,
            body.as_bytes().to_vec(),
        )
    }

    #[test]
    fn bodies_are_recognised() {
        let config = settings("source = \"plain\"");
        let cloudevent = r#"{"specversion":"1.0","id":"1","type":"lamassu.ca.created","source":"ca-service","subject":"root-ca","data":{"a":1}}"#;
        let event = map_delivery(&config, &fill(), &delivery("rk", cloudevent)).unwrap();
        assert_eq!(event.value["detail-type"], "lamassu.ca.created");
        assert_eq!(event.value["resources"], serde_json::json!(["root-ca"]));

        let eventbridge = r#"{"source":"s","detail-type":"t","detail":{"b":2}}"#;
        let event = map_delivery(&config, &fill(), &delivery("rk", eventbridge)).unwrap();
        assert_eq!(event.value["source"], "s");
        assert_eq!(event.value["detail"]["b"], 2);

        let event = map_delivery(&config, &fill(), &delivery("a.b", r#"{"n":1.50}"#)).unwrap();
        assert_eq!(event.value["source"], "plain");
        assert_eq!(event.value["detail-type"], "a.b");
        assert!(
            event.json.contains(r#""detail":{"n":1.50}"#),
            "{}",
            event.json
        );

        // Forced formats do not guess.
        let forced = settings("body_format = \"eventbridge\"");
        assert!(map_delivery(&forced, &fill(), &delivery("rk", cloudevent)).is_err());
        let forced = settings("body_format = \"json\"\nsource = \"plain\"");
        let event = map_delivery(&forced, &fill(), &delivery("rk", eventbridge)).unwrap();
        assert_eq!(event.value["detail"]["source"], "s");
    }

    #[test]
    fn binary_cloudevents_come_from_headers() {
        let config = settings("");
        let mut headers = FieldTable::default();
        headers.insert("cloudEvents:specversion".into(), long_string("1.0"));
        headers.insert("cloudEvents:id".into(), long_string("42"));
        headers.insert(
            "cloudEvents:type".into(),
            long_string("lamassu.device.registered"),
        );
        headers.insert("cloudEvents:source".into(), long_string("device-manager"));
        let mut message = delivery("rk", r#"{"device_id":"d1"}"#);
        message.properties = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into());
        let event = map_delivery(&config, &fill(), &message).unwrap();
        assert_eq!(event.value["id"], "42");
        assert_eq!(event.value["source"], "device-manager");
        assert_eq!(event.value["detail"]["device_id"], "d1");
    }

    #[test]
    fn unmappable_bodies_have_reasons() {
        let config = settings("");
        let reason = |body: &str| {
            map_delivery(&config, &fill(), &delivery("rk", body))
                .unwrap_err()
                .to_string()
        };
        assert!(reason("{not json").contains("not a JSON object"));
        assert!(reason("[1]").contains("not a JSON object"));
        assert!(reason(r#"{"a":1}"#).contains("`source`"));
        assert!(reason(r#"{"specversion":"1.0","type":"t","source":"s"}"#).contains("id"));
        let mut bytes = delivery("rk", "");
        bytes.data = vec![0xff, 0xfe];
        assert!(map_delivery(&config, &fill(), &bytes).is_err());
    }

    #[test]
    fn plain_json_takes_the_field_mapping_of_every_source() {
        let config = settings(
            "source = \"supermq.users\"\ndetail_type_field = \"operation\"\n\
             base64_json_fields = [\"metadata\"]\njson_fields = [\"tags\"]",
        );
        let body = r#"{"operation":"user.create","metadata":"eyJhIjoxfQ==","tags":"[1]","occurred_at":"1693307171925834295","n":1.50}"#;
        let event = map_delivery(&config, &fill(), &delivery("rk", body)).unwrap();
        assert_eq!(event.value["detail-type"], "user.create");
        assert_eq!(event.value["time"], "2023-08-29T11:06:11Z");
        assert_eq!(
            event.value["detail"]["metadata"],
            serde_json::json!({"a": 1})
        );
        assert_eq!(event.value["detail"]["tags"], serde_json::json!([1]));
        // Nothing to decode: the body stays byte for byte, time from occurred_at still.
        let event = map_delivery(
            &config,
            &fill(),
            &delivery("rk", r#"{"operation":"x","n":1.50}"#),
        )
        .unwrap();
        assert!(
            event
                .json
                .contains(r#""detail":{"operation":"x","n":1.50}"#),
            "{}",
            event.json
        );
        assert_eq!(event.value["time"], "2026-01-01T00:00:00Z");
        // The field is missing, empty or not a string: dead-lettered with the field's name.
        for body in [r#"{"n":1}"#, r#"{"operation":""}"#, r#"{"operation":7}"#] {
            let error = map_delivery(&config, &fill(), &delivery("rk", body)).unwrap_err();
            assert!(
                error.to_string().contains("\"operation\""),
                "{body}: {error}"
            );
        }
        let error = map_delivery(
            &config,
            &fill(),
            &delivery("rk", r#"{"operation":"x","metadata":"%%"}"#),
        )
        .unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");
    }

    #[test]
    fn stream_offsets_parse() {
        assert_eq!(parse_stream_offset("first"), Ok(StreamOffset::First));
        assert_eq!(parse_stream_offset("42"), Ok(StreamOffset::Offset(42)));
        assert_eq!(
            parse_stream_offset("2024-01-15T10:30:00Z"),
            Ok(StreamOffset::Timestamp(1_705_314_600))
        );
        assert_eq!(
            parse_stream_offset("7D"),
            Ok(StreamOffset::Interval("7D".into()))
        );
        assert!(parse_stream_offset("yesterday").is_err());
    }
}
