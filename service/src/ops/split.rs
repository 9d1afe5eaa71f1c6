//! Split records made visible whole.
//!
//! A `split` record is two objects: the serializer bytes at the key, and the metadata
//! document at the same key in the block's metadata location. Written one after the other
//! (as Prefect writes them), a crash in between leaves a payload with no document, or a
//! new payload under the old document, and two writers racing leave one's payload under
//! the other's document: a read then fails, or worse answers with the wrong serializer.
//!
//! **Writing** (under the key's lock, [`crate::ops::key_locks`]):
//! 1. the payload is written to a staging object, [`staged_path`], named by the key and
//!    the payload's sha256, under the reserved `.resultstore-staging/` prefix;
//! 2. the metadata document is written, carrying the payload's sha256 in
//!    [`crate::formats::record::PAYLOAD_SHA256`] (Prefect's `ResultRecordMetadata` ignores fields it does not
//!    know, so Prefect still reads the record);
//! 3. the staged payload is moved onto the key (a rename: atomic on local files, a copy
//!    and a delete on object stores).
//!
//! **Reading** (`SplitRecords::read_split`): the document first, then the payload at the
//! key. When the document names a digest the payload does not have, the write it belongs
//! to is between steps 2 and 3 (or was cut there by a crash), and its payload is read from
//! where step 1 left it. When neither matches, a writer moved in between the two reads:
//! read again, up to [`READ_ATTEMPTS`] times, then DATA_LOSS (a payload that never matches
//! its document was written by something that does not follow these steps, or damaged).
//! Documents without a digest (Prefect's own, or written before 0.3) are taken as they are.
//!
//! **What a crash leaves**: before step 2, the old result whole (and an unreferenced staged
//! payload); between 2 and 3, the new result, read from staging (a key that had no result
//! before is then readable but not listed: List lists payloads); after 3, the new result.
//! [`SplitRecords::sweep_staging`] finishes step 3 of such writes and removes staged objects
//! nothing refers to, once they are older than [`STALE_STAGING_AGE`].
//!
//! **Deleting** removes the payload (and a staged one the document names) before the
//! document: a crash in between leaves a document with no payload, which reads NOT_FOUND.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;

use crate::config::keys::RESERVED_STAGING_PREFIX;
use crate::error::{Error, Result};
use crate::formats::record::{PAYLOAD_SHA256, ResultRecord};
use crate::ops::key_locks::KeyLocks;
use crate::ops::objects::{Fetched, ObjectReader, WriteMode, sha256_hex};
use crate::storage::blocks::Block;
use crate::storage::blocks::BlockRegistry;
use crate::storage::cache::ResolveCache;
use crate::storage::object_names::object_path;

/// Reads of a split record before a payload that never matches its document is DATA_LOSS.
pub const READ_ATTEMPTS: usize = 3;

/// Age after which a staged object no write can still be using is finished or removed:
/// far longer than any write (calls end within `limits.request_timeout`, streams within
/// their idle limit per piece), so a live write never loses its staged object.
pub const STALE_STAGING_AGE: Duration = Duration::from_secs(3600);

/// The folder of staged split payloads, under the reserved prefix.
const SPLIT_STAGING: &str = "split";

/// Where a split payload of digest `sha256` waits before it is moved to `key`.
pub fn staged_path(key: &str, sha256: &str) -> Result<Path> {
    object_path(&format!("{RESERVED_STAGING_PREFIX}/{SPLIT_STAGING}/{sha256}/{key}"))
}

/// The key and digest of a staged split payload's path (see [`staged_path`]).
fn parse_staged(path: &Path) -> Option<(String, String)> {
    let rest = path.as_ref().strip_prefix(&format!("{RESERVED_STAGING_PREFIX}/{SPLIT_STAGING}/"))?;
    let (sha256, key) = rest.split_once('/')?;
    Some((key.to_owned(), sha256.to_owned()))
}

/// The payload digest a metadata document names, if any.
pub fn payload_sha256(document: &[u8]) -> Option<String> {
    let doc: serde_json::Map<String, Value> = serde_json::from_slice(document).ok()?;
    doc.get(PAYLOAD_SHA256)?.as_str().map(str::to_owned)
}

/// The metadata document of `record` whose payload has digest `sha256`.
pub fn document(record: &ResultRecord, sha256: &str) -> Bytes {
    let mut metadata = record.metadata.clone();
    metadata.insert(PAYLOAD_SHA256.into(), sha256.into());
    // A map of JSON values always serializes.
    Bytes::from(serde_json::to_vec(&metadata).unwrap_or_default())
}

/// A split record as read: its document (when there is one) and its payload.
pub(crate) struct SplitRead {
    pub document: Option<Bytes>,
    pub payload: Fetched,
}

/// The split-record operations, borrowing what they use from the store: whole-object
/// reads, the per-key write locks (taken by the sweep; callers hold them for the rest),
/// and the cache (a finished write's entry is invalidated).
pub struct SplitRecords<'a> {
    pub(crate) objects: &'a ObjectReader,
    pub(crate) writes: &'a KeyLocks,
    pub(crate) cache: &'a ResolveCache,
}

impl SplitRecords<'_> {
    /// Writes a split record whole (steps 1 to 3 of the module docs), the caller holding
    /// the key's lock; returns the store's version of the payload.
    pub(crate) async fn write_split(
        &self,
        block: &Block,
        meta_store: &Arc<dyn ObjectStore>,
        key: &str,
        record: &ResultRecord,
        mode: WriteMode,
    ) -> Result<Option<String>> {
        let sha256 = sha256_hex(&record.data);
        let doc = document(record, &sha256);
        if mode == WriteMode::CreateOnly
            && let Some(version) = self.split_taken(block, meta_store, key, &doc, &sha256).await?
        {
            return Ok(version);
        }
        let staged = staged_path(key, &sha256)?;
        block
            .store
            .put(&staged, PutPayload::from_bytes(record.data.clone()))
            .await
            .map_err(|e| block.storage_error(key, e))?;
        self.commit_split(block, meta_store, key, &staged, doc, mode).await
    }

    /// Steps 2 and 3 for a payload already staged at `staged` (a unary write's, or a
    /// stream's once its digest is known).
    pub(crate) async fn commit_split(
        &self,
        block: &Block,
        meta_store: &Arc<dyn ObjectStore>,
        key: &str,
        staged: &Path,
        doc: Bytes,
        mode: WriteMode,
    ) -> Result<Option<String>> {
        let map = |e| block.storage_error(key, e);
        let path = object_path(key)?;
        meta_store.put(&path, PutPayload::from_bytes(doc)).await.map_err(map)?;
        move_into_place(block, key, staged, mode).await
    }

    /// Steps 2 and 3 for a streamed payload uploaded to `upload` (its digest known only at
    /// its end), the caller holding the key's lock. The upload is moved to
    /// [`staged_path`] first (a rename: free on local files, a server-side copy on object
    /// stores).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_split_upload(
        &self,
        block: &Block,
        meta_store: &Arc<dyn ObjectStore>,
        key: &str,
        record: &ResultRecord,
        upload: &Path,
        sha256: &str,
        mode: WriteMode,
    ) -> Result<Option<String>> {
        let doc = document(record, sha256);
        let claimed = match mode {
            WriteMode::CreateOnly => self.split_taken(block, meta_store, key, &doc, sha256).await,
            WriteMode::Overwrite => Ok(None),
        };
        let staged = staged_path(key, sha256)?;
        let moved = match claimed {
            Ok(None) => block.store.rename(upload, &staged).await.map_err(|e| block.storage_error(key, e)),
            Ok(Some(version)) => {
                let _ = remove_staged(block, upload).await;
                return Ok(version);
            }
            Err(e) => Err(e),
        };
        if let Err(e) = moved {
            let _ = remove_staged(block, upload).await;
            return Err(e);
        }
        self.commit_split(block, meta_store, key, &staged, doc, mode).await
    }

    /// For a create-only write: `None` when `key` is free; the version when it already
    /// holds exactly this record (a retry whose reply was lost); else ALREADY_EXISTS.
    async fn split_taken(
        &self,
        block: &Block,
        meta_store: &Arc<dyn ObjectStore>,
        key: &str,
        doc: &Bytes,
        sha256: &str,
    ) -> Result<Option<Option<String>>> {
        let taken = || Error::AlreadyExists { block: block.slug.clone(), key: key.to_owned() };
        let path = object_path(key)?;
        let existing = match self.read_split(block, meta_store, &path, key).await {
            Ok(existing) => existing,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if existing.document.as_ref() == Some(doc) && sha256_hex(&existing.payload.data) == sha256 {
            Ok(Some(existing.payload.meta.e_tag.or(existing.payload.meta.version)))
        } else {
            Err(taken())
        }
    }

    /// Reads a split record's document and payload so that they belong together (see the
    /// module docs). NOT_FOUND when there is no payload.
    pub(crate) async fn read_split(
        &self,
        block: &Block,
        meta_store: &Arc<dyn ObjectStore>,
        path: &Path,
        key: &str,
    ) -> Result<SplitRead> {
        // The digest of a payload found under a document naming another, in the last attempt.
        let mut mismatched = None;
        for _ in 0..READ_ATTEMPTS {
            mismatched = None;
            let document = self.objects.get_optional(block, meta_store.as_ref(), path, key).await?;
            let expected = document.as_deref().and_then(payload_sha256);
            let at_key = match self.objects.fetch(block, block.store.as_ref(), path, key).await {
                Ok(payload) => Some(payload),
                Err(Error::NotFound { .. }) if expected.is_some() => None,
                Err(e) => return Err(e),
            };
            if let Some(payload) = at_key {
                let actual = sha256_hex(&payload.data);
                match &expected {
                    Some(sha) if *sha != actual => mismatched = Some(actual),
                    _ => return Ok(SplitRead { document, payload }),
                }
            }
            // The document's write is not (yet) moved to the key: its payload is staged.
            let Some(sha) = expected else { continue };
            match self.objects.fetch(block, block.store.as_ref(), &staged_path(key, &sha)?, key).await {
                Ok(payload) if sha256_hex(&payload.data) == sha => return Ok(SplitRead { document, payload }),
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            // A writer moved its payload between these reads, or (when this holds every
            // time) the result was deleted and its document lingers, or it is torn.
        }
        match mismatched {
            None => Err(Error::NotFound { block: block.slug.clone(), key: key.to_owned() }),
            Some(actual) => Err(Error::corrupt(
                &block.slug,
                key,
                format!(
                    "its payload (sha256 {actual}) is not the one its metadata document names; it was written by \
                     something that does not write split records whole, or damaged"
                ),
            )),
        }
    }

    /// Where the payload of a split record is while its document names `sha256`: the key,
    /// or the staging object of a write not yet moved there (see the module docs).
    pub(crate) async fn split_payload_path(&self, block: &Block, key: &str, sha256: &str) -> Result<Path> {
        let staged = staged_path(key, sha256)?;
        match block.store.head(&staged).await {
            Ok(_) => Ok(staged),
            Err(object_store::Error::NotFound { .. }) => object_path(key),
            Err(e) => Err(block.storage_error(key, e)),
        }
    }

    /// Deletes a split record, the caller holding the key's lock: the payload (at the key
    /// and staged), then the document. NOT_FOUND when there was no payload.
    pub(crate) async fn delete_split(&self, block: &Block, meta_store: &Arc<dyn ObjectStore>, key: &str) -> Result<()> {
        let map = |e| block.storage_error(key, e);
        let path = object_path(key)?;
        let document = self.objects.get_optional(block, meta_store.as_ref(), &path, key).await?;
        let mut found = delete_if_present(block, &path, key).await?;
        if let Some(sha) = document.as_deref().and_then(payload_sha256) {
            found |= delete_if_present(block, &staged_path(key, &sha)?, key).await?;
        }
        if !found {
            return Err(Error::NotFound { block: block.slug.clone(), key: key.to_owned() });
        }
        match meta_store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map(e)),
        }
    }

    /// Sweeps every block (see [`Self::sweep_staging`]), and object_store's own staged
    /// uploads (`NAME#N`) left in local blocks' folders; logs what it did.
    pub async fn sweep(&self, blocks: &BlockRegistry) {
        for block in blocks.iter() {
            if block.block_type == crate::config::keys::BlockType::Memory {
                continue;
            }
            let swept = self.sweep_staging(block).await;
            let uploads = match block.local_root.clone() {
                Some(root) => tokio::task::spawn_blocking(move || {
                    crate::storage::confined::remove_stale_uploads(&root, STALE_STAGING_AGE)
                })
                .await
                .unwrap_or_default(),
                None => 0,
            };
            match swept {
                Ok(0) if uploads == 0 => {}
                Ok(n) => tracing::info!(block = block.slug, staged = n, uploads, "swept writes cut short"),
                Err(e) => tracing::warn!(block = block.slug, error = %e, "sweeping staged objects failed"),
            }
        }
    }

    /// Finishes or removes what writes cut short left under the reserved staging prefix
    /// of `block`, once older than [`STALE_STAGING_AGE`]: a staged split payload whose key's
    /// document names it is moved to its key (step 3); anything else is removed. Returns
    /// how many objects were finished or removed. Safe beside live writes and beside other
    /// replicas sweeping the same block (each object is looked at again under its key's
    /// lock; a move or delete that lost a race finds nothing and moves on).
    pub async fn sweep_staging(&self, block: &Block) -> Result<usize> {
        let stale_before = chrono::Utc::now()
            - chrono::Duration::from_std(STALE_STAGING_AGE).unwrap_or_else(|_| chrono::Duration::hours(1));
        let prefix = Path::from(RESERVED_STAGING_PREFIX);
        let stale: Vec<Path> = block
            .store
            .list(Some(&prefix))
            .try_filter(|m| futures::future::ready(m.last_modified < stale_before))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| block.storage_error(RESERVED_STAGING_PREFIX, e))?;
        let mut done = 0;
        for location in stale {
            let finished = match parse_staged(&location) {
                Some((key, sha256)) => {
                    let _lock = self.writes.lock(&block.slug, &key).await;
                    self.finish_staged(block, &location, &key, &sha256).await
                }
                None => remove_staged(block, &location).await,
            };
            match finished {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(block = block.slug, error = %e, "sweeping a staged object failed"),
            }
        }
        Ok(done)
    }

    /// Step 3 of a write cut short, when `key`'s document still names `sha256`; else the
    /// staged payload is removed.
    async fn finish_staged(&self, block: &Block, staged: &Path, key: &str, sha256: &str) -> Result<bool> {
        let Some(meta_store) = &block.metadata_store else { return remove_staged(block, staged).await };
        let path = object_path(key)?;
        let document = self.objects.get_optional(block, meta_store.as_ref(), &path, key).await?;
        if document.as_deref().and_then(payload_sha256).as_deref() == Some(sha256) {
            match block.store.rename(staged, &path).await {
                Ok(()) => {
                    tracing::info!(block = block.slug, key, "finished a split write cut short");
                    self.cache.invalidate(&block.cache_key(key)).await;
                    Ok(true)
                }
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(block.storage_error(key, e)),
            }
        } else {
            remove_staged(block, staged).await
        }
    }
}

/// Removes a staged object (one a sweep found stale).
async fn remove_staged(block: &Block, staged: &Path) -> Result<bool> {
    match block.store.delete(staged).await {
        Ok(()) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(block.storage_error(RESERVED_STAGING_PREFIX, e)),
    }
}

/// Whether the objects at `a` and `b` hold the same bytes: sizes first, then their sha256,
/// each read as a stream (nothing held whole).
async fn same_bytes(block: &Block, key: &str, a: &Path, b: &Path) -> Result<bool> {
    let map = |e| block.storage_error(key, e);
    let (meta_a, meta_b) = match (block.store.head(a).await, block.store.head(b).await) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        (Err(object_store::Error::NotFound { .. }), _) | (_, Err(object_store::Error::NotFound { .. })) => {
            return Ok(false);
        }
        (Err(e), _) | (_, Err(e)) => return Err(map(e)),
    };
    if meta_a.size != meta_b.size {
        return Ok(false);
    }
    let digest = async |path: &Path| -> Result<Vec<u8>> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let mut stream = block.store.get(path).await.map_err(map)?.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(map)? {
            hasher.update(&chunk);
        }
        Ok(hasher.finalize().to_vec())
    };
    Ok(digest(a).await? == digest(b).await?)
}

/// Deletes `path`; whether there was an object.
async fn delete_if_present(block: &Block, path: &Path, key: &str) -> Result<bool> {
    // A delete of nothing succeeds on most stores: look first.
    match block.store.head(path).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(block.storage_error(key, e)),
    }
    match block.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
        Err(e) => Err(block.storage_error(key, e)),
    }
}

/// Moves a staged object onto `key`: replacing what is there, or for a create-only write
/// only when the key is free (the store's conditional rename; stores without one are
/// checked just before the move, which leaves a window in which a writer elsewhere can be
/// replaced). The staged object is gone afterwards, moved or removed. Returns the version.
pub(crate) async fn move_into_place(
    block: &Block,
    key: &str,
    staged: &Path,
    mode: WriteMode,
) -> Result<Option<String>> {
    let map = |e| block.storage_error(key, e);
    let target = object_path(key)?;
    let moved = match mode {
        WriteMode::Overwrite => block.store.rename(staged, &target).await.map_err(map),
        WriteMode::CreateOnly => match block.store.rename_if_not_exists(staged, &target).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. }) => {
                match block.store.head(&target).await {
                    Ok(_) => Err(Error::AlreadyExists { block: block.slug.clone(), key: key.to_owned() }),
                    Err(object_store::Error::NotFound { .. }) => block.store.rename(staged, &target).await.map_err(map),
                    Err(e) => Err(map(e)),
                }
            }
            Err(e) => Err(map(e)),
        },
    };
    // A create-only write finding exactly its own bytes at the key is a retry whose reply
    // was lost: it succeeds, replacing nothing.
    let moved = match moved {
        Err(Error::AlreadyExists { .. }) if same_bytes(block, key, staged, &target).await? => {
            let _ = remove_staged(block, staged).await;
            Ok(())
        }
        moved => moved,
    };
    if moved.is_err()
        && let Err(e) = block.store.delete(staged).await
        && !matches!(e, object_store::Error::NotFound { .. })
    {
        tracing::warn!(block = block.slug, key, error = %e, "removing a staged object failed; a sweep will");
    }
    moved?;
    let meta = block.store.head(&target).await.map_err(map)?;
    Ok(meta.e_tag.or(meta.version))
}
