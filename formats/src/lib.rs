//! resultstore's formats: bytes and names and what they mean, with no storage or network
//! in sight. The service re-exports this crate as `resultstore::formats` (and [`keys`] as
//! `resultstore::config::keys`); it is a crate of its own so that this layer cannot reach
//! up into the service, and so that its fuzz targets build without the service's
//! storage, TLS and gRPC dependencies.
//!
//! - [`record`]: what a key holds (`prefect3` records, `split` documents and payloads,
//!   Prefect 2 blobs, bare payloads), read and written byte-compatibly with Prefect 3.9.1;
//! - [`mod@reference`]: the self-verifying reference a Put hands back;
//! - [`serializer`]: serializer configs, compression, Python-exact JSON, the safe pickle
//!   reader and writer, and the JSON validator;
//! - [`keys`]: block slugs and result keys, checked before anything becomes a path.
//!
//! Each module returns its own error enum ([`record::RecordError`],
//! [`serializer::SerializerError`], [`serializer::DecodeError`],
//! [`serializer::TranscodeError`], [`keys::KeyError`]); the service folds them into its
//! error where it knows what the bytes were (a client's request, or what storage holds).

pub mod keys;
pub mod record;
pub mod reference;
pub mod serializer;
