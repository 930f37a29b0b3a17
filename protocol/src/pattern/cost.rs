//! The price of a rule, computed once when its pattern is compiled: a matching **cost**
//! (the work a [`super::RuleIndex`] may do for the rule on one event) and a memory
//! **weight** (an upper bound of the heap bytes the rule holds in the index), and the
//! per-connection budgets they are checked against ([`RuleBudget`]). I/O-free; the
//! gateway keeps each connection's running totals.
//!
//! **Cost** is counted in steps of about one table probe or one short comparison, for the
//! worst case where the rule is a candidate on every event (a hostile client can always
//! pick values every event carries, such as `"version": ["0"]`). Each conjunction (after
//! `$or` is multiplied out) costs [`CONJ_STEPS`] plus, for every clause, its
//! alternatives: one step for an exact value, prefix, suffix, numeric range or `exists`;
//! two for a CIDR block; four for the `equals-ignore-case` forms (they fold the event
//! string); `2 + 2 × stars` for a `wildcard` (confirmed per rule); and for the
//! `anything-but` forms, whose values sit in shared per-path tables (see `negative`), one
//! step plus one per 16 listed strings or numbers, one per listed prefix/suffix (one probe
//! per length) and `1 + middle segments` per listed wildcard (its placement after the
//! shared scan).
//!
//! **Weight** adds, for every allocation the compiled pattern and its index entries make,
//! its size rounded up and the allocator's per-chunk overhead, with hash tables and
//! vectors at their worst growth (half empty). It assumes every path of the rule is new
//! to the index. `protocol/tests/rule_weight.rs` measures the real heap with a counting
//! allocator and checks that the weight stays above it.

use std::collections::HashSet;
use std::fmt;

use super::ast::{FieldPat, Matcher, ObjPat};
use super::Pattern;

/// Steps per conjunction: its record, the candidate bookkeeping and the confirmation.
pub const CONJ_STEPS: u64 = 2;

/// What one rule costs (see the module documentation for the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleCost {
    /// Matching steps per event, worst case.
    pub cost: u64,
    /// Upper bound of the heap bytes the rule holds (compiled pattern and index entries).
    pub bytes: u64,
}

impl std::ops::Add for RuleCost {
    type Output = RuleCost;
    fn add(self, o: RuleCost) -> RuleCost {
        RuleCost {
            cost: self.cost.saturating_add(o.cost),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }
}

/// Per-connection budgets on rule cost and weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleBudget {
    /// Highest cost of one rule.
    pub max_rule_cost: u64,
    /// Highest total cost of one connection's rules.
    pub max_connection_cost: u64,
    /// Highest total weight (bytes) of one connection's rules.
    pub max_connection_rule_bytes: u64,
}

impl Default for RuleBudget {
    /// Every pattern of `docs/patterns.md` and `protocol/vectors/patterns.json` fits
    /// alone (the largest costs 258 and weighs 71 KiB), and so do 100 simple rules
    /// (about 3.4 KiB and 3-5 steps each); see `docs/operations.md` for the arithmetic.
    fn default() -> Self {
        RuleBudget {
            max_rule_cost: 1_000,
            max_connection_cost: 1_000,
            max_connection_rule_bytes: 512 * 1024,
        }
    }
}

/// A rule refused by a budget. Displays as the `Ack` error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("pattern too complex: its matching cost is {cost}, over the max_rule_cost budget of {limit} by {}", cost - limit)]
    RuleCost { cost: u64, limit: u64 },
    #[error("pattern too complex: it would bring this connection's matching cost to {total}, over the max_connection_cost budget of {limit} by {}", total - limit)]
    ConnectionCost { total: u64, limit: u64 },
    #[error("pattern too complex: it would bring this connection's rules to {total} bytes, over the max_connection_rule_bytes budget of {limit} by {}", total - limit)]
    ConnectionBytes { total: u64, limit: u64 },
}

impl BudgetError {
    /// The configuration key of the budget (a metric label).
    pub fn budget(&self) -> &'static str {
        match self {
            BudgetError::RuleCost { .. } => "max_rule_cost",
            BudgetError::ConnectionCost { .. } => "max_connection_cost",
            BudgetError::ConnectionBytes { .. } => "max_connection_rule_bytes",
        }
    }
}

impl RuleBudget {
    /// May a connection whose other rules total `held` add a rule costing `rule`?
    pub fn admit(&self, held: RuleCost, rule: RuleCost) -> Result<(), BudgetError> {
        if rule.cost > self.max_rule_cost {
            return Err(BudgetError::RuleCost {
                cost: rule.cost,
                limit: self.max_rule_cost,
            });
        }
        let total = held + rule;
        if total.cost > self.max_connection_cost {
            return Err(BudgetError::ConnectionCost {
                total: total.cost,
                limit: self.max_connection_cost,
            });
        }
        if total.bytes > self.max_connection_rule_bytes {
            return Err(BudgetError::ConnectionBytes {
                total: total.bytes,
                limit: self.max_connection_rule_bytes,
            });
        }
        Ok(())
    }
}

impl Pattern {
    /// The rule's matching cost and memory weight.
    pub fn cost(&self) -> RuleCost {
        let t = obj(&self.root);
        let mut paths = HashSet::new();
        distinct_paths(&self.root, &mut Vec::new(), &mut paths);
        let nodes: u64 = paths
            .iter()
            .map(|p| NODE_BYTES + 2 * alloc(p.last().map_or(0, |k| k.len() as u64)))
            .sum();
        RuleCost {
            cost: t
                .conj_cost
                .saturating_add(t.conj.saturating_mul(CONJ_STEPS)),
            // The pattern's compact text is kept with the rule (the admin console shows it).
            bytes: RULE_BYTES
                .saturating_add(alloc(self.source.len() as u64))
                .saturating_add(nodes)
                .saturating_add(t.ast_bytes)
                .saturating_add(t.conj_bytes)
                .saturating_add(t.conj.saturating_mul(CONJ_BYTES)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Weight constants (bytes). An allocation of n bytes takes `alloc(n)` from glibc: n plus an
// 8-byte header, rounded up to 16, and at least 32.

/// Per rule: its slot in the index (pattern, conjunction list, keys), the dispatcher's
/// entry (owner, name, per-connection map slot, match scratch) and the pattern's root.
const RULE_BYTES: u64 = 640;
/// Per conjunction: its 64-byte record in a vector that may be half empty, its
/// out-of-line checks box and its slot in the rule's list.
const CONJ_BYTES: u64 = 256;
/// Per field of an object level: its AST entry.
const FIELD_BYTES: u64 = 96;
/// Per distinct path (every prefix of every leaf path): a trie node (struct, children-map
/// slot in its parent, the short child list, the per-path lookup tables).
const NODE_BYTES: u64 = 1_792;
/// Per object level of the AST.
const OBJ_BYTES: u64 = 128;
/// Per alternative: the `Matcher` in its clause array and, when the clause is the one
/// registered, its posting (a hash-table slot at half load and a small vector).
const ALT_BYTES: u64 = 224;
/// Per `anything-but` value: its key in a shared exclusion table (slot at half load,
/// owned key, entry list) and its string in the AST.
const AB_VALUE_BYTES: u64 = 192;
/// Per clause that is not all positive (a negative clause record and its list entries).
const NEG_CLAUSE_BYTES: u64 = 192;
/// Per `anything-but` wildcard: the AST segments and its item in the shared set.
const AB_WILD_BYTES: u64 = 256;
/// Per middle segment of an `anything-but` wildcard: the segment record, its id-map slot
/// and its states in an Aho-Corasick automaton, plus this per byte of it.
const SEG_BYTES: u64 = 192;
const SEG_BYTE_BYTES: u64 = 48;

fn alloc(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        (n + 8).div_ceil(16).max(2) * 16
    }
}

/// A pattern subtree's totals. `conj` conjunctions; `conj_cost` / `conj_bytes` are summed
/// over all of them (a clause shared by several conjunctions counts once per
/// conjunction: each checks it and encodes it); `ast_bytes` counts once.
#[derive(Clone, Copy)]
struct Tally {
    conj: u64,
    conj_cost: u64,
    conj_bytes: u64,
    ast_bytes: u64,
}

impl Tally {
    /// Both subtrees hold (conjunctions multiply).
    fn and(self, o: Tally) -> Tally {
        Tally {
            conj: self.conj.saturating_mul(o.conj),
            conj_cost: self
                .conj_cost
                .saturating_mul(o.conj)
                .saturating_add(o.conj_cost.saturating_mul(self.conj)),
            conj_bytes: self
                .conj_bytes
                .saturating_mul(o.conj)
                .saturating_add(o.conj_bytes.saturating_mul(self.conj)),
            ast_bytes: self.ast_bytes.saturating_add(o.ast_bytes),
        }
    }

    /// Either subtree holds (conjunctions add up).
    fn or(self, o: Tally) -> Tally {
        Tally {
            conj: self.conj.saturating_add(o.conj),
            conj_cost: self.conj_cost.saturating_add(o.conj_cost),
            conj_bytes: self.conj_bytes.saturating_add(o.conj_bytes),
            ast_bytes: self.ast_bytes.saturating_add(o.ast_bytes),
        }
    }
}

/// Every prefix of every field path of the pattern (the trie nodes it may create).
fn distinct_paths<'a>(p: &'a ObjPat, prefix: &mut Vec<&'a str>, out: &mut HashSet<Vec<&'a str>>) {
    for (key, fp) in &p.fields {
        prefix.push(key);
        out.insert(prefix.clone());
        if let FieldPat::Obj(o) = fp {
            distinct_paths(o, prefix, out);
        }
        prefix.pop();
    }
    for group in &p.ors {
        for alt in group {
            distinct_paths(alt, prefix, out);
        }
    }
}

fn obj(p: &ObjPat) -> Tally {
    let mut t = Tally {
        conj: 1,
        conj_cost: 0,
        conj_bytes: 0,
        ast_bytes: OBJ_BYTES,
    };
    for (key, fp) in &p.fields {
        let key_len = key.len() as u64;
        let field = Tally {
            conj: 1,
            conj_cost: 0,
            conj_bytes: 0,
            // The AST key (the node's own copies count with the node).
            ast_bytes: FIELD_BYTES + alloc(key_len),
        };
        let sub = match fp {
            FieldPat::Obj(o) => obj(o),
            FieldPat::Leaf(alts) => clause(alts),
        };
        t = t.and(field.and(sub));
    }
    for group in &p.ors {
        let mut g: Option<Tally> = None;
        for alt in group {
            let a = obj(alt);
            g = Some(match g {
                Some(g) => g.or(a),
                None => a,
            });
        }
        if let Some(g) = g {
            t = t.and(g);
        }
    }
    t
}

/// One clause (a leaf array): its alternatives.
fn clause(alts: &[Matcher]) -> Tally {
    let mut cost = 0u64;
    // Checks encoding of the clause (copied into every conjunction): node id, count, and
    // per alternative a tag, a length and the bytes; or a shared array reference.
    let mut check_bytes = 8u64;
    let mut ast = alloc(16 + 48 * alts.len() as u64);
    let mut negative = false;
    for m in alts {
        let (c, a, chk, neg) = alternative(m);
        cost = cost.saturating_add(c);
        ast = ast.saturating_add(a);
        check_bytes = check_bytes.saturating_add(chk);
        negative |= neg;
    }
    if negative {
        ast = ast.saturating_add(NEG_CLAUSE_BYTES);
    }
    Tally {
        conj: 1,
        conj_cost: cost,
        conj_bytes: alloc(check_bytes),
        ast_bytes: ast,
    }
}

fn str_list(list: &[String]) -> u64 {
    alloc(24 * list.len() as u64)
        + list
            .iter()
            .map(|s| AB_VALUE_BYTES + 2 * alloc(s.len() as u64))
            .sum::<u64>()
}

/// (cost, bytes held once, check-encoding bytes per conjunction, negative?) of one
/// alternative.
fn alternative(m: &Matcher) -> (u64, u64, u64, bool) {
    let s = |x: &String| x.len() as u64;
    match m {
        Matcher::Str(x) | Matcher::Prefix(x) | Matcher::Suffix(x) => {
            (1, ALT_BYTES + 2 * alloc(s(x)), 3 + s(x), false)
        }
        Matcher::PrefixIc(x) | Matcher::SuffixIc(x) | Matcher::Eic(x) => {
            (4, ALT_BYTES + 2 * alloc(s(x)), 0, false)
        }
        Matcher::Num(_) | Matcher::Bool(_) | Matcher::Null | Matcher::Exists(true) => {
            (1, ALT_BYTES, 0, false)
        }
        Matcher::Numeric { .. } => (1, ALT_BYTES, 1 + 18, false),
        Matcher::Cidr(_) => (2, ALT_BYTES, 0, false),
        Matcher::Exists(false) => (1, ALT_BYTES, 0, true),
        Matcher::Wildcard(w) => {
            let stars = w.stars() as u64;
            // The AST's segments, and a copy in the posting lists.
            let segs: u64 = w.segs.iter().map(|x| alloc(s(x))).sum();
            let bytes = ALT_BYTES + 2 * (alloc(24 * w.segs.len() as u64) + segs);
            (2 + 2 * stars, bytes, 0, false)
        }
        Matcher::AbStr(list) | Matcher::AbEic(list) => (
            1 + list.len() as u64 / 16,
            ALT_BYTES + str_list(list),
            0,
            true,
        ),
        Matcher::AbNum(list) => (
            1 + list.len() as u64 / 16,
            ALT_BYTES + alloc(32 * list.len() as u64) + AB_VALUE_BYTES * list.len() as u64,
            0,
            true,
        ),
        Matcher::AbPrefix(list) | Matcher::AbSuffix(list) => {
            (1 + list.len() as u64, ALT_BYTES + str_list(list), 0, true)
        }
        Matcher::AbWildcard(list) => {
            let mut cost = 1u64;
            let mut bytes = ALT_BYTES + alloc(24 * list.len() as u64);
            for w in list {
                let mids = w.segs.len().saturating_sub(2) as u64;
                cost = cost.saturating_add(1 + mids);
                let seg_bytes: u64 = w.segs.iter().map(|x| alloc(s(x))).sum();
                // AST segments; the item's first and last copies and middle-id list.
                bytes = bytes
                    .saturating_add(AB_WILD_BYTES)
                    .saturating_add(alloc(24 * w.segs.len() as u64) + 2 * seg_bytes)
                    .saturating_add(alloc(4 * mids));
                let n = w.segs.len();
                if n > 2 {
                    for x in &w.segs[1..n - 1] {
                        bytes = bytes
                            .saturating_add(SEG_BYTES)
                            .saturating_add(2 * alloc(s(x)))
                            .saturating_add(SEG_BYTE_BYTES * s(x));
                    }
                }
            }
            (cost, bytes, 0, true)
        }
    }
}

impl fmt::Display for RuleCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cost {}, {} bytes", self.cost, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::PatternLimits;
    use serde_json::json;

    fn cost(v: serde_json::Value) -> RuleCost {
        match Pattern::from_value(&v, &PatternLimits::default()) {
            Ok(p) => p.cost(),
            Err(e) => panic!("{v}: {e}"),
        }
    }

    #[test]
    fn simple_rules_are_cheap() {
        let c = cost(json!({"source": ["aws.ec2"]}));
        assert_eq!(c.cost, CONJ_STEPS + 1);
        assert!(c.bytes < 4 * 1024, "{c}");
        let c = cost(json!({"source": ["a"], "detail-type": ["b", "c"]}));
        assert_eq!(c.cost, CONJ_STEPS + 3);
    }

    #[test]
    fn or_multiplies_conjunctions() {
        let one = cost(json!({"a": ["x"], "$or": [{"b": ["1"]}, {"c": ["2"]}]}));
        // Two conjunctions, each with two one-step clauses.
        assert_eq!(one.cost, 2 * (CONJ_STEPS + 2));
        let nested = cost(json!({
            "$or": [{"a": ["1"]}, {"b": ["2"]}, {"c": ["3"]}],
            "d": {"$or": [{"e": ["4"]}, {"f": ["5"]}]}
        }));
        assert_eq!(nested.cost, 6 * (CONJ_STEPS + 2));
    }

    #[test]
    fn expensive_operators_cost_more() {
        let exact = cost(json!({"a": ["x"]})).cost;
        let wild = cost(json!({"a": [{"wildcard": "*x*y*z*"}]})).cost;
        let eic = cost(json!({"a": [{"equals-ignore-case": "x"}]})).cost;
        assert!(wild > eic && eic > exact, "{wild} {eic} {exact}");
        let list: Vec<String> = (0..256).map(|i| format!("*ab{i}*")).collect();
        let hostile = cost(json!({"source": [{"anything-but": {"wildcard": list}}]}));
        assert_eq!(hostile.cost, CONJ_STEPS + 1 + 256 * 2);
        // The attack: a connection at the default budget holds few of them.
        let b = RuleBudget::default();
        assert!(b.max_connection_cost / hostile.cost <= 2);
        let strs: Vec<String> = (0..256).map(|i| format!("value-{i}")).collect();
        let ab = cost(json!({"source": [{"anything-but": strs.clone()}]}));
        assert_eq!(ab.cost, CONJ_STEPS + 1 + 16);
        let exact = cost(json!({"source": strs}));
        assert_eq!(exact.cost, CONJ_STEPS + 256);
    }

    #[test]
    fn weight_grows_with_what_the_rule_holds() {
        let small = cost(json!({"a": ["x"]})).bytes;
        let long = cost(json!({"a": ["x".repeat(1000)]})).bytes;
        assert!(long >= small + 2000);
        let strs: Vec<String> = (0..256).map(|i| format!("value-{i}")).collect();
        let many = cost(json!({"a": strs})).bytes;
        assert!(many > 256 * ALT_BYTES);
        let deep = cost(json!({"a": {"b": {"c": ["x"]}}})).bytes;
        assert!(deep >= small + 2 * NODE_BYTES);
        // `$or` alternatives on the same paths share their nodes.
        let ors = cost(json!({"$or": [{"a": ["1"]}, {"a": ["2"]}, {"a": ["3"]}]})).bytes;
        assert!(ors < small + 2 * NODE_BYTES);
    }

    #[test]
    fn budget_admits_and_names_the_budget() {
        let b = RuleBudget {
            max_rule_cost: 10,
            max_connection_cost: 25,
            max_connection_rule_bytes: 10_000,
        };
        let rule = RuleCost {
            cost: 8,
            bytes: 1_000,
        };
        assert_eq!(b.admit(RuleCost::default(), rule), Ok(()));
        let e = b.admit(RuleCost::default(), RuleCost { cost: 13, bytes: 1 });
        assert_eq!(
            e,
            Err(BudgetError::RuleCost {
                cost: 13,
                limit: 10
            })
        );
        let e = match e {
            Err(e) => e,
            Ok(()) => unreachable!(),
        };
        assert_eq!(e.budget(), "max_rule_cost");
        assert_eq!(
            e.to_string(),
            "pattern too complex: its matching cost is 13, over the max_rule_cost budget of 10 by 3"
        );
        let held = RuleCost {
            cost: 20,
            bytes: 1_000,
        };
        let e = b.admit(held, rule).err();
        assert_eq!(e.map(|e| e.budget()), Some("max_connection_cost"));
        assert!(e.is_some_and(|e| e.to_string().ends_with("budget of 25 by 3")));
        let held = RuleCost {
            cost: 1,
            bytes: 9_500,
        };
        let e = b.admit(held, rule).err();
        assert_eq!(e.map(|e| e.budget()), Some("max_connection_rule_bytes"));
        assert!(e.is_some_and(
            |e| e.to_string().contains("10500 bytes") && e.to_string().ends_with("by 500")
        ));
    }
}
