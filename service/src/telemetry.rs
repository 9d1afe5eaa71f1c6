//! Counters and logging.
//!
//! The counters exist now and are read in-process (tests, later a Prometheus exporter);
//! each is a plain atomic so hot paths pay one relaxed add.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Storage operations of one block by kind and outcome, counted by
/// [`crate::blocks::CountingStore`]. A listing counts one operation, failed if any page of
/// it failed.
#[derive(Debug, Default)]
pub struct StorageCounters {
    by_outcome: [[AtomicU64; 3]; OPS],
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
    pub fn record(&self, op: StorageOp, outcome: Outcome) {
        self.by_outcome[op as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
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
}

/// A point-in-time copy of [`CacheCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bypassed_too_large: u64,
}

impl CacheCounters {
    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bypassed_too_large: self.bypassed_too_large.load(Ordering::Relaxed),
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
