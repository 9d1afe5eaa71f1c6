//! Reading results that earlier versions stored under percent-encoded names.
//!
//! Up to 0.1 the service named objects with object_store's `Path::from`, which
//! percent-encodes non-ASCII letters and `%`, `[`, `]`, `~`, `*`, `?` and a few more:
//! `résultat` was stored as `r%C3%A9sultat`, where neither Prefect nor a listing's reader
//! looks for it. Keys are now stored as written ([`crate::storage::object_names::object_path`]). So that a
//! result written before the change still reads, this decorator of a block's store looks
//! under the old name when the key's own name holds nothing:
//! - a read or head (`get_opts`) that finds nothing at the key tries the old name: one
//!   more storage call, only for keys whose old name differs and only on a miss;
//! - a delete removes both names, so neither can come back;
//! - writes, copies and listings are untouched: a new write goes to the key's own name
//!   (which reads find first from then on), and a listing shows an old object under its
//!   stored name, which is itself a key that reads it.
//!
//! A block holding no old names pays nothing but a miss's second look.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::storage::object_names::legacy_object_path;

/// A block's store that also finds objects under their pre-0.2 names (see the module docs).
#[derive(Debug)]
pub struct LegacyKeyStore {
    inner: Arc<dyn ObjectStore>,
}

impl LegacyKeyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        LegacyKeyStore { inner }
    }
}

impl fmt::Display for LegacyKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LegacyKeys({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for LegacyKeyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        match self.inner.get_opts(location, options.clone()).await {
            Err(object_store::Error::NotFound { path, source }) => match legacy_object_path(location) {
                Some(legacy) => self.inner.get_opts(&legacy, options).await,
                None => Err(object_store::Error::NotFound { path, source }),
            },
            other => other,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        locations
            .then(move |location| {
                let inner = inner.clone();
                async move {
                    let path = location?;
                    let own = inner.delete(&path).await;
                    let Some(legacy) = legacy_object_path(&path) else {
                        return own.map(|()| path);
                    };
                    use object_store::Error::NotFound;
                    match (own, inner.delete(&legacy).await) {
                        // Deleted under one name or both.
                        (Ok(()), Ok(()) | Err(NotFound { .. })) | (Err(NotFound { .. }), Ok(())) => Ok(path),
                        // Under neither, or a failure: the key's own answer, else the old name's.
                        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        // Renames move the service's staged objects, whose names never had an old form.
        self.inner.rename_opts(from, to, options).await
    }
}
