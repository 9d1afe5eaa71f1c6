//! Copies of replies for keys another node owns: a tier replica's hot keys, a sidecar's
//! first level (see [`crate::wire::tier`]).
//!
//! Why replies, not results: a node that forwards a read holds no record of the key, only
//! the owner's answer to one exact request. A copy is filed under the key and the
//! request's own bytes (its protobuf encoding: target, `want`, `allow_expired`, hint), so a
//! copy answers only the request it was the answer to:
//!
//! - **A read by reference never gets wrong bytes.** The request names the digest, so a
//!   copy serves only a request for that digest, and it is the reply the owner gave after
//!   checking that digest. An overwrite changes the digest, and the new reference finds no
//!   copy.
//! - **A read by location may lag**, at most `tier.copy_time_to_live` after the copy was
//!   taken (a copy is never served older), when the key was overwritten or deleted through
//!   another node. Writes and deletes through this node drop its copies of the key at once.
//! - **Expired results are not served**: a copy whose reference's expiration has passed is
//!   skipped unless the request allows expired results (which is part of its bytes).
//! - **Only hot keys** (`tier.copy_after_reads` reads through this node within about
//!   `copy_time_to_live`) are copied, so cold keys cost the node nothing but a counter.
//! - **Bounded**: the replies and counters weigh their bytes plus a fixed overhead, under
//!   `tier.copies` bytes in all (moka, least recently used evicted). One reply above an
//!   eighth of that is not copied.
//!
//! Requests that set `bypass_cache` neither read nor make copies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use resultstore_proto::v1 as pb;

use crate::runtime::metrics::TierCounters;

/// Fixed weight of a key's entry (key, counter, bookkeeping) and of each reply in it.
const OVERHEAD: u64 = 256;

/// A reply the owner gave, as this node hands it out again.
#[derive(Debug, Clone)]
pub enum Reply {
    Resolve(pb::ResolveResponse),
    Get(pb::GetResponse),
}

impl Reply {
    fn reference(&self) -> Option<&pb::Reference> {
        match self {
            Reply::Resolve(r) => r.reference.as_ref(),
            Reply::Get(r) => r.reference.as_ref(),
        }
    }

    fn weight(&self) -> u64 {
        let body = match self {
            Reply::Resolve(r) => match &r.value {
                Some(pb::resolve_response::Value::Data(d)) => d.len(),
                Some(pb::resolve_response::Value::Json(j)) => j.len(),
                _ => 0,
            },
            Reply::Get(r) => r.data.len() + r.metadata_json.len(),
        };
        body as u64 + OVERHEAD
    }
}

/// One request's reply.
struct Copy {
    request: Bytes,
    reply: Arc<Reply>,
    taken: Instant,
}

/// What this node holds for one key: how often it was read here lately, and its copies.
#[derive(Default)]
struct KeyCopies {
    reads: AtomicU32,
    copies: Vec<Arc<Copy>>,
}

impl KeyCopies {
    fn weight(&self, key: &str) -> u32 {
        let replies: u64 = self.copies.iter().map(|c| c.reply.weight() + c.request.len() as u64).sum();
        u32::try_from(replies + key.len() as u64 + OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// The copies this node keeps (see the module docs).
pub struct Copies {
    keys: Cache<String, Arc<KeyCopies>>,
    after_reads: u32,
    time_to_live: Duration,
    max_reply: u64,
    counters: Arc<TierCounters>,
}

impl Copies {
    /// Copies within `capacity` bytes, each serving for `time_to_live`, made once a key was
    /// read `after_reads` times. `None` when `capacity` is zero (no copies).
    pub fn new(capacity: u64, time_to_live: Duration, after_reads: u32, counters: Arc<TierCounters>) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let keys = Cache::builder()
            .max_capacity(capacity)
            .weigher(|key: &String, v: &Arc<KeyCopies>| v.weight(key))
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(time_to_live)
            .build();
        Some(Copies { keys, after_reads: after_reads.max(1), time_to_live, max_reply: capacity / 8, counters })
    }

    /// The copy answering `request` (its encoding) for `key`, if one is fresh.
    pub async fn find(&self, key: &str, request: &[u8], allow_expired: bool) -> Option<Reply> {
        let entry = self.keys.get(key).await?;
        let copy = entry.copies.iter().find(|c| c.request == request)?;
        let fresh = copy.taken.elapsed() < self.time_to_live && (allow_expired || !expired(copy.reply.reference()));
        if !fresh {
            return None;
        }
        self.counters.copy_hits.fetch_add(1, Ordering::Relaxed);
        Some(copy.reply.as_ref().clone())
    }

    /// Notes one read of `key` that went to its owner, and keeps its reply once the key is
    /// hot.
    pub async fn record(&self, key: &str, request: Bytes, reply: &Reply) {
        let entry = self.keys.get_with(key.to_owned(), async { Arc::new(KeyCopies::default()) }).await;
        let reads = entry.reads.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if reads < self.after_reads || reply.weight() > self.max_reply {
            return;
        }
        let mut copies: Vec<Arc<Copy>> = entry.copies.iter().filter(|c| c.request != request).cloned().collect();
        copies.push(Arc::new(Copy { request, reply: Arc::new(reply.clone()), taken: Instant::now() }));
        let next = KeyCopies { reads: AtomicU32::new(reads), copies };
        self.keys.insert(key.to_owned(), Arc::new(next)).await;
        self.counters.copies_taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops every copy of `key` (a write or delete of it went through this node).
    pub async fn forget(&self, key: &str) {
        self.keys.invalidate(key).await;
    }

    /// Drops every copy (a whole prefix was deleted through this node).
    pub fn forget_all(&self) {
        self.keys.invalidate_all();
    }

    /// Bytes the copies weigh now.
    pub fn weighted_size(&self) -> u64 {
        self.keys.weighted_size()
    }
}

/// Whether a reference's expiration has passed.
fn expired(reference: Option<&pb::Reference>) -> bool {
    let Some(at) = reference.and_then(|r| r.expiration.as_ref()) else { return false };
    let now = chrono::Utc::now();
    (at.seconds, at.nanos) <= (now.timestamp(), now.timestamp_subsec_nanos() as i32)
}
