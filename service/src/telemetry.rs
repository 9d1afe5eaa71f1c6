//! Counters, latency histograms and logging.
//!
//! Each counter is a plain atomic so hot paths pay one relaxed add; [`crate::runtime::metrics`]
//! encodes them for Prometheus at scrape time, tests read them in-process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets: from half a millisecond
/// (a cache hit) to a minute (a large stream's part on a slow store).
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus histogram of durations, lock-free: one relaxed add per bucket hit.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last one is `+Inf`).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The buckets (upper bound in seconds, observations in it; the last is `+Inf`), the
    /// sum in seconds and the count, as Prometheus encoders take them.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (buckets, self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9, count)
    }
}

/// The kinds of storage operation counted per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOp {
    Get = 0,
    Head = 1,
    Put = 2,
    Delete = 3,
    List = 4,
    Copy = 5,
}

/// How a storage operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok = 0,
    NotFound = 1,
    Failed = 2,
}

const OPS: usize = 6;

impl StorageOp {
    pub const ALL: [StorageOp; OPS] =
        [StorageOp::Get, StorageOp::Head, StorageOp::Put, StorageOp::Delete, StorageOp::List, StorageOp::Copy];

    pub fn as_str(self) -> &'static str {
        match self {
            StorageOp::Get => "get",
            StorageOp::Head => "head",
            StorageOp::Put => "put",
            StorageOp::Delete => "delete",
            StorageOp::List => "list",
            StorageOp::Copy => "copy",
        }
    }
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::NotFound, Outcome::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Failed => "error",
        }
    }
}

/// The expiry sweeps of one block (every sweep: the background one, `gc`, the Sweep RPC),
/// counted by [`crate::ops::lifecycle`].
#[derive(Debug, Default)]
pub struct SweepCounters {
    /// Sweeps that finished.
    pub runs: AtomicU64,
    /// Sweeps that stopped on an error.
    pub errors: AtomicU64,
    /// Results deleted by sweeps.
    pub swept: AtomicU64,
    /// Their bytes, as listed.
    pub bytes_freed: AtomicU64,
    /// Time spent sweeping, finished or not, in microseconds.
    pub micros: AtomicU64,
}

/// Storage operations of one block by kind and outcome, counted by
/// [`crate::storage::blocks::CountingStore`]. A listing counts one operation, failed if any page of
/// it failed.
#[derive(Debug, Default)]
pub struct StorageCounters {
    by_outcome: [[AtomicU64; 3]; OPS],
    /// Latency by kind, all outcomes together.
    latency: [Histogram; OPS],
}

/// A point-in-time copy of [`StorageCounters`]: attempts by kind, and failures overall.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageSnapshot {
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub delete: u64,
    pub list: u64,
    pub copy: u64,
    /// Operations that failed (not counting "not found").
    pub errors: u64,
    counts: [[u64; 3]; OPS],
}

impl StorageSnapshot {
    /// Operations of `op` that ended with `outcome`.
    pub fn count(&self, op: StorageOp, outcome: Outcome) -> u64 {
        self.counts[op as usize][outcome as usize]
    }
}

impl StorageCounters {
    pub fn record(&self, op: StorageOp, outcome: Outcome, took: Duration) {
        self.by_outcome[op as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.latency[op as usize].observe(took);
    }

    /// The latency histogram of one kind of operation.
    pub fn latency(&self, op: StorageOp) -> &Histogram {
        &self.latency[op as usize]
    }

    pub fn snapshot(&self) -> StorageSnapshot {
        let mut counts = [[0u64; 3]; OPS];
        for (op, row) in self.by_outcome.iter().enumerate() {
            for (outcome, c) in row.iter().enumerate() {
                counts[op][outcome] = c.load(Ordering::Relaxed);
            }
        }
        let total = |op: StorageOp| counts[op as usize].iter().sum();
        StorageSnapshot {
            get: total(StorageOp::Get),
            head: total(StorageOp::Head),
            put: total(StorageOp::Put),
            delete: total(StorageOp::Delete),
            list: total(StorageOp::List),
            copy: total(StorageOp::Copy),
            errors: counts.iter().map(|row| row[Outcome::Failed as usize]).sum(),
            counts,
        }
    }
}

/// Resolve cache activity.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries removed to stay within capacity.
    pub evictions: AtomicU64,
    /// Results served without being cached because they exceed the per-entry cap.
    pub bypassed_too_large: AtomicU64,
    /// Fills (storage reads for a missing entry) running now.
    pub fills_in_flight: AtomicU64,
    /// Fills that had to wait for the fill budget.
    pub fill_budget_waits: AtomicU64,
}

/// A point-in-time copy of [`CacheCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bypassed_too_large: u64,
    pub fills_in_flight: u64,
    pub fill_budget_waits: u64,
}

impl CacheCounters {
    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bypassed_too_large: self.bypassed_too_large.load(Ordering::Relaxed),
            fills_in_flight: self.fills_in_flight.load(Ordering::Relaxed),
            fill_budget_waits: self.fill_budget_waits.load(Ordering::Relaxed),
        }
    }
}

pub(crate) fn incr(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Installs the global `tracing` subscriber: level from `RUST_LOG` (default `info`),
/// pretty or JSON lines from `RESULTSTORE_LOG_FORMAT` (`pretty`, `json`). Logs go to
/// stderr so that client commands keep stdout for their output.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if std::env::var("RESULTSTORE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
