//! The validated pattern tree and its parser (JSON value -> tree, with every error
//! carrying the dotted path inside the pattern).

use serde_json::{Map, Value};

use super::values::{fold, Cidr, Num, Wildcard};
use super::{PatternError, PatternLimits};

/// One object level of a pattern: every field AND every `$or` group must match. Equality is
/// structural (same fields in the same order, same matchers): equal trees match the same events.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ObjPat {
    pub(crate) fields: Vec<(String, FieldPat)>,
    /// Each group is an OR of object patterns (evaluated at this same event level).
    pub(crate) ors: Vec<Vec<ObjPat>>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FieldPat {
    Obj(ObjPat),
    Leaf(std::sync::Arc<[Matcher]>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bound {
    pub(crate) value: Num,
    pub(crate) inclusive: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Matcher {
    Str(String),
    Num(Num),
    Bool(bool),
    Null,
    Prefix(String),
    /// Folded prefix.
    PrefixIc(String),
    Suffix(String),
    /// Folded suffix.
    SuffixIc(String),
    /// Folded value.
    Eic(String),
    Wildcard(Wildcard),
    /// At least one bound is present (`=` becomes `Num`).
    Numeric {
        lo: Option<Bound>,
        hi: Option<Bound>,
    },
    Cidr(Cidr),
    Exists(bool),
    AbStr(Vec<String>),
    AbNum(Vec<Num>),
    AbPrefix(Vec<String>),
    AbSuffix(Vec<String>),
    /// Folded values.
    AbEic(Vec<String>),
    AbWildcard(Vec<Wildcard>),
}

impl Matcher {
    /// Can this alternative be found by a positive index lookup (a leaf value must be
    /// present at the path and satisfy it)?
    pub(crate) fn indexable(&self) -> bool {
        !matches!(
            self,
            Matcher::Exists(false)
                | Matcher::AbStr(_)
                | Matcher::AbNum(_)
                | Matcher::AbPrefix(_)
                | Matcher::AbSuffix(_)
                | Matcher::AbEic(_)
                | Matcher::AbWildcard(_)
        )
    }
}

/// Field names that event-ruler (the library behind EventBridge) reserves inside `$or`
/// alternatives: its operator names and the words it keeps for future operators. A field
/// with one of these names inside a `$or` alternative (at any depth) is refused, as there.
const RESERVED_IN_OR: &[&str] = &[
    "exactly",
    "equals-ignore-case",
    "prefix",
    "suffix",
    "anything-but",
    "exists",
    "wildcard",
    "numeric",
    "cidr",
    "=",
    "<",
    "<=",
    ">",
    ">=",
    "regex",
    "not-wildcard",
    "not-equals-ignore-case",
    "date-after",
    "date-on-or-after",
    "date-before",
    "date-on-or-before",
    "in-date-range",
    "ip-address-in-range",
    "ip-address-not-in-range",
];

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

fn err(path: &str, reason: impl Into<String>) -> PatternError {
    PatternError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Short JSON rendering of a value for error messages (truncated).
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let t: String = s.chars().take(57).collect();
        format!("{t}...")
    } else {
        s
    }
}

/// Conjunction/value counting for the `max_alternatives` limit:
/// (number of conjunctions after `$or` expansion, total values over all of them).
#[derive(Clone, Copy)]
struct Count {
    conj: usize,
    values: usize,
}

impl Count {
    fn and(self, o: Count) -> Count {
        Count {
            conj: self.conj.saturating_mul(o.conj),
            values: self
                .values
                .saturating_mul(o.conj)
                .saturating_add(o.values.saturating_mul(self.conj)),
        }
    }
}

pub(crate) struct Parser<'a> {
    pub(crate) limits: &'a PatternLimits,
}

impl Parser<'_> {
    pub(crate) fn top(&self, v: &Value) -> Result<ObjPat, PatternError> {
        let Value::Object(map) = v else {
            return Err(err(
                "",
                format!("a pattern must be a JSON object, got {}", show(v)),
            ));
        };
        let (obj, count) = self.obj(map, "", 1, false)?;
        if count.values > self.limits.max_alternatives {
            return Err(err(
                "",
                format!(
                    "pattern has {} values after $or expansion, more than the max_alternatives limit of {}",
                    count.values, self.limits.max_alternatives
                ),
            ));
        }
        Ok(obj)
    }

    fn obj(
        &self,
        map: &Map<String, Value>,
        path: &str,
        depth: usize,
        in_or: bool,
    ) -> Result<(ObjPat, Count), PatternError> {
        if depth > self.limits.max_depth {
            return Err(err(
                path,
                format!(
                    "pattern nests deeper than the max_depth limit of {}",
                    self.limits.max_depth
                ),
            ));
        }
        if map.is_empty() {
            return Err(err(
                path,
                "empty object: a pattern object needs at least one field",
            ));
        }
        let mut obj = ObjPat {
            fields: Vec::new(),
            ors: Vec::new(),
        };
        let mut count = Count { conj: 1, values: 0 };
        for (k, v) in map {
            if k == "$or" {
                let Value::Array(alts) = v else {
                    return Err(err(
                        &join(path, k),
                        format!(
                            "\"$or\" needs an array of at least two patterns, got {}",
                            show(v)
                        ),
                    ));
                };
                if alts.len() < 2 {
                    return Err(err(
                        &join(path, k),
                        format!(
                            "\"$or\" needs an array of at least two patterns, got {} alternative(s)",
                            alts.len()
                        ),
                    ));
                }
                let mut group = Vec::with_capacity(alts.len());
                let mut gc = Count { conj: 0, values: 0 };
                for (i, alt) in alts.iter().enumerate() {
                    let ap = join(path, &format!("$or[{i}]"));
                    let Value::Object(am) = alt else {
                        return Err(err(
                            &ap,
                            format!(
                                "a \"$or\" alternative must be a pattern object, got {}",
                                show(alt)
                            ),
                        ));
                    };
                    let (o, c) = self.obj(am, &ap, depth + 1, true)?;
                    gc.conj = gc.conj.saturating_add(c.conj);
                    gc.values = gc.values.saturating_add(c.values);
                    group.push(o);
                }
                count = count.and(gc);
                obj.ors.push(group);
                continue;
            }
            let fp = join(path, k);
            if in_or && RESERVED_IN_OR.contains(&k.as_str()) {
                return Err(err(
                    &fp,
                    format!(
                        "{k:?} is a reserved operator name and cannot be a field name inside \"$or\" (as in EventBridge)"
                    ),
                ));
            }
            match v {
                Value::Null => {}
                Value::Object(m) => {
                    let (o, c) = self.obj(m, &fp, depth + 1, in_or)?;
                    count = count.and(c);
                    obj.fields.push((k.clone(), FieldPat::Obj(o)));
                }
                Value::Array(a) => {
                    let (ms, n) = self.leaf(a, &fp)?;
                    count = count.and(Count { conj: 1, values: n });
                    obj.fields.push((k.clone(), FieldPat::Leaf(ms.into())));
                }
                other => {
                    return Err(err(
                        &fp,
                        format!(
                            "a leaf must be an array of values or filters, got {}",
                            show(other)
                        ),
                    ))
                }
            }
            if count.values > self.limits.max_alternatives {
                return Err(err(
                    &fp,
                    format!(
                        "pattern has more than the max_alternatives limit of {} values",
                        self.limits.max_alternatives
                    ),
                ));
            }
        }
        if obj.fields.is_empty() && obj.ors.is_empty() {
            return Err(err(
                path,
                "pattern has only null fields, so it would match every event",
            ));
        }
        Ok((obj, count))
    }

    fn leaf(&self, a: &[Value], path: &str) -> Result<(Vec<Matcher>, usize), PatternError> {
        if a.is_empty() {
            return Err(err(path, "a leaf array must not be empty"));
        }
        let mut out = Vec::with_capacity(a.len());
        let mut n = 0usize;
        for v in a {
            let m = match v {
                Value::String(s) => Matcher::Str(s.clone()),
                Value::Number(num) => match Num::from_json(num) {
                    Some(x) => Matcher::Num(x),
                    None => return Err(err(path, format!("number {num} is out of range"))),
                },
                Value::Bool(b) => Matcher::Bool(*b),
                Value::Null => Matcher::Null,
                Value::Array(_) => {
                    return Err(err(
                        path,
                        format!("nested arrays are not allowed in a leaf, got {}", show(v)),
                    ))
                }
                Value::Object(m) => self.filter(m, path)?,
            };
            n = n.saturating_add(match &m {
                Matcher::AbStr(v)
                | Matcher::AbPrefix(v)
                | Matcher::AbSuffix(v)
                | Matcher::AbEic(v) => v.len(),
                Matcher::AbNum(v) => v.len(),
                Matcher::AbWildcard(v) => v.len(),
                _ => 1,
            });
            out.push(m);
        }
        Ok((out, n))
    }

    fn wildcard(&self, s: &str, path: &str) -> Result<Wildcard, PatternError> {
        let w = Wildcard::parse(s).map_err(|r| err(path, r))?;
        if w.stars() > self.limits.max_wildcard_stars {
            return Err(err(
                path,
                format!(
                    "\"wildcard\" {s:?} has {} wildcard characters, more than the max_wildcard_stars limit of {}",
                    w.stars(),
                    self.limits.max_wildcard_stars
                ),
            ));
        }
        Ok(w)
    }

    fn filter(&self, m: &Map<String, Value>, path: &str) -> Result<Matcher, PatternError> {
        let mut it = m.iter();
        let Some((op, v)) = it.next() else {
            return Err(err(
                path,
                "empty filter object {}: a filter needs exactly one operator",
            ));
        };
        if m.len() > 1 {
            let ops: Vec<String> = m.keys().map(|k| format!("{k:?}")).collect();
            return Err(err(
                path,
                format!(
                    "a filter must have exactly one operator, got {}",
                    ops.join(", ")
                ),
            ));
        }
        let need_str = |what: &str| err(path, format!("\"{op}\" needs {what}, got {}", show(v)));
        match op.as_str() {
            "prefix" | "suffix" => {
                let is_prefix = op == "prefix";
                match v {
                    Value::String(s) => Ok(if is_prefix {
                        Matcher::Prefix(s.clone())
                    } else {
                        Matcher::Suffix(s.clone())
                    }),
                    Value::Object(inner) if inner.len() == 1 => match inner.get("equals-ignore-case") {
                        Some(Value::String(s)) => Ok(if is_prefix {
                            Matcher::PrefixIc(fold(s).into_owned())
                        } else {
                            Matcher::SuffixIc(fold(s).into_owned())
                        }),
                        _ => Err(need_str(
                            "a string or {\"equals-ignore-case\": string}",
                        )),
                    },
                    _ => Err(need_str("a string or {\"equals-ignore-case\": string}")),
                }
            }
            "equals-ignore-case" => match v {
                Value::String(s) => Ok(Matcher::Eic(fold(s).into_owned())),
                _ => Err(need_str("a string")),
            },
            "wildcard" => match v {
                Value::String(s) => Ok(Matcher::Wildcard(self.wildcard(s, path)?)),
                _ => Err(need_str("a string")),
            },
            "cidr" => match v {
                Value::String(s) => Ok(Matcher::Cidr(Cidr::parse(s).map_err(|r| err(path, r))?)),
                _ => Err(need_str("a string such as \"10.0.0.0/24\"")),
            },
            "exists" => match v {
                Value::Bool(b) => Ok(Matcher::Exists(*b)),
                _ => Err(need_str("true or false")),
            },
            "numeric" => self.numeric(v, path),
            "anything-but" => self.anything_but(v, path),
            other => Err(err(
                path,
                format!(
                    "unknown operator {other:?} (expected one of prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, cidr, exists)"
                ),
            )),
        }
    }

    fn numeric(&self, v: &Value, path: &str) -> Result<Matcher, PatternError> {
        let Value::Array(a) = v else {
            return Err(err(
                path,
                format!(
                    "\"numeric\" needs an array like [\">\", 0, \"<=\", 5], got {}",
                    show(v)
                ),
            ));
        };
        let got = || {
            let parts: Vec<String> = a.iter().map(show).collect();
            parts.join(", ")
        };
        let shape = || {
            err(
                path,
                format!("\"numeric\" needs an operator and a number, got {}", got()),
            )
        };
        if a.len() != 2 && a.len() != 4 {
            return Err(shape());
        }
        let mut pairs = Vec::new();
        for chunk in a.chunks(2) {
            let (Some(Value::String(op)), Some(Value::Number(n))) = (chunk.first(), chunk.get(1))
            else {
                return Err(shape());
            };
            let num = Num::from_json(n)
                .ok_or_else(|| err(path, format!("number {n} is out of range")))?;
            if !matches!(op.as_str(), "<" | "<=" | "=" | ">" | ">=") {
                return Err(err(
                    path,
                    format!("\"numeric\" has unknown operator {op:?} (expected <, <=, =, >, >=)"),
                ));
            }
            pairs.push((op.as_str(), num));
        }
        match pairs.as_slice() {
            [("=", n)] => Ok(Matcher::Num(*n)),
            [(op, n)] => {
                let b = Bound {
                    value: *n,
                    inclusive: op.ends_with('='),
                };
                if op.starts_with('>') {
                    Ok(Matcher::Numeric {
                        lo: Some(b),
                        hi: None,
                    })
                } else {
                    Ok(Matcher::Numeric {
                        lo: None,
                        hi: Some(b),
                    })
                }
            }
            [(op1, n1), (op2, n2)] => {
                if !op1.starts_with('>') || !op2.starts_with('<') {
                    return Err(err(
                        path,
                        format!(
                            "\"numeric\" with two comparisons needs a lower bound (> or >=) then an upper bound (< or <=), got {}",
                            got()
                        ),
                    ));
                }
                let lo = Bound {
                    value: *n1,
                    inclusive: op1.ends_with('='),
                };
                let hi = Bound {
                    value: *n2,
                    inclusive: op2.ends_with('='),
                };
                let empty = if lo.inclusive && hi.inclusive {
                    lo.value > hi.value
                } else {
                    lo.value >= hi.value
                };
                if empty {
                    return Err(err(path, format!("\"numeric\" range is empty: {}", got())));
                }
                Ok(Matcher::Numeric {
                    lo: Some(lo),
                    hi: Some(hi),
                })
            }
            _ => Err(shape()),
        }
    }

    fn anything_but(&self, v: &Value, path: &str) -> Result<Matcher, PatternError> {
        let strs = |v: &Value, what: &str| -> Result<Vec<String>, PatternError> {
            match v {
                Value::String(s) => Ok(vec![s.clone()]),
                Value::Array(a) if !a.is_empty() => a
                    .iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(err(
                            path,
                            format!(
                                "\"anything-but\" {what} needs a string or a non-empty list of strings, got {}",
                                show(v)
                            ),
                        )),
                    })
                    .collect(),
                _ => Err(err(
                    path,
                    format!(
                        "\"anything-but\" {what} needs a string or a non-empty list of strings, got {}",
                        show(v)
                    ),
                )),
            }
        };
        match v {
            Value::String(s) => Ok(Matcher::AbStr(vec![s.clone()])),
            Value::Number(n) => Ok(Matcher::AbNum(vec![Num::from_json(n)
                .ok_or_else(|| err(path, format!("number {n} is out of range")))?])),
            Value::Array(a) => {
                if a.is_empty() {
                    return Err(err(path, "\"anything-but\" list must not be empty"));
                }
                if a.iter().all(Value::is_string) {
                    Ok(Matcher::AbStr(
                        a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
                    ))
                } else if a.iter().all(Value::is_number) {
                    let mut ns = Vec::with_capacity(a.len());
                    for x in a {
                        ns.push(
                            Num::from_value(x)
                                .ok_or_else(|| err(path, format!("number {x} is out of range")))?,
                        );
                    }
                    Ok(Matcher::AbNum(ns))
                } else {
                    Err(err(
                        path,
                        format!(
                            "\"anything-but\" list must be all strings or all numbers, got {}",
                            show(v)
                        ),
                    ))
                }
            }
            Value::Object(m) => {
                let mut it = m.iter();
                let (Some((op, inner)), None) = (it.next(), it.next()) else {
                    return Err(err(
                        path,
                        format!(
                            "\"anything-but\" object needs exactly one of prefix, suffix, equals-ignore-case, wildcard, got {}",
                            show(v)
                        ),
                    ));
                };
                let affixes = |what: &str| -> Result<Vec<String>, PatternError> {
                    let list = strs(inner, what)?;
                    if list.iter().any(String::is_empty) {
                        // Every string has the empty prefix/suffix, so the filter could
                        // never match a string; refused, as in EventBridge.
                        return Err(err(
                            path,
                            format!("\"anything-but\" {what} must not be an empty string"),
                        ));
                    }
                    Ok(list)
                };
                match op.as_str() {
                    "prefix" => Ok(Matcher::AbPrefix(affixes("prefix")?)),
                    "suffix" => Ok(Matcher::AbSuffix(affixes("suffix")?)),
                    "equals-ignore-case" => Ok(Matcher::AbEic(
                        strs(inner, "equals-ignore-case")?.iter().map(|s| fold(s).into_owned()).collect(),
                    )),
                    "wildcard" => {
                        let ss = strs(inner, "wildcard")?;
                        let mut ws = Vec::with_capacity(ss.len());
                        for s in &ss {
                            ws.push(self.wildcard(s, path)?);
                        }
                        Ok(Matcher::AbWildcard(ws))
                    }
                    other => Err(err(
                        path,
                        format!(
                            "unknown operator {other:?} inside \"anything-but\" (expected prefix, suffix, equals-ignore-case or wildcard)"
                        ),
                    )),
                }
            }
            _ => Err(err(
                path,
                format!(
                    "\"anything-but\" needs a string, a number, a non-empty list of strings or numbers, or an object, got {}",
                    show(v)
                ),
            )),
        }
    }
}
