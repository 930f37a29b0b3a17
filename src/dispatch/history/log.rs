//! The dispatcher's log: the retained events in the dispatcher's order, each under its
//! [`LogId`], bounded by count, bytes of event JSON and age, and dropped from the oldest end.
//!
//! On a single gateway it is the whole history: it numbers the events itself. On a cluster
//! node with a shared log (`cluster.backend = "redis_stream" | "jetstream"`) it holds the
//! tail of the shared log as this node has read it, under the shared log's own ids, so a
//! resume is answered here, in the dispatcher's order, whichever node the client was on.
//!
//! Owns retention, the mapping between positions and retained events, and the *floor*: the
//! newest id known to be missing from the log (evicted, trimmed before it was read, or
//! skipped over). A position at or after the floor can be resumed from; one before it is
//! expired. It is owned by the dispatcher task (no lock): appending is a push and a few
//! comparisons. Also owns the replay memo ([`MemoryLog::matching`]): which retained events a
//! pattern matched, remembered across resumes. Does not own the index, delivery or reading
//! the shared log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use eventgate_protocol::envelope::Event;
use eventgate_protocol::pattern::Pattern;

use super::{HistoryConfig, Ids, LogId, ResumeError};

struct Entry {
    at: Instant,
    id: LogId,
    event: Arc<Event>,
}

/// Why events left the log (for metrics), counted since the last [`MemoryLog::take_evictions`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    pub count: u64,
    pub bytes: u64,
    pub age: u64,
}

/// An event read from a shared log, with the time it entered that log.
#[derive(Debug, Clone)]
pub struct Logged {
    pub id: LogId,
    pub event: Arc<Event>,
    pub at: Instant,
}

/// How many patterns the replay memo remembers (least recently used out first). With the
/// ids each keeps (at most the resume's `max_replay`, 16 bytes each) this bounds its memory:
/// 32 × 1,000 × 16 bytes ≈ 0.5 MiB at the default `history.max_replay`, up to twice that
/// with the queues' spare capacity.
pub const MEMO_PATTERNS: usize = 32;

/// Which retained events one pattern matched: every match in `(from, to]`, oldest first.
struct Memo {
    pattern: Pattern,
    from: LogId,
    to: LogId,
    ids: VecDeque<LogId>,
    used: u64,
}

/// See the module comment.
pub struct MemoryLog {
    ids: Ids,
    /// The ids come from a shared log (not numbered here).
    shared: bool,
    config: HistoryConfig,
    entries: VecDeque<Entry>,
    /// Positions at or after it can be resumed from.
    floor: LogId,
    /// The newest id appended (the floor while nothing was).
    newest: LogId,
    bytes: usize,
    evictions: Evictions,
    /// The replay memo (see [`MemoryLog::matching`]).
    memo: Vec<Memo>,
    memo_tick: u64,
}

/// The entries after `id`, oldest first.
fn entries_after(
    entries: &VecDeque<Entry>,
    id: LogId,
) -> impl Iterator<Item = (LogId, &Arc<Event>)> {
    let skip = entries.partition_point(|entry| entry.id <= id);
    entries.range(skip..).map(|entry| (entry.id, &entry.event))
}

/// The bytes an event counts for against `history.max_bytes`.
fn event_bytes(event: &Event) -> usize {
    event.json.len() + event.id.len() + event.source.len() + event.detail_type.len()
}

impl MemoryLog {
    /// An empty single-gateway log with a fresh random epoch.
    pub fn start(config: HistoryConfig) -> MemoryLog {
        let epoch = uuid::Uuid::new_v4().as_u64_pair().0;
        MemoryLog::with_epoch(config, epoch)
    }

    /// An empty single-gateway log whose positions name `epoch`.
    pub fn with_epoch(config: HistoryConfig, epoch: u64) -> MemoryLog {
        MemoryLog::new(config, Ids::Sequence { epoch }, false)
    }

    /// An empty mirror of a shared log, to be filled by [`MemoryLog::load`].
    pub fn shared(config: HistoryConfig, ids: Ids) -> MemoryLog {
        MemoryLog::new(config, ids, true)
    }

    fn new(config: HistoryConfig, ids: Ids, shared: bool) -> MemoryLog {
        MemoryLog {
            ids,
            shared,
            config,
            entries: VecDeque::new(),
            floor: LogId::ZERO,
            newest: LogId::ZERO,
            bytes: 0,
            evictions: Evictions::default(),
            memo: Vec::new(),
            memo_tick: 0,
        }
    }

    /// The log's ids come from a shared log.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Retains `event` under the next sequence number and returns its id (single gateway).
    pub fn append(&mut self, event: &Arc<Event>, now: Instant) -> LogId {
        let id = LogId {
            major: 0,
            minor: self.newest.minor + 1,
        };
        self.push(id, Arc::clone(event), now);
        self.expire(now);
        id
    }

    /// Retains an event read from the shared log; `false` (and nothing retained) when its id
    /// is not after the newest one: the reader saw it before.
    pub fn append_at(&mut self, id: LogId, event: &Arc<Event>, at: Instant) -> bool {
        if id <= self.newest {
            return false;
        }
        self.push(id, Arc::clone(event), at);
        self.expire(Instant::now());
        true
    }

    fn push(&mut self, id: LogId, event: Arc<Event>, at: Instant) {
        self.newest = id;
        self.bytes += event_bytes(&event);
        self.entries.push_back(Entry { at, id, event });
        while self.entries.len() > self.config.max_events {
            self.pop();
            self.evictions.count += 1;
        }
        // The newest event stays even when it alone is over the byte bound.
        while self.bytes > self.config.max_bytes && self.entries.len() > 1 {
            self.pop();
            self.evictions.bytes += 1;
        }
    }

    /// Replaces the content with what a shared log holds now: `events` oldest first, all
    /// after `floor` (see the module comment), under the shared log's `ids`.
    pub fn load(&mut self, ids: Ids, floor: LogId, events: Vec<Logged>) {
        self.ids = ids;
        self.entries.clear();
        self.memo.clear();
        self.bytes = 0;
        self.floor = floor;
        self.newest = floor;
        for logged in events {
            if logged.id > self.newest {
                self.push(logged.id, logged.event, logged.at);
            }
        }
        self.expire(Instant::now());
    }

    /// Forgets every retained event and resumes after `floor`: the reader could not read
    /// some events of the shared log (they were trimmed while it was away).
    pub fn skip_to(&mut self, floor: LogId) {
        self.entries.clear();
        self.memo.clear();
        self.bytes = 0;
        self.floor = floor.max(self.newest);
        self.newest = self.floor;
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
            self.floor = entry.id;
        }
    }

    /// The newest event's id (the floor when the log never held one).
    pub fn newest(&self) -> LogId {
        self.newest
    }

    /// The text form of `id` (what a client receives as `Position`).
    pub fn text(&self, id: LogId) -> String {
        self.ids.text(id)
    }

    /// The id a client's position stands for, when every event after it is still retained.
    /// On a shared log a position may be ahead of what this node has read (the client was on
    /// a node that read further): the caller skips the live events up to it.
    pub fn resolve(&self, text: &str) -> Result<LogId, ResumeError> {
        let id = self.ids.parse(text)?;
        if id > self.newest && !self.shared {
            return Err(ResumeError::Ahead(text.into(), self.text(self.newest)));
        }
        if id < self.floor {
            let oldest = self.entries.front().map_or(self.newest, |entry| entry.id);
            return Err(ResumeError::Expired(text.into(), self.text(oldest)));
        }
        Ok(id)
    }

    /// The retained events after `id`, oldest first.
    pub fn after(&self, id: LogId) -> impl Iterator<Item = (LogId, &Arc<Event>)> {
        entries_after(&self.entries, id)
    }

    /// The retained event `id`.
    pub fn get(&self, id: LogId) -> Option<&Arc<Event>> {
        let at = self
            .entries
            .binary_search_by_key(&id, |entry| entry.id)
            .ok()?;
        Some(&self.entries.get(at)?.event)
    }

    /// The ids of the retained events after `after` that `pattern` matches, oldest first;
    /// `None` when there are more than `keep` of them (a replay refuses that many anyway).
    ///
    /// Remembered per pattern ([`Pattern::same_as`]: its conditions, scope included, not its
    /// text), so the next resume with the same pattern from the same or a later position
    /// evaluates only the events appended since. In a reconnect storm every client of an app
    /// resumes with the same patterns from about the same position; evaluated afresh, each
    /// resume cost its rules times every retained event after its position, and as the
    /// storm went on the positions aged and each resume cost more (bench/findings.md).
    /// Bounded: [`MEMO_PATTERNS`] patterns, `keep` ids each; forgotten when the content is
    /// replaced ([`MemoryLog::load`], [`MemoryLog::skip_to`]).
    pub fn matching(&mut self, after: LogId, pattern: &Pattern, keep: usize) -> Option<Vec<LogId>> {
        self.memo_tick += 1;
        let fresh = || Memo {
            pattern: pattern.clone(),
            from: after,
            to: after,
            ids: VecDeque::new(),
            used: 0,
        };
        let at = match self
            .memo
            .iter()
            .position(|memo| memo.pattern.same_as(pattern))
        {
            Some(at) => {
                if self.memo[at].from > after {
                    // Remembered from a later position only: start again from this one.
                    self.memo[at] = fresh();
                }
                at
            }
            None if self.memo.len() < MEMO_PATTERNS => {
                self.memo.push(fresh());
                self.memo.len() - 1
            }
            None => {
                let oldest = (0..self.memo.len())
                    .min_by_key(|&at| self.memo[at].used)
                    .unwrap_or(0);
                self.memo[oldest] = fresh();
                oldest
            }
        };
        let memo = &mut self.memo[at];
        memo.used = self.memo_tick;
        for (id, event) in entries_after(&self.entries, memo.to) {
            if memo.pattern.matches(&event.value) {
                memo.ids.push_back(id);
            }
        }
        memo.to = memo.to.max(self.newest);
        while memo.ids.len() > keep {
            // Matches before the dropped one are no longer remembered.
            if let Some(dropped) = memo.ids.pop_front() {
                memo.from = dropped;
            }
        }
        if memo.from > after {
            return None;
        }
        let start = memo.ids.partition_point(|id| *id <= after);
        Some(memo.ids.range(start..).copied().collect())
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
    use crate::units::Seconds;
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

    fn config(max_events: usize, max_bytes: usize, max_age: Duration) -> HistoryConfig {
        HistoryConfig {
            enabled: true,
            max_events,
            max_bytes,
            max_age: Seconds(max_age),
            max_replay: 10,
        }
    }

    fn log(max_events: usize, max_bytes: usize, max_age: Duration) -> MemoryLog {
        MemoryLog::with_epoch(config(max_events, max_bytes, max_age), 7)
    }

    fn seqs(log: &MemoryLog, after: u64) -> Vec<u64> {
        log.after(LogId::seq(after))
            .map(|(id, _)| id.minor)
            .collect()
    }

    #[test]
    fn positions_count_up_and_the_count_bound_drops_the_oldest() {
        let mut log = log(3, usize::MAX, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(log.text(log.newest()), "0000000000000007:0");
        assert_eq!(log.resolve("0000000000000007:0"), Ok(LogId::seq(0)));
        for n in 1..=5 {
            assert_eq!(log.append(&event(n, 0), now).minor, n as u64);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(seqs(&log, 2), [3, 4, 5]);
        assert_eq!(seqs(&log, 4), [5]);
        assert!(seqs(&log, 5).is_empty());
        assert_eq!(log.take_evictions().count, 2);
        // After 2 the client needs 3.. (retained); after 1 it needs 2 (gone).
        assert_eq!(log.resolve("0000000000000007:2"), Ok(LogId::seq(2)));
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
        // A stream id is from another kind of log: another epoch.
        assert!(matches!(
            log.resolve("1765000000000-0"),
            Err(ResumeError::OtherEpoch(..))
        ));
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
        assert_eq!(log.resolve("0000000000000007:2"), Ok(LogId::seq(2)));
        assert!(matches!(
            log.resolve("0000000000000007:1"),
            Err(ResumeError::Expired(..))
        ));
    }

    fn stream(ms: u64, seq: u64) -> LogId {
        LogId {
            major: ms,
            minor: seq,
        }
    }

    #[test]
    fn a_shared_log_keeps_its_ids_skips_what_it_saw_and_accepts_positions_ahead() {
        let now = Instant::now();
        let mut log =
            MemoryLog::shared(config(3, usize::MAX, Duration::from_secs(60)), Ids::Stream);
        log.load(
            Ids::Stream,
            stream(100, 0),
            vec![
                Logged {
                    id: stream(100, 1),
                    event: event(1, 0),
                    at: now,
                },
                Logged {
                    id: stream(105, 0),
                    event: event(2, 0),
                    at: now,
                },
            ],
        );
        assert_eq!(log.text(log.newest()), "105-0");
        // Seen before: not retained twice.
        assert!(!log.append_at(stream(105, 0), &event(2, 0), now));
        assert!(log.append_at(stream(107, 3), &event(3, 0), now));
        let after = |log: &MemoryLog, id| log.after(id).map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(
            after(&log, stream(100, 1)),
            [stream(105, 0), stream(107, 3)]
        );
        // A position between two ids replays what follows it.
        assert_eq!(
            after(&log, stream(104, 9)),
            [stream(105, 0), stream(107, 3)]
        );
        assert_eq!(log.resolve("100-0"), Ok(stream(100, 0)));
        assert!(matches!(log.resolve("99-9"), Err(ResumeError::Expired(..))));
        // Ahead of this node's reader: accepted (the caller skips up to it).
        assert_eq!(log.resolve("200-0"), Ok(stream(200, 0)));
        assert!(matches!(
            log.resolve("0000000000000007:2"),
            Err(ResumeError::OtherEpoch(..))
        ));
        assert!(matches!(log.resolve("105-"), Err(ResumeError::Invalid(_))));
        // The count bound moves the floor to the evicted id: a client that saw it can still
        // resume, one that saw only what came before it cannot.
        assert!(log.append_at(stream(108, 0), &event(4, 0), now));
        assert_eq!(log.resolve("100-1"), Ok(stream(100, 1)));
        assert!(matches!(
            log.resolve("100-0"),
            Err(ResumeError::Expired(..))
        ));
        assert_eq!(log.resolve("105-0"), Ok(stream(105, 0)));
        // A gap: everything before the skip is expired.
        log.skip_to(stream(300, 0));
        assert!(log.is_empty());
        assert!(matches!(
            log.resolve("108-0"),
            Err(ResumeError::Expired(..))
        ));
        assert_eq!(log.resolve("300-0"), Ok(stream(300, 0)));
    }

    fn pattern(value: serde_json::Value) -> Pattern {
        Pattern::from_value(&value, &Default::default()).unwrap()
    }

    /// What the memo must answer: every retained event after `after` the pattern matches.
    fn evaluated(log: &MemoryLog, after: u64, pattern: &Pattern) -> Vec<u64> {
        log.after(LogId::seq(after))
            .filter(|(_, event)| pattern.matches(&event.value))
            .map(|(id, _)| id.minor)
            .collect()
    }

    fn memo(log: &mut MemoryLog, after: u64, pattern: &Pattern, keep: usize) -> Option<Vec<u64>> {
        let ids = log.matching(LogId::seq(after), pattern, keep)?;
        Some(ids.into_iter().map(|id| id.minor).collect())
    }

    /// The memo's answer (with room for every match) is the evaluation's.
    fn agrees(log: &mut MemoryLog, after: u64, pattern: &Pattern) {
        let expected = evaluated(log, after, pattern);
        assert_eq!(
            memo(log, after, pattern, 100),
            Some(expected),
            "after {after}"
        );
    }

    #[test]
    fn the_replay_memo_answers_what_evaluating_every_event_would() {
        let mut log = log(100, usize::MAX, Duration::from_secs(60));
        let now = Instant::now();
        let high = pattern(serde_json::json!({"detail": {"n": [{"numeric": [">=", 5]}]}}));
        let odd = pattern(serde_json::json!({"detail": {"n": [1, 3, 5, 7, 9, 11, 13, 15]}}));
        for n in 1..=8 {
            log.append(&event(n, 0), now);
        }
        for (after, pattern) in [(0, &high), (3, &high), (6, &high), (2, &odd), (0, &odd)] {
            agrees(&mut log, after, pattern);
        }
        // Appended since: only those are evaluated, and they are in the answer.
        for n in 9..=15 {
            log.append(&event(n, 0), now);
        }
        for (after, pattern) in [(3, &high), (12, &high), (0, &odd), (14, &odd), (15, &odd)] {
            agrees(&mut log, after, pattern);
        }
        // More than `keep` after the position: none (the replay refuses them); fewer: the ids.
        assert_eq!(memo(&mut log, 0, &high, 3), None);
        assert_eq!(memo(&mut log, 12, &high, 3).unwrap(), [13, 14, 15]);
        agrees(&mut log, 0, &high);
        // The content replaced: nothing remembered answers for it.
        log.skip_to(LogId::seq(20));
        assert_eq!(memo(&mut log, 20, &high, 100).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn the_replay_memo_tells_scopes_apart_and_stays_bounded() {
        let mut log = log(100, usize::MAX, Duration::from_secs(60));
        let now = Instant::now();
        for n in 1..=10 {
            log.append(&event(n, 0), now);
        }
        // The same text under two scopes: the same `source()`, other conditions.
        let text = pattern(serde_json::json!({"source": ["s"]}));
        let low = pattern(serde_json::json!({"detail": {"n": [1, 2, 3]}})).and(&text);
        let high = pattern(serde_json::json!({"detail": {"n": [8, 9, 10]}})).and(&text);
        assert_eq!(low.source(), high.source());
        assert_eq!(memo(&mut log, 0, &low, 100).unwrap(), [1, 2, 3]);
        assert_eq!(memo(&mut log, 0, &high, 100).unwrap(), [8, 9, 10]);
        agrees(&mut log, 0, &text);
        // More patterns than it remembers: the oldest go, every answer stays right.
        let many: Vec<Pattern> = (0..MEMO_PATTERNS + 8)
            .map(|n| pattern(serde_json::json!({"detail": {"n": [n % 12]}})))
            .collect();
        for round in 0..2 {
            for pattern in &many {
                agrees(&mut log, round, pattern);
            }
        }
        assert!(log.memo.len() <= MEMO_PATTERNS);
        assert_eq!(memo(&mut log, 0, &low, 100).unwrap(), [1, 2, 3]);
    }
}
