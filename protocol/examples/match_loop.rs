//! Profiling driver for `RuleIndex::matches_json`: builds only one index of the bench's
//! mixed rules (the workload of `benches/patterns.rs`, shared in `workload/`, without criterion,
//! quamina or 100k-rule builds) and loops over the bench's events, for `perf` and
//! `valgrind --tool=callgrind`.
//!
//! Run: `cargo run --release -p eventgate-protocol --example match_loop -- [rules] [events]`
//! (defaults 10000 rules, 200000 events); prints the time per event and the matches.

use std::hint::black_box;
use std::time::Instant;

use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleIndex};

mod workload;
use workload::{event, rule, Rng};

fn main() {
    let mut args = std::env::args().skip(1);
    let n_rules: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let limits = PatternLimits::default();
    let mut idx = RuleIndex::new();
    for i in 0..n_rules {
        match Pattern::parse(&rule(i), &limits) {
            Ok(p) => idx.insert(i as u32, &p),
            Err(e) => panic!("bench rule {i} rejected: {e}"),
        }
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let evs: Vec<String> = (0..512).map(|_| event(&mut rng, n_rules)).collect();
    let mut out = Vec::with_capacity(64);
    let mut matched = 0usize;
    let t = Instant::now();
    for i in 0..n_events {
        out.clear();
        if idx.matches_json(&evs[i % evs.len()], &mut out).is_err() {
            panic!("bench event {i} rejected");
        }
        matched += black_box(out.len());
    }
    let dt = t.elapsed();
    println!(
        "{n_rules} rules, {n_events} events: {:.3} us/event, {:.2} matches/event",
        dt.as_secs_f64() * 1e6 / n_events as f64,
        matched as f64 / n_events as f64
    );
}
