//! The domain's result reference: what Put hands back and reads verify against.

use chrono::{DateTime, Utc};

use crate::record::RecordFormat;
use crate::serializer::SerializerConfig;

/// A self-verifying pointer to a stored (or memory-held) result.
#[derive(Debug, Clone)]
pub struct ResultReference {
    pub block: String,
    pub key: String,
    pub serializer: SerializerConfig,
    /// Length of the serializer bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the serializer bytes.
    pub sha256: String,
    /// The store's etag or version, when it gives one.
    pub version: Option<String>,
    pub created: Option<DateTime<Utc>>,
    pub expiration: Option<DateTime<Utc>>,
    pub persisted: bool,
    pub uri: String,
    pub format: RecordFormat,
}

/// What a caller expects of a result it asks for by reference.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// Lowercase hex SHA-256 the serializer bytes must have.
    pub sha256: Option<String>,
    /// The version the reference was issued for: a cached entry of another version is
    /// not served for it.
    pub version: Option<String>,
    /// False for results that were never persisted: only memory can serve them.
    pub persisted: bool,
}

/// The three literal results, kept in replies and never written unless a key is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralValue {
    True,
    False,
    Null,
}
