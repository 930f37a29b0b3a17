//! Runs the shared frame-decoding vectors in `protocol/vectors/actions.json`.

use eventgate_protocol::wire::{decode_action, ClientAction, DecodeLimits};
use serde_json::Value;

#[test]
fn action_vectors() {
    let text = include_str!("../vectors/actions.json");
    let cases: Vec<Value> = serde_json::from_str(text).expect("vector file is JSON");
    assert!(cases.len() >= 20);
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        let frame = case["frame"].as_str().expect("frame");
        let decoded = decode_action(frame, &DecodeLimits::default());
        assert_eq!(
            decoded.request_id.as_deref(),
            case["request_id"].as_str(),
            "{name}: request id"
        );
        match (&decoded.action, case.get("error").and_then(Value::as_str)) {
            (Err(error), Some(expected)) => {
                assert!(error.to_string().starts_with(expected), "{name}: {error}")
            }
            (Ok(action), None) => {
                let (kind, rule) = match action {
                    ClientAction::Hello { .. } => ("Hello", None),
                    ClientAction::Resume { .. } => ("Resume", None),
                    ClientAction::Subscribe { rule, .. } => ("Subscribe", Some(rule.as_str())),
                    ClientAction::Unsubscribe { rule } => ("Unsubscribe", Some(rule.as_str())),
                    ClientAction::Refresh { .. } => ("Refresh", None),
                };
                assert_eq!(Some(kind), case["action"].as_str(), "{name}");
                assert_eq!(rule, case["rule"].as_str(), "{name}");
            }
            (other, expected) => panic!("{name}: got {other:?}, expected error {expected:?}"),
        }
    }
}
