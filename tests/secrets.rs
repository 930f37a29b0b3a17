//! Secrets: `sha256:<hex>` digests for ingest tokens and the stack id, `_file` keys for
//! Docker/Kubernetes secrets, and the value-and-file conflict (exit 64).

use crate::common;

use std::path::PathBuf;

use common::*;
use eventgate::config;
use eventgate_protocol::header::api_key;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha256_key(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("eventgate-secrets-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write secret file");
    path
}

async fn post_with(server: &Server, authorization: Option<&str>) -> u16 {
    server.post_event_as(authorization, "s").await.0
}

#[tokio::test]
async fn ingest_token_given_as_digest() {
    let server = Server::start(Config {
        ingest_tokens: vec![sha256_key("the-real-token")],
        ..dev_config()
    })
    .await;
    assert_eq!(post_with(&server, Some("Bearer the-real-token")).await, 200);
    assert_eq!(post_with(&server, Some("Bearer another-token")).await, 403);
    // The digest itself is not a token.
    let digest = sha256_key("the-real-token");
    assert_eq!(
        post_with(&server, Some(&format!("Bearer {digest}"))).await,
        403
    );
    assert_eq!(post_with(&server, None).await, 401);
}

#[tokio::test]
async fn stack_id_given_as_digest_accepts_the_right_key() {
    let server = Server::start(Config {
        dev: false,
        stack_id: Some(sha256_key(STACK_ID)),
        app_version_ids: vec!["v1".into()],
        ..dev_config()
    })
    .await;
    let url = |key: &str| {
        server.ws_url_with(
            "/",
            &header(&json!({"Host": "127.0.0.1", "ApiKey": key, "Id": CLIENT_ID})),
        )
    };
    let mut client = expect_accepted(url(&api_key(STACK_ID, Some("v1")))).await;
    client.hello().await;
    expect_refused(url(&api_key("another-stack", Some("v1"))), 403).await;
    expect_refused(url(&api_key(STACK_ID, Some("v2"))), 403).await;
    // Outside dev mode the dev key base64(StackId) is not accepted.
    expect_refused(url(&api_key(STACK_ID, None)), 403).await;
}

#[test]
fn secret_files_load_and_conflict_with_their_values() {
    let stack = temp_file("stack", &format!("{STACK_ID}\n"));
    let tokens = temp_file("tokens", "# publishers\ntoken-one\n\n  token-two  \n");
    let file = format!(
        "stack_id_file = {:?}\ningest_tokens_file = {:?}\napp_version_ids = [\"v1\"]\n",
        stack.display().to_string(),
        tokens.display().to_string()
    );
    let loaded = config::load(Some(&file), Vec::new(), Vec::new()).expect("valid");
    assert_eq!(loaded.stack_id.as_deref(), Some(STACK_ID));
    assert_eq!(loaded.ingest_tokens, vec!["token-one", "token-two"]);

    // The environment equivalents.
    let loaded = config::load(
        Some("app_version_ids = [\"v1\"]"),
        vec![
            (
                "EVENTGATE_STACK_ID_FILE".to_owned(),
                stack.display().to_string(),
            ),
            (
                "EVENTGATE_INGEST_TOKENS_FILE".to_owned(),
                tokens.display().to_string(),
            ),
        ],
        Vec::new(),
    )
    .expect("valid");
    assert_eq!(loaded.stack_id.as_deref(), Some(STACK_ID));
    assert_eq!(loaded.ingest_tokens.len(), 2);

    for conflict in [
        format!("{file}stack_id = \"x\"\n"),
        format!("{file}ingest_tokens = [\"x\"]\n"),
    ] {
        assert!(config::load(Some(&conflict), Vec::new(), Vec::new()).is_err());
    }
    let missing = "dev = true\nstack_id_file = \"/nonexistent/eventgate-stack\"\n";
    assert!(config::load(Some(missing), Vec::new(), Vec::new()).is_err());
    let bad_digest = "dev = true\ningest_tokens = [\"sha256:abc\"]\n";
    assert!(config::load(Some(bad_digest), Vec::new(), Vec::new()).is_err());

    // The binary exits with 64 on the conflict.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eventgate"));
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTGATE_") {
            command.env_remove(name);
        }
    }
    let status = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("EVENTGATE_STACK_ID", STACK_ID)
        .env("EVENTGATE_STACK_ID_FILE", &stack)
        .env("EVENTGATE_APP_VERSION_IDS", "v1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run eventgate");
    assert_eq!(status.code(), Some(64));
    let _ = std::fs::remove_file(stack);
    let _ = std::fs::remove_file(tokens);
}
