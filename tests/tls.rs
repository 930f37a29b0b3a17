//! TLS: `wss://` and `https` on the same listener, TLS 1.2+ only, no plain HTTP, certificate
//! reload by handle and by file polling (a bad new pair keeps the old one), ConnectInfo and
//! graceful shutdown behind TLS. Certificates are made here with rcgen.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use eventgate::tls::TlsConfig;
use eventgate::CertReload;

struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn new_cert() -> Cert {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    Cert {
        pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
        der: generated.cert.der().clone(),
    }
}

/// A directory of its own for each test's PEM files.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("eventgate-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Files { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Replaces both files, each by a rename so no reader sees half a file.
    fn write(&self, cert: &Cert) {
        for (path, text) in [(self.cert(), &cert.pem), (self.key(), &cert.key_pem)] {
            let temp = path.with_extension("tmp");
            std::fs::write(&temp, text).expect("write pem");
            std::fs::rename(&temp, &path).expect("rename pem");
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct TlsServer {
    addr: std::net::SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), eventgate::RunError>>,
    reload: CertReload,
}

async fn start(files: &Files, reload_interval: Duration) -> TlsServer {
    let config = Config {
        tls: Some(TlsConfig {
            cert: files.cert(),
            key: files.key(),
            reload_interval: Seconds(reload_interval),
        }),
        ..dev_config()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = CancellationToken::new();
    let reload = CertReload::new();
    let handle = tokio::spawn(eventgate::run_with_reload(
        config,
        listener,
        token.clone(),
        reload.clone(),
    ));
    TlsServer {
        addr,
        token,
        handle,
        reload,
    }
}

fn client_config(
    trusted: &[&Cert],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.der.clone()).expect("add root");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The certificate the server presents to a new handshake.
async fn presented(addr: std::net::SocketAddr, trusted: &[&Cert]) -> CertificateDer<'static> {
    let stream = tls_connect(addr, client_config(trusted, rustls::ALL_VERSIONS))
        .await
        .expect("TLS handshake");
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone()
        .into_owned()
}

/// Waits until new handshakes present `want`.
async fn wait_for_cert(addr: std::net::SocketAddr, trusted: &[&Cert], want: &Cert) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if presented(addr, trusted).await == want.der {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not presented in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header_value() -> String {
    header(&json!({"Host": "127.0.0.1", "ApiKey": dev_key(), "Id": CLIENT_ID}))
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

async fn wss_connect(addr: std::net::SocketAddr, cert: &Cert) -> Wss {
    let stream = tls_connect(addr, client_config(&[cert], rustls::ALL_VERSIONS))
        .await
        .expect("TLS handshake");
    let url = format!("wss://{addr}/?header={}", url_encode(&header_value()));
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    ws
}

async fn next_text(ws: &mut Wss) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("not an error");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

fn https_client(cert: &Cert) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.pem.as_bytes()).expect("PEM certificate"),
        )
        .build()
        .expect("https client")
}

#[tokio::test]
async fn wss_hello_https_health_and_connect_info() {
    let files = Files::new("basic");
    let cert = new_cert();
    files.write(&cert);
    let server = start(&files, Duration::from_secs(3600)).await;

    let mut ws = wss_connect(server.addr, &cert).await;
    ws.send(Message::text(
        json!({"Action": "Hello", "RequestId": "h"}).to_string(),
    ))
    .await
    .expect("send Hello");
    assert_ok(&next_text(&mut ws).await, "h");

    let http = https_client(&cert);
    let response = http
        .get(format!("https://127.0.0.1:{}/healthz", server.addr.port()))
        .send()
        .await
        .expect("GET /healthz over https");
    assert_eq!(response.status().as_u16(), 200);
    // Dev-mode ingest without a token is open to loopback peers only: this needs the
    // client address (ConnectInfo) through TLS.
    let response = http
        .post(format!("https://127.0.0.1:{}/events", server.addr.port()))
        .header("content-type", "application/json")
        .body(json!({"source": "s", "detail-type": "t", "detail": {}}).to_string())
        .send()
        .await
        .expect("POST /events over https");
    assert_eq!(response.status().as_u16(), 200);

    // Graceful shutdown still closes WebSockets with 1001 and returns.
    server.token.cancel();
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close") {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    let result = tokio::time::timeout(Duration::from_secs(10), server.handle)
        .await
        .expect("run returns")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn plain_http_and_tls_1_1_are_refused_tls_1_2_is_accepted() {
    let files = Files::new("versions");
    let cert = new_cert();
    files.write(&cert);
    let server = start(&files, Duration::from_secs(3600)).await;

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A TLS 1.1 ClientHello (legacy version 0x0302, no supported_versions extension).
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(body.len()).expect("len").to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).expect("len").to_be_bytes());
    record.extend_from_slice(&handshake);
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(&record).await.expect("send ClientHello");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply)).await;
    assert_ne!(
        reply.first(),
        Some(&0x16),
        "the server answered a TLS 1.1 hello with a handshake: {reply:?}"
    );
    if let Some(first) = reply.first() {
        assert_eq!(*first, 0x15, "expected an alert record, got {reply:?}");
    }

    // A client limited to TLS 1.2 is served.
    let stream = tls_connect(
        server.addr,
        client_config(&[&cert], &[&rustls::version::TLS12]),
    )
    .await
    .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    server.token.cancel();
}

#[tokio::test]
async fn reload_handle_swaps_the_certificate_and_a_bad_one_is_ignored() {
    let files = Files::new("handle");
    let first = new_cert();
    let second = new_cert();
    files.write(&first);
    // Polling effectively off: only the handle reloads.
    let server = start(&files, Duration::from_secs(3600)).await;
    let both = [&first, &second];
    assert!(presented(server.addr, &both).await == first.der);

    files.write(&second);
    server.reload.reload();
    wait_for_cert(server.addr, &both, &second).await;

    // A broken certificate file: logged, the current certificate stays.
    std::fs::write(files.cert(), "not a certificate").expect("write");
    server.reload.reload();
    tokio::time::sleep(QUIET).await;
    assert!(presented(server.addr, &both).await == second.der);
    // A key that does not belong to the certificate is refused too.
    let third = new_cert();
    std::fs::write(files.cert(), &third.pem).expect("write");
    server.reload.reload();
    tokio::time::sleep(QUIET).await;
    assert!(presented(server.addr, &both).await == second.der);
    server.token.cancel();
}

#[tokio::test]
async fn changed_files_are_picked_up_by_the_poller() {
    let files = Files::new("poll");
    let first = new_cert();
    let second = new_cert();
    files.write(&first);
    let server = start(&files, Duration::from_millis(100)).await;
    let both = [&first, &second];
    assert!(presented(server.addr, &both).await == first.der);
    tokio::time::sleep(Duration::from_millis(20)).await;
    files.write(&second);
    wait_for_cert(server.addr, &both, &second).await;
    server.token.cancel();
}

#[tokio::test]
async fn a_missing_certificate_fails_at_start() {
    let files = Files::new("missing");
    let server = start(&files, Duration::from_secs(1)).await;
    let result = tokio::time::timeout(WAIT, server.handle)
        .await
        .expect("run returns")
        .expect("no panic");
    assert!(
        matches!(result, Err(eventgate::RunError::Tls(_))),
        "{result:?}"
    );
}

/// The binary wires SIGHUP to the reload handle (the signal goes to the child only).
#[tokio::test]
async fn sighup_reloads_the_certificate_in_the_binary() {
    use std::io::{BufRead, BufReader};
    let files = Files::new("sighup");
    let first = new_cert();
    let second = new_cert();
    files.write(&first);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eventgate"));
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTGATE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("EVENTGATE_LOG", "warn")
        .env("EVENTGATE_TLS_CERT", files.cert())
        .env("EVENTGATE_TLS_KEY", files.key())
        .env("EVENTGATE_TLS_RELOAD_INTERVAL", "1h")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start eventgate");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut first_line = String::new();
    reader.read_line(&mut first_line).expect("first line");
    // Keep reading: a closed pipe would fail the server's later prints.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr: std::net::SocketAddr = first_line
        .trim()
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .parse()
        .expect("address");
    let both = [&first, &second];
    assert!(presented(addr, &both).await == first.der);
    files.write(&second);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    wait_for_cert(addr, &both, &second).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
