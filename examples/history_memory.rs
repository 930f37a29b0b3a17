//! Measures the resident memory one retained event costs in the in-memory history log: fills
//! a log with 100,000 events and compares the process's resident set before and after.
//! Run: `cargo run --example history_memory -- 512`, the argument being the padding in each
//! event's detail in bytes (one size per process, as freed memory is not always given back
//! to the system; allocation sizes do not depend on the build profile).

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventgate::config::Seconds;
use eventgate::history::{HistoryConfig, MemoryLog};
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
    const EVENTS: usize = 100_000;
    let detail_bytes: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(512);
    {
        let config = HistoryConfig {
            enabled: true,
            max_events: EVENTS,
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
        for n in 0..EVENTS {
            let json = format!(
                r#"{{"source":"orders","detail-type":"OrderPlaced","detail":{{"seq":{n},"customer":"c-{n}","items":[1,2,3],"note":"{}"}}}}"#,
                "x".repeat(detail_bytes)
            );
            let raw = serde_json::value::RawValue::from_string(json).expect("JSON");
            let event = Arc::new(from_eventbridge(&raw, &fill).expect("event"));
            log.append(&event, now);
        }
        let after = resident_bytes();
        let counted = log.bytes() / log.len();
        let resident = after.saturating_sub(before) / EVENTS;
        println!(
            "padding {detail_bytes} B: counted {counted} B/event (history.max_bytes), resident {resident} B/event, ratio {:.2}",
            resident as f64 / counted as f64
        );
    }
}
