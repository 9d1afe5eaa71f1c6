//! Validation of block slugs and result keys.
//!
//! Keys come from clients and from documents stored by others, and become object-store
//! paths, so they are checked before any storage call: a key can never leave its block
//! (no `..`, no absolute path), and never names something a person could not type.

/// Why a slug or a key is refused: the caller's to fix (INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The slug is not `block-type/block-name`.
    #[error("invalid block slug `{slug}`: {reason}")]
    InvalidSlug { slug: String, reason: String },
    /// The key would leave its block, or is not a key at all.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
}

impl KeyError {
    /// A refusal of `key` (cut to a readable length in the message).
    pub fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        KeyError::InvalidKey { key: truncate_for_message(key), reason: reason.into() }
    }
}

type Result<T> = std::result::Result<T, KeyError>;

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
    let bad = |reason: &str| KeyError::InvalidSlug { slug: slug.to_owned(), reason: reason.to_owned() };
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
/// kept as written (the service names objects by their keys): letters of any script, spaces and
/// `[]%~*?!@$&+=,;'` are what Prefect's `result_storage_key` templates make of parameters.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &str| Err(KeyError::invalid_key(key, reason));
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
}
