//! Formats: bytes and what they mean, with no storage or network in sight.
//!
//! - [`record`]: what a key holds (`prefect3` records, `split` documents and payloads,
//!   Prefect 2 blobs, bare payloads), read and written byte-compatibly with Prefect 3.9.1;
//! - [`mod@reference`]: the self-verifying reference a Put hands back;
//! - [`serializer`]: serializer configs, compression, Python-exact JSON, the safe pickle
//!   reader and writer, and the JSON validator.
//!
//! Uses: [`crate::error`] only.

pub mod record;
pub mod reference;
pub mod serializer;
