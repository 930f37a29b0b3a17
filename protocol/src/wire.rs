//! The frames of the LambdaSharp `App.EventBus` WebSocket protocol.
//!
//! Owns decoding of client actions (`Hello`, `Subscribe`, `Unsubscribe`, and eventgate's
//! `Resume`) from text frames,
//! with a specific error for every malformed frame, and encoding of server notifications
//! (`Ack`, `Event`, `KeepAlive`). Does not own connection state (whether a client is
//! announced, how many rules it has): the gateway's session decides that.

use serde::Serialize;
use serde_json::{Map, Value};

/// LambdaSharp's Ack texts. They start every error message; the specific reason follows a colon.
pub mod ack_text {
    pub const UNRECOGNIZED_ACTION: &str = "unrecognized action";
    pub const INVALID_RULE_NAME: &str = "missing or invalid rule name";
    pub const UNANNOUNCED: &str = "client is unannounced";
    pub const ALREADY_ANNOUNCED: &str = "client is already announced";
    pub const INVALID_PATTERN: &str = "invalid pattern";
    pub const INVALID_REQUEST_ID: &str = "missing or invalid request id";
    pub const MALFORMED_FRAME: &str = "malformed frame";
    pub const TOO_MANY_RULES: &str = "too many rules";
    pub const PATTERN_TOO_LARGE: &str = "pattern too large";
    // eventgate's resume (history) errors.
    pub const INVALID_POSITION: &str = "invalid position";
    pub const POSITION_EXPIRED: &str = "position expired";
    pub const TOO_MANY_MISSED: &str = "too many missed events";
    pub const CANNOT_RESUME: &str = "cannot resume";
    /// eventgate's: a Refresh whose token was refused (the old token stays).
    pub const TOKEN_REFUSED: &str = "token refused";
}

/// Longest `Position` a client may send, in bytes (positions the server hands out are far
/// shorter).
pub const MAX_POSITION_BYTES: usize = 64;

/// Longest token a Refresh may carry, in bytes (the whole `header` document is bounded
/// alike).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where the pattern of a `Subscribe` came from. LambdaSharp clients send the pattern
/// double-encoded as a JSON string; eventgate also accepts a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub enum PatternSource {
    Text(String),
    Object(Value),
}

/// A well-formed client action.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAction {
    /// `position`: eventgate's extension: the client will resume (see `Resume`); live
    /// events are held back until it does. `Some("")` means "from this Hello on".
    Hello {
        position: Option<String>,
    },
    Subscribe {
        rule: String,
        pattern: PatternSource,
    },
    Unsubscribe {
        rule: String,
    },
    /// Replays the missed events after `position` (or after the one given in `Hello`).
    Resume {
        position: Option<String>,
    },
    /// eventgate's: replaces the connection's token before it expires.
    Refresh {
        token: String,
    },
}

/// Why a frame is not a well-formed action. `Display` is the Ack `Message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("malformed frame: not valid JSON ({0})")]
    NotJson(String),
    #[error("malformed frame: expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("missing or invalid request id: {0}")]
    InvalidRequestId(&'static str),
    #[error("unrecognized action: {0}")]
    UnrecognizedAction(String),
    #[error("missing or invalid rule name: {0}")]
    InvalidRuleName(String),
    #[error("invalid pattern: \"Pattern\" must be a string holding the pattern JSON (or a JSON object), got {0}")]
    PatternNotText(&'static str),
    #[error("invalid position: {0}")]
    InvalidPosition(String),
    #[error("token refused: {0}")]
    InvalidToken(&'static str),
}

/// Limits applied while decoding, before any state is touched.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_request_id_bytes: usize,
    pub max_rule_name_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_request_id_bytes: 128,
            max_rule_name_bytes: 256,
        }
    }
}

/// A decoded frame: the request id when one was usable (echoed in the Ack), and the action
/// or the reason it was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedFrame {
    pub request_id: Option<String>,
    pub action: Result<ClientAction, ActionError>,
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes one text frame. Never panics; every malformed frame yields a specific error.
pub fn decode_action(text: &str, limits: &DecodeLimits) -> DecodedFrame {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            return DecodedFrame {
                request_id: None,
                action: Err(ActionError::NotJson(err.to_string())),
            }
        }
    };
    let Value::Object(mut fields) = value else {
        return DecodedFrame {
            request_id: None,
            action: Err(ActionError::NotAnObject(json_kind(&value))),
        };
    };
    let request_id = match fields.remove("RequestId") {
        Some(Value::String(id)) if id.is_empty() => Err("\"RequestId\" is empty"),
        Some(Value::String(id)) if id.len() > limits.max_request_id_bytes => {
            Err("\"RequestId\" is too long")
        }
        Some(Value::String(id)) => Ok(id),
        Some(_) => Err("\"RequestId\" must be a string"),
        None => Err("\"RequestId\" is missing"),
    };
    let request_id = match request_id {
        Ok(id) => id,
        Err(reason) => {
            return DecodedFrame {
                request_id: None,
                action: Err(ActionError::InvalidRequestId(reason)),
            }
        }
    };
    let action = decode_fields(&mut fields, limits);
    DecodedFrame {
        request_id: Some(request_id),
        action,
    }
}

fn decode_fields(
    fields: &mut Map<String, Value>,
    limits: &DecodeLimits,
) -> Result<ClientAction, ActionError> {
    let name = match fields.get("Action") {
        Some(Value::String(name)) => name.as_str(),
        Some(other) => {
            return Err(ActionError::UnrecognizedAction(format!(
                "\"Action\" must be a string, got {}",
                json_kind(other)
            )))
        }
        None => {
            return Err(ActionError::UnrecognizedAction(
                "\"Action\" is missing".to_owned(),
            ))
        }
    };
    match name {
        "Hello" => Ok(ClientAction::Hello {
            position: position(fields)?,
        }),
        "Resume" => Ok(ClientAction::Resume {
            position: position(fields)?,
        }),
        "Subscribe" => {
            let rule = rule_name(fields, limits)?;
            let pattern = match fields.remove("Pattern") {
                Some(Value::String(text)) => PatternSource::Text(text),
                Some(Value::Object(object)) => PatternSource::Object(Value::Object(object)),
                Some(other) => return Err(ActionError::PatternNotText(json_kind(&other))),
                None => return Err(ActionError::PatternNotText("nothing (it is missing)")),
            };
            Ok(ClientAction::Subscribe { rule, pattern })
        }
        "Unsubscribe" => Ok(ClientAction::Unsubscribe {
            rule: rule_name(fields, limits)?,
        }),
        "Refresh" => match fields.remove("Token") {
            Some(Value::String(token)) if token.is_empty() => {
                Err(ActionError::InvalidToken("\"Token\" is empty"))
            }
            Some(Value::String(token)) if token.len() > MAX_TOKEN_BYTES => {
                Err(ActionError::InvalidToken("\"Token\" is too long"))
            }
            Some(Value::String(token)) => Ok(ClientAction::Refresh { token }),
            Some(_) => Err(ActionError::InvalidToken("\"Token\" must be a string")),
            None => Err(ActionError::InvalidToken("\"Token\" is missing")),
        },
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            Err(ActionError::UnrecognizedAction(format!(
                "{shown:?} is not one of Hello, Subscribe, Unsubscribe, Resume, Refresh"
            )))
        }
    }
}

/// The optional `Position` of `Hello` and `Resume`: a string of at most
/// [`MAX_POSITION_BYTES`] (its meaning is checked by the server's history).
fn position(fields: &mut Map<String, Value>) -> Result<Option<String>, ActionError> {
    match fields.remove("Position") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.len() > MAX_POSITION_BYTES => {
            Err(ActionError::InvalidPosition(format!(
                "\"Position\" is {} bytes, the limit is {MAX_POSITION_BYTES}",
                text.len()
            )))
        }
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(ActionError::InvalidPosition(format!(
            "\"Position\" must be a string, got {}",
            json_kind(&other)
        ))),
    }
}

fn rule_name(fields: &Map<String, Value>, limits: &DecodeLimits) -> Result<String, ActionError> {
    match fields.get("Rule") {
        Some(Value::String(rule)) if rule.is_empty() => {
            Err(ActionError::InvalidRuleName("\"Rule\" is empty".to_owned()))
        }
        Some(Value::String(rule)) if rule.len() > limits.max_rule_name_bytes => {
            Err(ActionError::InvalidRuleName(format!(
                "\"Rule\" is {} bytes, the limit is {}",
                rule.len(),
                limits.max_rule_name_bytes
            )))
        }
        Some(Value::String(rule)) => Ok(rule.clone()),
        Some(other) => Err(ActionError::InvalidRuleName(format!(
            "\"Rule\" must be a string, got {}",
            json_kind(other)
        ))),
        None => Err(ActionError::InvalidRuleName(
            "\"Rule\" is missing".to_owned(),
        )),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AckFrame<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    /// Resume Acks only: how many events follow the Ack as the replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<usize>,
    /// Resume Acks only: the position the connection is live from.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<&'a str>,
}

fn to_json(value: &impl Serialize) -> String {
    // Serialising these plain structs of strings cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// `{"Action":"Ack","RequestId":"..","Status":"Ok"}`.
pub fn ack_ok(request_id: Option<&str>) -> String {
    to_json(&AckFrame {
        action: "Ack",
        request_id,
        status: "Ok",
        message: None,
        replayed: None,
        position: None,
    })
}

/// `{"Action":"Ack","RequestId":"..","Status":"Error","Message":".."}`.
pub fn ack_error(request_id: Option<&str>, message: &str) -> String {
    to_json(&AckFrame {
        action: "Ack",
        request_id,
        status: "Error",
        message: Some(message),
        replayed: None,
        position: None,
    })
}

/// The Ack of a `Resume`: `{"Action":"Ack","RequestId":"..","Status":"Ok","Replayed":3,
/// "Position":".."}`, or an error with its message; `Position` (when the server keeps
/// history) is the newest event's when the connection went live, in both cases.
pub fn ack_resumed(
    request_id: Option<&str>,
    replayed: Result<usize, &str>,
    position: Option<&str>,
) -> String {
    to_json(&AckFrame {
        action: "Ack",
        request_id,
        status: if replayed.is_ok() { "Ok" } else { "Error" },
        message: replayed.err(),
        replayed: replayed.ok(),
        position,
    })
}

/// `{"Action":"KeepAlive","RequestId":".."}`.
pub fn keep_alive(request_id: &str) -> String {
    format!(
        "{{\"Action\":\"KeepAlive\",\"RequestId\":{}}}",
        to_json(&request_id)
    )
}

/// The part of an `Event` notification that is the same for every connection:
/// `,"Source":..,"Type":..,"Event":"<event JSON as a string>"}`. Built once per event.
pub fn event_tail(source: &str, detail_type: &str, event_json: &str) -> String {
    event_tail_at(None, source, detail_type, event_json)
}

/// [`event_tail`] with the event's position in the server's history first:
/// `,"Position":"..","Source":..`.
pub fn event_tail_at(
    position: Option<&str>,
    source: &str,
    detail_type: &str,
    event_json: &str,
) -> String {
    let mut tail = String::with_capacity(event_json.len() + event_json.len() / 8 + 96);
    if let Some(position) = position {
        tail.push_str(",\"Position\":");
        tail.push_str(&to_json(&position));
    }
    tail.push_str(",\"Source\":");
    tail.push_str(&to_json(&source));
    tail.push_str(",\"Type\":");
    tail.push_str(&to_json(&detail_type));
    tail.push_str(",\"Event\":");
    tail.push_str(&to_json(&event_json));
    tail.push('}');
    tail
}

/// A whole `Event` notification for one connection: the matched rules (already sorted by
/// the caller) and a fresh request id, followed by the shared tail from [`event_tail`].
pub fn event_frame<'a>(
    request_id: &str,
    rules: impl IntoIterator<Item = &'a str>,
    tail: &str,
) -> String {
    let mut frame = String::with_capacity(tail.len() + 96);
    frame.push_str("{\"Action\":\"Event\",\"RequestId\":");
    frame.push_str(&to_json(&request_id));
    frame.push_str(",\"Rules\":[");
    for (position, rule) in rules.into_iter().enumerate() {
        if position > 0 {
            frame.push(',');
        }
        frame.push_str(&to_json(&rule));
    }
    frame.push(']');
    frame.push_str(tail);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> DecodedFrame {
        decode_action(text, &DecodeLimits::default())
    }

    #[test]
    fn decodes_the_three_actions() {
        assert_eq!(
            decode(r#"{"Action":"Hello","RequestId":"r1"}"#),
            DecodedFrame {
                request_id: Some("r1".into()),
                action: Ok(ClientAction::Hello { position: None })
            }
        );
        let subscribe = decode(
            r#"{"Rule":"a","Pattern":"{\"source\":[\"x\"]}","Action":"Subscribe","RequestId":"r2"}"#,
        );
        assert_eq!(
            subscribe.action,
            Ok(ClientAction::Subscribe {
                rule: "a".into(),
                pattern: PatternSource::Text(r#"{"source":["x"]}"#.into())
            })
        );
        let unsubscribe = decode(r#"{"Action":"Unsubscribe","RequestId":"r3","Rule":"a"}"#);
        assert_eq!(
            unsubscribe.action,
            Ok(ClientAction::Unsubscribe { rule: "a".into() })
        );
    }

    #[test]
    fn every_malformed_frame_gets_a_specific_error() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("not json", None, "malformed frame: not valid JSON"),
            (
                "[1,2]",
                None,
                "malformed frame: expected a JSON object, got an array",
            ),
            (
                r#"{"Action":"Hello"}"#,
                None,
                "missing or invalid request id: \"RequestId\" is missing",
            ),
            (
                r#"{"Action":"Hello","RequestId":7}"#,
                None,
                "\"RequestId\" must be a string",
            ),
            (
                r#"{"RequestId":"x"}"#,
                Some("x"),
                "unrecognized action: \"Action\" is missing",
            ),
            (
                r#"{"action":"Hello","RequestId":"x"}"#,
                Some("x"),
                "unrecognized action",
            ),
            (
                r#"{"Action":"hello","RequestId":"x"}"#,
                Some("x"),
                "unrecognized action: \"hello\" is not one of",
            ),
            (
                r#"{"Action":"Subscribe","RequestId":"x","Pattern":"{}"}"#,
                Some("x"),
                "missing or invalid rule name: \"Rule\" is missing",
            ),
            (
                r#"{"Action":"Subscribe","RequestId":"x","Rule":"","Pattern":"{}"}"#,
                Some("x"),
                "missing or invalid rule name: \"Rule\" is empty",
            ),
            (
                r#"{"Action":"Unsubscribe","RequestId":"x","Rule":5}"#,
                Some("x"),
                "\"Rule\" must be a string, got a number",
            ),
            (
                r#"{"Action":"Subscribe","RequestId":"x","Rule":"a","Pattern":5}"#,
                Some("x"),
                "invalid pattern: \"Pattern\" must be a string",
            ),
            (
                r#"{"Action":"Subscribe","RequestId":"x","Rule":"a"}"#,
                Some("x"),
                "it is missing",
            ),
        ];
        for (frame, request_id, message) in cases {
            let decoded = decode(frame);
            assert_eq!(decoded.request_id.as_deref(), *request_id, "{frame}");
            let error = decoded.action.expect_err(frame).to_string();
            assert!(error.contains(message), "{frame}: {error}");
        }
    }

    #[test]
    fn refresh_carries_a_token() {
        assert_eq!(
            decode(r#"{"Action":"Refresh","RequestId":"r","Token":"a.b.c"}"#).action,
            Ok(ClientAction::Refresh {
                token: "a.b.c".into()
            })
        );
        for (frame, message) in [
            (
                r#"{"Action":"Refresh","RequestId":"r"}"#,
                "token refused: \"Token\" is missing",
            ),
            (
                r#"{"Action":"Refresh","RequestId":"r","Token":""}"#,
                "\"Token\" is empty",
            ),
            (
                r#"{"Action":"Refresh","RequestId":"r","Token":7}"#,
                "\"Token\" must be a string",
            ),
        ] {
            let decoded = decode(frame);
            assert_eq!(decoded.request_id.as_deref(), Some("r"));
            let error = decoded.action.expect_err(frame).to_string();
            assert!(error.contains(message), "{frame}: {error}");
        }
        let long = format!(
            r#"{{"Action":"Refresh","RequestId":"r","Token":"{}"}}"#,
            "t".repeat(MAX_TOKEN_BYTES + 1)
        );
        assert!(decode(&long).action.is_err());
    }

    #[test]
    fn long_rule_names_and_request_ids_are_rejected() {
        let long = "r".repeat(300);
        let frame = format!(r#"{{"Action":"Unsubscribe","RequestId":"x","Rule":"{long}"}}"#);
        assert!(matches!(
            decode(&frame).action,
            Err(ActionError::InvalidRuleName(_))
        ));
        let frame = format!(r#"{{"Action":"Hello","RequestId":"{long}"}}"#);
        assert_eq!(decode(&frame).request_id, None);
    }

    #[test]
    fn notifications_have_the_exact_lambdasharp_shape() {
        assert_eq!(
            ack_ok(Some("r")),
            r#"{"Action":"Ack","RequestId":"r","Status":"Ok"}"#
        );
        assert_eq!(
            ack_error(None, "boom"),
            r#"{"Action":"Ack","Status":"Error","Message":"boom"}"#
        );
        assert_eq!(keep_alive("k"), r#"{"Action":"KeepAlive","RequestId":"k"}"#);
        let tail = event_tail("src", "type \"q\"", r#"{"a":1.50}"#);
        let frame = event_frame("id", ["a", "b"], &tail);
        let parsed: Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(parsed["Action"], "Event");
        assert_eq!(parsed["Rules"], serde_json::json!(["a", "b"]));
        assert_eq!(parsed["Type"], "type \"q\"");
        assert_eq!(parsed["Event"], r#"{"a":1.50}"#);
    }

    #[test]
    fn hello_and_resume_carry_an_optional_position() {
        assert_eq!(
            decode(r#"{"Action":"Hello","RequestId":"r","Position":"ab:7"}"#).action,
            Ok(ClientAction::Hello {
                position: Some("ab:7".into())
            })
        );
        assert_eq!(
            decode(r#"{"Action":"Resume","RequestId":"r","Position":"ab:7"}"#).action,
            Ok(ClientAction::Resume {
                position: Some("ab:7".into())
            })
        );
        assert_eq!(
            decode(r#"{"Action":"Resume","RequestId":"r","Position":null}"#).action,
            Ok(ClientAction::Resume { position: None })
        );
        for (frame, message) in [
            (
                r#"{"Action":"Resume","RequestId":"r","Position":7}"#.to_owned(),
                "invalid position: \"Position\" must be a string, got a number",
            ),
            (
                format!(
                    r#"{{"Action":"Hello","RequestId":"r","Position":"{}"}}"#,
                    "9".repeat(MAX_POSITION_BYTES + 1)
                ),
                "invalid position: \"Position\" is 65 bytes, the limit is 64",
            ),
        ] {
            let decoded = decode(&frame);
            assert_eq!(decoded.request_id.as_deref(), Some("r"));
            assert_eq!(decoded.action.expect_err(&frame).to_string(), message);
        }
    }

    #[test]
    fn resume_acks_and_positioned_events() {
        assert_eq!(
            ack_resumed(Some("r"), Ok(3), Some("ab:9")),
            r#"{"Action":"Ack","RequestId":"r","Status":"Ok","Replayed":3,"Position":"ab:9"}"#
        );
        assert_eq!(
            ack_resumed(Some("r"), Err("position expired: x"), Some("ab:9")),
            r#"{"Action":"Ack","RequestId":"r","Status":"Error","Message":"position expired: x","Position":"ab:9"}"#
        );
        assert_eq!(ack_resumed(None, Err("e"), None), ack_error(None, "e"));
        let tail = event_tail_at(Some("ab:9"), "s", "t", "{}");
        let parsed: Value =
            serde_json::from_str(&event_frame("id", ["a"], &tail)).expect("valid JSON");
        assert_eq!(parsed["Position"], "ab:9");
        assert_eq!(parsed["Source"], "s");
        assert_eq!(
            event_tail("s", "t", "{}"),
            event_tail_at(None, "s", "t", "{}")
        );
    }
}
