//! The WebSocket upgrade: every refusal (status and JSON body, never echoing a key), the
//! host/origin/path rules and lenient decoding of the `header` parameter.

use crate::common;

use common::*;
use eventgate_protocol::header::{api_key, encode_base64};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn doc(host: &str, key: &str, id: &str) -> Value {
    json!({"Host": host, "ApiKey": key, "Id": id})
}

/// A request for `url` with extra headers (replacing Host when given).
fn request_with(
    url: &str,
    headers: &[(&'static str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).expect("header value"));
    }
    request
}

fn assert_no_secret(error: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !error.contains(secret),
            "error {error:?} leaks a secret {secret:?}"
        );
    }
}

#[tokio::test]
async fn missing_header_is_401() {
    let server = Server::dev().await;
    let error = expect_refused(format!("ws://{}/", server.addr), 401).await;
    assert_no_secret(&error, &[&dev_key()]);
    // Another query parameter is not the header either.
    expect_refused(format!("ws://{}/?other=1", server.addr), 401).await;
}

#[tokio::test]
async fn undecodable_headers_are_400() {
    let server = Server::dev().await;
    for value in [
        "%%%".to_owned(),                  // not base64
        "a".to_owned(),                    // impossible base64 length
        encode_base64(b"not json at all"), // not JSON
        encode_base64(br#"[1,2,3]"#),      // not an object
        encode_base64(b"\"a string\""),    // not an object
        encode_base64(br#"{"ApiKey":5}"#), // field not a string
    ] {
        let error = expect_refused(server.ws_url_with("/", &value), 400).await;
        assert_no_secret(&error, &[&dev_key()]);
    }
}

#[tokio::test]
async fn wrong_host_is_403_without_leaking_the_key() {
    let server = Server::dev().await;
    let key = dev_key();
    let value = header(&doc("example.com", &key, CLIENT_ID));
    let error = expect_refused(server.ws_url_with("/", &value), 403).await;
    assert_no_secret(&error, &[&key, &value]);
    // A missing Host is wrong too.
    let value = header(&json!({"ApiKey": key, "Id": CLIENT_ID}));
    expect_refused(server.ws_url_with("/", &value), 403).await;
    // The header Host must match the request's Host header (not only the socket address).
    let value = header(&doc("127.0.0.1", &key, CLIENT_ID));
    let request = request_with(
        &server.ws_url_with("/", &value),
        &[("Host", "other.example:1234")],
    );
    expect_refused(request, 403).await;
}

#[tokio::test]
async fn request_host_compare_ignores_case_and_port() {
    let server = Server::dev().await;
    let value = header(&doc("LocalHost:9999", &dev_key(), CLIENT_ID));
    let request = request_with(
        &server.ws_url_with("/", &value),
        &[("Host", "localhost:1234")],
    );
    let mut client = expect_accepted(request).await;
    client.hello().await;
}

#[tokio::test]
async fn wrong_api_key_is_403_without_leaking_either_key() {
    let server = Server::dev().await;
    for wrong in [
        api_key("another-stack", None),
        api_key(STACK_ID, Some("unknown-version")),
        String::new(),
    ] {
        let value = header(&doc("127.0.0.1", &wrong, CLIENT_ID));
        let error = expect_refused(server.ws_url_with("/", &value), 403).await;
        let mut secrets = vec![dev_key(), STACK_ID.to_owned()];
        if !wrong.is_empty() {
            secrets.push(wrong.clone());
        }
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_no_secret(&error, &secrets);
    }
    let value = header(&json!({"Host": "127.0.0.1", "Id": CLIENT_ID}));
    expect_refused(server.ws_url_with("/", &value), 403).await;
}

#[tokio::test]
async fn id_must_be_a_guid() {
    let server = Server::dev().await;
    for id in [
        "not-a-guid",
        "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6",
        "",
        "{6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f",
    ] {
        let value = header(&doc("127.0.0.1", &dev_key(), id));
        let error = expect_refused(server.ws_url_with("/", &value), 403).await;
        assert_no_secret(&error, &[&dev_key()]);
    }
    let value = header(&json!({"Host": "127.0.0.1", "ApiKey": dev_key()}));
    expect_refused(server.ws_url_with("/", &value), 403).await;
}

#[tokio::test]
async fn public_hosts_compare_case_insensitively_and_ignore_ports() {
    let server = Server::start(Config {
        public_hosts: vec!["Events.Example.COM:443".into()],
        ..dev_config()
    })
    .await;
    for host in [
        "events.example.com",
        "EVENTS.EXAMPLE.COM:8443",
        "events.example.com:443",
    ] {
        let value = header(&doc(host, &dev_key(), CLIENT_ID));
        let mut client = Client::connect(&server.ws_url_with("/", &value)).await;
        client.hello().await;
    }
    // With public hosts configured, the request's own Host no longer counts.
    for host in ["127.0.0.1", "other.example.com", "events.example.com.evil"] {
        let value = header(&doc(host, &dev_key(), CLIENT_ID));
        expect_refused(server.ws_url_with("/", &value), 403).await;
    }
}

#[tokio::test]
async fn origin_allowlist() {
    let server = Server::start(Config {
        allowed_origins: vec!["https://app.example.com".into()],
        ..dev_config()
    })
    .await;
    let url = server.ws_url();
    for bad in ["https://evil.example.com", "http://app.example.com", "null"] {
        let error = expect_refused(request_with(&url, &[("Origin", bad)]), 403).await;
        assert_no_secret(&error, &[&dev_key()]);
    }
    for good in ["https://app.example.com", "HTTPS://App.Example.com/"] {
        let mut client = expect_accepted(request_with(&url, &[("Origin", good)])).await;
        client.hello().await;
    }
    // Non-browser clients send no Origin at all.
    let mut client = expect_accepted(url.as_str()).await;
    client.hello().await;
}

#[tokio::test]
async fn both_upgrade_paths_work() {
    let server = Server::dev().await;
    for path in ["/", "/LATEST"] {
        let mut client = Client::connect(&server.ws_url_with(path, &server.dev_header())).await;
        client.hello().await;
    }
    // A path that is not a WebSocket path does not upgrade.
    match try_upgrade(server.ws_url_with("/elsewhere", &server.dev_header())).await {
        Upgrade::Accepted(_) => panic!("/elsewhere must not upgrade"),
        Upgrade::Refused { status, .. } => assert_eq!(status, 404),
    }
}

#[tokio::test]
async fn several_app_version_ids_are_valid_at_once() {
    let server = Server::start(Config {
        dev: false,
        stack_id: Some(STACK_ID.into()),
        app_version_ids: vec!["v1".into(), "v2".into(), "v3".into()],
        ..Default::default()
    })
    .await;
    for version in ["v1", "v2", "v3"] {
        let value = header(&doc(
            "127.0.0.1",
            &api_key(STACK_ID, Some(version)),
            CLIENT_ID,
        ));
        let mut client = Client::connect(&server.ws_url_with("/", &value)).await;
        client.hello().await;
    }
    // Outside dev mode the dev key and unknown versions are refused.
    for key in [api_key(STACK_ID, None), api_key(STACK_ID, Some("v4"))] {
        let value = header(&doc("127.0.0.1", &key, CLIENT_ID));
        let error = expect_refused(server.ws_url_with("/", &value), 403).await;
        assert_no_secret(&error, &[&key, &api_key(STACK_ID, Some("v1"))]);
    }
}

/// A header document whose standard base64 contains both `+` and `/` and ends in padding.
fn awkward_header() -> (Value, String) {
    for filler in 0..36 {
        // "???" encodes as "Pz8/" and ">>>" as "Pj4+" when aligned on 3 bytes.
        let pad = "x".repeat(filler % 6) + "???>>>???>>>" + &"y".repeat(filler / 6);
        let document = json!({
            "Host": "127.0.0.1",
            "ApiKey": dev_key(),
            "Id": CLIENT_ID,
            "Pad": pad,
        });
        let encoded = header(&document);
        if encoded.contains('+') && encoded.contains('/') && encoded.ends_with('=') {
            return (document, encoded);
        }
    }
    panic!("no awkward header found");
}

#[tokio::test]
async fn url_safe_alphabet_without_padding() {
    let server = Server::dev().await;
    let (_, encoded) = awkward_header();
    let url_safe = encoded.replace('+', "-").replace('/', "_");
    let unpadded = url_safe.trim_end_matches('=').to_owned();
    for value in [
        encoded.clone(),
        url_safe,
        unpadded,
        encoded.trim_end_matches('=').to_owned(),
    ] {
        let mut client = Client::connect(&server.ws_url_with("/", &value)).await;
        client.hello().await;
    }
}

#[tokio::test]
async fn plus_sent_as_a_space() {
    let server = Server::dev().await;
    let (_, encoded) = awkward_header();
    // Build the query by hand: '+' left raw (form decoding turns it into a space),
    // everything else percent-encoded.
    let query: String = encoded
        .chars()
        .map(|c| match c {
            '+' => "+".to_owned(),
            '/' => "%2F".to_owned(),
            '=' => "%3D".to_owned(),
            other => other.to_string(),
        })
        .collect();
    let url = format!("ws://{}/?header={query}", server.addr);
    let mut client = Client::connect(&url).await;
    client.hello().await;
    // A literal %20 (a space) is read the same way.
    let url = format!("ws://{}/?header={}", server.addr, query.replace('+', "%20"));
    let mut client = Client::connect(&url).await;
    client.hello().await;
}

#[tokio::test]
async fn pretty_json_lower_case_keys_and_guid_spellings() {
    let server = Server::dev().await;
    let pretty = serde_json::to_string_pretty(&doc("127.0.0.1", &dev_key(), CLIENT_ID))
        .expect("pretty")
        + "\n";
    let lower = json!({"host": "127.0.0.1", "apikey": dev_key(), "id": CLIENT_ID}).to_string();
    let braced = doc("127.0.0.1", &dev_key(), &format!("{{{CLIENT_ID}}}")).to_string();
    let n_form = doc(
        "127.0.0.1",
        &dev_key(),
        &CLIENT_ID.replace('-', "").to_ascii_uppercase(),
    )
    .to_string();
    for text in [pretty, lower, braced, n_form] {
        let value = encode_base64(text.as_bytes());
        let mut client = Client::connect(&server.ws_url_with("/", &value)).await;
        client.hello().await;
    }
}
