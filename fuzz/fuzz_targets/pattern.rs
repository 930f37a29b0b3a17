//! Fuzz target: the input is `pattern text` + `\n--\n` + `event text` (or split in the
//! middle when there is no separator). Both are parsed; whenever both parse, the
//! reference evaluator and the `RuleIndex` (alone and next to a few fixed rules) must
//! agree. Nothing may panic.
#![no_main]

use eventgate_protocol::pattern::{Pattern, PatternLimits, RuleIndex};
use libfuzzer_sys::fuzz_target;

const OTHERS: &[&str] = &[
    r#"{"a":[{"prefix":"x"}]}"#,
    r#"{"a":{"b":[{"numeric":[">",0,"<",10]}]},"c":[{"anything-but":"z"}]}"#,
    r#"{"$or":[{"a":[{"exists":false}]},{"b":[{"wildcard":"*x*"}]}]}"#,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pat_text, ev_text) = match text.split_once("\n--\n") {
        Some(p) => p,
        None => {
            let mut mid = text.len() / 2;
            while !text.is_char_boundary(mid) {
                mid -= 1;
            }
            text.split_at(mid)
        }
    };
    let limits = PatternLimits::default();
    let parsed = Pattern::parse(pat_text, &limits);
    if let Err(e) = &parsed {
        assert!(!e.to_string().is_empty());
    }
    let Ok(event) = serde_json::from_str::<serde_json::Value>(ev_text) else {
        return;
    };
    let Ok(pattern) = parsed else { return };
    let want = pattern.matches(&event);

    let mut idx = RuleIndex::new();
    idx.insert(0u32, &pattern);
    let mut out = Vec::new();
    idx.matches(&event, &mut out);
    assert_eq!(out, if want { vec![0] } else { vec![] }, "alone");
    out.clear();
    if idx.matches_json(ev_text, &mut out).is_ok() {
        assert_eq!(out, if want { vec![0] } else { vec![] }, "matches_json");
    }

    for (i, o) in OTHERS.iter().enumerate() {
        if let Ok(p) = Pattern::parse(o, &limits) {
            idx.insert(i as u32 + 1, &p);
        }
    }
    out.clear();
    idx.matches(&event, &mut out);
    assert_eq!(out.contains(&0), want, "with other rules");
    assert!(idx.remove(0));
    out.clear();
    idx.matches(&event, &mut out);
    assert!(!out.contains(&0), "after remove");
});
