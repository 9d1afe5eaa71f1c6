//! The `resultstore.v1` gRPC API, generated from `proto/resultstore/v1/resultstore.proto`.
//!
//! The `.proto` file is the documented contract; this crate only compiles it.

/// Messages and the client/server stubs of `resultstore.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("resultstore.v1");

    /// Encoded `FileDescriptorSet` of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("resultstore_descriptor");
}

pub use prost_types::Timestamp;

/// Trailer a server sets on an UNAVAILABLE status to say why, for clients that route keys
/// across replicas. A status without it is a transport failure.
pub const UNAVAILABLE_REASON: &str = "resultstore-unavailable";
/// [`UNAVAILABLE_REASON`]: the replica is stopping (go to the next one and stay away).
pub const UNAVAILABLE_DRAINING: &str = "draining";
/// [`UNAVAILABLE_REASON`]: the object store did not answer (another replica may reach it,
/// but this one is healthy and keeps its keys).
pub const UNAVAILABLE_STORAGE: &str = "storage";
