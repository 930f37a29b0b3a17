//! Property tests: for random patterns (every operator, `$or`, nesting) and random
//! events (arrays of objects included) the `RuleIndex` agrees with the reference
//! evaluator, also across random insert / remove / replace sequences.

use std::collections::BTreeMap;

use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleIndex};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &["a", "b", "c"];
const STRS: &[&str] = &[
    "", "a", "ab", "abc", "B", "Ab", "10.0.0.1", "10.1.0.1", "::1", "x.png", "ΣΑ", "σα", "abab",
    "aba", "bab", "baab", "xaxbx",
];
/// Wildcards with middle segments (shared Aho-Corasick scan of the negative index).
const WILDS: &[&str] = &[
    "*a*", "*ab*", "*b*a*", "a*b*", "*a*a*", "ab*b", "*ba*b", "b*a*b", "*x*b*", "*σ*", "a*", "*b",
    "*", "aba",
];
const NUMS: &[f64] = &[-1.0, 0.0, 1.0, 2.5, 3.0, 300.0, 1e20];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(STRS).prop_map(|s| json!(s)),
        prop::sample::select(NUMS).prop_map(|n| json!(n)),
        prop::sample::select(&[0i64, 1, 3, 300, -1][..]).prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn short() -> impl Strategy<Value = String> {
    prop::sample::select(&["", "a", "ab", "b", "A", "png", ".png", "σ", "Σ"][..])
        .prop_map(String::from)
}

fn num() -> impl Strategy<Value = f64> {
    prop::sample::select(NUMS)
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => scalar(),
        1 => short().prop_map(|s| json!({"prefix": s})),
        1 => short().prop_map(|s| json!({"suffix": s})),
        1 => short().prop_map(|s| json!({"prefix": {"equals-ignore-case": s}})),
        1 => short().prop_map(|s| json!({"suffix": {"equals-ignore-case": s}})),
        1 => short().prop_map(|s| json!({"equals-ignore-case": s})),
        1 => prop::sample::select(&["*", "a*", "*b", "a*b", "*a*", "ab", "a*\\**"][..]).prop_map(|s| json!({"wildcard": s})),
        1 => (prop::sample::select(&[">", ">=", "<", "<=", "="][..]), num()).prop_map(|(o, n)| json!({"numeric": [o, n]})),
        1 => (prop::sample::select(&[">", ">="][..]), num(), prop::sample::select(&["<", "<="][..]), num())
            .prop_map(|(o1, a, o2, b)| { let (a, b) = if a <= b { (a, b) } else { (b, a) }; json!({"numeric": [o1, a, o2, b + 1.0]}) }),
        1 => prop::sample::select(&["10.0.0.0/8", "10.0.0.0/16", "::/0", "0.0.0.0/0"][..]).prop_map(|s| json!({"cidr": s})),
        1 => any::<bool>().prop_map(|b| json!({"exists": b})),
        1 => short().prop_map(|s| json!({"anything-but": s})),
        1 => num().prop_map(|n| json!({"anything-but": [n, 3]})),
        1 => short().prop_map(|s| json!({"anything-but": {"prefix": s}})),
        1 => short().prop_map(|s| json!({"anything-but": {"suffix": [s, "z"]}})),
        1 => short().prop_map(|s| json!({"anything-but": {"equals-ignore-case": s}})),
        1 => prop::sample::select(&["a*", "*b"][..]).prop_map(|s| json!({"anything-but": {"wildcard": s}})),
        2 => prop::collection::vec(prop::sample::select(WILDS), 1..4).prop_map(|ws| json!({"anything-but": {"wildcard": ws}})),
        // Short lists are compared in place, lists over 8 go to the shared tables.
        1 => prop::collection::vec(short(), 1..12).prop_map(|ps| json!({"anything-but": {"prefix": ps}})),
        1 => prop::collection::vec(short(), 1..12).prop_map(|ps| json!({"anything-but": {"suffix": ps}})),
        1 => prop::collection::vec(short(), 1..12).prop_map(|ps| json!({"anything-but": {"equals-ignore-case": ps}})),
        1 => prop::collection::vec(prop::sample::select(STRS), 1..12).prop_map(|ps| json!({"anything-but": ps})),
        1 => prop::collection::vec(num(), 9..12).prop_map(|ns| json!({"anything-but": ns})),
        1 => prop::sample::select(WILDS).prop_map(|s| json!({"wildcard": s})),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop::collection::vec(filter(), 1..3).prop_map(Value::Array)
}

fn obj_pattern() -> impl Strategy<Value = Value> {
    let base = prop::collection::btree_map(prop::sample::select(KEYS), leaf(), 1..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    base.prop_recursive(3, 24, 3, |inner| {
        (
            prop::collection::btree_map(
                prop::sample::select(KEYS),
                prop_oneof![2 => leaf(), 1 => inner.clone()],
                1..3,
            ),
            prop::option::weighted(0.3, prop::collection::vec(inner, 2..4)),
        )
            .prop_map(|(m, or)| {
                let mut map: Map<String, Value> =
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                if let Some(alts) = or {
                    map.insert("$or".into(), Value::Array(alts));
                }
                Value::Object(map)
            })
    })
}

fn event_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..3).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn event() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(KEYS), event_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn compile(v: &Value) -> Option<Pattern> {
    Pattern::from_value(v, &PatternLimits::default()).ok()
}

fn check(
    idx: &RuleIndex<u8>,
    model: &BTreeMap<u8, Pattern>,
    ev: &Value,
) -> Result<(), TestCaseError> {
    let mut got = Vec::new();
    idx.matches(ev, &mut got);
    got.sort_unstable();
    let want: Vec<u8> = model
        .iter()
        .filter(|(_, p)| p.matches(ev))
        .map(|(k, _)| *k)
        .collect();
    prop_assert_eq!(&got, &want, "event {}", ev);
    let mut got_json = Vec::new();
    prop_assert!(idx.matches_json(&ev.to_string(), &mut got_json).is_ok());
    got_json.sort_unstable();
    prop_assert_eq!(got_json, want, "matches_json, event {}", ev);
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, Value),
    Remove(u8),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_oracle(pats in prop::collection::vec(obj_pattern(), 1..10),
                                events in prop::collection::vec(event(), 1..8)) {
        let mut idx = RuleIndex::new();
        let mut model = BTreeMap::new();
        for (i, p) in pats.iter().enumerate() {
            if let Some(p) = compile(p) {
                idx.insert(i as u8, &p);
                model.insert(i as u8, p);
            }
        }
        prop_assert_eq!(idx.len(), model.len());
        for ev in &events {
            check(&idx, &model, ev)?;
        }
    }

    #[test]
    fn index_survives_add_remove_replace(
        ops in prop::collection::vec(prop_oneof![
            3 => ((0u8..6), obj_pattern()).prop_map(|(k, p)| Op::Insert(k, p)),
            1 => (0u8..6).prop_map(Op::Remove),
        ], 1..20),
        events in prop::collection::vec(event(), 1..5)) {
        let mut idx = RuleIndex::new();
        let mut model = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Insert(k, p) => {
                    if let Some(p) = compile(p) {
                        idx.insert(*k, &p);
                        model.insert(*k, p);
                    }
                }
                Op::Remove(k) => {
                    prop_assert_eq!(idx.remove(*k), model.remove(k).is_some());
                }
            }
            prop_assert_eq!(idx.len(), model.len());
            for ev in &events {
                check(&idx, &model, ev)?;
            }
        }
    }

    #[test]
    fn parse_never_panics(text in ".{0,200}") {
        let _ = Pattern::parse(&text, &PatternLimits::default());
    }

    #[test]
    fn parse_random_json_never_panics(v in event_value()) {
        if let Ok(p) = Pattern::from_value(&v, &PatternLimits::default()) {
            let _ = p.matches(&v);
        }
    }
}
