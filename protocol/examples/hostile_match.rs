//! Profiling driver for hostile rules: builds one index holding the bench's mixed rules
//! (`workload/`) plus `adversaries` connections' rules at the gateway's default budgets
//! (the `--adversaries` patterns of `eventgate-bench`: an `anything-but` list of 256
//! wildcards on `source`, then `anything-but` lists of 256 strings, all on `source`, so every rule matches every
//! event), and matches the
//! bench's events, optionally with a long `detail.state` string. For
//! `valgrind --tool=callgrind`: instructions per event with and without adversaries.
//!
//! Run: `cargo run --release -p eventgate-protocol --example hostile_match --
//! [adversaries] [events] [rules] [state_bytes]` (defaults 10, 2000, 10000, 0).

use eventgate_protocol::pattern::{Pattern, PatternLimits};

mod workload;
use workload::{event, match_loop, mixed_index, Rng};

/// Rules one adversary holds at the default budgets (1,000 steps, 512 KiB): the
/// wildcard list (cost 515) and seven string lists (cost 19 and about 66 KiB each) fit.
const RULES_PER_ADVERSARY: usize = 7;

fn adversary_pattern(conn: usize, k: usize) -> String {
    if k == 0 {
        let list: Vec<String> = (0..256).map(|j| format!("\"*a{conn}x{j}*\"")).collect();
        return format!(
            r#"{{"source":[{{"anything-but":{{"wildcard":[{}]}}}}]}}"#,
            list.join(",")
        );
    }
    let list: Vec<String> = (0..256)
        .map(|j| format!("\"a{conn}-{k}-{j:04}\""))
        .collect();
    format!(r#"{{"source":[{{"anything-but":[{}]}}]}}"#, list.join(","))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let adversaries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let n_events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let n_rules: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let state_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let limits = PatternLimits::default();
    let mut idx = mixed_index(n_rules);
    let mut key = n_rules as u32;
    for conn in 0..adversaries {
        for k in 0..RULES_PER_ADVERSARY {
            match Pattern::parse(&adversary_pattern(conn, k), &limits) {
                Ok(p) => idx.insert(key, &p),
                Err(e) => panic!("adversary rule rejected: {e}"),
            }
            key += 1;
        }
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let state = "s".repeat(state_bytes);
    let evs: Vec<String> = (0..256)
        .map(|_| {
            let e = event(&mut rng, n_rules.max(1));
            if state_bytes == 0 {
                return e;
            }
            let mut v: serde_json::Value = serde_json::from_str(&e).unwrap_or_default();
            v["detail"]["state"] = serde_json::Value::String(state.clone());
            v.to_string()
        })
        .collect();
    let (us, matches) = match_loop(&idx, &evs, n_events);
    println!(
        "{adversaries} adversaries, {n_rules} rules, {n_events} events: {us:.3} us/event, {matches:.2} matches/event"
    );
}
