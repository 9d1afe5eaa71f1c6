//! The operations: put, get, resolve, exists, delete, list, list blocks.
//!
//! Beside results, *objects*: a Put of `Payload::Object` stores Prefect's own bytes (a
//! record, a bare payload, a metadata document) as they are, and a read `as_stored` gives
//! them back, so a Prefect storage block can move files through the service and its cache.
//!
//! This is the whole path of every RPC below the thin gRPC handlers: settings are
//! applied, keys validated, records encoded or decoded, storage called, the cache
//! consulted and filled. Nothing here knows about gRPC.

use std::collections::BinaryHeap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::auth::{Access, Operation};
use crate::config::keys::validate_key;
use crate::config::{BlockFormat, Config};
use crate::error::{Error, Result};
use crate::formats::record::{RecordError, RecordFormat, ResultRecord};
use crate::formats::reference::{Expectation, LiteralValue, ResultReference};
use crate::formats::serializer::plain::PlainValue;
use crate::formats::serializer::{self, DecodeError, SerializerConfig, TranscodeError, json};
use crate::ops::key_locks::KeyLocks;
pub use crate::ops::objects::WriteMode;
use crate::ops::objects::{Fetched, ObjectReader, sha256_hex};
use crate::ops::settings::{self, ResultSettings};
use crate::ops::split::{self, SplitRecords};
use crate::storage::blocks::{Block, BlockRegistry};
use crate::storage::cache::{LoadedResult, ResolveCache};
use crate::storage::object_names::{listing_dir, object_path};

/// What a Put carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Serializer bytes as the serializer produced them.
    Data(Bytes),
    /// A JSON document for the server to serialize.
    Json(String),
    Literal(LiteralValue),
    /// An object as a Prefect storage block's `write_path` receives it, stored as is.
    Object(Bytes),
}

/// One Put.
#[derive(Debug, Clone)]
pub struct PutInput {
    pub payload: Payload,
    pub task: ResultSettings,
    pub flow: Option<ResultSettings>,
    pub key: Option<String>,
    /// The key when neither `key` nor the cache key names one (not a request for
    /// persistence, unlike `key`): a routing client's choice.
    pub new_key: Option<String>,
    pub expiration: Option<DateTime<Utc>>,
    pub mode: WriteMode,
}

/// What a Put gives back.
#[derive(Debug, Clone)]
pub enum PutOutcome {
    Literal(LiteralValue),
    Stored(Box<ResultReference>),
}

/// What a read asks for.
#[derive(Debug, Clone)]
pub enum ReadTarget {
    /// A reference this service issued (or one built from its fields).
    Reference {
        block: String,
        key: String,
        expect: Expectation,
        serializer: Option<SerializerConfig>,
    },
    Location {
        block: String,
        key: String,
    },
    /// A Prefect 3 metadata document or a Prefect 2 result document, read in `block`.
    Prefect {
        block: String,
        document: String,
    },
}

/// Options of a read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub allow_expired: bool,
    pub bypass_cache: bool,
    /// Serializer assumed for bare payloads.
    pub serializer_hint: Option<SerializerConfig>,
    /// The caller wants the object as stored (a storage block's `read_path`): bare
    /// payloads then need no serializer, and one of any serializer serves from the cache.
    pub as_stored: bool,
}

/// What a read found.
#[derive(Debug, Clone)]
pub enum ReadOutcome {
    /// A Prefect 2 literal document.
    Literal(LiteralValue),
    Loaded {
        result: Arc<LoadedResult>,
        cache_hit: bool,
    },
}

/// Where a read target points (see [`ResultStore::locate`]).
pub(crate) enum Located {
    /// A Prefect 2 literal document: nothing to read.
    Literal(LiteralValue),
    At {
        block: Arc<Block>,
        key: String,
        expect: Expectation,
        hint: Option<SerializerConfig>,
        /// The expiration a Prefect document names (the record's own wins).
        doc_expiration: Option<DateTime<Utc>>,
    },
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub entries: Vec<object_store::ObjectMeta>,
    pub next_page_token: Option<String>,
}

/// Defaults for pages of [`ResultStore::list`].
pub const DEFAULT_PAGE_SIZE: usize = 1000;
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The service's domain: blocks, cache and limits.
pub struct ResultStore {
    pub(crate) blocks: BlockRegistry,
    pub(crate) cache: Arc<ResolveCache>,
    pub(crate) defaults: settings::Defaults,
    pub(crate) max_result_size: u64,
    /// Whole-object reads within `max_result_size` and the cache's fill budget.
    pub(crate) objects: ObjectReader,
    /// Multipart part and ranged-read size of streams.
    pub(crate) stream_chunk: usize,
    /// One writer per key through this process (kept across reloads, as the cache is).
    pub(crate) writes: Arc<KeyLocks>,
}

fn put_mode(mode: WriteMode) -> PutMode {
    match mode {
        WriteMode::Overwrite => PutMode::Overwrite,
        WriteMode::CreateOnly => PutMode::Create,
    }
}

/// The reference to `record` at `key`: its digest, size and serializer, as written or read.
pub(crate) fn reference_of(
    block: &Block,
    key: &str,
    record: &ResultRecord,
    version: Option<String>,
    created: DateTime<Utc>,
    persisted: bool,
) -> ResultReference {
    ResultReference {
        block: block.slug.clone(),
        key: key.to_owned(),
        serializer: record.serializer.clone(),
        size: record.data.len() as u64,
        sha256: sha256_hex(&record.data),
        version,
        created: Some(created),
        expiration: record.expiration,
        persisted,
        uri: if persisted { block.uri(key) } else { String::new() },
        format: record.format,
    }
}

/// The serializer of an object's bare payload: the one the settings name (task's, else
/// flow's), else the opaque serializer. Objects never take the server's default: Prefect
/// decided their bytes.
pub(crate) fn object_serializer(task: &ResultSettings, flow: Option<&ResultSettings>) -> SerializerConfig {
    task.result_serializer
        .clone()
        .or_else(|| flow.and_then(|f| f.result_serializer.clone()))
        .unwrap_or_else(SerializerConfig::opaque)
}

/// The key of an object: the request's, else the cache key, else a new uuid4 hex.
pub(crate) fn object_key(key: Option<String>, cache_key: Option<String>, new_key: Option<String>) -> String {
    key.filter(|k| !k.is_empty())
        .or(cache_key)
        .or(new_key.filter(|k| !k.is_empty()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// `Expired` when `expiration` has passed, unless the caller allows expired reads.
/// A result whose value bytes, out of their compression, exceed `limits.max_result_size`.
fn decompressed_too_large(size: u64, limit: u64) -> Error {
    Error::TooLarge { what: "the decompressed result".into(), size, limit }
}

/// Refuses an expired result unless the caller allows it: expired by its record's (or
/// Prefect document's) `expiration`, or, in a block with a `retention`, written (`written`:
/// the object's last-modified time) longer ago than that, whichever comes first.
pub(crate) fn check_not_expired(
    block: &Block,
    key: &str,
    expiration: Option<DateTime<Utc>>,
    written: Option<DateTime<Utc>>,
    allow_expired: bool,
) -> Result<()> {
    let retained_until = match (block.config().retention, written) {
        (Some(r), Some(w)) => chrono::Duration::from_std(r).ok().and_then(|r| w.checked_add_signed(r)),
        _ => None,
    };
    let expiration = match (expiration, retained_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match expiration {
        Some(exp) if !allow_expired && exp <= Utc::now() => {
            Err(Error::Expired { block: block.slug.clone(), key: key.to_owned(), expiration: exp.to_rfc3339() })
        }
        _ => Ok(()),
    }
}

impl ResultStore {
    /// Split records, written, read, deleted and swept whole ([`crate::ops::split`]).
    pub fn split(&self) -> SplitRecords<'_> {
        SplitRecords { objects: &self.objects, writes: &self.writes, cache: &self.cache }
    }

    /// Sweeps every block for what writes cut short left behind (see
    /// [`SplitRecords::sweep`]); logs what it did.
    pub async fn sweep(&self) {
        self.split().sweep(&self.blocks).await;
    }

    /// Sweeps one block's staged objects (see [`SplitRecords::sweep_staging`]); returns how
    /// many were finished or removed.
    pub async fn sweep_staging(&self, block: &Block) -> Result<usize> {
        self.split().sweep_staging(block).await
    }

    /// Builds the blocks and the cache of `config`.
    pub fn new(config: &Config) -> Result<Self> {
        let cache = Arc::new(ResolveCache::new(&config.cache));
        Self::build(config, BlockRegistry::from_config(config)?, cache, Arc::default())
    }

    /// The store of a reloaded `config`: blocks that did not change and the cache are
    /// kept; when a block changed or went away, every cache entry is dropped (entries
    /// are keyed by slug, and the slug may now mean other storage). Cache sizes are not
    /// reloaded: they apply at the next start.
    pub fn reconfigured(&self, config: &Config) -> Result<Self> {
        let blocks = BlockRegistry::rebuilt(config, Some(&self.blocks))?;
        let store = Self::build(config, blocks, self.cache.clone(), self.writes.clone())?;
        if !store.blocks.keeps_all_of(&self.blocks) {
            store.cache.invalidate_all();
        }
        Ok(store)
    }

    fn build(config: &Config, blocks: BlockRegistry, cache: Arc<ResolveCache>, writes: Arc<KeyLocks>) -> Result<Self> {
        let objects = ObjectReader::new(Arc::clone(&cache), config.limits.max_result_size.0);
        Ok(ResultStore {
            blocks,
            cache,
            defaults: settings::Defaults {
                serializer: SerializerConfig::from_type(&config.default_serializer)
                    .map_err(|e| Error::Config(format!("default_serializer: {e}")))?,
                persist_by_default: config.persist_by_default,
            },
            max_result_size: config.limits.max_result_size.0,
            objects,
            stream_chunk: usize::try_from(config.limits.stream_chunk_size.0).unwrap_or(64 << 20),
            writes,
        })
    }

    pub fn blocks(&self) -> &BlockRegistry {
        &self.blocks
    }

    /// The block `slug` names (empty: the default block), once `access` allows `op` on
    /// it. The check comes first and looks at the slug alone, so a refused caller learns
    /// nothing about keys, nor whether an unknown block exists.
    pub(crate) fn block_for(&self, slug: &str, access: &Access, op: Operation) -> Result<Arc<Block>> {
        let slug = if slug.is_empty() { self.blocks.default_slug() } else { slug };
        access.check(slug, op)?;
        self.blocks.get(slug).map_err(|e| match e {
            // Name only the blocks this caller may see.
            Error::UnknownBlock { block, .. } => Error::UnknownBlock {
                block,
                known: self
                    .blocks
                    .iter()
                    .filter(|b| access.sees(&b.slug))
                    .map(|b| b.slug.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            e => e,
        })
    }

    pub fn cache(&self) -> &ResolveCache {
        &self.cache
    }

    /// Stores one result, or returns it as a literal.
    pub async fn put(&self, input: PutInput, access: &Access) -> Result<PutOutcome> {
        if let Payload::Object(object) = &input.payload {
            let object = object.clone();
            return self.put_object(input, object, access).await.map(|r| PutOutcome::Stored(Box::new(r)));
        }
        let explicit_key = input.key.as_deref().is_some_and(|k| !k.is_empty());
        let eff = settings::resolve(&input.task, input.flow.as_ref(), &self.defaults, explicit_key)?;
        // Checked first, literals included: a caller without write access learns nothing.
        let block = self.block_for(&eff.storage, access, Operation::Write)?;
        let key = input.key.filter(|k| !k.is_empty()).or_else(|| eff.cache_key.clone());

        // Literals stay in the reply unless a key asks for them to be findable in storage.
        let value: Option<PlainValue> = match &input.payload {
            Payload::Data(_) | Payload::Object(_) => None,
            Payload::Json(text) => Some(
                json::parse(text.as_bytes()).map_err(|e| Error::InvalidRequest(format!("`json` is not JSON: {e}")))?,
            ),
            Payload::Literal(l) => Some(match l {
                LiteralValue::True => PlainValue::Bool(true),
                LiteralValue::False => PlainValue::Bool(false),
                LiteralValue::Null => PlainValue::None,
            }),
        };
        let literal = match &value {
            Some(PlainValue::Bool(true)) => Some(LiteralValue::True),
            Some(PlainValue::Bool(false)) => Some(LiteralValue::False),
            Some(PlainValue::None) => Some(LiteralValue::Null),
            _ => None,
        };
        if let Some(literal) = literal
            && key.is_none()
        {
            return Ok(PutOutcome::Literal(literal));
        }

        // The server's own encoding knows its value bytes; bytes a client sent are decoded
        // (below) to prove they can be read back.
        let (data, encoded_value) = match (&input.payload, &value) {
            (Payload::Data(data), _) => {
                serializer::check_data(&eff.serializer, data)?;
                (data.clone(), None)
            }
            (_, Some(v)) => {
                let encoded = serializer::encode_value(&eff.serializer, v)?;
                (encoded.data, Some(encoded.value))
            }
            (Payload::Object(_), _) | (_, None) => {
                unreachable!("json and literal payloads always carry a value; objects returned above")
            }
        };
        if data.len() as u64 > self.max_result_size {
            return Err(Error::TooLarge {
                what: "the serialized result".into(),
                size: data.len() as u64,
                limit: self.max_result_size,
            });
        }
        let key = object_key(key, None, input.new_key);
        validate_key(&key)?;
        // Decode before writing: a payload that could never be read back is refused
        // before it can replace anything.
        let value = match encoded_value {
            // What a read would refuse to decompress is refused here too.
            Some(value) if value.bytes.len() as u64 > self.max_result_size => {
                return Err(decompressed_too_large(value.bytes.len() as u64, self.max_result_size));
            }
            Some(value) => value,
            None => self.decode_written(&eff.serializer, &data, "`data`")?,
        };
        let record_format = if eff.persist && block.format == BlockFormat::Split {
            RecordFormat::Split
        } else {
            RecordFormat::Prefect3
        };
        let record = ResultRecord::new(record_format, &key, eff.serializer, input.expiration, data);
        // Held until the cache has this write: the cache never ends older than storage.
        let _lock = self.writes.lock(&block.slug, &key).await;
        let version = if eff.persist { self.write_record(&block, &key, &record, input.mode).await? } else { None };
        let reference = reference_of(&block, &key, &record, version, Utc::now(), eff.persist);
        let cache_key = block.cache_key(key);
        let loaded = LoadedResult { record, value, reference: reference.clone(), stored: None };
        self.cache.insert(cache_key, Arc::new(loaded)).await;
        Ok(PutOutcome::Stored(Box::new(reference)))
    }

    /// Stores an object as a Prefect storage block hands it over (`write_path`).
    ///
    /// Prefect decided the object's layout, so it is written as is: a Prefect 3 record
    /// keeps Prefect's own `storage_block_id` and `prefect_version`, a bare flow result
    /// stays bare. The one exception is a Prefect 3 record sent to a `split` block, which
    /// is split as the block's format says (reading it `as_stored` rebuilds the record).
    /// Records are decoded first, so one that could never be read back is refused before
    /// it replaces anything.
    async fn put_object(&self, input: PutInput, object: Bytes, access: &Access) -> Result<ResultReference> {
        let said_no = |s: &ResultSettings| s.persist_result == Some(false);
        if said_no(&input.task) || input.flow.as_ref().is_some_and(said_no) {
            return Err(Error::InvalidSettings(
                "an object is written to storage as it is; persist_result = false cannot apply to it".into(),
            ));
        }
        if input.expiration.is_some() {
            return Err(Error::InvalidRequest(
                "an object carries its own expiration (in its record); leave `expiration` unset".into(),
            ));
        }
        if object.len() as u64 > self.max_result_size {
            return Err(Error::TooLarge {
                what: "the object".into(),
                size: object.len() as u64,
                limit: self.max_result_size,
            });
        }
        let hint = object_serializer(&input.task, input.flow.as_ref());
        let eff = settings::resolve(&input.task, input.flow.as_ref(), &self.defaults, true)?;
        let block = self.block_for(&eff.storage, access, Operation::Write)?;
        let key = object_key(input.key, eff.cache_key, input.new_key);
        validate_key(&key)?;

        let mut record = ResultRecord::decode(object.clone(), &hint, &key)
            .map_err(|m| Error::InvalidRequest(format!("the object is not a readable record: {m}")))?;
        serializer::check_data(&record.serializer, &record.data)?;
        let value = self.decode_written(&record.serializer, &record.data, "the object's result")?;
        let _lock = self.writes.lock(&block.slug, &key).await;
        let version = if block.format == BlockFormat::Split && record.format == RecordFormat::Prefect3 {
            record.format = RecordFormat::Split;
            self.write_record(&block, &key, &record, input.mode).await?
        } else {
            self.write_object(&block, &key, object.clone(), input.mode).await?
        };
        let reference = reference_of(&block, &key, &record, version, Utc::now(), true);
        let stored = (record.format == RecordFormat::Prefect2).then_some(object);
        let loaded = LoadedResult { record, value, reference: reference.clone(), stored };
        self.cache.insert(block.cache_key(key), Arc::new(loaded)).await;
        Ok(reference)
    }

    /// Writes bytes at a key as they are; returns the store's version of them.
    /// A create-only write that finds the key holding exactly these bytes succeeds: it is
    /// a retry of a write whose reply was lost (the client's, or the store client's own
    /// retry after a 5xx that came after the object was stored), and nothing is replaced.
    async fn write_object(&self, block: &Block, key: &str, bytes: Bytes, mode: WriteMode) -> Result<Option<String>> {
        let path = object_path(key)?;
        let opts = PutOptions { mode: put_mode(mode), ..Default::default() };
        match block.store.put_opts(&path, PutPayload::from_bytes(bytes.clone()), opts).await {
            Ok(put) => Ok(put.e_tag.or(put.version)),
            Err(e) => match block.storage_error(key, e) {
                Error::AlreadyExists { .. } if mode == WriteMode::CreateOnly => {
                    self.holds_exactly(block, &path, key, &bytes).await
                }
                e => Err(e),
            },
        }
    }

    /// The version of the object at `path` when it is byte for byte `bytes`; else
    /// ALREADY_EXISTS. Reads nothing but metadata when the sizes differ.
    async fn holds_exactly(&self, block: &Block, path: &Path, key: &str, bytes: &Bytes) -> Result<Option<String>> {
        let taken = || Error::AlreadyExists { block: block.slug.clone(), key: key.to_owned() };
        let got = match block.store.get(path).await {
            Ok(got) => got,
            // Deleted since: still not this write's to claim.
            Err(object_store::Error::NotFound { .. }) => return Err(taken()),
            Err(e) => return Err(block.storage_error(key, e)),
        };
        if got.meta.size != bytes.len() as u64 {
            return Err(taken());
        }
        let version = got.meta.e_tag.clone().or(got.meta.version.clone());
        let stored = got.bytes().await.map_err(|e| block.storage_error(key, e))?;
        if stored == *bytes { Ok(version) } else { Err(taken()) }
    }

    /// Writes a record in the block's format; returns the store's version of it.
    async fn write_record(
        &self,
        block: &Block,
        key: &str,
        record: &ResultRecord,
        mode: WriteMode,
    ) -> Result<Option<String>> {
        match (block.format, &block.metadata_store) {
            (BlockFormat::Split, Some(meta)) => self.split().write_split(block, meta, key, record, mode).await,
            _ => {
                let bytes = record.encode_prefect3().ok_or_else(|| {
                    Error::InvalidRequest(
                        "the serializer bytes are not UTF-8, which a prefect3 record cannot hold; \
                         store them in a block with format = \"split\""
                            .into(),
                    )
                })?;
                self.write_object(block, key, Bytes::from(bytes), mode).await
            }
        }
    }

    /// Where a read target points: a block and a valid key, what the caller expects of
    /// the result there, and the serializer assumed for a bare payload.
    pub(crate) fn locate(&self, target: ReadTarget, opts: &ReadOptions, access: &Access) -> Result<Located> {
        let (block, key, expect, mut hint, doc_expiration) = match target {
            ReadTarget::Reference { block, key, expect, serializer } => {
                (self.block_for(&block, access, Operation::Read)?, key, expect, serializer, None)
            }
            ReadTarget::Location { block, key } => (
                self.block_for(&block, access, Operation::Read)?,
                key,
                Expectation { persisted: true, ..Default::default() },
                None,
                None,
            ),
            ReadTarget::Prefect { block, document } => match parse_prefect_document(&document)? {
                PrefectDocument::Literal(l) => {
                    // A literal touches no storage, but the caller still names a block.
                    self.block_for(&block, access, Operation::Read)?;
                    return Ok(Located::Literal(l));
                }
                PrefectDocument::Reference { storage_key, serializer, expiration } => {
                    let block = self.block_for(&block, access, Operation::Read)?;
                    let key = block.key_from_storage_key(&storage_key)?;
                    (block, key, Expectation { persisted: true, ..Default::default() }, serializer, expiration)
                }
            },
        };
        if opts.serializer_hint.is_some() {
            hint = opts.serializer_hint.clone();
        }
        validate_key(&key)?;
        Ok(Located::At { block, key, expect, hint, doc_expiration })
    }

    /// Whether `access` may read what `target` names (and whether it names something
    /// readable at all), without touching storage: for admission, before a stream takes
    /// a place.
    pub fn check_read(&self, target: &ReadTarget, opts: &ReadOptions, access: &Access) -> Result<()> {
        self.locate(target.clone(), opts, access).map(|_| ())
    }

    /// Reads one result (cache first), checks it against what the caller expects, and
    /// enforces its expiration.
    pub async fn read(&self, target: ReadTarget, opts: ReadOptions, access: &Access) -> Result<ReadOutcome> {
        let (block, key, expect, hint, doc_expiration) = match self.locate(target, &opts, access)? {
            Located::Literal(l) => return Ok(ReadOutcome::Literal(l)),
            Located::At { block, key, expect, hint, doc_expiration } => (block, key, expect, hint, doc_expiration),
        };
        let cache_key = block.cache_key(key.as_str());

        let (result, cache_hit) = if !expect.persisted {
            // Memory is the only home of a result that was not persisted.
            match self.cache.peek(&cache_key).await {
                Some(entry) if expect.sha256.as_deref().is_none_or(|s| s == entry.reference.sha256) => (entry, true),
                _ => return Err(Error::NotPersisted { key }),
            }
        } else {
            // Whether persisted or not, an entry of the asked version and digest serves:
            // rejecting a memory-only entry would destroy it (a rejected entry is dropped).
            let accept = |e: &LoadedResult| {
                expect.version.as_ref().is_none_or(|v| e.reference.version.as_ref() == Some(v))
                    && expect.sha256.as_ref().is_none_or(|s| *s == e.reference.sha256)
                    && (e.record.format != RecordFormat::Bare
                        || opts.as_stored
                        || hint.as_ref().is_none_or(|h| *h == e.record.serializer))
            };
            // Reading as stored needs no serializer for a bare payload: load it opaquely.
            let load_hint = hint.clone().or_else(|| opts.as_stored.then(SerializerConfig::opaque));
            let load = || self.load(block.clone(), key.clone(), load_hint);
            self.cache.get_or_load(cache_key, accept, opts.bypass_cache, load).await?
        };

        if let Some(expected) = &expect.sha256
            && *expected != result.reference.sha256
        {
            return Err(Error::IntegrityMismatch {
                block: block.slug.clone(),
                key,
                expected: expected.clone(),
                actual: result.reference.sha256.clone(),
            });
        }
        let expiration = result.record.expiration.or(doc_expiration);
        check_not_expired(&block, &key, expiration, result.reference.created, opts.allow_expired)?;
        Ok(ReadOutcome::Loaded { result, cache_hit })
    }

    /// One storage read of `key`, detecting its format.
    pub(crate) async fn load(
        &self,
        block: Arc<Block>,
        key: String,
        hint: Option<SerializerConfig>,
    ) -> Result<LoadedResult> {
        let named = hint.is_some();
        let hint = hint.unwrap_or_else(|| block.default_serializer.clone());
        let path = object_path(&key)?;
        let split_first = block.format == BlockFormat::Split;
        // The result's share of the fill budget is held until its entry is built. Metadata
        // documents (small) take none: a fill never waits for budget while holding some.
        let (metadata, payload) = match (&block.metadata_store, split_first) {
            (Some(meta_store), true) => {
                let read = self.split().read_split(&block, meta_store, &path, &key).await?;
                (read.document, read.payload)
            }
            _ => (None, self.objects.fetch(&block, block.store.as_ref(), &path, &key).await?),
        };
        let Fetched { data, meta, fill: _fill } = payload;
        let corrupt = |e: RecordError| Error::corrupt_because(&block.slug, &key, e);
        let raw = data.clone();
        let mut record = match metadata {
            Some(doc) => ResultRecord::decode_split(&doc, data).map_err(corrupt)?,
            None => {
                let record = ResultRecord::decode(data, &hint, &key).map_err(corrupt)?;
                match (&record.format, &block.metadata_store, split_first) {
                    (RecordFormat::Bare, Some(meta), false) => {
                        match self.objects.get_optional(&block, meta.as_ref(), &path, &key).await? {
                            Some(doc) => ResultRecord::decode_split(&doc, record.data).map_err(corrupt)?,
                            None => record,
                        }
                    }
                    _ => record,
                }
            }
        };
        if record.format == RecordFormat::Bare && !named {
            // Nobody said what wrote these bytes: the block's default is only a guess, and
            // bytes it cannot read are not damaged. Tell by the bytes, or ask.
            record.serializer = serializer::sniff(&record.data, &block.default_serializer)
                .ok_or_else(|| Error::SerializerUnknown { block: block.slug.clone(), key: key.clone() })?;
        }
        let value = self.decode(&record.serializer, &record.data, |m| Error::corrupt(&block.slug, &key, m))?;
        let version = meta.e_tag.clone().or(meta.version.clone());
        let reference = reference_of(&block, &key, &record, version, meta.last_modified, true);
        let stored = (record.format == RecordFormat::Prefect2).then_some(raw);
        Ok(LoadedResult { record, value, reference, stored })
    }

    /// The value of a loaded result as JSON.
    /// Removes every layer the service can (see [`serializer::decode_value`]); `corrupt`
    /// says what broken bytes mean where they were found (a bad request, or data loss).
    fn decode(
        &self,
        config: &SerializerConfig,
        data: &Bytes,
        corrupt: impl FnOnce(String) -> Error,
    ) -> Result<serializer::DecodedValue> {
        serializer::decode_value(config, data, self.max_result_size).map_err(|e| match e {
            DecodeError::Corrupt(m) => corrupt(m),
            DecodeError::TooLarge { size, limit } => decompressed_too_large(size, limit),
        })
    }

    /// The value of serializer bytes a client sent, for a write: bytes that could never
    /// be read back (`what` says whose) are refused before they replace anything. The
    /// bytes themselves passed [`serializer::check_data`]; JSON inside a compressed
    /// serializer is checked here, once it is out.
    fn decode_written(&self, config: &SerializerConfig, data: &Bytes, what: &str) -> Result<serializer::DecodedValue> {
        let cannot = |m: String| Error::InvalidRequest(format!("{what} cannot be read back: {m}"));
        let value = self.decode(config, data, cannot)?;
        if value.kind == serializer::ValueKind::Json
            && !matches!(config.kind()?, serializer::SerializerKind::Json { .. })
            && let Err(e) = serializer::json_check::check_json(&value.bytes)
        {
            return Err(cannot(format!("the JSON text inside is not JSON ({e})")));
        }
        Ok(value)
    }

    /// The object as stored (see [`LoadedResult::stored_object`]).
    pub fn stored_object(&self, result: &LoadedResult) -> Result<Bytes> {
        result.stored_object().ok_or_else(|| {
            Error::CannotTranscode(format!(
                "`{}` in `{}` holds serializer bytes that are not UTF-8, which a Prefect 3 record cannot hold; \
                 read its serializer bytes without `as_stored`",
                result.reference.key, result.reference.block
            ))
        })
    }

    /// The value as JSON. Building it from a pickle takes at most `max_result_size` bytes
    /// of memory (and work in proportion); a pickle that would expand further is
    /// RESOURCE_EXHAUSTED at once.
    pub fn to_json(&self, result: &LoadedResult) -> Result<Bytes> {
        let max_bytes = usize::try_from(self.max_result_size).unwrap_or(usize::MAX);
        serializer::to_json(&result.value, max_bytes).map_err(|e| match e {
            TranscodeError::Unsupported(m) => Error::CannotTranscode(m),
            e @ TranscodeError::Corrupt(_) => Error::corrupt_because(&result.reference.block, &result.reference.key, e),
            TranscodeError::TooLarge { limit } => Error::ExpandsTooFar { limit: limit as u64 },
        })
    }

    /// Whether `key` holds a stored result.
    pub async fn exists(&self, block: &str, key: &str, access: &Access) -> Result<bool> {
        let block = self.block_for(block, access, Operation::Read)?;
        validate_key(key)?;
        let path = object_path(key)?;
        match block.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => match (&block.metadata_store, block.format) {
                // A split write between its document and its move is readable already.
                (Some(meta_store), BlockFormat::Split) => {
                    let document = self.objects.get_optional(&block, meta_store.as_ref(), &path, key).await?;
                    match document.as_deref().and_then(split::payload_sha256) {
                        Some(sha) => Ok(self.split().split_payload_path(&block, key, &sha).await? != path),
                        None => Ok(false),
                    }
                }
                _ => Ok(false),
            },
            Err(e) => Err(block.storage_error(key, e)),
        }
    }

    /// Deletes a stored result (and its metadata document); `NotFound` when there is none.
    pub async fn delete(&self, block: &str, key: &str, access: &Access) -> Result<()> {
        let block = self.block_for(block, access, Operation::Delete)?;
        validate_key(key)?;
        let _lock = self.writes.lock(&block.slug, key).await;
        self.delete_locked(&block, key).await
    }

    /// [`Self::delete`] of a checked key whose write lock the caller holds (a bulk delete
    /// and the expiry sweep delete through here too).
    pub(crate) async fn delete_locked(&self, block: &Arc<Block>, key: &str) -> Result<()> {
        let path = object_path(key)?;
        let map = |e| block.storage_error(key, e);
        if let (Some(meta_store), BlockFormat::Split) = (&block.metadata_store, block.format) {
            self.cache.invalidate(&block.cache_key(key)).await;
            return self.split().delete_split(block, meta_store, key).await;
        }
        block.store.head(&path).await.map_err(map)?;
        self.cache.invalidate(&block.cache_key(key)).await;
        block.store.delete(&path).await.map_err(map)?;
        if let Some(meta) = &block.metadata_store {
            match meta.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map(e)),
            }
        }
        Ok(())
    }

    /// Keys starting with `prefix` (any string, not only whole segments), in
    /// lexicographic order, `page_size` at a time after `page_token`.
    pub async fn list(
        &self,
        block: &str,
        prefix: &str,
        page_size: usize,
        page_token: &str,
        access: &Access,
    ) -> Result<ListPage> {
        let block = self.block_for(block, access, Operation::Read)?;
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let dir_path = listing_dir(prefix)?;
        if !page_token.is_empty() {
            validate_key(page_token)?;
        }
        block.check_root()?;
        let mut stream = if page_token.is_empty() {
            block.store.list(dir_path.as_ref())
        } else {
            block.store.list_with_offset(dir_path.as_ref(), &object_path(page_token)?)
        };
        // Stores do not promise an order: keep the `page_size + 1` smallest keys seen.
        let mut heap: BinaryHeap<OrdMeta> = BinaryHeap::new();
        while let Some(meta) = stream.try_next().await.map_err(|e| block.storage_error(prefix, e))? {
            let key = meta.location.as_ref();
            let reserved = crate::config::keys::is_reserved(key);
            if reserved || !key.starts_with(prefix) || (!page_token.is_empty() && key <= page_token) {
                continue;
            }
            heap.push(OrdMeta(meta));
            if heap.len() > page_size + 1 {
                heap.pop();
            }
        }
        let mut entries: Vec<_> = heap.into_sorted_vec().into_iter().map(|m| m.0).collect();
        let next_page_token = if entries.len() > page_size {
            entries.truncate(page_size);
            entries.last().map(|m| m.location.to_string())
        } else {
            None
        };
        Ok(ListPage { entries, next_page_token })
    }
}

/// Orders listed objects by key.
struct OrdMeta(object_store::ObjectMeta);

impl PartialEq for OrdMeta {
    fn eq(&self, other: &Self) -> bool {
        self.0.location == other.0.location
    }
}
impl Eq for OrdMeta {}
impl PartialOrd for OrdMeta {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdMeta {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.location.as_ref().cmp(other.0.location.as_ref())
    }
}

/// A reference as Prefect's API stores it.
enum PrefectDocument {
    Literal(LiteralValue),
    Reference { storage_key: String, serializer: Option<SerializerConfig>, expiration: Option<DateTime<Utc>> },
}

/// Reads a Prefect 3 `ResultRecordMetadata` document or a Prefect 2 result document.
fn parse_prefect_document(text: &str) -> Result<PrefectDocument> {
    let bad = |m: &str| Error::InvalidRequest(format!("the Prefect document {m}"));
    let doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad(&format!("is not a JSON object ({e})")))?;
    if doc.get("type").and_then(|t| t.as_str()) == Some("literal") {
        return match doc.get("value") {
            Some(serde_json::Value::Bool(true)) => Ok(PrefectDocument::Literal(LiteralValue::True)),
            Some(serde_json::Value::Bool(false)) => Ok(PrefectDocument::Literal(LiteralValue::False)),
            Some(serde_json::Value::Null) | None => Ok(PrefectDocument::Literal(LiteralValue::Null)),
            Some(_) => Err(bad("is a literal whose value is not true, false or null")),
        };
    }
    let storage_key =
        doc.get("storage_key").and_then(|k| k.as_str()).ok_or_else(|| bad("has no `storage_key`"))?.to_owned();
    let serializer = match (doc.get("serializer"), doc.get("serializer_type")) {
        (Some(v), _) => Some(SerializerConfig::from_value(v.clone())?),
        (None, Some(serde_json::Value::String(t))) => Some(SerializerConfig::from_type(t)?),
        _ => None,
    };
    let expiration = match doc.get("expiration") {
        Some(serde_json::Value::String(s)) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| bad(&format!("has an expiration that is not a time ({e})")))?
                .with_timezone(&Utc),
        ),
        _ => None,
    };
    Ok(PrefectDocument::Reference { storage_key, serializer, expiration })
}
