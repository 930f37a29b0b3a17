//! A connection's scope: the pattern every one of its rules is ANDed with, built from the
//! verified claims (a configured template, a claim that holds a pattern) and the connect
//! hook's answer.
//!
//! Owns the template language (`${claim}` placeholders filled with claim values as JSON
//! values, never as pattern text) and the combination of the parts. Does not own
//! verification (see `verify`) nor where the scope is applied (the session ANDs it into
//! each Subscribe before the rule reaches the hub).

use serde_json::{Map, Value};

use eventgate_protocol::pattern::{Pattern, PatternLimits};

use super::IdentityError;

/// A scope template, parsed once: JSON text with `${claim}` placeholders in string values.
#[derive(Debug, Clone)]
pub(super) struct Template {
    document: Value,
}

/// The claim `name` (dotted for nested claims: `${org.id}`).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut parts = name.split('.');
    let first = claims.get(parts.next()?)?;
    parts.try_fold(first, |value, part| value.get(part))
}

/// The placeholder names in `text`, in order (`${name}`).
fn placeholders(text: &str) -> impl Iterator<Item = (usize, usize, &str)> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + text.get(from..)?.find("${")?;
        let end = start + text.get(start..)?.find('}')?;
        from = end + 1;
        Some((start, end + 1, text.get(start + 2..end)?))
    })
}

/// A claim value where a pattern value goes: a string, a number or a boolean. Objects and
/// null are refused (an object in a leaf would be an operator such as `anything-but`), and
/// so is an empty string (an empty tenant is never an identity).
fn scalar(name: &str, value: &Value) -> Result<Value, IdentityError> {
    match value {
        Value::String(text) if text.is_empty() => Err(IdentityError::ScopeClaimUnusable(
            name.to_owned(),
            "an empty string",
        )),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(value.clone()),
        Value::Null => Err(IdentityError::ScopeClaimUnusable(name.to_owned(), "null")),
        Value::Array(_) => Err(IdentityError::ScopeClaimUnusable(
            name.to_owned(),
            "an array outside a value list",
        )),
        Value::Object(_) => Err(IdentityError::ScopeClaimUnusable(
            name.to_owned(),
            "an object",
        )),
    }
}

/// Fills the string `text`: a string that is exactly one placeholder becomes the claim's
/// JSON value; placeholders inside a longer string are replaced by the claim's text.
fn fill_string(text: &str, claims: &Map<String, Value>) -> Result<Vec<Value>, IdentityError> {
    let mut found = placeholders(text).peekable();
    if found.peek().is_none() {
        return Ok(vec![Value::String(text.to_owned())]);
    }
    let lookup = |name: &str| {
        claim(claims, name).ok_or_else(|| IdentityError::ScopeClaimMissing(name.to_owned()))
    };
    if let Some((0, end, name)) = found.peek().copied() {
        if end == text.len() {
            return match lookup(name)? {
                // In a value list, an array claim (several tenants) gives several values.
                Value::Array(items) if !items.is_empty() => {
                    items.iter().map(|item| scalar(name, item)).collect()
                }
                other => Ok(vec![scalar(name, other)?]),
            };
        }
    }
    let mut out = String::new();
    let mut copied = 0;
    for (start, end, name) in found {
        out.push_str(text.get(copied..start).unwrap_or_default());
        match scalar(name, lookup(name)?)? {
            Value::String(value) => out.push_str(&value),
            other => out.push_str(&other.to_string()),
        }
        copied = end;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    Ok(vec![Value::String(out)])
}

fn fill(value: &Value, claims: &Map<String, Value>) -> Result<Value, IdentityError> {
    Ok(match value {
        Value::String(text) => {
            let mut values = fill_string(text, claims)?;
            match values.len() {
                1 => values.remove(0),
                _ => {
                    return Err(IdentityError::ScopeClaimUnusable(
                        text.clone(),
                        "an array outside a value list",
                    ))
                }
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(text) => out.extend(fill_string(text, claims)?),
                    other => out.push(fill(other, claims)?),
                }
            }
            Value::Array(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| Ok((key.clone(), fill(value, claims)?)))
                .collect::<Result<_, IdentityError>>()?,
        ),
        other => other.clone(),
    })
}

impl Template {
    /// Parses a template and checks that it is a valid pattern once filled.
    pub(super) fn parse(text: &str, limits: &PatternLimits) -> Result<Template, String> {
        let document: Value = serde_json::from_str(text)
            .map_err(|error| format!("identity.scope is not JSON: {error}"))?;
        let template = Template { document };
        // Every placeholder filled with a sample value must give a valid pattern.
        let mut sample = Map::new();
        template.names(&template.document, &mut |name| {
            let mut parts = name.split('.').rev();
            let mut value = Value::String("sample".into());
            for part in parts.by_ref() {
                let mut map = Map::new();
                map.insert(part.to_owned(), value);
                value = Value::Object(map);
            }
            if let Value::Object(map) = value {
                for (key, value) in map {
                    sample.entry(key).or_insert(value);
                }
            }
        });
        let filled = fill(&template.document, &sample)
            .map_err(|error| format!("identity.scope: {error}"))?;
        Pattern::from_value(&filled, limits)
            .map_err(|error| format!("identity.scope is not a valid pattern: {error}"))?;
        Ok(template)
    }

    fn names(&self, value: &Value, found: &mut dyn FnMut(&str)) {
        match value {
            Value::String(text) => placeholders(text).for_each(|(_, _, name)| found(name)),
            Value::Array(items) => items.iter().for_each(|item| self.names(item, found)),
            Value::Object(map) => map.values().for_each(|item| self.names(item, found)),
            _ => {}
        }
    }

    /// The template filled from `claims`.
    pub(super) fn fill(&self, claims: &Map<String, Value>) -> Result<Value, IdentityError> {
        fill(&self.document, claims)
    }
}

/// A scope pattern given as a JSON value or as a string holding one (a claim, the hook).
pub(super) fn pattern_value(value: &Value, origin: &str) -> Result<Value, IdentityError> {
    match value {
        Value::Object(_) => Ok(value.clone()),
        Value::String(text) => serde_json::from_str(text).map_err(|_| {
            IdentityError::ScopeInvalid(format!("the {origin} is a string that is not JSON"))
        }),
        _ => Err(IdentityError::ScopeInvalid(format!(
            "the {origin} must be a pattern object"
        ))),
    }
}

/// The AND of the parts, and its canonical text (to compare scopes on a token refresh).
pub(super) fn combine(
    parts: Vec<Value>,
    limits: &PatternLimits,
) -> Result<Option<(Pattern, String)>, IdentityError> {
    let mut combined: Option<Pattern> = None;
    for part in &parts {
        let pattern = Pattern::from_value(part, limits)
            .map_err(|error| IdentityError::ScopeInvalid(error.to_string()))?;
        combined = Some(match combined {
            Some(scope) => scope.and(&pattern),
            None => pattern,
        });
    }
    // serde_json's maps are sorted, so equal scopes print alike.
    Ok(combined.map(|scope| (scope, Value::Array(parts).to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn template(text: &str) -> Template {
        Template::parse(text, &PatternLimits::default()).expect("a valid template")
    }

    #[test]
    fn claims_are_inserted_as_values() {
        let tenant = template(r#"{"detail":{"tenant":["${tenant}"]}}"#);
        assert_eq!(
            tenant.fill(&claims(json!({"tenant": "t1"}))).ok(),
            Some(json!({"detail": {"tenant": ["t1"]}}))
        );
        // Pattern syntax in a claim is only text.
        let hostile = r#"t1"]},"source":["x"#;
        assert_eq!(
            tenant.fill(&claims(json!({"tenant": hostile}))).ok(),
            Some(json!({"detail": {"tenant": [hostile]}}))
        );
        // Several tenants: several values in the list.
        assert_eq!(
            tenant.fill(&claims(json!({"tenant": ["a", "b"]}))).ok(),
            Some(json!({"detail": {"tenant": ["a", "b"]}}))
        );
        assert_eq!(
            tenant.fill(&claims(json!({"tenant": 7}))).ok(),
            Some(json!({"detail": {"tenant": [7]}}))
        );
        let nested = template(r#"{"detail":{"path":[{"prefix":"/${org.id}/"}]}}"#);
        assert_eq!(
            nested.fill(&claims(json!({"org": {"id": "o1"}}))).ok(),
            Some(json!({"detail": {"path": [{"prefix": "/o1/"}]}}))
        );
    }

    #[test]
    fn unusable_or_missing_claims_refuse() {
        let tenant = template(r#"{"detail":{"tenant":["${tenant}"]}}"#);
        for (value, label) in [
            (json!({}), "scope_claim_missing"),
            (
                json!({"tenant": {"anything-but": "x"}}),
                "scope_claim_unusable",
            ),
            (json!({"tenant": ""}), "scope_claim_unusable"),
            (json!({"tenant": null}), "scope_claim_unusable"),
            (
                json!({"tenant": [{"exists": true}]}),
                "scope_claim_unusable",
            ),
            (json!({"tenant": []}), "scope_claim_unusable"),
        ] {
            let error = tenant.fill(&claims(value.clone())).expect_err("refused");
            assert_eq!(error.label(), label, "{value}");
        }
    }

    #[test]
    fn templates_are_checked_when_loaded() {
        let limits = PatternLimits::default();
        assert!(Template::parse("not json", &limits).is_err());
        assert!(Template::parse(r#"{"detail":"${tenant}"}"#, &limits).is_err());
        assert!(Template::parse(
            r#"{"$or":[{"detail":{"owner":["${sub}"]}},{"detail":{"visibility":["public"]}}]}"#,
            &limits
        )
        .is_ok());
    }
}
