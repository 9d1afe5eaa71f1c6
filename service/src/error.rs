//! The one error type of the service's domain.
//!
//! Every variant is a *semantic* failure a caller can act on, in the style of
//! `object_store::Error`. The gRPC layer maps it to a `tonic::Status` once
//! (`grpc::status_of`); nothing below that layer knows about tonic.
//!
//! The error can be cloned: the cache hands one storage failure to every caller that was
//! waiting on the same fill. So a variant that keeps its cause (a storage failure, a
//! record that does not decode) holds it as a [`Cause`], shared; the message a caller
//! sees is the variant's own text (a local I/O error's text holds the server's paths, so
//! it stays in the cause, for the log).

/// A `Result` with the service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error behind an [`Error`], shared so that the error stays cheap to clone; reached
/// through [`std::error::Error::source`]. Two causes are equal when their texts are.
#[derive(Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(std::sync::Arc::new(err))
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// A local block's refusal of a key whose path passes through a symbolic link (raised by
/// `confined`, folded into [`Error::KeyConflict`] by [`Error::from_store`]).
#[derive(Debug, thiserror::Error)]
#[error("`{0}` passes through a symbolic link, which local blocks never follow")]
pub struct ThroughSymlink(pub String);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The slug is well formed but names no configured block.
    #[error("unknown block `{block}`; this server has: {known}")]
    UnknownBlock { block: String, known: String },

    /// The slug is not `block-type/block-name`.
    #[error("invalid block slug `{slug}`: {reason}")]
    InvalidSlug { slug: String, reason: String },

    /// The call carries no token, or one this server does not know.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// The caller's token does not grant this operation on this block. Decided before any
    /// storage call, so it never tells whether a key exists.
    #[error("{who} may not {operation} in block `{block}`")]
    PermissionDenied { who: String, operation: &'static str, block: String },

    /// More calls are in flight than `limits.max_concurrent_requests` allows: shed, not queued.
    #[error("overloaded: {0}")]
    Overloaded(String),

    /// A call, or a stream's silence, outlasted its limit (`setting` names it).
    #[error("{what} ({setting})")]
    TimedOut { what: String, setting: &'static str },

    /// The server is draining before it stops: retry on another replica or after restart.
    #[error("the server is shutting down; retry the call (another replica, or after the restart)")]
    ShuttingDown,

    /// The key would leave its block, or is not a key at all.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    /// A serializer config the service cannot accept for this operation.
    #[error("invalid serializer: {0}")]
    InvalidSerializer(String),

    /// Result settings that contradict each other.
    #[error("invalid result settings: {0}")]
    InvalidSettings(String),

    /// Any other malformed request field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// No object at that key.
    #[error("no result at key `{key}` in block `{block}`")]
    NotFound { block: String, key: String },

    /// The result's expiration has passed.
    #[error("result `{key}` in block `{block}` expired at {expiration}; set allow_expired to read it anyway")]
    Expired { block: String, key: String, expiration: String },

    /// The result was never written to storage and is no longer in memory.
    #[error(
        "result `{key}` was not persisted (persist_result=false) and is no longer held in this replica's memory; \
         persist results that must be read again (persist_result=true, or retries/cache_key with persistence)"
    )]
    NotPersisted { key: String },

    /// A bare payload (no record around it) whose serializer nobody named and whose bytes
    /// do not tell: not damage, a question for the caller.
    #[error(
        "`{key}` in block `{block}` is a bare payload whose serializer is unknown (neither JSON text nor a \
         base64 pickle); name it in `serializer_hint`"
    )]
    SerializerUnknown { block: String, key: String },

    /// The value cannot be turned into what the caller asked for.
    #[error("cannot transcode the result to JSON: {0}")]
    CannotTranscode(String),

    /// A create-only write met an existing result.
    #[error("key `{key}` in block `{block}` already holds a result and the write mode is create-only")]
    AlreadyExists { block: String, key: String },

    /// A payload or result above a configured limit.
    #[error("{what} is {size} bytes, above the limit of {limit} bytes")]
    TooLarge { what: String, size: u64, limit: u64 },

    /// Transcoding would build more than the limit allows (a pickle sharing one object
    /// many times expands far past its own size).
    #[error(
        "the result's value expands past {limit} bytes when transcoded (limits.max_result_size bounds what a \
         transcode may build); read it raw"
    )]
    ExpandsTooFar { limit: u64 },

    /// The stored bytes are not the ones the reference describes.
    #[error(
        "stored result `{key}` in block `{block}` does not match its reference: sha256 {actual}, expected {expected} \
         (altered or overwritten since the reference was issued)"
    )]
    IntegrityMismatch { block: String, key: String, expected: String, actual: String },

    /// The stored record cannot be decoded.
    #[error("corrupt result `{key}` in block `{block}`: {reason}")]
    CorruptRecord {
        block: String,
        key: String,
        reason: String,
        /// The decoder's own error, when one said why.
        #[source]
        cause: Option<Cause>,
    },

    /// A streamed read met another version of the object than the one it started on.
    #[error(
        "result `{key}` in block `{block}` was overwritten while it was being streamed; discard what was received \
         and read it again"
    )]
    ChangedWhileReading { block: String, key: String },

    /// A streamed upload's bytes are not the ones its header described.
    #[error("the uploaded payload does not match the header: {0}; nothing was stored")]
    UploadMismatch(String),

    /// A streamed upload ended before its payload did (the client went away).
    #[error("the upload stream broke before its end: {0}; nothing was stored")]
    UploadInterrupted(String),

    /// The key conflicts with what storage holds around it (a result where the key needs
    /// a folder, or a folder of results where the key names a result).
    #[error("key `{key}` in block `{block}`: {reason}")]
    KeyConflict { block: String, key: String, reason: &'static str },

    /// The block's storage has no room left.
    #[error("storage of block `{block}` is full; free space (delete results, or grow the volume) and write again")]
    StorageFull { block: String },

    /// The block's storage could not be reached or failed.
    #[error("storage of block `{block}` is unavailable: {reason}")]
    StorageUnavailable {
        block: String,
        reason: String,
        /// The object store's error, when storage raised one.
        #[source]
        cause: Option<Cause>,
    },

    /// The configuration is invalid (only at start and reload).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The server itself stopped with an error (its transport, or its task panicked).
    #[error("the server stopped: {0}")]
    Serve(String),
}

impl From<crate::config::keys::KeyError> for Error {
    fn from(err: crate::config::keys::KeyError) -> Self {
        use crate::config::keys::KeyError as E;
        match err {
            E::InvalidSlug { slug, reason } => Error::InvalidSlug { slug, reason },
            E::InvalidKey { key, reason } => Error::InvalidKey { key, reason },
        }
    }
}

impl From<crate::formats::serializer::SerializerError> for Error {
    /// A request's serializer config or `data` refused: INVALID_ARGUMENT either way, the
    /// config's fault named as such.
    fn from(err: crate::formats::serializer::SerializerError) -> Self {
        use crate::formats::serializer::SerializerError as E;
        match err {
            E::InvalidConfig(reason) => Error::InvalidSerializer(reason),
            other @ E::NotItsOutput { .. } => Error::InvalidRequest(other.to_string()),
            E::CannotWrite(reason) => Error::InvalidRequest(reason),
        }
    }
}

impl Error {
    /// Maps an `object_store` error met while working on `block`/`key`.
    ///
    /// A filesystem reports some client mistakes as I/O errors: a key under a result
    /// (`f/x` where `f` is one), a key that names a folder of results, a name too long.
    /// Those are the caller's to fix (FAILED_PRECONDITION, INVALID_ARGUMENT), not outages
    /// that clients retry and routers fail over on; a full disk is RESOURCE_EXHAUSTED.
    /// Local I/O errors are told by their kind only: their text holds the server's paths,
    /// which go to the log, never to a caller.
    pub fn from_store(block: &str, key: &str, err: object_store::Error) -> Self {
        use std::io::ErrorKind;
        let block = block.to_owned();
        let key = key.to_owned();
        match err {
            object_store::Error::NotFound { .. } => Error::NotFound { block, key },
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                Error::AlreadyExists { block, key }
            }
            object_store::Error::InvalidPath { source } => {
                Error::InvalidKey { key, reason: format!("the block's storage cannot hold this key ({source})") }
            }
            other if caused_by::<ThroughSymlink>(&other) => Error::KeyConflict {
                block,
                key,
                reason: "the key passes through a symbolic link, and local blocks never follow one out of their folder",
            },
            other => match io_error_kind(&other) {
                None => Error::StorageUnavailable { block, reason: other.to_string(), cause: Some(Cause::new(other)) },
                Some(ErrorKind::NotADirectory) => Error::KeyConflict {
                    block,
                    key,
                    reason: "a leading part of the key is a result, so no result can be stored or found under it",
                },
                Some(ErrorKind::IsADirectory | ErrorKind::DirectoryNotEmpty) => Error::KeyConflict {
                    block,
                    key,
                    reason: "the key names a folder that holds results; a result cannot take its place",
                },
                Some(ErrorKind::InvalidFilename) => Error::InvalidKey {
                    key,
                    reason: "a segment of the key is longer than the block's storage can name".into(),
                },
                Some(ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge) => {
                    tracing::error!(block, error = %other, "storage is full");
                    Error::StorageFull { block }
                }
                Some(kind) => {
                    tracing::warn!(block, key, error = %other, "storage failed");
                    Error::StorageUnavailable {
                        block,
                        reason: format!("local storage failed: {kind}"),
                        cause: Some(Cause::new(other)),
                    }
                }
            },
        }
    }

    /// A record decoding failure in `block`/`key`, told by `reason`.
    pub fn corrupt(block: &str, key: &str, reason: impl Into<String>) -> Self {
        Error::CorruptRecord { block: block.to_owned(), key: key.to_owned(), reason: reason.into(), cause: None }
    }

    /// A record decoding failure in `block`/`key`, with the decoder's error as its cause.
    pub fn corrupt_because(block: &str, key: &str, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::CorruptRecord {
            block: block.to_owned(),
            key: key.to_owned(),
            reason: cause.to_string(),
            cause: Some(Cause::new(cause)),
        }
    }
}

/// The first error of type `T` in `err`'s chain of causes.
fn cause<T: std::error::Error + 'static>(err: &object_store::Error) -> Option<&T> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

fn caused_by<T: std::error::Error + 'static>(err: &object_store::Error) -> bool {
    cause::<T>(err).is_some()
}

/// The kind of the I/O error behind a store error (local files), if there is one.
fn io_error_kind(err: &object_store::Error) -> Option<std::io::ErrorKind> {
    cause::<std::io::Error>(err).map(std::io::Error::kind)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn storage_failures_keep_their_cause_and_callers_see_no_paths() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "/srv/secret/path: denied");
        let err = Error::from_store(
            "local-file-system/x",
            "k",
            object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(io) },
        );
        assert!(matches!(err, Error::StorageUnavailable { .. }), "{err:?}");
        assert!(!err.to_string().contains("/srv/secret"), "{err}");
        let cause = err.source().expect("the object store's error is kept");
        assert!(cause.to_string().contains("/srv/secret"), "{cause}");
        assert_eq!(err.clone(), err, "still cheap to clone, and equal to its clone");
    }

    #[test]
    fn decoding_failures_keep_the_decoders_error() {
        let decoder = resultstore_formats::record::ResultRecord::decode_split(b"{", bytes::Bytes::new()).unwrap_err();
        let err = Error::corrupt_because("memory/x", "k", decoder);
        assert!(err.source().is_some_and(|c| c.to_string().contains("does not parse")), "{err:?}");
    }
}
