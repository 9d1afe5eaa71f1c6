//! Prometheus metrics: counters kept by the RPC layer, the cache and each block's
//! storage, rendered as Prometheus text on their own HTTP port (`metrics.listen`).
//!
//! The endpoint is a few lines of HTTP/1.1 over a TCP listener rather than a web
//! framework: it answers `GET /metrics` (and `GET /healthz`, for a liveness check that
//! needs no gRPC) and closes the connection. Request heads are bounded (8 KiB, 5 s), so a
//! scraper cannot hold the server's memory or tasks.
//!
//! Every metric, with its labels:
//! - `resultstore_rpc_requests_total{method,code}`: finished calls of `resultstore.v1`.
//! - `resultstore_rpc_duration_seconds{method}`: histogram of their latency (streams:
//!   until the last message).
//! - `resultstore_rpc_in_flight`: calls running now; `resultstore_rpc_shed_total`: calls
//!   refused by `limits.max_concurrent_requests`.
//! - `resultstore_request_bytes_refused_total`: unary requests refused because
//!   `limits.max_request_bytes_in_flight` was spent.
//! - `resultstore_cache_hits_total`, `_misses_total`, `_evictions_total`,
//!   `_bypassed_total` (results too large to cache), `resultstore_cache_bytes`,
//!   `resultstore_cache_entries`, `resultstore_cache_capacity_bytes`.
//! - `resultstore_cache_fills_in_flight`, `resultstore_cache_fill_budget_waits_total`.
//! - `resultstore_storage_operations_total{block,operation,outcome}` and
//!   `resultstore_storage_duration_seconds{block,operation}`: calls to the object stores.
//! - `resultstore_config_reloads_total{outcome}`, `resultstore_draining` (1 while
//!   shutting down), `resultstore_build_info{version}`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::runtime::live::Live;
use crate::telemetry::{Histogram, Outcome, StorageOp};

/// The RPCs of `resultstore.v1`, as metrics and logs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Put,
    PutStream,
    Get,
    GetStream,
    Resolve,
    Exists,
    Delete,
    List,
    ListBlocks,
}

impl Method {
    pub const ALL: [Method; 9] = [
        Method::Put,
        Method::PutStream,
        Method::Get,
        Method::GetStream,
        Method::Resolve,
        Method::Exists,
        Method::Delete,
        Method::List,
        Method::ListBlocks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Put => "Put",
            Method::PutStream => "PutStream",
            Method::Get => "Get",
            Method::GetStream => "GetStream",
            Method::Resolve => "Resolve",
            Method::Exists => "Exists",
            Method::Delete => "Delete",
            Method::List => "List",
            Method::ListBlocks => "ListBlocks",
        }
    }
}

/// gRPC codes by number (`OK` = 0 … `UNAUTHENTICATED` = 16), labelled by
/// [`resultstore_proto::code_name`].
const CODES: usize = 17;

/// Process-wide counters: they outlive reloads.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: [[AtomicU64; CODES]; Method::ALL.len()],
    latency: [Histogram; Method::ALL.len()],
    pub in_flight: AtomicU64,
    pub shed: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unary requests refused by the byte budget (`runtime::request_bytes`).
    pub request_bytes_refused: AtomicU64,
}

impl Metrics {
    /// Counts one finished call.
    pub fn finished(&self, method: Method, code: tonic::Code, took: Duration) {
        let code = (code as usize).min(CODES - 1);
        self.calls[method as usize][code].fetch_add(1, Ordering::Relaxed);
        self.latency[method as usize].observe(took);
    }

    /// The whole exposition, read from `self` and the generation in force.
    pub fn render(&self, live: &Live) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(&mut out, "resultstore_rpc_requests_total", "counter", "Finished resultstore.v1 calls.");
        for m in Method::ALL {
            for code in 0..CODES {
                let name = resultstore_proto::code_name(tonic::Code::from_i32(code as i32));
                let n = g(&self.calls[m as usize][code]);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "resultstore_rpc_requests_total{{method=\"{}\",code=\"{name}\"}} {n}",
                        m.as_str()
                    );
                }
            }
        }
        header(&mut out, "resultstore_rpc_duration_seconds", "histogram", "Latency of resultstore.v1 calls.");
        for m in Method::ALL {
            self.latency[m as usize].render(
                &mut out,
                "resultstore_rpc_duration_seconds",
                &format!("method=\"{}\"", m.as_str()),
            );
        }
        gauge(&mut out, "resultstore_rpc_in_flight", "Calls running now.", g(&self.in_flight));
        counter(
            &mut out,
            "resultstore_rpc_shed_total",
            "Calls refused at limits.max_concurrent_requests.",
            g(&self.shed),
        );
        counter(
            &mut out,
            "resultstore_request_bytes_refused_total",
            "Unary requests refused because limits.max_request_bytes_in_flight was spent.",
            g(&self.request_bytes_refused),
        );

        let generation = live.current();
        let cache = generation.store.cache();
        let c = cache.counters();
        counter(&mut out, "resultstore_cache_hits_total", "Reads served from the cache.", c.hits);
        counter(&mut out, "resultstore_cache_misses_total", "Reads that went to storage.", c.misses);
        counter(&mut out, "resultstore_cache_evictions_total", "Entries evicted to stay within capacity.", c.evictions);
        counter(&mut out, "resultstore_cache_bypassed_total", "Results too large to cache.", c.bypassed_too_large);
        gauge(&mut out, "resultstore_cache_bytes", "Weight of cached results.", cache.weighted_size());
        gauge(&mut out, "resultstore_cache_entries", "Cached results.", cache.entry_count());
        gauge(&mut out, "resultstore_cache_capacity_bytes", "cache.capacity.", generation.config.cache.capacity.0);
        gauge(&mut out, "resultstore_cache_fills_in_flight", "Storage reads filling the cache now.", c.fills_in_flight);
        counter(
            &mut out,
            "resultstore_cache_fill_budget_waits_total",
            "Fills that waited for cache.fill_budget.",
            c.fill_budget_waits,
        );

        header(&mut out, "resultstore_storage_operations_total", "counter", "Object-store calls.");
        for block in generation.store.blocks().iter() {
            let snap = block.counters.snapshot();
            for op in StorageOp::ALL {
                for outcome in Outcome::ALL {
                    let n = snap.count(op, outcome);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "resultstore_storage_operations_total{{block=\"{}\",operation=\"{}\",outcome=\"{}\"}} {n}",
                            block.slug,
                            op.as_str(),
                            outcome.as_str()
                        );
                    }
                }
            }
        }
        header(&mut out, "resultstore_storage_duration_seconds", "histogram", "Latency of object-store calls.");
        for block in generation.store.blocks().iter() {
            for op in StorageOp::ALL {
                let h = block.counters.latency(op);
                if h.count() > 0 {
                    h.render(
                        &mut out,
                        "resultstore_storage_duration_seconds",
                        &format!("block=\"{}\",operation=\"{}\"", block.slug, op.as_str()),
                    );
                }
            }
        }
        header(&mut out, "resultstore_config_reloads_total", "counter", "SIGHUP reloads by outcome.");
        let _ = writeln!(out, "resultstore_config_reloads_total{{outcome=\"applied\"}} {}", g(&self.reloads_ok));
        let _ = writeln!(out, "resultstore_config_reloads_total{{outcome=\"refused\"}} {}", g(&self.reloads_failed));
        gauge(&mut out, "resultstore_draining", "1 while the server shuts down.", u64::from(live.is_draining()));
        header(&mut out, "resultstore_build_info", "gauge", "The running version.");
        let _ = writeln!(out, "resultstore_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped: HTTP/1.1 by
/// hyper (the tree has it for tonic), accepted with backoff on errors, each connection
/// given 5 s to send its request head and 30 s in all.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, live: Arc<Live>) {
    let mut backoff = Duration::ZERO;
    loop {
        let (tcp, _) = crate::runtime::connections::accept_backing_off(&listener, &mut backoff).await;
        let (metrics, live) = (metrics.clone(), live.clone());
        let service = hyper::service::service_fn(move |request| {
            let (metrics, live) = (metrics.clone(), live.clone());
            async move { Ok::<_, std::convert::Infallible>(respond(&request, &metrics, &live).await) }
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
}

/// The reply to one request of the metrics endpoint.
async fn respond<B>(
    request: &http::Request<B>,
    metrics: &Metrics,
    live: &Live,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            // Settled first, so cache entries and bytes are what the cache holds now
            // rather than before its last evictions.
            live.current().store.cache().settle().await;
            (http::StatusCode::OK, metrics.render(live))
        }
        (&http::Method::GET, "/healthz") if !live.is_draining() => (http::StatusCode::OK, "ok\n".to_owned()),
        (&http::Method::GET, "/healthz") => (http::StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned()),
        (&http::Method::GET, _) => (http::StatusCode::NOT_FOUND, "try /metrics\n".to_owned()),
        _ => (http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned()),
    };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
