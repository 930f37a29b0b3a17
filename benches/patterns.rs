//! EventBridge pattern matching benchmarks: parse; match throughput of `RuleIndex` at
//! 1k / 10k / 100k mixed rules against ~1 KB EventBridge-shaped events (JSON parsing
//! included); insert / remove rate; a naive loop over every rule with the reference
//! evaluator; the same rules in the `quamina` crate (rules it supports); memory per rule.
//!
//! Run: `cargo bench --bench patterns` (add `-- match/` etc. to filter).

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleIndex};

// Counts live heap bytes, only to report bytes per rule (stats_alloc wraps the system
// allocator; this crate itself stays free of `unsafe`).
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live_bytes() -> isize {
    let stats = ALLOC.stats();
    (stats.bytes_allocated as isize - stats.bytes_deallocated as isize) + (stats.bytes_reallocated)
}

#[path = "../protocol/examples/workload/mod.rs"]
mod workload;
use workload::{event, rule, Rng};

fn patterns(n: usize) -> Vec<Pattern> {
    let limits = PatternLimits::default();
    (0..n)
        .map(|i| Pattern::parse(&rule(i), &limits).expect("bench rule parses"))
        .collect()
}

fn events(n_rules: usize) -> Vec<String> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    (0..512).map(|_| event(&mut rng, n_rules)).collect()
}

fn build(pats: &[Pattern]) -> RuleIndex<u32> {
    let mut idx = RuleIndex::new();
    for (i, p) in pats.iter().enumerate() {
        idx.insert(i as u32, p);
    }
    idx
}

fn quick(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("patterns");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g
}

/// Adds rules `0..n` to quamina, skipping the ones it rejects (`$or`); quamina 0.7
/// panics on some large rule sets ("per-state field_transitions.len() fits in u8"), so
/// adding stops at the first panic and only the rules added so far are compared.
fn quamina_build(n: usize, pats: &[Pattern]) -> (quamina::Quamina<u32>, Vec<Pattern>) {
    quamina_build_filtered(n, pats, |_| true)
}

/// Does quamina match every event without panicking?
fn quamina_probe(q: &quamina::Quamina<u32>, evs: &[String]) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for e in evs {
            let _ = q.matches_for_event(e.as_bytes());
        }
    }))
    .is_ok();
    std::panic::set_hook(hook);
    ok
}

fn quamina_build_filtered(
    n: usize,
    pats: &[Pattern],
    keep: impl Fn(usize) -> bool,
) -> (quamina::Quamina<u32>, Vec<Pattern>) {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut q = quamina::Quamina::<u32>::new();
    let mut subset = Vec::new();
    let mut ids = Vec::new();
    for (i, p) in pats.iter().enumerate().take(n) {
        if !keep(i) {
            continue;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            q.add_pattern(i as u32, &rule(i)).is_ok()
        }));
        match r {
            Ok(true) => {
                subset.push(p.clone());
                ids.push(i);
            }
            Ok(false) => {}
            Err(_) => {
                eprintln!(
                    "[patterns] quamina panicked adding rule {i}; comparing the first {} rules",
                    subset.len()
                );
                q = quamina::Quamina::<u32>::new();
                for &j in &ids {
                    let _ = q.add_pattern(j as u32, &rule(j));
                }
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    (q, subset)
}

fn bench_parse(c: &mut Criterion) {
    let text = r#"{"source":["aws.cloudwatch"],"$or":[{"metricName":["CPUUtilization","ReadLatency"]},{"namespace":[{"prefix":"AWS/"}]}],"detail":{"state":[{"anything-but":"initializing"}],"c-count":[{"numeric":[">",0,"<=",5]}],"source-ip":[{"cidr":"10.0.0.0/8"}],"name":[{"wildcard":"web-*-prod"}]}}"#;
    let limits = PatternLimits::default();
    let mut g = quick(c);
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| Pattern::parse(black_box(text), &limits))
    });
    g.finish();
}

/// Rule shapes (`i % 10`) compared with quamina when it panics on all of them, largest
/// set first.
const FALLBACK_SHAPES: [&[usize]; 4] = [&[0, 3, 7, 9], &[0, 3, 9], &[0, 3], &[0]];

fn bench_match(c: &mut Criterion) {
    let mut g = quick(c);
    g.throughput(Throughput::Elements(1));
    // The first of FALLBACK_SHAPES still worth trying (None: all rules).
    let mut fallback: Option<usize> = None;
    for &n in &[1_000usize, 10_000, 100_000] {
        let pats = patterns(n);
        let idx = build(&pats);
        let evs = events(n);
        // Sanity: the index agrees with the oracle on these events; report selectivity.
        let mut total = 0usize;
        for e in evs.iter().take(64) {
            let v: serde_json::Value = serde_json::from_str(e).expect("event");
            let mut out = Vec::new();
            idx.matches(&v, &mut out);
            out.sort_unstable();
            let want: Vec<u32> = if n <= 10_000 {
                pats.iter()
                    .enumerate()
                    .filter(|(_, p)| p.matches(&v))
                    .map(|(i, _)| i as u32)
                    .collect()
            } else {
                out.clone()
            };
            assert_eq!(out, want);
            total += out.len();
        }
        eprintln!(
            "[patterns] {n} rules: {:.1} matching rules per event",
            total as f64 / 64.0
        );
        let mut i = 0usize;
        let mut out = Vec::with_capacity(64);
        g.bench_with_input(BenchmarkId::new("match/eventgate", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % evs.len();
                let v: serde_json::Value = serde_json::from_str(&evs[i]).expect("event");
                out.clear();
                idx.matches(&v, &mut out);
                black_box(out.len())
            })
        });
        g.bench_with_input(
            BenchmarkId::new("match/eventgate-matches_json", n),
            &n,
            |b, _| {
                b.iter(|| {
                    i = (i + 1) % evs.len();
                    out.clear();
                    idx.matches_json(&evs[i], &mut out).expect("event");
                    black_box(out.len())
                })
            },
        );
        if n == 1_000 {
            g.bench_function("event-json-parse-only", |b| {
                b.iter(|| {
                    i = (i + 1) % evs.len();
                    let v: serde_json::Value = serde_json::from_str(&evs[i]).expect("event");
                    black_box(v.is_object())
                })
            });
        }
        if n <= 10_000 {
            g.bench_with_input(BenchmarkId::new("match/naive", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % evs.len();
                    let v: serde_json::Value = serde_json::from_str(&evs[i]).expect("event");
                    black_box(pats.iter().filter(|p| p.matches(&v)).count())
                })
            });
        }
        // quamina, on the rules it supports (no `$or`), and eventgate on the same subset.
        // quamina 0.7 panics on some rule sets; fall back to fewer rule shapes. Shapes
        // that panicked with fewer rules are not tried again with more (building 100k
        // rules in quamina takes minutes).
        let (mut q, mut subset) = match fallback {
            None => quamina_build(n, &pats),
            Some(_) => (quamina::Quamina::<u32>::new(), Vec::new()),
        };
        let mut ok = fallback.is_none() && quamina_probe(&q, &evs);
        for (at, shapes) in FALLBACK_SHAPES
            .iter()
            .enumerate()
            .skip(fallback.unwrap_or(0))
        {
            if ok {
                break;
            }
            eprintln!("[patterns] quamina with {n} rules: trying shapes {shapes:?} only");
            (q, subset) = quamina_build_filtered(n, &pats, |i| shapes.contains(&(i % 10)));
            ok = quamina_probe(&q, &evs);
            fallback = Some(at);
        }
        if !ok {
            eprintln!("[patterns] quamina panics at {n} rules; skipped");
            continue;
        }
        eprintln!("[patterns] quamina accepted {} of {n} rules", subset.len());
        let sidx = build(&subset);
        g.bench_with_input(BenchmarkId::new("match/quamina", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % evs.len();
                black_box(
                    q.matches_for_event(evs[i].as_bytes())
                        .map(|v| v.len())
                        .unwrap_or(0),
                )
            })
        });
        g.bench_with_input(
            BenchmarkId::new("match/eventgate-quamina-subset", n),
            &n,
            |b, _| {
                b.iter(|| {
                    i = (i + 1) % evs.len();
                    out.clear();
                    sidx.matches_json(&evs[i], &mut out).expect("event");
                    black_box(out.len())
                })
            },
        );
    }
    g.finish();
}

fn bench_insert_remove(c: &mut Criterion) {
    let pats = patterns(100_000);
    let mut g = quick(c);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("insert 10k into 90k", |b| {
        b.iter_batched(
            || build(&pats[..90_000]),
            |mut idx| {
                for (i, p) in pats[90_000..].iter().enumerate() {
                    idx.insert((90_000 + i) as u32, p);
                }
                idx
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("remove 10k of 100k", |b| {
        b.iter_batched(
            || build(&pats),
            |mut idx| {
                for i in (0..100_000u32).step_by(10) {
                    idx.remove(i);
                }
                idx
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();

    // Plain wall-clock figures and memory per rule.
    let t = Instant::now();
    let before = live_bytes();
    let idx = build(&pats);
    let dt = t.elapsed();
    let after = live_bytes();
    eprintln!(
        "[patterns] built 100k rules in {:?} ({:.0} inserts/s); index holds {:.0} bytes/rule beyond the parsed patterns",
        dt,
        100_000.0 / dt.as_secs_f64(),
        (after - before) as f64 / 100_000.0
    );
    drop(idx);
    let base = live_bytes();
    let idx = {
        let pats = patterns(100_000);
        build(&pats)
    };
    eprintln!(
        "[patterns] index with its own patterns: {:.0} bytes/rule",
        (live_bytes() - base) as f64 / 100_000.0
    );
    let base = live_bytes();
    let (q, _) = quamina_build(100_000, &pats);
    eprintln!(
        "[patterns] quamina: {:.0} bytes/rule ({} rules)",
        (live_bytes() - base) as f64 / q.pattern_count().max(1) as f64,
        q.pattern_count()
    );
    black_box((idx.len(), q.pattern_count()));
}

criterion_group! {
    name = benches;
    // No plots: criterion draws them with gnuplot when it is installed (bench/compare.sh
    // installs it), and those processes would run beside the next measurement.
    config = Criterion::default().without_plots();
    targets = bench_parse, bench_match, bench_insert_remove
}
criterion_main!(benches);
