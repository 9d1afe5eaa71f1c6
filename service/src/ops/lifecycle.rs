//! Results that leave: expired ones swept, whole prefixes invalidated.
//!
//! Both walk a block's listing as object_store streams it (a page at a time for cloud
//! stores: memory stays bounded whatever the block holds) and delete one key at a time
//! through the same path as `Delete` (under the key's write lock, the cache entry
//! dropped first, a split record's payload before its document), so nothing here is a
//! second implementation of a delete.
//!
//! **What is expired.** A result whose record's expiration has passed, or, when a
//! retention applies (the block's `retention`, or `gc --older-than`), whose object was last
//! written longer ago than the retention. The listing's `last_modified` answers the
//! retention question with no read; the record's expiration takes a ranged GET of the
//! record's first [`RECORD_HEAD`] bytes (records begin with their metadata; results of any
//! size are judged without reading them), or a split block's document and a HEAD of its
//! payload. A result that cannot be read (damaged,
//! or a bare payload of an unknown serializer) has no expiration anyone can trust and is
//! never swept by expiration, only by retention.
//!
//! **Never an unexpired result.** Under the key's lock, just before deleting, the object
//! is looked at again (HEAD): if its e-tag or last-modified time is not the one judged
//! expired, a write came in between and the key is left alone. Writes through this
//! process take the same lock, so none can slip between that check and the delete; a
//! writer that bypasses the service (Prefect writing the bucket directly) could, in the
//! milliseconds between the HEAD and the DELETE: object stores offer no delete-if-match
//! through object_store. Several sweepers (replicas of a tier) may run at once: each
//! re-checks, and a delete that finds the key gone counts nothing.
//!
//! **Pacing.** A sweep makes about `calls_per_second` storage calls at most (HEAD, GET,
//! DELETE, and one per 1000 listed entries for the listing's pages; a split block's check
//! of a document's payload counts one though it may take three), so a background sweep cannot
//! crowd out the reads and writes it shares the block's connection limit with. A sweep
//! stopped half-way (crash, restart, shutdown) starts over from the beginning next time:
//! it keeps no cursor, and what it already deleted is simply gone from the listing.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt};

use crate::config::BlockFormat;
use crate::config::auth::{Access, Operation};
use crate::config::keys::is_reserved;
use crate::error::{Error, Result};
use crate::formats::record::ResultRecord;
use crate::ops::store::ResultStore;
use crate::storage::blocks::Block;
use crate::storage::object_names::{listing_dir, object_path};

/// How a sweep runs (see the module docs).
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Only keys starting with this (any string, not only whole segments).
    pub prefix: String,
    /// Results last written longer ago than this are expired whatever their record says.
    pub retention: Option<Duration>,
    /// Count what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Storage calls per second, at most.
    pub calls_per_second: NonZeroU32,
    /// The time expiration is judged against (now, except in tests that move time on).
    pub now: DateTime<Utc>,
}

impl SweepOptions {
    /// A sweep of the whole block, now, at `calls_per_second`.
    pub fn new(calls_per_second: NonZeroU32) -> Self {
        SweepOptions { prefix: String::new(), retention: None, dry_run: false, calls_per_second, now: Utc::now() }
    }
}

/// What a sweep (or a bulk delete) did so far, and in the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Keys listed under the prefix.
    pub scanned: u64,
    /// Of those, expired (all of them for a bulk delete).
    pub expired: u64,
    /// Of those, deleted (none in a dry run).
    pub deleted: u64,
    /// Bytes of the deleted objects (of the expired ones in a dry run), as listed.
    pub bytes: u64,
    /// Expired when judged, then written again before the delete: left alone.
    pub rewritten: u64,
    /// Keys whose expiration could not be read (damaged or unknown records): left alone.
    pub unreadable: u64,
    /// Metadata documents of a split block left without their payload (a delete cut
    /// short between the two): removed (counted, not removed, in a dry run).
    pub orphaned_documents: u64,
}

/// How often a sweep reports progress: every this many listed keys.
pub const PROGRESS_EVERY: u64 = 1000;

/// Spaces storage calls to at most `per_second` (own code: it is one interval timer).
struct Pacer {
    interval: tokio::time::Interval,
    /// Entries listed so far: a listing page (1000 entries) counts as one call.
    listed: u64,
}

impl Pacer {
    fn new(per_second: NonZeroU32) -> Self {
        let mut interval = tokio::time::interval(Duration::from_secs(1) / per_second.get());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacer { interval, listed: 0 }
    }

    async fn call(&mut self) {
        self.interval.tick().await;
    }

    /// One more listed entry, whether or not it is a result under the prefix.
    async fn listed(&mut self) {
        if self.listed.is_multiple_of(1000) {
            self.call().await;
        }
        self.listed += 1;
    }
}

/// Why a listed key is judged expired: what the re-check before the delete compares.
enum Judged {
    /// By retention: its last write is older than this.
    WrittenBefore(DateTime<Utc>),
    /// By its record's expiration, as read at this e-tag (or last-modified time).
    Expired { e_tag: Option<String>, last_modified: DateTime<Utc> },
}

impl ResultStore {
    /// The sweep of `block` its config asks for: its `retention` (or `older_than`, when
    /// given, in its place), its `sweep_calls_per_second`. Needs a delete-scoped caller.
    pub fn sweep_options(
        &self,
        block: &str,
        prefix: &str,
        older_than: Option<Duration>,
        dry_run: bool,
        access: &Access,
    ) -> Result<SweepOptions> {
        let block = self.block_for(block, access, Operation::Delete)?;
        if older_than.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidRequest(
                "older_than 0 would expire every result: delete a prefix (or `all`) to mean that".into(),
            ));
        }
        let config = block.config();
        Ok(SweepOptions {
            prefix: prefix.to_owned(),
            retention: older_than.or(config.retention),
            dry_run,
            calls_per_second: config.sweep_calls_per_second,
            now: Utc::now(),
        })
    }

    /// Deletes every expired result under `opts.prefix` in `block` (see the module docs);
    /// `progress` hears the running totals every [`PROGRESS_EVERY`] listed keys. Needs a
    /// delete-scoped caller.
    pub async fn sweep_expired(
        &self,
        block: &str,
        opts: &SweepOptions,
        access: &Access,
        progress: impl FnMut(&SweepReport),
    ) -> Result<SweepReport> {
        let block = self.block_for(block, access, Operation::Delete)?;
        // Counted as it goes, so a sweep stopped half-way still shows what it did.
        struct Counted<'a>(&'a crate::telemetry::SweepCounters, std::time::Instant, SweepReport, bool);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                let (c, report) = (self.0, &self.2);
                let micros = u64::try_from(self.1.elapsed().as_micros()).unwrap_or(u64::MAX);
                c.micros.fetch_add(micros, Ordering::Relaxed);
                c.swept.fetch_add(report.deleted, Ordering::Relaxed);
                c.bytes_freed.fetch_add(if self.3 { 0 } else { report.bytes }, Ordering::Relaxed);
            }
        }
        let mut counted = Counted(&block.sweeps, std::time::Instant::now(), SweepReport::default(), opts.dry_run);
        let result = self.sweep_block(&block, opts, progress, &mut counted.2).await;
        match &result {
            Ok(_) => counted.0.runs.fetch_add(1, Ordering::Relaxed),
            Err(_) => counted.0.errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn sweep_block(
        &self,
        block: &Arc<Block>,
        opts: &SweepOptions,
        mut progress: impl FnMut(&SweepReport),
        report: &mut SweepReport,
    ) -> Result<SweepReport> {
        let mut pacer = Pacer::new(opts.calls_per_second);
        let retained_since = match opts.retention {
            Some(r) => Some(opts.now - chrono::Duration::from_std(r).map_err(|_| too_long(r))?),
            None => None,
        };
        let mut listing = self.listing(block, &opts.prefix)?;
        while let Some(meta) = next_listed(block, &mut listing, &opts.prefix, report, Some(&mut pacer)).await? {
            let key = meta.location.to_string();
            let judged = match retained_since {
                Some(since) if meta.last_modified <= since => Some(Judged::WrittenBefore(since)),
                _ => {
                    pacer.call().await;
                    self.expired_at(block, &key, opts.now, report).await?
                }
            };
            if let Some(judged) = judged {
                report.expired += 1;
                if opts.dry_run {
                    report.bytes += meta.size;
                } else {
                    self.delete_if_still(block, &key, &meta, &judged, &mut pacer, report).await?;
                }
            }
            if report.scanned.is_multiple_of(PROGRESS_EVERY) {
                progress(report);
            }
        }
        if let (Some(documents), BlockFormat::Split) = (&block.metadata_store, block.format) {
            self.remove_orphaned_documents(block, documents, opts, &mut pacer, report).await?;
        }
        progress(report);
        Ok(*report)
    }

    /// A split delete removes the payload, then the document: one cut short between the
    /// two leaves a document that nothing reads (a read finds no payload). The sweep lists
    /// the documents under the prefix and removes those whose result is not readable,
    /// re-checked under the key's lock (a write in progress writes its payload before its
    /// document, and under the same lock).
    async fn remove_orphaned_documents(
        &self,
        block: &Arc<Block>,
        documents: &Arc<dyn object_store::ObjectStore>,
        opts: &SweepOptions,
        pacer: &mut Pacer,
        report: &mut SweepReport,
    ) -> Result<()> {
        let mut listing = documents.list(listing_dir(&opts.prefix)?.as_ref());
        loop {
            pacer.listed().await;
            let Some(meta) = listing.try_next().await.map_err(|e| block.storage_error(&opts.prefix, e))? else {
                break;
            };
            let key = meta.location.to_string();
            if is_reserved(&key) || !key.starts_with(opts.prefix.as_str()) {
                continue;
            }
            pacer.call().await;
            if self.readable(block, &key).await? {
                continue;
            }
            if opts.dry_run {
                report.orphaned_documents += 1;
                continue;
            }
            let _lock = self.writes.lock(&block.slug, &key).await;
            if self.readable(block, &key).await? {
                continue;
            }
            pacer.call().await;
            match documents.delete(&meta.location).await {
                Ok(()) => report.orphaned_documents += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(block.storage_error(&key, e)),
            }
        }
        Ok(())
    }

    /// Whether a read of `key` would find a result (see [`ResultStore::exists`]).
    async fn readable(&self, block: &Block, key: &str) -> Result<bool> {
        self.exists(&block.slug, key, &Access::Open).await
    }

    /// Deletes every result whose key starts with `prefix` in `block` and returns how many
    /// and their bytes. An empty prefix means the whole block and is refused unless `all`
    /// says so. Needs a delete-scoped caller. Paced by nothing but the block's own
    /// connection limit: a person asked for it now.
    pub async fn delete_prefix(&self, block: &str, prefix: &str, all: bool, access: &Access) -> Result<SweepReport> {
        let block = self.block_for(block, access, Operation::Delete)?;
        if prefix.is_empty() && !all {
            return Err(Error::InvalidRequest(
                "an empty prefix deletes every result of the block: say `all` to mean it".into(),
            ));
        }
        if !prefix.is_empty() && all {
            return Err(Error::InvalidRequest("`all` deletes the whole block: give it with no prefix".into()));
        }
        let mut report = SweepReport::default();
        let mut listing = self.listing(&block, prefix)?;
        while let Some(meta) = next_listed(&block, &mut listing, prefix, &mut report, None).await? {
            report.expired += 1;
            let key = meta.location.to_string();
            let _lock = self.writes.lock(&block.slug, &key).await;
            match self.delete_locked(&block, &key).await {
                Ok(()) => {
                    report.deleted += 1;
                    report.bytes += meta.size;
                }
                // Deleted by someone else since it was listed.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // What the cache still holds under the prefix: results kept only in memory, and
        // (on a tier's other replicas, which find storage already emptied) entries of
        // results deleted through another node.
        let (only_here, bytes) = self.cache.invalidate_prefix(&block.slug, prefix).await;
        report.deleted += only_here;
        report.bytes += bytes;
        Ok(report)
    }

    /// The block's listing under the directory part of `prefix` (object_store lists whole
    /// segments; [`next_listed`] filters the rest).
    fn listing(
        &self,
        block: &Block,
        prefix: &str,
    ) -> Result<futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>>> {
        let dir = listing_dir(prefix)?;
        block.check_root()?;
        Ok(block.store.list(dir.as_ref()))
    }

    /// Whether the result at `key` is expired by its record, read from storage; `None`
    /// when it is not, is gone, or cannot be read (counted).
    async fn expired_at(
        &self,
        block: &Arc<Block>,
        key: &str,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<Option<Judged>> {
        match self.load_for_sweep(block, key).await {
            Ok((expiration, e_tag, last_modified)) => {
                Ok(expiration.filter(|e| *e <= now).map(|_| Judged::Expired { e_tag, last_modified }))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            // The storage failing is the sweep's failure; the record failing is this key's.
            Err(e @ (Error::StorageUnavailable { .. } | Error::TimedOut { .. } | Error::Overloaded(_))) => Err(e),
            Err(e @ Error::ShuttingDown) => Err(e),
            Err(e) => {
                tracing::debug!(block = block.slug, key, error = %e, "sweep: expiration unreadable, left alone");
                report.unreadable += 1;
                Ok(None)
            }
        }
    }

    /// Deletes `key` if it is still the object judged expired (see the module docs).
    async fn delete_if_still(
        &self,
        block: &Arc<Block>,
        key: &str,
        listed: &ObjectMeta,
        judged: &Judged,
        pacer: &mut Pacer,
        report: &mut SweepReport,
    ) -> Result<()> {
        let path = object_path(key)?;
        let _lock = self.writes.lock(&block.slug, key).await;
        pacer.call().await;
        let now = match block.store.head(&path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(block.storage_error(key, e)),
        };
        let same = match judged {
            Judged::WrittenBefore(since) => now.last_modified <= *since,
            Judged::Expired { e_tag: Some(tag), .. } => now.e_tag.as_ref() == Some(tag),
            Judged::Expired { e_tag: None, last_modified } => now.last_modified == *last_modified,
        };
        if !same {
            report.rewritten += 1;
            return Ok(());
        }
        pacer.call().await;
        match self.delete_locked(block, key).await {
            Ok(()) => {
                report.deleted += 1;
                report.bytes += listed.size;
                Ok(())
            }
            Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The expiration of the result at `key` as stored, with the e-tag and last-modified
    /// time of the object judged (the one the re-check before a delete HEADs). Reads as
    /// little as it can: a split record's document and a HEAD of its payload; the first
    /// [`RECORD_HEAD`] bytes of a `prefect3` record (records begin with their metadata),
    /// and the whole record only when those do not hold the metadata. So a result above
    /// `limits.max_result_size` is swept by its expiration too.
    async fn load_for_sweep(
        &self,
        block: &Arc<Block>,
        key: &str,
    ) -> Result<(Option<DateTime<Utc>>, Option<String>, DateTime<Utc>)> {
        let path = object_path(key)?;
        let corrupt = |e| Error::corrupt_because(&block.slug, key, e);
        if let (Some(documents), BlockFormat::Split) = (&block.metadata_store, block.format) {
            let document = self.objects.get_optional(block, documents.as_ref(), &path, key).await?;
            let payload = block.store.head(&path).await.map_err(|e| block.storage_error(key, e))?;
            let expiration = match document {
                Some(d) => ResultRecord::expiration_from_document(&d).map_err(corrupt)?,
                None => None,
            };
            return Ok((expiration, payload.e_tag, payload.last_modified));
        }
        let options = GetOptions { range: Some(GetRange::Bounded(0..RECORD_HEAD)), ..Default::default() };
        let got = block.store.get_opts(&path, options).await.map_err(|e| block.storage_error(key, e))?;
        let (e_tag, last_modified) = (got.meta.e_tag.clone(), got.meta.last_modified);
        let head = got.bytes().await.map_err(|e| block.storage_error(key, e))?;
        match ResultRecord::expiration_from_head(&head) {
            Some(Ok(expiration)) => Ok((expiration, e_tag, last_modified)),
            Some(Err(e)) => Err(corrupt(e)),
            None => {
                // Not a record that begins with its metadata (a Prefect 2 blob, a bare
                // payload, maybe with a document in `metadata_url`): read it as a read does.
                let loaded = self.load(block.clone(), key.to_owned(), None).await?;
                let last_modified = loaded.reference.created.unwrap_or(DateTime::<Utc>::MIN_UTC);
                Ok((loaded.record.expiration, loaded.reference.version.clone(), last_modified))
            }
        }
    }
}

/// Bytes of a `prefect3` record a sweep reads to find its expiration.
pub const RECORD_HEAD: u64 = 64 << 10;

/// The next listed key under `prefix` that is a result (not a reserved object), counted.
/// `pacer` (a sweep's; none for a bulk delete): one storage call per 1000 listed entries.
async fn next_listed(
    block: &Block,
    listing: &mut futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>>,
    prefix: &str,
    report: &mut SweepReport,
    mut pacer: Option<&mut Pacer>,
) -> Result<Option<ObjectMeta>> {
    loop {
        if let Some(pacer) = pacer.as_deref_mut() {
            pacer.listed().await;
        }
        let Some(meta) = listing.try_next().await.map_err(|e| block.storage_error(prefix, e))? else {
            return Ok(None);
        };
        let key = meta.location.as_ref();
        if is_reserved(key) || !key.starts_with(prefix) {
            continue;
        }
        report.scanned += 1;
        return Ok(Some(meta));
    }
}

fn too_long(r: Duration) -> Error {
    Error::InvalidRequest(format!("a retention of {r:?} reaches before any date"))
}
