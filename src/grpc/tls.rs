//! Mutual TLS as the autoscaler speaks it: a server certificate whose SAN matches the host in the
//! autoscaler's `address`, and a required, verified client certificate. The files are re-read
//! when they change (cert-manager renews them in place), without a restart; a broken set of
//! files is logged and the previous configuration kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS needs all three of --tls-cert, --tls-key and --tls-client-ca; missing {0} (refusing to fall back to plaintext)"
    )]
    Partial(String),
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// The three PEM files of the server side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// All three paths, or none (plaintext); a partial set is an error.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (c, k, a) => {
                let missing: Vec<&str> = [
                    (c.is_none(), "--tls-cert"),
                    (k.is_none(), "--tls-key"),
                    (a.is_none(), "--tls-client-ca"),
                ]
                .into_iter()
                .filter_map(|(m, n)| m.then_some(n))
                .collect();
                Err(TlsError::Partial(missing.join(", ")))
            }
        }
    }
}

/// A PEM error as text: rustls prints markers and lines as lists of byte values.
fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    let text = |bytes: &[u8]| crate::telemetry::quoted(&String::from_utf8_lossy(bytes));
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section has no end line {}",
            text(&[b"-----END ", end_marker.as_slice(), b"-----"].concat())
        ),
        Error::IllegalSectionStart { line } => {
            format!("a section starts with a malformed line {}", text(line))
        }
        other => other.to_string(),
    }
}

fn file_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Builds a rustls server config from the files.
pub fn load_server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error("certificate", &files.cert, pem_reason(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("certificate", &files.cert, pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(file_error(
            "certificate",
            &files.cert,
            "no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error("private key", &files.key, pem_reason(&e)))?;
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.client_ca)
        .map_err(|e| file_error("client CA", &files.client_ca, pem_reason(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("client CA", &files.client_ca, pem_reason(&e)))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| file_error("client CA", &files.client_ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(
            "client CA",
            &files.client_ca,
            "no certificate in the file",
        ));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::from_der(certs, key, &provider)
        .map_err(|e| TlsError::Config(format!("the key does not fit the certificate: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The current server config, swapped when the files change.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamp: RwLock<Vec<Option<(SystemTime, u64)>>>,
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
        })
        .collect()
}

impl ReloadingTls {
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingTls>, TlsError> {
        let stamp = stamps(&files);
        let config = load_server_config(&files)?;
        Ok(Arc::new(ReloadingTls {
            files,
            current: RwLock::new(config),
            stamp: RwLock::new(stamp),
        }))
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads the files if any changed; `Ok(true)` when a new config is in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        let unchanged = self.stamp.read().map(|s| *s == now).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        // Remember the stamp even when loading fails, so a broken file is reported once.
        if let Ok(mut s) = self.stamp.write() {
            *s = now;
        }
        let config = load_server_config(&self.files)?;
        if let Ok(mut c) = self.current.write() {
            *c = config;
        }
        Ok(true)
    }

    /// Checks the files every `every` until the task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match tls.reload_if_changed() {
                    Ok(true) => info!("TLS certificate files changed; new connections use them"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot reload TLS files; keeping the previous ones")
                    }
                }
            }
        })
    }
}

/// Accepted TLS connections, handshakes done concurrently (a slow client blocks nobody).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsStream<TcpStream>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) },
    )
}
