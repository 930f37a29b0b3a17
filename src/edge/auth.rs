//! Who may connect and who may publish.
//!
//! Owns the `header` checks on the upgrade (host, API key, client id), the `Origin`
//! allowlist and ingest bearer tokens. Keys and tokens are kept only as SHA-256 digests and
//! compared in constant time; `stack_id` and ingest tokens may be configured as
//! `sha256:<hex>` digests, and the gateway then never holds the secret itself. Does not own
//! how a rejection is rendered (see `errors`).

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use eventgate_protocol::header::{api_key, decode_base64_lenient, decode_header, is_guid};

use crate::config::{sha256_digest, Config};
use crate::errors::UpgradeError;

type Sha = [u8; 32];

fn digest(text: &str) -> Sha {
    Sha256::digest(text.as_bytes()).into()
}

/// A configured secret: its digest when given as `sha256:<hex>`, else the digest of it.
fn configured_digest(value: &str) -> Sha {
    sha256_digest(value).unwrap_or_else(|| digest(value))
}

/// The ingest rate-limit key of requests without a token (dev mode, loopback).
pub const ANONYMOUS_INGEST: Sha = [0; 32];

/// True when `candidate` equals any of `digests`; every digest is compared, in constant time.
fn any_equal(digests: &[Sha], candidate: &str) -> bool {
    let candidate = digest(candidate);
    digests
        .iter()
        .fold(subtle::Choice::from(0), |found, known| {
            found | known.ct_eq(&candidate)
        })
        .into()
}

/// Compiled authentication settings.
#[derive(Debug)]
pub struct Auth {
    api_keys: Vec<Sha>,
    /// Set when `stack_id` is configured as a digest: keys are then decoded and their
    /// StackId part hashed and compared with it.
    stack_digest: Option<Sha>,
    app_version_digests: Vec<Sha>,
    dev: bool,
    ingest_tokens: Vec<Sha>,
    public_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    open_loopback_ingest: bool,
    /// Digest of `admin_token`, when one is configured.
    admin_token: Option<Sha>,
}

/// The outcome of a successful upgrade check.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub app_instance_id: String,
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

impl Auth {
    pub fn new(config: &Config, stack_id: &str) -> Self {
        let stack_digest = sha256_digest(stack_id);
        let mut api_keys: Vec<Sha> = Vec::new();
        if stack_digest.is_none() {
            api_keys = config
                .app_version_ids
                .iter()
                .map(|version| digest(&api_key(stack_id, Some(version))))
                .collect();
            if config.dev {
                api_keys.push(digest(&api_key(stack_id, None)));
            }
        }
        Self {
            api_keys,
            stack_digest,
            app_version_digests: config.app_version_ids.iter().map(|v| digest(v)).collect(),
            dev: config.dev,
            ingest_tokens: config
                .ingest_tokens
                .iter()
                .map(|t| configured_digest(t))
                .collect(),
            public_hosts: config
                .public_hosts
                .iter()
                .map(|h| strip_port(h).to_ascii_lowercase())
                .collect(),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            open_loopback_ingest: config.dev && config.ingest_tokens.is_empty(),
            admin_token: config.admin_token.as_deref().map(configured_digest),
        }
    }

    /// Checks the `Origin` headers (all of them) against the allowlist (empty = any
    /// origin). With an allowlist, an `Origin` that is not UTF-8 or appears twice is
    /// refused, never taken as absent.
    pub fn check_origin<'a>(
        &self,
        mut origins: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), UpgradeError> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        let origin = match (origins.next(), origins.next()) {
            // Non-browser clients send no Origin; the allowlist guards browsers.
            (None, _) => return Ok(()),
            (Some(origin), None) => {
                std::str::from_utf8(origin).map_err(|_| UpgradeError::OriginNotAllowed)?
            }
            (Some(_), Some(_)) => return Err(UpgradeError::OriginNotAllowed),
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.allowed_origins.contains(&origin) {
            Ok(())
        } else {
            Err(UpgradeError::OriginNotAllowed)
        }
    }

    /// Checks the `header` query value against the request's `Host` header.
    pub fn check_header(
        &self,
        header: Option<&str>,
        request_host: Option<&str>,
    ) -> Result<ClientIdentity, UpgradeError> {
        let header = header.ok_or(UpgradeError::MissingHeader)?;
        let header = decode_header(header).map_err(UpgradeError::BadHeader)?;
        let host = header.host.as_deref().ok_or(UpgradeError::WrongHost)?;
        let host = strip_port(host.trim()).to_ascii_lowercase();
        let host_ok = if self.public_hosts.is_empty() {
            request_host.is_some_and(|request| strip_port(request).eq_ignore_ascii_case(&host))
        } else {
            self.public_hosts.contains(&host)
        };
        // Compare the key even when the host is wrong, so timing tells nothing about either.
        let key_ok = header
            .api_key
            .as_deref()
            .is_some_and(|key| self.key_ok(key));
        if !host_ok {
            return Err(UpgradeError::WrongHost);
        }
        if !key_ok {
            return Err(UpgradeError::WrongApiKey);
        }
        match header.id {
            Some(id) if is_guid(&id) => Ok(ClientIdentity {
                app_instance_id: id,
            }),
            _ => Err(UpgradeError::InvalidClientId),
        }
    }

    /// True when `key` is a valid API key, in constant time with respect to the secrets.
    fn key_ok(&self, key: &str) -> bool {
        let Some(stack) = &self.stack_digest else {
            return any_equal(&self.api_keys, key);
        };
        // base64("<AppVersionId>:<StackId>"), or base64("<StackId>") in dev mode.
        let decoded = decode_base64_lenient(key).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        let mut ok = subtle::Choice::from(0);
        if let Some((version, stack_part)) = text.split_once(':') {
            let version_ok =
                subtle::Choice::from(u8::from(any_equal(&self.app_version_digests, version)));
            ok |= version_ok & digest(stack_part).ct_eq(stack);
        }
        if self.dev {
            ok |= digest(&text).ct_eq(stack);
        }
        ok.into()
    }

    /// Checks an ingest request's `Authorization` header; returns the token's digest (the
    /// key of its rate limit), [`ANONYMOUS_INGEST`] for open dev-mode loopback ingest.
    pub fn check_ingest(
        &self,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Result<Sha, crate::errors::IngestError> {
        use crate::errors::IngestError;
        match authorization {
            Some(value) => {
                // RFC 9110 §11.1: the scheme is case-insensitive.
                let token = value
                    .trim()
                    .split_once([' ', '\t'])
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .ok_or(IngestError::Unauthorized(
                        "the Authorization header must be \"Bearer <token>\"",
                    ))?;
                if any_equal(&self.ingest_tokens, token) {
                    Ok(digest(token))
                } else {
                    Err(IngestError::Forbidden("the ingest token is not valid"))
                }
            }
            None if self.open_loopback_ingest && peer.is_loopback() => Ok(ANONYMOUS_INGEST),
            None => Err(IngestError::Unauthorized(
                "an Authorization: Bearer <token> header is required",
            )),
        }
    }

    /// Compares `token` with the admin token in constant time (false when none is set).
    pub fn admin_token_matches(&self, token: &str) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|known| any_equal(std::slice::from_ref(known), token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_ignored_in_hosts() {
        assert_eq!(strip_port("example.com:443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }

    fn config(stack_id: &str, dev: bool) -> Config {
        Config {
            dev,
            stack_id: Some(stack_id.to_owned()),
            app_version_ids: vec!["v1".into(), "v2".into()],
            ingest_tokens: vec![
                "plain-token".into(),
                format!("sha256:{}", hex(&digest("hashed-token"))),
            ],
            ..Config::default()
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn digest_stack_id_accepts_the_same_keys_as_the_plain_one() {
        let stack = "the-stack";
        let hashed = format!("sha256:{}", hex(&digest(stack)));
        for dev in [false, true] {
            let plain = Auth::new(&config(stack, dev), stack);
            let digested = Auth::new(&config(&hashed, dev), &hashed);
            for key in [
                api_key(stack, Some("v1")),
                api_key(stack, Some("v2")),
                api_key(stack, Some("v3")),
                api_key(stack, None),
                api_key("other", Some("v1")),
                api_key(&hashed, Some("v1")),
                "not base64!".to_owned(),
            ] {
                assert_eq!(plain.key_ok(&key), digested.key_ok(&key), "{key} dev={dev}");
            }
            assert!(digested.key_ok(&api_key(stack, Some("v1"))));
            assert!(!digested.key_ok(&api_key("other", Some("v1"))));
        }
    }

    #[test]
    fn ingest_tokens_plain_and_digest() {
        let auth = Auth::new(&config("s", false), "s");
        let peer = IpAddr::from([127, 0, 0, 1]);
        assert!(auth.check_ingest(Some("Bearer plain-token"), peer).is_ok());
        for scheme in ["BEARER", "bearer", "bEaReR"] {
            let value = format!("{scheme}  plain-token ");
            assert!(auth.check_ingest(Some(&value), peer).is_ok(), "{value}");
        }
        for malformed in [
            "Basic plain-token",
            "Bearer",
            "Bearerplain-token",
            "plain-token",
        ] {
            assert!(
                matches!(
                    auth.check_ingest(Some(malformed), peer),
                    Err(crate::errors::IngestError::Unauthorized(_))
                ),
                "{malformed}"
            );
        }
        assert!(auth.check_ingest(Some("Bearer hashed-token"), peer).is_ok());
        assert!(auth.check_ingest(Some("Bearer sha256:x"), peer).is_err());
        assert!(auth.check_ingest(Some("Bearer other"), peer).is_err());
    }

    #[test]
    fn origins_outside_the_allowlist_are_refused_whatever_their_bytes() {
        let auth = Auth::new(
            &Config {
                allowed_origins: vec!["https://app.example".into()],
                ..config("s", false)
            },
            "s",
        );
        let check = |values: &[&[u8]]| auth.check_origin(values.iter().copied()).is_ok();
        assert!(check(&[]));
        assert!(check(&[b"https://APP.example/"]));
        assert!(!check(&[b"https://evil.example"]));
        assert!(!check(&[b"https://app.example\xff"]));
        assert!(!check(&[b"\xff"]));
        assert!(!check(&[b"https://app.example", b"https://app.example"]));
        let open = Auth::new(&config("s", false), "s");
        assert!(open.check_origin([&b"\xff"[..]].into_iter()).is_ok());
    }

    #[test]
    fn any_equal_checks_every_digest() {
        let digests = vec![digest("a"), digest("b")];
        assert!(any_equal(&digests, "b"));
        assert!(!any_equal(&digests, "c"));
        assert!(!any_equal(&[], "a"));
    }
}
