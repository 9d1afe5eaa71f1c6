//! TLS for the gRPC listener: rustls, certificates from PEM files, mutual TLS with a
//! client CA, and certificates swapped on reload without dropping a connection.
//!
//! tonic's own TLS option fixes the certificate at start, so the listener does the
//! handshakes itself: each accepted TCP connection gets the rustls config in force
//! *at that moment* ([`crate::live::Live::current`]), so after a SIGHUP new connections
//! present the new certificate while open ones keep theirs. Handshakes run in their own
//! tasks with a timeout, so a slow or silent client never holds up the accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::live::Live;

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
    config.alpn_protocols = vec![b"h2".to_vec()];
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

/// Accepts TCP connections on `listener` and yields those whose TLS handshake
/// succeeds, each with the config `live` holds when it arrives. Ends when the stream is
/// dropped (the accept task notices the closed channel).
pub fn incoming(listener: TcpListener, live: Arc<Live>) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: say so, and keep accepting.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            // The generation in force now: its certificate and its handshake timeout.
            let generation = live.current();
            let (Some(config), Some(settings)) = (generation.tls.clone(), generation.config.tls.as_ref()) else {
                return;
            };
            let timeout = settings.handshake_timeout.0;
            let tx = tx.clone();
            tokio::spawn(async move {
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

fn log_refused(peer: SocketAddr, why: &str) {
    tracing::info!(%peer, reason = why, "TLS handshake failed; connection closed");
}
