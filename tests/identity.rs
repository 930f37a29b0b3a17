//! Verified identities and scopes through the real server: tokens signed here (HS256,
//! RS256, ES256, EdDSA), a JWKS served by a test HTTP server with a key rotation, expiry and
//! Refresh on open connections, per-version modes, and two tenants on one gateway.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::*;
use eventgate::identity::{IdentityConfig, Mode, PublicKeyConfig};
use eventgate_protocol::header::api_key;

const SECRET: &str = "an HMAC secret of at least thirty-two bytes";
const RSA_PRIVATE: &str = include_str!("fixtures/identity/rsa-private.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    eventgate::identity::crypto::install();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("token signed")
}

fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("hmac key");
    sign(Algorithm::HS256, None, &key, claims)
}

/// Claims valid for an hour, for `tenant`.
fn tenant_claims(tenant: &str) -> Value {
    json!({"sub": format!("user-of-{tenant}"), "tenant": tenant, "exp": now() + 3600})
}

fn identity(mode: Mode) -> IdentityConfig {
    IdentityConfig {
        mode,
        hmac_secret: Some(SECRET.into()),
        ..IdentityConfig::default()
    }
}

fn config_with(identity: IdentityConfig) -> Config {
    Config {
        identity: Some(identity),
        ..dev_config()
    }
}

/// The `header` value of a dev client with `token` (or none).
fn header_with(token: Option<&str>, key: &str) -> String {
    let mut document = json!({"Host": "127.0.0.1", "ApiKey": key, "Id": CLIENT_ID});
    if let Some(token) = token {
        document["Token"] = json!(token);
    }
    header(&document)
}

fn url(server: &Server, token: Option<&str>) -> String {
    server.ws_url_with("/", &header_with(token, &dev_key()))
}

/// Asserts a refusal's status and JSON `reason`.
async fn refused(server: &Server, token: Option<&str>, status: u16, reason: &str) {
    match try_upgrade(url(server, token)).await {
        Upgrade::Refused { status: got, body } => {
            assert_eq!(got, status, "{body}");
            let body: Value = serde_json::from_str(&body).expect("JSON body");
            assert_eq!(body["reason"], reason, "{body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
            if let Some(token) = token {
                assert!(!body.to_string().contains(token), "the token is echoed");
            }
        }
        Upgrade::Accepted(_) => panic!("accepted, expected {status} {reason}"),
    }
}

async fn accepted(server: &Server, token: &str) -> Client {
    let mut client = Client::connect(&url(server, Some(token))).await;
    client.hello().await;
    client
}

#[tokio::test]
async fn hs256_tokens_are_required_and_checked() {
    let server = Server::start(config_with(IdentityConfig {
        issuers: vec!["https://issuer.test".into()],
        audiences: vec!["eventgate".into()],
        leeway: ms(0),
        ..identity(Mode::Token)
    }))
    .await;
    let good = json!({"iss": "https://issuer.test", "aud": "eventgate", "exp": now() + 600});
    refused(&server, None, 401, "token_missing").await;
    refused(&server, Some("not.a.jwt"), 403, "token_malformed").await;
    let other_secret =
        EncodingKey::from_secret(b"another secret that is long enough!!").expect("key");
    refused(
        &server,
        Some(&sign(Algorithm::HS256, None, &other_secret, &good)),
        403,
        "token_bad_signature",
    )
    .await;
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 10);
    refused(&server, Some(&hs256(&expired)), 403, "token_expired").await;
    let mut early = good.clone();
    early["nbf"] = json!(now() + 600);
    refused(&server, Some(&hs256(&early)), 403, "token_not_yet_valid").await;
    let mut issuer = good.clone();
    issuer["iss"] = json!("https://other.test");
    refused(&server, Some(&hs256(&issuer)), 403, "token_wrong_issuer").await;
    let mut audience = good.clone();
    audience["aud"] = json!("someone-else");
    refused(
        &server,
        Some(&hs256(&audience)),
        403,
        "token_wrong_audience",
    )
    .await;
    let mut no_exp = good.clone();
    no_exp.as_object_mut().map(|claims| claims.remove("exp"));
    refused(&server, Some(&hs256(&no_exp)), 403, "token_missing_claim").await;
    // A public-key algorithm on a server that holds only an HMAC secret.
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key");
    refused(
        &server,
        Some(&sign(Algorithm::RS256, None, &rsa, &good)),
        403,
        "token_algorithm",
    )
    .await;

    let mut client = accepted(&server, &hs256(&good)).await;
    client.subscribe("all", &json!({"source": ["app"]})).await;
    server.publish_event("app", "t", json!({"n": 1})).await;
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"]["n"], 1);

    let metrics = server.metrics().await;
    for reason in ["token_missing", "token_expired", "token_bad_signature"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no {reason} in metrics"
        );
    }
}

/// A temporary directory with PEM files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "eventgate-identity-{name}-{}-{}",
            std::process::id(),
            now()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn rs256_es256_and_eddsa_public_keys_from_pem_files() {
    let dir = TempDir::new("pem");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let public_keys = vec![
        PublicKeyConfig {
            file: "tests/fixtures/identity/rsa-public.pem".into(),
            algorithms: vec![Algorithm::RS256, Algorithm::PS256],
            kid: Some("rsa".into()),
        },
        PublicKeyConfig {
            file: dir.write("ec.pem", &ec.public_key_pem()),
            algorithms: vec![Algorithm::ES256],
            kid: None,
        },
        PublicKeyConfig {
            file: dir.write("ed.pem", &ed.public_key_pem()),
            algorithms: vec![Algorithm::EdDSA],
            kid: None,
        },
    ];
    let server = Server::start(config_with(IdentityConfig {
        mode: Mode::Token,
        public_keys,
        ..IdentityConfig::default()
    }))
    .await;
    let claims = tenant_claims("t1");
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key");
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("ec key");
    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("ed key");
    for token in [
        sign(Algorithm::RS256, Some("rsa"), &rsa, &claims),
        sign(Algorithm::PS256, None, &rsa, &claims),
        sign(Algorithm::ES256, None, &ec_key, &claims),
        sign(Algorithm::EdDSA, None, &ed_key, &claims),
    ] {
        accepted(&server, &token).await.close().await;
    }
    // The right algorithm, another key.
    let other_ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    let other = EncodingKey::from_ec_pem(other_ec.serialize_pem().as_bytes()).expect("ec key");
    refused(
        &server,
        Some(&sign(Algorithm::ES256, None, &other, &claims)),
        403,
        "token_bad_signature",
    )
    .await;
    // An HMAC token forged with the public key as the secret (algorithm confusion).
    let public_pem = std::fs::read("tests/fixtures/identity/rsa-public.pem").expect("pem");
    let forged = EncodingKey::from_secret(&public_pem).expect("hmac key");
    refused(
        &server,
        Some(&sign(Algorithm::HS256, None, &forged, &claims)),
        403,
        "token_algorithm",
    )
    .await;
    // A kid nobody has.
    refused(
        &server,
        Some(&sign(Algorithm::RS256, Some("gone"), &rsa, &claims)),
        403,
        "token_unknown_key",
    )
    .await;
}

/// An ES256 key and its JWK.
struct JwkKey {
    encoding: EncodingKey,
    jwk: Value,
    kid: &'static str,
}

fn es256_jwk(kid: &'static str) -> JwkKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
    // The uncompressed point: 0x04, X, Y.
    let raw = pair.public_key_raw();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    JwkKey {
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec key"),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
        kid,
    }
}

impl JwkKey {
    fn token(&self, claims: &Value) -> String {
        sign(Algorithm::ES256, Some(self.kid), &self.encoding, claims)
    }
}

/// A JWKS endpoint whose answer the test changes: a key set, or a 500.
#[derive(Clone, Default)]
struct JwksServer {
    answer: Arc<Mutex<Option<Value>>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(&self) -> String {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let state = self.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    state
                        .fetches
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer = state.answer.lock().expect("lock").clone();
                    match answer {
                        Some(keys) => axum::Json(keys).into_response(),
                        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        let addr = serve_on_loopback(app).await;
        format!("http://{addr}/jwks.json")
    }

    fn serve(&self, keys: &[&JwkKey]) {
        let set = json!({"keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>()});
        *self.answer.lock().expect("lock") = Some(set);
    }

    fn fail(&self) {
        *self.answer.lock().expect("lock") = None;
    }

    /// The number of fetches once it has not changed for 300 ms (at most 5 s).
    async fn settled_fetches(&self) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut seen = self.fetches.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.fetches.load(std::sync::atomic::Ordering::SeqCst);
            if now == seen || tokio::time::Instant::now() > deadline {
                return now;
            }
            seen = now;
        }
    }
}

#[tokio::test]
async fn a_jwks_url_is_cached_refreshed_on_unknown_kids_and_survives_failures() {
    let jwks = JwksServer::default();
    let old = es256_jwk("2026-old");
    let new = es256_jwk("2026-new");
    jwks.serve(&[&old]);
    let url = jwks.start().await;
    let server = Server::start(config_with(IdentityConfig {
        mode: Mode::Token,
        jwks_url: Some(url),
        jwks_min_refresh_interval: ms(0),
        ..IdentityConfig::default()
    }))
    .await;
    let claims = tenant_claims("t1");
    accepted(&server, &old.token(&claims)).await.close().await;
    // The refresher's own first fetch (at start) may land after the fetch the first token's
    // unknown kid caused: count from when the fetches have settled.
    let fetches = jwks.settled_fetches().await;
    accepted(&server, &old.token(&claims)).await.close().await;
    assert_eq!(
        jwks.fetches.load(std::sync::atomic::Ordering::SeqCst),
        fetches,
        "a known key is served from the cache"
    );

    // Rotation: the issuer publishes the new key and drops the old one; the first token
    // naming the new kid makes the gateway fetch the set again.
    jwks.serve(&[&new]);
    accepted(&server, &new.token(&claims)).await.close().await;
    refused(&server, Some(&old.token(&claims)), 403, "token_unknown_key").await;

    // The endpoint fails: the last good keys stay.
    jwks.fail();
    refused(&server, Some(&old.token(&claims)), 403, "token_unknown_key").await;
    accepted(&server, &new.token(&claims)).await.close().await;
    assert!(server
        .metrics()
        .await
        .contains("eventgate_jwks_refreshes_total{outcome=\"failed\"}"));
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start() {
    let dir = TempDir::new("jwks");
    let key = es256_jwk("file-key");
    let path = dir.write("jwks.json", &json!({"keys": [key.jwk]}).to_string());
    let server = Server::start(config_with(IdentityConfig {
        mode: Mode::Token,
        jwks_file: Some(path),
        ..IdentityConfig::default()
    }))
    .await;
    accepted(&server, &key.token(&tenant_claims("t1")))
        .await
        .close()
        .await;
}

#[tokio::test]
async fn the_mode_is_chosen_per_app_version() {
    let mut modes = std::collections::BTreeMap::new();
    modes.insert("v2".to_owned(), Mode::Token);
    let server = Server::start(Config {
        app_version_ids: vec!["v1".into(), "v2".into()],
        ..config_with(IdentityConfig {
            modes,
            ..identity(Mode::Key)
        })
    })
    .await;
    let v1 = header_with(None, &api_key(STACK_ID, Some("v1")));
    let v2 = header_with(None, &api_key(STACK_ID, Some("v2")));
    Client::connect(&server.ws_url_with("/", &v1))
        .await
        .close()
        .await;
    expect_refused(server.ws_url_with("/", &v2), 401).await;
    let token = hs256(&tenant_claims("t1"));
    let v2 = header_with(Some(&token), &api_key(STACK_ID, Some("v2")));
    Client::connect(&server.ws_url_with("/", &v2))
        .await
        .close()
        .await;
}

fn scoped_identity() -> IdentityConfig {
    IdentityConfig {
        scope: Some(r#"{"detail":{"tenant":["${tenant}"]}}"#.into()),
        ..identity(Mode::Token)
    }
}

#[tokio::test]
async fn two_tenants_each_receive_only_their_own_events() {
    let server = Server::start(config_with(scoped_identity())).await;
    let mut t1 = accepted(&server, &hs256(&tenant_claims("t1"))).await;
    let mut t2 = accepted(&server, &hs256(&tenant_claims("t2"))).await;
    // Both ask for everything, and t1 tries every trick to see t2's events.
    for client in [&mut t1, &mut t2] {
        client.subscribe("all", &json!({"source": ["app"]})).await;
    }
    for (rule, pattern) in [
        ("other", json!({"detail": {"tenant": ["t2"]}})),
        (
            "not-mine",
            json!({"detail": {"tenant": [{"anything-but": "t1"}]}}),
        ),
        ("absent", json!({"detail": {"tenant": [{"exists": false}]}})),
        (
            "or",
            json!({"$or": [{"source": ["app"]}, {"detail": {"tenant": ["t2"]}}]}),
        ),
    ] {
        t1.subscribe(rule, &pattern).await;
    }
    for tenant in ["t1", "t2", "t1", "t2"] {
        server
            .publish_event("app", "update", json!({"tenant": tenant}))
            .await;
    }
    // An event of no tenant reaches no scoped connection.
    server.publish_event("app", "update", json!({"n": 1})).await;
    for (client, tenant) in [(&mut t1, "t1"), (&mut t2, "t2")] {
        for _ in 0..2 {
            let (message, event) = client.next_event().await;
            assert_eq!(event["detail"]["tenant"], tenant, "{message}");
            if tenant == "t1" {
                // The $or rule matches (source), within the scope.
                assert_eq!(message["Rules"], json!(["all", "or"]), "{message}");
            }
        }
        assert_eq!(client.try_recv(QUIET).await, None, "{tenant} got more");
    }
}

/// Two tenants resume with the same pattern text from the same position: each replay holds
/// only its own tenant's events, also when the second resume is answered from what the first
/// left in the replay memo (keyed on the scoped pattern, never on the text both sent).
#[tokio::test]
async fn two_tenants_resuming_with_the_same_pattern_each_replay_only_their_own_events() {
    let server = Server::start(config_with(scoped_identity())).await;
    let pattern = json!({"source": ["app"]});
    let mut first = accepted(&server, &hs256(&tenant_claims("t1"))).await;
    first.subscribe("all", &pattern).await;
    server
        .publish_event("app", "update", json!({"tenant": "t1", "n": 0}))
        .await;
    let (message, _) = first.next_event().await;
    let position = message["Position"].as_str().expect("Position").to_owned();
    first.close().await;
    for (n, tenant) in ["t1", "t2", "t2", "t1", "t2"].into_iter().enumerate() {
        server
            .publish_event("app", "update", json!({"tenant": tenant, "n": n + 1}))
            .await;
    }
    for (tenant, expected) in [
        ("t1", [1, 4].as_slice()),
        ("t2", &[2, 3, 5]),
        ("t1", &[1, 4]),
    ] {
        let token = hs256(&tenant_claims(tenant));
        let mut client = Client::connect(&url(&server, Some(&token))).await;
        let hello = json!({"Action": "Hello", "RequestId": "hello", "Position": position});
        assert_ok(&client.request(&hello).await, "hello");
        client.subscribe("all", &pattern).await;
        let ack = client
            .request(&json!({"Action": "Resume", "RequestId": "resume"}))
            .await;
        assert_eq!(ack["Status"], "Ok", "{tenant}: {ack}");
        assert_eq!(ack["Replayed"], expected.len(), "{tenant}: {ack}");
        for n in expected {
            let (message, event) = client.next_event().await;
            assert_eq!(event["detail"]["tenant"], tenant, "{message}");
            assert_eq!(event["detail"]["n"], *n, "{message}");
        }
        assert_eq!(client.try_recv(QUIET).await, None, "{tenant} got more");
        client.close().await;
    }
}

#[tokio::test]
async fn a_scope_needs_its_claims_and_takes_them_as_values() {
    let server = Server::start(config_with(scoped_identity())).await;
    let mut claims = tenant_claims("t1");
    claims.as_object_mut().map(|claims| claims.remove("tenant"));
    refused(&server, Some(&hs256(&claims)), 403, "scope_claim_missing").await;
    claims["tenant"] = json!({"anything-but": "nobody"});
    refused(&server, Some(&hs256(&claims)), 403, "scope_claim_unusable").await;
    // Pattern syntax inside a claim is only a (non-matching) tenant name.
    claims["tenant"] = json!(r#"t1"],"source":["app"#);
    let mut client = accepted(&server, &hs256(&claims)).await;
    client.subscribe("all", &json!({"source": ["app"]})).await;
    server
        .publish_event("app", "update", json!({"tenant": "t1"}))
        .await;
    assert_eq!(client.try_recv(QUIET).await, None);
}

/// Publishes one `app` event per `(tenant, visibility)`.
async fn publish_items(server: &Server, items: &[(&str, &str)]) {
    for (tenant, visibility) in items {
        server
            .publish_event(
                "app",
                "update",
                json!({"tenant": tenant, "visibility": visibility}),
            )
            .await;
    }
}

/// Serves `app` on 127.0.0.1 (a JWKS endpoint, a connect hook); returns its address.
async fn serve_on_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_scope_claim_holds_a_pattern() {
    let server = Server::start(config_with(IdentityConfig {
        scope_claim: Some("evg_scope".into()),
        ..scoped_identity()
    }))
    .await;
    // Template AND claim: tenant t1, and only its public items.
    let mut claims = tenant_claims("t1");
    claims["evg_scope"] = json!({"detail": {"visibility": ["public"]}});
    let mut client = accepted(&server, &hs256(&claims)).await;
    client.subscribe("all", &json!({"source": ["app"]})).await;
    publish_items(
        &server,
        &[("t1", "private"), ("t2", "public"), ("t1", "public")],
    )
    .await;
    let (_, event) = client.next_event().await;
    assert_eq!(
        event["detail"],
        json!({"tenant": "t1", "visibility": "public"})
    );
    assert_eq!(client.try_recv(QUIET).await, None);
    claims["evg_scope"] = json!("not a pattern");
    refused(&server, Some(&hs256(&claims)), 403, "scope_invalid").await;
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_unless_refreshed() {
    let server = Server::start(config_with(IdentityConfig {
        leeway: ms(0),
        expiry_grace: ms(0),
        ..scoped_identity()
    }))
    .await;
    let short = |tenant: &str| {
        let mut claims = tenant_claims(tenant);
        claims["exp"] = json!(now() + 2);
        hs256(&claims)
    };
    let mut lapsing = accepted(&server, &short("t1")).await;
    let mut refreshed = accepted(&server, &short("t1")).await;
    let refresh = |token: String| json!({"Action": "Refresh", "RequestId": "r", "Token": token});

    // Refused refreshes leave the old token in place.
    let ack = refreshed.request(&refresh("garbage".into())).await;
    assert_eq!(ack["Status"], "Error", "{ack}");
    assert!(ack["Message"]
        .as_str()
        .is_some_and(|m| m.starts_with("token refused: ")));
    let ack = refreshed
        .request(&refresh(hs256(&tenant_claims("t2"))))
        .await;
    assert_eq!(ack["Status"], "Error", "{ack}");
    assert!(ack["Message"]
        .as_str()
        .is_some_and(|m| m.contains("scope differs")));
    let ack = refreshed
        .request(&refresh(hs256(&tenant_claims("t1"))))
        .await;
    assert_eq!(ack["Status"], "Ok", "{ack}");

    let (code, reason) = lapsing.expect_close().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    // The refreshed one outlives the first token.
    tokio::time::sleep(Duration::from_secs(1)).await;
    refreshed
        .subscribe("all", &json!({"source": ["app"]}))
        .await;
    server
        .publish_event("app", "update", json!({"tenant": "t1"}))
        .await;
    refreshed.next_event().await;
    assert!(server.metrics().await.contains("reason=\"token_expired\""));
}

#[tokio::test]
async fn key_only_connections_cannot_refresh() {
    let server = Server::start(config_with(identity(Mode::Key))).await;
    let mut client = server.announced().await;
    let ack = client
        .request(
            &json!({"Action": "Refresh", "RequestId": "r", "Token": hs256(&tenant_claims("t1"))}),
        )
        .await;
    assert_eq!(ack["Status"], "Error");
    assert!(ack["Message"]
        .as_str()
        .is_some_and(|m| m.contains("not used")));
}

#[tokio::test]
async fn test_pattern_takes_a_scope() {
    let server = Server::dev().await;
    let ask = |event: Value| {
        json!({
            "EventPattern": {"source": ["app"]},
            "Event": event,
            "Scope": {"detail": {"tenant": ["t1"]}},
        })
    };
    for (event, result) in [
        (json!({"source": "app", "detail": {"tenant": "t1"}}), true),
        (json!({"source": "app", "detail": {"tenant": "t2"}}), false),
        (json!({"source": "app", "detail": {}}), false),
    ] {
        let response = server
            .http
            .post(server.http_url("/test-pattern"))
            .json(&ask(event))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["Result"], result);
    }
    let response = server
        .http
        .post(server.http_url("/test-pattern"))
        .json(&json!({"EventPattern": {"source": ["app"]}, "Event": {}, "Scope": 5}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 400);
}

/// A connect-hook backend: answers by the `session` cookie, records what it was sent.
#[derive(Clone, Default)]
struct HookServer {
    seen: Arc<Mutex<Vec<Value>>>,
}

impl HookServer {
    async fn start(&self) -> String {
        let state = self.clone();
        let app = axum::Router::new().route(
            "/connect",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let state = state.clone();
                async move {
                    state.seen.lock().expect("lock").push(body.clone());
                    let cookie = body["cookie"].as_str().unwrap_or_default().to_owned();
                    let answer = if cookie.contains("session=t1") {
                        json!({"allow": true, "claims": {"tenant": "t1"}})
                    } else if cookie.contains("session=short") {
                        json!({"allow": true, "claims": {"tenant": "t1"}, "ttl": 1})
                    } else if cookie.contains("session=public") {
                        json!({"allow": true, "claims": {"tenant": "t2"},
                               "scope": {"detail": {"visibility": ["public"]}}})
                    } else if cookie.contains("session=slow") {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        json!({"allow": true, "claims": {"tenant": "t1"}})
                    } else if cookie.contains("session=garbage") {
                        json!(["not", "an", "answer"])
                    } else {
                        json!({"allow": false})
                    };
                    axum::Json(answer)
                }
            }),
        );
        let addr = serve_on_loopback(app).await;
        format!("http://{addr}/connect")
    }
}

fn hook_identity(url: String) -> IdentityConfig {
    IdentityConfig {
        mode: Mode::Hook,
        scope: Some(r#"{"detail":{"tenant":["${tenant}"]}}"#.into()),
        expiry_grace: ms(0),
        hook: Some(eventgate::identity::HookConfig {
            url,
            timeout: ms(800),
            max_concurrent: 4,
            forward_headers: vec!["x-session-hint".into()],
        }),
        ..IdentityConfig::default()
    }
}

/// An upgrade request of a dev client with a `session` cookie.
fn with_cookie(
    server: &Server,
    session: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws_url().into_client_request().expect("a request");
    let headers = request.headers_mut();
    headers.insert(
        "cookie",
        format!("theme=dark; session={session}")
            .parse()
            .expect("value"),
    );
    headers.insert("origin", "https://app.test".parse().expect("value"));
    headers.insert("x-session-hint", "hint".parse().expect("value"));
    request
}

async fn hook_refusal(server: &Server, session: &str, status: u16, reason: &str) {
    match try_upgrade(with_cookie(server, session)).await {
        Upgrade::Refused { status: got, body } => {
            assert_eq!(got, status, "{session}: {body}");
            let body: Value = serde_json::from_str(&body).expect("JSON body");
            assert_eq!(body["reason"], reason, "{session}: {body}");
        }
        Upgrade::Accepted(_) => panic!("{session}: accepted, expected {status}"),
    }
}

#[tokio::test]
async fn a_connect_hook_allows_denies_and_fails_closed() {
    let hook = HookServer::default();
    let url = hook.start().await;
    let server = Server::start(config_with(hook_identity(url))).await;

    // Allowed, scoped by the hook's claims; the hook saw the header, cookies, Origin and
    // the forwarded header.
    let mut t1 = expect_accepted(with_cookie(&server, "t1")).await;
    t1.hello().await;
    let seen = hook
        .seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a call");
    assert_eq!(seen["header"]["Id"], CLIENT_ID);
    assert_eq!(seen["cookie"], "theme=dark; session=t1");
    assert_eq!(seen["origin"], "https://app.test");
    assert_eq!(seen["headers"]["x-session-hint"], "hint");
    // The hook's own scope is ANDed with the template's.
    let mut public = expect_accepted(with_cookie(&server, "public")).await;
    public.hello().await;
    for client in [&mut t1, &mut public] {
        client.subscribe("all", &json!({"source": ["app"]})).await;
    }
    publish_items(
        &server,
        &[("t2", "private"), ("t1", "private"), ("t2", "public")],
    )
    .await;
    let (_, event) = t1.next_event().await;
    assert_eq!(event["detail"]["tenant"], "t1");
    let (_, event) = public.next_event().await;
    assert_eq!(
        event["detail"],
        json!({"tenant": "t2", "visibility": "public"})
    );
    assert_eq!(t1.try_recv(QUIET).await, None);
    assert_eq!(public.try_recv(QUIET).await, None);

    hook_refusal(&server, "nobody", 403, "hook_denied").await;
    hook_refusal(&server, "slow", 503, "hook_unavailable").await;
    hook_refusal(&server, "garbage", 503, "hook_unavailable").await;

    // A TTL closes the connection like an expired token.
    let mut short = expect_accepted(with_cookie(&server, "short")).await;
    let (code, reason) = short.expect_close().await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1008, "token expired"));

    let metrics = server.metrics().await;
    for outcome in ["allow", "deny", "timeout", "bad_answer"] {
        assert!(
            metrics.contains(&format!(
                "eventgate_connect_hook_calls_total{{outcome=\"{outcome}\"}}"
            )),
            "no {outcome} in metrics"
        );
    }
}

#[tokio::test]
async fn a_connect_hook_that_is_down_refuses() {
    // A port with nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/connect", listener.local_addr().expect("addr"));
    drop(listener);
    let server = Server::start(config_with(hook_identity(url))).await;
    hook_refusal(&server, "t1", 503, "hook_unavailable").await;
    assert!(server
        .metrics()
        .await
        .contains("eventgate_connect_hook_calls_total{outcome=\"error\"}"));
}

#[tokio::test]
async fn dev_mode_mints_demo_tokens_for_a_tenant() {
    let server = Server::start(config_with(scoped_identity())).await;
    let mint = |body: Value| {
        server
            .http
            .post(server.http_url("/demo/token"))
            .json(&body)
            .send()
    };
    let response = mint(json!({"tenant": "t1"})).await.expect("POST");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    let token = body["token"].as_str().expect("a token").to_owned();
    let mut client = accepted(&server, &token).await;
    client.subscribe("all", &json!({"source": ["app"]})).await;
    for tenant in ["t2", "t1"] {
        server
            .publish_event("app", "update", json!({"tenant": tenant}))
            .await;
    }
    let (_, event) = client.next_event().await;
    assert_eq!(event["detail"]["tenant"], "t1");
    let response = mint(json!({"tenant": ""})).await.expect("POST");
    assert_eq!(response.status().as_u16(), 400);
    let (status, config) = server.get("/demo/config.json").await;
    assert_eq!(status, 200);
    assert!(config.contains("\"tokens\":true"), "{config}");
}
