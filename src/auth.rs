//! Who may connect and who may publish.
//!
//! Owns the `header` checks on the upgrade (host, API key, client id), the `Origin`
//! allowlist and ingest bearer tokens. Keys and tokens are kept only as SHA-256 digests and
//! compared in constant time. Does not own how a rejection is rendered (see `errors`).

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use eventgate_protocol::header::{api_key, decode_header, is_guid};

use crate::config::Config;
use crate::errors::UpgradeError;

type Sha = [u8; 32];

fn digest(text: &str) -> Sha {
    Sha256::digest(text.as_bytes()).into()
}

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
    ingest_tokens: Vec<Sha>,
    public_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    open_loopback_ingest: bool,
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
        let mut api_keys: Vec<Sha> = config
            .app_version_ids
            .iter()
            .map(|version| digest(&api_key(stack_id, Some(version))))
            .collect();
        if config.dev {
            api_keys.push(digest(&api_key(stack_id, None)));
        }
        Self {
            api_keys,
            ingest_tokens: config.ingest_tokens.iter().map(|t| digest(t)).collect(),
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
        }
    }

    /// Checks the `Origin` header against the allowlist (empty = any origin).
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), UpgradeError> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        let Some(origin) = origin else {
            // Non-browser clients send no Origin; the allowlist guards browsers.
            return Ok(());
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
            .is_some_and(|key| any_equal(&self.api_keys, key));
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

    /// Checks an ingest request's `Authorization` header.
    pub fn check_ingest(
        &self,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Result<(), crate::errors::IngestError> {
        use crate::errors::IngestError;
        match authorization {
            Some(value) => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or(IngestError::Unauthorized(
                        "the Authorization header must be \"Bearer <token>\"",
                    ))?;
                if any_equal(&self.ingest_tokens, token.trim()) {
                    Ok(())
                } else {
                    Err(IngestError::Forbidden("the ingest token is not valid"))
                }
            }
            None if self.open_loopback_ingest && peer.is_loopback() => Ok(()),
            None => Err(IngestError::Unauthorized(
                "an Authorization: Bearer <token> header is required",
            )),
        }
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

    #[test]
    fn any_equal_checks_every_digest() {
        let digests = vec![digest("a"), digest("b")];
        assert!(any_equal(&digests, "b"));
        assert!(!any_equal(&digests, "c"));
        assert!(!any_equal(&[], "a"));
    }
}
