//! Validation of block slugs and result keys.
//!
//! Keys come from clients and from documents stored by others, and become object-store
//! paths, so they are checked before any storage call: a key can never leave its block
//! (no `..`, no absolute path), and never names something a person could not type.

use object_store::path::Path;

use crate::error::{Error, Result};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The prefix under which `split` blocks without a `metadata_url` keep their metadata
/// documents; no key may start with it.
pub const RESERVED_METADATA_PREFIX: &str = ".resultstore-metadata";

/// The prefix under which streamed create-only uploads are staged before they are moved to
/// their key (see `stream`); no key may start with it.
pub const RESERVED_STAGING_PREFIX: &str = ".resultstore-staging";

/// Whether `key` lies under a prefix reserved for the service's own objects.
pub fn is_reserved(key: &str) -> bool {
    matches!(key.split('/').next(), Some(RESERVED_METADATA_PREFIX | RESERVED_STAGING_PREFIX))
}

/// Longest block name (the part after the `/`), in bytes.
pub const MAX_BLOCK_NAME_LEN: usize = 128;

/// The storage block types, with Prefect's slugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockType {
    LocalFileSystem,
    Memory,
    S3Bucket,
    GcsBucket,
    AzureBlobStorageContainer,
}

impl BlockType {
    /// Parses a block type or one of its aliases (`s3`, `gcs`, `azure`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "local-file-system" => BlockType::LocalFileSystem,
            "memory" => BlockType::Memory,
            "s3-bucket" | "s3" => BlockType::S3Bucket,
            "gcs-bucket" | "gcs" => BlockType::GcsBucket,
            "azure-blob-storage-container" | "azure" => BlockType::AzureBlobStorageContainer,
            _ => return None,
        })
    }

    /// Prefect's canonical slug for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockType::LocalFileSystem => "local-file-system",
            BlockType::Memory => "memory",
            BlockType::S3Bucket => "s3-bucket",
            BlockType::GcsBucket => "gcs-bucket",
            BlockType::AzureBlobStorageContainer => "azure-blob-storage-container",
        }
    }
}

/// Checks a slug and returns its canonical form (aliases replaced) and type.
pub fn parse_slug(slug: &str) -> Result<(String, BlockType)> {
    let bad = |reason: &str| Error::InvalidSlug { slug: slug.to_owned(), reason: reason.to_owned() };
    let (ty, name) = slug
        .split_once('/')
        .ok_or_else(|| bad("expected `block-type/block-name`, e.g. `local-file-system/default`"))?;
    let block_type = BlockType::parse(ty).ok_or_else(|| {
        bad("unknown block type; known: local-file-system, memory, s3-bucket (s3), gcs-bucket (gcs), \
             azure-blob-storage-container (azure)")
    })?;
    if name.is_empty() || name.len() > MAX_BLOCK_NAME_LEN {
        return Err(bad("the block name must be 1 to 128 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) || name.starts_with('.') {
        return Err(bad(
            "the block name may hold only ASCII letters, digits, `-`, `_` and `.`, and must not start with `.`",
        ));
    }
    Ok((format!("{}/{name}", block_type.as_str()), block_type))
}

/// Checks a result key: non-empty, at most [`MAX_KEY_LEN`] bytes, relative, no empty,
/// `.` or `..` segment nor one over [`MAX_SEGMENT_LEN`] bytes, no backslash, `#` or
/// control character, and not under the reserved prefixes. Every other character is
/// kept as written ([`object_path`]): letters of any script, spaces and
/// `[]%~*?!@$&+=,;'` are what Prefect's `result_storage_key` templates make of parameters.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::InvalidKey { key: truncate_for_message(key), reason: reason.to_owned() });
    if key.is_empty() {
        return bad("the key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("the key is longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return bad("the key holds a control character");
    }
    if key.starts_with('/') {
        return bad("the key is an absolute path; keys are relative to their block");
    }
    if key.contains('\\') {
        return bad("the key holds a backslash; use `/` between segments");
    }
    if key.contains('#') {
        // object_store's local files stage uploads as `key#N` and hide such names from
        // reads and listings: a result stored under one could never be read back. Refused
        // everywhere, so keys stay portable between block types.
        return bad("the key holds `#`, which is reserved");
    }
    if is_reserved(key) {
        return bad("the key starts with `.resultstore-metadata` or `.resultstore-staging`, which are reserved");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("the key has an empty segment (`//` or a trailing `/`)"),
            "." | ".." => {
                return bad("the key has a `.` or `..` segment, which could leave its block");
            }
            s if s.len() > MAX_SEGMENT_LEN => {
                return bad("a segment of the key (between `/`) is longer than 240 bytes, which files cannot be named");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Longest segment of a key (between `/`), in bytes: local filesystems name files with
/// at most 255 bytes, and object_store's local files stage a write as `NAME#N` beside
/// its target, so a key works in every block type.
pub const MAX_SEGMENT_LEN: usize = 240;

/// The object name of a key: the key exactly as written, as Prefect's `LocalFileSystem`,
/// `S3Bucket`, `AzureBlobStorageContainer` and `GcsBucket` blocks store it (object_store
/// escapes it on the wire; local files are named by its bytes). `Path::from` would
/// percent-encode characters such as `é`, `[`, `%` or `~` into another name that nobody
/// else looks under (see [`legacy_object_path`]).
pub fn object_path(key: &str) -> Result<Path> {
    Path::parse(key)
        .map_err(|e| Error::InvalidKey { key: truncate_for_message(key), reason: format!("not an object name ({e})") })
}

/// The name versions before 0.2 stored `path`'s key under (object_store's `Path::from`,
/// which percent-encodes non-ASCII letters and `%`, `[`, `]`, `~`, `*`, `?`, ...), when it
/// differs: such results are still read (and deleted) there.
pub fn legacy_object_path(path: &Path) -> Option<Path> {
    let legacy = Path::from(path.as_ref());
    (legacy != *path).then_some(legacy)
}

/// Keys are echoed in error messages; a hostile one is cut to a readable length.
fn truncate_for_message(key: &str) -> String {
    if key.len() <= 120 {
        return key.to_owned();
    }
    let mut end = 120;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &key[..end], key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_canonicalise_aliases() {
        assert_eq!(parse_slug("s3/prod").unwrap().0, "s3-bucket/prod");
        assert_eq!(parse_slug("local-file-system/default").unwrap().1, BlockType::LocalFileSystem);
        for bad in ["", "nope", "ftp/x", "memory/", "memory/.hidden", "memory/a b", "memory/a/b"] {
            assert!(parse_slug(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_stay_inside_their_block() {
        for ok in ["abc", "custom/run-1/3.json", "fbb7556e3c4711e526284c89a74030f9", "a.b/c..d"] {
            validate_key(ok).unwrap();
        }
        let long = "k".repeat(1025);
        let long_segment = format!("a/{}", "s".repeat(MAX_SEGMENT_LEN + 1));
        validate_key(&format!("a/{}", "s".repeat(MAX_SEGMENT_LEN))).unwrap();
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            ".resultstore-metadata/k",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\nb",
            "a\0b",
            &long,
            &long_segment,
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn object_names_are_the_keys_as_written() {
        for key in ["runs/Zürich.json", "ключ", "結果", "a b/[x]%~*?!@$&+=,;'"] {
            validate_key(key).unwrap();
            assert_eq!(object_path(key).unwrap().as_ref(), key);
            assert!(legacy_object_path(&object_path(key).unwrap()).is_some(), "{key}");
        }
        assert_eq!(legacy_object_path(&object_path("r%C3%A9").unwrap()).unwrap().as_ref(), "r%25C3%25A9");
        assert_eq!(legacy_object_path(&object_path("plain/key-1.json").unwrap()), None);
    }
}
