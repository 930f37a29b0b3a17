//! Runs every case of `vectors/patterns.json` (the language-neutral contract) through the
//! reference evaluator and through `RuleIndex`, alone and with all valid rules together.
//! An `event` that is a JSON string is raw event text (duplicate keys, escapes or numbers a
//! parsed value cannot carry), parsed the way the server parses it; such a case may have
//! `event_error` (a substring of the parse error) instead of `match`.

use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleIndex};
use serde_json::Value;

struct Case {
    name: String,
    pattern: Value,
    event: Option<Value>,
    /// The raw event text when the vector gives the event as a string.
    event_text: Option<String>,
    expect_match: Option<bool>,
    error: Option<String>,
    event_error: Option<String>,
}

fn load() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/patterns.json");
    let text = std::fs::read_to_string(path).expect("read vectors");
    let all: Vec<Value> = serde_json::from_str(&text).expect("vectors are JSON");
    all.into_iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            let event_error = c
                .get("event_error")
                .and_then(Value::as_str)
                .map(String::from);
            let (event, event_text) = match c.get("event") {
                Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                    Ok(v) => (Some(v), Some(text.clone())),
                    Err(e) => {
                        let want = event_error.as_deref().unwrap_or_else(|| {
                            panic!("{name}: event text is not JSON ({e}) and no event_error")
                        });
                        assert!(
                            e.to_string().contains(want),
                            "{name}: event error {e} lacks {want:?}"
                        );
                        (None, Some(text.clone()))
                    }
                },
                other => (other.cloned(), None),
            };
            if event_error.is_some() {
                assert!(event.is_none(), "{name}: event_error but the event parses");
            }
            Case {
                name,
                pattern: c["pattern"].clone(),
                event,
                event_text,
                expect_match: c.get("match").and_then(Value::as_bool),
                error: c.get("error").and_then(Value::as_str).map(String::from),
                event_error,
            }
        })
        .collect()
}

/// Parses the way the server does: a string is raw pattern text, anything else is
/// serialised and parsed as text; objects are also checked through `from_value`.
fn parse(c: &Case) -> Result<Pattern, String> {
    let limits = PatternLimits::default();
    match &c.pattern {
        Value::String(text) => Pattern::parse(text, &limits).map_err(|e| e.to_string()),
        v => {
            let a = Pattern::parse(&v.to_string(), &limits).map_err(|e| e.to_string());
            let b = Pattern::from_value(v, &limits).map_err(|e| e.to_string());
            assert_eq!(
                a.is_ok(),
                b.is_ok(),
                "{}: parse and from_value disagree: {:?} vs {:?}",
                c.name,
                a.as_ref().err(),
                b.as_ref().err()
            );
            a
        }
    }
}

#[test]
fn vectors() {
    let cases = load();
    assert!(cases.len() >= 300, "only {} vectors", cases.len());
    let mut failures = Vec::new();
    let mut valid: Vec<(usize, Pattern)> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        match (parse(c), &c.error) {
            (Err(msg), Some(want)) => {
                if !msg.contains(want.as_str()) {
                    failures.push(format!("{}: error {msg:?} lacks {want:?}", c.name));
                }
            }
            (Err(msg), None) => failures.push(format!("{}: unexpected error {msg}", c.name)),
            (Ok(_), Some(want)) => {
                failures.push(format!("{}: accepted, wanted error {want:?}", c.name))
            }
            (Ok(p), None) if c.event_error.is_some() => {
                // The event is refused; so is its text by `matches_json`.
                let text = c.event_text.as_deref().expect("event text");
                let mut idx = RuleIndex::new();
                idx.insert(7u32, &p);
                if idx.matches_json(text, &mut Vec::new()).is_ok() {
                    failures.push(format!("{}: matches_json accepted the event", c.name));
                }
                valid.push((i, p));
            }
            (Ok(p), None) => {
                let event = c.event.as_ref().expect("event");
                let want = c.expect_match.expect("match");
                let got = p.matches(event);
                if got != want {
                    failures.push(format!("{}: oracle says {got}, want {want}", c.name));
                }
                let mut idx = RuleIndex::new();
                idx.insert(7u32, &p);
                let mut out = Vec::new();
                idx.matches(event, &mut out);
                if out != if want { vec![7] } else { vec![] } {
                    failures.push(format!("{}: index gives {out:?}, want {want}", c.name));
                }
                valid.push((i, p));
            }
        }
    }
    // All valid rules in one index: each event's match set equals the oracle's.
    let mut idx = RuleIndex::new();
    for (i, p) in &valid {
        idx.insert(*i, p);
    }
    for c in cases.iter().filter(|c| c.event.is_some()) {
        let event = c.event.as_ref().expect("event");
        let mut want: Vec<usize> = valid
            .iter()
            .filter(|(_, p)| p.matches(event))
            .map(|(i, _)| *i)
            .collect();
        let mut got = Vec::new();
        idx.matches(event, &mut got);
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            failures.push(format!(
                "{}: shared index {got:?} vs oracle {want:?}",
                c.name
            ));
        }
        let mut got_json = Vec::new();
        let text = c.event_text.clone().unwrap_or_else(|| event.to_string());
        idx.matches_json(&text, &mut got_json).expect("event text");
        got_json.sort_unstable();
        if got_json != want {
            failures.push(format!(
                "{}: matches_json {got_json:?} vs oracle {want:?}",
                c.name
            ));
        }
    }
    // Remove every other rule and check again.
    for (i, _) in valid.iter().step_by(2) {
        assert!(idx.remove(*i));
    }
    for c in cases.iter().filter(|c| c.event.is_some()) {
        let event = c.event.as_ref().expect("event");
        let mut want: Vec<usize> = valid
            .iter()
            .skip(1)
            .step_by(2)
            .filter(|(_, p)| p.matches(event))
            .map(|(i, _)| *i)
            .collect();
        let mut got = Vec::new();
        idx.matches(event, &mut got);
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            failures.push(format!(
                "{}: after removals {got:?} vs oracle {want:?}",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
