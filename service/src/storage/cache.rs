//! The resolve cache: loaded results, weighed in bytes, shared by every client of this
//! replica.
//!
//! - **Keyed by block and key; each entry carries the version it was read at.** A
//!   request that names a version (a reference) is served only by an entry of that
//!   version, and every overwrite or delete through this replica replaces or removes the
//!   entry, so an entry never outlives an overwrite it knows of. Overwrites made by
//!   others (another replica, Prefect itself) are seen when the entry's
//!   `time_to_live` ends.
//! - **Singleflight.** Concurrent misses of one key make one storage read
//!   (`moka::future::Cache::try_get_with`); every waiter gets its result, or its error.
//! - **Bounded.** The weight of an entry is its serializer bytes plus its decoded value
//!   bytes (when those are a separate buffer) plus a fixed overhead; the total stays under
//!   `capacity`, evicting least recently used entries. LRU rather than moka's default
//!   TinyLFU admission, because a result that was just written is the one most likely to
//!   be read next, and TinyLFU would turn fresh results away. A result heavier than
//!   `max_entry_size` is handed to its waiters without being cached.
//! - **Fills are bounded too.** A fill holds a [`FillPermit`] for the size of the object it
//!   reads (from `fill_budget`, shared by every key) until its entry is built, so fills of
//!   many large results wait for each other instead of multiplying memory.
//! - **Expiration.** An entry lives at most `time_to_live`, and never past its result's
//!   own expiration.
//!
//! The cache also holds results that were not persisted (`persist_result = false`):
//! memory is their only home, so they are gone once evicted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::formats::record::{RecordFormat, ResultRecord};
use crate::formats::reference::ResultReference;
use crate::formats::serializer::DecodedValue;
use crate::telemetry::{CacheCounters, CacheSnapshot, incr};

/// Where a result lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub block: Arc<str>,
    pub key: String,
}

/// A result read from storage (or held in memory), ready to serve.
#[derive(Debug)]
pub struct LoadedResult {
    pub record: ResultRecord,
    pub value: DecodedValue,
    pub reference: ResultReference,
    /// The object exactly as stored, kept only where the record cannot rebuild it
    /// (Prefect 2 blobs); see [`LoadedResult::stored_object`].
    pub stored: Option<Bytes>,
}

/// Fixed per-entry overhead counted in the weight (key, metadata, bookkeeping).
const ENTRY_OVERHEAD: u64 = 512;

impl LoadedResult {
    /// Bytes this entry holds, as counted against the cache's capacity.
    pub fn weight(&self) -> u64 {
        let data = self.record.data.len() as u64;
        let value =
            if self.value.bytes.as_ptr() == self.record.data.as_ptr() { 0 } else { self.value.bytes.len() as u64 };
        let stored = self.stored.as_ref().map_or(0, |s| s.len() as u64);
        data + value + stored + ENTRY_OVERHEAD
    }

    /// The object as a Prefect storage block's `read_path` returns it: bare payloads as
    /// they are, Prefect 2 blobs as stored, and Prefect 3 records (and split results) as
    /// the compact record Prefect writes, rebuilt from the entry rather than kept twice.
    /// Records Prefect wrote come back byte for byte (key order and escapes are kept); a
    /// record someone wrote by hand with other whitespace comes back compact. `None` when
    /// the serializer bytes are not UTF-8, which a record cannot hold.
    pub fn stored_object(&self) -> Option<Bytes> {
        if let Some(stored) = &self.stored {
            return Some(stored.clone());
        }
        match self.record.format {
            RecordFormat::Bare => Some(self.record.data.clone()),
            _ => self.record.encode_prefect3().map(Bytes::from),
        }
    }
}

/// A fill's outcome that is not a cacheable entry. Shared by every waiter of the fill.
enum FillError {
    /// Too heavy to cache: served to the waiters, then dropped.
    TooLarge(Arc<LoadedResult>),
    Failed(Error),
}

struct EntryExpiry {
    ttl: Duration,
}

impl EntryExpiry {
    fn lifetime(&self, v: &Arc<LoadedResult>) -> Option<Duration> {
        let until_expiration =
            v.record.expiration.map(|exp| (exp - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO));
        Some(until_expiration.map_or(self.ttl, |d| d.min(self.ttl)))
    }
}

impl Expiry<CacheKey, Arc<LoadedResult>> for EntryExpiry {
    fn expire_after_create(&self, _k: &CacheKey, v: &Arc<LoadedResult>, _at: Instant) -> Option<Duration> {
        self.lifetime(v)
    }
    fn expire_after_update(
        &self,
        _k: &CacheKey,
        v: &Arc<LoadedResult>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.lifetime(v)
    }
}

/// Counts a running fill in `fills_in_flight` until dropped (also when the fill is
/// cancelled).
struct FillGauge<'a>(&'a CacheCounters);

impl<'a> FillGauge<'a> {
    fn enter(c: &'a CacheCounters) -> Self {
        incr(&c.fills_in_flight);
        FillGauge(c)
    }
}

impl Drop for FillGauge<'_> {
    fn drop(&mut self) {
        self.0.fills_in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The cache of loaded results.
pub struct ResolveCache {
    inner: Cache<CacheKey, Arc<LoadedResult>>,
    max_entry: u64,
    counters: Arc<CacheCounters>,
    /// The fill budget, one permit per KiB.
    fills: Arc<Semaphore>,
    fill_budget_kib: u32,
}

/// A share of the fill budget, held while a fill reads and decodes its object.
#[derive(Debug)]
pub struct FillPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl ResolveCache {
    pub fn new(config: &CacheConfig) -> Self {
        let counters = Arc::new(CacheCounters::default());
        let on_evict = counters.clone();
        let inner = Cache::builder()
            .max_capacity(config.capacity.0)
            .weigher(|_k: &CacheKey, v: &Arc<LoadedResult>| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(EntryExpiry { ttl: config.time_to_live })
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    incr(&on_evict.evictions);
                }
            })
            .build();
        // Semaphores count in u32 permits: KiB units cover budgets up to 4TiB.
        let fill_budget_kib = u32::try_from(config.fill_budget.0.div_ceil(1024)).unwrap_or(u32::MAX);
        ResolveCache {
            inner,
            max_entry: config.max_entry_size.0,
            counters,
            fills: Arc::new(Semaphore::new(fill_budget_kib as usize)),
            fill_budget_kib,
        }
    }

    /// Waits for `size` bytes of the fill budget (all of it for objects larger than the
    /// budget, which config validation keeps at or below `max_result_size`).
    pub async fn fill_permit(&self, size: u64) -> FillPermit {
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.fill_budget_kib);
        if let Ok(p) = self.fills.clone().try_acquire_many_owned(kib) {
            return FillPermit(p);
        }
        incr(&self.counters.fill_budget_waits);
        // The semaphore is never closed.
        match self.fills.clone().acquire_many_owned(kib).await {
            Ok(p) => FillPermit(p),
            Err(_) => unreachable!("the fill semaphore is never closed"),
        }
    }

    /// Results heavier than this are served without being cached.
    pub fn max_entry(&self) -> u64 {
        self.max_entry
    }

    /// The entry at `key` if `accept` takes it, else one storage read through the future
    /// `load` makes, shared by all concurrent callers. `bypass` skips the lookup (the
    /// loaded result still refreshes the entry). Returns the result and whether it was a
    /// hit.
    ///
    /// A hit never makes the load future, and a miss boxes the fill: a storage read's
    /// future is large (about 14 KB of state), and carried inline it made every hit's
    /// future that large too, copied each time the call's future moved.
    pub async fn get_or_load<L, F>(
        &self,
        key: CacheKey,
        accept: impl Fn(&LoadedResult) -> bool,
        bypass: bool,
        load: L,
    ) -> Result<(Arc<LoadedResult>, bool)>
    where
        L: FnOnce() -> F,
        F: Future<Output = Result<LoadedResult>>,
    {
        if !bypass && let Some(entry) = self.inner.get(&key).await {
            if accept(&entry) {
                incr(&self.counters.hits);
                return Ok((entry, true));
            }
            self.inner.invalidate(&key).await;
        }
        if bypass {
            self.inner.invalidate(&key).await;
        }
        incr(&self.counters.misses);
        let max_entry = self.max_entry;
        let counters = self.counters.clone();
        let filled = Box::pin(self.inner.try_get_with(key, async move {
            let _running = FillGauge::enter(&counters);
            let loaded = Arc::new(load().await.map_err(FillError::Failed)?);
            if loaded.weight() > max_entry {
                return Err(FillError::TooLarge(loaded));
            }
            Ok(loaded)
        }))
        .await;
        match filled {
            Ok(entry) => Ok((entry, false)),
            Err(shared) => match &*shared {
                FillError::TooLarge(loaded) => {
                    incr(&self.counters.bypassed_too_large);
                    Ok((loaded.clone(), false))
                }
                FillError::Failed(e) => Err(e.clone()),
            },
        }
    }

    /// The entry at `key`, if any, without loading.
    pub async fn peek(&self, key: &CacheKey) -> Option<Arc<LoadedResult>> {
        self.inner.get(key).await
    }

    /// Puts a result just written (write-through), unless it is too heavy to cache.
    pub async fn insert(&self, key: CacheKey, value: Arc<LoadedResult>) {
        if value.weight() > self.max_entry {
            incr(&self.counters.bypassed_too_large);
            self.inner.invalidate(&key).await;
            return;
        }
        self.inner.insert(key, value).await;
    }

    pub async fn invalidate(&self, key: &CacheKey) {
        self.inner.invalidate(key).await;
    }

    /// Drops every entry of `block` whose key starts with `prefix` (a DeletePrefix), and
    /// returns how many of them were held only here (results that were not persisted,
    /// which this deletes) and their bytes. Walks every entry: a bulk operation's cost.
    pub async fn invalidate_prefix(&self, block: &str, prefix: &str) -> (u64, u64) {
        let under: Vec<_> =
            self.inner.iter().filter(|(k, _)| &*k.block == block && k.key.starts_with(prefix)).collect();
        let (mut only_here, mut bytes) = (0, 0);
        for (key, entry) in under {
            self.inner.invalidate(key.as_ref()).await;
            if !entry.reference.persisted {
                only_here += 1;
                bytes += entry.reference.size;
            }
        }
        (only_here, bytes)
    }

    /// Drops every entry (a reload changed or removed blocks the entries came from).
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// Runs moka's pending maintenance (evictions), so sizes read after it are settled.
    pub async fn settle(&self) {
        self.inner.run_pending_tasks().await;
    }

    /// The weight of all entries, in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    pub fn counters(&self) -> CacheSnapshot {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::ByteSize;
    use crate::formats::serializer::{SerializerConfig, ValueKind};

    fn cache(capacity: u64, max_entry: u64) -> ResolveCache {
        ResolveCache::new(&CacheConfig {
            capacity: ByteSize(capacity),
            max_entry_size: ByteSize(max_entry),
            time_to_live: Duration::from_secs(600),
            fill_budget: ByteSize(1 << 20),
        })
    }

    fn key(k: &str) -> CacheKey {
        CacheKey { block: Arc::from("memory/default"), key: k.to_owned() }
    }

    /// A JSON result of `size` bytes at `k`, expiring at `expiration`.
    fn result(k: &str, size: usize, expiration: Option<chrono::DateTime<chrono::Utc>>) -> LoadedResult {
        let data = Bytes::from(vec![b'1'; size]);
        let serializer = SerializerConfig::from_type("json").unwrap();
        let record = ResultRecord::new(RecordFormat::Prefect3, k, serializer.clone(), expiration, data.clone());
        LoadedResult {
            value: DecodedValue { bytes: data, kind: ValueKind::Json },
            reference: ResultReference {
                block: "memory/default".into(),
                key: k.into(),
                serializer,
                size: size as u64,
                sha256: String::new(),
                version: None,
                created: None,
                expiration,
                persisted: true,
                uri: format!("memory:///{k}"),
                format: RecordFormat::Prefect3,
            },
            record,
            stored: None,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_key_make_one_load_and_all_get_it() {
        let cache = Arc::new(cache(1 << 20, 1 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
                tokio::spawn(async move {
                    let load = async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _open = gate.acquire().await;
                        Ok(result("k", 100, None))
                    };
                    cache.get_or_load(key("k"), |_| true, false, || load).await.map(|(r, _)| r.reference.size)
                })
            })
            .collect();
        gate.add_permits(1);
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap(), 100);
        }
        // Every caller either joined the one fill or found its entry afterwards.
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let c = cache.counters();
        assert_eq!((c.hits + c.misses, c.fills_in_flight), (32, 0), "{c:?}");
    }

    #[tokio::test]
    async fn a_failed_fill_reaches_its_waiters_and_is_not_cached() {
        let cache = cache(1 << 20, 1 << 20);
        let failed = Error::StorageUnavailable { block: "memory/default".into(), reason: "down".into(), cause: None };
        let err = cache.get_or_load(key("k"), |_| true, false, || async { Err(failed.clone()) }).await.unwrap_err();
        assert_eq!(err, failed);
        let (r, hit) =
            cache.get_or_load(key("k"), |_| true, false, || async { Ok(result("k", 10, None)) }).await.unwrap();
        assert_eq!((r.reference.size, hit), (10, false), "the next call reads again");
        let (_, hit) =
            cache.get_or_load(key("k"), |_| true, false, || async { Ok(result("k", 10, None)) }).await.unwrap();
        assert!(hit);
    }

    #[tokio::test]
    async fn weights_are_bytes_and_stay_under_capacity() {
        let cache = cache(64 << 10, 16 << 10);
        let entry = result("k0", 8 << 10, None);
        assert_eq!(entry.weight(), (8 << 10) + ENTRY_OVERHEAD, "one buffer counted once when value = data");
        for i in 0..32 {
            let k = format!("k{i}");
            cache.insert(key(&k), Arc::new(result(&k, 8 << 10, None))).await;
        }
        cache.settle().await;
        assert!(cache.weighted_size() <= 64 << 10, "{}", cache.weighted_size());
        assert!(cache.counters().evictions > 0);
        // The most recent write is kept (LRU, not TinyLFU's admission).
        assert!(cache.peek(&key("k31")).await.is_some());
        // Heavier than max_entry_size: served, not cached.
        let (r, _) = cache
            .get_or_load(key("big"), |_| true, false, || async { Ok(result("big", 32 << 10, None)) })
            .await
            .unwrap();
        assert_eq!(r.reference.size, 32 << 10);
        assert!(cache.peek(&key("big")).await.is_none());
        assert_eq!(cache.counters().bypassed_too_large, 1);
    }

    #[tokio::test]
    async fn entries_never_outlive_their_results_expiration_nor_the_ttl() {
        let expiry = EntryExpiry { ttl: Duration::from_secs(600) };
        let soon = chrono::Utc::now() + chrono::Duration::seconds(60);
        let lifetime = |r: LoadedResult| expiry.lifetime(&Arc::new(r)).unwrap();
        assert_eq!(lifetime(result("a", 1, None)), Duration::from_secs(600));
        assert!(lifetime(result("b", 1, Some(soon))) <= Duration::from_secs(60));
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        assert_eq!(lifetime(result("c", 1, Some(past))), Duration::ZERO);
        // An entry whose result has expired is never served.
        let cache = cache(1 << 20, 1 << 20);
        cache.insert(key("c"), Arc::new(result("c", 1, Some(past)))).await;
        assert!(cache.peek(&key("c")).await.is_none());
    }

    #[tokio::test]
    async fn an_entry_the_caller_does_not_accept_is_read_again() {
        let cache = cache(1 << 20, 1 << 20);
        cache.insert(key("k"), Arc::new(result("k", 5, None))).await;
        let (r, hit) = cache
            .get_or_load(key("k"), |e| e.reference.size == 6, false, || async { Ok(result("k", 6, None)) })
            .await
            .unwrap();
        assert_eq!((r.reference.size, hit), (6, false), "an entry of another version is not served");
        let (_, hit) =
            cache.get_or_load(key("k"), |_| true, true, || async { Ok(result("k", 7, None)) }).await.unwrap();
        assert!(!hit, "bypass reads storage and refreshes the entry");
        assert_eq!(cache.peek(&key("k")).await.unwrap().reference.size, 7);
    }
}
