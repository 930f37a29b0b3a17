//! Value-level building blocks of the pattern language: canonical numbers, scalar event
//! values as the matchers see them ([`Leaf`]), Unicode case folding, wildcard globs and
//! CIDR ranges. Each piece is total (never panics).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// 2^127 as an f64: every integral f64 strictly inside (-2^127, 2^127) fits an i128.
const TWO_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

/// A JSON number in canonical form so that equal values compare and hash equal:
/// `300`, `300.0` and `3e2` are all `Int(300)`. `Float` holds only non-integral values
/// or integral values too large for an i128. JSON has no NaN or infinity, and the
/// constructors reject them, so the order below is total.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    pub(crate) fn from_f64(f: f64) -> Option<Num> {
        if !f.is_finite() {
            return None;
        }
        if f.fract() == 0.0 && f.abs() < TWO_127 {
            // Exact: f is integral and within the i128 range.
            Some(Num::Int(f as i128))
        } else {
            Some(Num::Float(f))
        }
    }

    pub(crate) fn from_json(n: &serde_json::Number) -> Option<Num> {
        if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else {
            n.as_f64().and_then(Num::from_f64)
        }
    }

    pub(crate) fn from_value(v: &serde_json::Value) -> Option<Num> {
        match v {
            serde_json::Value::Number(n) => Num::from_json(n),
            _ => None,
        }
    }

    pub(crate) fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Exact comparison of an integer with a float that is non-integral or beyond ±2^127.
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    if f >= TWO_127 {
        return Ordering::Less;
    }
    if f < -TWO_127 {
        return Ordering::Greater;
    }
    // Here f is non-integral (integral values in range are always `Int`) or exactly
    // -2^127, which no `Int` can equal; so i < f  <=>  i <= floor(f).
    let fl = f.floor() as i128;
    if i <= fl {
        Ordering::Less
    } else {
        Ordering::Greater
    }
}

impl Ord for Num {
    fn cmp(&self, other: &Self) -> Ordering {
        match (*self, *other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Float(a), Num::Float(b)) => a.total_cmp(&b),
            (Num::Int(a), Num::Float(b)) => cmp_int_float(a, b),
            (Num::Float(a), Num::Int(b)) => cmp_int_float(b, a).reverse(),
        }
    }
}
impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Num {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Num {}
impl Hash for Num {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match *self {
            Num::Int(i) => {
                0u8.hash(state);
                i.hash(state)
            }
            Num::Float(f) => {
                1u8.hash(state);
                f.to_bits().hash(state)
            }
        }
    }
}

/// One scalar event value (never an array or object) as the matchers see it: strings
/// borrowed from the event (owned only when the scanner had to unescape them), numbers
/// already in canonical form, so neither matching nor the `matches_json` scanner builds
/// a `serde_json::Value` or allocates per leaf.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Leaf<'a> {
    Str(Cow<'a, str>),
    /// `None` for a number without a finite value (serde_json never produces one; kept
    /// so that such a value behaves exactly as `Num::from_value` treats it: it matches
    /// no number, string, boolean or null alternative).
    Num(Option<Num>),
    Bool(bool),
    Null,
}

impl<'a> Leaf<'a> {
    /// The leaf for a scalar `Value`; `None` for arrays and objects.
    pub(crate) fn from_value(v: &'a serde_json::Value) -> Option<Leaf<'a>> {
        use serde_json::Value;
        match v {
            Value::String(s) => Some(Leaf::Str(Cow::Borrowed(s))),
            Value::Number(n) => Some(Leaf::Num(Num::from_json(n))),
            Value::Bool(b) => Some(Leaf::Bool(*b)),
            Value::Null => Some(Leaf::Null),
            Value::Array(_) | Value::Object(_) => None,
        }
    }

    #[inline]
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Leaf::Str(s) => Some(s),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn as_num(&self) -> Option<Num> {
        match self {
            Leaf::Num(n) => *n,
            _ => None,
        }
    }
}

/// Case folding used by every `equals-ignore-case` variant: Unicode lowercase mapping of
/// each character (`char::to_lowercase`, which expands e.g. `İ` to `i̇`), with the Greek
/// final sigma `ς` folded to `σ` so that `ΟΔΟΣ`, `οδος` and `οδοσ` are all equal.
pub(crate) fn fold(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        if !s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Cow::Borrowed(s);
        }
        return Cow::Owned(s.to_ascii_lowercase());
    }
    Cow::Owned(
        s.chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c == 'ς' { 'σ' } else { c })
            .collect(),
    )
}

/// A parsed `wildcard` value: the literal segments between unescaped `*`.
/// `segs.len() - 1` is the number of stars; `segs.len() == 1` means no star.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Wildcard {
    pub(crate) segs: Vec<String>,
}

impl Wildcard {
    pub(crate) fn parse(s: &str) -> Result<Wildcard, String> {
        let mut segs = Vec::new();
        let mut cur = String::new();
        let mut chars = s.chars();
        let mut prev_star = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    match chars.next() {
                        Some('*') => cur.push('*'),
                        Some('\\') => cur.push('\\'),
                        Some(other) => {
                            return Err(format!(
                                "\"wildcard\" {s:?} has an invalid escape \"\\{other}\" (only \\* and \\\\ are allowed)"
                            ))
                        }
                        None => {
                            return Err(format!(
                                "\"wildcard\" {s:?} ends with an unfinished escape \"\\\""
                            ))
                        }
                    }
                    prev_star = false;
                }
                '*' => {
                    if prev_star {
                        return Err(format!(
                            "\"wildcard\" {s:?} has consecutive wildcard characters \"**\""
                        ));
                    }
                    segs.push(std::mem::take(&mut cur));
                    prev_star = true;
                }
                c => {
                    cur.push(c);
                    prev_star = false;
                }
            }
        }
        segs.push(cur);
        Ok(Wildcard { segs })
    }

    pub(crate) fn stars(&self) -> usize {
        self.segs.len().saturating_sub(1)
    }

    /// Greedy glob matching: O(len(s) * segments) at worst, no backtracking needed
    /// because `*` is the only metacharacter (leftmost placement of each middle
    /// segment is always optimal).
    pub(crate) fn matches(&self, s: &str) -> bool {
        let n = self.segs.len();
        if n == 0 {
            return false;
        }
        if n == 1 {
            return s == self.segs[0];
        }
        let first = &self.segs[0];
        let last = &self.segs[n - 1];
        if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) {
            return false;
        }
        if !s.ends_with(last.as_str()) {
            return false;
        }
        let Some(mut mid) = s.get(first.len()..s.len() - last.len()) else {
            return false;
        };
        for seg in &self.segs[1..n - 1] {
            match mid.find(seg.as_str()) {
                Some(pos) => match mid.get(pos + seg.len()..) {
                    Some(rest) => mid = rest,
                    None => return false,
                },
                None => return false,
            }
        }
        true
    }
}

/// An IPv4 or IPv6 CIDR block with the network address already masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cidr {
    pub(crate) v6: bool,
    pub(crate) len: u8,
    pub(crate) net: u128,
}

pub(crate) fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

pub(crate) fn mask(v6: bool, len: u8, addr: u128) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    let len = u32::from(len).min(width);
    if len == 0 {
        return 0;
    }
    let full: u128 = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    let m = full.checked_shl(width - len).unwrap_or(0) & full;
    addr & m
}

/// Parses an event string as an IP address (no zone, no brackets, no port).
pub(crate) fn parse_ip(s: &str) -> Option<(bool, u128)> {
    if s.len() > 64 {
        return None;
    }
    s.parse::<IpAddr>().ok().map(ip_bits)
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr, String> {
        let bad =
            || format!("\"cidr\" needs an IPv4 or IPv6 block like \"10.0.0.0/24\", got {s:?}");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let (v6, bits) = ip_bits(ip);
        let max = if v6 { 128 } else { 32 };
        if len > max {
            return Err(format!(
                "\"cidr\" prefix length /{len} is too long for {} (max /{max}) in {s:?}",
                if v6 { "IPv6" } else { "IPv4" }
            ));
        }
        Ok(Cidr {
            v6,
            len,
            net: mask(v6, len, bits),
        })
    }

    pub(crate) fn contains_str(&self, s: &str) -> bool {
        match parse_ip(s) {
            Some((v6, bits)) => v6 == self.v6 && mask(v6, self.len, bits) == self.net,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: &str, s: &str) -> bool {
        Wildcard::parse(p).map(|w| w.matches(s)).unwrap_or(false)
    }

    #[test]
    fn wildcard_basics() {
        assert!(w("*", ""));
        assert!(w("*", "abc"));
        assert!(w("a*", "a"));
        assert!(w("a*c", "abc"));
        assert!(w("a*c", "ac"));
        assert!(!w("a*c", "ab"));
        assert!(!w("ab*ba", "aba"), "prefix and suffix must not overlap");
        assert!(w("ab*ba", "abba"));
        assert!(w("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!w("*a*b*c*", "cba"));
        assert!(w("a\\*b", "a*b"));
        assert!(!w("a\\*b", "axb"));
        assert!(w("a\\\\*", "a\\zzz"));
        assert!(w("é*ü", "é—ü"));
        assert!(!w("abc", "abcd"));
        assert!(w("abc", "abc"));
    }

    #[test]
    fn wildcard_errors() {
        assert!(Wildcard::parse("a**b").is_err());
        assert!(Wildcard::parse("a\\x").is_err());
        assert!(Wildcard::parse("a\\").is_err());
        assert!(Wildcard::parse("a*\\**b").is_ok());
        assert_eq!(Wildcard::parse("a*b*c").map(|w| w.stars()), Ok(2));
    }

    #[test]
    fn wildcard_is_fast_on_adversarial_input() {
        let p = Wildcard::parse("*a*a*a*a*a*a*a*b").unwrap_or(Wildcard { segs: vec![] });
        let s = "a".repeat(100_000);
        assert!(!p.matches(&s));
    }

    #[test]
    fn numbers_canonical() {
        let a = Num::from_f64(300.0);
        let b = Num::from_json(&serde_json::Number::from(300));
        assert_eq!(a, b);
        assert!(Num::Int(1) < Num::Float(1.5));
        assert!(Num::Float(1.5) < Num::Int(2));
        assert!(Num::Float(-1.5) < Num::Int(-1));
        assert!(Num::Int(-2) < Num::Float(-1.5));
        assert!(Num::Int(i128::from(u64::MAX)) > Num::Int(i128::from(u64::MAX) - 1));
        assert!(Num::Int(i128::from(u64::MAX)) < Num::Float(1e300));
        assert!(Num::Int(i128::from(i64::MIN)) > Num::Float(-1e300));
        assert_eq!(Num::from_f64(-0.0), Some(Num::Int(0)));
        assert_eq!(Num::from_f64(f64::NAN), None);
        // 2^53 + 1 as an integer is not equal to 2^53 as a float.
        let big = Num::Int((1i128 << 53) + 1);
        assert!(big > Num::from_f64(9007199254740992.0).unwrap_or(Num::Int(0)));
    }

    #[test]
    fn folding() {
        assert_eq!(fold("HeLLo"), "hello");
        assert_eq!(fold("ΟΔΟΣ"), fold("οδος"));
        assert_eq!(fold("STRASSE"), "strasse");
        assert_eq!(fold("ÀÉÎ"), "àéî");
        assert_eq!(fold("İ"), "i\u{307}");
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.7/24").unwrap_or(Cidr {
            v6: true,
            len: 0,
            net: 1,
        });
        assert!(c.contains_str("10.0.0.255"));
        assert!(!c.contains_str("10.0.1.0"));
        assert!(!c.contains_str("::ffff:10.0.0.1"));
        assert!(!c.contains_str("not an ip"));
        assert!(Cidr::parse("0.0.0.0/0").is_ok_and(|c| c.contains_str("255.1.2.3")));
        assert!(Cidr::parse("::/0").is_ok_and(|c| c.contains_str("2001:db8::1")));
        assert!(Cidr::parse("2001:db8::/32")
            .is_ok_and(|c| c.contains_str("2001:db8:ffff::1") && !c.contains_str("2001:db9::1")));
        assert!(Cidr::parse("1.2.3.4/32")
            .is_ok_and(|c| c.contains_str("1.2.3.4") && !c.contains_str("1.2.3.5")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::/129").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("10.0.0.0/+8").is_err());
        assert!(Cidr::parse("10.0.0.0/").is_err());
    }
}
