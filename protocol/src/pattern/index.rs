//! [`RuleIndex`]: many patterns, one pass over the event.
//!
//! Every rule is expanded into conjunctions (`$or` multiplied out). Each conjunction is a
//! list of clauses `(field path, alternatives)` and is registered under its single most
//! selective indexable clause, in per-path hash maps / ordered maps keyed by the values
//! that clause accepts (strings by a seeded 64-bit hash, so probes never touch stored
//! keys; prefix and suffix hashes of every length in use come from one pass over the
//! event string). Matching collects the scalar leaves on paths some rule mentions (path
//! trie) — `matches_json` straight from the text with the strict scanner of
//! [`super::scan`], falling back to serde_json for anything the scanner leaves alone —
//! looks each leaf up and marks the hit conjunctions (generation-stamped scratch,
//! nothing is cleared between events). A hit conjunction is then checked clause by
//! clause against the leaves (string checks encoded inline in its 64-byte record, other
//! clauses as matcher lists behind one box), or, when the event has objects inside
//! arrays on indexed paths, its rule is confirmed with the reference evaluator (array
//! consistency).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Bound as RBound;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::ast::{Bound, FieldPat, Matcher, ObjPat};
use super::eval::{in_bounds, match_leaf, MAX_ARRAY_NEST};
use super::negative::{Excl, ExclScratch};
use super::scan::{scan, Trie};
use super::values::{fold, mask, parse_ip, Leaf, Num, Wildcard};
use super::Pattern;

// ---------------------------------------------------------------------------------------
// A fast hasher with a per-index random seed (keys come from untrusted patterns).

#[derive(Clone)]
struct Seeded(u64);

impl Seeded {
    fn new() -> Seeded {
        let rs = std::collections::hash_map::RandomState::new();
        Seeded(rs.hash_one(0x9e37_79b9_u64) | 1)
    }
}

struct FastHasher(u64);

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl FastHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(MUL);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl BuildHasher for Seeded {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

type HMap<K, V> = HashMap<K, V, Seeded>;

// ---------------------------------------------------------------------------------------

/// One registration: conjunction `conj` (under its registered clause).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hit {
    conj: u32,
}

trait HasHit {
    fn hit(&self) -> Hit;
}
impl HasHit for Hit {
    fn hit(&self) -> Hit {
        *self
    }
}
impl HasHit for (Wildcard, Hit) {
    fn hit(&self) -> Hit {
        self.1
    }
}

/// Step of the seeded byte-at-a-time string hash: prefix (or, over reversed bytes,
/// suffix) hashes of every length come out of one pass over the event string.
#[inline]
fn hstep(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(MUL).rotate_left(29)
}

#[inline]
fn hfin(h: u64, len: usize) -> u64 {
    let mut h = h ^ (len as u64).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The 64-bit key under which a string is filed. Tables are keyed by this hash alone
/// (no string to compare, so a probe does not touch the string's memory); a collision
/// only adds a candidate, and every candidate is confirmed clause by clause.
fn skey(seed: u64, s: &str) -> u64 {
    hfin(s.bytes().fold(seed, hstep), s.len())
}

/// Like [`skey`] over the reversed bytes (suffix tables).
fn rkey(seed: u64, s: &str) -> u64 {
    hfin(s.bytes().rev().fold(seed, hstep), s.len())
}

/// String keys looked up by every prefix (or suffix) length in use.
struct AffixMap<T> {
    map: HMap<u64, Vec<T>>,
    /// Registrations per key length, sorted by length: a plain vector because every
    /// string leaf walks it (a B-tree's iterator costs more), and it holds few lengths.
    lens: Vec<(usize, u32)>,
    seed: u64,
    /// Suffix table: keys hashed from their end.
    rev: bool,
}

impl<T: HasHit> AffixMap<T> {
    fn new(s: &Seeded, rev: bool) -> Self {
        AffixMap {
            map: HashMap::with_hasher(s.clone()),
            lens: Vec::new(),
            seed: s.0,
            rev,
        }
    }
    fn key(&self, k: &str) -> u64 {
        if self.rev {
            rkey(self.seed, k)
        } else {
            skey(self.seed, k)
        }
    }
    fn get(&self, k: &str) -> Option<&Vec<T>> {
        self.map.get(&self.key(k))
    }
    fn insert(&mut self, key: &str, t: T) {
        let k = self.key(key);
        self.map.entry(k).or_default().push(t);
        match self.lens.binary_search_by_key(&key.len(), |&(l, _)| l) {
            Ok(at) => {
                if let Some((_, n)) = self.lens.get_mut(at) {
                    *n += 1;
                }
            }
            Err(at) => self.lens.insert(at, (key.len(), 1)),
        }
    }
    fn remove(&mut self, key: &str, conj: u32) {
        let k = self.key(key);
        let Some(v) = self.map.get_mut(&k) else {
            return;
        };
        let before = v.len();
        v.retain(|t| t.hit().conj != conj);
        let removed = (before - v.len()) as u32;
        if v.is_empty() {
            self.map.remove(&k);
        }
        if let Ok(at) = self.lens.binary_search_by_key(&key.len(), |&(l, _)| l) {
            if let Some((_, n)) = self.lens.get_mut(at) {
                *n = n.saturating_sub(removed);
                if *n == 0 {
                    self.lens.remove(at);
                }
            }
        }
    }
    /// Every registration whose key is a prefix (suffix, for a suffix table) of `s`.
    #[inline]
    fn affixes(&self, s: &str, f: &mut dyn FnMut(&T)) {
        // Most path nodes use few of their affix tables.
        if !self.lens.is_empty() {
            self.probe_affixes(s, f);
        }
    }

    fn probe_affixes(&self, s: &str, f: &mut dyn FnMut(&T)) {
        let b = s.as_bytes();
        let mut h = self.seed;
        let mut done = 0usize;
        for &(l, _) in &self.lens {
            if l > b.len() {
                break;
            }
            if self.rev {
                for i in done..l {
                    h = hstep(h, b[b.len() - 1 - i]);
                }
            } else {
                for &c in &b[done..l] {
                    h = hstep(h, c);
                }
            }
            done = l;
            if let Some(v) = self.map.get(&hfin(h, l)) {
                v.iter().for_each(&mut *f);
            }
        }
    }
}

fn remove_hits<K: Eq + Hash>(m: &mut HMap<K, Vec<Hit>>, key: &K, conj: u32) {
    if let Some(v) = m.get_mut(key) {
        v.retain(|h| h.conj != conj);
        if v.is_empty() {
            m.remove(key);
        }
    }
}

struct RangeEnt {
    lo_incl: bool,
    hi: Num,
    hi_incl: bool,
    hit: Hit,
}

/// Width class of a two-sided range: smallest c with 2^c >= (an upper bound of) its width.
fn range_class(lo: Num, hi: Num) -> i32 {
    let (l, h) = (lo.to_f64(), hi.to_f64());
    let w = (h - l) + (h.abs() + l.abs()) * 1e-15 + f64::MIN_POSITIVE;
    if !w.is_finite() {
        return i32::MAX;
    }
    let mut c = w.log2().ceil() as i32;
    while 2f64.powi(c) < w {
        c = c.saturating_add(1);
    }
    c
}

/// Lowest `lo` that a range of class `c` containing `x` can have (None = unbounded).
fn window_start(x: Num, c: i32) -> Option<Num> {
    if c == i32::MAX {
        return None;
    }
    let scale = 2f64.powi(c);
    let xf = x.to_f64();
    let s = (xf - scale) - (xf.abs() + scale) * 1e-15;
    if !s.is_finite() {
        return None;
    }
    let s = Num::from_f64(s)?;
    Some(if s > x { x } else { s })
}

/// All lookups registered at one path.
struct Matchers {
    /// Keyed by [`skey`].
    exact_str: HMap<u64, Vec<Hit>>,
    exact_num: HMap<Num, Vec<Hit>>,
    exact_true: Vec<Hit>,
    exact_false: Vec<Hit>,
    exact_null: Vec<Hit>,
    prefix: AffixMap<Hit>,
    suffix: AffixMap<Hit>,
    prefix_ic: AffixMap<Hit>,
    suffix_ic: AffixMap<Hit>,
    /// Keyed by [`skey`] of the folded value.
    eic: HMap<u64, Vec<Hit>>,
    wild_pre: AffixMap<(Wildcard, Hit)>,
    wild_suf: AffixMap<(Wildcard, Hit)>,
    wild_any: Vec<(Wildcard, Hit)>,
    lower: BTreeMap<Num, Vec<(bool, Hit)>>,
    upper: BTreeMap<Num, Vec<(bool, Hit)>>,
    ranges: BTreeMap<i32, BTreeMap<Num, Vec<RangeEnt>>>,
    cidr: HMap<(bool, u8, u128), Vec<Hit>>,
    cidr_lens: BTreeMap<(bool, u8), u32>,
    exists: Vec<Hit>,
    /// Registrations needing the folded event string.
    n_fold: usize,
    seed: u64,
    /// Registrations needing a numeric value.
    n_numeric: usize,
}

impl Matchers {
    fn new(s: &Seeded) -> Self {
        Matchers {
            exact_str: HashMap::with_hasher(s.clone()),
            exact_num: HashMap::with_hasher(s.clone()),
            exact_true: Vec::new(),
            exact_false: Vec::new(),
            exact_null: Vec::new(),
            prefix: AffixMap::new(s, false),
            suffix: AffixMap::new(s, true),
            prefix_ic: AffixMap::new(s, false),
            suffix_ic: AffixMap::new(s, true),
            eic: HashMap::with_hasher(s.clone()),
            wild_pre: AffixMap::new(s, false),
            wild_suf: AffixMap::new(s, true),
            wild_any: Vec::new(),
            lower: BTreeMap::new(),
            upper: BTreeMap::new(),
            ranges: BTreeMap::new(),
            cidr: HashMap::with_hasher(s.clone()),
            cidr_lens: BTreeMap::new(),
            exists: Vec::new(),
            n_fold: 0,
            n_numeric: 0,
            seed: s.0,
        }
    }

    fn add(&mut self, m: &Matcher, h: Hit) {
        match m {
            Matcher::Str(s) => self
                .exact_str
                .entry(skey(self.seed, s))
                .or_default()
                .push(h),
            Matcher::Num(n) => self.exact_num.entry(*n).or_default().push(h),
            Matcher::Bool(true) => self.exact_true.push(h),
            Matcher::Bool(false) => self.exact_false.push(h),
            Matcher::Null => self.exact_null.push(h),
            Matcher::Prefix(p) => self.prefix.insert(p, h),
            Matcher::Suffix(p) => self.suffix.insert(p, h),
            Matcher::PrefixIc(p) => {
                self.n_fold += 1;
                self.prefix_ic.insert(p, h)
            }
            Matcher::SuffixIc(p) => {
                self.n_fold += 1;
                self.suffix_ic.insert(p, h)
            }
            Matcher::Eic(f) => {
                self.n_fold += 1;
                self.eic.entry(skey(self.seed, f)).or_default().push(h)
            }
            Matcher::Wildcard(w) => {
                let n = w.segs.len();
                if n == 1 {
                    self.exact_str
                        .entry(skey(self.seed, &w.segs[0]))
                        .or_default()
                        .push(h)
                } else if !w.segs[0].is_empty() {
                    self.wild_pre.insert(&w.segs[0], (w.clone(), h))
                } else if !w.segs[n - 1].is_empty() {
                    self.wild_suf.insert(&w.segs[n - 1], (w.clone(), h))
                } else {
                    self.wild_any.push((w.clone(), h))
                }
            }
            Matcher::Numeric { lo, hi } => {
                self.n_numeric += 1;
                match (lo, hi) {
                    (Some(l), None) => self
                        .lower
                        .entry(l.value)
                        .or_default()
                        .push((l.inclusive, h)),
                    (None, Some(u)) => self
                        .upper
                        .entry(u.value)
                        .or_default()
                        .push((u.inclusive, h)),
                    (Some(l), Some(u)) => self
                        .ranges
                        .entry(range_class(l.value, u.value))
                        .or_default()
                        .entry(l.value)
                        .or_default()
                        .push(RangeEnt {
                            lo_incl: l.inclusive,
                            hi: u.value,
                            hi_incl: u.inclusive,
                            hit: h,
                        }),
                    (None, None) => self.exists.push(h),
                }
            }
            Matcher::Cidr(c) => {
                let key = (c.v6, c.len, c.net);
                match self.cidr.get_mut(&key) {
                    Some(v) => v.push(h),
                    None => {
                        self.cidr.insert(key, vec![h]);
                        *self.cidr_lens.entry((c.v6, c.len)).or_insert(0) += 1;
                    }
                }
            }
            Matcher::Exists(_) => self.exists.push(h),
            // Not indexable: never registered.
            Matcher::AbStr(_)
            | Matcher::AbNum(_)
            | Matcher::AbPrefix(_)
            | Matcher::AbSuffix(_)
            | Matcher::AbEic(_)
            | Matcher::AbWildcard(_) => {}
        }
    }

    fn remove(&mut self, m: &Matcher, c: u32) {
        let keep = |h: &Hit| h.conj != c;
        match m {
            Matcher::Str(s) => remove_hits(&mut self.exact_str, &skey(self.seed, s), c),
            Matcher::Num(n) => remove_hits(&mut self.exact_num, n, c),
            Matcher::Bool(true) => self.exact_true.retain(keep),
            Matcher::Bool(false) => self.exact_false.retain(keep),
            Matcher::Null => self.exact_null.retain(keep),
            Matcher::Prefix(p) => self.prefix.remove(p, c),
            Matcher::Suffix(p) => self.suffix.remove(p, c),
            Matcher::PrefixIc(p) => {
                self.n_fold = self.n_fold.saturating_sub(1);
                self.prefix_ic.remove(p, c)
            }
            Matcher::SuffixIc(p) => {
                self.n_fold = self.n_fold.saturating_sub(1);
                self.suffix_ic.remove(p, c)
            }
            Matcher::Eic(f) => {
                self.n_fold = self.n_fold.saturating_sub(1);
                remove_hits(&mut self.eic, &skey(self.seed, f), c)
            }
            Matcher::Wildcard(w) => {
                let n = w.segs.len();
                if n == 1 {
                    remove_hits(&mut self.exact_str, &skey(self.seed, &w.segs[0]), c)
                } else if !w.segs[0].is_empty() {
                    self.wild_pre.remove(&w.segs[0], c)
                } else if !w.segs[n - 1].is_empty() {
                    self.wild_suf.remove(&w.segs[n - 1], c)
                } else {
                    self.wild_any.retain(|(_, h)| h.conj != c)
                }
            }
            Matcher::Numeric { lo, hi } => {
                self.n_numeric = self.n_numeric.saturating_sub(1);
                match (lo, hi) {
                    (Some(l), None) => remove_tree(&mut self.lower, l.value, |e| e.1.conj != c),
                    (None, Some(u)) => remove_tree(&mut self.upper, u.value, |e| e.1.conj != c),
                    (Some(l), Some(u)) => {
                        let class = range_class(l.value, u.value);
                        if let Some(tree) = self.ranges.get_mut(&class) {
                            remove_tree(tree, l.value, |e| e.hit.conj != c);
                            if tree.is_empty() {
                                self.ranges.remove(&class);
                            }
                        }
                    }
                    (None, None) => self.exists.retain(keep),
                }
            }
            Matcher::Cidr(cd) => {
                let key = (cd.v6, cd.len, cd.net);
                if let Some(v) = self.cidr.get_mut(&key) {
                    v.retain(keep);
                    if v.is_empty() {
                        self.cidr.remove(&key);
                        if let Some(n) = self.cidr_lens.get_mut(&(cd.v6, cd.len)) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                self.cidr_lens.remove(&(cd.v6, cd.len));
                            }
                        }
                    }
                }
            }
            Matcher::Exists(_) => self.exists.retain(keep),
            _ => {}
        }
    }

    /// Reports every registration that accepts the scalar `v`.
    fn lookup(&self, v: &Leaf<'_>, f: &mut dyn FnMut(Hit)) {
        match v {
            Leaf::Str(s) => {
                let s: &str = s;
                if let Some(hs) = self.exact_str.get(&skey(self.seed, s)) {
                    hs.iter().for_each(|h| f(*h));
                }
                self.prefix.affixes(s, &mut |h| f(*h));
                self.suffix.affixes(s, &mut |h| f(*h));
                if self.n_fold > 0 {
                    let folded = fold(s);
                    if let Some(hs) = self.eic.get(&skey(self.seed, &folded)) {
                        hs.iter().for_each(|h| f(*h));
                    }
                    self.prefix_ic.affixes(&folded, &mut |h| f(*h));
                    self.suffix_ic.affixes(&folded, &mut |h| f(*h));
                }
                self.wild_pre.affixes(s, &mut |(w, h)| {
                    if w.matches(s) {
                        f(*h)
                    }
                });
                self.wild_suf.affixes(s, &mut |(w, h)| {
                    if w.matches(s) {
                        f(*h)
                    }
                });
                for (w, h) in &self.wild_any {
                    if w.matches(s) {
                        f(*h)
                    }
                }
                if !self.cidr_lens.is_empty() {
                    if let Some((v6, bits)) = parse_ip(s) {
                        for &(fam, len) in self.cidr_lens.keys() {
                            if fam == v6 {
                                if let Some(hs) = self.cidr.get(&(v6, len, mask(v6, len, bits))) {
                                    hs.iter().for_each(|h| f(*h));
                                }
                            }
                        }
                    }
                }
            }
            Leaf::Num(n) => {
                let Some(x) = *n else { return };
                if let Some(hs) = self.exact_num.get(&x) {
                    hs.iter().for_each(|h| f(*h));
                }
                if self.n_numeric > 0 {
                    for (k, es) in self.lower.range(..=x) {
                        for (incl, h) in es {
                            if *incl || *k < x {
                                f(*h)
                            }
                        }
                    }
                    for (k, es) in self.upper.range(x..) {
                        for (incl, h) in es {
                            if *incl || *k > x {
                                f(*h)
                            }
                        }
                    }
                    for (&class, tree) in &self.ranges {
                        let start = match window_start(x, class) {
                            Some(s) => RBound::Included(s),
                            None => RBound::Unbounded,
                        };
                        for (lo, es) in tree.range((start, RBound::Included(x))) {
                            for e in es {
                                let lo_ok = e.lo_incl || *lo < x;
                                let hi_ok = if e.hi_incl { x <= e.hi } else { x < e.hi };
                                if lo_ok && hi_ok {
                                    f(e.hit)
                                }
                            }
                        }
                    }
                }
            }
            Leaf::Bool(true) => self.exact_true.iter().for_each(|h| f(*h)),
            Leaf::Bool(false) => self.exact_false.iter().for_each(|h| f(*h)),
            Leaf::Null => self.exact_null.iter().for_each(|h| f(*h)),
        }
        self.exists.iter().for_each(|h| f(*h));
    }
}

fn remove_tree<T>(tree: &mut BTreeMap<Num, Vec<T>>, key: Num, keep: impl FnMut(&T) -> bool) {
    if let Some(v) = tree.get_mut(&key) {
        v.retain(keep);
        if v.is_empty() {
            tree.remove(&key);
        }
    }
}

fn short_penalty(len: usize) -> u64 {
    match len {
        0 => 100_000,
        1 | 2 => 1_000,
        _ => 0,
    }
}

fn alt_cost(m: Option<&Matchers>, a: &Matcher) -> u64 {
    fn n<T>(v: Option<&Vec<T>>) -> u64 {
        v.map_or(0, |v| v.len() as u64)
    }
    let Some(m) = m else {
        return match a {
            Matcher::Numeric {
                lo: Some(_),
                hi: Some(_),
            } => 8,
            Matcher::Numeric { .. } => 20_000,
            Matcher::Exists(_) => 50_000,
            Matcher::Bool(_) | Matcher::Null => 50,
            Matcher::Prefix(p)
            | Matcher::Suffix(p)
            | Matcher::PrefixIc(p)
            | Matcher::SuffixIc(p) => 2 + short_penalty(p.len()),
            Matcher::Wildcard(w) => match w.segs.as_slice() {
                [only] => 1 + short_penalty(only.len().max(3)),
                [first, ..] if !first.is_empty() => 3 + short_penalty(first.len()),
                [.., last] if !last.is_empty() => 3 + short_penalty(last.len()),
                _ => 100_000,
            },
            Matcher::Cidr(c) if c.len < if c.v6 { 16 } else { 8 } => 5_000,
            _ => 1,
        };
    };
    match a {
        Matcher::Str(s) => 1 + n(m.exact_str.get(&skey(m.seed, s))),
        Matcher::Num(x) => 1 + n(m.exact_num.get(x)),
        Matcher::Bool(true) => 50 + m.exact_true.len() as u64,
        Matcher::Bool(false) => 50 + m.exact_false.len() as u64,
        Matcher::Null => 50 + m.exact_null.len() as u64,
        Matcher::Prefix(p) => 2 + n(m.prefix.get(p)) + short_penalty(p.len()),
        Matcher::Suffix(p) => 2 + n(m.suffix.get(p)) + short_penalty(p.len()),
        Matcher::PrefixIc(p) => 2 + n(m.prefix_ic.get(p)) + short_penalty(p.len()),
        Matcher::SuffixIc(p) => 2 + n(m.suffix_ic.get(p)) + short_penalty(p.len()),
        Matcher::Eic(f) => 1 + n(m.eic.get(&skey(m.seed, f))),
        Matcher::Wildcard(w) => match w.segs.as_slice() {
            [only] => 1 + n(m.exact_str.get(&skey(m.seed, only))),
            [first, ..] if !first.is_empty() => {
                3 + n(m.wild_pre.get(first)) + short_penalty(first.len())
            }
            [.., last] if !last.is_empty() => {
                3 + n(m.wild_suf.get(last)) + short_penalty(last.len())
            }
            _ => 100_000 + m.wild_any.len() as u64,
        },
        Matcher::Numeric {
            lo: Some(_),
            hi: Some(_),
        } => 8,
        Matcher::Numeric { .. } => 20_000,
        Matcher::Cidr(c) => {
            1 + n(m.cidr.get(&(c.v6, c.len, c.net)))
                + if c.len < if c.v6 { 16 } else { 8 } {
                    5_000
                } else {
                    0
                }
        }
        Matcher::Exists(_) => 50_000 + m.exists.len() as u64,
        _ => u64::MAX / 4,
    }
}

// ---------------------------------------------------------------------------------------

/// Children up to this many are also kept in a plain list ([`Node::few`]).
const FEW_CHILDREN: usize = 8;

struct Node {
    children: HMap<Box<str>, u32>,
    /// A copy of `children` while there are at most [`FEW_CHILDREN`] (else empty): the
    /// scanner looks every object key up, and a short list compared by length first is
    /// cheaper than hashing the key or walking the hash map.
    few: Vec<(Box<str>, u32)>,
    parent: u32,
    key: Box<str>,
    refs: u32,
    m: Option<Box<Matchers>>,
    /// Clauses evaluated per leaf (see [`NegClause`]).
    neg: Option<Box<NodeNegs>>,
}

/// The clauses a positive lookup cannot find, at one path node, and the shared tables of
/// the values their `anything-but` alternatives exclude.
#[derive(Default)]
struct NodeNegs {
    clauses: Vec<u32>,
    /// The clauses conjunctions are registered under (evaluated on every event).
    registered: Vec<u32>,
    excl: Excl,
}

/// A clause with an alternative no positive lookup can find (`anything-but` in every
/// form, `exists: false`). It is evaluated once per event for every leaf at its node
/// (and, with `exists: false`, when there is none): the excluded values of all such
/// clauses at the node come out of one pass over the leaf ([`Excl`]), then each clause
/// costs one step per alternative. A conjunction without any positively indexable clause
/// is registered under one of these (`registered`); every one of a conjunction's
/// negative clauses is confirmed by its per-event stamp, never re-evaluated per rule.
struct NegClause {
    node: u32,
    conj: u32,
    registered: bool,
    /// `exists: false` is an alternative: the clause holds where no leaf is.
    absent_ok: bool,
    alts: Arc<[Matcher]>,
    /// Per alternative, its entry in the node's [`Excl`] (`NO_ENT` when it has none).
    ents: Box<[u32]>,
}

const NO_ENT: u32 = u32::MAX;

/// Does an alternative with an exclusion entry hold for a leaf, given whether the leaf hit
/// that entry? Every `anything-but` form holds unless its values exclude the leaf: as in
/// EventBridge, a number, boolean or null has no string prefix, suffix, folded form or glob
/// match, so the string forms accept it (the tables report no hit for such a leaf).
fn excluded_alt_holds(hit: bool) -> bool {
    !hit
}

/// `anything-but` lists up to this long are compared in place (cheaper than probing a
/// shared table, and a popular value in thousands of short lists would make every probe
/// report thousands of entries); longer lists and every wildcard go to the shared tables.
const SHORT_LIST: usize = 8;

/// Does this alternative get an entry in its node's shared exclusion tables?
fn has_entry(m: &Matcher) -> bool {
    match m {
        Matcher::AbStr(l) | Matcher::AbPrefix(l) | Matcher::AbSuffix(l) | Matcher::AbEic(l) => {
            l.len() > SHORT_LIST
        }
        Matcher::AbNum(l) => l.len() > SHORT_LIST,
        Matcher::AbWildcard(_) => true,
        _ => false,
    }
}

impl Node {
    fn refresh_few(&mut self) {
        self.few.clear();
        if self.children.len() <= FEW_CHILDREN {
            self.few
                .extend(self.children.iter().map(|(k, &c)| (k.clone(), c)));
        }
    }
}

/// One cache line for the common case (rule key up to 8 bytes, small inline checks).
#[repr(align(64))]
struct Conj<K> {
    rule: u32,
    /// The rule has several conjunctions, so a match must be deduplicated per rule.
    multi: bool,
    /// The rule's key, so a confirmed candidate needs no rule-slot access.
    key: Option<K>,
    /// Every clause, checked against the event's leaves when the event has no objects
    /// inside arrays on indexed paths.
    checks: Checks,
    /// Always confirm with the reference evaluator (defensive; not expected).
    oracle: bool,
}

impl<K> Conj<K> {
    fn empty() -> Self {
        Conj {
            rule: 0,
            multi: false,
            key: None,
            checks: Checks::default(),
            oracle: false,
        }
    }
}

const T_STR: u8 = 0;
const T_PREFIX: u8 = 1;
const T_SUFFIX: u8 = 2;
/// A numeric range: the low six bits of the tag byte are [`NUM_LO`] etc., and each bound
/// present follows as a kind byte ([`NUM_INT`] or [`NUM_FLOAT`]) and eight bytes.
const T_NUM: u8 = 3;
const NUM_LO: u8 = 1;
const NUM_LO_INCL: u8 = 2;
const NUM_HI: u8 = 4;
const NUM_HI_INCL: u8 = 8;
const NUM_INT: u8 = 0;
const NUM_FLOAT: u8 = 1;
/// Encoded size of one numeric bound.
const NUM_BOUND_BYTES: usize = 9;
/// Inline check bytes kept in the conjunction record itself.
const SMALL: usize = 32;

/// A conjunction's clauses, laid out so that confirming a candidate touches one or two
/// cache lines. Clauses whose alternatives are all exact strings, prefixes, suffixes, exact
/// numbers or numeric ranges (bounds that are floats or integers within i64) are encoded as
/// bytes (an exact number as the range from it to it, both ends included):
/// `node (LEB128) | n_alts u8 | (tag << 6 | len u8 [| len u16]) bytes)*` (a 6-bit length
/// of 63 means a u16 length follows; a numeric range has flags in place of the length
/// and its bounds as the bytes, see [`T_NUM`]). When the encoding of all of them fits in
/// [`SMALL`] bytes it is stored inline, in the conjunction record; the other clauses keep
/// their matcher list, behind one box.
#[derive(Default)]
struct Checks {
    small: [u8; SMALL],
    small_len: u8,
    rest: Option<Box<RestChecks>>,
}

#[derive(Default)]
struct RestChecks {
    inline: Box<[u8]>,
    other: Box<[(u32, Arc<[Matcher]>)]>,
    /// The conjunction's negative clauses ([`NegClause`] ids).
    negs: Box<[u32]>,
}

impl Checks {
    fn new(clauses: &[(u32, Arc<[Matcher]>)], negs: Vec<u32>) -> Checks {
        let mut inline = Vec::new();
        let mut other = Vec::new();
        for (node, alts) in clauses {
            let simple = alts.len() <= usize::from(u8::MAX)
                && alts.iter().all(|m| match m {
                    Matcher::Str(x) | Matcher::Prefix(x) | Matcher::Suffix(x) => {
                        x.len() <= usize::from(u16::MAX)
                    }
                    Matcher::Numeric { lo, hi } => [lo, hi]
                        .into_iter()
                        .flatten()
                        .all(|b| encode_bound(b.value).is_some()),
                    Matcher::Num(n) => encode_bound(*n).is_some(),
                    _ => false,
                });
            if !simple {
                other.push((*node, Arc::clone(alts)));
                continue;
            }
            let mut n = *node;
            loop {
                let low = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    inline.push(low);
                    break;
                }
                inline.push(low | 0x80);
            }
            inline.push(alts.len() as u8);
            for m in alts.iter() {
                let (tag, x) = match m {
                    Matcher::Str(x) => (T_STR, x),
                    Matcher::Prefix(x) => (T_PREFIX, x),
                    Matcher::Suffix(x) => (T_SUFFIX, x),
                    Matcher::Numeric { lo, hi } => {
                        encode_range(lo.as_ref(), hi.as_ref(), &mut inline);
                        continue;
                    }
                    // An exact number is the range [n, n] (`Num`'s order is total, so both
                    // accept exactly the values equal to n): inline instead of behind the
                    // box, which cost three cache misses per candidate
                    // (`{"group": [17]}` at 10,000 rules, `bench/findings.md`).
                    Matcher::Num(n) => {
                        let exact = Bound {
                            value: *n,
                            inclusive: true,
                        };
                        encode_range(Some(&exact), Some(&exact), &mut inline);
                        continue;
                    }
                    _ => continue,
                };
                if x.len() < 63 {
                    inline.push(tag << 6 | x.len() as u8);
                } else {
                    inline.push(tag << 6 | 63);
                    inline.extend_from_slice(&(x.len() as u16).to_le_bytes());
                }
                inline.extend_from_slice(x.as_bytes());
            }
        }
        let mut c = Checks::default();
        if inline.len() <= SMALL {
            if let Some(dst) = c.small.get_mut(..inline.len()) {
                dst.copy_from_slice(&inline);
                c.small_len = inline.len() as u8;
                inline.clear();
            }
        }
        if !inline.is_empty() || !other.is_empty() || !negs.is_empty() {
            c.rest = Some(Box::new(RestChecks {
                inline: inline.into_boxed_slice(),
                other: other.into_boxed_slice(),
                negs: negs.into_boxed_slice(),
            }));
        }
        c
    }

    /// The conjunction's negative clauses (evaluated by the index, not here).
    fn negs(&self) -> &[u32] {
        self.rest.as_deref().map_or(&[], |r| &r.negs)
    }

    fn holds(&self, leaves: &[(u32, Leaf<'_>)]) -> bool {
        let small = self
            .small
            .get(..usize::from(self.small_len))
            .unwrap_or_default();
        inline_holds(small, leaves).unwrap_or(false)
            && self.rest.as_deref().is_none_or(|r| {
                inline_holds(&r.inline, leaves).unwrap_or(false)
                    && r.other
                        .iter()
                        .all(|(node, alts)| clause_holds(*node, alts, leaves))
            })
    }
}

/// One alternative's (tag, bytes) from the front of `a`, and the rest.
fn next_alt(a: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tl, rest) = a.split_first()?;
    if tl >> 6 == T_NUM {
        // The flags, then the bounds; `x` starts with the flags byte.
        let bounds = usize::from(tl & NUM_LO != 0) + usize::from(tl & NUM_HI != 0);
        let (x, rest) = a.split_at_checked(1 + bounds * NUM_BOUND_BYTES)?;
        return Some((T_NUM, x, rest));
    }
    let (len, rest) = match tl & 63 {
        63 => {
            let (l, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_le_bytes(l.try_into().ok()?)), rest)
        }
        l => (usize::from(l), rest),
    };
    let (x, rest) = rest.split_at_checked(len)?;
    Some((tl >> 6, x, rest))
}

/// Decodes and checks inline clauses; `None` only for a malformed buffer.
fn inline_holds(mut b: &[u8], leaves: &[(u32, Leaf<'_>)]) -> Option<bool> {
    while !b.is_empty() {
        let mut node = 0u32;
        let mut shift = 0u32;
        loop {
            let (&c, rest) = b.split_first()?;
            b = rest;
            node |= u32::from(c & 0x7f).checked_shl(shift)?;
            shift += 7;
            if c & 0x80 == 0 {
                break;
            }
        }
        let (&n_alts, rest) = b.split_first()?;
        b = rest;
        // One pass over the alternatives, each compared with the string leaves at `node`
        // (usually one); after a hit the rest are only stepped over.
        let mut ok = false;
        for _ in 0..n_alts {
            let (tag, x, rest) = next_alt(b)?;
            b = rest;
            if !ok {
                ok = leaves.iter().any(|(n, v)| match v {
                    Leaf::Str(s) if *n == node && tag != T_NUM => affix_hit(tag, s.as_bytes(), x),
                    Leaf::Num(Some(value)) if *n == node && tag == T_NUM => {
                        in_encoded_range(*value, x).unwrap_or(false)
                    }
                    _ => false,
                });
            }
        }
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// A numeric bound as a kind byte and eight bytes, when it fits (integers in i64).
fn encode_bound(value: Num) -> Option<[u8; NUM_BOUND_BYTES]> {
    let (kind, bits) = match value {
        Num::Int(i) => (NUM_INT, i64::try_from(i).ok()?.to_le_bytes()),
        Num::Float(f) => (NUM_FLOAT, f.to_le_bytes()),
    };
    let mut out = [0u8; NUM_BOUND_BYTES];
    out[0] = kind;
    out[1..].copy_from_slice(&bits);
    Some(out)
}

fn decode_bound(b: &[u8]) -> Option<Num> {
    let (&kind, bits) = b.split_first()?;
    let bits: [u8; 8] = bits.get(..8)?.try_into().ok()?;
    match kind {
        NUM_INT => Some(Num::Int(i128::from(i64::from_le_bytes(bits)))),
        NUM_FLOAT => Some(Num::Float(f64::from_le_bytes(bits))),
        _ => None,
    }
}

/// Appends a `numeric` alternative: the tag byte with its flags, then the bounds (each
/// already checked to fit by `encode_bound`).
fn encode_range(lo: Option<&Bound>, hi: Option<&Bound>, out: &mut Vec<u8>) {
    let mut flags = 0u8;
    if let Some(b) = lo {
        flags |= NUM_LO | if b.inclusive { NUM_LO_INCL } else { 0 };
    }
    if let Some(b) = hi {
        flags |= NUM_HI | if b.inclusive { NUM_HI_INCL } else { 0 };
    }
    out.push(T_NUM << 6 | flags);
    for b in [lo, hi].into_iter().flatten() {
        if let Some(bytes) = encode_bound(b.value) {
            out.extend_from_slice(&bytes);
        }
    }
}

/// Is `x` within the range encoded in `enc` (flags byte, then the bounds present)?
/// Decodes the bounds and asks the evaluator's `in_bounds`, so both layouts compare alike.
/// `None` only for a malformed buffer.
fn in_encoded_range(x: Num, enc: &[u8]) -> Option<bool> {
    let (&tl, mut rest) = enc.split_first()?;
    let mut bound = |present: u8, inclusive: u8| -> Option<Option<Bound>> {
        if tl & present == 0 {
            return Some(None);
        }
        let value = decode_bound(rest)?;
        rest = rest.get(NUM_BOUND_BYTES..)?;
        Some(Some(Bound {
            value,
            inclusive: tl & inclusive != 0,
        }))
    };
    let lo = bound(NUM_LO, NUM_LO_INCL)?;
    let hi = bound(NUM_HI, NUM_HI_INCL)?;
    Some(in_bounds(x, &lo, &hi))
}

/// Does `s` equal (`T_STR`), start with (`T_PREFIX`) or end with (`T_SUFFIX`) `x`?
#[inline]
fn affix_hit(tag: u8, s: &[u8], x: &[u8]) -> bool {
    let part = match tag {
        T_STR if s.len() != x.len() => None,
        T_STR | T_PREFIX => s.get(..x.len()),
        _ => s.len().checked_sub(x.len()).and_then(|at| s.get(at..)),
    };
    part.is_some_and(|p| same_bytes(p, x))
}

struct RuleSlot<K> {
    key: K,
    pattern: Pattern,
    /// (conjunction id, index of its positively registered clause, or [`NO_ENT`] when
    /// it is registered under a negative clause) per conjunction, in expansion order.
    conjs: Vec<(u32, u32)>,
    /// Its [`NegClause`] ids.
    negs: Vec<u32>,
}

type Clause<'a> = (Vec<&'a str>, &'a Arc<[Matcher]>);

fn cross<'a>(a: Vec<Vec<Clause<'a>>>, b: &[Vec<Clause<'a>>]) -> Vec<Vec<Clause<'a>>> {
    let mut out = Vec::with_capacity(a.len().saturating_mul(b.len()));
    for x in &a {
        for y in b {
            let mut c = x.clone();
            c.extend(y.iter().cloned());
            out.push(c);
        }
    }
    out
}

/// `$or` multiplied out: a list of conjunctions of clauses (deterministic order).
fn expand<'a>(obj: &'a ObjPat, prefix: &[&'a str]) -> Vec<Vec<Clause<'a>>> {
    let mut acc: Vec<Vec<Clause<'a>>> = vec![Vec::new()];
    for (k, fp) in &obj.fields {
        let mut path = prefix.to_vec();
        path.push(k.as_str());
        match fp {
            FieldPat::Leaf(alts) => {
                for c in acc.iter_mut() {
                    c.push((path.clone(), alts));
                }
            }
            FieldPat::Obj(sub) => {
                let subs = expand(sub, &path);
                acc = cross(acc, &subs);
            }
        }
    }
    for g in &obj.ors {
        let mut alts = Vec::new();
        for alt in g {
            alts.extend(expand(alt, prefix));
        }
        acc = cross(acc, &alts);
    }
    acc
}

/// Every leaf path of a pattern (once per occurrence, `$or` alternatives included).
fn leaf_paths<'a>(obj: &'a ObjPat, prefix: &mut Vec<&'a str>, out: &mut Vec<Vec<&'a str>>) {
    for (k, fp) in &obj.fields {
        prefix.push(k.as_str());
        match fp {
            FieldPat::Leaf(_) => out.push(prefix.clone()),
            FieldPat::Obj(sub) => leaf_paths(sub, prefix, out),
        }
        prefix.pop();
    }
    for g in &obj.ors {
        for alt in g {
            leaf_paths(alt, prefix, out);
        }
    }
}

/// Parses an event keeping only the object keys present in the path trie.
/// A value no rule reads, read and dropped. Unlike `serde::de::IgnoredAny` it reads numbers
/// in full, so an out-of-range number (`1e400`) is the same error as in a parse to `Value`.
struct Skipped;

impl<'de> serde::Deserialize<'de> for Skipped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkippedVisitor)
    }
}

struct SkippedVisitor;

impl<'de> serde::de::Visitor<'de> for SkippedVisitor {
    type Value = Skipped;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_unit<E>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
        while seq.next_element::<Skipped>()?.is_some() {}
        Ok(Skipped)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, Skipped>()?
            .is_some()
        {}
        Ok(Skipped)
    }
}

struct Pruner<'a, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    idx: &'a RuleIndex<K>,
    node: u32,
}

impl<K> Clone for Pruner<'_, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    fn clone(&self) -> Self {
        Pruner {
            idx: self.idx,
            node: self.node,
        }
    }
}

impl<'de, K> serde::de::DeserializeSeed<'de> for Pruner<'_, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// Looks an object key up among the children of a trie node.
struct KeySeed<'a, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    idx: &'a RuleIndex<K>,
    node: u32,
}

impl<'de, K> serde::de::DeserializeSeed<'de> for KeySeed<'_, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    type Value = Option<(String, u32)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, K> serde::de::Visitor<'de> for KeySeed<'_, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    type Value = Option<(String, u32)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Self::Value, E> {
        Ok(self
            .idx
            .nodes
            .get(self.node as usize)
            .and_then(|n| n.children.get(k))
            .map(|&c| (k.to_string(), c)))
    }
}

impl<'de, K> serde::de::Visitor<'de> for Pruner<'_, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::from(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::from(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.clone())? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            idx: self.idx,
            node: self.node,
        })? {
            match key {
                Some((k, child)) => {
                    let v = map.next_value_seed(Pruner {
                        idx: self.idx,
                        node: child,
                    })?;
                    out.insert(k, v);
                }
                None => {
                    map.next_value::<Skipped>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[derive(Default)]
struct Scratch {
    gen: u64,
    /// Per rule with several conjunctions: the generation in which it matched.
    rule: Vec<u64>,
    /// The candidate conjunctions of the event (sorted and deduplicated before use).
    cand: Vec<u32>,
    /// The allocation of the leaves collected by the `matches_json` scanner, kept empty
    /// between events (see [`recycle`]).
    leaves: Vec<(u32, Leaf<'static>)>,
    /// Per [`NegClause`]: the generation in which it was evaluated / held.
    done: Vec<u64>,
    held: Vec<u64>,
    /// Per leaf of the event: its range in `hit_ents` once its node's exclusion tables
    /// were probed.
    leaf_hits: Vec<Option<(u32, u32)>>,
    /// The exclusion entries hit by the event's leaves.
    hit_ents: Vec<u32>,
    /// Per path node: the generation in which it had a leaf.
    seen: Vec<u64>,
    ex: ExclScratch,
}

/// Empties `v` and hands its allocation over to leaves of another lifetime: the leaves
/// borrow the event text, so the per-thread buffer can only be kept while empty. (The
/// standard library collects an emptied `Vec` into its own allocation.)
fn recycle<'b>(mut v: Vec<(u32, Leaf<'_>)>) -> Vec<(u32, Leaf<'b>)> {
    v.clear();
    v.into_iter().map(|(node, _)| (node, Leaf::Null)).collect()
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// An index of many patterns keyed by `K`, answering "which rules match this event" at
/// a cost that depends on the event and on the rules it matches, not on the rule count.
pub struct RuleIndex<K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    hs: Seeded,
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    conjs: Vec<Conj<K>>,
    free_conjs: Vec<u32>,
    rules: Vec<Option<RuleSlot<K>>>,
    free_rules: Vec<u32>,
    by_key: HashMap<K, u32, Seeded>,
    /// Conjunctions flagged `oracle` (they need the event as a `Value`).
    n_oracle: usize,
    negs: Vec<Option<NegClause>>,
    free_negs: Vec<u32>,
    /// Exclusion entry ids handed out (see [`Excl`]) and those free again.
    n_ents: u32,
    free_ents: Vec<u32>,
    /// Nodes with registered `exists: false` clauses → how many.
    absent_nodes: HMap<u32, u32>,
}

impl<K> fmt::Debug for RuleIndex<K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleIndex")
            .field("rules", &self.by_key.len())
            .field(
                "conjunctions",
                &self.conjs.len().saturating_sub(self.free_conjs.len()),
            )
            .field(
                "paths",
                &self.nodes.len().saturating_sub(self.free_nodes.len()),
            )
            .finish()
    }
}

impl<K> Default for RuleIndex<K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    fn default() -> Self {
        Self::new()
    }
}

const ROOT: u32 = 0;

impl<K> RuleIndex<K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    pub fn new() -> Self {
        let hs = Seeded::new();
        RuleIndex {
            nodes: vec![Node {
                children: HashMap::with_hasher(hs.clone()),
                few: Vec::new(),
                parent: ROOT,
                key: "".into(),
                refs: 0,
                m: None,
                neg: None,
            }],
            free_nodes: Vec::new(),
            conjs: Vec::new(),
            free_conjs: Vec::new(),
            rules: Vec::new(),
            free_rules: Vec::new(),
            by_key: HashMap::with_hasher(hs.clone()),
            n_oracle: 0,
            negs: Vec::new(),
            free_negs: Vec::new(),
            n_ents: 0,
            free_ents: Vec::new(),
            absent_nodes: HashMap::with_hasher(hs.clone()),
            hs,
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The pattern of the rule with this key.
    pub fn pattern(&self, key: K) -> Option<&Pattern> {
        let rid = *self.by_key.get(&key)?;
        Some(&self.rules.get(rid as usize)?.as_ref()?.pattern)
    }

    fn ensure_path(&mut self, path: &[&str]) -> u32 {
        let mut cur = ROOT;
        for seg in path {
            let existing = self
                .nodes
                .get(cur as usize)
                .and_then(|n| n.children.get(*seg).copied());
            let next = match existing {
                Some(n) => n,
                None => {
                    let node = Node {
                        children: HashMap::with_hasher(self.hs.clone()),
                        few: Vec::new(),
                        parent: cur,
                        key: (*seg).into(),
                        refs: 0,
                        m: None,
                        neg: None,
                    };
                    let id = match self.free_nodes.pop() {
                        Some(id) if (id as usize) < self.nodes.len() => {
                            if let Some(slot) = self.nodes.get_mut(id as usize) {
                                *slot = node;
                            }
                            id
                        }
                        _ => {
                            self.nodes.push(node);
                            (self.nodes.len() - 1) as u32
                        }
                    };
                    if let Some(p) = self.nodes.get_mut(cur as usize) {
                        p.children.insert((*seg).into(), id);
                        p.refresh_few();
                    }
                    id
                }
            };
            if let Some(n) = self.nodes.get_mut(next as usize) {
                n.refs += 1;
            }
            cur = next;
        }
        cur
    }

    fn find_path(&self, path: &[&str]) -> Option<u32> {
        let mut cur = ROOT;
        for seg in path {
            cur = *self.nodes.get(cur as usize)?.children.get(*seg)?;
        }
        Some(cur)
    }

    /// Drops one reference from every node on the path ending at `leaf`, freeing nodes
    /// that nothing refers to any more.
    fn release_path(&mut self, leaf: u32) {
        let mut cur = leaf;
        while cur != ROOT {
            let Some(n) = self.nodes.get_mut(cur as usize) else {
                return;
            };
            n.refs = n.refs.saturating_sub(1);
            let parent = n.parent;
            if n.refs == 0 {
                let key = std::mem::take(&mut n.key);
                n.m = None;
                n.neg = None;
                n.children.clear();
                n.few.clear();
                if let Some(p) = self.nodes.get_mut(parent as usize) {
                    p.children.remove(&*key);
                    p.refresh_few();
                }
                self.free_nodes.push(cur);
            }
            cur = parent;
        }
    }

    /// Estimated number of candidates a clause would produce: current posting sizes plus
    /// penalties for lookups that are unselective by nature (short prefixes, one-sided
    /// numeric ranges, wide CIDR blocks, exists, booleans).
    fn clause_cost(&self, path: &[&str], alts: &[Matcher]) -> u64 {
        let m = self
            .find_path(path)
            .and_then(|n| self.nodes.get(n as usize))
            .and_then(|n| n.m.as_deref());
        alts.iter()
            .map(|a| alt_cost(m, a))
            .fold(0u64, u64::saturating_add)
    }

    /// Adds a rule; a rule with the same key is replaced.
    pub fn insert(&mut self, key: K, pattern: &Pattern) {
        self.remove(key);
        let rid = match self.free_rules.pop() {
            Some(r) => r,
            None => {
                self.rules.push(None);
                (self.rules.len() - 1) as u32
            }
        };
        let mut slot = RuleSlot {
            key,
            pattern: pattern.clone(),
            conjs: Vec::new(),
            negs: Vec::new(),
        };
        let root = pattern.root.clone();
        // Every path the pattern reads is kept in the trie, so `matches_json` can drop
        // everything else while parsing.
        let mut paths = Vec::new();
        leaf_paths(&root, &mut Vec::new(), &mut paths);
        for p in &paths {
            self.ensure_path(p);
        }
        let conjs = expand(&root, &[]);
        let multi = conjs.len() > 1;
        for conj in conjs {
            // Register the conjunction under its single most selective indexable clause
            // (cheapest by current posting sizes); the rest is confirmed on a hit. Without
            // one, it is registered under its first negative clause.
            let mut best: Option<(u64, usize)> = None;
            for (ci, (path, alts)) in conj.iter().enumerate() {
                if !alts.iter().all(Matcher::indexable) {
                    continue;
                }
                let cost = self.clause_cost(path, alts);
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, ci));
                }
            }
            let cid = match self.free_conjs.pop() {
                Some(c) => c,
                None => {
                    self.conjs.push(Conj::empty());
                    (self.conjs.len() - 1) as u32
                }
            };
            if let Some(c) = self.conjs.get_mut(cid as usize) {
                *c = Conj {
                    rule: rid,
                    multi,
                    key: Some(key),
                    checks: Checks::default(),
                    oracle: false,
                };
            }
            if let Some((path, alts)) = best.and_then(|(_, ci)| conj.get(ci)) {
                let node = self.ensure_path(path);
                let hs = self.hs.clone();
                if let Some(nd) = self.nodes.get_mut(node as usize) {
                    let m = nd.m.get_or_insert_with(|| Box::new(Matchers::new(&hs)));
                    for alt in alts.iter() {
                        m.add(alt, Hit { conj: cid });
                    }
                }
            }
            let mut clauses: Vec<(u32, Arc<[Matcher]>)> = Vec::with_capacity(conj.len());
            let mut negs = Vec::new();
            let mut found = 0usize;
            for (path, alts) in &conj {
                if alts.iter().all(Matcher::indexable) {
                    if let Some(n) = self.find_path(path) {
                        found += 1;
                        clauses.push((n, Arc::clone(alts)));
                    }
                    continue;
                }
                found += 1;
                let registered = best.is_none() && negs.is_empty();
                let id = self.add_neg(path, alts, cid, registered);
                negs.push(id);
                slot.negs.push(id);
            }
            if let Some(c) = self.conjs.get_mut(cid as usize) {
                c.oracle = found != conj.len();
                if c.oracle {
                    self.n_oracle += 1;
                }
                c.checks = Checks::new(&clauses, negs);
            }
            slot.conjs
                .push((cid, best.map_or(NO_ENT, |(_, ci)| ci as u32)));
        }
        self.by_key.insert(key, rid);
        if let Some(s) = self.rules.get_mut(rid as usize) {
            *s = Some(slot);
        }
    }

    /// Registers a negative clause of conjunction `conj` at `path`.
    fn add_neg(
        &mut self,
        path: &[&str],
        alts: &Arc<[Matcher]>,
        conj: u32,
        registered: bool,
    ) -> u32 {
        let node = self.ensure_path(path);
        let mut ents = Vec::with_capacity(alts.len());
        for alt in alts.iter() {
            if has_entry(alt) {
                let e = match self.free_ents.pop() {
                    Some(e) => e,
                    None => {
                        self.n_ents += 1;
                        self.n_ents - 1
                    }
                };
                ents.push(e);
            } else {
                ents.push(NO_ENT);
            }
        }
        let absent_ok = alts.iter().any(|m| matches!(m, Matcher::Exists(false)));
        let id = match self.free_negs.pop() {
            Some(id) => id,
            None => {
                self.negs.push(None);
                (self.negs.len() - 1) as u32
            }
        };
        if let Some(nd) = self.nodes.get_mut(node as usize) {
            let nn = nd.neg.get_or_insert_with(Box::default);
            for (alt, &e) in alts.iter().zip(&ents) {
                if e != NO_ENT {
                    nn.excl.add(alt, e);
                }
            }
            nn.clauses.push(id);
            if registered {
                nn.registered.push(id);
            }
        }
        if absent_ok && registered {
            *self.absent_nodes.entry(node).or_insert(0) += 1;
        }
        if let Some(slot) = self.negs.get_mut(id as usize) {
            *slot = Some(NegClause {
                node,
                conj,
                registered,
                absent_ok,
                alts: Arc::clone(alts),
                ents: ents.into_boxed_slice(),
            });
        }
        id
    }

    fn remove_neg(&mut self, id: u32) {
        let Some(c) = self.negs.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.free_negs.push(id);
        if let Some(nn) = self
            .nodes
            .get_mut(c.node as usize)
            .and_then(|n| n.neg.as_mut())
        {
            for (alt, &e) in c.alts.iter().zip(c.ents.iter()) {
                if e != NO_ENT {
                    nn.excl.remove(alt, e);
                }
            }
            nn.clauses.retain(|&x| x != id);
            nn.registered.retain(|&x| x != id);
            if nn.clauses.is_empty() && nn.excl.is_empty() {
                if let Some(n) = self.nodes.get_mut(c.node as usize) {
                    n.neg = None;
                }
            }
        }
        self.free_ents
            .extend(c.ents.iter().copied().filter(|&e| e != NO_ENT));
        if c.absent_ok && c.registered {
            if let Some(n) = self.absent_nodes.get_mut(&c.node) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.absent_nodes.remove(&c.node);
                }
            }
        }
        self.release_path(c.node);
    }

    /// Removes the rule with this key; false when there was none.
    pub fn remove(&mut self, key: K) -> bool {
        let Some(rid) = self.by_key.remove(&key) else {
            return false;
        };
        let Some(slot) = self.rules.get_mut(rid as usize).and_then(Option::take) else {
            return false;
        };
        let root = slot.pattern.root.clone();
        let conjs = expand(&root, &[]);
        for (conj, &(cid, ci)) in conjs.iter().zip(&slot.conjs) {
            if let Some((path, alts)) = conj.get(ci as usize) {
                if let Some(node) = self.find_path(path) {
                    if let Some(m) = self.nodes.get_mut(node as usize).and_then(|n| n.m.as_mut()) {
                        for alt in alts.iter() {
                            m.remove(alt, cid);
                        }
                    }
                    self.release_path(node);
                }
            }
            if let Some(c) = self.conjs.get_mut(cid as usize) {
                if c.oracle {
                    self.n_oracle = self.n_oracle.saturating_sub(1);
                    c.oracle = false;
                }
                *c = Conj::empty();
            }
            self.free_conjs.push(cid);
        }
        for &id in &slot.negs {
            self.remove_neg(id);
        }
        let mut paths = Vec::new();
        leaf_paths(&root, &mut Vec::new(), &mut paths);
        for p in &paths {
            if let Some(node) = self.find_path(p) {
                self.release_path(node);
            }
        }
        self.free_rules.push(rid);
        if self.by_key.is_empty() {
            self.shrink();
        }
        true
    }

    /// With no rule left, gives every table's memory back (slot vectors and free lists
    /// keep their capacity otherwise).
    fn shrink(&mut self) {
        *self = RuleIndex::new();
    }

    /// Like [`RuleIndex::matches`] on `serde_json::from_str(text)`, but faster: while
    /// parsing, only the fields that some rule reads are kept (everything else is
    /// skipped without building values), so the result is the same.
    pub fn matches_json(&self, text: &str, out: &mut Vec<K>) -> Result<(), serde_json::Error> {
        // Fast path: scan the text straight into leaves. Rules that need the reference
        // evaluator need a `Value`, so they (and anything the scanner gives up on) take
        // the serde_json path below.
        if self.n_oracle == 0 {
            let done = SCRATCH.try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut sc) => {
                    let mut leaves = recycle(std::mem::take(&mut sc.leaves));
                    let ok = scan(text, self, ROOT, &mut leaves).is_some();
                    if ok {
                        self.run_leaves(&mut sc, &leaves, None, false, out);
                    }
                    sc.leaves = recycle(leaves);
                    ok
                }
                Err(_) => false,
            });
            if done == Ok(true) {
                return Ok(());
            }
        }
        self.matches_json_serde(text, out)
    }

    /// `matches_json` through serde_json: parses into a `Value` pruned to the path trie.
    fn matches_json_serde(&self, text: &str, out: &mut Vec<K>) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = serde::de::DeserializeSeed::deserialize(
            Pruner {
                idx: self,
                node: ROOT,
            },
            &mut de,
        )?;
        de.end()?;
        self.matches(&v, out);
        Ok(())
    }

    /// Appends the key of every rule matching `event` (each once, order unspecified).
    pub fn matches(&self, event: &Value, out: &mut Vec<K>) {
        let done = SCRATCH.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut sc) => {
                self.run(&mut sc, event, out);
                true
            }
            Err(_) => false,
        });
        if done != Ok(true) {
            let mut sc = Scratch::default();
            self.run(&mut sc, event, out);
        }
    }

    fn run(&self, sc: &mut Scratch, event: &Value, out: &mut Vec<K>) {
        let mut w = Walk {
            idx: self,
            saw_array_obj: false,
            leaves: Vec::new(),
        };
        if let Value::Object(m) = event {
            w.walk_obj(ROOT, m);
        }
        self.run_leaves(sc, &w.leaves, Some(event), w.saw_array_obj, out);
    }

    /// Looks every leaf up, then confirms the candidate conjunctions. `event` is needed
    /// only when the reference evaluator is (objects inside arrays, oracle conjunctions); `matches_json`'s fast path passes `None` and never needs it.
    fn run_leaves(
        &self,
        sc: &mut Scratch,
        leaves: &[(u32, Leaf<'_>)],
        event: Option<&Value>,
        saw_array_obj: bool,
        out: &mut Vec<K>,
    ) {
        sc.gen = sc.gen.wrapping_add(1);
        if sc.gen == 0 {
            sc.rule.iter_mut().for_each(|e| *e = 0);
            sc.gen = 1;
        }
        if sc.rule.len() < self.rules.len() {
            sc.rule.resize(self.rules.len(), 0);
        } else if sc.rule.len() > 2 * self.rules.len() + 4096 {
            // The index shrank: so does the per-thread scratch.
            sc.rule = vec![0; self.rules.len()];
        }
        sc.cand.clear();
        for (node, v) in leaves {
            self.lookup_leaf(sc, *node, v);
        }
        let has_negs = self.negs.len() > self.free_negs.len();
        if has_negs {
            self.prepare_negs(sc, leaves.len());
            self.eval_negs(sc, leaves, saw_array_obj);
        }
        let gen = sc.gen;
        let mut cands = std::mem::take(&mut sc.cand);
        // A conjunction is registered under one clause, but that clause can accept the
        // event through several leaves (array elements) or alternatives. Sorting a short
        // list is cheaper than a per-conjunction stamp, which is one more cache miss per
        // candidate in a large index.
        cands.sort_unstable();
        cands.dedup();
        self.preload(&cands);
        for &c in &cands {
            let Some(conj) = self.conjs.get(c as usize) else {
                continue;
            };
            let r = conj.rule as usize;
            // A rule with one conjunction is reached once (its conjunction is stamped),
            // so only rules with several need the per-rule stamp.
            if conj.multi && sc.rule.get(r).is_none_or(|&st| st == gen) {
                continue;
            }
            let matched = if saw_array_obj || conj.oracle {
                // Objects inside arrays: array consistency needs the full evaluator.
                match (self.rules.get(r), event) {
                    (Some(Some(slot)), Some(e)) if slot.pattern.matches(e) => Some(slot.key),
                    _ => None,
                }
            } else if conj.checks.holds(leaves)
                && conj
                    .checks
                    .negs()
                    .iter()
                    .all(|&n| self.neg_holds(sc, n, leaves, false))
            {
                conj.key
            } else {
                continue;
            };
            if conj.multi {
                if let Some(st) = sc.rule.get_mut(r) {
                    *st = gen;
                }
            }
            out.extend(matched);
        }
        sc.cand = cands;
    }

    /// Evaluates the negative clauses that conjunctions are registered under, at every
    /// node with a leaf (and the `exists: false` ones at nodes without), and adds the
    /// conjunctions of those that hold to the candidates. The other negative clauses are
    /// evaluated only when a candidate needs them ([`RuleIndex::neg_holds`]).
    fn eval_negs(&self, sc: &mut Scratch, leaves: &[(u32, Leaf<'_>)], saw_array_obj: bool) {
        let gen = sc.gen;
        for (node, _) in leaves {
            let Some(nn) = self
                .nodes
                .get(*node as usize)
                .and_then(|n| n.neg.as_deref())
            else {
                continue;
            };
            if let Some(seen) = sc.seen.get_mut(*node as usize) {
                *seen = gen;
            }
            for &id in &nn.registered {
                if self.neg_holds(sc, id, leaves, saw_array_obj) {
                    if let Some(Some(c)) = self.negs.get(id as usize) {
                        sc.cand.push(c.conj);
                    }
                }
            }
        }
        for &node in self.absent_nodes.keys() {
            if !saw_array_obj && sc.seen.get(node as usize) == Some(&gen) {
                continue;
            }
            let Some(nn) = self.nodes.get(node as usize).and_then(|n| n.neg.as_deref()) else {
                continue;
            };
            for &id in &nn.registered {
                if self.neg_holds(sc, id, leaves, saw_array_obj) {
                    if let Some(Some(c)) = self.negs.get(id as usize) {
                        sc.cand.push(c.conj);
                    }
                }
            }
        }
    }

    /// Sizes the per-event scratch of the negative clauses.
    fn prepare_negs(&self, sc: &mut Scratch, n_leaves: usize) {
        let sizes = [
            (&mut sc.held, self.negs.len()),
            (&mut sc.done, self.negs.len()),
            (&mut sc.seen, self.nodes.len()),
        ];
        for (v, n) in sizes {
            if v.len() < n {
                v.resize(n, 0);
            } else if v.len() > 2 * n + 4096 {
                *v = vec![0; n];
            }
        }
        sc.leaf_hits.clear();
        sc.leaf_hits.resize(n_leaves, None);
        sc.hit_ents.clear();
    }

    /// Does negative clause `id` hold for this event? Evaluated once per event (memoised
    /// in `sc.done` / `sc.held`); the exclusion tables of a leaf's node are probed once
    /// per leaf and event, whatever the number of clauses reading them.
    fn neg_holds(
        &self,
        sc: &mut Scratch,
        id: u32,
        leaves: &[(u32, Leaf<'_>)],
        saw_array_obj: bool,
    ) -> bool {
        let gen = sc.gen;
        let i = id as usize;
        if sc.done.get(i) == Some(&gen) {
            return sc.held.get(i) == Some(&gen);
        }
        if let Some(d) = sc.done.get_mut(i) {
            *d = gen;
        }
        let Some(Some(c)) = self.negs.get(i) else {
            return false;
        };
        let nn = self
            .nodes
            .get(c.node as usize)
            .and_then(|n| n.neg.as_deref());
        let shared = c.ents.iter().any(|&e| e != NO_ENT);
        let mut any_leaf = false;
        let mut holds = false;
        for (li, (node, v)) in leaves.iter().enumerate() {
            if *node != c.node {
                continue;
            }
            any_leaf = true;
            // The leaf's exclusion entries, probed once per leaf and event (sorted).
            let (start, end) = match sc.leaf_hits.get(li).copied().flatten() {
                Some(range) => range,
                None if shared => {
                    let start = sc.hit_ents.len();
                    if let Some(nn) = nn {
                        let hits = &mut sc.hit_ents;
                        nn.excl.hits(v, &mut sc.ex, &mut |e| hits.push(e));
                    }
                    if let Some(new) = sc.hit_ents.get_mut(start..) {
                        new.sort_unstable();
                    }
                    let range = (start as u32, sc.hit_ents.len() as u32);
                    if let Some(slot) = sc.leaf_hits.get_mut(li) {
                        *slot = Some(range);
                    }
                    range
                }
                None => (0, 0),
            };
            let hit_ents = sc
                .hit_ents
                .get(start as usize..end as usize)
                .unwrap_or_default();
            if c.alts.iter().zip(c.ents.iter()).any(|(m, &e)| {
                if e == NO_ENT {
                    match_leaf(m, v)
                } else {
                    excluded_alt_holds(hit_ents.binary_search(&e).is_ok())
                }
            }) {
                holds = true;
                break;
            }
        }
        // Without a leaf: `exists: false`. With objects inside arrays an element may lack
        // the field: a superset, which the reference evaluator then confirms.
        if c.absent_ok && (!any_leaf || saw_array_obj) {
            holds = true;
        }
        if holds {
            if let Some(h) = sc.held.get_mut(i) {
                *h = gen;
            }
        }
        holds
    }

    /// Looks one leaf up at its path node and marks the conjunctions it completes.
    fn lookup_leaf(&self, sc: &mut Scratch, node: u32, v: &Leaf<'_>) {
        let Some(m) = self.nodes.get(node as usize).and_then(|n| n.m.as_deref()) else {
            return;
        };
        m.lookup(v, &mut |h: Hit| sc.cand.push(h.conj));
    }

    /// Reads every candidate's record (and its out-of-line checks) before any is
    /// confirmed. These loads do not depend on each other, so in an index larger than the
    /// cache their misses overlap, instead of each confirmation waiting for its own.
    fn preload(&self, cands: &[u32]) {
        let mut sink = 0u32;
        for &c in cands {
            if let Some(conj) = self.conjs.get(c as usize) {
                sink ^= conj.rule;
            }
        }
        for &c in cands {
            let rest = self
                .conjs
                .get(c as usize)
                .and_then(|conj| conj.checks.rest.as_deref());
            if let Some(rest) = rest {
                sink ^= u32::from(rest.inline.first().copied().unwrap_or(0));
                sink ^= rest.other.first().map_or(0, |(node, _)| *node);
            }
        }
        std::hint::black_box(sink);
    }
}

impl<K> Trie for RuleIndex<K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    fn child(&self, node: u32, key: &str) -> Option<u32> {
        let n = self.nodes.get(node as usize)?;
        if n.children.len() <= FEW_CHILDREN {
            return n
                .few
                .iter()
                .find(|(k, _)| same_bytes(k.as_bytes(), key.as_bytes()))
                .map(|&(_, c)| c);
        }
        n.children.get(key).copied()
    }
    fn has_children(&self, node: u32) -> bool {
        self.nodes
            .get(node as usize)
            .is_some_and(|n| !n.children.is_empty())
    }
}

/// Byte equality without a `memcmp` call, eight bytes at a time: the strings compared
/// (object keys, inline checks) are short.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut wa, mut wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let words_equal = (&mut wa).zip(&mut wb).all(|(x, y)| {
        let word = |c: &[u8]| <[u8; 8]>::try_from(c).map(u64::from_ne_bytes).unwrap_or(0);
        word(x) == word(y)
    });
    words_equal
        && wa
            .remainder()
            .iter()
            .zip(wb.remainder())
            .all(|(x, y)| x == y)
}

/// Without objects inside arrays, a clause holds when a leaf at its path satisfies an
/// alternative, or when there is no leaf there and `exists: false` is an alternative.
fn clause_holds(node: u32, alts: &[Matcher], leaves: &[(u32, Leaf<'_>)]) -> bool {
    let mut any_leaf = false;
    for (n, v) in leaves {
        if *n == node {
            any_leaf = true;
            if alts.iter().any(|m| match_leaf(m, v)) {
                return true;
            }
        }
    }
    !any_leaf && alts.iter().any(|m| matches!(m, Matcher::Exists(false)))
}

struct Walk<'a, 'e, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    idx: &'a RuleIndex<K>,
    saw_array_obj: bool,
    /// Every scalar leaf met on an indexed path, with its path node.
    leaves: Vec<(u32, Leaf<'e>)>,
}

impl<'e, K> Walk<'_, 'e, K>
where
    K: Copy + Eq + Hash + Ord + fmt::Debug,
{
    fn walk_obj(&mut self, node: u32, map: &'e Map<String, Value>) {
        let Some(n) = self.idx.nodes.get(node as usize) else {
            return;
        };
        if n.children.len() <= map.len() {
            for (k, &child) in &n.children {
                if let Some(v) = map.get(&**k) {
                    self.walk_val(child, v, 0);
                }
            }
        } else {
            for (k, v) in map {
                if let Some(&child) = n.children.get(k.as_str()) {
                    self.walk_val(child, v, 0);
                }
            }
        }
    }

    fn walk_val(&mut self, node: u32, v: &'e Value, nest: usize) {
        match v {
            Value::Object(m) => self.walk_obj(node, m),
            Value::Array(a) => {
                for e in a {
                    match e {
                        Value::Array(_) => {
                            if nest < MAX_ARRAY_NEST {
                                self.walk_val(node, e, nest + 1);
                            }
                        }
                        Value::Object(m) => {
                            let has_children = self
                                .idx
                                .nodes
                                .get(node as usize)
                                .is_some_and(|n| !n.children.is_empty());
                            if has_children {
                                self.saw_array_obj = true;
                                self.walk_obj(node, m);
                            }
                        }
                        scalar => self.leaf(node, scalar),
                    }
                }
            }
            scalar => self.leaf(node, scalar),
        }
    }

    fn leaf(&mut self, node: u32, v: &'e Value) {
        if let Some(leaf) = Leaf::from_value(v) {
            self.leaves.push((node, leaf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::PatternLimits;
    use serde_json::json;

    fn pat(v: Value) -> Pattern {
        match Pattern::from_value(&v, &PatternLimits::default()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn numeric_ranges_indexed() {
        let mut idx = RuleIndex::new();
        for i in 0..1000u32 {
            let lo = f64::from(i) * 10.0;
            idx.insert(
                i,
                &pat(json!({"n": [{"numeric": [">=", lo, "<", lo + 10.5]}]})),
            );
        }
        idx.insert(
            5000,
            &pat(json!({"n": [{"numeric": [">", -1e300, "<", 1e300]}]})),
        );
        idx.insert(5001, &pat(json!({"n": [{"numeric": ["<", 0.5]}]})));
        idx.insert(5002, &pat(json!({"n": [{"numeric": [">", 9990]}]})));
        let mut out = Vec::new();
        idx.matches(&json!({"n": 20}), &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2, 5000]);
        out.clear();
        idx.matches(&json!({"n": 0.25}), &mut out);
        out.sort();
        assert_eq!(out, vec![0, 5000, 5001]);
        out.clear();
        idx.matches(&json!({"n": 9995}), &mut out);
        out.sort();
        assert_eq!(out, vec![999, 5000, 5002]);
    }

    #[test]
    fn shared_wildcard_scan_agrees_with_the_evaluator_through_churn() {
        // Wildcards over a three-letter alphabet overlap heavily: the automaton levels, the
        // greedy placement and the rebuild after removals are all exercised.
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let word = |len: u64, next: &mut dyn FnMut(u64) -> u64| -> String {
            (0..len)
                .map(|_| ['a', 'b', 'c'][next(3) as usize])
                .collect()
        };
        let wild = |next: &mut dyn FnMut(u64) -> u64| -> String {
            let segs = 1 + next(4);
            let mut w = String::new();
            for i in 0..segs {
                if i > 0 || next(2) == 0 {
                    w.push('*');
                }
                let len = 1 + next(4);
                w.push_str(&word(len, next));
            }
            if next(2) == 0 {
                w.push('*');
            }
            w
        };
        let mut pats = Vec::new();
        for _ in 0..120 {
            let n = 1 + next(4);
            let list: Vec<String> = (0..n).map(|_| wild(&mut next)).collect();
            let p = if next(3) == 0 {
                json!({"s": [{"wildcard": list[0].clone()}, {"anything-but": {"wildcard": list}}], "t": [{"exists": false}]})
            } else {
                json!({"s": [{"anything-but": {"wildcard": list}}]})
            };
            pats.push(pat(p));
        }
        let events: Vec<Value> = (0..60)
            .map(|i| {
                let len = next(16);
                let s = word(len, &mut next);
                if i % 5 == 0 {
                    json!({"s": [s, "ab"], "t": 1})
                } else {
                    json!({"s": s})
                }
            })
            .collect();
        let mut idx = RuleIndex::new();
        let mut live: Vec<usize> = Vec::new();
        let check = |idx: &RuleIndex<usize>, live: &[usize]| {
            for ev in &events {
                let mut want: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&i| pats[i].matches(ev))
                    .collect();
                want.sort();
                let mut got = Vec::new();
                idx.matches(ev, &mut got);
                got.sort();
                assert_eq!(got, want, "{ev}");
                let mut got = Vec::new();
                assert!(idx.matches_json(&ev.to_string(), &mut got).is_ok());
                got.sort();
                assert_eq!(got, want, "json {ev}");
            }
        };
        for (i, p) in pats.iter().enumerate() {
            idx.insert(i, p);
            live.push(i);
        }
        check(&idx, &live);
        for i in 0..100 {
            assert!(idx.remove(i));
        }
        live.retain(|&i| i >= 100);
        check(&idx, &live);
        for i in (0..100).step_by(3) {
            idx.insert(i, &pats[i]);
            live.push(i);
        }
        check(&idx, &live);
        for &i in &live {
            idx.remove(i);
        }
        assert!(idx.is_empty());
    }

    #[test]
    fn remove_frees_paths() {
        let mut idx = RuleIndex::new();
        idx.insert(
            1u32,
            &pat(json!({"a": {"b": ["x"]}, "c": [{"prefix": "p"}]})),
        );
        idx.insert(2u32, &pat(json!({"a": {"b": ["x"]}})));
        assert!(idx.remove(1));
        assert!(!idx.remove(1));
        let mut out = Vec::new();
        idx.matches(&json!({"a": {"b": "x"}}), &mut out);
        assert_eq!(out, vec![2]);
        assert!(idx.remove(2));
        assert!(idx.is_empty());
        assert_eq!(idx.nodes.len() - idx.free_nodes.len(), 1);
    }

    #[test]
    fn matches_json_agrees_with_serde_on_odd_text() {
        let mut idx = RuleIndex::new();
        idx.insert(
            1u32,
            &pat(json!({"a": ["x"], "b": {"c": [{"prefix": "p"}]}})),
        );
        idx.insert(2u32, &pat(json!({"n": [{"numeric": [">", 1]}]})));
        idx.insert(3u32, &pat(json!({"a": [{"exists": true}], "n": [0]})));
        let texts = [
            r#"{"a":"x"}"#,
            r#" { "a" : "x" , "b" : { "c" : "pq" } } "#,
            r#"{"a":"x","a":"y"}"#,
            r#"{"a":"y","a":"x"}"#,
            r#"{"a":"\u0078"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"z":"\ud800","a":"x"}"#,
            r#"{"a":"x\/"}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"x\u{1}\"}",
            "{\"z\":\"\u{1}\",\"a\":\"x\"}",
            r#"{"a":"x",}"#,
            r#"{"a":"x" "b":1}"#,
            r#"{"a" "x"}"#,
            r#"{"a":["x",]}"#,
            r#"{"a":["y",["x"]]}"#,
            r#"{"a":"x"} x"#,
            r#"{"a":"x"}}"#,
            r#"{"a":tru}"#,
            r#"{"a":true}"#,
            r#"{"n":01}"#,
            r#"{"n":1.}"#,
            r#"{"n":-}"#,
            r#"{"n":-0}"#,
            r#"{"n":0,"a":null}"#,
            r#"{"n":2e0}"#,
            r#"{"n":1e400}"#,
            r#"{"z":1e400,"n":2}"#,
            r#"{"n":18446744073709551616}"#,
            r#"{"n":[2, 3.5e1, -7]}"#,
            r#"{"b":[{"c":"pp"}]}"#,
            r#"{"b":{"c":["pp", {"d": 1}]}}"#,
            r#"{"z":[[[[{"a":1}]]]],"a":"x"}"#,
            r#"[{"a":"x"}]"#,
            "1e400",
            "",
            "   ",
            r#"{"a":"x""#,
            r#"{"a":"x"#,
        ];
        for t in texts {
            let mut got = Vec::new();
            let r = idx.matches_json(t, &mut got);
            got.sort();
            let mut want = Vec::new();
            let w = idx.matches_json_serde(t, &mut want);
            want.sort();
            assert_eq!(r.is_ok(), w.is_ok(), "{t}: {r:?} {w:?}");
            assert_eq!(got, want, "{t}");
            if let Err(e) = r {
                assert_eq!(Some(e.to_string()), w.err().map(|e| e.to_string()), "{t}");
            }
        }
    }

    #[test]
    fn numbers_out_of_range_are_errors_even_where_no_rule_reads_them() {
        let mut idx = RuleIndex::new();
        idx.insert(1u32, &pat(json!({"a": ["x"]})));
        let long_int = format!("1{}", "0".repeat(399));
        let fits_int = format!("1{}", "0".repeat(299));
        let texts = [
            r#"{"z":1e400,"a":"x"}"#.to_owned(),
            r#"{"z":[1,-1E+999],"a":"x"}"#.to_owned(),
            r#"{"z":{"y":1e400},"a":"x"}"#.to_owned(),
            format!(r#"{{"z":{long_int},"a":"x"}}"#),
            r#"{"z":1e300,"a":"x"}"#.to_owned(),
            r#"{"z":-1.5e-400,"a":"x"}"#.to_owned(),
            r#"{"z":"1e400","a":"x"}"#.to_owned(),
            format!(r#"{{"z":{fits_int},"a":"x"}}"#),
        ];
        for t in &texts {
            let full_parse = serde_json::from_str::<Value>(t);
            for (path, result) in [
                ("scanner", idx.matches_json(t, &mut Vec::new())),
                ("serde", idx.matches_json_serde(t, &mut Vec::new())),
            ] {
                assert_eq!(
                    result.is_ok(),
                    full_parse.is_ok(),
                    "{path}: {t}: {result:?}"
                );
                if let (Err(e), Err(f)) = (&result, &full_parse) {
                    assert_eq!(e.to_string(), f.to_string(), "{path}: {t}");
                }
            }
        }
    }

    #[test]
    fn inline_checks_long_strings_and_high_node_ids() {
        let mut idx = RuleIndex::new();
        // Push path node ids past 128 (LEB128 needs two bytes).
        for i in 0..300u32 {
            idx.insert(1000 + i, &pat(json!({format!("f{i}"): ["v"]})));
        }
        let long = "x".repeat(70);
        let longer = "y".repeat(300);
        idx.insert(
            1,
            &pat(json!({"src": ["a"], "g299": [long.clone(), {"prefix": longer.clone()}]})),
        );
        idx.insert(2, &pat(json!({"src": ["a"], "f299": [{"suffix": "tail"}]})));
        let cases = [
            (json!({"src": "a", "g299": long.clone()}), vec![1]),
            (json!({"src": "a", "g299": format!("{longer}z")}), vec![1]),
            (json!({"src": "a", "g299": format!("{long}z")}), vec![]),
            (json!({"src": "a", "f299": "the tail"}), vec![2]),
            (json!({"src": "a", "f299": "tail!"}), vec![]),
        ];
        for (ev, want) in cases {
            let mut out = Vec::new();
            idx.matches(&ev, &mut out);
            out.retain(|k| *k < 1000);
            out.sort();
            assert_eq!(out, want, "{ev}");
            let mut out = Vec::new();
            assert!(idx.matches_json(&ev.to_string(), &mut out).is_ok());
            out.retain(|k| *k < 1000);
            out.sort();
            assert_eq!(out, want, "{ev}");
        }
    }

    #[test]
    fn inline_numeric_checks_agree_with_the_evaluator() {
        // Every rule is registered under `src` (an exact string), so its numeric clause is
        // a check: inline when its bounds fit (integers in i64, any finite float), out of
        // line otherwise (integers beyond i64).
        let rules = [
            json!({"src": ["a"], "n": [{"numeric": [">=", 5, "<", 10]}]}),
            json!({"src": ["a"], "n": [{"numeric": [">", 5, "<=", 10]}]}),
            json!({"src": ["a"], "n": [{"numeric": [">", -2.5]}]}),
            json!({"src": ["a"], "n": [{"numeric": ["<=", 0]}]}),
            json!({"src": ["a"], "n": [{"numeric": ["=", 7]}]}),
            json!({"src": ["a"], "n": [{"numeric": [">", 9223372036854775807_u64]}]}),
            json!({"src": ["a"], "n": [{"numeric": ["<", -9223372036854775808_i64]}]}),
            json!({"src": ["a"], "n": [{"numeric": [">=", 1e300]}]}),
            json!({"src": ["a"], "n": ["seven", {"numeric": [">", 100, "<", 200]}]}),
            json!({"src": ["a"], "n": [{"prefix": "x"}, {"numeric": ["<", 1]}], "m": [{"numeric": [">", 0.1]}]}),
            // Exact numbers: inline as the range [n, n], out of line beyond i64.
            json!({"src": ["a"], "n": [7]}),
            json!({"src": ["a"], "n": [5, 10.0, -0.0]}),
            json!({"src": ["a"], "n": [150, "seven"]}),
            json!({"src": ["a"], "n": [18446744073709551615_u64]}),
            json!({"src": ["a"], "n": [-2.5], "m": [0.2]}),
        ];
        let pats: Vec<Pattern> = rules.iter().map(|r| pat(r.clone())).collect();
        let mut idx = RuleIndex::new();
        for (i, p) in pats.iter().enumerate() {
            idx.insert(i, p);
        }
        let values = [
            json!(5),
            json!(5.0),
            json!(4.999),
            json!(10),
            json!(10.0),
            json!(9.5),
            json!(-2.5),
            json!(-2.4),
            json!(0),
            json!(-0.0),
            json!(7),
            json!(7.0000001),
            json!(9223372036854775807_u64),
            json!(18446744073709551615_u64),
            json!(-9223372036854775808_i64),
            json!(-1e19),
            json!(1e300),
            json!(150),
            json!("seven"),
            json!("7"),
            json!("xyz"),
            json!(null),
            json!(true),
            json!([3, 150]),
            json!([]),
            json!({"n": 1}),
        ];
        for n in &values {
            for m in [json!(0.2), json!(0.1), json!("0.5")] {
                for src in ["a", "b"] {
                    let ev = json!({"src": src, "n": n, "m": m});
                    let mut want: Vec<usize> =
                        (0..pats.len()).filter(|&i| pats[i].matches(&ev)).collect();
                    want.sort();
                    let mut got = Vec::new();
                    idx.matches(&ev, &mut got);
                    got.sort();
                    assert_eq!(got, want, "matches {ev}");
                    let mut got = Vec::new();
                    assert!(idx.matches_json(&ev.to_string(), &mut got).is_ok());
                    got.sort();
                    assert_eq!(got, want, "matches_json {ev}");
                }
            }
        }
        // The test exercises both layouts.
        let inline = idx.conjs.iter().filter(|c| c.checks.rest.is_none()).count();
        assert!(inline >= 9 && inline < idx.conjs.len(), "{inline} inline");
    }
}
