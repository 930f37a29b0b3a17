//! Fuzz target: the `header` query value of the WebSocket upgrade. `decode_header` must
//! never panic and its errors must never repeat the value; whatever decodes, encoding it
//! again (standard base64 of the JSON) must decode to the same header. Raw bytes also go
//! through `encode_base64` → `decode_base64_lenient` unchanged.
#![no_main]

use eventgate_protocol::header::{
    decode_base64_lenient, decode_header, encode_base64, MAX_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        decode_base64_lenient(&encode_base64(data)).as_deref(),
        Some(data),
        "base64 round trip"
    );
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_header(text) {
        Ok(header) => {
            let again = encode_base64(
                json!({"Host": header.host, "ApiKey": header.api_key, "Id": header.id})
                    .to_string()
                    .as_bytes(),
            );
            // The canonical form may be longer (null fields spelled out) than the limit.
            if again.len() <= MAX_HEADER_BYTES {
                assert_eq!(decode_header(&again), Ok(header), "re-encoded header");
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
            // A long run of base64 characters appears in no message text, so finding the
            // value in the message means the message repeats it.
            let base64ish = text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b));
            if text.len() >= 16 && base64ish {
                assert!(!message.contains(text), "error message repeats the value");
            }
        }
    }
});
