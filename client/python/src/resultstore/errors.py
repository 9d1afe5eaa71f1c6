"""Errors: one class per gRPC status the service answers with, carrying its message.

The server's messages say what was wrong and what to do ("result `k` in `s3-bucket/prod`
expired at ..."); they are passed on unchanged.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ResultStoreError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "ResourceExhausted",
    "PermissionDenied",
    "Unauthenticated",
    "DataLoss",
    "Aborted",
    "Unavailable",
    "DeadlineExceeded",
    "IncompleteStream",
    "error_from_rpc",
]


class ResultStoreError(Exception):
    """A call the service refused or could not serve. `code` is the gRPC status code;
    `call` and `server`, when known, the RPC and the address it went to (a replica of a
    routed client), so a log line says where to look."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        *,
        call: str | None = None,
        server: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.call = call
        self.server = server
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        if self.call:
            return f"{self.code.name} calling {self.call} on {self.server}: {self.message}"
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ResultStoreError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ResultStoreError, KeyError):
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return ResultStoreError.__str__(self)


class AlreadyExists(ResultStoreError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ResultStoreError):
    """Expired, not persisted, or not transcodable as asked."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ResultStoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(ResultStoreError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ResultStoreError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DataLoss(ResultStoreError):
    """The stored bytes do not match their digest, or the record is corrupt."""

    code = grpc.StatusCode.DATA_LOSS


class Aborted(ResultStoreError):
    """A stream met another version of the result mid-way (overwritten while read), or an
    upload broke: read or send it again."""

    code = grpc.StatusCode.ABORTED


class IncompleteStream(ResultStoreError):
    """A GetStream that ended without its trailer, or whose bytes do not match it."""

    code = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(ResultStoreError, TimeoutError):
    """The call took longer than the client's `timeout` (a stream: made no progress for
    that long); the server may still be working on it."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ResultStoreError):
    """The service, or the storage behind it, cannot be reached; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        PermissionDenied,
        Unauthenticated,
        DataLoss,
        Aborted,
        DeadlineExceeded,
        Unavailable,
    )
}


def error_from_rpc(err: grpc.RpcError, call: str | None = None, server: str | None = None) -> ResultStoreError:
    """The error of a failed call: its status's class, naming the RPC and the server."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, ResultStoreError)
    return cls(details or code.name, code, call=call, server=server)
