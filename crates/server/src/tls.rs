//! TLS from PEM files, as Kubernetes mounts a `kubernetes.io/tls` secret (`tls.crt`,
//! `tls.key`), reloaded when they change. A rotation swaps the certificate for new
//! handshakes only: connections already open keep theirs, so nothing is dropped.
//!
//! rustls with the ring provider (the one reqwest already brings); ALPN offers HTTP/2 and
//! HTTP/1.1, and the connection builder serves whichever the client picked.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// Certificate chains and keys are a few KiB; a larger file is a mistake, not a chain.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// How often the files are looked at. kubelet updates secret volumes within about a
/// minute of a change, so this adds little delay and costs two `stat`s per interval.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Where the certificate chain and the private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {what}")]
    BadPem { path: PathBuf, what: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {what}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        what: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The TLS side of the listener: the acceptor, and the certificate it presents now.
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// What the files looked like when last read, so an unchanged file is not re-read and
    /// a bad version is reported once.
    seen: Arc<Mutex<Option<Stamp>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([(PathBuf, Option<SystemTime>, u64); 2]);

impl Tls {
    /// Load and check the pair now: a mirror configured for TLS does not start without a
    /// certificate it can serve.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamp = stamp(&files);
        let key = load_pair(&files, &provider)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            files,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            seen: Arc::new(Mutex::new(stamp)),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reload if the files changed since last look. A pair that does not load leaves the
    /// current certificate in place.
    pub(crate) fn reload_if_changed(&self, metrics: &Metrics) {
        let now = stamp(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if now.is_none() || *seen == now {
                return;
            }
            *seen = now;
        }
        let provider = rustls::crypto::ring::default_provider();
        match load_pair(&self.files, &provider) {
            Ok(key) => {
                *self
                    .resolver
                    .0
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                metrics.tls_reloaded(true);
                tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate");
            }
            Err(e) => {
                metrics.tls_reloaded(false);
                tracing::error!(error = %e, "cannot reload the TLS certificate; keeping the current one");
            }
        }
    }
}

/// Both files' resolved paths, times and sizes; `None` while either cannot be read (a
/// rotation in progress: look again next time).
fn stamp(files: &TlsFiles) -> Option<Stamp> {
    let one = |p: &Path| {
        let resolved = fs::canonicalize(p).ok()?;
        let meta = fs::metadata(&resolved).ok()?;
        Some((resolved, meta.modified().ok(), meta.len()))
    };
    Some(Stamp([one(&files.cert)?, one(&files.key)?]))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let f = fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_bounded(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: files.cert.clone(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_pem = read_bounded(&files.key)?;
    // The error names the file, never its contents: this is a private key.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::BadPem {
        path: files.key.clone(),
        what: "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        what: e.to_string(),
    })
}
