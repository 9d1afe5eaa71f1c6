//! Serving: `resultstore.v1` with `grpc.health.v1` and server reflection (v1 and
//! v1alpha), on a listener the caller binds, until a shutdown future completes.
//!
//! Shutdown drains: health turns NOT_SERVING first, then tonic stops accepting and lets
//! in-flight calls finish.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use resultstore_proto::v1::FILE_DESCRIPTOR_SET;
use resultstore_proto::v1::result_store_server::ResultStoreServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::store::ResultStore;
use crate::runtime::connections::ConnectionLimits;
use crate::runtime::live::Live;
use crate::runtime::metrics::Metrics;
use crate::wire::grpc::ResultStoreService;
use crate::wire::tier::Tier;

/// A server running in this process (tests and the binary use it alike).
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    metrics_task: Option<JoinHandle<()>>,
    sweep_task: JoinHandle<()>,
    expiry_task: JoinHandle<()>,
}

impl ServerHandle {
    /// The store of the generation in force.
    pub fn store(&self) -> Arc<ResultStore> {
        self.live.current().store.clone()
    }

    /// Puts `config` in force (blocks, tokens, limits, TLS certificates), or refuses it
    /// with the reason and keeps serving the old one. Logs either way.
    pub fn reload(&self, config: Config) -> Result<()> {
        match self.live.reload(config) {
            Ok(needs_restart) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                if needs_restart.is_empty() {
                    tracing::info!("configuration reloaded");
                } else {
                    tracing::warn!(
                        unchanged_until_restart = needs_restart.join(", "),
                        "configuration reloaded; these settings changed but apply only after a restart"
                    );
                }
                Ok(())
            }
            Err(e) => self.refused_reload(e),
        }
    }

    /// Counts and logs a reload that could not even read its config.
    pub fn refused_reload(&self, e: Error) -> Result<()> {
        self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "configuration reload refused; the previous configuration keeps serving");
        Err(e)
    }

    /// Stops accepting, lets in-flight calls finish (within the grace period), and waits
    /// for the server to end.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server ends by itself (its shutdown future completed and the
    /// calls in flight finished or ran out of grace).
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.join)
            .await
            .map_err(|e| Error::Serve(format!("the serving task ended abnormally: {e}")))?
            .map_err(|e| Error::Serve(e.to_string()))?;
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        self.sweep_task.abort();
        // Stopped wherever it is: a sweep may stop anywhere (`ops::lifecycle`).
        self.expiry_task.abort();
        Ok(())
    }
}

/// Starts serving `config` on `listener`; the server stops when `stop` completes or
/// [`ServerHandle::shutdown`] is called. Then: health turns NOT_SERVING, new calls are
/// refused with UNAVAILABLE, calls in flight get `shutdown_grace_period` to finish, and
/// the server ends (cutting off what is left).
pub async fn start(
    config: &Config,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<ServerHandle> {
    let live = Arc::new(Live::new(config.clone())?);
    let metrics = Arc::new(Metrics::default());
    let local_addr = listener.local_addr().map_err(|e| Error::Config(e.to_string()))?;
    warn_if_exposed(local_addr, config);
    let max_message = usize::try_from(config.limits.max_message_size.0).unwrap_or(usize::MAX);
    let request_bytes = Arc::new(crate::runtime::request_bytes::RequestBytes::new(config, metrics.clone()));

    let (metrics_addr, metrics_task) = match &config.metrics.listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("metrics.listen: cannot bind {addr}: {e}")))?;
            let bound = l.local_addr().map_err(|e| Error::Config(e.to_string()))?;
            (Some(bound), Some(tokio::spawn(crate::runtime::metrics::serve(l, metrics.clone(), live.clone()))))
        }
        None => (None, None),
    };

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
    let tier = crate::wire::tier::Tier::start(config, metrics.tier.clone()).await?;
    let service = Arc::new(ResultStoreService::new(live.clone(), metrics.clone(), max_message, tier.clone()));
    let grpc = ResultStoreServer::from_arc(service.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let http = crate::wire::http::router(service, grpc, live.clone(), request_bytes.clone(), max_message);

    let (tx, rx) = oneshot::channel::<()>();
    let (draining_tx, draining_rx) = oneshot::channel::<()>();
    let draining = live.clone();
    let shutdown = async move {
        tokio::select! {
            _ = stop => {}
            _ = rx => {}
        }
        // Tell load balancers first, refuse new calls, then let tonic drain.
        health_reporter.set_not_serving::<ResultStoreServer<ResultStoreService>>().await;
        health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        draining.start_draining();
        tracing::info!("shutting down: refusing new calls, draining calls in flight");
        let _ = draining_tx.send(());
    };
    // HTTP/2 flow-control windows: hyper's defaults (1 MiB per stream) stall a stream every
    // window on large transfers; 8 MiB per stream, 16 MiB per connection keep PutStream
    // and large replies flowing (measured with `scripts/bench --only streams`). They bound
    // what a client can make the server buffer per connection, too.
    // Keepalive pings close connections whose peer is gone (see `connections` for the
    // other bounds on connections).
    // HTTP/1.1 too, on the same listener: the HTTP API, the console and gRPC-Web
    // (`wire::http`) serve browsers, curl and notebooks; gRPC clients keep HTTP/2.
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams_per_connection))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(tower::util::MapResponseLayer::new(size_limit_is_resource_exhausted))
        .layer(crate::runtime::request_bytes::RequestBytesLayer(request_bytes))
        // resultstore.v1 (gRPC, and gRPC-Web for browsers) with the HTTP API and console.
        .add_routes(tonic::service::Routes::from(http))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let limits = ConnectionLimits {
        max_connections: config.limits.max_connections,
        preface_timeout: config.limits.connection_preface_timeout,
    };
    // Connections are accepted within bounds, with TCP_NODELAY (tonic sets it only on
    // listeners it binds itself; without it, replies that span several segments wait
    // ~40 ms on Nagle and delayed ACKs).
    let connections = crate::runtime::connections::accept(listener, limits, live.drain_signal());
    let serve: Pin<Box<dyn Future<Output = std::result::Result<(), tonic::transport::Error>> + Send>> =
        if config.tls.is_some() {
            Box::pin(router.serve_with_incoming_shutdown(
                crate::runtime::tls::incoming(connections, current_tls(live.clone())),
                shutdown,
            ))
        } else {
            Box::pin(router.serve_with_incoming_shutdown(connections, shutdown))
        };
    let grace_live = live.clone();
    let join = tokio::spawn(async move {
        let mut serve = serve;
        tokio::select! {
            ended = &mut serve => ended,
            Ok(()) = draining_rx => {
                let grace = grace_live.current().config.shutdown_grace_period;
                match tokio::time::timeout(grace, &mut serve).await {
                    Ok(ended) => ended,
                    Err(_) => {
                        tracing::warn!(
                            grace = %humantime::format_duration(grace),
                            "calls still in flight after shutdown_grace_period are cut off"
                        );
                        Ok(())
                    }
                }
            }
        }
    });
    let sweep_task = tokio::spawn(sweep_staging(live.clone()));
    let expiry_task = tokio::spawn(expiry_sweeps(live.clone(), tier));
    Ok(ServerHandle {
        local_addr,
        metrics_addr,
        live,
        metrics,
        shutdown: Some(tx),
        join,
        metrics_task,
        sweep_task,
        expiry_task,
    })
}

/// The TLS settings of the generation in force (see [`crate::runtime::tls::CurrentTls`]).
fn current_tls(live: Arc<Live>) -> crate::runtime::tls::CurrentTls {
    Arc::new(move || {
        let generation = live.current();
        Some((generation.tls.clone()?, generation.config.tls.as_ref()?.handshake_timeout))
    })
}

/// At start and then every [`crate::ops::split::STALE_STAGING_AGE`]: finishes or removes what
/// writes cut short by a crash left staged in every block (see [`ResultStore::sweep`]).
async fn sweep_staging(live: Arc<Live>) {
    let mut every = tokio::time::interval(crate::ops::split::STALE_STAGING_AGE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        live.current().store.sweep().await;
    }
}

/// Sweeps each block that has a `sweep_interval` for expired results
/// ([`ResultStore::sweep_expired`]), one block at a time, each once its interval has passed
/// since its last sweep began; the first comes one interval after start, so a fleet that
/// restarts together does not sweep together. The blocks and intervals are those of the
/// generation in force at each round, so a reload applies. Aborted at shutdown wherever
/// it is, which a sweep allows. On a tier, a block is swept by one replica
/// ([`Tier::sweeps`]); a sidecar leaves it to its tier.
async fn expiry_sweeps(live: Arc<Live>, tier: Option<Arc<Tier>>) {
    use std::collections::HashMap;
    use tokio::time::Instant;
    let mut began: HashMap<String, Instant> = HashMap::new();
    loop {
        let generation = live.current();
        let now = Instant::now();
        // Look again at least every minute: a reload may add an interval.
        let mut wake = now + std::time::Duration::from_secs(60);
        for block in generation.store.blocks().iter() {
            let Some(interval) = block.config().sweep_interval else { continue };
            if tier.as_ref().is_some_and(|t| !t.sweeps(&block.slug)) {
                continue;
            }
            let due = *began.entry(block.slug.clone()).or_insert(now) + interval;
            if due > now {
                wake = wake.min(due);
                continue;
            }
            began.insert(block.slug.clone(), Instant::now());
            let open = crate::config::auth::Access::Open;
            let swept = match generation.store.sweep_options(&block.slug, "", None, false, &open) {
                Ok(opts) => generation.store.sweep_expired(&block.slug, &opts, &open, |_| {}).await,
                Err(e) => Err(e),
            };
            match swept {
                Ok(r) if r.deleted > 0 || r.unreadable > 0 => tracing::info!(
                    block = block.slug,
                    scanned = r.scanned,
                    deleted = r.deleted,
                    bytes = r.bytes,
                    unreadable = r.unreadable,
                    "swept expired results"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(block = block.slug, error = %e, "sweeping expired results failed; next sweep in one interval")
                }
            }
            wake = wake.min(Instant::now() + interval);
        }
        tokio::time::sleep_until(wake).await;
    }
}

/// How often the server pings an HTTP/2 connection, and how long it waits for the answer
/// before closing it: a peer that vanished (a killed pod, a dropped network) frees its
/// connection within about a minute and a half.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Says so at start when anyone who can reach the address could read or write results,
/// or could read the tokens off the wire.
fn warn_if_exposed(addr: SocketAddr, config: &Config) {
    if addr.ip().is_loopback() || config.tls.is_some() {
        return;
    }
    if config.auth.is_some() {
        tracing::warn!(%addr, "listening on a non-loopback address without TLS: tokens and results cross the network in plaintext; add a [tls] table");
    } else {
        tracing::warn!(%addr, "listening on a non-loopback address without TLS and without [auth]: anyone who can reach it can read, write and delete every result");
    }
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
