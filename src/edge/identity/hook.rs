//! The connect hook: for apps whose users have a cookie or a session rather than a token,
//! the gateway asks a backend whether an upgrade may proceed and what it may see.
//!
//! Owns the request (`POST` of the `header` document, `Origin`, the cookies and a
//! configured list of request headers), the answer's shape (allow or deny, claims, scope,
//! TTL) and the bounds on calls: at most `max_concurrent` at once and `timeout` for each,
//! waiting for a slot included. A timeout, a backend error or an answer that is not the
//! expected JSON refuses the upgrade (503); nothing lets a client in by default. Does not
//! own what the claims and scope become (the identity module builds the grant).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::IdentityError;
use crate::handshake::UpgradeRequest;
use crate::units::Seconds;

/// Largest hook answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `[identity.hook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The backend (`https://`, or `http://` to a loopback address).
    pub url: String,
    /// Time one call may take, waiting for a free slot included.
    #[serde(default = "default_timeout")]
    pub timeout: Seconds,
    /// Calls in flight at once; upgrades beyond it wait (within `timeout`).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Request headers passed on (lower case), e.g. `["authorization"]`; `Cookie` and
    /// `Origin` always are.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

fn default_timeout() -> Seconds {
    Seconds(Duration::from_secs(2))
}

fn default_max_concurrent() -> usize {
    64
}

/// The backend's answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    allow: bool,
    #[serde(default)]
    claims: Map<String, Value>,
    #[serde(default)]
    scope: Option<Value>,
    /// Seconds the connection may stay open (then it is closed like an expired token).
    #[serde(default)]
    ttl: Option<u64>,
}

/// What an allowing answer grants.
pub(super) struct Allowed {
    pub(super) claims: Map<String, Value>,
    pub(super) scope: Option<Value>,
    pub(super) ttl: Option<u64>,
}

/// A configured hook.
#[derive(Debug)]
pub(super) struct Hook {
    url: reqwest::Url,
    client: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    forward_headers: Vec<String>,
}

impl Hook {
    pub(super) fn new(config: &HookConfig) -> Result<Hook, String> {
        let url = super::keys::backend_url(&config.url, "identity.hook.url")?;
        if config.timeout.0.is_zero() || config.max_concurrent == 0 {
            return Err(
                "identity.hook.timeout and identity.hook.max_concurrent must be greater than zero"
                    .into(),
            );
        }
        // No timeout of its own: `ask` bounds the whole call, the wait for a slot included.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("identity.hook.url: {error}"))?;
        Ok(Hook {
            url,
            client,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            timeout: config.timeout.0,
            forward_headers: config
                .forward_headers
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Asks the backend about one upgrade.
    pub(super) async fn ask(
        &self,
        document: &Map<String, Value>,
        request: &impl UpgradeRequest,
    ) -> Result<Allowed, IdentityError> {
        let mut headers = Map::new();
        for name in &self.forward_headers {
            if let Some(value) = request.header_str(name) {
                headers.insert(name.clone(), Value::String(value.to_owned()));
            }
        }
        let cookies: Vec<&str> = request
            .header_values("cookie")
            .filter_map(|value| std::str::from_utf8(value).ok())
            .collect();
        let body = serde_json::json!({
            "header": document,
            "origin": request.header_str("origin"),
            "cookie": (!cookies.is_empty()).then(|| cookies.join("; ")),
            "headers": headers,
        });
        let call = async {
            let Ok(_slot) = self.slots.acquire().await else {
                return Err("closed");
            };
            let mut response = self
                .client
                .post(self.url.clone())
                .json(&body)
                .send()
                .await
                .map_err(|_| "error")?;
            if !response.status().is_success() {
                return Err("error");
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|_| "error")? {
                if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err("error");
                }
                bytes.extend_from_slice(&chunk);
            }
            serde_json::from_slice::<Answer>(&bytes).map_err(|_| "bad_answer")
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(outcome)) => {
                crate::telemetry::hook_called(outcome);
                return Err(IdentityError::HookUnavailable);
            }
            Err(_) => {
                crate::telemetry::hook_called("timeout");
                return Err(IdentityError::HookUnavailable);
            }
        };
        if !answer.allow {
            crate::telemetry::hook_called("deny");
            return Err(IdentityError::HookDenied);
        }
        crate::telemetry::hook_called("allow");
        Ok(Allowed {
            claims: answer.claims,
            scope: answer.scope,
            ttl: answer.ttl,
        })
    }
}
