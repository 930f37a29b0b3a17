//! The reference evaluator (the oracle): a direct recursive walk of pattern and event.
//! Simple on purpose; the [`super::RuleIndex`] must always agree with it.

use serde_json::Value;

use super::ast::{Bound, FieldPat, Matcher, ObjPat};
use super::values::{fold, Leaf, Num};

/// Arrays nested more than this many levels directly inside other arrays are ignored
/// (by the oracle and the index alike), so hostile events cannot exhaust the stack.
pub(crate) const MAX_ARRAY_NEST: usize = 64;

/// Calls `f` on every non-array element of `a`, flattening nested arrays; stops early
/// and returns true as soon as `f` does.
pub(crate) fn any_flat(a: &[Value], nest: usize, f: &mut dyn FnMut(&Value) -> bool) -> bool {
    for e in a {
        match e {
            Value::Array(inner) => {
                if nest < MAX_ARRAY_NEST && any_flat(inner, nest + 1, f) {
                    return true;
                }
            }
            other => {
                if f(other) {
                    return true;
                }
            }
        }
    }
    false
}

pub(crate) fn eval_obj(p: &ObjPat, v: Option<&Value>) -> bool {
    match v {
        Some(Value::Object(m)) => {
            p.fields
                .iter()
                .all(|(k, fp)| eval_field(fp, m.get(k.as_str())))
                && p.ors.iter().all(|g| g.iter().any(|alt| eval_obj(alt, v)))
        }
        Some(Value::Array(a)) => {
            let mut any_elem = false;
            let hit = any_flat(a, 0, &mut |e| {
                any_elem = true;
                eval_obj(p, Some(e))
            });
            hit || (!any_elem && eval_obj(p, None))
        }
        // A scalar where an object is expected: none of the nested fields exist.
        Some(_) | None => {
            p.fields.iter().all(|(_, fp)| eval_field(fp, None))
                && p.ors
                    .iter()
                    .all(|g| g.iter().any(|alt| eval_obj(alt, None)))
        }
    }
}

fn eval_field(fp: &FieldPat, c: Option<&Value>) -> bool {
    match fp {
        FieldPat::Obj(sub) => eval_obj(sub, c),
        FieldPat::Leaf(alts) => {
            let absent = || alts.iter().any(|m| matches!(m, Matcher::Exists(false)));
            match c {
                None | Some(Value::Object(_)) => absent(),
                Some(Value::Array(a)) => {
                    let mut any_leaf = false;
                    let hit = any_flat(a, 0, &mut |e| {
                        if e.is_object() {
                            return false;
                        }
                        any_leaf = true;
                        match_scalar(alts, e)
                    });
                    hit || (!any_leaf && absent())
                }
                Some(scalar) => match_scalar(alts, scalar),
            }
        }
    }
}

pub(crate) fn in_bounds(x: Num, lo: &Option<Bound>, hi: &Option<Bound>) -> bool {
    let lo_ok = match lo {
        Some(b) => {
            if b.inclusive {
                x >= b.value
            } else {
                x > b.value
            }
        }
        None => true,
    };
    let hi_ok = match hi {
        Some(b) => {
            if b.inclusive {
                x <= b.value
            } else {
                x < b.value
            }
        }
        None => true,
    };
    lo_ok && hi_ok
}

/// Does any alternative accept the scalar (non-array, non-object) event value `v`?
fn match_scalar(alts: &[Matcher], v: &Value) -> bool {
    Leaf::from_value(v).is_some_and(|leaf| alts.iter().any(|m| match_leaf(m, &leaf)))
}

/// Does one alternative accept one scalar event value?
pub(crate) fn match_leaf(m: &Matcher, v: &Leaf<'_>) -> bool {
    let s = v.as_str();
    match m {
        Matcher::Str(x) => s == Some(x.as_str()),
        Matcher::Num(n) => v.as_num() == Some(*n),
        Matcher::Bool(b) => matches!(v, Leaf::Bool(x) if x == b),
        Matcher::Null => matches!(v, Leaf::Null),
        Matcher::Prefix(p) => s.is_some_and(|s| s.starts_with(p.as_str())),
        Matcher::PrefixIc(p) => s.is_some_and(|s| fold(s).starts_with(p.as_str())),
        Matcher::Suffix(p) => s.is_some_and(|s| s.ends_with(p.as_str())),
        Matcher::SuffixIc(p) => s.is_some_and(|s| fold(s).ends_with(p.as_str())),
        Matcher::Eic(f) => s.is_some_and(|s| fold(s) == *f),
        Matcher::Wildcard(w) => s.is_some_and(|s| w.matches(s)),
        Matcher::Numeric { lo, hi } => v.as_num().is_some_and(|x| in_bounds(x, lo, hi)),
        Matcher::Cidr(c) => s.is_some_and(|s| c.contains_str(s)),
        Matcher::Exists(b) => *b,
        Matcher::AbStr(list) => !s.is_some_and(|s| list.iter().any(|x| x == s)),
        Matcher::AbNum(list) => !v.as_num().is_some_and(|x| list.contains(&x)),
        // As in EventBridge (event-ruler): a number, boolean or null has no string prefix,
        // suffix, case-folded form or glob match, so every such anything-but accepts it.
        Matcher::AbPrefix(list) => {
            !s.is_some_and(|s| list.iter().any(|p| s.starts_with(p.as_str())))
        }
        Matcher::AbSuffix(list) => !s.is_some_and(|s| list.iter().any(|p| s.ends_with(p.as_str()))),
        Matcher::AbEic(list) => !s.is_some_and(|s| {
            let f = fold(s);
            list.iter().any(|x| x.as_str() == f)
        }),
        Matcher::AbWildcard(list) => !s.is_some_and(|s| list.iter().any(|w| w.matches(s))),
    }
}
