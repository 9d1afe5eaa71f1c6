//! Runtime: the process around the calls.
//!
//! - [`live`]: the configuration generation in force (store, access policy, limits, TLS
//!   certificate), swapped whole on SIGHUP;
//! - [`connections`]: accepting within bounds (how many, how long silent, backoff on
//!   errors); [`tls`]: handshakes with the certificate in force, bounded;
//!   [`request_bytes`]: unary requests admitted by their bytes before they are read;
//! - [`metrics`]: the Prometheus endpoint (`/metrics`, `/healthz`);
//! - [`memory`]: the allocator setting that keeps freed stream buffers from piling up.
//!
//! Uses: [`crate::ops`] and everything below it.

pub mod connections;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod request_bytes;
pub mod tls;
