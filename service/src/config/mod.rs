//! Configuration: a strict TOML file (`--config PATH` or `RESULTSTORE_CONFIG`), a few
//! environment overrides, and the embedded default used when no file is given.
//!
//! ```toml
//! default_block = "local-file-system/default"   # where results go when no setting names a block
//! default_serializer = "pickle"                 # as PREFECT_RESULTS_DEFAULT_SERIALIZER
//! persist_by_default = false                    # as PREFECT_RESULTS_PERSIST_BY_DEFAULT
//! [cache]
//! capacity = "256MiB"          # bytes of results held in memory
//! max_entry_size = "32MiB"     # larger results are served without being cached
//! time_to_live = "10m"         # how long an entry may serve before storage is read again
//! fill_budget = "256MiB"       # bytes of storage reads in flight to fill the cache
//! [limits]
//! max_message_size = "16MiB"   # gRPC message limit, both directions: the unary limit
//! max_result_size = "256MiB"   # largest result read or decompressed in one piece
//! stream_chunk_size = "8MiB"   # storage reads and multipart parts of PutStream/GetStream
//! max_concurrent_requests = 512 # calls in flight; more are shed with RESOURCE_EXHAUSTED
//! request_timeout = "60s"      # a unary call, or a stream's silence, longer than this fails
//! max_request_bytes_in_flight = "256MiB"  # unary request bytes read at once; more are shed
//! [tls]                        # no [tls] table: plaintext gRPC
//! cert = "/etc/resultstore/tls/tls.crt"
//! key = "/etc/resultstore/tls/tls.key"
//! client_ca = "/etc/resultstore/tls/ca.crt"   # mutual TLS: clients need a certificate it signed
//! [auth]                       # no [auth] table: every caller may do everything
//! anonymous = { "memory/*" = ["read"] }       # what calls without a token may do
//! [[auth.tokens]]
//! name = "etl"                 # logged; the token itself never is
//! sha256 = "9f86d081884c7d65..."  # `resultstore token hash`
//! scopes = { "s3-bucket/*" = ["read", "write"], "local-file-system/default" = ["read"] }
//! [metrics]
//! listen = "0.0.0.0:9464"      # Prometheus text at /metrics; none unless set
//! [tier]                       # no [tier] table: one server on its own
//! advertise = "10.0.0.5:50051" # this replica as its peers name it (or --advertise)
//! peers = "dns://resultstore-headless:50051"  # every replica, this one included
//! # upstream = "dns://resultstore-headless.resultstore.svc:50051"  # a sidecar's tier instead
//! copies = "32MiB"             # replies of hot keys kept for keys another node owns
//! copy_time_to_live = "1s"     # how long a copy may serve: the lag bound of a read by location
//! [blocks."local-file-system/default"]
//! url = "file://.prefect-results"   # relative paths are relative to the working directory
//! format = "prefect3"               # or "split" (metadata_url, or a reserved prefix)
//! [blocks."memory/scratch"]
//! url = "memory://"
//! ```
//!
//! Every table denies unknown fields and names the field it rejects. Sizes are human
//! (`"256MiB"`, `"1GB"`, or a plain integer of bytes) and durations too (`"10m"`, `"30s"`).
//! Zero is refused wherever it could be read as "unbounded".
//!
//! Beside the file: [`auth`] (the `[auth]` table's tokens and scopes, and the access
//! checks every operation makes) and [`keys`] (block slugs and result keys clients may
//! name), and [`startup`] (which settings a reload may change, by type). Uses:
//! [`crate::error`] only.

pub mod auth;
pub mod startup;
/// Slug and key validation: in the `resultstore-formats` crate, with the formats.
pub use resultstore_formats::keys;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Sizes in bytes, written as `"256MiB"`, `"1GB"`, `"512KiB"` or a plain integer
/// (the `bytesize` crate; `KB`, `MB`, `GB` are powers of ten, `KiB`, `MiB`, `GiB` of two).
pub use bytesize::ByteSize;

use crate::config::auth::{AccessPolicy, AuthConfig};
use crate::config::keys::{BlockType, parse_slug};
use crate::error::{Error, Result};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, unless `--listen`/`RESULTSTORE_LISTEN` says otherwise.
    #[serde(default)]
    pub listen: Option<String>,
    /// The block used when neither the task's nor the flow's settings name one.
    #[serde(default = "default_block")]
    pub default_block: String,
    /// The serializer used when no setting names one: a type (`pickle`, `json`,
    /// `compressed/pickle`, ...). Overridden by `RESULTSTORE_DEFAULT_SERIALIZER`.
    #[serde(default = "default_serializer")]
    pub default_serializer: String,
    /// Persist results whose settings say nothing and need no persistence, as Prefect's
    /// `PREFECT_RESULTS_PERSIST_BY_DEFAULT`. Default false.
    #[serde(default)]
    pub persist_by_default: bool,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Storage blocks by slug.
    #[serde(default)]
    pub blocks: BTreeMap<String, BlockConfig>,
    /// TLS for the gRPC listener. Without it the listener speaks plaintext: the absence
    /// of this table is how the config says so. Certificates are re-read on SIGHUP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens and their scopes (see [`crate::config::auth`]). Without this table every
    /// caller may do everything.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Replicas that fill from each other, or a sidecar's upstream tier (see
    /// [`TierConfig`] and `crate::wire::tier`). Without it the server is on its own.
    #[serde(default)]
    pub tier: Option<TierConfig>,
    /// After SIGTERM or Ctrl-C, in-flight calls get this long to finish before the
    /// process exits anyway (with status 0). Keep it below the orchestrator's kill
    /// deadline (Kubernetes' `terminationGracePeriodSeconds`, 30s by default). Default 20s.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
}

fn default_grace_period() -> Duration {
    Duration::from_secs(20)
}

/// TLS for the gRPC listener (rustls; TLS 1.2 and 1.3, ALPN `h2`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Relative paths are relative to the working
    /// directory, as block paths are.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates. When set, TLS is mutual: a client must present a certificate
    /// signed by one of them, or its handshake fails.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// A connection that has not finished its handshake after this long is closed.
    /// Default 10s.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener serving `/metrics` (Prometheus text format), unless
    /// `--metrics-listen`/`RESULTSTORE_METRICS_LISTEN` says otherwise. None by default.
    #[serde(default)]
    pub listen: Option<String>,
}

fn default_block() -> String {
    "local-file-system/default".to_owned()
}
fn default_serializer() -> String {
    "pickle".to_owned()
}

/// The resolve cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Total weight of cached results, in bytes (the serializer bytes plus the decoded
    /// value when it differs). Default 256MiB.
    #[serde(default = "default_capacity")]
    pub capacity: ByteSize,
    /// Results above this size are served without being cached. Default 32MiB; at most
    /// `capacity`.
    #[serde(default = "default_max_entry")]
    pub max_entry_size: ByteSize,
    /// How long a cached result serves before storage is read again, which bounds how
    /// long an overwrite made through another replica stays unseen. Default 10m.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub time_to_live: Duration,
    /// Bytes of objects being read from storage to fill the cache, all keys together;
    /// fills beyond it wait. Each fill counts the size of the object it reads, so the
    /// cache's memory is `capacity` plus this budget (decoding a fill can briefly need
    /// about twice its object's size more). Default 256MiB; at least
    /// `limits.max_result_size`, or the largest result could never load.
    #[serde(default = "default_fill_budget")]
    pub fill_budget: ByteSize,
}

fn default_capacity() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_max_entry() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_fill_budget() -> ByteSize {
    ByteSize(256 << 20)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: default_capacity(),
            max_entry_size: default_max_entry(),
            time_to_live: default_ttl(),
            fill_budget: default_fill_budget(),
        }
    }
}

/// A shared cache tier (`peers`) or a sidecar backed by one (`upstream`): the nodes that
/// serve a key through its owner (`crate::wire::tier` says how). Read at start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// This replica's id as `peers` names it: `host:port` (an `ip:port` when `peers` is a
    /// DNS name; in Kubernetes `$(POD_IP):50051`). Required with `peers`. Overridden by
    /// `--advertise` / `RESULTSTORE_ADVERTISE`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Every replica of the tier, this one included, as the clients name them:
    /// `http://a:50051,http://b:50051`, or `dns://name:port` (`dns+https://` with TLS) for
    /// every address a headless Service resolves to, looked up again every `dns_refresh`.
    /// A call for a key another replica owns is served through that owner.
    #[serde(default)]
    pub peers: Option<String>,
    /// For a sidecar: the tier it fills from, in the same forms. Every call for a key goes
    /// to the key's owner in the tier (writes too); this server's copies are the first
    /// level. Not together with `peers`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// A file holding the token this server presents upstream (with `upstream`). Without
    /// it a call goes upstream with its caller's own `authorization`. Peers always pass the
    /// caller's on: they share one `[auth]`.
    #[serde(default)]
    pub upstream_token_file: Option<PathBuf>,
    /// PEM CA certificates that signed the peers' (or upstream's) certificates, for
    /// `https://` and `dns+https://`. With `[tls]` and no `ca`, its `client_ca` is used.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long connecting to another node may take before it is passed over (the next
    /// replica in the key's order, or this one, serves). Default 1s.
    #[serde(default = "default_tier_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a node that failed (transport, draining) is passed over before it is tried
    /// first again. Default 5s.
    #[serde(default = "default_tier_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// How often a `dns://` name is looked up again. Default 10s.
    #[serde(default = "default_tier_dns_refresh", with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// Bytes of replies (Resolve, Get) kept here for keys another node owns: hot keys on
    /// a replica, the first level on a sidecar. `0` keeps none. Default 32MiB.
    #[serde(default = "default_tier_copies")]
    pub copies: ByteSize,
    /// How long a copy may serve, from when it was taken: the most a read by location
    /// through this node may lag an overwrite made through another. Reads by reference
    /// never lag (a copy serves only the digest it was asked for). Default 1s.
    #[serde(default = "default_tier_copy_ttl", with = "humantime_serde")]
    pub copy_time_to_live: Duration,
    /// A key's reply is copied once it was read this many times through this node within
    /// about `copy_time_to_live` (1: every reply). Default 3 with `peers` (hot keys only),
    /// 1 with `upstream` (a sidecar's first level).
    #[serde(default)]
    pub copy_after_reads: Option<u32>,
}

fn default_tier_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_tier_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_tier_dns_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_tier_copies() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_tier_copy_ttl() -> Duration {
    Duration::from_secs(1)
}

impl TierConfig {
    /// Reads before a reply is copied (`copy_after_reads`, or its default for the mode).
    pub fn copy_after(&self) -> u32 {
        self.copy_after_reads.unwrap_or(if self.upstream.is_some() { 1 } else { 3 })
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(format!("tier: {why}")));
        match (&self.peers, &self.upstream) {
            (Some(_), Some(_)) => {
                return bad(
                    "`peers` (a replica of the tier) and `upstream` (a sidecar of one) exclude each other".into()
                );
            }
            (None, None) => return bad("name the tier's `peers`, or a sidecar's `upstream`".into()),
            _ => {}
        }
        for spec in [&self.peers, &self.upstream].into_iter().flatten() {
            resultstore_client::Endpoints::parse(spec).map_err(|e| Error::Config(format!("tier: {e}")))?;
        }
        // `advertise` may come from the command line, after the file is read: its absence
        // is refused when the tier starts.
        if let Some(me) = &self.advertise
            && (me.contains("://")
                || me.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return bad(format!("advertise `{me}` is not host:port"));
        }
        if self.connect_timeout.is_zero()
            || self.backoff.is_zero()
            || self.dns_refresh.is_zero()
            || self.copy_time_to_live.is_zero()
        {
            return bad("connect_timeout, backoff, dns_refresh and copy_time_to_live must be above zero".into());
        }
        if self.copy_after_reads == Some(0) {
            return bad("copy_after_reads must be at least 1".into());
        }
        Ok(())
    }
}

/// Request and result size limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message accepted or sent (both directions), and so the largest payload
    /// of a unary Put or Get: larger ones are RESOURCE_EXHAUSTED, naming PutStream or
    /// GetStream. Set clients' limits to the same value. Default 16MiB.
    #[serde(default = "default_max_message")]
    pub max_message_size: ByteSize,
    /// Largest result read from storage or decompressed in one piece: a `prefect3` record
    /// (read whole, streamed or not), a result loaded into the cache, a decompressed value.
    /// Results in `split` blocks and bare payloads stream past it. Default 256MiB.
    #[serde(default = "default_max_result")]
    pub max_result_size: ByteSize,
    /// The piece size of streams: PutStream uploads multipart parts of this size, and
    /// GetStream reads storage in ranges of this size (one range read ahead). A stream
    /// holds about three of them. Default 8MiB; at least 5MiB (S3 and GCS refuse smaller
    /// parts) and at most 64MiB.
    #[serde(default = "default_stream_chunk")]
    pub stream_chunk_size: ByteSize,
    /// Calls of `resultstore.v1` in flight at once, all connections together. A call
    /// beyond it is refused at once with RESOURCE_EXHAUSTED (load shedding: no queue
    /// grows without bound); clients retry with backoff. Default 512.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams (calls) one connection may have open. Default 128. Read at start.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams_per_connection: u32,
    /// A unary call that has not finished after this long fails with DEADLINE_EXCEEDED;
    /// for PutStream and GetStream it bounds the silence between two messages, not the
    /// whole transfer. A client's own deadline (`grpc-timeout`) applies too. Default 60s.
    #[serde(default = "default_rpc_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// PutStream and GetStream calls in flight at once, all connections together, apart
    /// from `max_concurrent_requests`: streams never take the places of unary calls, so
    /// stalled or slow streams cannot lock unary callers out. A stream beyond it is
    /// refused at once with RESOURCE_EXHAUSTED. Default 64.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: usize,
    /// The longest a PutStream may stay silent (before its header, and between two
    /// messages), or a GetStream's client may take no message, before the stream fails
    /// with DEADLINE_EXCEEDED and frees its place: a client that stalls is cut off this
    /// quickly, whatever `request_timeout` says. Default 15s.
    #[serde(default = "default_stream_idle_timeout", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Connections open at once; one more is accepted and closed at once. Keep it under
    /// the process's open-file limit (`ulimit -n`) less what storage needs. Default 1024.
    /// Read at start.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing (no HTTP/2 preface, no TLS hello) this long after
    /// it was accepted is closed. Default 10s. Read at start.
    #[serde(default = "default_connection_preface_timeout", with = "humantime_serde")]
    pub connection_preface_timeout: Duration,
    /// Bytes of unary requests (gRPC messages above 64KiB) admitted at once, all
    /// connections together, counted from each message's header before it is read
    /// (`request_bytes`): a request beyond it is refused at once with RESOURCE_EXHAUSTED
    /// (clients retry with backoff). This is the "requests" term of the memory formula in
    /// `docs/operations.md`. At least `max_message_size`. Default 256MiB. Read at start.
    #[serde(default = "default_max_request_bytes_in_flight")]
    pub max_request_bytes_in_flight: ByteSize,
}

fn default_max_request_bytes_in_flight() -> ByteSize {
    ByteSize(256 << 20)
}

fn default_max_concurrent_streams() -> usize {
    64
}
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_max_connections() -> usize {
    1024
}
fn default_connection_preface_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_concurrent_requests() -> usize {
    512
}
fn default_max_streams() -> u32 {
    128
}
fn default_rpc_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_message() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_max_result() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_stream_chunk() -> ByteSize {
    ByteSize(8 << 20)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: default_max_message(),
            max_result_size: default_max_result(),
            stream_chunk_size: default_stream_chunk(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_concurrent_streams_per_connection: default_max_streams(),
            request_timeout: default_rpc_timeout(),
            max_concurrent_streams: default_max_concurrent_streams(),
            stream_idle_timeout: default_stream_idle_timeout(),
            max_connections: default_max_connections(),
            connection_preface_timeout: default_connection_preface_timeout(),
            max_request_bytes_in_flight: default_max_request_bytes_in_flight(),
        }
    }
}

/// The on-storage format a block writes. Every read detects what it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlockFormat {
    /// One JSON record per key, byte-compatible with Prefect 3.
    #[default]
    Prefect3,
    /// The serializer bytes alone at the key; the metadata document at the same key in
    /// the block's `metadata_url` (Prefect's `metadata_storage`).
    Split,
}

impl BlockFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockFormat::Prefect3 => "prefect3",
            BlockFormat::Split => "split",
        }
    }
}

/// One storage block.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Object-store URL: `file://PATH` (relative to the working directory unless
    /// absolute), `memory://`, `s3://bucket/prefix`, `gs://...`, `az://...`.
    pub url: String,
    /// The format this block writes. Default `prefect3`.
    #[serde(default)]
    pub format: BlockFormat,
    /// Where metadata documents live (same URL forms): Prefect's `metadata_storage`. For
    /// `split` blocks without it, metadata documents live in the block itself under the
    /// reserved prefix `.resultstore-metadata/` (hidden from listings, refused as a key).
    /// For `prefect3` blocks it lets reads find Prefect's split records.
    #[serde(default)]
    pub metadata_url: Option<String>,
    /// The serializer assumed for bare payloads read from this block when the request
    /// names none. Default: the server's `default_serializer`.
    #[serde(default)]
    pub default_serializer: Option<String>,
    /// object_store's own option names (`aws_region`, `aws_endpoint`, `aws_allow_http`,
    /// `azure_storage_use_emulator`, `google_service_account`, ...), for cloud blocks.
    /// Anything not given here comes from the process environment, as object_store reads it
    /// (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_NAME`, `GOOGLE_APPLICATION_CREDENTIALS`, ...).
    /// Values are never logged.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// At most this many storage requests of this block run at once; more wait. Default 64.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// A storage request that has not completed after this long fails (cloud blocks).
    /// Default 30s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connecting to the storage gives up after this long (cloud blocks). Default 5s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries of failed storage requests (cloud blocks).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Results last written longer ago than this are expired even when their record has
    /// no expiration (a Prefect result without `cache_expiration`): reads refuse them as
    /// expired and the expiry sweep deletes them. Default: none (only the records' own
    /// expirations count).
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How often this server sweeps the block for expired results (by their records or by
    /// `retention`), in the background. Default: never (run `resultstore gc`). Safe on
    /// every replica of a tier at once (each delete is re-checked under the key's lock),
    /// though one sweeping replica is enough.
    #[serde(default, with = "humantime_serde")]
    pub sweep_interval: Option<Duration>,
    /// Storage calls per second a sweep of this block makes at most (HEAD, GET, DELETE,
    /// one per 1000 listed entries). Default 100; 0 is refused.
    #[serde(default = "default_sweep_calls_per_second")]
    pub sweep_calls_per_second: std::num::NonZeroU32,
}

fn default_sweep_calls_per_second() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(100).unwrap_or(std::num::NonZeroU32::MIN)
}

fn default_max_concurrent() -> usize {
    64
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// object_store's retry policy, in human units.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt. Default 3; 0 disables retries.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// No retry starts after this long since the first attempt. Default 30s.
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// First backoff. Default 100ms.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest backoff. Default 5s.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

fn default_max_retries() -> usize {
    3
}
fn default_retry_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: default_max_retries(),
            retry_timeout: default_retry_timeout(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl BlockConfig {
    /// A block at `url` with every other setting at its default.
    pub fn at(url: &str) -> Self {
        BlockConfig {
            url: url.to_owned(),
            format: BlockFormat::Prefect3,
            metadata_url: None,
            default_serializer: None,
            options: BTreeMap::new(),
            max_concurrent_requests: default_max_concurrent(),
            request_timeout: default_request_timeout(),
            connect_timeout: default_connect_timeout(),
            retry: RetryConfig::default(),
            retention: None,
            sweep_interval: None,
            sweep_calls_per_second: default_sweep_calls_per_second(),
        }
    }
}

impl Config {
    /// The embedded default: `local-file-system/default` rooted at `.prefect-results` in
    /// the working directory, and `memory/default`.
    pub fn embedded_default() -> Self {
        let mut blocks = BTreeMap::new();
        blocks.insert("local-file-system/default".to_owned(), BlockConfig::at("file://.prefect-results"));
        blocks.insert("memory/default".to_owned(), BlockConfig::at("memory://"));
        Config {
            listen: None,
            default_block: default_block(),
            default_serializer: default_serializer(),
            persist_by_default: false,
            cache: CacheConfig::default(),
            limits: LimitsConfig::default(),
            blocks,
            tls: None,
            auth: None,
            metrics: MetricsConfig::default(),
            tier: None,
            shutdown_grace_period: default_grace_period(),
        }
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path`, or the embedded default when `path` is `None`, then applies
    /// `RESULTSTORE_DEFAULT_SERIALIZER`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                Config::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => Config::embedded_default(),
        };
        if let Ok(ser) = std::env::var("RESULTSTORE_DEFAULT_SERIALIZER") {
            config.default_serializer = ser;
        }
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.blocks.is_empty() {
            return Err(Error::Config("no blocks are configured; add a [blocks.\"type/name\"] table".into()));
        }
        let mut canonical = Vec::new();
        for (slug, block) in &self.blocks {
            let (canon, ty) = parse_slug(slug).map_err(|e| Error::Config(e.to_string()))?;
            if canonical.contains(&canon) {
                return Err(Error::Config(format!("block `{slug}` is declared twice (as `{canon}`)")));
            }
            canonical.push(canon);
            check_url_matches(slug, ty, &block.url)?;
            if let Some(meta) = &block.metadata_url {
                check_url_matches(slug, ty, meta)?;
            }
            if block.max_concurrent_requests == 0 {
                return Err(Error::Config(format!("block `{slug}`: max_concurrent_requests must be above zero")));
            }
            if block.request_timeout.is_zero() || block.connect_timeout.is_zero() {
                return Err(Error::Config(format!("block `{slug}`: timeouts must be above zero")));
            }
            if block.retention.is_some_and(|d| d.is_zero()) || block.sweep_interval.is_some_and(|d| d.is_zero()) {
                return Err(Error::Config(format!(
                    "block `{slug}`: retention and sweep_interval must be above zero (leave them out for none)"
                )));
            }
        }
        let (default, _) = parse_slug(&self.default_block).map_err(|e| Error::Config(format!("default_block: {e}")))?;
        if !canonical.contains(&default) {
            return Err(Error::Config(format!(
                "default_block `{}` is not one of the configured blocks ({})",
                self.default_block,
                canonical.join(", ")
            )));
        }
        if self.cache.capacity.0 == 0 {
            return Err(Error::Config("cache.capacity must be above zero".into()));
        }
        if self.cache.max_entry_size.0 == 0 || self.cache.max_entry_size.0 > self.cache.capacity.0 {
            return Err(Error::Config("cache.max_entry_size must be above zero and at most cache.capacity".into()));
        }
        if self.cache.time_to_live.is_zero() {
            return Err(Error::Config("cache.time_to_live must be above zero".into()));
        }
        if self.limits.max_message_size.0 < 1024 {
            return Err(Error::Config("limits.max_message_size must be at least 1KiB".into()));
        }
        if self.limits.max_result_size.0 == 0 {
            return Err(Error::Config("limits.max_result_size must be above zero".into()));
        }
        if self.cache.fill_budget.0 < self.limits.max_result_size.0 {
            return Err(Error::Config(format!(
                "cache.fill_budget ({}) must be at least limits.max_result_size ({}), or the largest result \
                 could never be loaded",
                self.cache.fill_budget, self.limits.max_result_size
            )));
        }
        if !(5 << 20..=64 << 20).contains(&self.limits.stream_chunk_size.0) {
            return Err(Error::Config(
                "limits.stream_chunk_size must be between 5MiB (the smallest multipart part S3 and GCS take) and 64MiB"
                    .into(),
            ));
        }
        let l = &self.limits;
        if l.max_request_bytes_in_flight.0 < l.max_message_size.0 {
            return Err(Error::Config(format!(
                "limits.max_request_bytes_in_flight ({}) must be at least limits.max_message_size ({}), or the \
                 largest request could never be admitted",
                l.max_request_bytes_in_flight, l.max_message_size
            )));
        }
        if l.max_concurrent_requests == 0
            || l.max_concurrent_streams_per_connection == 0
            || l.max_concurrent_streams == 0
            || l.max_connections == 0
        {
            return Err(Error::Config(
                "limits.max_concurrent_requests, max_concurrent_streams, max_concurrent_streams_per_connection and \
                 max_connections must be above zero (zero never means unbounded)"
                    .into(),
            ));
        }
        if l.request_timeout.is_zero()
            || l.stream_idle_timeout.is_zero()
            || l.connection_preface_timeout.is_zero()
            || self.shutdown_grace_period.is_zero()
        {
            return Err(Error::Config(
                "limits.request_timeout, stream_idle_timeout, connection_preface_timeout and shutdown_grace_period \
                 must be above zero"
                    .into(),
            ));
        }
        if let Some(tls) = &self.tls
            && tls.handshake_timeout.is_zero()
        {
            return Err(Error::Config("tls.handshake_timeout must be above zero".into()));
        }
        if let Some(tier) = &self.tier {
            tier.validate()?;
        }
        // Tokens and scopes are checked where they are built.
        AccessPolicy::from_config(self.auth.as_ref())?;
        Ok(())
    }
}

/// The URL scheme must agree with the slug's type, so a block named `s3-bucket/x` can
/// never write to local files by mistake.
fn check_url_matches(slug: &str, ty: BlockType, url: &str) -> Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    let ok = match ty {
        BlockType::LocalFileSystem => scheme == "file",
        BlockType::Memory => scheme == "memory",
        BlockType::S3Bucket => matches!(scheme, "s3" | "s3a"),
        BlockType::GcsBucket => scheme == "gs",
        BlockType::AzureBlobStorageContainer => matches!(scheme, "az" | "azure" | "abfs" | "abfss"),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "block `{slug}`: url `{url}` does not fit the block type `{}` (expected a {} URL)",
            ty.as_str(),
            match ty {
                BlockType::LocalFileSystem => "file://",
                BlockType::Memory => "memory://",
                BlockType::S3Bucket => "s3://",
                BlockType::GcsBucket => "gs://",
                BlockType::AzureBlobStorageContainer => "az://",
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_are_human() {
        let block = "[blocks.\"local-file-system/default\"]\nurl = \"file://x\"\n";
        let size = |v: &str| {
            Config::from_toml(&format!("[cache]\nmax_entry_size = 1024\ncapacity = {v}\n{block}"))
                .map(|c| c.cache.capacity.0)
        };
        assert_eq!(size("\"256MiB\"").unwrap(), 256 << 20);
        assert_eq!(size("\"1GB\"").unwrap(), 1_000_000_000);
        assert_eq!(size("4096").unwrap(), 4096);
        assert!(size("\"12 parsecs\"").is_err());
        assert!(size("\"MiB\"").is_err());
        let ttl =
            |v: &str| Config::from_toml(&format!("[cache]\ntime_to_live = {v}\n{block}")).map(|c| c.cache.time_to_live);
        assert_eq!(ttl("\"1h 30m\"").unwrap(), Duration::from_secs(5400));
        assert!(ttl("\"soon\"").is_err());
        assert!(ttl("30").is_err(), "a duration names its unit");
    }

    #[test]
    fn the_issue_example_parses_and_unknown_fields_are_named() {
        let text = r#"
default_block = "local-file-system/default"
default_serializer = "pickle"
[cache]
capacity = "256MiB"
[blocks."local-file-system/default"]
url = "file://.prefect-results"
format = "prefect3"
[blocks."memory/scratch"]
url = "memory://"
[blocks."s3-bucket/prod"]
url = "s3://results/prefect"
format = "split"
options = { aws_region = "us-east-1", aws_endpoint = "http://127.0.0.1:9000" }
"#;
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.blocks.len(), 3);
        let err = Config::from_toml(&format!("{text}\n[cache2]\nx = 1\n")).unwrap_err();
        assert!(err.to_string().contains("cache2"), "{err}");
        let err = Config::from_toml(&text.replace("capacity", "capacty")).unwrap_err();
        assert!(err.to_string().contains("capacty"), "{err}");
    }

    #[test]
    fn mismatched_schemes_zero_sizes_and_missing_defaults_are_refused() {
        let base = "[blocks.\"local-file-system/default\"]\nurl = \"file://x\"\n";
        assert!(Config::from_toml(&base.replace("file://", "memory://")).is_err());
        assert!(Config::from_toml(&format!("[cache]\ncapacity = \"0MiB\"\n{base}")).is_err());
        assert!(Config::from_toml(&format!("default_block = \"memory/nope\"\n{base}")).is_err());
        Config::from_toml(&format!("{base}format = \"split\"\n")).unwrap();
        Config::from_toml(base).unwrap();
    }
}
