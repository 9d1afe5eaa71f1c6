//! Where a key's result lies in its block's object store: the object name is the key as
//! written (checked first by [`crate::config::keys::validate_key`]), and results written
//! before 0.2 lie under a percent-encoded name that is still read.

use object_store::path::Path;

use crate::config::keys::KeyError;
use crate::error::Result;

/// The object name of a key: the key exactly as written, as Prefect's `LocalFileSystem`,
/// `S3Bucket`, `AzureBlobStorageContainer` and `GcsBucket` blocks store it (object_store
/// escapes it on the wire; local files are named by its bytes). `Path::from` would
/// percent-encode characters such as `é`, `[`, `%` or `~` into another name that nobody
/// else looks under (see [`legacy_object_path`]).
pub fn object_path(key: &str) -> Result<Path> {
    Path::parse(key).map_err(|e| KeyError::invalid_key(key, format!("not an object name ({e})")).into())
}

/// The name versions before 0.2 stored `path`'s key under (object_store's `Path::from`,
/// which percent-encodes non-ASCII letters and `%`, `[`, `]`, `~`, `*`, `?`, ...), when it
/// differs: such results are still read (and deleted) there.
/// The directory a listing of keys under `prefix` starts from (object_store lists whole
/// path segments: the caller filters the rest of the prefix), after refusing prefixes no
/// key can have. `None`: the block's root.
pub fn listing_dir(prefix: &str) -> Result<Option<Path>> {
    if prefix.chars().any(char::is_control) || prefix.starts_with('/') || prefix.contains("..") {
        return Err(crate::error::Error::InvalidKey {
            key: prefix.to_owned(),
            reason: "not a valid key prefix".into(),
        });
    }
    let dir = prefix.rfind('/').map(|i| &prefix[..i]).filter(|d| !d.is_empty());
    dir.map(object_path).transpose()
}

pub fn legacy_object_path(path: &Path) -> Option<Path> {
    let legacy = Path::from(path.as_ref());
    (legacy != *path).then_some(legacy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::validate_key;

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
