//! The closed-loop load generator: `concurrency` tasks over a few HTTP/2 connections, each
//! sending its next request as soon as its last reply arrived, for a fixed time after a
//! short warm-up. Every request's latency is kept (microseconds), so percentiles are exact.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failed requests in this run, all scenarios together: a run with any fails (a benchmark
/// whose requests fail measures nothing, and CI's quick run must notice).
pub static FAILED: AtomicU64 = AtomicU64::new(0);

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Sorted latencies, in microseconds.
    pub latencies: Vec<u32>,
}

impl Stats {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / (1u64 << 20) as f64
    }
    /// The `q` quantile of latency, in milliseconds.
    pub fn p_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        f64::from(self.latencies[i]) / 1000.0
    }
    /// `12.3k req/s, 45.6 MiB/s, p50 0.51 ms, p99 1.20 ms, p99.9 2.00 ms`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} req/s", human(self.rps()));
        if self.bytes > 0 {
            s.push_str(&format!(", {} MiB/s", human(self.mib_s())));
        }
        s.push_str(&format!(
            ", p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
            self.p_ms(0.5),
            self.p_ms(0.99),
            self.p_ms(0.999)
        ));
        if self.errors > 0 {
            s.push_str(&format!(", {} errors", self.errors));
        }
        s
    }
}

/// `93.9k`, `2.3k`, `512`, `1.5`.
pub fn human(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Runs `op` from `concurrency` tasks for `duration` (after a warm-up of a tenth of it).
/// Task `i` gets `clients[i % clients.len()]`; `op` returns the bytes it moved.
pub async fn closed_loop<C, F, Fut>(clients: &[C], concurrency: usize, duration: Duration, op: F) -> Stats
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<usize>> + Send,
{
    let warmup = duration / 10;
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Stats::default();
            let mut n = i as u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = op(client.clone(), n).await;
                let t1 = Instant::now();
                n += concurrency as u64;
                if t0 < start {
                    continue;
                }
                match r {
                    Ok(bytes) => {
                        s.requests += 1;
                        s.bytes += bytes as u64;
                        s.latencies.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        if s.errors == 0 {
                            eprintln!("bench: a request failed: {e:#}");
                        }
                        s.errors += 1;
                        FAILED.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            s
        }));
    }
    let mut total = Stats::default();
    for t in tasks {
        let s = t.await.unwrap_or_default();
        total.requests += s.requests;
        total.errors += s.errors;
        total.bytes += s.bytes;
        total.latencies.extend(s.latencies);
    }
    // Requests still in flight at `end` finish after it; measure to the last one.
    total.secs = (Instant::now().max(end) - start).as_secs_f64();
    total.latencies.sort_unstable();
    total
}

/// Runs `op` back to back, at least once, until `duration` has passed.
pub async fn repeat<F, Fut>(duration: Duration, mut op: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let start = Instant::now();
    let mut s = Stats::default();
    loop {
        let t0 = Instant::now();
        let bytes = op().await;
        match bytes {
            Ok(b) => {
                s.requests += 1;
                s.bytes += b as u64;
                s.latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Err(e) => {
                eprintln!("bench: a request failed: {e:#}");
                s.errors += 1;
                FAILED.fetch_add(1, Ordering::Relaxed);
            }
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    s.secs = start.elapsed().as_secs_f64();
    s.latencies.sort_unstable();
    s
}
