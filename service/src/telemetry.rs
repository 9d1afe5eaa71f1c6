//! Counters and logging.
//!
//! The counters exist now and are read in-process (tests, later a Prometheus exporter);
//! each is a plain atomic so hot paths pay one relaxed add.

use std::sync::atomic::{AtomicU64, Ordering};

/// Storage operations of one block, counted by [`crate::blocks::CountingStore`].
#[derive(Debug, Default)]
pub struct StorageCounters {
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub put: AtomicU64,
    pub delete: AtomicU64,
    pub list: AtomicU64,
    pub copy: AtomicU64,
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`StorageCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageSnapshot {
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub delete: u64,
    pub list: u64,
    pub copy: u64,
    pub errors: u64,
}

impl StorageCounters {
    pub fn snapshot(&self) -> StorageSnapshot {
        StorageSnapshot {
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            copy: self.copy.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
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
