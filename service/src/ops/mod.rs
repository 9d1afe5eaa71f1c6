//! Operations: the whole path of every RPC below its thin handler. Nothing here knows
//! about gRPC.
//!
//! - [`store`]: put, get/resolve, exists, delete, list, and Prefect's objects stored and
//!   read back as they are;
//! - [`stream`]: PutStream and GetStream, multipart uploads and ranged reads in bounded
//!   memory;
//! - [`split`]: how a `split` record (payload + metadata document) is written, read,
//!   deleted and swept so that readers only ever see one write whole;
//! - [`objects`]: whole objects read within `max_result_size` and the fill budget, the
//!   write mode, payload digests;
//! - [`key_locks`]: one writer per key through this process;
//! - [`lifecycle`]: the expiry sweep and bulk deletes by prefix, through `store`'s delete;
//! - [`settings`]: Prefect's persist/storage/serializer inheritance.
//!
//! Uses: [`crate::storage`], [`crate::formats`], [`crate::config`], [`crate::error`],
//! [`crate::telemetry`]. Within it, one direction: `store` and `stream` (the
//! `ResultStore` and its streams) use `split` (a `SplitRecords` borrowing the store's
//! parts), which uses `objects` and `key_locks`; nothing below reaches back up.

pub mod key_locks;
pub mod lifecycle;
pub mod objects;
pub mod settings;
pub mod split;
pub mod store;
pub mod stream;
