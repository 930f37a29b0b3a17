//! Measures the resident memory one retained event costs in the in-memory history log: fills
//! a log of `max_events` (second argument, default 100,000; `max_bytes` unbounded) with
//! `max_events` events and compares the process's resident set before and after, then
//! appends `max_events` more (each evicting the oldest: the steady state of a full log) and
//! measures again.
//! Run: `cargo run --release --example history_memory -- 512 10000`, the first argument being
//! the padding in each event's detail in bytes (one size per process, as freed memory is not
//! always given back to the system; allocation sizes do not depend on the build profile).
//! `bench/history-memory.sh` runs it for several event sizes and retention settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventgate::history::{HistoryConfig, MemoryLog};
use eventgate::units::Seconds;
use eventgate_protocol::envelope::{from_eventbridge, Fill};

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let detail_bytes: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(512);
    let events: usize = std::env::args()
        .nth(2)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(100_000);
    {
        let config = HistoryConfig {
            enabled: true,
            max_events: events,
            max_bytes: usize::MAX,
            max_age: Seconds(Duration::from_secs(3600)),
            max_replay: 1000,
        };
        let mut log = MemoryLog::start(config);
        let fill = Fill {
            id: "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f".into(),
            time: "2026-12-06T05:00:00Z".into(),
            account: "000000000000".into(),
            region: "local".into(),
        };
        let before = resident_bytes();
        let now = Instant::now();
        let mut append = |n: usize| {
            let json = format!(
                r#"{{"source":"orders","detail-type":"OrderPlaced","detail":{{"seq":{n},"customer":"c-{n}","items":[1,2,3],"note":"{}"}}}}"#,
                "x".repeat(detail_bytes)
            );
            let raw = serde_json::value::RawValue::from_string(json).expect("JSON");
            let event = Arc::new(from_eventbridge(&raw, &fill).expect("event"));
            log.append(&event, now);
        };
        for n in 0..events {
            append(n);
        }
        let filled = resident_bytes();
        for n in events..2 * events {
            append(n);
        }
        let steady = resident_bytes();
        let counted = log.bytes() / log.len();
        let resident = filled.saturating_sub(before) / events;
        let resident_steady = steady.saturating_sub(before) / events;
        println!(
            "padding {detail_bytes} B, max_events {events}: counted {counted} B/event (history.max_bytes), resident {resident} B/event when filled, {resident_steady} B/event after {events} more (evicting), ratio {:.2}",
            resident as f64 / counted as f64
        );
    }
}
