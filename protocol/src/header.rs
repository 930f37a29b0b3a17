//! The `header` query parameter of the WebSocket upgrade.
//!
//! Owns lenient decoding (standard or URL-safe base64, optional padding, a `+` that arrived
//! as a space, embedded whitespace) of the UTF-8 JSON document `{"Host","ApiKey","Id"}`
//! with case-insensitive keys, and GUID validation in the usual spellings. Does not own
//! the checks against configuration (host allowlist, key comparison): the gateway's auth
//! module does those.

use serde_json::Value;

/// The decoded `header` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectHeader {
    pub host: Option<String>,
    pub api_key: Option<String>,
    pub id: Option<String>,
}

/// Why a `header` value could not be decoded. Messages never include the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header parameter is not valid base64")]
    NotBase64,
    #[error("the header parameter does not decode to UTF-8 text")]
    NotUtf8,
    #[error("the header parameter does not hold JSON: {0}")]
    NotJson(String),
    #[error("the header parameter must hold a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("the header field {0:?} must be a string")]
    FieldNotString(&'static str),
    #[error("the header parameter is larger than {0} bytes")]
    TooLarge(usize),
}

/// Upper bound on the encoded header we try to decode.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Decodes a `header` query value (already percent-decoded by the HTTP layer).
pub fn decode_header(encoded: &str) -> Result<ConnectHeader, HeaderError> {
    if encoded.len() > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLarge(MAX_HEADER_BYTES));
    }
    let bytes = decode_base64_lenient(encoded).ok_or(HeaderError::NotBase64)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| HeaderError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value =
        serde_json::from_str(text).map_err(|err| HeaderError::NotJson(err.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(HeaderError::NotAnObject(match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }));
    };
    let mut header = ConnectHeader {
        host: None,
        api_key: None,
        id: None,
    };
    for (key, value) in fields {
        let (slot, name) = if key.eq_ignore_ascii_case("host") {
            (&mut header.host, "Host")
        } else if key.eq_ignore_ascii_case("apikey") {
            (&mut header.api_key, "ApiKey")
        } else if key.eq_ignore_ascii_case("id") {
            (&mut header.id, "Id")
        } else {
            continue;
        };
        match value {
            Value::String(text) => *slot = Some(text),
            Value::Null => *slot = None,
            _ => return Err(HeaderError::FieldNotString(name)),
        }
    }
    Ok(header)
}

fn base64_digit(byte: u8) -> Option<u8> {
    match DIGITS[usize::from(byte)] {
        NOT_A_DIGIT => None,
        digit => Some(digit),
    }
}

/// Not a base64 digit in [`DIGITS`] (whitespace included: the slow path decides).
const NOT_A_DIGIT: u8 = 0xFF;

/// Each byte's base64 digit in either alphabet (a space stands for `+`), or NOT_A_DIGIT.
static DIGITS: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b @ b'A'..=b'Z' => b - b'A',
            b @ b'a'..=b'z' => b - b'a' + 26,
            b @ b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' | b' ' => 62,
            b'/' | b'_' => 63,
            _ => NOT_A_DIGIT,
        };
        byte += 1;
    }
    table
};

/// Base64 in either alphabet, padding optional, whitespace (other than a space standing for
/// `+`) ignored. Returns `None` on any other character or an impossible length.
pub fn decode_base64_lenient(text: &str) -> Option<Vec<u8>> {
    let body = base64_body(text);
    let mut out = Vec::with_capacity(body.len() * 3 / 4 + 3);
    // Whole groups of four digits, while there is nothing to skip or refuse.
    let mut start = 0;
    while let Some(&[a, b, c, d]) = body.get(start..start + 4) {
        let [a, b, c, d] = [a, b, c, d].map(|byte| DIGITS[usize::from(byte)]);
        // Digits are at most 63, so any NOT_A_DIGIT sets a higher bit.
        if (a | b | c | d) > 63 {
            break;
        }
        let group =
            (u32::from(a) << 18) | (u32::from(b) << 12) | (u32::from(c) << 6) | u32::from(d);
        out.extend_from_slice(&group.to_be_bytes()[1..]);
        start += 4;
    }
    // The rest digit by digit: whitespace, errors and a short last group.
    decode_digit_by_digit(&body[start..], start, &mut out)?;
    Some(out)
}

/// Text of a base64 value without surrounding line breaks and tabs nor trailing padding.
fn base64_body(text: &str) -> &[u8] {
    text.trim_matches(|c: char| c == '\n' || c == '\r' || c == '\t')
        .trim_end_matches('=')
        .as_bytes()
}

/// Decodes `digits` one at a time into `out`, skipping line breaks and tabs, after
/// `decoded_before` digits already decoded in whole groups. `None` on a character that is
/// not a digit or when the total count of digits is impossible.
fn decode_digit_by_digit(digits: &[u8], decoded_before: usize, out: &mut Vec<u8>) -> Option<()> {
    let mut accumulator: u32 = 0;
    let mut bits = 0u32;
    let mut count = decoded_before;
    for &byte in digits {
        if matches!(byte, b'\n' | b'\r' | b'\t') {
            continue;
        }
        let digit = base64_digit(byte)?;
        accumulator = (accumulator << 6) | u32::from(digit);
        bits += 6;
        count += 1;
        if bits >= 8 {
            bits -= 8;
            out.push((accumulator >> bits) as u8);
            accumulator &= (1 << bits) - 1;
        }
    }
    (count % 4 != 1).then_some(())
}

/// Standard base64 with padding (what keys are made of).
pub fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((n >> (18 - 6 * position)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The API key a client presents: `base64("<AppVersionId>:<StackId>")`, or
/// `base64("<StackId>")` when no app version id is given (dev mode).
pub fn api_key(stack_id: &str, app_version_id: Option<&str>) -> String {
    match app_version_id {
        Some(version) => encode_base64(format!("{version}:{stack_id}").as_bytes()),
        None => encode_base64(stack_id.as_bytes()),
    }
}

fn all_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_hyphenated_guid(text: &str) -> bool {
    let mut groups = text.split('-');
    [8, 4, 4, 4, 12].into_iter().all(|length| {
        groups
            .next()
            .is_some_and(|group| group.len() == length && all_hex(group))
    }) && groups.next().is_none()
}

fn is_hex_guid(text: &str) -> bool {
    // {0x00000000,0x0000,0x0000,{0x00,0x00,0x00,0x00,0x00,0x00,0x00,0x00}}
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix("}}")) else {
        return false;
    };
    let Some((head, tail)) = inner.split_once(",{") else {
        return false;
    };
    let hex_field = |field: &str, max: usize| {
        field
            .strip_prefix("0x")
            .or_else(|| field.strip_prefix("0X"))
            .is_some_and(|digits| digits.len() <= max && all_hex(digits))
    };
    let head: Vec<&str> = head.split(',').collect();
    let tail: Vec<&str> = tail.split(',').collect();
    head.len() == 3
        && hex_field(head[0], 8)
        && hex_field(head[1], 4)
        && hex_field(head[2], 4)
        && tail.len() == 8
        && tail.iter().all(|field| hex_field(field, 2))
}

/// True for a GUID in any of the .NET spellings: `D` (hyphenated), `N` (32 digits),
/// `B` (`{D}`), `P` (`(D)`) and `X` (`{0x..,0x..,0x..,{0x..,...}}`). Surrounding white
/// space is allowed, as `Guid.TryParse` allows it.
pub fn is_guid(text: &str) -> bool {
    let text = text.trim();
    if text.len() == 32 {
        return all_hex(text);
    }
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        if is_hyphenated_guid(inner) {
            return true;
        }
    }
    if let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        return is_hyphenated_guid(inner);
    }
    is_hyphenated_guid(text) || is_hex_guid(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        r#"{"Host":"example.com","ApiKey":"a2V5","Id":"6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f"}"#;

    #[test]
    fn base64_round_trips_and_decodes_leniently() {
        for input in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "\u{ff}\u{fe}?>",
        ] {
            let encoded = encode_base64(input.as_bytes());
            assert_eq!(
                decode_base64_lenient(&encoded).as_deref(),
                Some(input.as_bytes())
            );
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(
                decode_base64_lenient(unpadded).as_deref(),
                Some(input.as_bytes())
            );
            let url_safe = encoded.replace('+', "-").replace('/', "_");
            assert_eq!(
                decode_base64_lenient(&url_safe).as_deref(),
                Some(input.as_bytes())
            );
            let spaced = encoded.replace('+', " ");
            assert_eq!(
                decode_base64_lenient(&spaced).as_deref(),
                Some(input.as_bytes())
            );
        }
        assert_eq!(decode_base64_lenient("a"), None);
        assert_eq!(decode_base64_lenient("ab*c"), None);
    }

    /// The decoder digit by digit only, as it was before the four-at-a-time loop.
    fn decode_only_digit_by_digit(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        decode_digit_by_digit(base64_body(text), 0, &mut out)?;
        Some(out)
    }

    proptest::proptest! {
        #[test]
        fn four_at_a_time_decodes_as_digit_by_digit(
            text in "[A-Za-z0-9+/_ =\t\r\n*-]{0,40}",
        ) {
            proptest::prop_assert_eq!(decode_base64_lenient(&text), decode_only_digit_by_digit(&text));
        }
    }

    #[test]
    fn header_keys_are_case_insensitive_and_unknown_keys_ignored() {
        let doc = r#"{"host":"h","APIKEY":"k","iD":"i","Extra":[1]}"#;
        let header = decode_header(&encode_base64(doc.as_bytes())).expect("decodes");
        assert_eq!(header.host.as_deref(), Some("h"));
        assert_eq!(header.api_key.as_deref(), Some("k"));
        assert_eq!(header.id.as_deref(), Some("i"));
        let pretty = format!("{}\n", DOC.replace(',', ",\n  "));
        assert!(decode_header(&encode_base64(pretty.as_bytes())).is_ok());
    }

    #[test]
    fn header_errors_are_specific() {
        assert_eq!(decode_header("%%%"), Err(HeaderError::NotBase64));
        assert_eq!(
            decode_header(&encode_base64(&[0xff, 0xfe])),
            Err(HeaderError::NotUtf8)
        );
        assert!(matches!(
            decode_header(&encode_base64(b"nope")),
            Err(HeaderError::NotJson(_))
        ));
        assert_eq!(
            decode_header(&encode_base64(b"null")),
            Err(HeaderError::NotAnObject("null"))
        );
        assert_eq!(
            decode_header(&encode_base64(br#"{"ApiKey":5}"#)),
            Err(HeaderError::FieldNotString("ApiKey"))
        );
    }

    #[test]
    fn api_keys_follow_lambdasharp() {
        assert_eq!(
            api_key("ee897420-8836-11eb-af2c-021e49679a0b", None),
            "ZWU4OTc0MjAtODgzNi0xMWViLWFmMmMtMDIxZTQ5Njc5YTBi"
        );
        assert_eq!(api_key("s", Some("v")), encode_base64(b"v:s"));
    }

    #[test]
    fn guid_spellings() {
        for good in [
            "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f",
            "6F0C2F521D7A4B6E9D0A3C1B2A4D5E6F",
            "{6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f}",
            "(6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f)",
            " 6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f ",
            "{0x6f0c2f52,0x1d7a,0x4b6e,{0x9d,0x0a,0x3c,0x1b,0x2a,0x4d,0x5e,0x6f}}",
        ] {
            assert!(is_guid(good), "{good}");
        }
        for bad in [
            "",
            "not-a-guid",
            "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6",
            "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6g",
            "{6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f",
            "(6f0c2f521d7a4b6e9d0a3c1b2a4d5e6f)",
        ] {
            assert!(!is_guid(bad), "{bad}");
        }
    }
}
