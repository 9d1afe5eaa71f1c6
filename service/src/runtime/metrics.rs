//! Prometheus metrics: counters kept by the RPC layer, the cache and each block's
//! storage, rendered as Prometheus text on their own HTTP port (`metrics.listen`).
//!
//! The counters are plain atomics where they are counted (one relaxed add on the hot
//! path, no label lookup); a scrape reads them and `prometheus-client` writes the
//! exposition (Prometheus text 0.0.4). The endpoint is hyper's HTTP/1.1: it answers
//! `GET /metrics` (and `GET /healthz`, for a liveness check that needs no gRPC) and closes
//! the connection. Request heads are bounded (5 s; hyper's own size limit), so a scraper
//! cannot hold the server's memory or tasks.
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
//! - `resultstore_sweep_runs_total{block}`, `_sweep_errors_total`, `resultstore_swept_results_total`,
//!   `resultstore_swept_bytes_total`, `resultstore_sweep_duration_seconds_total{block}`: expiry
//!   sweeps (background, `gc`, the Sweep RPC).
//! - `resultstore_tier_forwarded_total{method}`: calls this node passed to the key's owner
//!   (or a sidecar to its tier) and that a node answered; `resultstore_tier_fallbacks_total{method}`:
//!   calls the key's owner could not take (down, draining, set aside after a failure),
//!   answered by the key's next node instead, this one or another (which reads storage
//!   for it: correct, only slower); `resultstore_tier_copy_hits_total`,
//!   `resultstore_tier_copies_taken_total`, `resultstore_tier_copy_bytes`: the copies of
//!   hot keys' replies (`wire::copies`).
//! - `resultstore_config_reloads_total{outcome}`, `resultstore_draining` (1 while
//!   shutting down), `resultstore_build_info{version}`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
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
    DeletePrefix,
    Sweep,
    List,
    ListBlocks,
}

impl Method {
    pub const ALL: [Method; 11] = [
        Method::Put,
        Method::PutStream,
        Method::Get,
        Method::GetStream,
        Method::Resolve,
        Method::Exists,
        Method::Delete,
        Method::DeletePrefix,
        Method::Sweep,
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
            Method::DeletePrefix => "DeletePrefix",
            Method::Sweep => "Sweep",
            Method::List => "List",
            Method::ListBlocks => "ListBlocks",
        }
    }
}

/// gRPC codes by number (`OK` = 0 … `UNAUTHENTICATED` = 16), labelled by
/// [`resultstore_proto::code_name`].
const CODES: usize = 17;

/// What the tier (`wire::tier`) did with calls, by method.
#[derive(Default)]
pub struct TierCounters {
    pub forwarded: [AtomicU64; Method::ALL.len()],
    pub fell_back: [AtomicU64; Method::ALL.len()],
    pub copy_hits: AtomicU64,
    pub copies_taken: AtomicU64,
    /// Reads the copies' weight now (set once, by the tier, when it keeps copies).
    pub copy_bytes: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl fmt::Debug for TierCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierCounters").finish_non_exhaustive()
    }
}

impl TierCounters {
    /// Counts `method` in `counts`.
    pub fn count(counts: &[AtomicU64; Method::ALL.len()], method: Method) {
        counts[method as usize].fetch_add(1, Ordering::Relaxed);
    }
}

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
    pub tier: Arc<TierCounters>,
}

impl Metrics {
    /// Counts one finished call.
    pub fn finished(&self, method: Method, code: tonic::Code, took: Duration) {
        let code = (code as usize).min(CODES - 1);
        self.calls[method as usize][code].fetch_add(1, Ordering::Relaxed);
        self.latency[method as usize].observe(took);
    }

    /// The whole exposition in Prometheus' text format (0.0.4), read from `self` and the
    /// generation in force at this moment.
    pub fn render(self: &Arc<Self>, live: &Arc<Live>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { metrics: self.clone(), live: live.clone() }));
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail, nor can encoding plain numbers and labels.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    fn encode(&self, live: &Live, enc: &mut DescriptorEncoder) -> fmt::Result {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut calls = enc.encode_descriptor(
            "resultstore_rpc_requests",
            "Finished resultstore.v1 calls.",
            None,
            MetricType::Counter,
        )?;
        for m in Method::ALL {
            for code in 0..CODES {
                let n = g(&self.calls[m as usize][code]);
                if n > 0 {
                    let name = resultstore_proto::code_name(tonic::Code::from_i32(code as i32));
                    ConstCounter::new(n).encode(calls.encode_family(&[("method", m.as_str()), ("code", name)])?)?;
                }
            }
        }
        let mut latency = enc.encode_descriptor(
            "resultstore_rpc_duration_seconds",
            "Latency of resultstore.v1 calls.",
            None,
            MetricType::Histogram,
        )?;
        for m in Method::ALL {
            histogram(&self.latency[m as usize], latency.encode_family(&[("method", m.as_str())])?)?;
        }
        gauge(enc, "resultstore_rpc_in_flight", "Calls running now.", g(&self.in_flight))?;
        counter(enc, "resultstore_rpc_shed", "Calls refused at limits.max_concurrent_requests.", g(&self.shed))?;
        counter(
            enc,
            "resultstore_request_bytes_refused",
            "Unary requests refused because limits.max_request_bytes_in_flight was spent.",
            g(&self.request_bytes_refused),
        )?;

        let generation = live.current();
        let cache = generation.store.cache();
        let c = cache.counters();
        counter(enc, "resultstore_cache_hits", "Reads served from the cache.", c.hits)?;
        counter(enc, "resultstore_cache_misses", "Reads that went to storage.", c.misses)?;
        counter(enc, "resultstore_cache_evictions", "Entries evicted to stay within capacity.", c.evictions)?;
        counter(enc, "resultstore_cache_bypassed", "Results too large to cache.", c.bypassed_too_large)?;
        gauge(enc, "resultstore_cache_bytes", "Weight of cached results.", cache.weighted_size())?;
        gauge(enc, "resultstore_cache_entries", "Cached results.", cache.entry_count())?;
        gauge(enc, "resultstore_cache_capacity_bytes", "cache.capacity.", generation.config.cache.capacity.0)?;
        gauge(enc, "resultstore_cache_fills_in_flight", "Storage reads filling the cache now.", c.fills_in_flight)?;
        counter(
            enc,
            "resultstore_cache_fill_budget_waits",
            "Fills that waited for cache.fill_budget.",
            c.fill_budget_waits,
        )?;

        let mut operations =
            enc.encode_descriptor("resultstore_storage_operations", "Object-store calls.", None, MetricType::Counter)?;
        for block in generation.store.blocks().iter() {
            let snap = block.counters.snapshot();
            for op in StorageOp::ALL {
                for outcome in Outcome::ALL {
                    let n = snap.count(op, outcome);
                    if n > 0 {
                        let labels =
                            [("block", block.slug.as_str()), ("operation", op.as_str()), ("outcome", outcome.as_str())];
                        ConstCounter::new(n).encode(operations.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let mut storage_latency = enc.encode_descriptor(
            "resultstore_storage_duration_seconds",
            "Latency of object-store calls.",
            None,
            MetricType::Histogram,
        )?;
        for block in generation.store.blocks().iter() {
            for op in StorageOp::ALL {
                let h = block.counters.latency(op);
                if h.count() > 0 {
                    let labels = [("block", block.slug.as_str()), ("operation", op.as_str())];
                    histogram(h, storage_latency.encode_family(&labels)?)?;
                }
            }
        }
        // Expiry sweeps by block (`ops::lifecycle`).
        type Read = fn(&crate::telemetry::SweepCounters) -> u64;
        let sweeps: [(&str, &str, Read); 4] = [
            ("resultstore_sweep_runs", "Expiry sweeps that finished.", |c| c.runs.load(Ordering::Relaxed)),
            ("resultstore_sweep_errors", "Expiry sweeps that stopped on an error.", |c| {
                c.errors.load(Ordering::Relaxed)
            }),
            ("resultstore_swept_results", "Results deleted by expiry sweeps.", |c| c.swept.load(Ordering::Relaxed)),
            ("resultstore_swept_bytes", "Bytes of the results expiry sweeps deleted.", |c| {
                c.bytes_freed.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in sweeps {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for block in generation.store.blocks().iter() {
                ConstCounter::new(read(&block.sweeps))
                    .encode(family.encode_family(&[("block", block.slug.as_str())])?)?;
            }
        }
        let mut sweep_seconds = enc.encode_descriptor(
            "resultstore_sweep_duration_seconds",
            "Time spent in expiry sweeps, finished or not.",
            None,
            MetricType::Counter,
        )?;
        for block in generation.store.blocks().iter() {
            let seconds = block.sweeps.micros.load(Ordering::Relaxed) as f64 / 1e6;
            ConstCounter::new(seconds).encode(sweep_seconds.encode_family(&[("block", block.slug.as_str())])?)?;
        }
        let tier = &self.tier;
        for (name, help, counts) in [
            (
                "resultstore_tier_forwarded",
                "Calls passed to the key's owner (or upstream) and answered there.",
                &tier.forwarded,
            ),
            (
                "resultstore_tier_fallbacks",
                "Calls answered by another node than the key's owner, which could not be reached.",
                &tier.fell_back,
            ),
        ] {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for m in Method::ALL {
                let n = g(&counts[m as usize]);
                if n > 0 {
                    ConstCounter::new(n).encode(family.encode_family(&[("method", m.as_str())])?)?;
                }
            }
        }
        counter(
            enc,
            "resultstore_tier_copy_hits",
            "Reads served from a copy of the owner's reply.",
            g(&tier.copy_hits),
        )?;
        counter(enc, "resultstore_tier_copies_taken", "Replies of hot keys copied here.", g(&tier.copies_taken))?;
        let copy_bytes = tier.copy_bytes.get().map_or(0, |read| read());
        gauge(enc, "resultstore_tier_copy_bytes", "Weight of the copies held here.", copy_bytes)?;
        let mut reloads = enc.encode_descriptor(
            "resultstore_config_reloads",
            "SIGHUP reloads by outcome.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(g(&self.reloads_ok)).encode(reloads.encode_family(&[("outcome", "applied")])?)?;
        ConstCounter::new(g(&self.reloads_failed)).encode(reloads.encode_family(&[("outcome", "refused")])?)?;
        gauge(enc, "resultstore_draining", "1 while the server shuts down.", u64::from(live.is_draining()))?;
        let mut build =
            enc.encode_descriptor("resultstore_build_info", "The running version.", None, MetricType::Gauge)?;
        ConstGauge::new(1u64).encode(build.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)
    }
}

/// One scrape's view: the counters and the generation, read as the encoder asks.
struct Scrape {
    metrics: Arc<Metrics>,
    live: Arc<Live>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.metrics.encode(&self.live, &mut encoder)
    }
}

/// A counter without labels (`name` without `_total`: the encoder adds it).
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn histogram(h: &Histogram, mut metric: MetricEncoder) -> fmt::Result {
    let (buckets, sum, count) = h.snapshot();
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
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
    metrics: &Arc<Metrics>,
    live: &Arc<Live>,
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
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    response
}
