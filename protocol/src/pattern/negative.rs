//! Shared tables for the alternatives a positive lookup cannot find: every `anything-but`
//! form. Owns, per path node, the values those alternatives exclude (exact strings,
//! folded strings, numbers, prefixes, suffixes, wildcards) so that one pass over an event
//! leaf reports every excluded entry at once, whatever the number of rules: a hash probe
//! per string table, one probe per prefix/suffix length in use, and for wildcards one
//! Aho-Corasick scan of the leaf per automaton level (see [`WildSet`]), never a scan per
//! rule. Does not own which clauses hold or which rules match (see `index`).

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use super::ast::Matcher;
use super::values::{fold, Leaf, Num, Wildcard};

/// Exclusion tables of one path node. An entry is one `anything-but` alternative of one
/// clause (its list of values); it is "hit" by a leaf that one of its values excludes.
#[derive(Default)]
pub(crate) struct Excl {
    strs: HashMap<Box<str>, Vec<u32>>,
    /// Folded values of `anything-but: {equals-ignore-case}`.
    eic: HashMap<Box<str>, Vec<u32>>,
    nums: HashMap<Num, Vec<u32>>,
    prefix: AffixSet,
    suffix: AffixSet,
    wild: WildSet,
}

/// Scratch of one leaf evaluation, kept between events.
#[derive(Default)]
pub(crate) struct ExclScratch {
    /// (segment id, start) of every middle-segment occurrence in the leaf.
    occ: Vec<(u32, u32)>,
}

impl Excl {
    pub(crate) fn is_empty(&self) -> bool {
        self.strs.is_empty()
            && self.eic.is_empty()
            && self.nums.is_empty()
            && self.prefix.map.is_empty()
            && self.suffix.map.is_empty()
            && self.wild.is_empty()
    }

    /// Files the values of one `anything-but` alternative under entry `ent`.
    pub(crate) fn add(&mut self, m: &Matcher, ent: u32) {
        match m {
            Matcher::AbStr(list) => {
                for s in list {
                    self.strs.entry(s.as_str().into()).or_default().push(ent);
                }
            }
            Matcher::AbEic(list) => {
                for s in list {
                    self.eic.entry(s.as_str().into()).or_default().push(ent);
                }
            }
            Matcher::AbNum(list) => {
                for n in list {
                    self.nums.entry(*n).or_default().push(ent);
                }
            }
            Matcher::AbPrefix(list) => list.iter().for_each(|p| self.prefix.add(p, ent)),
            Matcher::AbSuffix(list) => list.iter().for_each(|p| self.suffix.add(p, ent)),
            Matcher::AbWildcard(list) => list.iter().for_each(|w| self.wild.add(w, ent)),
            _ => {}
        }
    }

    pub(crate) fn remove(&mut self, m: &Matcher, ent: u32) {
        fn drop_ent<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u32>>, key: &K, ent: u32) {
            if let Some(v) = map.get_mut(key) {
                v.retain(|&e| e != ent);
                if v.is_empty() {
                    map.remove(key);
                }
            }
        }
        match m {
            Matcher::AbStr(list) => list
                .iter()
                .for_each(|s| drop_ent(&mut self.strs, &s.as_str().into(), ent)),
            Matcher::AbEic(list) => list
                .iter()
                .for_each(|s| drop_ent(&mut self.eic, &s.as_str().into(), ent)),
            Matcher::AbNum(list) => list.iter().for_each(|n| drop_ent(&mut self.nums, n, ent)),
            Matcher::AbPrefix(list) => list.iter().for_each(|p| self.prefix.remove(p, ent)),
            Matcher::AbSuffix(list) => list.iter().for_each(|p| self.suffix.remove(p, ent)),
            Matcher::AbWildcard(_) => self.wild.remove(ent),
            _ => {}
        }
    }

    /// Reports every entry that the leaf `v` hits (possibly more than once).
    pub(crate) fn hits(&self, v: &Leaf<'_>, sc: &mut ExclScratch, f: &mut dyn FnMut(u32)) {
        match v {
            Leaf::Str(s) => {
                let s: &str = s;
                if let Some(es) = self.strs.get(s) {
                    es.iter().for_each(|&e| f(e));
                }
                if !self.eic.is_empty() {
                    if let Some(es) = self.eic.get(&*fold(s)) {
                        es.iter().for_each(|&e| f(e));
                    }
                }
                self.prefix.hits(s.as_bytes(), false, f);
                self.suffix.hits(s.as_bytes(), true, f);
                self.wild.hits(s, sc, f);
            }
            Leaf::Num(Some(n)) => {
                if let Some(es) = self.nums.get(n) {
                    es.iter().for_each(|&e| f(e));
                }
            }
            _ => {}
        }
    }
}

/// Exact prefix (or suffix) strings, probed once per length in use.
#[derive(Default)]
struct AffixSet {
    map: HashMap<Box<[u8]>, Vec<u32>>,
    /// (length, values of that length), sorted by length.
    lens: Vec<(usize, u32)>,
}

impl AffixSet {
    fn add(&mut self, p: &str, ent: u32) {
        self.map.entry(p.as_bytes().into()).or_default().push(ent);
        match self.lens.binary_search_by_key(&p.len(), |&(l, _)| l) {
            Ok(at) => self.lens[at].1 += 1,
            Err(at) => self.lens.insert(at, (p.len(), 1)),
        }
    }

    fn remove(&mut self, p: &str, ent: u32) {
        let key: &[u8] = p.as_bytes();
        let Some(v) = self.map.get_mut(key) else {
            return;
        };
        let before = v.len();
        v.retain(|&e| e != ent);
        let removed = (before - v.len()) as u32;
        if v.is_empty() {
            self.map.remove(key);
        }
        if let Ok(at) = self.lens.binary_search_by_key(&p.len(), |&(l, _)| l) {
            self.lens[at].1 = self.lens[at].1.saturating_sub(removed);
            if self.lens[at].1 == 0 {
                self.lens.remove(at);
            }
        }
    }

    fn hits(&self, s: &[u8], suffix: bool, f: &mut dyn FnMut(u32)) {
        for &(l, _) in &self.lens {
            let part = if suffix {
                s.len().checked_sub(l).and_then(|at| s.get(at..))
            } else {
                s.get(..l)
            };
            let Some(part) = part else { break };
            if let Some(es) = self.map.get(part) {
                es.iter().for_each(|&e| f(e));
            }
        }
    }
}

/// One wildcard of an `anything-but: {wildcard}` entry: its first and last segments are
/// compared in place, its middle segments are found by the shared automata.
struct WildItem {
    ent: u32,
    /// False for a wildcard without `*` (an exact string).
    star: bool,
    first: Box<str>,
    last: Box<str>,
    mids: Box<[u32]>,
}

/// One Aho-Corasick automaton over some of the middle segments.
struct Level {
    ac: AhoCorasick,
    /// Pattern index -> segment id.
    ids: Vec<u32>,
}

/// A middle segment: its text and the number of wildcards using it (0: dead, still in an
/// automaton until the next rebuild).
struct Seg {
    text: Box<str>,
    refs: u32,
}

/// Every wildcard of the node's `anything-but: {wildcard}` entries. Middle segments
/// (between two `*`) are found by a handful of Aho-Corasick automata built like a
/// log-structured merge: a new segment gets its own level and levels of similar size are
/// merged, so building costs O(log n) per segment amortised and a leaf is scanned once
/// per level (O(log n) levels), whatever the number of rules. Occurrences are reported
/// overlapping, then only the wildcards whose first middle segment occurs are placed
/// greedily (leftmost occurrence of each middle segment after the previous one, by binary
/// search), as `Wildcard::matches` does. Wildcards without a middle segment are found by
/// their first (or last) segment in an exact prefix (suffix) table.
#[derive(Default)]
struct WildSet {
    items: Vec<Option<WildItem>>,
    free_items: Vec<u32>,
    /// Entry -> its items.
    by_ent: HashMap<u32, Vec<u32>>,
    /// First middle segment id -> items.
    by_mid: HashMap<u32, Vec<u32>>,
    /// Items without a middle segment, by first segment (when not empty) ...
    by_first: AffixSet,
    /// ... else by last segment (when not empty) ...
    by_last: AffixSet,
    /// ... else (`*`, or the empty string exactly).
    any: Vec<u32>,
    /// Segment text -> id.
    ids: HashMap<Box<str>, u32>,
    segs: Vec<Seg>,
    levels: Vec<Level>,
    /// Segments in the automata that no wildcard uses any more.
    dead: usize,
}

impl WildSet {
    fn is_empty(&self) -> bool {
        self.by_ent.is_empty()
    }

    fn add(&mut self, w: &Wildcard, ent: u32) {
        let n = w.segs.len();
        let (first, last) = match (w.segs.first(), w.segs.last()) {
            (Some(f), Some(l)) => (f.as_str(), l.as_str()),
            _ => return,
        };
        let mut mids = Vec::new();
        if n > 2 {
            for seg in &w.segs[1..n - 1] {
                mids.push(self.seg_ref(seg));
            }
        }
        let item = WildItem {
            ent,
            star: n > 1,
            first: first.into(),
            last: if n > 1 { last.into() } else { "".into() },
            mids: mids.into_boxed_slice(),
        };
        let ix = match self.free_items.pop() {
            Some(ix) => ix,
            None => {
                self.items.push(None);
                (self.items.len() - 1) as u32
            }
        };
        self.file(ix, &item);
        if let Some(slot) = self.items.get_mut(ix as usize) {
            *slot = Some(item);
        }
        self.by_ent.entry(ent).or_default().push(ix);
    }

    /// Files item `ix` where a leaf finds it.
    fn file(&mut self, ix: u32, it: &WildItem) {
        if let Some(&m) = it.mids.first() {
            self.by_mid.entry(m).or_default().push(ix);
        } else if !it.first.is_empty() {
            self.by_first.add(&it.first, ix);
        } else if !it.last.is_empty() {
            self.by_last.add(&it.last, ix);
        } else {
            self.any.push(ix);
        }
    }

    fn seg_ref(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            if let Some(seg) = self.segs.get_mut(id as usize) {
                if seg.refs == 0 {
                    self.dead = self.dead.saturating_sub(1);
                }
                seg.refs += 1;
            }
            return id;
        }
        let id = self.segs.len() as u32;
        self.segs.push(Seg {
            text: text.into(),
            refs: 1,
        });
        self.ids.insert(text.into(), id);
        self.push_level(vec![id]);
        id
    }

    fn remove(&mut self, ent: u32) {
        let Some(ixs) = self.by_ent.remove(&ent) else {
            return;
        };
        for ix in ixs {
            let Some(it) = self.items.get_mut(ix as usize).and_then(Option::take) else {
                continue;
            };
            self.free_items.push(ix);
            if let Some(&m) = it.mids.first() {
                if let Some(v) = self.by_mid.get_mut(&m) {
                    v.retain(|&x| x != ix);
                    if v.is_empty() {
                        self.by_mid.remove(&m);
                    }
                }
            } else if !it.first.is_empty() {
                self.by_first.remove(&it.first, ix);
            } else if !it.last.is_empty() {
                self.by_last.remove(&it.last, ix);
            } else {
                self.any.retain(|&x| x != ix);
            }
            for &id in it.mids.iter() {
                if let Some(seg) = self.segs.get_mut(id as usize) {
                    seg.refs = seg.refs.saturating_sub(1);
                    if seg.refs == 0 {
                        self.dead += 1;
                    }
                }
            }
        }
        if self.by_ent.is_empty() {
            *self = WildSet::default();
        } else if self.dead > 16 && self.dead * 2 > self.segs.len() {
            self.rebuild();
        }
    }

    /// Renumbers the live segments into one automaton (after many removals).
    fn rebuild(&mut self) {
        let mut renum = vec![u32::MAX; self.segs.len()];
        let mut segs = Vec::with_capacity(self.segs.len() - self.dead);
        for (old, seg) in std::mem::take(&mut self.segs).into_iter().enumerate() {
            if seg.refs > 0 {
                renum[old] = segs.len() as u32;
                segs.push(seg);
            }
        }
        self.by_mid.clear();
        for (ix, it) in self.items.iter_mut().enumerate() {
            let Some(it) = it else { continue };
            for m in it.mids.iter_mut() {
                *m = renum.get(*m as usize).copied().unwrap_or(u32::MAX);
            }
            if let Some(&m) = it.mids.first() {
                self.by_mid.entry(m).or_default().push(ix as u32);
            }
        }
        self.ids = segs
            .iter()
            .enumerate()
            .map(|(id, seg)| (seg.text.clone(), id as u32))
            .collect();
        self.segs = segs;
        self.dead = 0;
        self.levels.clear();
        self.push_level((0..self.segs.len() as u32).collect());
    }

    /// Adds an automaton for the segments `ids`, merging levels while the last is not
    /// larger than the new one.
    fn push_level(&mut self, mut ids: Vec<u32>) {
        while self
            .levels
            .last()
            .is_some_and(|prev| prev.ids.len() <= ids.len())
        {
            // Dead segments stay (a later wildcard may revive them under the same id);
            // a rebuild drops them.
            let Some(prev) = self.levels.pop() else { break };
            ids.extend(prev.ids);
        }
        let texts: Vec<&[u8]> = ids
            .iter()
            .filter_map(|&id| self.segs.get(id as usize).map(|s| s.text.as_bytes()))
            .collect();
        let built = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            // Compact and predictable memory (a DFA can take a kilobyte per segment).
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(texts);
        if let Ok(ac) = built {
            self.levels.push(Level { ac, ids });
        }
    }

    fn hits(&self, s: &str, sc: &mut ExclScratch, f: &mut dyn FnMut(u32)) {
        if self.is_empty() {
            return;
        }
        let mut check = |ix: u32, occ: &[(u32, u32)]| {
            if let Some(Some(it)) = self.items.get(ix as usize) {
                if self.item_matches(it, s, occ) {
                    f(it.ent);
                }
            }
        };
        sc.occ.clear();
        if !self.by_mid.is_empty() {
            for level in &self.levels {
                for m in level.ac.find_overlapping_iter(s.as_bytes()) {
                    if let Some(&id) = level.ids.get(m.pattern().as_usize()) {
                        sc.occ.push((id, m.start() as u32));
                    }
                }
            }
            sc.occ.sort_unstable();
            let occ = &sc.occ;
            let mut prev = None;
            for &(id, _) in occ {
                if prev == Some(id) {
                    continue;
                }
                prev = Some(id);
                for &ix in self.by_mid.get(&id).map_or(&[][..], Vec::as_slice) {
                    check(ix, occ);
                }
            }
        }
        let occ = &sc.occ;
        self.by_first
            .hits(s.as_bytes(), false, &mut |ix| check(ix, occ));
        self.by_last
            .hits(s.as_bytes(), true, &mut |ix| check(ix, occ));
        for &ix in &self.any {
            check(ix, occ);
        }
    }

    fn item_matches(&self, it: &WildItem, s: &str, occ: &[(u32, u32)]) -> bool {
        if !it.star {
            return s == &*it.first;
        }
        if s.len() < it.first.len() + it.last.len()
            || !s.starts_with(&*it.first)
            || !s.ends_with(&*it.last)
        {
            return false;
        }
        let end = s.len() - it.last.len();
        let mut p = it.first.len();
        for &m in it.mids.iter() {
            let Some(len) = self.segs.get(m as usize).map(|seg| seg.text.len()) else {
                return false;
            };
            let at = occ.partition_point(|&(id, start)| (id, start as usize) < (m, p));
            match occ.get(at) {
                Some(&(id, start)) if id == m && start as usize + len <= end => {
                    p = start as usize + len;
                }
                _ => return false,
            }
        }
        true
    }
}
