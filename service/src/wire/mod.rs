//! The wire: what clients talk to.
//!
//! - [`server`]: binds, serves `resultstore.v1` with health and reflection, shuts down
//!   gracefully (NOT_SERVING, refuse, drain within the grace period), runs the staging
//!   sweep;
//! - [`grpc`]: one thin handler per RPC (admit, convert, call [`crate::ops`], map the
//!   error to a `Status` in one place, record the call's end).
//!
//! Uses: [`crate::runtime`] and everything below it.

pub mod grpc;
pub mod server;
