//! Operations: the whole path of every RPC below its thin handler. Nothing here knows
//! about gRPC.
//!
//! - [`store`]: put, get/resolve, exists, delete, list, and Prefect's objects stored and
//!   read back as they are;
//! - [`stream`]: PutStream and GetStream, multipart uploads and ranged reads in bounded
//!   memory;
//! - [`split`]: how a `split` record (payload + metadata document) is written, read,
//!   deleted and swept so that readers only ever see one write whole;
//! - [`key_locks`]: one writer per key through this process;
//! - [`settings`]: Prefect's persist/storage/serializer inheritance.
//!
//! Uses: [`crate::storage`], [`crate::formats`], [`crate::config`], [`crate::error`],
//! [`crate::telemetry`]. (`store`, `stream` and `split` are three `impl ResultStore`
//! blocks that share helpers: one type, one file per concern.)

pub mod key_locks;
pub mod settings;
pub mod split;
pub mod store;
pub mod stream;
