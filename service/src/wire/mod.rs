//! The wire: what clients talk to.
//!
//! - [`server`]: binds, serves `resultstore.v1` with health and reflection, shuts down
//!   gracefully (NOT_SERVING, refuse, drain within the grace period), runs the staging
//!   sweep;
//! - [`grpc`]: one thin handler per RPC (admit, convert, hand the call to the [`tier`] or
//!   call [`crate::ops`], map the error to a `Status` in one place, record the call's end);
//! - [`http`]: the same calls over HTTP (a JSON API transcoded to the gRPC handlers,
//!   gRPC-Web, the results console), on the same listener;
//! - [`tier`]: replicas that serve each key through its owner, and sidecars that fill from
//!   such a tier; [`copies`]: the replies of hot keys kept on nodes that do not own them.
//!
//! Uses: [`crate::runtime`] and everything below it.

pub mod copies;
pub mod grpc;
pub mod http;
pub mod server;
pub mod tier;
