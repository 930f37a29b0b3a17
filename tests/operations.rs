//! What an operator relies on, over real HTTP and WebSockets: every metric and label value
//! that `docs/operations.md` documents exists on a fresh server (and nothing counted is
//! left undocumented), each limit refusal is counted under its key, and SIGTERM-style
//! shutdown drains (`/readyz` 503, new WebSockets refused with 503) before it closes
//! sessions with 1001.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use common::*;

/// One row of the metrics table: type, label name and the label values named in backticks.
#[derive(Debug)]
struct Documented {
    kind: String,
    label: Option<String>,
    values: Vec<String>,
}

/// The `## Metrics` table of `docs/operations.md`.
fn documented_metrics() -> BTreeMap<String, Documented> {
    let text = include_str!("../docs/operations.md");
    let section = text
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a ## Metrics section");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| {
                !word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .map(str::to_owned)
            .collect()
    };
    let mut metrics = BTreeMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        assert!(cells.len() >= 4, "a metrics row with four cells: {line}");
        let name = ticked(cells[0]).pop().expect("a metric name");
        let label = ticked(cells[2]).pop();
        let values = if label.is_some() {
            ticked(&cells[3..].join("|"))
        } else {
            Vec::new()
        };
        metrics.insert(
            name,
            Documented {
                kind: cells[1].trim().to_owned(),
                label,
                values,
            },
        );
    }
    assert!(metrics.len() > 20, "parsed {metrics:?}");
    metrics
}

/// The value of one exact series (`name{label="value"}`, or a bare name).
fn series(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn labelled(name: &str, label: &str, value: &str) -> String {
    format!("{name}{{{label}=\"{value}\"}}")
}

#[tokio::test]
async fn a_fresh_server_lists_every_documented_series() {
    let text = format!(
        "dev = true\nstack_id = \"{STACK_ID}\"\n[[sources]]\nkind = \"redis_streams\"\nname = \"ops-metrics\"\nurl = \"redis://127.0.0.1:1/\"\nstreams = [\"s\"]\ngroup = \"g\"\nconsumer = \"c\"\n"
    );
    let config = eventgate::config::load(Some(&text), Vec::new(), Vec::new()).expect("config");
    let server = Server::start(config).await;
    let metrics = server.metrics().await;
    let documented = documented_metrics();
    let mut missing = Vec::new();
    for (name, doc) in &documented {
        let kind = format!("# TYPE {name} {}", doc.kind);
        if !metrics.contains(&kind) {
            missing.push(kind);
        }
        let wanted: Vec<String> = match &doc.label {
            None => vec![name.clone()],
            Some(label) if label == "source" => vec![labelled(name, label, "ops-metrics")],
            Some(label) => {
                assert!(
                    !doc.values.is_empty(),
                    "{name}: no {label} values documented"
                );
                doc.values
                    .iter()
                    .map(|value| labelled(name, label, value))
                    .collect()
            }
        };
        missing.extend(
            wanted
                .into_iter()
                .filter(|wanted| series(&metrics, wanted).is_none()),
        );
    }
    assert!(
        missing.is_empty(),
        "documented but not on /metrics: {missing:#?}\n{metrics}"
    );
    // And the other way: everything the server registers is documented, value by value.
    for registered in eventgate::telemetry::SERIES {
        let doc = documented
            .get(registered.name)
            .unwrap_or_else(|| panic!("{} is not documented", registered.name));
        if let Some((label, values)) = registered.label {
            assert_eq!(doc.label.as_deref(), Some(label), "{}", registered.name);
            for value in values {
                assert!(
                    doc.values.iter().any(|documented| documented == value),
                    "{}{{{label}=\"{value}\"}} is not documented",
                    registered.name
                );
            }
        }
    }
    server.shutdown().await.expect("clean shutdown");
}

/// Reads `/metrics` and returns the value of each series (0 when absent).
async fn values(server: &Server, wanted: &[String]) -> Vec<f64> {
    let metrics = server.metrics().await;
    wanted
        .iter()
        .map(|wanted| series(&metrics, wanted).unwrap_or(0.0))
        .collect()
}

#[tokio::test]
async fn each_limit_refusal_increments_its_label() {
    let mut config = dev_config();
    config.limits.max_body_bytes = 2000;
    config.limits.max_event_bytes = 300;
    config.limits.max_entries = 2;
    config.limits.max_pattern_bytes = 100;
    let server = Server::start(config).await;
    let limit = |key: &str| labelled("eventgate_limit_rejections_total", "limit", key);
    let code = |code: &str| labelled("eventgate_ingest_errors_total", "code", code);
    let wanted = vec![
        limit("max_body_bytes"),
        limit("max_entries"),
        limit("max_event_bytes"),
        limit("max_pattern_bytes"),
        code("too_large"),
        code("bad_request"),
        code("entry_too_large"),
        labelled("eventgate_action_errors_total", "kind", "pattern_too_large"),
    ];
    let before = values(&server, &wanted).await;

    let event =
        |detail: &str| json!({"source": "ops", "detail-type": "t", "detail": {"d": detail}});
    let (status, _) = server
        .post_events(
            "application/json",
            json!([event(&"x".repeat(3000))]).to_string(),
        )
        .await;
    assert_eq!(status, 413, "max_body_bytes");
    let (status, body) = server
        .post_events(
            "application/json",
            json!([event("a"), event("b"), event("c")]).to_string(),
        )
        .await;
    assert_eq!(status, 400, "max_entries: {body}");
    let (status, body) = server
        .post_events(
            "application/json",
            json!([event("small"), event(&"x".repeat(400))]).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["FailedEntryCount"], 1, "max_event_bytes: {body}");
    assert_eq!(body["Entries"][1]["ErrorCode"], "EntryTooLarge", "{body}");
    let mut client = server.announced().await;
    let ack = client
        .subscribe_ack("big", &json!({"detail": {"d": ["y".repeat(150)]}}))
        .await;
    assert_error(&ack, Some("sub-big"), "pattern too large");

    let after = values(&server, &wanted).await;
    for ((name, before), after) in wanted.iter().zip(&before).zip(&after) {
        assert!(after > before, "{name} went from {before} to {after}");
    }
    client.close().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_drains_for_drain_period_then_closes_with_1001() {
    let config = Config {
        drain_period: Some(ms(3000)),
        ..dev_config()
    };
    let server = Server::start(config).await;
    let mut client = server.announced().await;
    client.subscribe("all", &json!({"source": ["ops"]})).await;
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 200);

    server.token.cancel();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, body) = loop {
        let (status, body) = server.get("/readyz").await;
        if status != 200 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["status"], "draining");
    // New WebSockets are refused with 503 and a JSON reason; the open session still gets
    // events until the drain period is over.
    let error = expect_refused(server.ws_url(), 503).await;
    assert!(error.contains("shutting down"), "{error}");
    server.publish_event("ops", "during-drain", json!({})).await;
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail-type"], "during-drain");

    let frame = client.expect_close().await;
    assert_eq!(
        frame.as_ref().map(|(code, _)| *code),
        Some(1001),
        "{frame:?}"
    );
    server
        .shutdown()
        .await
        .expect("run returns after the drain");
}

/// The README's second command (`scripts/test.sh`: `cargo test --release --workspace`) reuses
/// what the first (`cargo run --release`) built only while both builds ask for the same
/// features of every crate the gateway uses; otherwise cargo compiles those crates, and all
/// that depends on them, a second time. See the feature-unification note in Cargo.toml.
#[test]
fn the_test_build_asks_for_the_features_the_release_build_has() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |args: &[&str]| -> std::collections::BTreeSet<String> {
        let output = std::process::Command::new(&cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["tree", "--offline", "--prefix", "none", "-f", "{p} {f}"])
            .args(args)
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| line.trim_end_matches(" (*)").to_owned())
            .collect()
    };
    let gateway = tree(&["-p", "eventgate", "-e", "normal,build"]);
    let tests = tree(&["--workspace", "-e", "normal,build,dev"]);
    let differing: Vec<&String> = gateway.difference(&tests).collect();
    assert!(
        differing.is_empty(),
        "the test build turns on other features of these crates (add them to the gateway's \
         dependencies in Cargo.toml): {differing:#?}"
    );
}
