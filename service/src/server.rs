//! Serving: `resultstore.v1` with `grpc.health.v1` and server reflection (v1 and
//! v1alpha), on a listener the caller binds, until a shutdown future completes.
//!
//! Shutdown drains: health turns NOT_SERVING first, then tonic stops accepting and lets
//! in-flight calls finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::TryStreamExt;
use resultstore_proto::v1::FILE_DESCRIPTOR_SET;
use resultstore_proto::v1::result_store_server::ResultStoreServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::grpc::ResultStoreService;
use crate::store::ResultStore;

/// A server running in this process (tests and the binary use it alike).
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    pub store: Arc<ResultStore>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl ServerHandle {
    /// Stops accepting, lets in-flight calls finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.join).await??;
        Ok(())
    }

    /// Waits until the server ends by itself (its shutdown future completed).
    pub async fn wait(self) -> anyhow::Result<()> {
        let ServerHandle { join, shutdown, .. } = self;
        let _keep = shutdown;
        join.await??;
        Ok(())
    }
}

/// Starts serving `config` on `listener`; the server stops when `stop` completes or
/// [`ServerHandle::shutdown`] is called.
pub async fn start(
    config: &Config,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<ServerHandle> {
    let store = Arc::new(ResultStore::new(config)?);
    let local_addr = listener.local_addr().map_err(|e| Error::Config(e.to_string()))?;
    let max_message = usize::try_from(config.limits.max_message_size.0).unwrap_or(usize::MAX);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ResultStoreServer<ResultStoreService>>().await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Config(e.to_string()))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Config(e.to_string()))?;
    let service = ResultStoreServer::new(ResultStoreService::new(store.clone(), max_message))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = stop => {}
            _ = rx => {}
        }
        // Tell load balancers first, then drain.
        health_reporter.set_not_serving::<ResultStoreServer<ResultStoreService>>().await;
        tracing::info!("shutting down: draining in-flight calls");
    };
    // HTTP/2 flow-control windows: hyper's defaults (1 MiB per stream) stall a stream every
    // window on large transfers; 8 MiB per stream, 16 MiB per connection keep PutStream
    // and large replies flowing (measured with `scripts/bench --only streams`). They bound
    // what a client can make the server buffer per connection, too.
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .layer(tower::util::MapResponseLayer::new(size_limit_is_resource_exhausted))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    // tonic sets TCP_NODELAY only on listeners it binds itself; without it, replies that
    // span several segments wait ~40 ms on Nagle and delayed ACKs.
    let incoming = TcpListenerStream::new(listener).map_ok(|stream| {
        let _ = stream.set_nodelay(true);
        stream
    });
    let join = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
    Ok(ServerHandle { local_addr, store, shutdown: Some(tx), join })
}

/// tonic answers a message above the size limit with `OUT_OF_RANGE`; gRPC's convention,
/// and this service's contract, is `RESOURCE_EXHAUSTED`. No handler of ours returns
/// `OUT_OF_RANGE`, so the code is rewritten wherever it appears (the message, which names
/// the size and the limit, is kept, and names the streaming RPC).
fn size_limit_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    const OUT_OF_RANGE: &str = "11";
    const HINT: &str = " (above the unary limit, limits.max_message_size: send larger payloads with PutStream)";
    if response.headers().get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE) {
        let headers = response.headers_mut();
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        // grpc-message is percent-encoded; the hint is plain ASCII, which needs none.
        let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("message too large");
        if let Ok(v) = http::HeaderValue::from_str(&format!("{message}{HINT}")) {
            headers.insert("grpc-message", v);
        }
    }
    response
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
