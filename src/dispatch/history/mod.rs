//! Event history: every event the dispatcher accepts gets a position in one total order and
//! stays retained for a while, so a client that lost its connection can resume and receive
//! what it missed (the `Resume` action, see `protocol/README.md` §7).
//!
//! Owns the `[history]` configuration, log ids and their text forms (positions), what a
//! client's position means to this gateway, the dispatcher's log ([`MemoryLog`], bounded by
//! count, bytes and age: the whole history of a single gateway, or the tail of a shared log
//! that `cluster` reads) and the resume errors with their Ack texts. Does not own matching,
//! delivery or the hold of a resuming connection's live events: the hub does, because a
//! replay must happen inside the dispatcher's order to have no gap and no duplicate at the
//! seam. Does not own reading or appending to a shared log (`cluster::log`).

mod log;

use std::time::Duration;

use serde::Deserialize;

use crate::units::Seconds;

pub use log::{Logged, MemoryLog};

/// `[history]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep a log and put a `Position` in every `Event` notification.
    pub enabled: bool,
    /// Most events retained; the oldest go first.
    pub max_events: usize,
    /// Most bytes of event JSON retained (the measured memory per event is larger, see
    /// `docs/operations.md`).
    pub max_bytes: usize,
    /// Events older than this are dropped.
    pub max_age: Seconds,
    /// Most events one `Resume` may replay; more is the error `too many missed events`.
    /// Never more than `limits.max_queued_messages` (a replay goes through the outbound
    /// queue): the smaller of the two applies.
    pub max_replay: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_events: 10_000,
            max_bytes: 16 * 1024 * 1024,
            max_age: Seconds(Duration::from_secs(300)),
            max_replay: 1000,
        }
    }
}

impl HistoryConfig {
    /// Checks the keys.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        for (name, value) in [
            ("history.max_events", self.max_events),
            ("history.max_bytes", self.max_bytes),
            ("history.max_replay", self.max_replay),
        ] {
            if value == 0 {
                return Err(format!(
                    "{name} must be greater than zero (or set history.enabled = false)"
                ));
            }
        }
        if self.max_age.0.is_zero() {
            return Err("history.max_age must be greater than zero".into());
        }
        Ok(())
    }
}

/// An event's place in a log, ordered: `(0, seq)` in the gateway's own log and in a
/// JetStream stream (`seq` from 1; 0 is "before the first event"), `(ms, seq)` in a Redis
/// stream (its entry id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId {
    pub major: u64,
    pub minor: u64,
}

impl LogId {
    pub const ZERO: LogId = LogId { major: 0, minor: 0 };

    /// The id of a sequence-numbered log's event.
    pub fn seq(seq: u64) -> LogId {
        LogId {
            major: 0,
            minor: seq,
        }
    }

    /// The id just before this one.
    pub fn before(self) -> LogId {
        match (self.major, self.minor) {
            (major, 0) if major > 0 => LogId {
                major: major - 1,
                minor: u64::MAX,
            },
            (major, minor) => LogId {
                major,
                minor: minor.saturating_sub(1),
            },
        }
    }
}

/// How a log writes its ids as positions (the opaque `Position` strings clients keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// `<epoch as 16 hex digits>:<seq>`: the gateway's own log (a random epoch at every
    /// start, so a position from before a restart is recognised) and a JetStream stream (the
    /// epoch comes from the stream's creation time, so a recreated stream is recognised).
    Sequence { epoch: u64 },
    /// A Redis stream's entry ids as Redis writes them: `<ms>-<seq>`.
    Stream,
}

impl Ids {
    pub fn text(&self, id: LogId) -> String {
        match self {
            Ids::Sequence { epoch } => format!("{epoch:016x}:{}", id.minor),
            Ids::Stream => format!("{}-{}", id.major, id.minor),
        }
    }

    /// Reads a client's position: `Invalid` when it is not a position at all, `OtherEpoch`
    /// when it is one of another log (another epoch, or another kind of log).
    pub fn parse(&self, text: &str) -> Result<LogId, ResumeError> {
        let other = || ResumeError::OtherEpoch(text.into(), self.text(LogId::ZERO));
        let digits = |part: &str| -> Option<u64> {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        if let Some((epoch, seq)) = text.split_once(':') {
            if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ResumeError::Invalid(text.into()));
            }
            let seq = digits(seq).ok_or_else(|| ResumeError::Invalid(text.into()))?;
            let epoch =
                u64::from_str_radix(epoch, 16).map_err(|_| ResumeError::Invalid(text.into()))?;
            return match self {
                Ids::Sequence { epoch: own } if *own == epoch => Ok(LogId::seq(seq)),
                _ => Err(other()),
            };
        }
        if let Some((ms, seq)) = text.split_once('-') {
            let (Some(major), Some(minor)) = (digits(ms), digits(seq)) else {
                return Err(ResumeError::Invalid(text.into()));
            };
            return match self {
                Ids::Stream => Ok(LogId { major, minor }),
                Ids::Sequence { .. } => Err(other()),
            };
        }
        Err(ResumeError::Invalid(text.into()))
    }
}

/// Why a `Resume` was refused. `Display` is the Ack `Message`; `label()` the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("invalid position: {0:?} is not a position this server handed out")]
    Invalid(String),
    #[error("invalid position: {0} is ahead of the newest event ({1})")]
    Ahead(String, String),
    #[error("position expired: {0} is from another epoch (the server restarted or its log was replaced since; positions now look like {1}): refetch your state")]
    OtherEpoch(String, String),
    #[error("position expired: the events after {0} are no longer retained (the oldest is {1}): refetch your state")]
    Expired(String, String),
    #[error("too many missed events: more than {0} events match since the position (history.max_replay): refetch your state")]
    TooMany(usize),
    #[error("too many missed events: {0} or more missed events ({1} bytes or more) do not fit this connection's outbound queue: refetch your state")]
    QueueFull(usize, usize),
    #[error("cannot resume: this server keeps no history (history.enabled = false)")]
    Disabled,
    #[error("cannot resume: send \"Position\" in Hello (\"\" when there is none yet) to resume; a connection resumes once")]
    NotHeld,
    #[error("cannot resume: the connection is gone")]
    Gone,
}

impl ResumeError {
    pub fn label(&self) -> &'static str {
        match self {
            ResumeError::Invalid(_) | ResumeError::Ahead(..) => "invalid",
            ResumeError::OtherEpoch(..) => "other_epoch",
            ResumeError::Expired(..) => "expired",
            ResumeError::TooMany(_) | ResumeError::QueueFull(..) => "too_many",
            ResumeError::Disabled => "disabled",
            ResumeError::NotHeld => "not_held",
            ResumeError::Gone => "gone",
        }
    }
}

/// The answer to a `Resume`: how many events were queued (or why none were), and the
/// position the connection is live from (the newest event accepted before the resume; `None`
/// without history). A client that receives no event after a refusal resumes from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub replayed: Result<usize, ResumeError>,
    pub position: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_junk_is_refused() {
        let ids = Ids::Sequence { epoch: 0xabc };
        assert_eq!(ids.text(LogId::seq(42)), "0000000000000abc:42");
        assert_eq!(ids.parse("0000000000000abc:42"), Ok(LogId::seq(42)));
        let stream = Ids::Stream;
        let id = LogId {
            major: 1765000000000,
            minor: 3,
        };
        assert_eq!(stream.text(id), "1765000000000-3");
        assert_eq!(stream.parse("1765000000000-3"), Ok(id));
        for junk in [
            "",
            "42",
            "abc:42",
            "0000000000000abc:",
            "0000000000000abc:-1",
            "0000000000000abc:+1",
            "000000000000zabc:1",
            "0000000000000abc:99999999999999999999999",
            "-1",
            "1-",
            "1-+2",
            "1-2-3",
        ] {
            assert!(
                matches!(ids.parse(junk), Err(ResumeError::Invalid(_))),
                "{junk}"
            );
            assert!(
                matches!(stream.parse(junk), Err(ResumeError::Invalid(_))),
                "{junk}"
            );
        }
        // A position of another log is from another epoch, not junk.
        assert!(matches!(
            ids.parse("0000000000000abd:1"),
            Err(ResumeError::OtherEpoch(..))
        ));
        assert!(matches!(
            ids.parse("1765000000000-3"),
            Err(ResumeError::OtherEpoch(..))
        ));
        assert!(matches!(
            stream.parse("0000000000000abc:42"),
            Err(ResumeError::OtherEpoch(..))
        ));
        assert_eq!(
            LogId { major: 5, minor: 0 }.before(),
            LogId {
                major: 4,
                minor: u64::MAX
            }
        );
        assert_eq!(LogId::seq(5).before(), LogId::seq(4));
        assert_eq!(LogId::ZERO.before(), LogId::ZERO);
    }

    #[test]
    fn config_is_checked() {
        let config = HistoryConfig::default();
        assert!(config.validate().is_ok());
        for bad in [
            HistoryConfig {
                max_events: 0,
                ..HistoryConfig::default()
            },
            HistoryConfig {
                max_age: Seconds(Duration::ZERO),
                ..HistoryConfig::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
        let off = HistoryConfig {
            enabled: false,
            max_events: 0,
            ..HistoryConfig::default()
        };
        assert!(off.validate().is_ok());
    }

    #[test]
    fn error_texts_start_with_their_ack_text() {
        use eventgate_protocol::wire::ack_text;
        for (error, text) in [
            (ResumeError::Invalid("x".into()), ack_text::INVALID_POSITION),
            (ResumeError::Disabled, ack_text::CANNOT_RESUME),
            (ResumeError::NotHeld, ack_text::CANNOT_RESUME),
            (ResumeError::QueueFull(1, 2), ack_text::TOO_MANY_MISSED),
        ] {
            assert!(error.to_string().starts_with(&format!("{text}: ")));
        }
        assert!(ResumeError::Expired("a".into(), "b".into())
            .to_string()
            .starts_with("position expired: "));
        assert!(ResumeError::OtherEpoch("a".into(), "b".into())
            .to_string()
            .starts_with("position expired: "));
        assert!(ResumeError::TooMany(5)
            .to_string()
            .starts_with("too many missed events: "));
    }
}
