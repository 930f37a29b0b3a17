//! A strict, allocation-light JSON scanner for [`super::RuleIndex::matches_json`]: it
//! validates the whole event text and collects only the scalar leaves found on paths of
//! the index's path trie, without building a `serde_json::Value` tree.
//!
//! It is a fast path, not a second JSON parser to trust: it accepts a subset of what
//! `serde_json` accepts and gives up (`None`) on anything outside that subset (`\u`
//! escapes, deep nesting, a top level that is not an object, duplicate indexed keys,
//! objects inside arrays on indexed paths, numbers it does not parse itself, numbers
//! beyond f64's range even in skipped values, and every syntax error). The caller then
//! takes the `serde_json` path, which produces the exact result or error.

use std::borrow::Cow;

use super::eval::MAX_ARRAY_NEST;
use super::values::{Leaf, Num};

/// The path trie as the scanner sees it.
pub(crate) trait Trie {
    /// The child of `node` reached by object key `key`.
    fn child(&self, node: u32, key: &str) -> Option<u32>;
    /// Does `node` have any children (is an object expected below it)?
    fn has_children(&self, node: u32) -> bool;
}

/// Nesting of arrays and objects beyond this gives up (serde_json's limit is 128).
const MAX_DEPTH: usize = 120;
/// Indexed keys per object beyond this give up (duplicate detection is a linear scan).
const MAX_KEPT: usize = 32;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first position at or after `i` holding `"`, `\\` or a control character (or the
/// end of `b`): string content is scanned eight bytes at a time.
#[inline]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // `(x - ONES) & !x` flags the zero bytes of x, `(w - 0x20..) & !w` the bytes below
        // 0x20. A borrow can flag bytes above a flagged byte falsely, never below one, so
        // the lowest flag (the only one used) is exact.
        let m = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    // Fewer than eight bytes left.
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// Is this JSON number's magnitude within f64's range (as serde_json requires of every
/// number it reads, skipped or not)? Only an exponent or more than 300 digits can leave
/// it, so the common number is not parsed.
fn in_f64_range(number: &str) -> bool {
    let may_overflow = number.len() > 300 || number.bytes().any(|b| b == b'e' || b == b'E');
    !may_overflow || number.parse::<f64>().is_ok_and(f64::is_finite)
}

pub(crate) struct Scanner<'t, 'x, T: Trie> {
    text: &'t str,
    b: &'t [u8],
    pos: usize,
    trie: &'x T,
    /// Every scalar leaf met on an indexed path, with its path node.
    pub(crate) leaves: &'x mut Vec<(u32, Leaf<'t>)>,
}

/// Scans `text`, appending the leaves to `leaves`; `None` means "use serde_json".
pub(crate) fn scan<'t, T: Trie>(
    text: &'t str,
    trie: &T,
    root: u32,
    leaves: &mut Vec<(u32, Leaf<'t>)>,
) -> Option<()> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        pos: 0,
        trie,
        leaves,
    };
    s.ws();
    // Only objects: serde_json reads every number of a top-level array or scalar in
    // full (range errors), which the skipping below does not.
    s.keep_obj(root, 0)?;
    s.ws();
    (s.pos == s.b.len()).then_some(())
}

impl<'t, T: Trie> Scanner<'t, '_, T> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.pos += 1;
            Some(())
        } else {
            None
        }
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        if self.b.get(self.pos..end)? == word {
            self.pos = end;
            Some(())
        } else {
            None
        }
    }

    /// A string starting at `"`; borrowed when it has no escapes (the common case, kept
    /// small so that it inlines into its callers).
    #[inline]
    fn string(&mut self) -> Option<Cow<'t, str>> {
        let open = self.pos;
        self.eat(b'"')?;
        let start = self.pos;
        self.pos = plain_run(self.b, self.pos);
        if self.peek()? == b'"' {
            let s = self.text.get(start..self.pos)?;
            self.pos += 1;
            return Some(Cow::Borrowed(s));
        }
        self.pos = open;
        self.escaped_string(true)
    }

    /// A string starting at `"` that has escapes (or an error): rebuilt when `build` is
    /// true, else only validated (and an empty string returned).
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self, build: bool) -> Option<Cow<'t, str>> {
        self.eat(b'"')?;
        let start = self.pos;
        self.pos = plain_run(self.b, self.pos);
        match *self.b.get(self.pos)? {
            b'"' => {
                let s = self.text.get(start..self.pos)?;
                self.pos += 1;
                return Some(Cow::Borrowed(s));
            }
            b'\\' => {}
            _ => return None,
        }
        // Escapes: rebuild the string (or just validate it).
        let mut out = String::new();
        if build {
            out.push_str(self.text.get(start..self.pos)?);
        }
        let mut run = self.pos;
        loop {
            let c = *self.b.get(self.pos)?;
            match c {
                b'"' => {
                    if build {
                        out.push_str(self.text.get(run..self.pos)?);
                    }
                    self.pos += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    if build {
                        out.push_str(self.text.get(run..self.pos)?);
                    }
                    let e = *self.b.get(self.pos + 1)?;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        // `\u` (surrogate rules) is left to serde_json.
                        _ => return None,
                    };
                    if build {
                        out.push(ch);
                    }
                    self.pos += 2;
                    run = self.pos;
                }
                0..=0x1f => return None,
                _ => self.pos = plain_run(self.b, self.pos + 1),
            }
        }
    }

    /// Steps over (validates) a string starting at `"` without building it.
    #[inline]
    fn skip_string(&mut self) -> Option<()> {
        let open = self.pos;
        self.eat(b'"')?;
        self.pos = plain_run(self.b, self.pos);
        if self.peek()? == b'"' {
            self.pos += 1;
            return Some(());
        }
        // Escapes (or an error): the general path.
        self.pos = open;
        self.escaped_string(false).map(drop)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.b.get(self.pos) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Validates a number (JSON grammar); returns its text and whether it is a plain
    /// non-negative integer.
    fn number(&mut self) -> Option<(&'t str, bool)> {
        let start = self.pos;
        let neg = self.peek()? == b'-';
        if neg {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let mut plain = !neg;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return None;
            }
            plain = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            plain = false;
        }
        Some((self.text.get(start..self.pos)?, plain))
    }

    /// Steps over the opening bracket of a container at nesting `depth`; `Some(true)` when
    /// the container is empty (and already closed by `close`).
    fn open(&mut self, depth: usize, close: u8) -> Option<bool> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        self.ws();
        if self.peek()? == close {
            self.pos += 1;
            return Some(true);
        }
        Some(false)
    }

    /// After an item of a container: `,` gives `Some(false)` (another item follows),
    /// `close` gives `Some(true)` (the container ended), anything else `None`.
    fn next_item(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.pos += 1;
                Some(false)
            }
            c if c == close => {
                self.pos += 1;
                Some(true)
            }
            _ => None,
        }
    }

    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.skip_string()?;
            }
            b'{' => {
                let depth = depth + 1;
                if self.open(depth, b'}')? {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_string()?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.skip_value(depth)?;
                    if self.next_item(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                let depth = depth + 1;
                if self.open(depth, b']')? {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth)?;
                    if self.next_item(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.lit(b"true")?,
            b'f' => self.lit(b"false")?,
            b'n' => self.lit(b"null")?,
            _ => {
                let (text, _) = self.number()?;
                // serde_json refuses a number beyond f64's range even where it is not
                // used; such a number is left to it, for the same error.
                if !in_f64_range(text) {
                    return None;
                }
            }
        }
        Some(())
    }

    /// An object at trie node `node`: indexed keys are descended into, the rest skipped.
    fn keep_obj(&mut self, node: u32, depth: usize) -> Option<()> {
        let depth = depth + 1;
        if self.peek()? != b'{' {
            return None;
        }
        if self.open(depth, b'}')? {
            return Some(());
        }
        let mut seen = [0u32; MAX_KEPT];
        let mut n_seen = 0usize;
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            match self.trie.child(node, &key) {
                Some(child) => {
                    // serde_json keeps the last of duplicate keys; leave that to it.
                    let kept = seen.get(..n_seen)?;
                    if kept.contains(&child) {
                        return None;
                    }
                    *seen.get_mut(n_seen)? = child;
                    n_seen += 1;
                    self.keep_value(child, depth, 0)?;
                }
                None => self.skip_value(depth)?,
            }
            if self.next_item(b'}')? {
                return Some(());
            }
        }
    }

    /// A value at trie node `node`.
    fn keep_value(&mut self, node: u32, depth: usize, nest: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.keep_obj(node, depth),
            b'[' => {
                let depth = depth + 1;
                if self.open(depth, b']')? {
                    return Some(());
                }
                loop {
                    self.ws();
                    match self.peek()? {
                        b'[' => {
                            if nest < MAX_ARRAY_NEST {
                                self.keep_value(node, depth, nest + 1)?
                            } else {
                                self.skip_value(depth)?
                            }
                        }
                        b'{' => {
                            // Objects inside arrays need the reference evaluator.
                            if self.trie.has_children(node) {
                                return None;
                            }
                            self.skip_value(depth)?
                        }
                        _ => self.scalar(node)?,
                    }
                    if self.next_item(b']')? {
                        return Some(());
                    }
                }
            }
            _ => self.scalar(node),
        }
    }

    fn scalar(&mut self, node: u32) -> Option<()> {
        let v = match self.peek()? {
            b'"' => Leaf::Str(self.string()?),
            b't' => {
                self.lit(b"true")?;
                Leaf::Bool(true)
            }
            b'f' => {
                self.lit(b"false")?;
                Leaf::Bool(false)
            }
            b'n' => {
                self.lit(b"null")?;
                Leaf::Null
            }
            _ => {
                let (t, plain) = self.number()?;
                Leaf::Num(match t.parse::<u64>() {
                    Ok(u) if plain => Some(Num::Int(i128::from(u))),
                    // Everything else exactly as serde_json reads it (range errors give
                    // up, so serde_json reports them).
                    _ => Num::from_json(&serde_json::from_str::<serde_json::Number>(t).ok()?),
                })
            }
        };
        self.leaves.push((node, v));
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_run, scan, Trie};
    use crate::pattern::values::Leaf;
    use serde_json::Value;

    /// A trie of the one path `a` (node 1) below the root (node 0).
    struct KeyA;

    impl Trie for KeyA {
        fn child(&self, node: u32, key: &str) -> Option<u32> {
            (node == 0 && key == "a").then_some(1)
        }
        fn has_children(&self, node: u32) -> bool {
            node == 0
        }
    }

    /// The leaves at `a` as serde_json reads the text (arrays flattened).
    fn serde_leaves(text: &str) -> Option<Vec<Leaf<'static>>> {
        fn flat(v: &Value, out: &mut Vec<Leaf<'static>>) {
            match v {
                Value::Array(a) => a.iter().for_each(|e| flat(e, out)),
                other => out.extend(Leaf::from_value(other).map(|l| match l {
                    Leaf::Str(s) => Leaf::Str(s.into_owned().into()),
                    Leaf::Num(n) => Leaf::Num(n),
                    Leaf::Bool(b) => Leaf::Bool(b),
                    Leaf::Null => Leaf::Null,
                })),
            }
        }
        let v: Value = serde_json::from_str(text).ok()?;
        let mut out = Vec::new();
        if let Some(a) = v.get("a") {
            flat(a, &mut out);
        }
        Some(out)
    }

    #[test]
    fn scanned_leaves_equal_serde_json_leaves() {
        let texts = [
            r#"{"a":"plain"}"#,
            r#"{"a":"tab\tquote\"slash\/back\\nl\n","z":"\b\f\r"}"#,
            r#"{"a":"é—ü","z":1}"#,
            r#"{"a":""}"#,
            r#"{"a":-0}"#,
            r#"{"a":0}"#,
            r#"{"a":-0.0}"#,
            r#"{"a":3e2}"#,
            r#"{"a":300.0}"#,
            r#"{"a":1.5e-3}"#,
            r#"{"a":18446744073709551615}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":-9223372036854775808}"#,
            r#"{"a":-9223372036854775809}"#,
            r#"{"a":9007199254740993}"#,
            r#"{"a":1e308}"#,
            r#"{"a":[true,false,null,"s",[2,[-1.25]]]}"#,
            r#"{"z":{"a":"not a"},"a":[]}"#,
        ];
        for t in texts {
            let mut leaves = Vec::new();
            assert!(scan(t, &KeyA, 0, &mut leaves).is_some(), "{t}");
            assert!(leaves.iter().all(|(n, _)| *n == 1), "{t}");
            let got: Vec<Leaf<'_>> = leaves.into_iter().map(|(_, l)| l).collect();
            assert_eq!(Some(got), serde_leaves(t), "{t}");
        }
    }

    #[test]
    fn scanner_gives_up_where_serde_json_must_decide() {
        // Range errors, `\u` escapes, duplicate indexed keys and syntax errors go to
        // serde_json (which reports them, or keeps the last duplicate).
        for t in [
            r#"{"a":1e400}"#,
            r#"{"a":-1e400}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":"x\q"}"#,
            "{\"a\":\"x\u{1f}\"}",
            r#"{"a":01}"#,
            r#"{"a":-}"#,
            r#"{"a":[1,]}"#,
        ] {
            let mut leaves = Vec::new();
            assert!(scan(t, &KeyA, 0, &mut leaves).is_none(), "{t}");
        }
    }

    #[test]
    fn plain_run_stops_at_every_special_byte() {
        for len in 0..20usize {
            let plain = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let n = plain.len();
            assert_eq!(plain_run(plain.as_bytes(), 0), n);
            for special in ["\"", "\\", "\u{0}", "\u{1f}", "\n"] {
                let t = format!("{plain}{special}xyz");
                assert_eq!(plain_run(t.as_bytes(), 0), n, "{t:?}");
                let from1 = if n > 0 { plain_run(t.as_bytes(), 1) } else { n };
                assert_eq!(from1, n, "{t:?}");
            }
            assert_eq!(plain_run(b"abc \x7f\xff", 0), 6);
        }
    }
}
