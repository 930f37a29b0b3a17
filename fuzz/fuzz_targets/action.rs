//! Fuzz target: one client text frame through `wire::decode_action`. It must never panic;
//! a usable request id is non-empty and within the limit, a rule name too; every error has
//! a message, and the Ack built from it is valid JSON carrying that message and id.
#![no_main]

use eventgate_protocol::wire::{ack_error, ack_ok, decode_action, ClientAction, DecodeLimits};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = DecodeLimits {
        max_request_id_bytes: 16,
        max_rule_name_bytes: 24,
    };
    let frame = decode_action(text, &limits);
    if let Some(id) = &frame.request_id {
        assert!(!id.is_empty() && id.len() <= limits.max_request_id_bytes);
    }
    let ack = match &frame.action {
        Ok(ClientAction::Subscribe { rule, .. } | ClientAction::Unsubscribe { rule }) => {
            assert!(!rule.is_empty() && rule.len() <= limits.max_rule_name_bytes);
            ack_ok(frame.request_id.as_deref())
        }
        Ok(ClientAction::Hello { position } | ClientAction::Resume { position }) => {
            assert!(position
                .as_ref()
                .is_none_or(|p| p.len() <= eventgate_protocol::wire::MAX_POSITION_BYTES));
            ack_ok(frame.request_id.as_deref())
        }
        Ok(ClientAction::Refresh { token }) => {
            assert!(!token.is_empty());
            ack_ok(frame.request_id.as_deref())
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
            let ack = ack_error(frame.request_id.as_deref(), &message);
            let value: Value = serde_json::from_str(&ack).expect("the Ack is JSON");
            assert_eq!(value["Message"].as_str(), Some(message.as_str()));
            ack
        }
    };
    let value: Value = serde_json::from_str(&ack).expect("the Ack is JSON");
    assert_eq!(value["Action"], "Ack");
    assert_eq!(value["RequestId"].as_str(), frame.request_id.as_deref());
});
