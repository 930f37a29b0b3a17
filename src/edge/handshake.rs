//! The WebSocket opening handshake of RFC 6455 §4.2 over HTTP/1.1: parsing a request head,
//! deciding whether it is a valid upgrade (with a specific error when it is not) and the
//! `Sec-WebSocket-Accept` answer, and reading one parameter of the request's query string.
//! Also the RFC 9112 §3.2 `Host` check every HTTP/1.1 request passes ([`check_host`]), and
//! the refusal of an upgrade request that carries a body.
//!
//! Pure: no sockets and no runtime, so both ways an upgrade arrives share it (the
//! listener's own read of a connection's first request, and a request that hyper parsed).
//! Does not own authentication, limits or the session (see `server`, `auth`, `session`).

use std::borrow::Cow;
use std::ops::Range;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Most headers in a request head read by the listener; a longer head goes to hyper.
pub const MAX_HEADERS: usize = 64;

/// Why a request is not a valid WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a WebSocket upgrade must be a GET request")]
    MethodNotGet,
    #[error("WebSocket upgrades need HTTP/1.1")]
    NotHttp11,
    #[error("this is a WebSocket endpoint: the request must carry `Upgrade: websocket`")]
    NotWebSocket,
    #[error("the Connection header must include `upgrade`")]
    ConnectionNotUpgrade,
    #[error("only WebSocket version 13 is supported (Sec-WebSocket-Version)")]
    UnsupportedVersion,
    #[error("the Sec-WebSocket-Key header is missing or not 16 bytes in base64")]
    BadKey,
    #[error("{0}")]
    Host(HostError),
    #[error(
        "a WebSocket upgrade request must not have a body (Content-Length or Transfer-Encoding)"
    )]
    BodyNotAllowed,
}

/// Why an HTTP/1.1 request's `Host` header is not acceptable (RFC 9112 §3.2: answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    #[error("the Host header appears more than once")]
    Repeated,
    #[error("the Host header is not a valid host[:port]")]
    Invalid,
}

impl HostError {
    /// The `reason` label of `eventgate_bad_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            HostError::Missing => "missing_host",
            HostError::Repeated => "repeated_host",
            HostError::Invalid => "invalid_host",
        }
    }
}

/// RFC 9112 §3.2: exactly one `Host` header, whose value is `uri-host [ ":" port ]`
/// (RFC 3986: an IP literal in brackets, or a reg-name of unreserved characters,
/// percent-encodings and sub-delims; the port all digits). An empty value is valid syntax.
pub fn check_host<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<(), HostError> {
    match (values.next(), values.next()) {
        (None, _) => Err(HostError::Missing),
        (Some(_), Some(_)) => Err(HostError::Repeated),
        (Some(value), None) if is_valid_host(value) => Ok(()),
        (Some(_), None) => Err(HostError::Invalid),
    }
}

fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&byte| byte == b']') else {
                return false;
            };
            let (address, rest) = literal.split_at(end);
            let valid_literal = !address.is_empty()
                && address
                    .iter()
                    .all(|&byte| byte.is_ascii_hexdigit() || matches!(byte, b':' | b'.'))
                || is_ip_future(address);
            if !valid_literal {
                return false;
            }
            (&b""[..], &rest[1..])
        }
        None => match value.iter().position(|&byte| byte == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok && is_reg_name(host)
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn is_ip_future(address: &[u8]) -> bool {
    let Some(rest) = address
        .strip_prefix(b"v")
        .or_else(|| address.strip_prefix(b"V"))
    else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&byte| byte == b'.') else {
        return false;
    };
    let (version, tail) = rest.split_at(dot);
    let tail = &tail[1..];
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !tail.is_empty()
        && tail
            .iter()
            .all(|&byte| is_unreserved_or_sub_delim(byte) || byte == b':')
}

fn is_unreserved_or_sub_delim(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (IPv4 addresses are reg-names
/// too, syntactically).
fn is_reg_name(host: &[u8]) -> bool {
    let mut rest = host;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            match tail {
                [high, low, after @ ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                    rest = after;
                    continue;
                }
                _ => return false,
            }
        }
        if !is_unreserved_or_sub_delim(byte) {
            return false;
        }
        rest = tail;
    }
    true
}

/// A query string that names the same parameter twice (which value counts would be a guess).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the `{0}` parameter appears more than once")]
pub struct RepeatedParameter(pub String);

/// The value of parameter `name` in `query` (`application/x-www-form-urlencoded`, as browsers
/// write it: `+` is a space, `%XX` a byte, a `%` without two hex digits after it stays as it
/// is, bytes that are not UTF-8 become U+FFFD). Borrowed unless it had to be decoded.
pub fn query_parameter<'a>(
    query: &'a str,
    name: &str,
) -> Result<Option<Cow<'a, str>>, RepeatedParameter> {
    let mut found = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(key) != name {
            continue;
        }
        if found.is_some() {
            return Err(RepeatedParameter(name.to_owned()));
        }
        found = Some(form_decode(value));
    }
    Ok(found)
}

/// Decodes one component of a form-encoded query string, copying the runs between `%` and
/// `+` whole.
fn form_decode(component: &str) -> Cow<'_, str> {
    let bytes = component.as_bytes();
    let Some(first) = memchr::memchr2(b'%', b'+', bytes) else {
        return Cow::Borrowed(component);
    };
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    let mut next = Some(first);
    while let Some(at) = next {
        let (run, special) = rest.split_at(at);
        decoded.extend_from_slice(run);
        let Some((&marker, after)) = special.split_first() else {
            break;
        };
        rest = after;
        if marker == b'+' {
            decoded.push(b' ');
        } else {
            match after {
                [high, low, tail @ ..] => match (hex_value(*high), hex_value(*low)) {
                    (Some(high), Some(low)) => {
                        decoded.push(high << 4 | low);
                        rest = tail;
                    }
                    _ => decoded.push(b'%'),
                },
                _ => decoded.push(b'%'),
            }
        }
        next = memchr::memchr2(b'%', b'+', rest);
    }
    decoded.extend_from_slice(rest);
    match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// A request's method, version and headers, however they were parsed.
pub trait UpgradeRequest {
    fn method(&self) -> &[u8];
    /// True for HTTP/1.1 (HTTP/1.0 has no upgrades, HTTP/2 uses extended CONNECT).
    fn is_http11(&self) -> bool;
    /// The values of every header called `name` (ASCII, lower case), in order.
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of header `name`, when it is valid UTF-8.
    fn header_str<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.header_values(name)
            .next()
            .and_then(|value| std::str::from_utf8(value).ok())
    }
}

impl UpgradeRequest for axum::http::request::Parts {
    fn method(&self) -> &[u8] {
        self.method.as_str().as_bytes()
    }

    fn is_http11(&self) -> bool {
        self.version == axum::http::Version::HTTP_11
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .map(axum::http::HeaderValue::as_bytes)
    }
}

/// What a valid upgrade is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept_key: String,
}

/// Checks `request` as an RFC 6455 opening handshake.
pub fn check(request: &impl UpgradeRequest) -> Result<Accepted, HandshakeError> {
    if request.method() != b"GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if !request.is_http11() {
        return Err(HandshakeError::NotHttp11);
    }
    check_host(request.header_values("host")).map_err(HandshakeError::Host)?;
    // A body would be read as WebSocket frames after the 101 (request smuggling).
    let has_body = request.header_values("transfer-encoding").next().is_some()
        || request
            .header_values("content-length")
            .any(|value| value.trim_ascii() != b"0");
    if has_body {
        return Err(HandshakeError::BodyNotAllowed);
    }
    let has_token = |name: &str, token: &str| {
        request.header_values(name).any(|value| {
            value
                .split(|&byte| byte == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("upgrade", "websocket") {
        return Err(HandshakeError::NotWebSocket);
    }
    if !has_token("connection", "upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let version_ok = request
        .header_values("sec-websocket-version")
        .any(|value| value.trim_ascii() == b"13");
    if !version_ok {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let mut keys = request.header_values("sec-websocket-key");
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_base64_nonce(key.trim_ascii()) => Ok(Accepted {
            accept_key: derive_accept_key(key.trim_ascii()),
        }),
        _ => Err(HandshakeError::BadKey),
    }
}

/// RFC 6455 §4.1: the key is 16 random bytes in base64, so 24 characters ending in `==`.
fn is_base64_nonce(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
}

/// The headers of the `101 Switching Protocols` answer.
pub fn switching_protocols_headers(accepted: &Accepted) -> [(&'static str, &str); 3] {
    [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-accept", &accepted.accept_key),
    ]
}

/// The `101 Switching Protocols` response head, for a connection answered without hyper.
pub fn switching_protocols(accepted: &Accepted) -> Vec<u8> {
    let mut head = Vec::with_capacity(160);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in switching_protocols_headers(accepted) {
        for part in [name, ": ", value, "\r\n"] {
            head.extend_from_slice(part.as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A request head read off the wire, kept as its bytes plus where each part lies in them.
#[derive(Debug)]
pub struct RequestHead {
    bytes: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    minor_version: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

/// The outcome of parsing the start of a connection.
#[derive(Debug)]
pub enum Parsed {
    /// A whole head; the bytes after it (a pipelined frame, say) are the caller's.
    Complete { head: RequestHead, length: usize },
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1.x request head that this parser takes (HTTP/2's preface, too many
    /// headers, malformed): hyper decides what to answer.
    Other,
}

impl RequestHead {
    /// The head's bytes, as they came.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Parses the head at the start of `buffer`.
    pub fn parse(buffer: &[u8]) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let length = match request.parse(buffer) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(target), Some(minor_version)) =
            (request.method, request.path, request.version)
        else {
            return Parsed::Other;
        };
        // httparse's parts borrow from `buffer`: keep their offsets, which hold in the copy.
        let origin = buffer.as_ptr() as usize;
        let range = |part: &[u8]| {
            let start = part.as_ptr() as usize - origin;
            start..start + part.len()
        };
        let bytes = buffer[..length].to_vec();
        let head = RequestHead {
            method: range(method.as_bytes()),
            target: range(target.as_bytes()),
            minor_version,
            headers: request
                .headers
                .iter()
                .map(|header| (range(header.name.as_bytes()), range(header.value)))
                .collect(),
            bytes,
        };
        Parsed::Complete { head, length }
    }

    fn text(&self, range: &Range<usize>) -> &str {
        // Method, target and header names are checked tokens: ASCII by httparse's grammar.
        std::str::from_utf8(&self.bytes[range.clone()]).unwrap_or_default()
    }

    /// The request target without its query.
    pub fn path(&self) -> &str {
        let target = self.text(&self.target);
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.text(&self.target)
            .split_once('?')
            .map(|(_, query)| query)
    }
}

impl UpgradeRequest for RequestHead {
    fn method(&self) -> &[u8] {
        &self.bytes[self.method.clone()]
    }

    fn is_http11(&self) -> bool {
        self.minor_version == 1
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(header, _)| {
                self.bytes[header.clone()].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(_, value)| &self.bytes[value.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(text: &str) -> RequestHead {
        match RequestHead::parse(text.as_bytes()) {
            Parsed::Complete { head, length } => {
                assert_eq!(length, text.len());
                head
            }
            other => panic!("not a complete head: {other:?}"),
        }
    }

    fn upgrade(extra: &str) -> String {
        format!("GET /?header=abc%3D HTTP/1.1\r\nHost: h\r\n{extra}\r\n")
    }

    const VALID: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn the_rfc_example_is_accepted_with_its_accept_key() {
        let head = head(&upgrade(VALID));
        assert_eq!(head.path(), "/");
        assert_eq!(head.query(), Some("header=abc%3D"));
        assert_eq!(head.header_str("host"), Some("h"));
        let accepted = check(&head).expect("valid");
        // RFC 6455 §1.3's worked example.
        assert_eq!(accepted.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = String::from_utf8(switching_protocols(&accepted)).expect("ascii");
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.ends_with("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }

    #[test]
    fn header_lists_and_case_are_read_as_browsers_send_them() {
        let head = head(&upgrade(&format!(
            "upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: {KEY}\r\n"
        )));
        assert!(check(&head).is_ok());
    }

    #[test]
    fn each_missing_part_has_its_own_error() {
        let without = |name: &str| {
            VALID
                .split("\r\n")
                .filter(|line| !line.is_empty() && !line.starts_with(name))
                .map(|line| format!("{line}\r\n"))
                .collect::<String>()
        };
        let cases = [
            ("Upgrade", HandshakeError::NotWebSocket),
            ("Connection", HandshakeError::ConnectionNotUpgrade),
            ("Sec-WebSocket-Version", HandshakeError::UnsupportedVersion),
            ("Sec-WebSocket-Key", HandshakeError::BadKey),
        ];
        for (name, error) in cases {
            assert_eq!(check(&head(&upgrade(&without(name)))), Err(error), "{name}");
        }
        let post = VALID.to_owned();
        let text = format!("POST / HTTP/1.1\r\nHost: h\r\n{post}\r\n");
        assert_eq!(check(&head(&text)), Err(HandshakeError::MethodNotGet));
        let old = format!("GET / HTTP/1.0\r\nHost: h\r\n{VALID}\r\n");
        assert_eq!(check(&head(&old)), Err(HandshakeError::NotHttp11));
        let version = VALID.replace("Version: 13", "Version: 8");
        assert_eq!(
            check(&head(&upgrade(&version))),
            Err(HandshakeError::UnsupportedVersion)
        );
        let short_key = VALID.replace(KEY, "c2hvcnQ=");
        assert_eq!(
            check(&head(&upgrade(&short_key))),
            Err(HandshakeError::BadKey)
        );
        let two_keys = format!("{VALID}Sec-WebSocket-Key: {KEY}\r\n");
        assert_eq!(
            check(&head(&upgrade(&two_keys))),
            Err(HandshakeError::BadKey)
        );
    }

    #[test]
    fn the_host_header_must_be_one_valid_host() {
        for valid in [
            "h",
            "example.com:443",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[2001:db8::1]",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "",
        ] {
            let head = head(&format!("GET / HTTP/1.1\r\nHost: {valid}\r\n{VALID}\r\n"));
            assert_eq!(check_host(head.header_values("host")), Ok(()), "{valid:?}");
            assert!(check(&head).is_ok(), "{valid:?}");
        }
        for invalid in [
            "a b", "a:b", "h:80:80", "[::1", "[zz]", "[]", "a%2", "h/path", "user@h", "a\tb",
        ] {
            let head = head(&format!("GET / HTTP/1.1\r\nHost: {invalid}\r\n{VALID}\r\n"));
            assert_eq!(
                check(&head),
                Err(HandshakeError::Host(HostError::Invalid)),
                "{invalid:?}"
            );
        }
        assert!(!is_valid_host(b"caf\xc3\xa9"));
        let missing = head(&format!("GET / HTTP/1.1\r\n{VALID}\r\n"));
        assert_eq!(
            check(&missing),
            Err(HandshakeError::Host(HostError::Missing))
        );
        let twice = head(&format!(
            "GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n{VALID}\r\n"
        ));
        assert_eq!(
            check(&twice),
            Err(HandshakeError::Host(HostError::Repeated))
        );
    }

    #[test]
    fn an_upgrade_with_a_body_is_refused() {
        for framing in ["Content-Length: 7", "Transfer-Encoding: chunked"] {
            let head = head(&upgrade(&format!("{VALID}{framing}\r\n")));
            assert_eq!(
                check(&head),
                Err(HandshakeError::BodyNotAllowed),
                "{framing}"
            );
        }
        let empty = head(&upgrade(&format!("{VALID}Content-Length: 0\r\n")));
        assert!(check(&empty).is_ok());
    }

    #[test]
    fn partial_heads_wait_and_foreign_ones_go_elsewhere() {
        let text = upgrade(VALID);
        assert!(matches!(
            RequestHead::parse(&text.as_bytes()[..text.len() - 2]),
            Parsed::Partial
        ));
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert!(matches!(RequestHead::parse(preface), Parsed::Other));
        assert!(matches!(
            RequestHead::parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Parsed::Other
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let crowded = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            RequestHead::parse(crowded.as_bytes()),
            Parsed::Other
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes, and valid heads with arbitrary bytes spliced in, never panic;
        /// a complete head never claims more bytes than it was given.
        #[test]
        fn any_input_is_parsed_or_refused_without_panicking(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            at in 0usize..400,
        ) {
            let mut spliced = upgrade(VALID).into_bytes();
            let at = at.min(spliced.len());
            spliced.splice(at..at, noise.iter().copied());
            for input in [&noise, &spliced] {
                if let Parsed::Complete { head, length } = RequestHead::parse(input) {
                    proptest::prop_assert!(length <= input.len());
                    let _ = (head.path(), head.query(), head.header_str("host"));
                    if let Ok(accepted) = check(&head) {
                        proptest::prop_assert_eq!(accepted.accept_key.len(), 28);
                    }
                }
            }
        }
    }

    #[test]
    fn query_parameters_are_form_decoded() {
        let cases = [
            ("header=abc", Some("abc")),
            ("a=1&header=x%2By%3D%3D&b", Some("x+y==")),
            ("header=a+b", Some("a b")),
            ("header=%zz%4", Some("%zz%4")),
            ("header", Some("")),
            ("head%65r=1", Some("1")),
            ("header=%FF", Some("\u{FFFD}")),
            ("other=1&&", None),
            ("", None),
        ];
        for (query, expected) in cases {
            let value = query_parameter(query, "header");
            assert_eq!(
                value.as_ref().map(Option::as_deref),
                Ok(expected),
                "{query}"
            );
        }
        assert_eq!(
            query_parameter("header=a&header=b", "header"),
            Err(RepeatedParameter("header".into()))
        );
    }

    proptest::proptest! {
        /// The decoder agrees with the `form_urlencoded` crate on any query string.
        #[test]
        fn query_parameter_agrees_with_form_urlencoded(
            query in "([a-z%+=&0-9A-F]|%[0-9a-fA-F]{2}|\\PC){0,40}",
        ) {
            let reference: Vec<String> = form_urlencoded::parse(query.as_bytes())
                .filter(|(key, _)| key == "a")
                .map(|(_, value)| value.into_owned())
                .collect();
            match query_parameter(&query, "a") {
                Ok(value) => proptest::prop_assert_eq!(
                    value.map(Cow::into_owned),
                    reference.first().cloned()
                ),
                Err(_) => proptest::prop_assert!(reference.len() > 1),
            }
        }
    }

    #[test]
    fn bytes_after_the_head_are_left_to_the_caller() {
        let mut text = upgrade(VALID).into_bytes();
        let head_length = text.len();
        text.extend_from_slice(b"\x81\x05hello");
        match RequestHead::parse(&text) {
            Parsed::Complete { length, .. } => assert_eq!(length, head_length),
            other => panic!("{other:?}"),
        }
    }
}
