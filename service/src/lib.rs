//! resultstore: a gRPC service that persists task and flow results into named storage
//! blocks, hands back references (or literals), and resolves references for any client
//! from a byte-bounded in-memory cache. It reads and writes Prefect's own result files.
//!
//! # Map
//! A request's whole path, top to bottom:
//! - [`server`]: binds, serves `resultstore.v1` with health and reflection, shuts down
//!   gracefully (NOT_SERVING, refuse, drain within the grace period); [`connections`]:
//!   accepting within bounds (how many, how long silent, backoff on errors); [`tls`]: the TLS
//!   listener whose certificate a reload swaps; [`request_bytes`]: the bytes of unary requests
//!   admitted before tonic buffers them; [`live`]: the config generation in force,
//!   swapped whole on SIGHUP.
//! - [`grpc`]: one thin handler per RPC: admit (draining? token? a free place among the
//!   calls in flight?), convert the request, call [`store`], map the error to a `Status`
//!   (the only place that knows tonic), record the call's end ([`metrics`], its span).
//! - [`auth`]: bearer tokens scoped to blocks and operations; every store operation
//!   checks its block with the caller's access before touching storage.
//! - [`store`]: the operations (put, get/resolve, exists, delete, list), and objects:
//!   Prefect's files stored and read back as they are, for the Prefect storage block
//!   in `client/python`.
//! - [`split`]: how a `split` record (payload + metadata document) is written, read,
//!   deleted and swept so that readers only ever see one write whole; [`key_locks`]: one
//!   writer per key through this process.
//! - [`stream`]: PutStream and GetStream: multipart uploads and ranged reads in bounded
//!   memory, past the cache for results larger than an entry.
//! - [`settings`]: persist/storage/serializer inheritance, as Prefect's rules.
//! - [`cache`]: the moka cache of loaded results, with singleflight fills.
//! - [`record`]: on-storage formats (`prefect3`, `split`, Prefect 2 blobs, bare payloads).
//! - [`serializer`]: serializer configs, compression, Python-exact JSON, the safe pickle
//!   reader and writer.
//! - [`blocks`]: slug → object store, and the counting store wrapper;
//!   [`legacy_keys`]: the wrapper that still reads results stored under pre-0.2
//!   percent-encoded names; [`confined`]: local blocks never follow a symbolic link.
//! - [`keys`]: slug and key validation, and a key's object name (the key as written); [`config`]: the strict config file;
//!   [`mod@reference`]: the reference type; [`error`]: the one error enum;
//!   [`telemetry`]: counters, histograms and logging; [`metrics`]: the Prometheus
//!   endpoint; [`memory`]: the allocator setting that keeps freed stream buffers from
//!   piling up.

pub mod auth;
pub mod blocks;
pub mod cache;
pub mod config;
pub mod confined;
pub mod connections;
pub mod error;
pub mod grpc;
pub mod key_locks;
pub mod keys;
pub mod legacy_keys;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod record;
pub mod reference;
pub mod request_bytes;
pub mod serializer;
pub mod server;
pub mod settings;
pub mod split;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use error::{Error, Result};
pub use store::ResultStore;
