//! Verified identities: who a connection is (a signed token in the `header` document) and
//! what it may see (its scope, a pattern ANDed into every rule it subscribes).
//!
//! Owns the `[identity]` configuration, the mode of each app version id (key only, key +
//! token), token verification (signature, `exp`, `nbf` with leeway, `iss`, `aud`), the
//! refusals of the upgrade that follow from it (401 without a required token, 403 for an
//! invalid one, each with its own reason and metric label) and the [`Grant`] a connection
//! carries: its scope and its token's expiry. Does not own the API-key checks (`auth`),
//! the session's timers (`session` closes a connection whose token expired) nor the
//! pattern algebra (`Pattern::and` in the protocol crate). Tokens are never logged.

pub mod crypto;
mod hook;
mod keys;
mod scope;

pub use hook::HookConfig;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use eventgate_protocol::header::decode_base64_lenient;
use eventgate_protocol::pattern::{Pattern, PatternLimits};

use crate::units::Seconds;

/// What a connection needs besides the API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The API key alone (LambdaSharp's behaviour): no identity, no scope.
    #[default]
    Key,
    /// The API key and a valid signed token (`Token` in the `header` document).
    Token,
    /// The API key and the connect hook's consent (`[identity.hook]`).
    Hook,
}

/// A public key in a PEM file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// PEM file (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY`).
    pub file: PathBuf,
    /// Algorithms a token signed with this key may name, all of one family:
    /// `RS256`..`RS512`, `PS256`..`PS512`, `ES256`, `ES384` or `EdDSA`.
    pub algorithms: Vec<Algorithm>,
    /// Key id; a token that names a `kid` is only checked against keys with that id (or
    /// none).
    #[serde(default)]
    pub kid: Option<String>,
}

/// `[identity]`: see `docs/auth.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Mode of every app version id not in `modes` (and of dev-mode keys).
    pub mode: Mode,
    /// Mode per app version id.
    pub modes: BTreeMap<String, Mode>,
    /// Shared secret of HS256/HS384/HS512 tokens (at least 32 bytes).
    pub hmac_secret: Option<String>,
    /// File holding `hmac_secret`; excludes it.
    pub hmac_secret_file: Option<PathBuf>,
    /// Public keys from PEM files.
    pub public_keys: Vec<PublicKeyConfig>,
    /// JWKS URL (`https://`, or `http://` to a loopback address); excludes `jwks_file`.
    pub jwks_url: Option<String>,
    /// JWKS file; re-read like the URL is re-fetched.
    pub jwks_file: Option<PathBuf>,
    /// How often the JWKS is re-read.
    pub jwks_refresh_interval: Seconds,
    /// Least time between two refreshes caused by tokens naming an unknown `kid`.
    pub jwks_min_refresh_interval: Seconds,
    /// Time one JWKS fetch may take.
    pub jwks_timeout: Seconds,
    /// Accepted `iss` values; when set, `iss` is required.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; when set, `aud` is required.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Seconds,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Time a connection stays open after its token expired without a Refresh; then it is
    /// closed with 1008 `token expired`.
    pub expiry_grace: Seconds,
    /// Scope template, e.g. `{"detail":{"tenant":["${tenant}"]}}`.
    pub scope: Option<String>,
    /// Claim that holds a scope pattern (an object, or a string holding one).
    pub scope_claim: Option<String>,
    /// The connect hook of mode `hook`.
    pub hook: Option<HookConfig>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Key,
            modes: BTreeMap::new(),
            hmac_secret: None,
            hmac_secret_file: None,
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            jwks_refresh_interval: Seconds(Duration::from_secs(300)),
            jwks_min_refresh_interval: Seconds(Duration::from_secs(30)),
            jwks_timeout: Seconds(Duration::from_secs(5)),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Seconds(Duration::from_secs(30)),
            require_exp: true,
            expiry_grace: Seconds(Duration::from_secs(30)),
            scope: None,
            scope_claim: None,
            hook: None,
        }
    }
}

/// Why a token or the identity it carries was refused. `Display` is the JSON reason (and
/// the Ack message of a refused Refresh); it never includes the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("a Token is required in the header document")]
    TokenMissing,
    #[error("the Token is not a well-formed JWT")]
    TokenMalformed,
    #[error("the Token's algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("the Token is signed by an unknown key")]
    UnknownKey,
    #[error("the Token's signature is not valid")]
    BadSignature,
    #[error("the Token has expired")]
    Expired,
    #[error("the Token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the Token's issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the Token's audience (aud) is not accepted")]
    WrongAudience,
    #[error("the Token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("the Token's claims are not valid: {0}")]
    InvalidClaims(String),
    #[error("the Token lacks the claim {0:?} that the scope needs")]
    ScopeClaimMissing(String),
    #[error("the claim {0:?} cannot be used in the scope: it is {1}")]
    ScopeClaimUnusable(String, &'static str),
    #[error("the scope is not valid: {0}")]
    ScopeInvalid(String),
    #[error("tokens are not used on this connection")]
    NoTokenMode,
    #[error("the new Token's scope differs from the connection's; reconnect to change it")]
    ScopeChanged,
    #[error("the connect hook refused this connection")]
    HookDenied,
    #[error("the connect hook did not answer in time or failed; try again later")]
    HookUnavailable,
}

impl IdentityError {
    /// 401 when a token is missing, 403 otherwise.
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            IdentityError::TokenMissing => axum::http::StatusCode::UNAUTHORIZED,
            IdentityError::HookUnavailable => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            _ => axum::http::StatusCode::FORBIDDEN,
        }
    }

    /// The metric label and the JSON `reason`.
    pub fn label(&self) -> &'static str {
        match self {
            IdentityError::TokenMissing => "token_missing",
            IdentityError::TokenMalformed => "token_malformed",
            IdentityError::AlgorithmNotAllowed(_) => "token_algorithm",
            IdentityError::UnknownKey => "token_unknown_key",
            IdentityError::BadSignature => "token_bad_signature",
            IdentityError::Expired => "token_expired",
            IdentityError::NotYetValid => "token_not_yet_valid",
            IdentityError::WrongIssuer => "token_wrong_issuer",
            IdentityError::WrongAudience => "token_wrong_audience",
            IdentityError::MissingClaim(_) => "token_missing_claim",
            IdentityError::InvalidClaims(_) => "token_invalid_claims",
            IdentityError::ScopeClaimMissing(_) => "scope_claim_missing",
            IdentityError::ScopeClaimUnusable(..) => "scope_claim_unusable",
            IdentityError::ScopeInvalid(_) => "scope_invalid",
            IdentityError::NoTokenMode => "token_not_used",
            IdentityError::ScopeChanged => "scope_changed",
            IdentityError::HookDenied => "hook_denied",
            IdentityError::HookUnavailable => "hook_unavailable",
        }
    }
}

/// What an admitted connection may see and until when.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// ANDed into every rule; `None` = everything (key-only connections).
    scope: Option<Pattern>,
    /// Canonical text of the scope's parts, compared on a Refresh.
    scope_text: Option<String>,
    /// The token's `exp` (Unix seconds).
    expires_at: Option<u64>,
    /// Admitted with a token (a Refresh can replace it).
    with_token: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Grant {
    /// `pattern` within this connection's scope.
    pub fn scoped(&self, pattern: Pattern) -> Pattern {
        match &self.scope {
            Some(scope) => scope.and(&pattern),
            None => pattern,
        }
    }

    /// The instant the connection must close unless refreshed: `exp` plus `grace`.
    pub fn close_at(&self, grace: Duration) -> Option<tokio::time::Instant> {
        let expires_at = self.expires_at?;
        let left = Duration::from_secs(expires_at.saturating_sub(unix_now()));
        // An `exp` too far away to be an instant is no deadline (rather than a panic).
        tokio::time::Instant::now()
            .checked_add(left)?
            .checked_add(grace)
    }
}

/// What a dev-mode token needs to pass this gateway's own checks.
struct DevMinter {
    key: jsonwebtoken::EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for DevMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevMinter")
    }
}

/// Lifetime of a dev-mode demo token.
const DEV_TOKEN_SECONDS: u64 = 600;

/// The compiled `[identity]` settings.
#[derive(Debug)]
pub struct Identity {
    mode: Mode,
    modes: BTreeMap<String, Mode>,
    fixed: Vec<keys::VerifyKey>,
    jwks: Option<Arc<keys::Jwks>>,
    validation: Validation,
    template: Option<scope::Template>,
    scope_claim: Option<String>,
    hook: Option<hook::Hook>,
    /// Signs the dev-mode demo page's tokens (with `hmac_secret`, when there is one).
    minter: Option<DevMinter>,
    /// See [`IdentityConfig::expiry_grace`].
    pub expiry_grace: Duration,
    limits: PatternLimits,
}

impl Identity {
    /// Compiles the settings (reads secret, PEM and JWKS files); an error names the key.
    pub fn new(config: Option<&IdentityConfig>, limits: PatternLimits) -> Result<Self, String> {
        crypto::install();
        let default = IdentityConfig::default();
        let config = config.unwrap_or(&default);
        let fixed = keys::fixed_keys(config)?;
        let jwks = keys::Jwks::new(config)?.map(Arc::new);
        let uses = |wanted: Mode| {
            config.mode == wanted || config.modes.values().any(|mode| *mode == wanted)
        };
        if uses(Mode::Token) && fixed.is_empty() && jwks.is_none() {
            return Err("identity: mode \"token\" needs identity.hmac_secret, identity.public_keys, identity.jwks_url or identity.jwks_file".into());
        }
        let hook = config.hook.as_ref().map(hook::Hook::new).transpose()?;
        if uses(Mode::Hook) && hook.is_none() {
            return Err("identity: mode \"hook\" needs [identity.hook] with a url".into());
        }
        if config.jwks_refresh_interval.0.is_zero() || config.jwks_timeout.0.is_zero() {
            return Err(
                "identity.jwks_refresh_interval and identity.jwks_timeout must be greater than zero"
                    .into(),
            );
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.0.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        let mut required = vec!["exp"];
        if !config.require_exp {
            required.clear();
        }
        if !config.issuers.is_empty() {
            validation.set_issuer(&config.issuers);
            required.push("iss");
        }
        if config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let minter = match keys::hmac_secret(config)? {
            Some(secret) => Some(DevMinter {
                key: jsonwebtoken::EncodingKey::from_secret(&secret)
                    .map_err(|error| format!("identity.hmac_secret: {error}"))?,
                issuer: config.issuers.first().cloned(),
                audience: config.audiences.first().cloned(),
            }),
            None => None,
        };
        let template = config
            .scope
            .as_deref()
            .map(|text| scope::Template::parse(text, &limits))
            .transpose()?;
        Ok(Identity {
            mode: config.mode,
            modes: config.modes.clone(),
            fixed,
            jwks,
            validation,
            template,
            scope_claim: config.scope_claim.clone(),
            hook,
            minter,
            expiry_grace: config.expiry_grace.0,
            limits,
        })
    }

    /// True when some connection needs more than its key.
    fn any_checks(&self) -> bool {
        self.mode != Mode::Key || self.modes.values().any(|mode| *mode != Mode::Key)
    }

    /// True when [`Identity::mint_dev_token`] can sign tokens.
    pub fn can_mint(&self) -> bool {
        self.minter.is_some()
    }

    /// A token for `tenant` (claims `sub`, `tenant`, `exp` in 10 minutes, and the first
    /// configured `iss`/`aud`), signed HS256 with `hmac_secret`. Only the dev-mode demo page
    /// calls this.
    pub fn mint_dev_token(&self, tenant: &str) -> Option<String> {
        let minter = self.minter.as_ref()?;
        let mut claims = serde_json::json!({
            "sub": format!("demo-{tenant}"),
            "tenant": tenant,
            "iat": unix_now(),
            "exp": unix_now() + DEV_TOKEN_SECONDS,
        });
        if let Some(issuer) = &minter.issuer {
            claims["iss"] = Value::String(issuer.clone());
        }
        if let Some(audience) = &minter.audience {
            claims["aud"] = Value::String(audience.clone());
        }
        let header = jsonwebtoken::Header::new(Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &minter.key).ok()
    }

    /// Starts the JWKS refresher (a no-op without a JWKS): a fetch now, then one every
    /// `jwks_refresh_interval`, until `stop`.
    pub fn spawn_refresher(
        &self,
        stop: tokio_util::sync::CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        let Some(jwks) = self.jwks.clone() else {
            return;
        };
        tracker.spawn(async move {
            let mut interval = tokio::time::interval(jwks.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = interval.tick() => jwks.refresh().await,
                }
            }
        });
    }

    /// The identity check of an upgrade whose `header` already passed the key checks:
    /// the grant of a key-only connection, or the verified token's.
    pub async fn admit(
        &self,
        header: Option<&str>,
        request: &impl crate::handshake::UpgradeRequest,
    ) -> Result<Grant, IdentityError> {
        if !self.any_checks() {
            return Ok(Grant::default());
        }
        let document = header.and_then(header_document).unwrap_or_default();
        let mode = app_version(&document)
            .and_then(|version| self.modes.get(&version).copied())
            .unwrap_or(self.mode);
        match mode {
            Mode::Key => Ok(Grant::default()),
            Mode::Token => {
                let token = field(&document, "token").ok_or(IdentityError::TokenMissing)?;
                self.grant_for(token).await
            }
            Mode::Hook => {
                let hook = self.hook.as_ref().ok_or(IdentityError::HookUnavailable)?;
                let allowed = hook.ask(&document, request).await?;
                let expires_at = allowed.ttl.map(|ttl| unix_now().saturating_add(ttl));
                self.grant(&allowed.claims, allowed.scope, expires_at, false)
            }
        }
    }

    /// A Refresh on an open connection: the new token's grant, which must have the same
    /// scope as `current`.
    pub async fn refresh(&self, current: &Grant, token: &str) -> Result<Grant, IdentityError> {
        if !current.with_token {
            return Err(IdentityError::NoTokenMode);
        }
        let grant = self.grant_for(token).await?;
        if grant.scope_text != current.scope_text {
            return Err(IdentityError::ScopeChanged);
        }
        Ok(grant)
    }

    async fn grant_for(&self, token: &str) -> Result<Grant, IdentityError> {
        let claims = self.verify(token).await?;
        // A fractional `exp` (allowed by RFC 7519) counts from its whole second.
        let expires_at = claims.get("exp").and_then(|exp| {
            exp.as_u64()
                .or_else(|| exp.as_f64().filter(|exp| *exp >= 0.0).map(|exp| exp as u64))
        });
        self.grant(&claims, None, expires_at, true)
    }

    /// The grant of verified `claims` (and the hook's scope, if any).
    fn grant(
        &self,
        claims: &Map<String, Value>,
        hook_scope: Option<Value>,
        expires_at: Option<u64>,
        with_token: bool,
    ) -> Result<Grant, IdentityError> {
        let mut parts = Vec::new();
        if let Some(template) = &self.template {
            parts.push(template.fill(claims)?);
        }
        if let Some(name) = &self.scope_claim {
            let value = claims
                .get(name)
                .ok_or_else(|| IdentityError::ScopeClaimMissing(name.clone()))?;
            parts.push(scope::pattern_value(value, "scope claim")?);
        }
        if let Some(value) = &hook_scope {
            parts.push(scope::pattern_value(value, "hook's scope")?);
        }
        let combined = scope::combine(parts, &self.limits)?;
        let (scope, scope_text) = combined.unzip();
        Ok(Grant {
            scope,
            scope_text,
            expires_at,
            with_token,
        })
    }

    /// Checks the token's signature and registered claims; returns its claims.
    async fn verify(&self, token: &str) -> Result<Map<String, Value>, IdentityError> {
        // Installed by `new`; again here so that no path reaches jsonwebtoken without it.
        crypto::install();
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| IdentityError::TokenMalformed)?;
        let kid = header.kid.as_deref();
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut seen = self.jwks.as_ref().map(|jwks| jwks.current());
        let mut refreshed = false;
        loop {
            let empty = Vec::new();
            let published = seen.as_deref().unwrap_or(&empty);
            let candidates: Vec<&keys::VerifyKey> = self
                .fixed
                .iter()
                .chain(published.iter())
                .filter(|key| key.takes(header.alg, kid))
                .take(keys::MAX_KEYS_TRIED)
                .collect();
            let mut error = IdentityError::UnknownKey;
            for key in candidates {
                match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                    Ok(data) => return Ok(data.claims),
                    Err(failure) => match failure.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidAlgorithm
                        | ErrorKind::InvalidKeyFormat
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidRsaKey(_) => error = IdentityError::BadSignature,
                        other => return Err(claims_error(other)),
                    },
                }
            }
            if !matches!(error, IdentityError::UnknownKey) {
                return Err(error);
            }
            // A key the cache does not hold (yet): refresh once, then decide.
            if let (Some(jwks), Some(old), false) = (&self.jwks, &seen, refreshed) {
                refreshed = true;
                if jwks.refresh_for_unknown_key(old).await {
                    seen = Some(jwks.current());
                    continue;
                }
            }
            let algorithm_taken = self
                .fixed
                .iter()
                .chain(published.iter())
                .any(|key| key.algorithms.contains(&header.alg));
            return Err(if algorithm_taken {
                IdentityError::UnknownKey
            } else {
                IdentityError::AlgorithmNotAllowed(format!("{:?}", header.alg))
            });
        }
    }
}

/// A claims-validation failure (the signature was good).
fn claims_error(kind: &ErrorKind) -> IdentityError {
    match kind {
        ErrorKind::ExpiredSignature => IdentityError::Expired,
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => IdentityError::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => {
            IdentityError::InvalidClaims(format!("{claim:?} has the wrong type"))
        }
        ErrorKind::Json(_)
        | ErrorKind::Base64(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => IdentityError::TokenMalformed,
        _ => IdentityError::BadSignature,
    }
}

/// The `header` document as a JSON object (it already passed `auth`'s checks).
fn header_document(encoded: &str) -> Option<Map<String, Value>> {
    let bytes = decode_base64_lenient(encoded)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    match serde_json::from_str(text.strip_prefix('\u{feff}').unwrap_or(text)).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A string field of the header document, its name in any case.
fn field<'a>(document: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    document
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

/// The app version id of the header's (already checked) API key,
/// `base64("<AppVersionId>:<StackId>")`; `None` for a dev-mode key.
fn app_version(document: &Map<String, Value>) -> Option<String> {
    let key = field(document, "apikey")?;
    let decoded = decode_base64_lenient(key)?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(version, _)| version.to_owned())
}

/// `POST /test-pattern` with a `Scope`: what a client with that scope would receive.
pub fn scoped_pattern(
    pattern: Pattern,
    scope: &Value,
    limits: &PatternLimits,
) -> Result<Pattern, String> {
    let scope = scope::pattern_value(scope, "Scope").map_err(|error| error.to_string())?;
    let scope =
        Pattern::from_value(&scope, limits).map_err(|error| format!("invalid scope: {error}"))?;
    Ok(scope.and(&pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_version_comes_from_the_key() {
        let key = eventgate_protocol::header::api_key("stack", Some("v2"));
        let mut document = Map::new();
        document.insert("ApiKey".into(), Value::String(key));
        assert_eq!(app_version(&document).as_deref(), Some("v2"));
        let dev = eventgate_protocol::header::api_key("stack", None);
        document.insert("ApiKey".into(), Value::String(dev));
        assert_eq!(app_version(&document), None);
    }

    #[test]
    fn identity_keys_load_from_toml_and_the_environment() {
        let load = |file: &str, env: &[(&str, &str)]| {
            crate::config::load(
                Some(file),
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
                Vec::new(),
            )
        };
        let error = load("dev = true\n[identity]\nmode = \"token\"\n", &[])
            .expect_err("a token mode without keys");
        assert!(
            error.to_string().contains("identity.hmac_secret"),
            "{error}"
        );
        let error = load(
            "dev = true\n[identity]\nmode = \"token\"\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\nscope = '{\"detail\":\"${tenant}\"}'\n",
            &[],
        )
        .expect_err("a scope that is no pattern");
        assert!(error.to_string().contains("identity.scope"), "{error}");
        let config = load(
            "dev = true\n",
            &[
                ("EVENTGATE_IDENTITY_MODE", "token"),
                (
                    "EVENTGATE_IDENTITY_HMAC_SECRET",
                    "0123456789abcdef0123456789abcdef",
                ),
                (
                    "EVENTGATE_IDENTITY_SCOPE",
                    r#"{"detail":{"tenant":["${tenant}"]}}"#,
                ),
                ("EVENTGATE_IDENTITY_EXPIRY_GRACE", "5s"),
            ],
        )
        .expect("valid");
        let identity = config.identity.expect("an [identity] section");
        assert_eq!(identity.mode, Mode::Token);
        assert_eq!(identity.expiry_grace.0, Duration::from_secs(5));
        assert!(load("dev = true\n[identity]\nbogus = 1\n", &[]).is_err());
    }

    #[test]
    fn deadlines_follow_exp_and_never_overflow() {
        let grant = |expires_at| Grant {
            expires_at: Some(expires_at),
            ..Grant::default()
        };
        assert!(Grant::default().close_at(Duration::ZERO).is_none());
        assert!(grant(u64::MAX).close_at(Duration::MAX).is_none());
        let soon = grant(unix_now() + 60)
            .close_at(Duration::from_secs(30))
            .expect("a deadline");
        let left = soon.duration_since(tokio::time::Instant::now());
        assert!(left > Duration::from_secs(80) && left <= Duration::from_secs(90));
        // Already expired: the grace alone.
        let past = grant(1)
            .close_at(Duration::from_secs(5))
            .expect("a deadline");
        assert!(past.duration_since(tokio::time::Instant::now()) <= Duration::from_secs(5));
    }

    #[test]
    fn a_token_mode_needs_a_key() {
        let config = IdentityConfig {
            mode: Mode::Token,
            ..IdentityConfig::default()
        };
        let error = Identity::new(Some(&config), PatternLimits::default()).expect_err("no key");
        assert!(error.contains("hmac_secret"), "{error}");
        let config = IdentityConfig {
            mode: Mode::Token,
            hmac_secret: Some("short".into()),
            ..IdentityConfig::default()
        };
        let error = Identity::new(Some(&config), PatternLimits::default()).expect_err("short");
        assert!(error.contains("32 bytes"), "{error}");
    }
}
