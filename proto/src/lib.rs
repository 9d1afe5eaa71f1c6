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

/// `NOT_FOUND`-style names, as gRPC documents them: what the service logs and counts, and
/// what clients print, from one table.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
