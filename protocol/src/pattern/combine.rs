//! The AND of two patterns ([`Pattern::and`]): how a connection's scope (a pattern the
//! server derives from the client's verified identity) is folded into every pattern the
//! client subscribes with, before the rule enters the index.
//!
//! Owns the combination and its guarantee: the result matches an event exactly when both
//! inputs do, so no pattern a client writes (`$or`, `anything-but`, `exists: false`, arrays,
//! keys the scope does not name) can reach an event outside the scope. Does not own where
//! scopes come from (the gateway's identity module) nor limits on the result (the inputs
//! were each validated; the result's size is the sum of theirs, its `$or` expansion their
//! product). I/O-free like the rest of the crate.

use std::sync::Arc;

use super::Pattern;

impl Pattern {
    /// A pattern that matches an event exactly when both `self` and `other` match it.
    ///
    /// The top-level fields and `$or` groups of both are put side by side in one object
    /// level: the evaluator and the index require every field and every group of a level,
    /// so the conditions of `self` stay conditions of the result whatever `other` holds.
    /// A field named in both is kept twice (each copy is checked on its own, which is the
    /// AND of the two, also on arrays), never merged. The result is indexed like any
    /// pattern: a scope's conditions are index clauses of every combined rule, not a filter
    /// applied after the match.
    #[must_use]
    pub fn and(&self, other: &Pattern) -> Pattern {
        let mut root = (*self.root).clone();
        root.fields.extend(other.root.fields.iter().cloned());
        root.ors.extend(other.root.ors.iter().cloned());
        // The text kept is `other`'s: the gateway calls `scope.and(&pattern)`, and the
        // admin console shows the rule as the client wrote it (the scope belongs to the
        // connection, not to the rule).
        Pattern {
            root: Arc::new(root),
            source: Arc::clone(&other.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use crate::pattern::{Pattern, PatternLimits, RuleIndex};

    fn p(value: Value) -> Pattern {
        Pattern::from_value(&value, &PatternLimits::default()).expect("valid pattern")
    }

    /// What the index delivers for `event` with the one rule `pattern`.
    fn indexed(pattern: &Pattern, event: &Value) -> bool {
        let mut index = RuleIndex::new();
        index.insert(1u8, pattern);
        let mut out = Vec::new();
        index.matches(event, &mut out);
        let mut out_json = Vec::new();
        let parsed = index.matches_json(&event.to_string(), &mut out_json);
        assert!(parsed.is_ok());
        assert_eq!(
            out, out_json,
            "matches and matches_json disagree on {event}"
        );
        !out.is_empty()
    }

    #[test]
    fn the_same_text_under_another_scope_is_not_the_same_pattern() {
        let pattern = json!({"detail-type": ["invoice.paid"]});
        let (alice, bob) = (
            p(json!({"detail": {"tenant": ["alice"]}})),
            p(json!({"detail": {"tenant": ["bob"]}})),
        );
        let as_alice = alice.and(&p(pattern.clone()));
        let as_bob = bob.and(&p(pattern.clone()));
        // The text is the client's in both (what the admin console shows)...
        assert_eq!(as_alice.source(), as_bob.source());
        // ...but the conditions are not: anything keyed on "the same pattern" must tell them apart.
        assert!(!as_alice.same_as(&as_bob));
        assert!(!as_alice.same_as(&p(pattern.clone())));
        assert!(as_alice.same_as(&alice.and(&p(pattern.clone()))));
        assert!(p(pattern.clone()).same_as(&p(pattern)));
        assert!(!p(json!({"source": ["a"]})).same_as(&p(json!({"source": ["b"]}))));
        assert!(!p(json!({"n": [{"numeric": [">", 1]}]}))
            .same_as(&p(json!({"n": [{"numeric": [">=", 1]}]}))));
    }

    #[test]
    fn tricks_do_not_widen_a_scope() {
        let scope = p(json!({"detail": {"tenant": ["t1"]}}));
        let mine = json!({"source": "s", "detail": {"tenant": "t1", "n": 1}});
        let theirs = json!({"source": "s", "detail": {"tenant": "t2", "n": 1}});
        let hidden = json!({"source": "s", "detail": {"n": 1}});
        let both = json!({"source": "s", "detail": {"tenant": ["t1", "t2"], "n": 1}});
        for client in [
            json!({"source": ["s"]}),
            json!({"detail": {"tenant": [{"anything-but": "t1"}]}}),
            json!({"detail": {"tenant": [{"exists": false}]}}),
            json!({"detail": {"tenant": ["t2"]}}),
            json!({"$or": [{"source": ["s"]}, {"detail": {"tenant": ["t2"]}}]}),
            json!({"detail": {"tenant": [{"prefix": ""}]}}),
            json!({"detail": [{"exists": false}]}),
        ] {
            let combined = scope.and(&p(client.clone()));
            assert!(
                !combined.matches(&theirs) && !indexed(&combined, &theirs),
                "{client}"
            );
            assert!(
                !combined.matches(&hidden) && !indexed(&combined, &hidden),
                "{client}"
            );
            // Either copy of the field is checked on its own.
            assert_eq!(combined.matches(&both), p(client.clone()).matches(&both));
            assert_eq!(
                combined.matches(&mine),
                p(client.clone()).matches(&mine),
                "{client}"
            );
        }
    }

    #[test]
    fn scope_and_pattern_naming_the_same_field_keep_both_conditions() {
        let scope = p(json!({"detail": {"tenant": ["t1", "t2"]}}));
        let client = p(json!({"detail": {"tenant": ["t2", "t3"]}}));
        let combined = scope.and(&client);
        for (tenant, want) in [("t1", false), ("t2", true), ("t3", false)] {
            let event = json!({"detail": {"tenant": tenant}});
            assert_eq!(combined.matches(&event), want, "{tenant}");
            assert_eq!(indexed(&combined, &event), want, "{tenant}");
        }
    }

    // Random scopes (what an operator configures), random client patterns (every operator,
    // `$or`, nesting, keys the scope names) and random events (arrays of objects, missing
    // fields): the combined rule, evaluated or indexed, delivers exactly what both allow.

    const KEYS: &[&str] = &["tenant", "owner", "n"];
    const STRS: &[&str] = &["", "t1", "t2", "u1", "T1", "public"];

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => prop::sample::select(STRS).prop_map(|s| json!(s)),
            1 => prop::sample::select(&[0i64, 1, 3][..]).prop_map(|n| json!(n)),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => Just(Value::Null),
        ]
    }

    fn filter() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => scalar(),
            1 => prop::sample::select(STRS).prop_map(|s| json!({"prefix": s})),
            1 => prop::sample::select(STRS).prop_map(|s| json!({"anything-but": s})),
            1 => prop::sample::select(STRS).prop_map(|s| json!({"anything-but": {"prefix": s}})),
            1 => prop::sample::select(STRS).prop_map(|s| json!({"equals-ignore-case": s})),
            1 => prop::sample::select(&["*", "t*", "*1"][..]).prop_map(|s| json!({"wildcard": s})),
            1 => any::<bool>().prop_map(|b| json!({"exists": b})),
            1 => Just(json!({"numeric": [">", 0]})),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop::collection::vec(filter(), 1..3).prop_map(Value::Array)
    }

    fn object(m: std::collections::BTreeMap<&str, Value>) -> Map<String, Value> {
        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// A client pattern: fields under `detail` (and sometimes `source`), `$or` anywhere.
    fn client_pattern() -> impl Strategy<Value = Value> {
        let level = prop::collection::btree_map(prop::sample::select(KEYS), leaf(), 1..3)
            .prop_map(|m| Value::Object(object(m)));
        let level = level.prop_recursive(2, 12, 3, |inner| {
            (
                prop::collection::btree_map(prop::sample::select(KEYS), leaf(), 0..3),
                prop::option::weighted(0.4, prop::collection::vec(inner, 2..3)),
            )
                .prop_filter_map("an empty level", |(m, or)| {
                    let mut map = object(m);
                    if let Some(alts) = or {
                        map.insert("$or".into(), Value::Array(alts));
                    }
                    (!map.is_empty()).then_some(Value::Object(map))
                })
        });
        (
            level,
            prop::option::weighted(0.3, leaf()),
            prop::option::weighted(0.2, leaf()),
        )
            .prop_map(|(detail, source, whole_detail)| {
                let mut map = Map::new();
                map.insert("detail".into(), detail);
                if let Some(source) = source {
                    map.insert("source".into(), source);
                }
                if let Some(leaf) = whole_detail {
                    // `"detail": [...]` as a leaf: only in an `$or` beside the object form.
                    let mut alt = Map::new();
                    alt.insert("detail".into(), leaf);
                    let object = Value::Object(map.clone());
                    return json!({"$or": [object, Value::Object(alt)]});
                }
                Value::Object(map)
            })
    }

    /// A scope as an operator would write one: a tenant, an owner or public, or both.
    fn scope() -> impl Strategy<Value = Value> {
        let tenant = || prop::sample::select(&["t1", "t2"][..]);
        prop_oneof![
            tenant().prop_map(|t| json!({"detail": {"tenant": [t]}})),
            tenant().prop_map(|t| json!({"detail": {"tenant": [t, "public"]}})),
            tenant().prop_map(|t| json!({"$or": [
                {"detail": {"owner": [t]}},
                {"detail": {"tenant": ["public"]}}
            ]})),
            tenant().prop_map(|t| json!({"detail": {"tenant": [t], "n": [{"numeric": [">", 0]}]}})),
            tenant().prop_map(|t| json!({"detail": {"tenant": [{"prefix": t}]}})),
        ]
    }

    fn event_value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(2, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..3)
                    .prop_map(|m| Value::Object(object(m))),
            ]
        })
    }

    fn event() -> impl Strategy<Value = Value> {
        let detail = || {
            prop::collection::btree_map(prop::sample::select(KEYS), event_value(), 0..4)
                .prop_map(|m| Value::Object(object(m)))
        };
        (
            prop_oneof![
                4 => detail(),
                1 => prop::collection::vec(detail(), 0..3).prop_map(Value::Array),
                1 => scalar(),
            ],
            prop::sample::select(STRS),
        )
            .prop_map(|(detail, source)| json!({"source": source, "detail": detail}))
    }

    /// Removes `tenant` from an object, or from every object in an array.
    fn strip_tenant(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("tenant");
            }
            Value::Array(items) => items.iter_mut().for_each(strip_tenant),
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn a_scoped_rule_delivers_only_what_the_scope_allows(
            scope in scope(),
            client in client_pattern(),
            event in event(),
        ) {
            let scope = p(scope);
            let Ok(client) = Pattern::from_value(&client, &PatternLimits::default()) else {
                return Ok(());
            };
            let combined = scope.and(&client);
            let want = scope.matches(&event) && client.matches(&event);
            prop_assert_eq!(combined.matches(&event), want, "evaluated, event {}", event);
            prop_assert_eq!(indexed(&combined, &event), want, "indexed, event {}", event);
            // Argument order does not matter.
            prop_assert_eq!(client.and(&scope).matches(&event), want);
        }

        #[test]
        fn a_scope_on_a_missing_field_delivers_nothing(
            client in client_pattern(),
            event in event(),
        ) {
            let scope = p(json!({"detail": {"tenant": ["t1"]}}));
            let Ok(client) = Pattern::from_value(&client, &PatternLimits::default()) else {
                return Ok(());
            };
            let mut hidden = event.clone();
            if let Some(detail) = hidden.get_mut("detail") {
                strip_tenant(detail);
            }
            let combined = scope.and(&client);
            prop_assert!(!combined.matches(&hidden), "event {}", hidden);
            prop_assert!(!indexed(&combined, &hidden), "event {}", hidden);
        }
    }
}
