//! The AWS EventBridge event-pattern language: parsing and validation ([`Pattern`]), a
//! straightforward reference evaluator ([`Pattern::matches`]) and a rule index whose
//! matching cost does not grow with the number of rules ([`RuleIndex`]).
//!
//! See `docs/patterns.md` for the language as implemented and the index design.

mod ast;
mod combine;
mod cost;
mod eval;
mod index;
mod negative;
mod scan;
mod values;

use std::fmt;
use std::sync::Arc;

pub use cost::{BudgetError, RuleBudget, RuleCost};
pub use index::RuleIndex;

/// Limits applied when a pattern is parsed; exceeding any of them is a [`PatternError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternLimits {
    /// Maximum size of the pattern's JSON text in bytes (default 4096).
    pub max_pattern_bytes: usize,
    /// Maximum nesting of pattern objects (top level = 1; nested fields and `$or`
    /// alternatives each add one) (default 16).
    pub max_depth: usize,
    /// Maximum number of literal/filter values in the pattern after `$or` expansion
    /// (default 256).
    pub max_alternatives: usize,
    /// Maximum number of `*` in one `wildcard` value (default 8).
    pub max_wildcard_stars: usize,
}

impl Default for PatternLimits {
    fn default() -> Self {
        PatternLimits {
            max_pattern_bytes: 4096,
            max_depth: 16,
            max_alternatives: 256,
            max_wildcard_stars: 8,
        }
    }
}

/// Why a pattern was rejected. `path` is the dotted field path inside the pattern
/// (`$or` alternatives appear as `$or[1]`), empty for problems with the whole pattern.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct PatternError {
    pub path: String,
    pub reason: String,
}

impl PatternError {
    fn render(&self) -> String {
        if self.path.is_empty() {
            self.reason.clone()
        } else {
            format!("{}: {}", self.path, self.reason)
        }
    }
}

/// A validated EventBridge event pattern. Cheap to clone (shared, immutable).
#[derive(Clone)]
pub struct Pattern {
    pub(crate) root: Arc<ast::ObjPat>,
    /// The pattern as compact JSON (shared by clones), for operators to read back.
    source: Arc<str>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pattern").field("root", &self.root).finish()
    }
}

impl Pattern {
    /// Parses pattern text: byte limit first, then JSON, then validation.
    pub fn parse(text: &str, limits: &PatternLimits) -> Result<Pattern, PatternError> {
        if text.len() > limits.max_pattern_bytes {
            return Err(PatternError {
                path: String::new(),
                reason: format!(
                    "pattern is {} bytes, more than the max_pattern_bytes limit of {}",
                    text.len(),
                    limits.max_pattern_bytes
                ),
            });
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PatternError {
            path: String::new(),
            reason: format!("pattern is not valid JSON: {e}"),
        })?;
        Self::validate(&value, limits)
    }

    /// The pattern as compact JSON, as it was given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Validates an already-parsed pattern (the byte limit applies to its compact JSON).
    pub fn from_value(
        value: &serde_json::Value,
        limits: &PatternLimits,
    ) -> Result<Pattern, PatternError> {
        let size = serde_json::to_string(value).map(|s| s.len()).unwrap_or(0);
        if size > limits.max_pattern_bytes {
            return Err(PatternError {
                path: String::new(),
                reason: format!(
                    "pattern is {} bytes, more than the max_pattern_bytes limit of {}",
                    size, limits.max_pattern_bytes
                ),
            });
        }
        Self::validate(value, limits)
    }

    fn validate(
        value: &serde_json::Value,
        limits: &PatternLimits,
    ) -> Result<Pattern, PatternError> {
        let root = ast::Parser { limits }.top(value)?;
        Ok(Pattern {
            root: Arc::new(root),
            source: value.to_string().into(),
        })
    }

    /// Do both patterns hold the same conditions, so that they match the same events? Compares
    /// the validated trees, not the text: a scoped pattern (see [`Pattern::and`]) keeps its
    /// client's text but not its client's conditions, so two scoped patterns with the same
    /// text under different scopes are not the same. Fields in another order compare as
    /// different (a false "no" costs a caller only a cache miss; a false "yes" cannot happen).
    pub fn same_as(&self, other: &Pattern) -> bool {
        Arc::ptr_eq(&self.root, &other.root) || *self.root == *other.root
    }

    /// The reference evaluator: does this pattern match the event?
    pub fn matches(&self, event: &serde_json::Value) -> bool {
        eval::eval_obj(&self.root, Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: serde_json::Value) -> Pattern {
        match Pattern::from_value(&v, &PatternLimits::default()) {
            Ok(p) => p,
            Err(e) => panic!("pattern {v} rejected: {e}"),
        }
    }

    fn e(v: serde_json::Value) -> String {
        match Pattern::from_value(&v, &PatternLimits::default()) {
            Ok(_) => panic!("pattern {v} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn error_display() {
        assert_eq!(
            e(json!({"detail": {"count": [{"numeric": [">"]}]}})),
            "detail.count: \"numeric\" needs an operator and a number, got \">\""
        );
        assert!(e(json!({"Foo": "Bar"})).starts_with("Foo: a leaf must be an array"));
        assert!(e(json!({"$or": [{"a": [1]}, {"b": {"c": 5}}]})).starts_with("$or[1].b.c:"));
        assert!(e(json!({"a": null})).contains("match every event"));
    }

    #[test]
    fn numeric_exactness() {
        let pat = p(json!({"n": [{"numeric": [">", 9007199254740992u64]}]}));
        assert!(pat.matches(&json!({"n": 9007199254740993u64})));
        assert!(!pat.matches(&json!({"n": 9007199254740992u64})));
        let pat = p(json!({"n": [{"numeric": [">=", -1.5, "<", 18446744073709551615u64]}]}));
        assert!(pat.matches(&json!({"n": -1.5})));
        assert!(pat.matches(&json!({"n": 18446744073709551614u64})));
        assert!(!pat.matches(&json!({"n": 18446744073709551615u64})));
        assert!(!pat.matches(&json!({"n": "5"})));
    }

    #[test]
    fn array_consistency() {
        let pat = p(json!({"employees": {"first": ["Anna"], "last": ["Jones"]}}));
        assert!(!pat.matches(&json!({"employees": [
            {"first": "Anna", "last": "Smith"}, {"first": "Peter", "last": "Jones"}]})));
        assert!(pat.matches(&json!({"employees": [
            {"first": "Anna", "last": "Smith"}, {"first": "Anna", "last": "Jones"}]})));
    }
}
