//! TLS termination with rustls (ring provider, TLS 1.2 and 1.3 only) and certificate
//! reloading without a restart.
//!
//! Owns loading the PEM certificate chain and key, the acceptor, and the reloader task that
//! swaps in a new certificate when the files' modification times change or when asked
//! through a [`CertReload`] handle (the binary wires SIGHUP to it). A certificate that does
//! not load is logged and the previous one kept. Does not own accepting connections (see
//! `listener`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use serde::Deserialize;

use crate::telemetry;
use crate::units::Seconds;

/// `[tls]`: PEM files of the certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the files' modification times are checked for a new certificate.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Seconds,
}

fn default_reload_interval() -> Seconds {
    Seconds(Duration::from_secs(10))
}

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    #[error("{path}: no PEM private key found ({reason})")]
    NoKey { path: String, reason: String },
    #[error("the certificate and key are not usable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Asks a running gateway to reload its certificate now (SIGHUP in the binary).
#[derive(Debug, Clone, Default)]
pub struct CertReload(Arc<Notify>);

impl CertReload {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reloads the certificate and key files; a bad pair is logged and the old one kept.
    pub fn reload(&self) {
        self.0.notify_one();
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::NoKey {
        path: key.display().to_string(),
        reason: error.to_string(),
    })?;
    let certified = CertifiedKey::from_der(chain, private_key, provider)?;
    Ok(Arc::new(certified))
}

/// The certificate currently presented; swapped on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// A loaded TLS setup: the acceptor for new connections and what the reloader needs.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    current: Arc<Current>,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What the poller compares: modification time and length of a file.
type Stamp = Option<(SystemTime, u64)>;

fn modified(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Tls {
    /// Loads the files named in `[tls]` and builds a TLS 1.2+ acceptor that speaks HTTP/1.1.
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let provider = provider();
        let certified = load_certified_key(&config.cert, &config.key, &provider)?;
        let current = Arc::new(Current(RwLock::new(certified)));
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
            provider,
            cert: config.cert.clone(),
            key: config.key.clone(),
        })
    }

    /// Loads the files again; on success new handshakes present the new certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_certified_key(&self.cert, &self.key, &self.provider)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = certified;
        Ok(())
    }

    fn stamp(&self) -> (Stamp, Stamp) {
        (modified(&self.cert), modified(&self.key))
    }

    fn reload_logged(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => {
                telemetry::tls_reloaded(true);
                tracing::info!(why, cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                telemetry::tls_reloaded(false);
                tracing::warn!(why, %error, "TLS certificate reload failed; keeping the old one");
            }
        }
    }

    /// Polls the files every `interval` and reloads on a change or on `trigger`.
    pub fn spawn_reloader(
        &self,
        interval: std::time::Duration,
        trigger: CertReload,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let tls = self.clone();
        tracker.spawn(async move {
            let mut seen = tls.stamp();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = trigger.0.notified() => {
                        seen = tls.stamp();
                        tls.reload_logged("reload requested");
                    }
                    () = tokio::time::sleep(interval) => {
                        let now = tls.stamp();
                        if now != seen {
                            seen = now;
                            tls.reload_logged("files changed");
                        }
                    }
                }
            }
        });
    }
}
