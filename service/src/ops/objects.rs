//! Whole objects read within the limits, and what every write names.
//!
//! [`ObjectReader`] reads an object in one piece for the cache: refused above
//! `limits.max_result_size` before its bytes are read, and holding its share of the
//! cache's fill budget (`cache.fill_budget`) until the entry made of it is built. The
//! operations ([`crate::ops::store`], [`crate::ops::split`], [`crate::ops::stream`]) all
//! read through it, so the bound holds whichever path a read takes.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::blocks::Block;
use crate::storage::cache::{FillPermit, ResolveCache};

/// Whether a Put may replace an existing result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    #[default]
    Overwrite,
    CreateOnly,
}

/// The lowercase hex sha256 of `data`, as references and split documents name payloads.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An object read whole ([`ObjectReader::fetch`]): its bytes, its metadata, and its share
/// of the cache's fill budget, held until the entry made of it is built.
pub struct Fetched {
    pub data: Bytes,
    pub meta: object_store::ObjectMeta,
    pub fill: FillPermit,
}

/// Reads whole objects within `max_result_size`, filling through the cache's budget.
pub struct ObjectReader {
    cache: Arc<ResolveCache>,
    max_result_size: u64,
}

impl ObjectReader {
    pub fn new(cache: Arc<ResolveCache>, max_result_size: u64) -> Self {
        ObjectReader { cache, max_result_size }
    }

    /// Reads the object at `path` whole to fill the cache: refused above
    /// `max_result_size` before its bytes are read, its share of the fill budget taken
    /// before they are.
    pub async fn fetch(&self, block: &Block, store: &dyn ObjectStore, path: &Path, key: &str) -> Result<Fetched> {
        let got = self.get_checked(block, store, path, key).await?;
        let fill = self.cache.fill_permit(got.meta.size).await;
        let meta = got.meta.clone();
        let data = got.bytes().await.map_err(|e| block.storage_error(key, e))?;
        Ok(Fetched { data, meta, fill })
    }

    /// Starts reading a whole object, refusing objects above `max_result_size` before
    /// their bytes are read.
    pub async fn get_checked(
        &self,
        block: &Block,
        store: &dyn ObjectStore,
        path: &Path,
        key: &str,
    ) -> Result<object_store::GetResult> {
        let got = store.get(path).await.map_err(|e| block.storage_error(key, e))?;
        if got.meta.size > self.max_result_size {
            return Err(Error::TooLarge {
                what: format!(
                    "stored result `{key}` (a record read in one piece; results in split blocks stream past this \
                     limit through GetStream)"
                ),
                size: got.meta.size,
                limit: self.max_result_size,
            });
        }
        Ok(got)
    }

    /// A metadata document (small; read outside the fill budget), or `None` when absent.
    pub async fn get_optional(
        &self,
        block: &Block,
        store: &dyn ObjectStore,
        path: &Path,
        key: &str,
    ) -> Result<Option<Bytes>> {
        match self.get_checked(block, store, path, key).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(|e| block.storage_error(key, e))?)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
