//! Metrics and logs in one place: metric names as constants, the Prometheus recorder, and
//! small functions that log an event and count it together.
//!
//! Owns what is measured and how it is named. Does not own when things happen: callers
//! report them.

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "eventgate_connections";
pub const ANNOUNCED_CONNECTIONS: &str = "eventgate_announced_connections";
pub const RULES: &str = "eventgate_rules";
pub const EVENTS_INGESTED: &str = "eventgate_events_ingested_total";
pub const NOTIFICATIONS_SENT: &str = "eventgate_notifications_sent_total";
pub const SLOW_CONSUMER_CLOSES: &str = "eventgate_slow_consumer_closes_total";
pub const AUTH_FAILURES: &str = "eventgate_auth_failures_total";
pub const INGEST_ERRORS: &str = "eventgate_ingest_errors_total";
pub const ACTION_ERRORS: &str = "eventgate_action_errors_total";
pub const CONNECTIONS_CLOSED: &str = "eventgate_connections_closed_total";

/// Installs the global Prometheus recorder once and returns a handle that renders it.
/// Later calls (several servers in one test process) share the same recorder.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then metrics go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn connection_opened() {
    gauge!(CONNECTIONS).increment(1.0);
}

pub fn connection_closed(reason: &'static str, announced: bool) {
    gauge!(CONNECTIONS).decrement(1.0);
    if announced {
        gauge!(ANNOUNCED_CONNECTIONS).decrement(1.0);
    }
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    tracing::debug!(reason, "connection closed");
}

pub fn connection_announced() {
    gauge!(ANNOUNCED_CONNECTIONS).increment(1.0);
}

pub fn rules_changed(delta: f64) {
    gauge!(RULES).increment(delta);
}

pub fn auth_failed(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
    tracing::info!(reason, "websocket upgrade rejected");
}

pub fn events_ingested(count: u64) {
    counter!(EVENTS_INGESTED).increment(count);
}

pub fn ingest_error(code: &'static str) {
    counter!(INGEST_ERRORS, "code" => code).increment(1);
    tracing::debug!(code, "ingest entry rejected");
}

pub fn notifications_sent(count: u64) {
    counter!(NOTIFICATIONS_SENT).increment(count);
}

pub fn slow_consumer_closed(connection: u64) {
    counter!(SLOW_CONSUMER_CLOSES).increment(1);
    tracing::info!(connection, "slow consumer closed");
}

pub fn action_rejected(kind: &'static str) {
    counter!(ACTION_ERRORS, "kind" => kind).increment(1);
}

pub const SOURCE_CONSUMED: &str = "eventgate_source_consumed_total";
pub const SOURCE_DISPATCHED: &str = "eventgate_source_dispatched_total";
pub const SOURCE_DEAD_LETTERED: &str = "eventgate_source_dead_lettered_total";
pub const SOURCE_ERRORS: &str = "eventgate_source_errors_total";
pub const SOURCE_RECONNECTS: &str = "eventgate_source_reconnects_total";

pub fn source_consumed(source: &str, count: u64) {
    counter!(SOURCE_CONSUMED, "source" => source.to_owned()).increment(count);
}

pub fn source_dispatched(source: &str, count: u64) {
    counter!(SOURCE_DISPATCHED, "source" => source.to_owned()).increment(count);
    tracing::trace!(source, count, "source events handed to the hub");
}

pub fn source_dead_lettered(source: &str, message_id: &str, reason: &str) {
    counter!(SOURCE_DEAD_LETTERED, "source" => source.to_owned()).increment(1);
    tracing::warn!(source, message_id, reason, "source message dead-lettered");
}

pub fn source_error(source: &str, error: &dyn std::fmt::Display) {
    counter!(SOURCE_ERRORS, "source" => source.to_owned()).increment(1);
    tracing::warn!(source, %error, "source error");
}

pub fn source_reconnecting(source: &str, delay_ms: u128) {
    counter!(SOURCE_RECONNECTS, "source" => source.to_owned()).increment(1);
    tracing::info!(source, delay_ms, "source reconnecting");
}

pub const SOURCE_LAG: &str = "eventgate_source_lag";

/// Messages waiting in the broker for a source (Redis group lag, JetStream pending, AMQP
/// queue depth).
pub fn source_lag(source: &str, lag: u64) {
    gauge!(SOURCE_LAG, "source" => source.to_owned()).set(lag as f64);
}

pub const CLUSTER_FORWARDED: &str = "eventgate_cluster_forwarded_total";
pub const CLUSTER_NOT_FORWARDED: &str = "eventgate_cluster_not_forwarded_total";
pub const CLUSTER_RECEIVED: &str = "eventgate_cluster_received_total";
pub const CLUSTER_ERRORS: &str = "eventgate_cluster_errors_total";
pub const CLUSTER_RECONNECTS: &str = "eventgate_cluster_reconnects_total";

/// Events published to the backplane for the other nodes.
pub fn cluster_forwarded(count: u64) {
    counter!(CLUSTER_FORWARDED).increment(count);
}

/// Events delivered locally that the other nodes will not get (backplane down or queue full).
pub fn cluster_not_forwarded(count: u64, reason: &'static str) {
    counter!(CLUSTER_NOT_FORWARDED, "reason" => reason).increment(count);
    tracing::warn!(count, reason, "events not forwarded to the cluster");
}

/// Events heard from other nodes.
pub fn cluster_received(count: u64) {
    counter!(CLUSTER_RECEIVED).increment(count);
}

pub fn cluster_bad_message(error: &dyn std::fmt::Display) {
    counter!(CLUSTER_ERRORS, "kind" => "bad_message").increment(1);
    tracing::warn!(%error, "ignored a malformed backplane message");
}

pub fn cluster_error(error: &dyn std::fmt::Display) {
    counter!(CLUSTER_ERRORS, "kind" => "connection").increment(1);
    tracing::warn!(%error, "cluster backplane error");
}

pub fn cluster_reconnecting(delay_ms: u128) {
    counter!(CLUSTER_RECONNECTS).increment(1);
    tracing::info!(delay_ms, "cluster backplane reconnecting");
}

pub const LIMIT_REJECTIONS: &str = "eventgate_limit_rejections_total";
pub const TLS_RELOADS: &str = "eventgate_tls_reloads_total";

/// A connection, action or publish refused by an abuse limit (`limit` is the config key).
pub fn limit_rejected(limit: &'static str) {
    counter!(LIMIT_REJECTIONS, "limit" => limit).increment(1);
    tracing::debug!(limit, "refused by a limit");
}

pub fn tls_reloaded(ok: bool) {
    counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub const PATTERN_BUDGET_REJECTIONS: &str = "eventgate_pattern_budget_rejections_total";

/// A Subscribe refused because its pattern is over a cost or memory budget (`budget` is
/// the config key: `max_rule_cost`, `max_connection_cost`, `max_connection_rule_bytes`).
pub fn pattern_too_complex(budget: &'static str) {
    counter!(PATTERN_BUDGET_REJECTIONS, "budget" => budget).increment(1);
    action_rejected("pattern_too_complex");
    limit_rejected(budget);
}
