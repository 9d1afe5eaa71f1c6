//! resultstore: a gRPC service that persists task and flow results into named storage
//! blocks, hands back references (or literals), and resolves references for any client
//! from a byte-bounded in-memory cache. It reads and writes Prefect's own result files.
//!
//! # Map
//! Layers, top to bottom. A layer uses only the layers below it (and the two
//! cross-cutting modules at the end); each folder's `mod.rs` says what it holds.
//!
//! - [`wire`]: what clients talk to. [`wire::server`] binds, serves `resultstore.v1`
//!   with health and reflection, and shuts down by drain; [`wire::grpc`] holds one thin
//!   handler per RPC: admit (draining? token? a free place?), convert the request, hand
//!   it to the key's owner when [`wire::tier`] says another node owns it, else call
//!   [`ops::store`] or [`ops::stream`], map the error to a `Status` (the only place that
//!   knows tonic), record the call's end. [`wire::tier`]: replicas that serve each key
//!   through its owner, sidecars that fill from a tier; [`wire::copies`]: hot keys'
//!   replies kept on nodes that do not own them; [`wire::http`]: the JSON API, gRPC-Web
//!   and the console on the same listener, each endpoint transcoded to its gRPC handler.
//! - [`runtime`]: the process around the calls. [`runtime::live`]: the config generation
//!   in force, swapped whole on SIGHUP; [`runtime::connections`], [`runtime::tls`],
//!   [`runtime::request_bytes`]: bounds on what clients may open and send;
//!   [`runtime::metrics`]: the Prometheus endpoint; [`runtime::memory`]: the allocator
//!   setting.
//! - [`ops`]: the operations. [`ops::store`]: put, get/resolve, exists, delete, list, and
//!   Prefect's objects; [`ops::stream`]: PutStream and GetStream in bounded memory;
//!   [`ops::split`]: split records written, read, deleted and swept whole;
//!   [`ops::key_locks`]: one writer per key; [`ops::settings`]: Prefect's
//!   persist/storage/serializer inheritance.
//! - [`storage`]: where results live. [`storage::blocks`]: slug → object store, with the
//!   counting wrapper; [`storage::cache`]: the byte-bounded cache with singleflight fills;
//!   [`storage::confined`]: local blocks never follow a symbolic link;
//!   [`storage::object_names`]: a key's object name is the key as written;
//!   [`storage::legacy_keys`]: results under pre-0.2 percent-encoded names still read.
//! - [`formats`]: bytes and what they mean, the `resultstore-formats` crate (so it
//!   cannot reach up, and its fuzz targets build without the rest).
//!   [`formats::record`]: on-storage formats (`prefect3`, `split`, Prefect 2 blobs, bare
//!   payloads); [`formats::reference`]: the reference type; [`formats::serializer`]:
//!   serializer configs, compression, Python-exact JSON, the safe pickle reader and
//!   writer; [`formats::keys`]: slug and key rules. Each returns its own error enum,
//!   folded into [`error::Error`] by `From`.
//! - [`config`]: what the operator configured and what clients may name: the strict config
//!   file, [`config::auth`] (bearer tokens scoped to blocks and operations; every operation
//!   checks its block with the caller's access before touching storage), [`config::keys`]
//!   (re-exported from [`formats::keys`]).
//! - Cross-cutting: [`error`], the one error enum; [`telemetry`], counters, histograms
//!   and logging.
//!
//! To follow an RPC: its handler in [`wire::grpc`] (named as the RPC), then the
//! [`wire::tier`] method of the same name (with a `[tier]`: does another node own the
//! key?), then the [`ops::store`] or [`ops::stream`] method it calls.

pub mod config;
pub mod error;
/// Bytes and what they mean: the `resultstore-formats` crate (see its docs).
pub use resultstore_formats as formats;
pub mod ops;
pub mod runtime;
pub mod storage;
pub mod telemetry;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
pub use ops::store::ResultStore;
