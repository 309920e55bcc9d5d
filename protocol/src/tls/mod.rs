//! TLS for every listener and link: certificates and keys from PEM files,
//! the server and client configurations built from them (rustls with the
//! aws-lc-rs provider), reloading them without dropping a connection, and the
//! accepting side that tells a plain-TCP peer on a TLS port why it is
//! refused.
//!
//! A process serves TLS with a certificate and key. With a CA as well it
//! verifies the certificates of the peers it connects to, and asks the
//! peers that connect to it for one (mutual TLS): a peer that presents none
//! is still accepted at the TLS layer (clients of a balancer rarely have
//! certificates), and the caller decides what a role without one may do
//! ([`peer_verified`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::transport::Stream;

use crate::{Message, WireError};
/// The client side's configuration, for the client library's users.
pub use rustls::ClientConfig as TlsClientConfig;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Where a process's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Its certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA that signs every peer's certificate, PEM; `None`: peers are
    /// not verified (and this process connects to nobody over TLS).
    pub ca: Option<PathBuf>,
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, a CA that is not one).
    #[error("{0}")]
    Rustls(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificate file";
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("key file", path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error("CA file", path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The server side for `files`: its certificate, and with a CA, client
/// certificates asked for and verified (but not required).
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(format!("CA file {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "certificate {} with key {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })
}

/// The client side: peers verified against `ca`; with `identity` (a
/// certificate and key), presented to peers that ask (mutual TLS).
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    match identity {
        Some((cert, key_path)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| {
                TlsError::Rustls(format!(
                    "certificate {} with key {}: {e}",
                    cert.display(),
                    key_path.display()
                ))
            }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A process's TLS: what it serves with, what it connects with, both
/// reloadable from their files. Connections already open keep the
/// configuration they started with.
pub struct Tls {
    files: TlsFiles,
    server: RwLock<TlsAcceptor>,
    client: RwLock<Option<TlsConnector>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `files`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let (server, client) = Tls::build(&files)?;
        Ok(Tls {
            files,
            server: RwLock::new(server),
            client: RwLock::new(client),
        })
    }

    fn build(files: &TlsFiles) -> Result<(TlsAcceptor, Option<TlsConnector>), TlsError> {
        let server = TlsAcceptor::from(Arc::new(server_config(files)?));
        let client = match &files.ca {
            Some(ca) => {
                let config = client_config(ca, Some((&files.cert, &files.key)))?;
                Some(TlsConnector::from(Arc::new(config)))
            }
            None => None,
        };
        Ok((server, client))
    }

    /// Reads the files again: new connections use them from now on. On
    /// failure the material in use stays.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (server, client) = Tls::build(&self.files)?;
        *self.server.write().unwrap_or_else(|e| e.into_inner()) = server;
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        Ok(())
    }

    /// The files it loads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether it verifies peers (and so connects over TLS).
    pub fn connects(&self) -> bool {
        self.files.ca.is_some()
    }

    /// Accepts TLS on `stream`, within `within`. A peer whose first byte is
    /// not a TLS handshake (a plain-TCP client) gets a plain
    /// [`WireError::TlsRequired`] frame and is closed.
    ///
    /// # Errors
    /// Why no TLS session was made, for a log line.
    pub async fn accept(&self, stream: Stream, within: Duration) -> Result<Stream, String> {
        self.accept_telling(stream, within, reject_frame).await
    }

    /// [`Tls::accept`] for an HTTPS listener: a plain-HTTP client gets a
    /// plain `400` that says to use `https://`, not a frame.
    ///
    /// # Errors
    /// Why no TLS session was made, for a log line.
    pub async fn accept_https(&self, stream: Stream, within: Duration) -> Result<Stream, String> {
        self.accept_telling(stream, within, || bytes::Bytes::from_static(HTTPS_REQUIRED))
            .await
    }

    /// Accepts TLS on `stream` within `within`; a plain-TCP peer is sent
    /// what `refusal` makes, in words it can read, and closed.
    async fn accept_telling(
        &self,
        stream: Stream,
        within: Duration,
        refusal: fn() -> bytes::Bytes,
    ) -> Result<Stream, String> {
        let Stream::Plain(stream) = stream else {
            return Err(NOT_PLAIN_TCP.to_string());
        };
        let acceptor = self
            .server
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio::time::timeout(within, async move {
            let mut first = [0u8; 1];
            let mut stream = stream;
            match stream.peek(&mut first).await {
                Ok(0) => return Err("closed before a byte".to_string()),
                Ok(_) if first[0] != TLS_HANDSHAKE => {
                    refuse_plain(&mut stream, &refusal()).await;
                    return Err("a plain-TCP peer on a TLS port; told so".to_string());
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            acceptor
                .accept(stream)
                .await
                .map(|tls| Stream::from(tokio_rustls::TlsStream::Server(tls)))
                .map_err(|e| format!("TLS handshake failed: {e}"))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no TLS handshake within {within:?}")))
    }

    /// Connects TLS over `stream` to a peer reached as `addr` (`host:port`;
    /// its certificate must name that host or IP address). Plain TCP when
    /// this process verifies no peers (no CA).
    ///
    /// # Errors
    /// The TLS handshake failed, or `addr` names no valid host.
    pub async fn connect(&self, stream: Stream, addr: &str) -> std::io::Result<Stream> {
        let connector = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(connector) = connector else {
            return Ok(stream);
        };
        let Stream::Plain(stream) = stream else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                NOT_PLAIN_TCP,
            ));
        };
        connect_with(&connector, stream, addr).await
    }
}

/// Why TLS was not started on a connection: TLS runs over the operating
/// system's TCP only (not twice, not over the simulated network).
const NOT_PLAIN_TCP: &str = "TLS runs over plain TCP connections only";

/// Connects TLS with `connector` over `stream` to `addr` (`host:port`).
///
/// # Errors
/// The handshake failed or `addr` names no valid host.
pub async fn connect_with(
    connector: &TlsConnector,
    stream: TcpStream,
    addr: &str,
) -> std::io::Result<Stream> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}"))
    })?;
    let tls = connector.connect(name, stream).await?;
    Ok(Stream::from(tokio_rustls::TlsStream::Client(tls)))
}

/// Connects TLS over `stream` to `addr` (`host:port`) with `config`: what
/// the client library does for a balancer that serves TLS.
///
/// # Errors
/// The handshake failed or `addr` names no valid host.
pub async fn connect_client(
    config: &Arc<ClientConfig>,
    stream: TcpStream,
    addr: &str,
) -> std::io::Result<Stream> {
    connect_with(&TlsConnector::from(config.clone()), stream, addr).await
}

/// Whether the peer on `stream` presented a certificate the CA verified
/// (only a TLS server configured with a CA asks for one).
pub fn peer_verified(stream: &Stream) -> bool {
    match stream {
        Stream::Tls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|certs| !certs.is_empty()),
        _ => false,
    }
}

/// What a plain-HTTP client of an HTTPS listener is told.
const HTTPS_REQUIRED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
content-length: 44\r\nconnection: close\r\n\r\nthis port speaks HTTPS: use an https:// URL\n";

/// The frame that tells a plain-TCP peer of a semikv listener that the
/// port speaks TLS (empty if it could not be encoded: the peer is then
/// only closed).
fn reject_frame() -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    let reject = Message::Reject(WireError::TlsRequired);
    match crate::frame::encode(&reject, crate::frame::DEFAULT_MAX_FRAME_LEN, &mut buf) {
        Ok(()) => buf.freeze(),
        Err(_) => bytes::Bytes::new(),
    }
}

/// Sends `refusal` to a plain-TCP peer and closes; best effort, bounded.
/// After the refusal, what the peer sent is read and dropped (up to 64 KiB,
/// within a second for the whole): closing a socket with unread bytes
/// resets the connection, and a reset can overtake the refusal.
async fn refuse_plain(stream: &mut TcpStream, refusal: &[u8]) {
    let bounded = async {
        if !refusal.is_empty() {
            stream.write_all(refusal).await?;
        }
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            let n = tokio::io::AsyncReadExt::read(stream, &mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bounded).await;
}

#[cfg(any(test, feature = "test-certs"))]
pub mod testing;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
