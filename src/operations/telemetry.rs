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
/// Of those, the ones the dispatcher wrote to an idle connection's socket itself.
pub const NOTIFICATIONS_WRITTEN_DIRECTLY: &str = "eventgate_notifications_written_directly_total";
pub const SLOW_CONSUMER_CLOSES: &str = "eventgate_slow_consumer_closes_total";
pub const AUTH_FAILURES: &str = "eventgate_auth_failures_total";
pub const INGEST_ERRORS: &str = "eventgate_ingest_errors_total";
pub const ACTION_ERRORS: &str = "eventgate_action_errors_total";
pub const CONNECTIONS_CLOSED: &str = "eventgate_connections_closed_total";
// Verified identities (`identity`).
pub const JWKS_REFRESHES: &str = "eventgate_jwks_refreshes_total";
pub const TOKEN_REFRESHES: &str = "eventgate_token_refreshes_total";
pub const HOOK_CALLS: &str = "eventgate_connect_hook_calls_total";

/// Installs the global Prometheus recorder once and returns a handle that renders it.
/// Later calls (several servers in one test process) share the same recorder. Every
/// series in [`SERIES`] exists from then on, at zero, so that alert rules and dashboards
/// have a series before the first increment.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then metrics go there.
            let _ = metrics::set_global_recorder(recorder);
            register_series();
            handle
        })
        .clone()
}

/// A metric, whether it is a gauge, its label (if any) and every value that label takes.
/// `docs/operations.md` lists the same (the `operations` test compares them with a fresh
/// server's `/metrics`).
pub struct Series {
    pub name: &'static str,
    pub gauge: bool,
    pub label: Option<(&'static str, &'static [&'static str])>,
}

const fn plain(name: &'static str) -> Series {
    Series {
        name,
        gauge: false,
        label: None,
    }
}

const fn gauge_of(name: &'static str) -> Series {
    Series {
        name,
        gauge: true,
        label: None,
    }
}

const fn labelled(
    name: &'static str,
    label: &'static str,
    values: &'static [&'static str],
) -> Series {
    Series {
        name,
        gauge: false,
        label: Some((label, values)),
    }
}

/// `eventgate_ingest_errors_total{code}`: whole requests refused, then single entries.
pub const INGEST_ERROR_CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "bad_request",
    "too_large",
    "unsupported_media_type",
    "rate_limited",
    "unavailable",
    "invalid_argument",
    "malformed_detail",
    "entry_too_large",
];

/// `eventgate_limit_rejections_total{limit}`: each value is the configuration key of the
/// limit that refused.
pub const LIMIT_NAMES: &[&str] = &[
    "max_frame_bytes",
    "max_rules_per_connection",
    "max_pattern_bytes",
    "max_actions_per_second",
    "max_body_bytes",
    "max_event_bytes",
    "max_entries",
    "max_connections",
    "max_connections_per_ip",
    "new_connections_per_second_per_ip",
    "upgrade_timeout",
    "max_ingest_events_per_second_per_token",
];

/// Every series that exists from the start, with every documented label value. The
/// per-source metrics get one series per configured source when it starts
/// ([`source_registered`]).
pub const SERIES: &[Series] = &[
    gauge_of(CONNECTIONS),
    gauge_of(ANNOUNCED_CONNECTIONS),
    gauge_of(RULES),
    plain(EVENTS_INGESTED),
    plain(NOTIFICATIONS_SENT),
    plain(NOTIFICATIONS_WRITTEN_DIRECTLY),
    plain(SLOW_CONSUMER_CLOSES),
    labelled(
        CONNECTIONS_CLOSED,
        "reason",
        &[
            "peer_closed",
            "shutdown",
            "hello_timeout",
            "binary_frame",
            "frame_too_large",
            "rate_limited",
            "slow_consumer",
            "idle",
            "write_timeout",
            "protocol_error",
            "invalid_payload",
            "disconnected",
            "token_expired",
        ],
    ),
    labelled(
        AUTH_FAILURES,
        "reason",
        &[
            "bad_handshake",
            "bad_query",
            "missing_header",
            "bad_header",
            "wrong_host",
            "wrong_api_key",
            "invalid_client_id",
            "origin_not_allowed",
            "draining",
            "token_missing",
            "token_malformed",
            "token_algorithm",
            "token_unknown_key",
            "token_bad_signature",
            "token_expired",
            "token_not_yet_valid",
            "token_wrong_issuer",
            "token_wrong_audience",
            "token_missing_claim",
            "token_invalid_claims",
            "scope_claim_missing",
            "scope_claim_unusable",
            "scope_invalid",
            "hook_denied",
            "hook_unavailable",
        ],
    ),
    labelled(INGEST_ERRORS, "code", INGEST_ERROR_CODES),
    labelled(
        ACTION_ERRORS,
        "kind",
        &[
            "malformed",
            "already_announced",
            "unannounced",
            "too_many_rules",
            "pattern_too_large",
            "invalid_pattern",
        ],
    ),
    plain(CLUSTER_FORWARDED),
    labelled(
        CLUSTER_NOT_FORWARDED,
        "reason",
        &[
            "backplane_down",
            "queue_full",
            "publish_failed",
            "log_unavailable",
        ],
    ),
    plain(CLUSTER_RECEIVED),
    plain(HISTORY_LOG_GAPS),
    labelled(CLUSTER_ERRORS, "kind", &["connection", "bad_message"]),
    plain(CLUSTER_RECONNECTS),
    labelled(LIMIT_REJECTIONS, "limit", LIMIT_NAMES),
    labelled(TLS_RELOADS, "result", &["ok", "error"]),
    labelled(JWKS_REFRESHES, "outcome", &["ok", "failed"]),
    labelled(
        TOKEN_REFRESHES,
        "outcome",
        &[
            "ok",
            "token_malformed",
            "token_algorithm",
            "token_unknown_key",
            "token_bad_signature",
            "token_expired",
            "token_not_yet_valid",
            "token_wrong_issuer",
            "token_wrong_audience",
            "token_missing_claim",
            "token_invalid_claims",
            "scope_claim_missing",
            "scope_claim_unusable",
            "scope_invalid",
            "token_not_used",
            "scope_changed",
        ],
    ),
    labelled(
        HOOK_CALLS,
        "outcome",
        &["allow", "deny", "timeout", "error", "bad_answer"],
    ),
];

/// Creates every series of [`SERIES`] without changing its value (several servers in one
/// process share the recorder).
fn register_series() {
    for series in SERIES {
        match (series.gauge, series.label) {
            (true, None) => gauge!(series.name).increment(0.0),
            (true, Some((label, values))) => {
                for value in values {
                    gauge!(series.name, label => *value).increment(0.0);
                }
            }
            (false, None) => counter!(series.name).increment(0),
            (false, Some((label, values))) => {
                for value in values {
                    counter!(series.name, label => *value).increment(0);
                }
            }
        }
    }
}

/// A source's series, at zero, from the moment it starts.
pub fn source_registered(source: &str) {
    for name in [
        SOURCE_CONSUMED,
        SOURCE_DISPATCHED,
        SOURCE_DEAD_LETTERED,
        SOURCE_ERRORS,
        SOURCE_RECONNECTS,
    ] {
        counter!(name, "source" => source.to_owned()).increment(0);
    }
    gauge!(SOURCE_LAG, "source" => source.to_owned()).increment(0.0);
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

/// A JWKS refresh ended (`ok` or `failed`).
pub fn jwks_refreshed(outcome: &'static str) {
    counter!(JWKS_REFRESHES, "outcome" => outcome).increment(1);
}

/// A Refresh action ended: `ok`, or the refusal's label.
pub fn token_refreshed(outcome: &'static str) {
    counter!(TOKEN_REFRESHES, "outcome" => outcome).increment(1);
}

/// A connect-hook call ended: `allow`, `deny`, `timeout`, `error` or `bad_answer`.
pub fn hook_called(outcome: &'static str) {
    counter!(HOOK_CALLS, "outcome" => outcome).increment(1);
}

pub fn events_ingested(count: u64) {
    counter!(EVENTS_INGESTED).increment(count);
}

/// A refused ingest request or entry; `code` is one of [`INGEST_ERROR_CODES`].
pub fn ingest_error(code: &'static str, error: &dyn std::fmt::Display) {
    counter!(INGEST_ERRORS, "code" => code).increment(1);
    tracing::debug!(code, %error, "ingest refused");
}

/// The `eventgate_ingest_errors_total` code of a refused entry (its `ErrorCode` in the
/// response stays PutEvents-style, `EntryTooLarge`).
pub fn entry_error_code(error: &eventgate_protocol::envelope::EntryError) -> &'static str {
    use eventgate_protocol::envelope::EntryError;
    match error {
        EntryError::InvalidArgument(_) => "invalid_argument",
        EntryError::MalformedDetail(_) => "malformed_detail",
        EntryError::TooLarge { .. } => "entry_too_large",
    }
}

/// An event the hub matched: how many connections it was queued to (debug; `--dev` shows
/// it).
pub fn event_dispatched(id: &str, source: &str, detail_type: &str, connections: u64) {
    tracing::debug!(id, source, detail_type, connections, "event dispatched");
}

/// `count` notifications handed to connections, `written` of them written by the
/// dispatcher itself.
pub fn notifications_sent(count: u64, written: u64) {
    counter!(NOTIFICATIONS_SENT).increment(count);
    if written > 0 {
        counter!(NOTIFICATIONS_WRITTEN_DIRECTLY).increment(written);
    }
}

pub fn slow_consumer_closed(connection: u64) {
    counter!(SLOW_CONSUMER_CLOSES).increment(1);
    tracing::info!(connection, "slow consumer closed");
}

pub fn action_rejected(kind: &'static str) {
    counter!(ACTION_ERRORS, "kind" => kind).increment(1);
}

pub const ADMIN_REFUSALS: &str = "eventgate_admin_refusals_total";
pub const ADMIN_DISCONNECTS: &str = "eventgate_admin_disconnects_total";

/// A request to the admin API refused (`reason`: missing_token, wrong_token, not_loopback).
/// The token itself is never logged.
pub fn admin_refused(reason: &'static str) {
    counter!(ADMIN_REFUSALS, "reason" => reason).increment(1);
    tracing::info!(reason, "admin request refused");
}

/// A connection closed by an operator through the admin API.
pub fn admin_disconnected(connection: u64, code: u16) {
    counter!(ADMIN_DISCONNECTS).increment(1);
    tracing::info!(connection, code, "connection disconnected by the operator");
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

pub const WRITE_TIMEOUT_CLOSES: &str = "eventgate_write_timeout_closes_total";

/// A connection closed because a write to it stayed pending for `limits.write_timeout`.
pub fn write_timed_out() {
    counter!(WRITE_TIMEOUT_CLOSES).increment(1);
    tracing::info!("peer did not read within write_timeout; closed");
}

pub fn tls_reloaded(ok: bool) {
    counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

// Hostile HTTP callers: the pattern tester, request bodies, malformed requests, the ingest
// backlog.
pub const TEST_PATTERN_ERRORS: &str = "eventgate_test_pattern_errors_total";
pub const BAD_REQUESTS: &str = "eventgate_bad_requests_total";
pub const INGEST_BACKLOG_BYTES: &str = "eventgate_ingest_backlog_bytes";
pub const INGEST_BACKLOG_WAITS: &str = "eventgate_ingest_backlog_waits_total";

/// A `POST /test-pattern` request refused or failed (`code` says why).
pub fn test_pattern_error(code: &'static str) {
    counter!(TEST_PATTERN_ERRORS, "code" => code).increment(1);
    tracing::debug!(code, "test-pattern request refused");
}

/// A request refused before any route saw it (a missing, repeated or invalid `Host`).
pub fn bad_request(reason: &'static str) {
    counter!(BAD_REQUESTS, "reason" => reason).increment(1);
    tracing::debug!(reason, "malformed request refused");
}

/// Bytes of events accepted but not yet matched by the dispatcher.
pub fn ingest_backlog(bytes: usize) {
    gauge!(INGEST_BACKLOG_BYTES).set(bytes as f64);
}

/// A broker source waited for room in the ingest backlog before its hand-off.
pub fn ingest_backlog_waited() {
    counter!(INGEST_BACKLOG_WAITS).increment(1);
    tracing::debug!("source waits for room in the ingest backlog");
}

/// Installs the log subscriber for the binary: `EVENTGATE_LOG` (an `EnvFilter`, e.g.
/// `info,eventgate::sources=debug`) or the default (`info`; `eventgate=debug` too in dev
/// mode), in `format`, on stderr. Colour only when stderr is a terminal and `NO_COLOR` is
/// unset, so files and pipes get plain text.
pub fn init_logging(format: crate::config::LogFormat, dev: bool) {
    use std::io::IsTerminal;
    let default = if dev { "eventgate=debug,info" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVENTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Fails only when a subscriber is already installed (tests); the first one stays.
    let _ = match format {
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        crate::config::LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).try_init()
        }
    };
}

pub const HISTORY_EVENTS: &str = "eventgate_history_events";
pub const HISTORY_BYTES: &str = "eventgate_history_bytes";
pub const HISTORY_EVICTED: &str = "eventgate_history_evicted_total";
pub const RESUMES: &str = "eventgate_resumes_total";
pub const REPLAYED_EVENTS: &str = "eventgate_replayed_events_total";

/// The in-memory log's size and what left it since the last report (`reason` is the bound).
pub fn history_retained(events: usize, bytes: usize, evicted: [(&'static str, u64); 3]) {
    gauge!(HISTORY_EVENTS).set(events as f64);
    gauge!(HISTORY_BYTES).set(bytes as f64);
    for (reason, count) in evicted {
        if count > 0 {
            counter!(HISTORY_EVICTED, "reason" => reason).increment(count);
        }
    }
}

pub const HISTORY_LOG_GAPS: &str = "eventgate_history_log_gaps_total";

/// The shared log's reader found events trimmed before it could read them.
pub fn history_log_gap() {
    counter!(HISTORY_LOG_GAPS).increment(1);
}

/// A `Resume` answered: `result` is `ok` or the refusal's label.
pub fn resumed(result: &'static str, replayed: usize) {
    counter!(RESUMES, "result" => result).increment(1);
    counter!(REPLAYED_EVENTS).increment(replayed as u64);
    tracing::debug!(result, replayed, "resume");
}

pub const PATTERN_BUDGET_REJECTIONS: &str = "eventgate_pattern_budget_rejections_total";

/// A Subscribe refused because its pattern is over a cost or memory budget (`budget` is
/// the config key: `max_rule_cost`, `max_connection_cost`, `max_connection_rule_bytes`).
pub fn pattern_too_complex(budget: &'static str) {
    counter!(PATTERN_BUDGET_REJECTIONS, "budget" => budget).increment(1);
    action_rejected("pattern_too_complex");
    limit_rejected(budget);
}
