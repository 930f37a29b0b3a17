//! The keys tokens are verified with: an HMAC secret, public keys from PEM files and a
//! JWKS (JSON Web Key Set) read from a file or fetched from a URL.
//!
//! Owns loading and choosing keys and the JWKS cache: fetched at start, refreshed on an
//! interval and when a token names a key id the cache does not hold (at most once per
//! `jwks_min_refresh_interval`); a refresh that fails keeps the last good keys. Does not
//! own the claims' checks (see `verify`) nor what a verified identity may see (`scope`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::{IdentityConfig, PublicKeyConfig};

/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most keys one token's signature is checked against (a token without `kid` when several
/// keys take its algorithm): a hostile token costs at most this many verifications.
pub(super) const MAX_KEYS_TRIED: usize = 4;

/// One key and the algorithms a token signed with it may name.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// Takes a token whose header names `alg` and, maybe, `kid`.
    pub(super) fn takes(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (kid, self.kid.as_deref()) {
                (Some(wanted), Some(own)) => wanted == own,
                _ => true,
            }
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{key}: cannot read {}: {error}", path.display()))
}

/// A secret given inline, by file or in the environment: the file's text without its
/// trailing line break.
pub(super) fn hmac_secret(config: &IdentityConfig) -> Result<Option<Vec<u8>>, String> {
    match (&config.hmac_secret, &config.hmac_secret_file) {
        (Some(_), Some(_)) => {
            Err("identity.hmac_secret and identity.hmac_secret_file are both set; use one".into())
        }
        (Some(secret), None) => Ok(Some(secret.as_bytes().to_vec())),
        (None, Some(path)) => {
            let text = read(path, "identity.hmac_secret_file")?;
            let text = String::from_utf8(text)
                .map_err(|_| "identity.hmac_secret_file: the file is not UTF-8 text".to_owned())?;
            Ok(Some(
                text.trim_end_matches(['\r', '\n']).as_bytes().to_vec(),
            ))
        }
        (None, None) => Ok(None),
    }
    .and_then(|secret| match secret {
        Some(secret) if secret.len() < 32 => Err(
            "identity.hmac_secret must be at least 32 bytes (256 bits) for HS256/384/512".into(),
        ),
        other => Ok(other),
    })
}

fn public_key(config: &PublicKeyConfig) -> Result<VerifyKey, String> {
    let name = "identity.public_keys";
    let pem = read(&config.file, name)?;
    let Some(first) = config.algorithms.first() else {
        return Err(format!(
            "{name}: {} needs algorithms, e.g. [\"RS256\"]",
            config.file.display()
        ));
    };
    let family = first.family();
    if config.algorithms.iter().any(|alg| alg.family() != family) {
        return Err(format!(
            "{name}: the algorithms of {} must be of one family (RSA, EC or Ed25519)",
            config.file.display()
        ));
    }
    let key = match family {
        jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        jsonwebtoken::AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
        jsonwebtoken::AlgorithmFamily::Hmac => {
            return Err(format!(
                "{name}: HS256/384/512 take identity.hmac_secret, not a PEM file"
            ))
        }
    }
    .map_err(|error| {
        format!(
            "{name}: {} is not a PEM public key for {first:?}: {error}",
            config.file.display()
        )
    })?;
    Ok(VerifyKey {
        kid: config.kid.clone(),
        algorithms: config.algorithms.clone(),
        key,
    })
}

/// The configured keys, except the JWKS.
pub(super) fn fixed_keys(config: &IdentityConfig) -> Result<Vec<VerifyKey>, String> {
    let mut keys = Vec::new();
    if let Some(secret) = hmac_secret(config)? {
        let key = DecodingKey::from_secret(&secret)
            .map_err(|error| format!("identity.hmac_secret: {error}"))?;
        keys.push(VerifyKey {
            kid: None,
            algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            key,
        });
    }
    for key in &config.public_keys {
        keys.push(public_key(key)?);
    }
    Ok(keys)
}

/// A JWK as a verification key; `None` for symmetric keys (a published key set holds only
/// public keys) and keys meant for encryption.
fn jwk_key(jwk: &Jwk) -> Option<VerifyKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|usage| !matches!(usage, jsonwebtoken::jwk::PublicKeyUse::Signature))
    {
        return None;
    }
    let algorithms = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        _ => return None,
    };
    // A key that names its algorithm takes only that one.
    let algorithms = match jwk
        .common
        .key_algorithm
        .and_then(|alg| Algorithm::try_from(alg).ok())
    {
        Some(alg) if algorithms.contains(&alg) => vec![alg],
        Some(_) => return None,
        None => algorithms,
    };
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// The usable keys of a JWKS document; keys that cannot be used are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let document: Value =
        serde_json::from_slice(bytes).map_err(|error| format!("not JSON: {error}"))?;
    let Some(Value::Array(entries)) = document.get("keys") else {
        return Err("not a JWKS: no \"keys\" array".into());
    };
    Ok(entries
        .iter()
        .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
        .filter_map(|jwk| jwk_key(&jwk))
        .collect())
}

/// Where the JWKS comes from.
#[derive(Debug)]
enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url),
}

/// The JWKS cache.
#[derive(Debug)]
pub(super) struct Jwks {
    source: JwksSource,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    /// When the last refresh started (on the interval or on demand).
    last_attempt: Mutex<Option<Instant>>,
    /// One refresh at a time; connections that find an unknown key wait for it.
    refreshing: tokio::sync::Mutex<()>,
    min_interval: Duration,
    pub(super) interval: Duration,
    client: reqwest::Client,
}

/// True for `http://` URLs that stay on this machine (a sidecar, a test).
fn loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Checks a URL the gateway fetches from: `https://`, or `http://` to a loopback address.
pub(super) fn backend_url(text: &str, key: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|error| format!("{key}: {error}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback(&url) => Ok(url),
        _ => Err(format!(
            "{key} must be an https:// URL (http:// only to a loopback address)"
        )),
    }
}

impl Jwks {
    /// The JWKS of `config`, if any; a file is read now (an unreadable one is a
    /// configuration error), a URL is fetched by the refresher.
    pub(super) fn new(config: &IdentityConfig) -> Result<Option<Jwks>, String> {
        let source = match (&config.jwks_url, &config.jwks_file) {
            (Some(_), Some(_)) => {
                return Err("identity.jwks_url and identity.jwks_file are both set; use one".into())
            }
            (Some(url), None) => JwksSource::Url(backend_url(url, "identity.jwks_url")?),
            (None, Some(path)) => JwksSource::File(path.clone()),
            (None, None) => return Ok(None),
        };
        let client = reqwest::Client::builder()
            .timeout(config.jwks_timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("identity.jwks_url: {error}"))?;
        let jwks = Jwks {
            source,
            keys: RwLock::default(),
            last_attempt: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            min_interval: config.jwks_min_refresh_interval.0,
            interval: config.jwks_refresh_interval.0,
            client,
        };
        if let JwksSource::File(path) = &jwks.source {
            let bytes = read(path, "identity.jwks_file")?;
            let keys = parse_jwks(&bytes)
                .map_err(|error| format!("identity.jwks_file: {}: {error}", path.display()))?;
            jwks.store(keys);
        }
        Ok(Some(jwks))
    }

    /// The keys as of now.
    pub(super) fn current(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().map_or_else(
            |poisoned| poisoned.into_inner().clone(),
            |keys| keys.clone(),
        )
    }

    fn store(&self, keys: Vec<VerifyKey>) {
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut slot) => *slot = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|error| format!("cannot read {}: {error}", path.display())),
            JwksSource::Url(url) => {
                let mut response = self
                    .client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|error| format!("fetch failed: {error}"))?;
                if !response.status().is_success() {
                    return Err(format!("fetch answered {}", response.status()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|error| format!("fetch failed: {error}"))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }

    /// Fetches the key set now; on any failure the last good keys stay.
    pub(super) async fn refresh(&self) {
        let _one_at_a_time = self.refreshing.lock().await;
        self.refresh_locked().await;
    }

    async fn refresh_locked(&self) {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        let outcome = match self.fetch().await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS refreshed");
                crate::telemetry::jwks_refreshed("ok");
                self.store(keys);
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS refresh failed; keeping the last good keys");
                crate::telemetry::jwks_refreshed("failed");
            }
        }
    }

    /// A token named a key the cache does not hold: refresh, unless a refresh finished
    /// while this one waited or the last one started less than `min_interval` ago. True
    /// when the keys may have changed.
    pub(super) async fn refresh_for_unknown_key(&self, seen: &Arc<Vec<VerifyKey>>) -> bool {
        let _one_at_a_time = self.refreshing.lock().await;
        if !Arc::ptr_eq(seen, &self.current()) {
            return true;
        }
        let recent = self
            .last_attempt
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|last| last.elapsed() < self.min_interval);
        if recent {
            return false;
        }
        self.refresh_locked().await;
        !Arc::ptr_eq(seen, &self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_are_https_or_loopback() {
        assert!(backend_url("https://issuer.example/jwks", "k").is_ok());
        assert!(backend_url("http://127.0.0.1:9/jwks", "k").is_ok());
        assert!(backend_url("http://[::1]:9/jwks", "k").is_ok());
        assert!(backend_url("http://localhost/jwks", "k").is_ok());
        assert!(backend_url("http://issuer.example/jwks", "k").is_err());
        assert!(backend_url("ftp://127.0.0.1/jwks", "k").is_err());
        assert!(backend_url("not a url", "k").is_err());
    }

    #[test]
    fn a_jwks_keeps_only_usable_public_signing_keys() {
        let document = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "symmetric"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "wrong-alg", "alg": "RS256"},
            {"kty": "weird"},
            "not a key"
        ]});
        let keys = parse_jwks(document.to_string().as_bytes()).expect("a JWKS");
        let kids: Vec<_> = keys.iter().filter_map(|key| key.kid.as_deref()).collect();
        assert_eq!(kids, ["ed"]);
        assert_eq!(keys[0].algorithms, [Algorithm::EdDSA]);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"nope").is_err());
    }
}
