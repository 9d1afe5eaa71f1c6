//! Local blocks never follow a symbolic link.
//!
//! object_store's `LocalFileSystem` follows links as any program does: a link planted in
//! a block's folder (by anyone who can write there) would let Resolve, Get, Exists, Put
//! and Delete read, write and delete files outside the block, and List walk `/etc`; a
//! link loop made List fail for the whole block. This decorator of a local block's store
//! keeps every operation inside the root:
//! - before any call on a key, each part of its path that exists is checked with
//!   `lstat`; one that is a link fails the call (FAILED_PRECONDITION through
//!   [`ThroughSymlink`]), so nothing is read, written or deleted through it;
//! - listings walk the folder without following links, skipping them (a loop is then
//!   just a link, skipped), on a blocking thread that hands entries over a bounded
//!   channel, so memory stays small whatever the block's size.
//!
//! A link swapped in between the check and the call can still be followed (the check is
//! not atomic with the open); closing that gap needs `openat2(RESOLVE_BENEATH)` for every
//! file operation, which would mean writing our own local store.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};
use tokio::sync::mpsc;

use crate::error::ThroughSymlink;
use tokio_stream::wrappers::ReceiverStream;

/// A local block's store that never follows a symbolic link (see the module docs).
#[derive(Debug)]
pub struct ConfinedLocal {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
}

impl ConfinedLocal {
    /// `root` is the canonical folder `inner` is rooted at.
    pub fn new(inner: Arc<dyn ObjectStore>, root: PathBuf) -> Self {
        ConfinedLocal { inner, root }
    }

    /// Fails when a part of `location` that exists is a symbolic link.
    fn check(&self, location: &Path) -> object_store::Result<()> {
        let mut path = self.root.clone();
        for part in location.parts() {
            path.push(part.as_ref());
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(ThroughSymlink(location.to_string())),
                    });
                }
                Ok(_) => {}
                // The rest does not exist yet: a write creates it as folders and a file.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Every file under `prefix` (and after `offset`), walked without following links.
    fn walk(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = self.root.clone();
        let start =
            prefix.map_or_else(|| root.clone(), |p| p.parts().fold(root.clone(), |d, part| d.join(part.as_ref())));
        let offset = offset.map(|o| o.as_ref().to_owned());
        let (tx, rx) = mpsc::channel(256);
        tokio::task::spawn_blocking(move || {
            for entry in walkdir::WalkDir::new(&start).follow_links(false).min_depth(1) {
                let entry = match entry {
                    Ok(e) => e,
                    // Gone while walked, or the prefix does not exist: nothing to list there.
                    Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(e),
                        }));
                        return;
                    }
                };
                if !entry.file_type().is_file() {
                    continue; // folders are walked into; links are skipped, never followed
                }
                let Some(meta) = object_meta(&root, &entry) else { continue };
                if offset.as_deref().is_some_and(|o| meta.location.as_ref() <= o) {
                    continue;
                }
                if tx.blocking_send(Ok(meta)).is_err() {
                    return; // the listing was dropped
                }
            }
        });
        ReceiverStream::new(rx).boxed()
    }
}

/// Removes object_store's staged writes (`NAME#N`) under `root` whose file was last
/// written more than `age` ago: what a crash or kill left of an upload (a live upload
/// writes more often than that, or its stream's idle limit ends it). Links are not
/// followed. Returns how many were removed.
pub fn remove_stale_uploads(root: &std::path::Path, age: std::time::Duration) -> usize {
    let Some(before) = std::time::SystemTime::now().checked_sub(age) else { return 0 };
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && is_staged_upload(&e.file_name().to_string_lossy()))
        .filter(|e| e.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < before))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Whether a file name is object_store's staging of a write: `NAME#N`.
fn is_staged_upload(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The listed form of a file, as object_store's local store gives it (the same e-tag
/// as its reads, so List and Get agree on versions); `None` for what is not a result:
/// a name that is not UTF-8 or not a key, or a write being staged (`NAME#N`).
fn object_meta(root: &std::path::Path, entry: &walkdir::DirEntry) -> Option<ObjectMeta> {
    let relative = entry.path().strip_prefix(root).ok()?;
    let parts: Vec<&str> = relative.components().map(|c| c.as_os_str().to_str()).collect::<Option<_>>()?;
    let name = parts.last()?;
    if is_staged_upload(name) {
        return None;
    }
    let location = Path::parse(parts.join("/")).ok()?;
    let metadata = entry.metadata().ok()?;
    let modified = metadata.modified().ok()?;
    let mtime = modified.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    let size = metadata.len();
    Some(ObjectMeta {
        location,
        last_modified: modified.into(),
        size,
        e_tag: Some(format!("\"{inode:x}-{mtime:x}-{size:x}\"")),
        version: None,
    })
}

impl fmt::Display for ConfinedLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ConfinedLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let checker = ConfinedLocal { inner: self.inner.clone(), root: self.root.clone() };
        let checked = locations.map(move |l| l.and_then(|path| checker.check(&path).map(|()| path))).boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.walk(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.walk(prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        // One level, by read_dir: no link is followed into. (The service lists with `list`.)
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    /// A rename (atomic on local files), then the folders it emptied above `from` removed
    /// when `from` was staged under the reserved prefix (staged split payloads live in
    /// one folder per digest; left behind, they would pile up).
    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await?;
        let mut parts = from.parts();
        if parts.next().is_some_and(|p| p.as_ref() == crate::config::keys::RESERVED_STAGING_PREFIX) {
            let staging = self.root.join(crate::config::keys::RESERVED_STAGING_PREFIX);
            let mut folder = self.root.join(from.as_ref());
            while folder.pop() && folder.starts_with(&staging) && folder != staging {
                // Fails (and stops) at the first folder that still holds something.
                if std::fs::remove_dir(&folder).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}
