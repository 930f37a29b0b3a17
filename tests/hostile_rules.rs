//! Hostile rules over real WebSockets against the real server: patterns over the
//! per-connection cost and memory budgets are refused with an Ack naming the budget and
//! the excess; connections at their full budgets stay within the documented memory,
//! a healthy client beside them loses nothing, and when they leave, their rules and their
//! memory go with them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleBudget};
use serde_json::{json, Value};

/// The gateway binary's allocator (see `eventgate::memory`), so the test sees the memory
/// behaviour of production: the live heap tells what the gateway holds, RSS what the
/// allocator keeps.
#[global_allocator]
static GLOBAL: eventgate::memory::Allocator = eventgate::memory::Allocator;

fn heap_bytes() -> i64 {
    eventgate::memory::heap_in_use().map_or(0, |n| n as i64)
}

/// The tests read process-wide numbers (RSS, the `eventgate_rules` gauge): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cost(pattern: &Value) -> eventgate_protocol::pattern::RuleCost {
    match Pattern::from_value(pattern, &PatternLimits::default()) {
        Ok(p) => p.cost(),
        Err(e) => panic!("{pattern}: {e}"),
    }
}

/// `anything-but` 256 wildcards, each with one middle segment (the attack).
fn ab_wildcards(tag: &str) -> Value {
    let list: Vec<String> = (0..256).map(|j| format!("*{tag}x{j}*")).collect();
    json!({"source": [{"anything-but": {"wildcard": list}}]})
}

/// `anything-but` 256 strings: cheap to match, heavy in memory.
fn ab_strings(tag: &str) -> Value {
    let list: Vec<String> = (0..256).map(|j| format!("{tag}-{j:04}")).collect();
    json!({"detail": {"state": [{"anything-but": list}]}})
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn rules_gauge(server: &Server) -> f64 {
    metric(&server.metrics().await, "eventgate_rules").unwrap_or(0.0)
}

#[tokio::test]
async fn over_budget_subscribes_get_an_ack_naming_the_budget() {
    let _serial = SERIAL.lock().await;
    let server = Server::dev().await;
    let budget = RuleBudget::default();

    // One rule over max_rule_cost: 256 wildcards with three middle segments.
    let list: Vec<String> = (0..256).map(|j| format!("*q{j}*r*s*")).collect();
    let heavy = json!({"source": [{"anything-but": {"wildcard": list}}]});
    let c = cost(&heavy).cost;
    assert!(c > budget.max_rule_cost);
    let mut client = server.announced().await;
    let ack = client.subscribe_ack("heavy", &heavy).await;
    let message = assert_error(&ack, Some("sub-heavy"), "pattern too complex: ");
    assert_eq!(
        message,
        format!(
            "pattern too complex: its matching cost is {c}, over the max_rule_cost budget of {} by {}",
            budget.max_rule_cost,
            c - budget.max_rule_cost
        )
    );

    // Two rules within max_rule_cost but over max_connection_cost together.
    let first = ab_wildcards("a");
    let second = ab_wildcards("b");
    let (c1, c2) = (cost(&first).cost, cost(&second).cost);
    assert!(c1 + c2 > budget.max_connection_cost);
    client.subscribe("first", &first).await;
    let ack = client.subscribe_ack("second", &second).await;
    let message = assert_error(&ack, Some("sub-second"), "pattern too complex: ");
    assert!(
        message.contains("max_connection_cost budget of 1000")
            && message.ends_with(&format!("by {}", c1 + c2 - budget.max_connection_cost)),
        "{message}"
    );
    // Replacing a rule counts only its new pattern; removing one gives its budget back.
    client.subscribe("first", &second).await;
    client.unsubscribe("first").await;
    client.subscribe("second", &second).await;

    // Memory: heavy-in-memory, cheap-to-match rules until max_connection_rule_bytes.
    let mut client = server.announced().await;
    let mut held = 0u64;
    let mut refused = None;
    for i in 0..20 {
        let pattern = ab_strings(&format!("m{i}"));
        let ack = client.subscribe_ack(&format!("m{i}"), &pattern).await;
        if ack["Status"] == "Ok" {
            held += cost(&pattern).bytes;
            continue;
        }
        refused = Some((ack, held + cost(&pattern).bytes, i));
        break;
    }
    let (ack, total, i) = refused.expect("the memory budget refuses a rule");
    let message = assert_error(&ack, Some(&format!("sub-m{i}")), "pattern too complex: ");
    assert_eq!(
        message,
        format!(
            "pattern too complex: it would bring this connection's rules to {total} bytes, over the max_connection_rule_bytes budget of {} by {}",
            budget.max_connection_rule_bytes,
            total - budget.max_connection_rule_bytes
        )
    );

    let metrics = server.metrics().await;
    for budget in [
        "max_rule_cost",
        "max_connection_cost",
        "max_connection_rule_bytes",
    ] {
        let name = format!("eventgate_pattern_budget_rejections_total{{budget=\"{budget}\"}}");
        assert!(
            metric(&metrics, &name).is_some_and(|n| n >= 1.0),
            "{name} missing in {metrics}"
        );
    }
}

#[tokio::test]
async fn budgets_are_configurable() {
    let _serial = SERIAL.lock().await;
    let mut config = dev_config();
    config.limits.max_rule_cost = 10;
    config.limits.max_connection_cost = 12;
    let server = Server::start(config).await;
    let mut client = server.announced().await;
    let five = json!({"source": ["a", "b", "c"]});
    assert_eq!(cost(&five).cost, 5);
    client.subscribe("one", &five).await;
    client.subscribe("two", &five).await;
    let ack = client.subscribe_ack("three", &five).await;
    let message = assert_error(&ack, Some("sub-three"), "pattern too complex: ");
    assert!(
        message.ends_with("over the max_connection_cost budget of 12 by 3"),
        "{message}"
    );
    let eleven = json!({"source": [{"wildcard": "a*b*c*d*e"}]});
    let ack = client.subscribe_ack("four", &eleven).await;
    assert_error(
        &ack,
        Some("sub-four"),
        "pattern too complex: its matching cost is",
    );
}

/// Fills one connection to its budgets: one wildcard attack rule, then memory-heavy rules
/// until refused. Returns the number of rules held.
async fn fill(client: &mut Client, conn: usize) -> usize {
    client
        .subscribe("wild", &ab_wildcards(&format!("c{conn}")))
        .await;
    for i in 0..20 {
        let ack = client
            .subscribe_ack(&format!("m{i}"), &ab_strings(&format!("c{conn}m{i}")))
            .await;
        if ack["Status"] != "Ok" {
            assert_error(&ack, Some(&format!("sub-m{i}")), "pattern too complex: ");
            // The wildcard rule and `i` memory-heavy ones.
            return 1 + i;
        }
    }
    panic!("connection {conn} was never refused");
}

#[tokio::test]
async fn hostile_connections_at_full_budget_stay_within_it_and_leave_nothing() {
    let _serial = SERIAL.lock().await;
    assert!(eventgate::memory::start_background_purging());
    let server = Server::dev().await;
    let budget = RuleBudget::default();

    let mut healthy = server.announced().await;
    healthy
        .subscribe("mine", &json!({"source": ["healthy"]}))
        .await;
    let rules_before = rules_gauge(&server).await;

    // Let the runtime and the allocator settle, then take the baseline.
    let long = "x".repeat(16 * 1024);
    server
        .publish_event("healthy", "warm-up", json!({"state": long.clone()}))
        .await;
    healthy.next_event().await;
    let baseline = rss_bytes();
    let heap_baseline = heap_bytes();

    let mut hostile = Vec::new();
    let mut held = 0;
    for conn in 0..30 {
        let mut client = server.announced().await;
        held += fill(&mut client, conn).await;
        hostile.push(client);
    }
    assert_eq!(rules_gauge(&server).await, rules_before + held as f64);
    let loaded = rss_bytes();
    let growth = loaded.saturating_sub(baseline);
    let heap_loaded = heap_bytes();
    println!(
        "30 hostile connections, {held} rules: RSS {} -> {} MiB ({} KiB per connection), heap {} -> {} KiB",
        baseline >> 20,
        loaded >> 20,
        growth / 30 / 1024,
        heap_baseline / 1024,
        heap_loaded / 1024,
    );
    // Within the documented budget per connection (the weight is an upper bound of the
    // heap), with room for the test's own clients and the allocator's slack.
    let allowed = 30 * budget.max_connection_rule_bytes + 16 * 1024 * 1024;
    assert!(
        growth <= allowed,
        "RSS grew by {growth} bytes, more than {allowed}"
    );

    // Events with long strings: the healthy client gets every one; the hostile rules match
    // them too (anything-but), and their clients drain what they get.
    for i in 0..20 {
        server
            .publish_event("healthy", &format!("n{i}"), json!({"state": long.clone()}))
            .await;
    }
    for i in 0..20 {
        let (_, event) = healthy.next_event().await;
        assert_eq!(event["detail-type"], format!("n{i}"));
    }
    for client in &mut hostile {
        let (message, _) = client.next_event().await;
        assert_eq!(message["Action"], "Event");
    }

    for client in hostile {
        client.close().await;
    }
    let deadline = Instant::now() + WAIT;
    while rules_gauge(&server).await != rules_before {
        assert!(
            Instant::now() < deadline,
            "rules left in the index: {}",
            rules_gauge(&server).await - rules_before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The healthy client still receives every event.
    for i in 0..5 {
        server
            .publish_event("healthy", &format!("after{i}"), json!({"state": "ok"}))
            .await;
        let (_, event) = healthy.next_event().await;
        assert_eq!(event["detail-type"], format!("after{i}"));
    }
    // What the gateway holds goes at once: the live heap is back near its baseline.
    let heap_after = heap_bytes();
    println!(
        "after they left: heap {} KiB (baseline {} KiB, peak {} KiB)",
        heap_after / 1024,
        heap_baseline / 1024,
        heap_loaded / 1024
    );
    assert!(
        heap_after - heap_baseline <= (heap_loaded - heap_baseline) / 10 + 2 * 1024 * 1024,
        "the live heap kept {} of the {} bytes the hostile connections took",
        heap_after - heap_baseline,
        heap_loaded - heap_baseline
    );
    // And the allocator gives the pages back to the system (jemalloc's decay: ~10 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = rss_bytes();
        let kept = after.saturating_sub(baseline);
        if kept <= growth / 4 + 4 * 1024 * 1024 {
            println!(
                "RSS {} MiB (baseline {} MiB, peak {} MiB)",
                after >> 20,
                baseline >> 20,
                loaded >> 20
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS still {kept} bytes above the baseline a minute after the hostile connections left (they took {growth})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
