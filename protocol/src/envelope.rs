//! The EventBridge event envelope and the ingest shapes that map onto it.
//!
//! Owns turning one input entry (an EventBridge event object, a PutEvents entry, a
//! structured or binary CloudEvent) into a complete envelope: required fields checked,
//! defaults filled in, `detail` forwarded byte for byte as it was sent. Does not own
//! transport concerns (bodies, content types, auth) or the choice of ids and clocks: the
//! caller hands in [`Fill`].
//!
//! CloudEvents mapping: `type` → `detail-type`, `source` → `source`, `id` → `id`,
//! `time` → `time`, `subject` → `resources: [subject]`, `data` (a JSON object) → `detail`;
//! any other `data` becomes `detail: {"data": <data>}` and `data_base64` becomes
//! `detail: {"data_base64": "..."}`.

use serde_json::value::RawValue;
use serde_json::Value;

/// Values the caller supplies for fields an entry leaves out.
#[derive(Debug, Clone)]
pub struct Fill {
    pub id: String,
    pub time: String,
    pub account: String,
    pub region: String,
}

/// A complete event: `json` is what clients receive in `Event.Event`; `value` is the same
/// event parsed for matching.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub detail_type: String,
    pub json: String,
    pub value: Value,
}

/// Why an entry was refused; `code()` is the PutEvents-style `ErrorCode`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EntryError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("detail is not a JSON object: {0}")]
    MalformedDetail(String),
    #[error("entry is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
}

impl EntryError {
    pub fn code(&self) -> &'static str {
        match self {
            EntryError::InvalidArgument(_) => "InvalidArgument",
            EntryError::MalformedDetail(_) => "MalformedDetail",
            EntryError::TooLarge { .. } => "EntryTooLarge",
        }
    }
}

fn invalid(message: impl Into<String>) -> EntryError {
    EntryError::InvalidArgument(message.into())
}

/// The fields of an envelope before serialisation.
struct Parts<'a> {
    id: Option<String>,
    source: Option<String>,
    detail_type: Option<String>,
    time: Option<String>,
    account: Option<String>,
    region: Option<String>,
    version: Option<String>,
    resources: Vec<String>,
    /// Raw JSON text of an object.
    detail: Option<std::borrow::Cow<'a, str>>,
}

fn optional_string(value: Option<&RawValue>, name: &str) -> Result<Option<String>, EntryError> {
    let Some(raw) = value else { return Ok(None) };
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::String(text)) => Ok(Some(text)),
        Ok(Value::Null) => Ok(None),
        _ => Err(invalid(format!("{name} must be a string"))),
    }
}

fn string_list(value: Option<&RawValue>, name: &str) -> Result<Vec<String>, EntryError> {
    let Some(raw) = value else {
        return Ok(Vec::new());
    };
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Null) => Ok(Vec::new()),
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(invalid(format!("{name} must be a list of strings"))),
            })
            .collect(),
        _ => Err(invalid(format!("{name} must be a list of strings"))),
    }
}

fn check_object(text: &str) -> Result<(), EntryError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => Ok(()),
        Ok(_) => Err(EntryError::MalformedDetail("got another JSON type".into())),
        Err(err) => Err(EntryError::MalformedDetail(err.to_string())),
    }
}

type RawFields<'a> = std::collections::BTreeMap<String, &'a RawValue>;

fn raw_fields(raw: &RawValue) -> Result<RawFields<'_>, EntryError> {
    serde_json::from_str::<RawFields<'_>>(raw.get())
        .map_err(|err| invalid(format!("an entry must be a JSON object ({err})")))
}

/// An EventBridge event object: `{"source","detail-type","detail",...}`.
pub fn from_eventbridge(raw: &RawValue, fill: &Fill) -> Result<Event, EntryError> {
    let fields = raw_fields(raw)?;
    for key in fields.keys() {
        if !matches!(
            key.as_str(),
            "version"
                | "id"
                | "detail-type"
                | "source"
                | "account"
                | "time"
                | "region"
                | "resources"
                | "detail"
        ) {
            return Err(invalid(format!(
                "unknown field {key:?}; an EventBridge event has version, id, detail-type, source, account, time, region, resources, detail"
            )));
        }
    }
    let detail = match fields.get("detail") {
        Some(raw) if raw.get() != "null" => {
            check_object(raw.get())?;
            Some(std::borrow::Cow::Borrowed(raw.get()))
        }
        _ => None,
    };
    build(
        Parts {
            id: optional_string(fields.get("id").copied(), "id")?,
            source: optional_string(fields.get("source").copied(), "source")?,
            detail_type: optional_string(fields.get("detail-type").copied(), "detail-type")?,
            time: optional_string(fields.get("time").copied(), "time")?,
            account: optional_string(fields.get("account").copied(), "account")?,
            region: optional_string(fields.get("region").copied(), "region")?,
            version: optional_string(fields.get("version").copied(), "version")?,
            resources: string_list(fields.get("resources").copied(), "resources")?,
            detail,
        },
        fill,
    )
}

/// One entry of the PutEvents shape: `{"Source","DetailType","Detail":"<json>","Resources","Time"}`.
pub fn from_put_events_entry(raw: &RawValue, fill: &Fill) -> Result<Event, EntryError> {
    let fields = raw_fields(raw)?;
    for key in fields.keys() {
        if !matches!(
            key.as_str(),
            "Source"
                | "DetailType"
                | "Detail"
                | "Resources"
                | "Time"
                | "EventBusName"
                | "TraceHeader"
        ) {
            return Err(invalid(format!("unknown PutEvents entry field {key:?}")));
        }
    }
    let detail = match optional_string(fields.get("Detail").copied(), "Detail")? {
        Some(text) => {
            check_object(&text)?;
            Some(std::borrow::Cow::Owned(text))
        }
        None => None,
    };
    build(
        Parts {
            id: None,
            source: optional_string(fields.get("Source").copied(), "Source")?,
            detail_type: optional_string(fields.get("DetailType").copied(), "DetailType")?,
            time: optional_string(fields.get("Time").copied(), "Time")?,
            account: None,
            region: None,
            version: None,
            resources: string_list(fields.get("Resources").copied(), "Resources")?,
            detail,
        },
        fill,
    )
}

/// A structured-mode CloudEvent (`application/cloudevents+json`).
pub fn from_cloudevent(raw: &RawValue, fill: &Fill) -> Result<Event, EntryError> {
    let fields = raw_fields(raw)?;
    match optional_string(fields.get("specversion").copied(), "specversion")?.as_deref() {
        Some("1.0") => {}
        Some(other) => {
            return Err(invalid(format!(
                "specversion {other:?} is not supported (1.0 is)"
            )))
        }
        None => return Err(invalid("specversion is required")),
    }
    let detail = if let Some(data) = fields.get("data").filter(|d| d.get() != "null") {
        if data.get().trim_start().starts_with('{') {
            check_object(data.get())?;
            std::borrow::Cow::Borrowed(data.get())
        } else {
            std::borrow::Cow::Owned(format!("{{\"data\":{}}}", data.get()))
        }
    } else if let Some(data) = fields.get("data_base64") {
        std::borrow::Cow::Owned(format!("{{\"data_base64\":{}}}", data.get()))
    } else {
        std::borrow::Cow::Borrowed("{}")
    };
    let subject = optional_string(fields.get("subject").copied(), "subject")?;
    let id = optional_string(fields.get("id").copied(), "id")?;
    if id.is_none() {
        return Err(invalid("id is required in a CloudEvent"));
    }
    build(
        Parts {
            id,
            source: optional_string(fields.get("source").copied(), "source")?,
            detail_type: optional_string(fields.get("type").copied(), "type")?,
            time: optional_string(fields.get("time").copied(), "time")?,
            account: None,
            region: None,
            version: None,
            resources: subject.into_iter().collect(),
            detail: Some(detail),
        },
        fill,
    )
}

/// A binary-mode CloudEvent: attributes from `ce-*` headers (names lower-case, prefix
/// removed), the body as data.
pub fn from_binary_cloudevent(
    attributes: &[(String, String)],
    body: &[u8],
    body_is_json: bool,
    fill: &Fill,
) -> Result<Event, EntryError> {
    let get = |name: &str| {
        attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    match get("specversion").as_deref() {
        Some("1.0") => {}
        Some(other) => {
            return Err(invalid(format!(
                "ce-specversion {other:?} is not supported (1.0 is)"
            )))
        }
        None => return Err(invalid("ce-specversion is required")),
    }
    if get("id").is_none() {
        return Err(invalid("ce-id is required"));
    }
    let detail = if body.is_empty() {
        "{}".to_owned()
    } else if body_is_json {
        let text = std::str::from_utf8(body)
            .map_err(|_| EntryError::MalformedDetail("body is not UTF-8".into()))?;
        let value: Value = serde_json::from_str(text)
            .map_err(|err| EntryError::MalformedDetail(err.to_string()))?;
        if value.is_object() {
            text.to_owned()
        } else {
            format!("{{\"data\":{}}}", text.trim())
        }
    } else {
        let text = String::from_utf8_lossy(body);
        format!("{{\"data\":{}}}", Value::String(text.into_owned()))
    };
    build(
        Parts {
            id: get("id"),
            source: get("source"),
            detail_type: get("type"),
            time: get("time"),
            account: None,
            region: None,
            version: None,
            resources: get("subject").into_iter().collect(),
            detail: Some(std::borrow::Cow::Owned(detail)),
        },
        fill,
    )
}

/// The one rule for `time`, whatever the event came from (HTTP ingest, any broker): an
/// RFC 3339 time with any offset and fraction becomes UTC with whole seconds
/// (`2026-12-06T03:41:28Z`), the form EventBridge uses; anything else is refused.
pub fn normalize_time(text: &str) -> Result<String, EntryError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        invalid(format!(
            "time {text:?} is not an RFC 3339 time (e.g. 2026-01-01T00:00:00Z)"
        ))
    };
    let parsed = time::OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|_| bad())?;
    let utc = parsed
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .map_err(|_| bad())?;
    utc.format(&Rfc3339).map_err(|_| bad())
}

const MAX_SOURCE: usize = 256;
const MAX_DETAIL_TYPE: usize = 256;

fn build(parts: Parts<'_>, fill: &Fill) -> Result<Event, EntryError> {
    let source = parts
        .source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("source is required"))?;
    let detail_type = parts
        .detail_type
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("detail-type is required"))?;
    if source.len() > MAX_SOURCE {
        return Err(invalid(format!("source is longer than {MAX_SOURCE} bytes")));
    }
    if detail_type.len() > MAX_DETAIL_TYPE {
        return Err(invalid(format!(
            "detail-type is longer than {MAX_DETAIL_TYPE} bytes"
        )));
    }
    let id = parts
        .id
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fill.id.clone());
    let time = match parts.time.as_deref() {
        Some(text) => normalize_time(text)?,
        None => fill.time.clone(),
    };
    let account = parts.account.unwrap_or_else(|| fill.account.clone());
    let region = parts.region.unwrap_or_else(|| fill.region.clone());
    let version = parts.version.unwrap_or_else(|| "0".to_owned());
    let detail = parts.detail.unwrap_or(std::borrow::Cow::Borrowed("{}"));

    let quote = |text: &str| Value::String(text.to_owned()).to_string();
    let mut json = String::with_capacity(detail.len() + 256);
    json.push_str("{\"version\":");
    json.push_str(&quote(&version));
    json.push_str(",\"id\":");
    json.push_str(&quote(&id));
    json.push_str(",\"detail-type\":");
    json.push_str(&quote(&detail_type));
    json.push_str(",\"source\":");
    json.push_str(&quote(&source));
    json.push_str(",\"account\":");
    json.push_str(&quote(&account));
    json.push_str(",\"time\":");
    json.push_str(&quote(&time));
    json.push_str(",\"region\":");
    json.push_str(&quote(&region));
    json.push_str(",\"resources\":");
    json.push_str(&Value::from(parts.resources.clone()).to_string());
    json.push_str(",\"detail\":");
    json.push_str(detail.trim());
    json.push('}');
    let value: Value =
        serde_json::from_str(&json).map_err(|err| EntryError::MalformedDetail(err.to_string()))?;
    Ok(Event {
        id,
        source,
        detail_type,
        json,
        value,
    })
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn every_time_becomes_utc_whole_seconds() {
        for (given, expected) in [
            ("2026-12-06T03:41:28.073770+00:00", "2026-12-06T03:41:28Z"),
            ("2026-12-06T03:41:28Z", "2026-12-06T03:41:28Z"),
            ("2026-12-06T05:41:28.9+02:00", "2026-12-06T03:41:28Z"),
            ("2026-12-05T23:41:28-04:00", "2026-12-06T03:41:28Z"),
            ("2026-12-06t03:41:28z", "2026-12-06T03:41:28Z"),
        ] {
            assert_eq!(normalize_time(given).as_deref(), Ok(expected), "{given}");
        }
        for bad in [
            "yesterday",
            "2026-12-06",
            "1733456488",
            "2026-12-06T03:41:28",
            "",
        ] {
            let error = normalize_time(bad).unwrap_err();
            assert!(error.to_string().contains("RFC 3339"), "{bad}: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill() -> Fill {
        Fill {
            id: "generated".into(),
            time: "2026-01-01T00:00:00Z".into(),
            account: "000000000000".into(),
            region: "local".into(),
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("raw json")
    }

    #[test]
    fn eventbridge_defaults_are_filled_and_numbers_kept_verbatim() {
        let event = from_eventbridge(
            &raw(r#"{"source":"s","detail-type":"t","detail":{"n":1.50,"big":123456789012345678901234567890}}"#),
            &fill(),
        )
        .expect("valid");
        assert!(event
            .json
            .contains(r#""detail":{"n":1.50,"big":123456789012345678901234567890}"#));
        assert_eq!(event.value["id"], "generated");
        assert_eq!(event.value["version"], "0");
        assert_eq!(event.value["resources"], serde_json::json!([]));
        let event =
            from_eventbridge(&raw(r#"{"source":"s","detail-type":"t"}"#), &fill()).expect("valid");
        assert_eq!(event.value["detail"], serde_json::json!({}));
    }

    #[test]
    fn eventbridge_errors() {
        let cases = [
            (r#"{"detail-type":"t"}"#, "source is required"),
            (r#"{"source":"s"}"#, "detail-type is required"),
            (
                r#"{"source":1,"detail-type":"t"}"#,
                "source must be a string",
            ),
            (
                r#"{"source":"s","detail-type":"t","detail":[1]}"#,
                "detail is not a JSON object",
            ),
            (
                r#"{"source":"s","detail-type":"t","resources":[1]}"#,
                "resources must be a list of strings",
            ),
            (
                r#"{"source":"s","detail-type":"t","bogus":1}"#,
                "unknown field \"bogus\"",
            ),
            (r#"[1]"#, "must be a JSON object"),
        ];
        for (input, message) in cases {
            let err = from_eventbridge(&raw(input), &fill()).expect_err(input);
            assert!(err.to_string().contains(message), "{input}: {err}");
        }
    }

    #[test]
    fn put_events_entry() {
        let event = from_put_events_entry(
            &raw(r#"{"Source":"s","DetailType":"t","Detail":"{\"a\":2.0}","Resources":["r"]}"#),
            &fill(),
        )
        .expect("valid");
        assert!(event.json.contains(r#""detail":{"a":2.0}"#));
        assert_eq!(event.value["resources"][0], "r");
        let err = from_put_events_entry(
            &raw(r#"{"Source":"s","DetailType":"t","Detail":"nope"}"#),
            &fill(),
        )
        .expect_err("bad detail");
        assert_eq!(err.code(), "MalformedDetail");
    }

    #[test]
    fn cloudevents_map_onto_the_envelope() {
        let event = from_cloudevent(
            &raw(r#"{"specversion":"1.0","id":"c1","source":"lamassu.ca","type":"lamassu.certificate.issued","subject":"cert/1","time":"2026-01-02T00:00:00Z","data":{"serial":"01"}}"#),
            &fill(),
        )
        .expect("valid");
        assert_eq!(event.value["id"], "c1");
        assert_eq!(event.value["detail-type"], "lamassu.certificate.issued");
        assert_eq!(event.value["resources"][0], "cert/1");
        assert_eq!(event.value["detail"]["serial"], "01");
        let event = from_cloudevent(
            &raw(r#"{"specversion":"1.0","id":"c1","source":"s","type":"t","data":"text"}"#),
            &fill(),
        )
        .expect("valid");
        assert_eq!(event.value["detail"]["data"], "text");
        assert!(from_cloudevent(
            &raw(r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#),
            &fill()
        )
        .is_err());
        let attrs = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), "b1".to_owned()),
            ("source".to_owned(), "s".to_owned()),
            ("type".to_owned(), "t".to_owned()),
        ];
        let event = from_binary_cloudevent(&attrs, br#"{"x":1}"#, true, &fill()).expect("valid");
        assert_eq!(event.value["detail"]["x"], 1);
        let event = from_binary_cloudevent(&attrs, b"plain", false, &fill()).expect("valid");
        assert_eq!(event.value["detail"]["data"], "plain");
    }
}
