//! Profiling driver for `RuleIndex::matches_json`: builds only one index of the bench's
//! mixed rules (the workload of `benches/patterns.rs`, shared in `workload/`, without criterion,
//! quamina or 100k-rule builds) and loops over the bench's events, for `perf` and
//! `valgrind --tool=callgrind`.
//!
//! Run: `cargo run --release -p eventgate-protocol --example match_loop -- [rules] [events]`
//! (defaults 10000 rules, 200000 events); prints the time per event and the matches.

mod workload;
use workload::{event, match_loop, mixed_index, Rng};

fn main() {
    let mut args = std::env::args().skip(1);
    let n_rules: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let idx = mixed_index(n_rules);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let evs: Vec<String> = (0..512).map(|_| event(&mut rng, n_rules)).collect();
    let (us, matches) = match_loop(&idx, &evs, n_events);
    println!("{n_rules} rules, {n_events} events: {us:.3} us/event, {matches:.2} matches/event");
}
