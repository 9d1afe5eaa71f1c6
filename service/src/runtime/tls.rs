//! TLS for the gRPC listener: rustls, certificates from PEM files, mutual TLS with a
//! client CA, and certificates swapped on reload without dropping a connection.
//!
//! tonic's own TLS option fixes the certificate at start, so the listener does the
//! handshakes itself: each accepted TCP connection gets the rustls config in force
//! *at that moment* (asked of [`CurrentTls`]: the server answers from the live
//! generation), so after a SIGHUP new connections
//! present the new certificate while open ones keep theirs. Handshakes run in their own
//! tasks with a timeout, at most 64 at once, so a slow, silent or flooding client never
//! holds up the accept loop or the calls. Connections arrive already bounded
//! ([`crate::runtime::connections`]).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::runtime::connections::Connection;

/// The process's one crypto provider: aws-lc-rs, the one object_store's clients use too.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads the certificate, key and client CA named by `tls` into a rustls config (ALPN
/// `h2`, as gRPC requires). Every failure names the file and what is wrong with it.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| Error::Config(format!("tls.{what}: cannot read {}: {e}", path.display())))
    };
    let certs = certificates("cert", &tls.cert, &read("cert", &tls.cert)?)?;
    let key = PrivateKeyDer::from_pem_slice(&read("key", &tls.key)?).map_err(|e| {
        Error::Config(format!("tls.key: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", tls.key.display()))
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client_ca", path, &read("client_ca", path)?)? {
                roots.add(cert).map_err(|e| {
                    Error::Config(format!("tls.client_ca: {}: not a CA certificate: {e}", path.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| Error::Config(format!("tls.client_ca: {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        Error::Config(format!(
            "tls: the key {} does not fit the certificate {}: {e}",
            tls.key.display(),
            tls.cert.display()
        ))
    })?;
    // h2 for gRPC; http/1.1 for browsers and curl (the HTTP API, the console, gRPC-Web).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("tls.{what}: {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("tls.{what}: {} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The TLS settings in force when a connection arrives: the rustls config and the
/// handshake timeout (`None` once TLS is no longer configured).
pub type CurrentTls = Arc<dyn Fn() -> Option<(Arc<rustls::ServerConfig>, std::time::Duration)> + Send + Sync>;

/// Accepts TCP connections on `listener` and yields those whose TLS handshake
/// succeeds, each with the settings `current` gives when it arrives. Ends when the stream
/// is dropped (the accept task notices the closed channel).
pub fn incoming(
    connections: impl Stream<Item = io::Result<Connection>> + Send + 'static,
    current: CurrentTls,
) -> ReceiverStream<io::Result<TlsStream<Connection>>> {
    let (tx, rx) = mpsc::channel(64);
    // Handshakes cost CPU (a full one is a few hundred microseconds of signing): at most
    // this many run at once, so a flood of new connections cannot starve the calls.
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        let mut connections = std::pin::pin!(connections);
        loop {
            let tcp = tokio::select! {
                next = connections.next() => match next {
                    Some(Ok(tcp)) => tcp,
                    Some(Err(_)) => continue,
                    None => return,
                },
                _ = tx.closed() => return,
            };
            let peer = tcp.get_ref().peer_addr().ok();
            // The settings in force now: the certificate and the handshake timeout.
            let Some((config, timeout)) = current() else { return };
            let Ok(slot) = handshakes.clone().acquire_owned().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => log_refused(peer, &e.to_string()),
                    Err(_) => log_refused(peer, "the handshake timed out (tls.handshake_timeout)"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// TLS handshakes in progress at once (see [`incoming`]).
const MAX_CONCURRENT_HANDSHAKES: usize = 64;

fn log_refused(peer: Option<SocketAddr>, why: &str) {
    tracing::info!(peer = ?peer, reason = why, "TLS handshake failed; connection closed");
}
