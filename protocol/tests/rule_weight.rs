//! The rule weight of `Pattern::cost` is an honest upper bound of the heap a rule holds
//! (its compiled pattern plus its index entries), measured with a counting allocator; and
//! the default budgets let every pattern of the docs and of the test vectors through.

use std::alloc::System;

use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleBudget, RuleCost, RuleIndex};
use serde_json::{json, Value};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocation counters are process-wide: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pattern(v: &Value) -> Pattern {
    match Pattern::from_value(v, &PatternLimits::default()) {
        Ok(p) => p,
        Err(e) => panic!("{v}: {e}"),
    }
}

/// Heap bytes still held after compiling `n` rules made by `make(i)` and inserting them
/// into `idx`, and the sum of their weights.
fn held(idx: &mut RuleIndex<u32>, n: u32, make: &dyn Fn(u32) -> Value) -> (i64, u64) {
    let texts: Vec<String> = (0..n).map(|i| make(i).to_string()).collect();
    let mut weight = 0u64;
    let region = Region::new(GLOBAL);
    for (i, text) in texts.iter().enumerate() {
        let p = match Pattern::parse(text, &PatternLimits::default()) {
            Ok(p) => p,
            Err(e) => panic!("{text}: {e}"),
        };
        weight += p.cost().bytes;
        idx.insert(i as u32, &p);
    }
    let change = region.change();
    // Reallocations are already counted in both totals.
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    (net, weight)
}

/// A named family of rules: rule `i` of the family.
type Case = (&'static str, Box<dyn Fn(u32) -> Value>);

fn hostile_cases() -> Vec<Case> {
    vec![
        (
            "one exact string",
            Box::new(|i| json!({"source": [format!("s{i}")]})),
        ),
        (
            "256 exact strings",
            Box::new(
                |i| json!({"source": (0..256).map(|j| format!("value-{i}-{j}")).collect::<Vec<_>>()}),
            ),
        ),
        (
            "anything-but 256 wildcards",
            Box::new(|i| {
                json!({"source": [{"anything-but": {"wildcard":
                    (0..256).map(|j| format!("*ab{i}x{j}*")).collect::<Vec<_>>()}}]})
            }),
        ),
        (
            "8-star wildcards",
            Box::new(|i| {
                json!({"detail": {"x": (0..28).map(|j| json!({"wildcard":
                    format!("a{i}*b{j}*c*d*e*f*g*h*z")})).collect::<Vec<_>>()}})
            }),
        ),
        (
            "$or of many alternatives",
            Box::new(|i| {
                json!({"$or": (0..90).map(|j| json!({format!("f{}", j % 7):
                    [format!("v{i}-{j}")], "g": [{"prefix": format!("p{j}")}]})).collect::<Vec<_>>()})
            }),
        ),
        (
            "anything-but strings and prefixes",
            Box::new(|i| {
                json!({"a": [{"anything-but": (0..128).map(|j| format!("n{i}-{j}")).collect::<Vec<_>>()}],
                       "b": [{"anything-but": {"prefix": (0..64).map(|j| format!("p{i}-{j}")).collect::<Vec<_>>()}}],
                       "c": [{"exists": false}]})
            }),
        ),
        (
            "deep paths",
            Box::new(|i| json!({format!("k{i}"): {"b": {"c": {"d": {"e": {"f": {"g": ["x"]}}}}}}})),
        ),
    ]
}

#[test]
fn weight_is_an_upper_bound_of_the_heap_held() {
    let _serial = serial();
    for (name, make) in hostile_cases() {
        // One rule into an empty index (every table is new), then many (tables grow).
        for n in [1u32, 40] {
            let mut idx = RuleIndex::new();
            let (net, weight) = held(&mut idx, n, &*make);
            println!("{name} x{n}: held {net} bytes, weight {weight}");
            assert!(
                net <= weight as i64,
                "{name} x{n}: the rules hold {net} bytes, more than their weight {weight}"
            );
            // Honest, not wildly pessimistic: within 6x (glibc chunk overhead and
            // half-empty tables are part of the weight, not of the count).
            assert!(
                weight as i64 <= 6 * net.max(1) + 4096,
                "{name} x{n}: weight {weight} is far above the {net} bytes held"
            );
            drop(idx);
        }
    }
}

#[test]
fn removing_every_rule_gives_the_memory_back() {
    let _serial = serial();
    let mut idx = RuleIndex::new();
    // A first round initialises what lives for the whole process (hasher keys, thread
    // locals); the measured round must give back everything it takes.
    for (_, make) in hostile_cases() {
        idx.insert(0, &pattern(&make(0)));
        idx.remove(0);
    }
    let region = Region::new(GLOBAL);
    for (name, make) in hostile_cases() {
        for i in 0..20u32 {
            let p = pattern(&make(i));
            idx.insert(i, &p);
        }
        for i in 0..20u32 {
            assert!(idx.remove(i), "{name}");
        }
        assert!(idx.is_empty());
    }
    let change = region.change();
    // Reallocations are already counted in both totals.
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    // The empty index is a fresh one: a few hundred bytes at most.
    assert!(net < 4096, "{net} bytes still held by an empty index");
}

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/patterns.json");
    let text = std::fs::read_to_string(path).expect("read vectors");
    let all: Vec<Value> = serde_json::from_str(&text).expect("vectors are JSON");
    all.into_iter()
        .filter_map(|c| c.get("pattern").cloned())
        .collect()
}

/// Every ```json block and every inline `{...}` span of `docs/patterns.md` that is JSON.
fn doc_patterns() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/patterns.md");
    let text = std::fs::read_to_string(path).expect("read docs/patterns.md");
    let mut out = Vec::new();
    for (i, block) in text.split("```").enumerate() {
        if i % 2 == 1 {
            if let Some(body) = block.strip_prefix("json") {
                if let Ok(v) = serde_json::from_str::<Value>(body) {
                    out.push(v);
                }
            }
        } else {
            for (j, span) in block.split('`').enumerate() {
                if j % 2 == 1 && span.starts_with('{') {
                    if let Ok(v) = serde_json::from_str::<Value>(span) {
                        out.push(v);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn defaults_admit_every_documented_pattern() {
    let _serial = serial();
    let budget = RuleBudget::default();
    let mut checked = 0;
    let mut worst = RuleCost::default();
    for v in vectors().into_iter().chain(doc_patterns()) {
        let p = match &v {
            Value::String(text) => Pattern::parse(text, &PatternLimits::default()),
            other => Pattern::from_value(other, &PatternLimits::default()),
        };
        let Ok(p) = p else { continue };
        let c = p.cost();
        worst.cost = worst.cost.max(c.cost);
        worst.bytes = worst.bytes.max(c.bytes);
        assert_eq!(
            budget.admit(RuleCost::default(), c),
            Ok(()),
            "{v} ({c}) is refused by the default budgets"
        );
        checked += 1;
    }
    println!(
        "{checked} patterns, worst cost {}, worst weight {} bytes",
        worst.cost, worst.bytes
    );
    assert!(checked >= 300, "only {checked} patterns checked");
}
