//! Storage blocks: slug → object store, built once from the config.
//!
//! Each block owns an `object_store` store (wrapped in a [`CountingStore`] so storage
//! operations are counted per block), optionally a second store for metadata documents,
//! the format it writes, and the serializer assumed for bare payloads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::limit::LimitStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, RetryConfig,
};

use crate::config::keys::RESERVED_METADATA_PREFIX;
use crate::config::keys::{BlockType, parse_slug};
use crate::config::{BlockConfig, BlockFormat, Config};
use crate::error::{Error, Result};
use crate::formats::serializer::SerializerConfig;
use crate::storage::cache::CacheKey;
use crate::storage::confined::ConfinedLocal;
use crate::storage::legacy_keys::LegacyKeyStore;
use crate::telemetry::{Outcome, StorageCounters, StorageOp};

/// One configured block.
#[derive(Debug)]
pub struct Block {
    /// Canonical slug, e.g. `local-file-system/default`.
    pub slug: String,
    /// The slug again, shared by every cache key of this block (no allocation per request).
    cache_name: Arc<str>,
    pub block_type: BlockType,
    pub format: BlockFormat,
    pub store: Arc<dyn ObjectStore>,
    pub metadata_store: Option<Arc<dyn ObjectStore>>,
    /// The configured URL, for display (never holds credentials: those live in `options`).
    pub url: String,
    /// Serializer assumed for bare payloads when the request names none.
    pub default_serializer: SerializerConfig,
    /// Absolute root of a local block, to map Prefect's absolute `storage_key`s back to keys.
    pub(crate) local_root: Option<PathBuf>,
    pub counters: Arc<StorageCounters>,
    /// Its expiry sweeps, for metrics.
    pub sweeps: Arc<crate::telemetry::SweepCounters>,
    /// What the block was built from: a reload keeps a block whose config and server
    /// default serializer did not change (its connections, counters, and a memory
    /// block's contents).
    built_from: (BlockConfig, SerializerConfig),
}

impl Block {
    /// The block's config as written.
    pub fn config(&self) -> &BlockConfig {
        &self.built_from.0
    }

    /// The cache key of `key` in this block.
    pub fn cache_key(&self, key: impl Into<String>) -> CacheKey {
        CacheKey { block: self.cache_name.clone(), key: key.into() }
    }

    /// The error of a storage call on `key` ([`Error::from_store`]), except when a local
    /// block's root folder is gone or is not a folder: then every key fails, which is an
    /// outage of the block, not the caller's mistake.
    pub fn storage_error(&self, key: &str, err: object_store::Error) -> Error {
        if let Err(e) = self.check_root() {
            return e;
        }
        Error::from_store(&self.slug, key, err)
    }

    /// Whether a local block's root is still a folder (UNAVAILABLE if not, so a listing of
    /// a broken block fails as its reads and writes do, instead of looking empty).
    pub fn check_root(&self) -> Result<()> {
        match &self.local_root {
            Some(root) if !root.is_dir() => {
                tracing::error!(block = self.slug, root = %root.display(), "the block's root is missing or not a folder");
                Err(Error::StorageUnavailable {
                    block: self.slug.clone(),
                    reason: "its root folder is missing or not a folder (the server's log names it)".into(),
                    cause: None,
                })
            }
            _ => Ok(()),
        }
    }

    /// The full storage URI of a key.
    pub fn uri(&self, key: &str) -> String {
        match &self.local_root {
            Some(root) => format!("file://{}/{key}", root.display()),
            None => format!("{}/{key}", self.url.trim_end_matches('/')),
        }
    }

    /// Maps a `storage_key` from a Prefect document to a key of this block. Prefect
    /// records absolute paths for unsaved local blocks: such a path must lie under this
    /// block's root, and anything else is refused rather than read from elsewhere.
    pub fn key_from_storage_key(&self, storage_key: &str) -> Result<String> {
        if !storage_key.starts_with('/') {
            return Ok(storage_key.to_owned());
        }
        if let Some(root) = &self.local_root
            && let Ok(rest) = std::path::Path::new(storage_key).strip_prefix(root)
            && let Some(rest) = rest.to_str()
            && !rest.is_empty()
        {
            return Ok(rest.to_owned());
        }
        Err(Error::InvalidKey {
            key: storage_key.to_owned(),
            reason: format!("the absolute storage_key points outside block `{}` ({})", self.slug, self.url),
        })
    }
}

/// All blocks, by canonical slug.
#[derive(Debug)]
pub struct BlockRegistry {
    blocks: BTreeMap<String, Arc<Block>>,
    default: String,
}

impl BlockRegistry {
    /// Builds every block of `config`; local block folders are created.
    pub fn from_config(config: &Config) -> Result<Self> {
        Self::rebuilt(config, None)
    }

    /// Builds the blocks of `config`, keeping those of `previous` that did not change.
    pub fn rebuilt(config: &Config, previous: Option<&BlockRegistry>) -> Result<Self> {
        let mut blocks = BTreeMap::new();
        let server_default = SerializerConfig::from_type(&config.default_serializer)
            .map_err(|e| Error::Config(format!("default_serializer: {e}")))?;
        for (slug, bc) in &config.blocks {
            let (slug, block_type) = parse_slug(slug).map_err(|e| Error::Config(e.to_string()))?;
            let kept = previous
                .and_then(|p| p.blocks.get(&slug))
                .filter(|b| b.built_from.0 == *bc && b.built_from.1 == server_default);
            let block = match kept {
                Some(b) => b.clone(),
                None => Arc::new(build_block(&slug, block_type, bc, &server_default)?),
            };
            blocks.insert(slug, block);
        }
        let (default, _) = parse_slug(&config.default_block).map_err(|e| Error::Config(e.to_string()))?;
        Ok(BlockRegistry { blocks, default })
    }

    /// The block of `slug` (aliases allowed); the default block when `slug` is empty.
    pub fn get(&self, slug: &str) -> Result<Arc<Block>> {
        if slug.is_empty() {
            return Ok(self.default_block());
        }
        // Requests usually carry the canonical slug (references always do): look it up as
        // it is, and parse only aliases and unknown or malformed slugs.
        if let Some(block) = self.blocks.get(slug) {
            return Ok(block.clone());
        }
        let (canonical, _) = parse_slug(slug)?;
        self.blocks.get(&canonical).cloned().ok_or_else(|| Error::UnknownBlock {
            block: slug.to_owned(),
            known: self.blocks.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    pub fn default_block(&self) -> Arc<Block> {
        // `Config::validate` guarantees the default block exists.
        self.blocks[&self.default].clone()
    }

    pub fn default_slug(&self) -> &str {
        &self.default
    }

    /// Whether every block of `previous` is here, unchanged (the very same block).
    pub fn keeps_all_of(&self, previous: &BlockRegistry) -> bool {
        previous.blocks.iter().all(|(slug, b)| self.blocks.get(slug).is_some_and(|n| Arc::ptr_eq(n, b)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Block>> {
        self.blocks.values()
    }
}

fn build_block(
    slug: &str,
    block_type: BlockType,
    bc: &BlockConfig,
    server_default: &SerializerConfig,
) -> Result<Block> {
    let counters = Arc::new(StorageCounters::default());
    let (store, local_root) = open_store(slug, block_type, &bc.url, bc, &counters)?;
    let metadata_store: Option<Arc<dyn ObjectStore>> = match (&bc.metadata_url, bc.format) {
        (Some(url), _) => Some(open_store(slug, block_type, url, bc, &counters)?.0),
        (None, BlockFormat::Split) => Some(Arc::new(PrefixStore::new(store.clone(), RESERVED_METADATA_PREFIX))),
        (None, BlockFormat::Prefect3) => None,
    };
    let default_serializer = match &bc.default_serializer {
        Some(ty) => SerializerConfig::from_type(ty).map_err(|e| Error::Config(format!("block `{slug}`: {e}")))?,
        None => server_default.clone(),
    };
    Ok(Block {
        slug: slug.to_owned(),
        cache_name: slug.into(),
        block_type,
        format: bc.format,
        store,
        metadata_store,
        url: bc.url.clone(),
        default_serializer,
        local_root,
        counters,
        sweeps: Arc::default(),
        built_from: (bc.clone(), server_default.clone()),
    })
}

/// Opens the object store behind `url` (a local one never follows a symbolic link:
/// [`ConfinedLocal`]): counted, limited to the block's
/// `max_concurrent_requests`, and reading pre-0.2 object names ([`LegacyKeyStore`]).
fn open_store(
    slug: &str,
    block_type: BlockType,
    url: &str,
    bc: &BlockConfig,
    counters: &Arc<StorageCounters>,
) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>)> {
    let config_err = |e: &dyn fmt::Display| Error::Config(format!("block `{slug}`: {e}"));
    let (inner, root): (Arc<dyn ObjectStore>, Option<PathBuf>) = match block_type {
        BlockType::LocalFileSystem => {
            let path = url.strip_prefix("file://").unwrap_or(url);
            let path = PathBuf::from(if path.is_empty() { "." } else { path });
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir().map_err(|e| Error::Config(e.to_string()))?.join(path)
            };
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::Config(format!("block `{slug}`: cannot create {}: {e}", path.display())))?;
            let path =
                path.canonicalize().map_err(|e| Error::Config(format!("block `{slug}`: {}: {e}", path.display())))?;
            let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| config_err(&e))?;
            (Arc::new(ConfinedLocal::new(Arc::new(store), path.clone())), Some(path))
        }
        BlockType::Memory => (Arc::new(InMemory::new()), None),
        cloud => (open_cloud_store(slug, cloud, url, bc)?, None),
    };
    let limited: Arc<dyn ObjectStore> = Arc::new(LimitStore::new(inner, bc.max_concurrent_requests));
    let counted: Arc<dyn ObjectStore> = Arc::new(CountingStore { inner: limited, counters: counters.clone() });
    Ok((Arc::new(LegacyKeyStore::new(counted)), root))
}

/// A cloud store from object_store's own builders: credentials and settings from the
/// process environment first (`from_env`), then the block's `options` by object_store's
/// option names, with the block's timeouts and retry policy. The URL's path becomes a
/// prefix every key lives under.
fn open_cloud_store(slug: &str, block_type: BlockType, url: &str, bc: &BlockConfig) -> Result<Arc<dyn ObjectStore>> {
    let config_err = |e: &dyn fmt::Display| Error::Config(format!("block `{slug}`: {e}"));
    let parsed = url::Url::parse(url).map_err(|e| config_err(&format!("url `{url}`: {e}")))?;
    let client = ClientOptions::new().with_timeout(bc.request_timeout).with_connect_timeout(bc.connect_timeout);
    let retry = RetryConfig {
        backoff: BackoffConfig { init_backoff: bc.retry.initial_backoff, max_backoff: bc.retry.max_backoff, base: 2.0 },
        max_retries: bc.retry.max_retries,
        retry_timeout: bc.retry.retry_timeout,
    };
    fn key_of<K: std::str::FromStr>(slug: &str, k: &str) -> Result<K> {
        k.parse::<K>().map_err(|_| {
            Error::Config(format!("block `{slug}`: `{k}` is not an object_store option of this block type"))
        })
    }
    let store: Arc<dyn ObjectStore> = match block_type {
        BlockType::S3Bucket => {
            let mut b = AmazonS3Builder::from_env().with_client_options(client).with_retry(retry).with_url(url);
            for (k, v) in &bc.options {
                b = b.with_config(key_of::<AmazonS3ConfigKey>(slug, k)?, v);
            }
            Arc::new(b.build().map_err(|e| config_err(&e))?)
        }
        BlockType::AzureBlobStorageContainer => {
            let mut b = MicrosoftAzureBuilder::from_env().with_client_options(client).with_retry(retry).with_url(url);
            for (k, v) in &bc.options {
                b = b.with_config(key_of::<AzureConfigKey>(slug, k)?, v);
            }
            Arc::new(b.build().map_err(|e| config_err(&e))?)
        }
        BlockType::GcsBucket => {
            let mut b =
                GoogleCloudStorageBuilder::from_env().with_client_options(client).with_retry(retry).with_url(url);
            for (k, v) in &bc.options {
                b = b.with_config(key_of::<GoogleConfigKey>(slug, k)?, v);
            }
            Arc::new(b.build().map_err(|e| config_err(&e))?)
        }
        BlockType::LocalFileSystem | BlockType::Memory => unreachable!("not a cloud block type"),
    };
    let prefix = parsed.path().trim_matches('/');
    Ok(if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) })
}

/// An `ObjectStore` that counts every operation, by kind, into its block's counters.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<StorageCounters>,
}

fn outcome_of<T>(r: &object_store::Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(object_store::Error::NotFound { .. }) => Outcome::NotFound,
        Err(_) => Outcome::Failed,
    }
}

impl CountingStore {
    /// Runs one storage call, counting its outcome and latency.
    async fn counted<T>(
        &self,
        op: StorageOp,
        call: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        let started = Instant::now();
        let r = call.await;
        self.counters.record(op, outcome_of(&r), started.elapsed());
        r
    }

    /// Counts a listing once, when it ends: failed if any item was an error.
    fn counted_list(
        &self,
        stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let counters = self.counters.clone();
        let started = Instant::now();
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = failed.clone();
        stream
            .inspect(move |item| {
                if item.is_err() {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .map(Some)
            .chain(futures::stream::once(async move {
                let outcome =
                    if failed.load(std::sync::atomic::Ordering::Relaxed) { Outcome::Failed } else { Outcome::Ok };
                counters.record(StorageOp::List, outcome, started.elapsed());
                None
            }))
            .filter_map(futures::future::ready)
            .boxed()
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.counted(StorageOp::Put, self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.counted(StorageOp::Put, self.inner.put_multipart_opts(location, opts)).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let op = if options.head { StorageOp::Head } else { StorageOp::Get };
        self.counted(op, self.inner.get_opts(location, options)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = self.counters.clone();
        let started = Instant::now();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| counters.record(StorageOp::Delete, outcome_of(r), started.elapsed()))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counted_list(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counted_list(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.counted(StorageOp::List, self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.counted(StorageOp::Copy, self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        // Counted as the copy it is on most stores (a local rename is cheaper still).
        self.counted(StorageOp::Copy, self.inner.rename_opts(from, to, options)).await
    }
}
