//! The WebSocket opening handshake over raw TCP: what a browser sends, what it gets back,
//! frames pipelined behind the request head and their Acks, an upgrade after other requests on a kept-alive
//! connection (the hyper route), and the specific refusal for each malformed handshake.

use crate::common;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A browser's upgrade request for `/` with the dev `header`, plus `extra` header lines.
fn upgrade_request(server: &Server, extra: &str) -> String {
    let url = server.ws_url();
    let target = &url[url.find("/?").unwrap_or(0)..];
    format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
        server.addr
    )
}

/// Reads bytes until `buffer` holds a whole HTTP response head; returns the head and keeps
/// what follows it in `buffer`.
async fn read_response_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            buffer.drain(..end + 4);
            return head;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(read > 0, "closed before a response head: {buffer:?}");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Reads one unmasked server text frame (payloads under 64 KiB).
async fn read_server_text(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Value {
    loop {
        if buffer.len() >= 2 {
            assert_eq!(buffer[0], 0x81, "a text frame");
            let (length, start) = match buffer[1] {
                126 if buffer.len() >= 4 => {
                    (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4)
                }
                126 => (usize::MAX, 0),
                short => (usize::from(short), 2),
            };
            if length != usize::MAX && buffer.len() >= start + length {
                let payload: Vec<u8> = buffer.drain(..start + length).skip(start).collect();
                return serde_json::from_slice(&payload).expect("JSON payload");
            }
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a frame in time")
            .expect("read");
        assert!(read > 0, "closed before a frame");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The `Content-Length` of a response head.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"))
}

/// Reads a response head and its body from `stream`.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> (String, Vec<u8>) {
    let head = read_response_head(stream, buffer).await;
    let length = content_length(&head);
    while buffer.len() < length {
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a body in time")
            .expect("read");
        assert!(read > 0, "closed inside a body");
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = buffer.drain(..length).collect();
    (head, body)
}

/// Sends `request` on a new connection and returns the response head (lower case) and the
/// JSON body.
async fn refused(server: &Server, request: &str) -> (String, Value) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let (head, body) = read_response(&mut stream, &mut Vec::new()).await;
    let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "JSON body expected after {head:?}: {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (head.to_ascii_lowercase(), body)
}

#[tokio::test]
async fn a_frame_pipelined_behind_the_request_head_is_read() {
    let server = Server::dev().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // One write: the upgrade request and the Hello right behind it.
    let mut bytes = upgrade_request(&server, "Origin: http://127.0.0.1\r\n").into_bytes();
    bytes.extend(client_text_frame(r#"{"Action":"Hello","RequestId":"r1"}"#));
    stream.write_all(&bytes).await.expect("write");
    let mut buffer = Vec::new();
    let head = read_response_head(&mut stream, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains(&format!("sec-websocket-accept: {ACCEPT}")),
        "{head}"
    );
    let ack = read_server_text(&mut stream, &mut buffer).await;
    assert_eq!(ack["Action"], "Ack", "{ack}");
    assert_eq!(ack["RequestId"], "r1", "{ack}");
    assert_eq!(ack["Status"], "Ok", "{ack}");
}

/// The session sends Acks once it has no complete frame left to read: actions pipelined in
/// one write (as the JS client re-subscribes after Hello) all get their Acks, in order.
#[tokio::test]
async fn actions_pipelined_in_one_write_are_all_acked_in_order() {
    let server = Server::dev().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut bytes = upgrade_request(&server, "").into_bytes();
    let actions = [
        (r#"{"Action":"Hello","RequestId":"h"}"#, "Ok"),
        (
            r#"{"Action":"Subscribe","RequestId":"s1","Rule":"a","Pattern":{"source":["x"]}}"#,
            "Ok",
        ),
        (
            r#"{"Action":"Subscribe","RequestId":"s2","Rule":"b","Pattern":{"source":7}}"#,
            "Error",
        ),
        (
            r#"{"Action":"Subscribe","RequestId":"s3","Rule":"c","Pattern":{"source":["y"]}}"#,
            "Ok",
        ),
        (
            r#"{"Action":"Unsubscribe","RequestId":"u","Rule":"c"}"#,
            "Ok",
        ),
    ];
    for (action, _) in actions {
        bytes.extend(client_text_frame(action));
    }
    stream.write_all(&bytes).await.expect("write");
    let mut buffer = Vec::new();
    let head = read_response_head(&mut stream, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    for (action, status) in actions {
        let ack = read_server_text(&mut stream, &mut buffer).await;
        let sent: Value = serde_json::from_str(action).expect("json");
        assert_eq!(ack["Action"], "Ack", "{ack}");
        assert_eq!(ack["RequestId"], sent["RequestId"], "{ack}");
        assert_eq!(ack["Status"], status, "{ack}");
    }
    // Rule `a` is live: an event for it arrives on the same connection.
    server.publish_event("x", "t", serde_json::json!({})).await;
    let event = read_server_text(&mut stream, &mut buffer).await;
    assert_eq!(event["Action"], "Event", "{event}");
    assert_eq!(event["Rules"], serde_json::json!(["a"]), "{event}");
}

#[tokio::test]
async fn a_head_dribbled_over_several_writes_still_upgrades() {
    let server = Server::dev().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = upgrade_request(&server, "");
    for piece in request.as_bytes().chunks(40) {
        stream.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buffer = Vec::new();
    let head = read_response_head(&mut stream, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[tokio::test]
async fn an_upgrade_after_other_requests_on_the_connection_works() {
    let server = Server::dev().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .await
        .expect("write");
    let mut buffer = Vec::new();
    let (head, _) = read_response(&mut stream, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // The same connection now asks for the WebSocket: hyper routes it, with the same checks.
    stream
        .write_all(upgrade_request(&server, "").as_bytes())
        .await
        .expect("write");
    let head = read_response_head(&mut stream, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "sec-websocket-accept: {}",
            ACCEPT.to_ascii_lowercase()
        )),
        "{head}"
    );
    stream
        .write_all(&client_text_frame(r#"{"Action":"Hello","RequestId":"r2"}"#))
        .await
        .expect("write");
    let ack = read_server_text(&mut stream, &mut buffer).await;
    assert_eq!(ack["RequestId"], "r2", "{ack}");
    assert_eq!(ack["Status"], "Ok", "{ack}");
    // And a refusal on that route is the same JSON as on the first request.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let bad_version = upgrade_request(&server, "").replace("Version: 13", "Version: 8");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n{bad_version}");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buffer = Vec::new();
    let (first, _) = read_response(&mut stream, &mut buffer).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    let (second, body) = read_response(&mut stream, &mut buffer).await;
    let second = second.to_ascii_lowercase();
    assert!(second.starts_with("http/1.1 426 "), "{second}");
    assert!(second.contains("sec-websocket-version: 13"), "{second}");
    assert!(String::from_utf8_lossy(&body).contains("version 13"));
}

#[tokio::test]
async fn each_malformed_handshake_gets_its_own_status_and_message() {
    let server = Server::dev().await;
    let valid = upgrade_request(&server, "");

    // A browser opening the WebSocket URL as a page: no Upgrade header.
    let plain = valid
        .replace("Upgrade: websocket\r\n", "")
        .replace("Connection: Upgrade\r\n", "");
    // (request, status, a header the answer carries, a part of its error message)
    let cases = [
        (plain, 426, Some("upgrade: websocket"), "WebSocket endpoint"),
        (
            valid.replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
            None,
            "Connection",
        ),
        (
            valid.replace("Version: 13", "Version: 8"),
            426,
            Some("sec-websocket-version: 13"),
            "version 13",
        ),
        (valid.replace(KEY, "short"), 400, None, "Sec-WebSocket-Key"),
        (
            valid.replace("?header=", "?header=a&header="),
            400,
            None,
            "query string",
        ),
        (valid.replace("HTTP/1.1", "HTTP/1.0"), 400, None, "HTTP/1.1"),
        (valid.replacen("GET ", "POST ", 1), 405, None, "GET"),
    ];
    for (request, status, header, message) in cases {
        let (head, body) = refused(&server, &request).await;
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        if let Some(header) = header {
            assert!(head.contains(header), "{head}");
        }
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(message)),
            "{body}"
        );
    }

    // The refusals are counted with their reasons.
    let metrics = server.metrics().await;
    assert!(metrics.contains("reason=\"bad_handshake\""), "{metrics}");
    assert!(metrics.contains("reason=\"bad_query\""), "{metrics}");

    // The server goes on accepting valid upgrades.
    let _client = server.announced().await;
}
