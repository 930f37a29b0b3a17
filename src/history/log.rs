//! The in-memory log of a single gateway: the retained events in acceptance order, bounded
//! by count, bytes of event JSON and age, and dropped from the oldest end.
//!
//! Owns retention and the mapping between positions and retained events. It is owned by the
//! dispatcher task (no lock): appending is a push and a few comparisons. Does not own
//! matching or delivery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use eventgate_protocol::envelope::Event;

use super::{HistoryConfig, Position, ResumeError};

struct Entry {
    at: Instant,
    event: Arc<Event>,
}

/// Why events left the log (for metrics), counted since the last [`MemoryLog::take_evictions`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    pub count: u64,
    pub bytes: u64,
    pub age: u64,
}

/// See the module comment.
pub struct MemoryLog {
    epoch: u64,
    config: HistoryConfig,
    entries: VecDeque<Entry>,
    /// Sequence number the next event gets; the retained ones are the `entries.len()`
    /// numbers before it.
    next_seq: u64,
    bytes: usize,
    evictions: Evictions,
}

/// The bytes an event counts for against `history.max_bytes`.
fn event_bytes(event: &Event) -> usize {
    event.json.len() + event.id.len() + event.source.len() + event.detail_type.len()
}

impl MemoryLog {
    /// An empty log with a fresh random epoch.
    pub fn start(config: HistoryConfig) -> MemoryLog {
        let epoch = uuid::Uuid::new_v4().as_u64_pair().0;
        MemoryLog::with_epoch(config, epoch)
    }

    pub fn with_epoch(config: HistoryConfig, epoch: u64) -> MemoryLog {
        MemoryLog {
            epoch,
            config,
            entries: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            evictions: Evictions::default(),
        }
    }

    /// Retains `event` and returns its position; drops the oldest events beyond the bounds.
    pub fn append(&mut self, event: &Arc<Event>, now: Instant) -> Position {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += event_bytes(event);
        self.entries.push_back(Entry {
            at: now,
            event: Arc::clone(event),
        });
        while self.entries.len() > self.config.max_events {
            self.pop();
            self.evictions.count += 1;
        }
        // The newest event stays even when it alone is over the byte bound.
        while self.bytes > self.config.max_bytes && self.entries.len() > 1 {
            self.pop();
            self.evictions.bytes += 1;
        }
        self.expire(now);
        Position {
            epoch: self.epoch,
            seq,
        }
    }

    /// Drops the events older than `history.max_age`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            if now.saturating_duration_since(oldest.at) <= self.config.max_age.0 {
                break;
            }
            self.pop();
            self.evictions.age += 1;
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
    }

    fn pop(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= event_bytes(&entry.event);
        }
    }

    /// The newest event's position (sequence 0 before the first event).
    pub fn newest(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.next_seq - 1,
        }
    }

    fn first_seq(&self) -> u64 {
        self.next_seq - self.entries.len() as u64
    }

    /// The sequence number a client's position stands for, when every event after it is
    /// still retained.
    pub fn resolve(&self, text: &str) -> Result<u64, ResumeError> {
        let position = Position::parse(text).ok_or_else(|| ResumeError::Invalid(text.into()))?;
        if position.epoch != self.epoch {
            let start = Position {
                epoch: self.epoch,
                seq: 0,
            };
            return Err(ResumeError::OtherEpoch(text.into(), start.to_string()));
        }
        let newest = self.newest();
        if position.seq > newest.seq {
            return Err(ResumeError::Ahead(text.into(), newest.to_string()));
        }
        let first = self.first_seq();
        if position.seq + 1 < first {
            let oldest = Position {
                epoch: self.epoch,
                seq: first,
            };
            return Err(ResumeError::Expired(text.into(), oldest.to_string()));
        }
        Ok(position.seq)
    }

    /// The retained events after sequence number `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = (Position, &Arc<Event>)> {
        let first = self.first_seq();
        let skip = seq.saturating_add(1).saturating_sub(first) as usize;
        let epoch = self.epoch;
        self.entries
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(index, entry)| {
                (
                    Position {
                        epoch,
                        seq: first + index as u64,
                    },
                    &entry.event,
                )
            })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of event JSON retained (what `history.max_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The evictions since the last call.
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evictions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Seconds;
    use eventgate_protocol::envelope::{from_eventbridge, Fill};
    use std::time::Duration;

    fn event(n: usize, padding: usize) -> Arc<Event> {
        let json = format!(
            r#"{{"source":"s","detail-type":"t","detail":{{"n":{n},"p":"{}"}}}}"#,
            "x".repeat(padding)
        );
        let raw = serde_json::value::RawValue::from_string(json).unwrap();
        let fill = Fill {
            id: "i".into(),
            time: "2026-01-01T00:00:00Z".into(),
            account: "1".into(),
            region: "r".into(),
        };
        Arc::new(from_eventbridge(&raw, &fill).unwrap())
    }

    fn log(max_events: usize, max_bytes: usize, max_age: Duration) -> MemoryLog {
        MemoryLog::with_epoch(
            HistoryConfig {
                enabled: true,
                max_events,
                max_bytes,
                max_age: Seconds(max_age),
                max_replay: 10,
            },
            7,
        )
    }

    fn seqs(log: &MemoryLog, after: u64) -> Vec<u64> {
        log.after(after).map(|(position, _)| position.seq).collect()
    }

    #[test]
    fn positions_count_up_and_the_count_bound_drops_the_oldest() {
        let mut log = log(3, usize::MAX, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(log.newest().to_string(), "0000000000000007:0");
        assert_eq!(log.resolve("0000000000000007:0"), Ok(0));
        for n in 1..=5 {
            assert_eq!(log.append(&event(n, 0), now).seq, n as u64);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(seqs(&log, 2), [3, 4, 5]);
        assert_eq!(seqs(&log, 4), [5]);
        assert!(seqs(&log, 5).is_empty());
        assert_eq!(log.take_evictions().count, 2);
        // After 2 the client needs 3.. (retained); after 1 it needs 2 (gone).
        assert_eq!(log.resolve("0000000000000007:2"), Ok(2));
        assert!(matches!(
            log.resolve("0000000000000007:1"),
            Err(ResumeError::Expired(..))
        ));
        assert!(matches!(
            log.resolve("0000000000000008:4"),
            Err(ResumeError::OtherEpoch(..))
        ));
        assert!(matches!(
            log.resolve("0000000000000007:6"),
            Err(ResumeError::Ahead(..))
        ));
        assert!(matches!(log.resolve("x"), Err(ResumeError::Invalid(_))));
    }

    #[test]
    fn the_byte_bound_keeps_at_least_the_newest() {
        let mut log = log(100, 1000, Duration::from_secs(60));
        let now = Instant::now();
        let size = event_bytes(&event(1, 300));
        for n in 1..=10 {
            log.append(&event(n, 300), now);
        }
        assert_eq!(log.len(), 1000 / size);
        assert!(log.bytes() <= 1000);
        log.append(&event(11, 5000), now);
        assert_eq!(log.len(), 1);
        assert_eq!(log.take_evictions().bytes, 10);
    }

    #[test]
    fn old_events_expire() {
        let mut log = log(100, usize::MAX, Duration::from_secs(10));
        let start = Instant::now();
        log.append(&event(1, 0), start);
        log.append(&event(2, 0), start + Duration::from_secs(5));
        log.expire(start + Duration::from_secs(12));
        assert_eq!(seqs(&log, 0), [2]);
        log.expire(start + Duration::from_secs(30));
        assert!(log.is_empty());
        assert_eq!(log.bytes(), 0);
        assert_eq!(log.take_evictions().age, 2);
        // Nothing retained: only the newest position is still good.
        assert_eq!(log.resolve("0000000000000007:2"), Ok(2));
        assert!(matches!(
            log.resolve("0000000000000007:1"),
            Err(ResumeError::Expired(..))
        ));
    }
}
