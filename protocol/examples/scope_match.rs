//! Profiling driver for scoped rules (issue #15's match cost): builds one index holding the
//! rules of `connections` connections spread over `tenants` tenants, two rules each (the
//! load tool's `hit` = `{"source":["bench"],"detail":{"group":[g]}}` and `miss` =
//! `{"source":["never"]}`), and matches the load tool's events (`detail.group`,
//! `detail.tenant`, ~600 bytes of padding, in the gateway's EventBridge envelope) with
//! `RuleIndex::matches` on the parsed event, as the hub's dispatch does. Three ways to build
//! the index, one per run:
//!
//! - `scoped`: rules without a tenant, each ANDed with its connection's scope
//!   `{"detail":{"tenant":["t<i>"]}}` by `Pattern::and`, as the gateway's session does;
//! - `client`: the same conditions written by the client into each rule
//!   (`"detail":{"group":[g],"tenant":["t<i>"]}`): the like-for-like unscoped baseline,
//!   same deliveries per event;
//! - `unscoped`: the rules without any tenant condition (the issue's literal reading: each
//!   event then reaches its whole group, 10x the deliveries at 1,000 tenants / 100 groups).
//!
//! For `valgrind --tool=callgrind`: run twice with different event counts and divide the
//! difference in instructions by the difference in events (the build cancels out); see
//! `bench/identity.sh`. Owns nothing the gateway uses.
//!
//! Run: `cargo run --release -p eventgate-protocol --example scope_match --
//! <scoped|client|unscoped> [events] [connections] [tenants] [groups]`
//! (defaults 100000 events, 10000 connections, 1000 tenants, 100 groups); prints the rules,
//! the time per event and the matches per event.

use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleIndex};
use serde_json::Value;

fn parse(text: &str, limits: &PatternLimits) -> Pattern {
    match Pattern::parse(text, limits) {
        Ok(pattern) => pattern,
        Err(error) => panic!("bench pattern {text} rejected: {error}"),
    }
}

/// Event `k` as the hub matches it: the envelope `POST /events` builds around the load
/// tool's entry.
fn event(k: usize, tenants: usize, groups: usize) -> Value {
    let text = format!(
        r#"{{"version":"0","id":"00000000-0000-4000-8000-{k:012x}","detail-type":"load","source":"bench","account":"000000000000","time":"2026-12-02T11:33:00Z","region":"local","resources":[],"detail":{{"group":{},"tenant":"t{}","seq":{k},"sent":1780000000000000000,"padding":"{}"}}}}"#,
        k % groups,
        k % tenants,
        "x".repeat(600)
    );
    match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(error) => panic!("bench event {k}: {error}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "scoped".into());
    let mut number = |default: usize| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let n_events = number(100_000);
    let connections = number(10_000);
    let tenants = number(1_000).max(1);
    let groups = number(100).max(1);
    let limits = PatternLimits::default();
    let mut index: RuleIndex<u32> = RuleIndex::new();
    for i in 0..connections {
        let (tenant, group) = (i % tenants, i % groups);
        let (hit, miss) = match mode.as_str() {
            "scoped" => {
                let scope = parse(
                    &format!(r#"{{"detail":{{"tenant":["t{tenant}"]}}}}"#),
                    &limits,
                );
                (
                    scope.and(&parse(
                        &format!(r#"{{"source":["bench"],"detail":{{"group":[{group}]}}}}"#),
                        &limits,
                    )),
                    scope.and(&parse(r#"{"source":["never"]}"#, &limits)),
                )
            }
            "client" => (
                parse(
                    &format!(
                        r#"{{"source":["bench"],"detail":{{"group":[{group}],"tenant":["t{tenant}"]}}}}"#
                    ),
                    &limits,
                ),
                parse(
                    &format!(r#"{{"source":["never"],"detail":{{"tenant":["t{tenant}"]}}}}"#),
                    &limits,
                ),
            ),
            "unscoped" => (
                parse(
                    &format!(r#"{{"source":["bench"],"detail":{{"group":[{group}]}}}}"#),
                    &limits,
                ),
                parse(r#"{"source":["never"]}"#, &limits),
            ),
            other => panic!("unknown mode {other:?}: scoped, client or unscoped"),
        };
        index.insert(2 * i as u32, &hit);
        index.insert(2 * i as u32 + 1, &miss);
    }
    // Every (tenant, group) pair an event can carry, once; the loop goes round them.
    let distinct = tenants.max(groups) * 10;
    let events: Vec<Value> = (0..distinct).map(|k| event(k, tenants, groups)).collect();
    let mut out = Vec::with_capacity(256);
    let mut matched = 0usize;
    let started = std::time::Instant::now();
    for k in 0..n_events {
        out.clear();
        index.matches(&events[k % events.len()], &mut out);
        matched += std::hint::black_box(out.len());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = n_events.max(1) as f64;
    println!(
        "{mode}: {} rules, {n_events} events: {:.3} us/event, {:.2} matches/event",
        index.len(),
        elapsed * 1e6 / n,
        matched as f64 / n
    );
}
