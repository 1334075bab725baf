//! TLS for both listeners (rustls, ring): the certificate and key come from
//! PEM files and are reloaded when the files change, so a renewed
//! certificate (certbot, cert-manager) is served without a restart; an
//! optional client CA makes the server require client certificates signed
//! by it (mutual TLS for collectors).
//!
//! Both listeners accept through [`incoming`]: TCP connections, with the
//! TLS handshake (when configured) done concurrently off the accept loop
//! and bounded in time, so a slow or silent client holds up no one.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// `[tls]` as the server uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// signed by one of them.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes.
    pub reload_check: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {path}: {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate being served, swapped when the files change.
#[derive(Debug)]
pub(crate) struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// The acceptors of both listeners (their ALPN differs: gRPC is HTTP/2, the
/// HTTP API HTTP/1.1) and the certificate they share.
pub(crate) struct Tls {
    pub(crate) grpc: tokio_rustls::TlsAcceptor,
    pub(crate) http: tokio_rustls::TlsAcceptor,
    pub(crate) certificate: Arc<Reloading>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { what, path: path.to_path_buf(), reason: e.to_string() })
}

/// Loads and checks a certificate chain and its key.
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let bad = |what, path: &Path, reason: String| TlsError::File { what, path: path.to_path_buf(), reason };
    let pem = read("certificate", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", cert, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("certificate", cert, "no CERTIFICATE block in the file".into()));
    }
    let pem = read("key", key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad("key", key, format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| bad("key", key, format!("unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| bad("key", key, format!("does not match the certificate {}: {e}", cert.display())))?;
    Ok(certified)
}

/// The acceptors for `files`, or an error naming the file and the problem.
pub(crate) fn setup(files: &TlsFiles) -> Result<Tls, TlsError> {
    let certificate =
        Arc::new(Reloading { current: RwLock::new(Arc::new(load_certified_key(&files.cert, &files.key)?)) });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match &files.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(path) => {
            let pem = read("client CA", path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::File {
                    what: "client CA",
                    path: path.clone(),
                    reason: format!("not PEM: {e}"),
                })?;
                roots.add(cert).map_err(|e| TlsError::File {
                    what: "client CA",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::File { what: "client CA", path: path.clone(), reason: "no certificates".into() });
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Config(format!("client CA {}: {e}", path.display())))?
        }
    };
    let acceptor = |alpn: &[&[u8]]| -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(Arc::clone(&verifier))
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    };
    Ok(Tls { grpc: acceptor(&[b"h2"])?, http: acceptor(&[b"http/1.1"])?, certificate })
}

/// What identifies a file's version: its modification time and size.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Checks the certificate and key files every `files.reload_check` and
/// serves the new pair once both load and match; a bad pair is logged and
/// the old one kept. `on_reload` hears each attempt's outcome.
pub(crate) async fn watch(
    files: TlsFiles,
    certificate: Arc<Reloading>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_reload: impl Fn(Result<(), String>) + Send + 'static,
) {
    let mut seen = (stamp(&files.cert), stamp(&files.key));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(files.reload_check) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = (stamp(&files.cert), stamp(&files.key));
        if now == seen {
            continue;
        }
        seen = now;
        match load_certified_key(&files.cert, &files.key) {
            Ok(key) => {
                *certificate.current.write() = Arc::new(key);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                on_reload(Ok(()));
            }
            Err(e) => {
                // A renewal may write the certificate before the key: the
                // next change (or check) tries again.
                tracing::error!(error = %e, "TLS certificate not reloaded; still serving the previous one");
                on_reload(Err(e.to_string()));
            }
        }
    }
}

/// A connection, in the clear or over TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Conn::Plain(s) => s.connect_info(),
            Conn::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

/// Accepted connections of one listener (handshaken, with TLS).
pub(crate) struct Incoming {
    rx: mpsc::Receiver<(Conn, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Accepts on `listener`; with `tls`, each connection's handshake runs in
/// its own task and only finished ones are handed on. A failed handshake
/// (a plain client on a TLS port, a client certificate the CA did not
/// sign) closes that connection and is logged at debug level.
pub(crate) fn incoming(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(128);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match &tls {
                None => {
                    if tx.send((Conn::Plain(tcp), addr)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send((Conn::Tls(Box::new(stream)), addr)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Ok(Incoming { rx, local, accept_loop })
}

impl Incoming {
    /// The gRPC server's view: a stream of connections.
    pub(crate) fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<Conn>> {
        futures::stream::unfold(self, |mut me| async move {
            let (conn, _) = me.rx.recv().await?;
            Some((Ok(conn), me))
        })
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, std::net::SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (it does not, but for the types' sake):
            // no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.local)
    }
}
