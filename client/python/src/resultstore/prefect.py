"""`ResultStoreStorage`: a Prefect storage block that keeps results in a resultstore server.

    from resultstore.prefect import ResultStoreStorage

    storage = ResultStoreStorage(url="127.0.0.1:50051", block="s3-bucket/prod")

    @flow(result_storage=storage, persist_result=True)
    def my_flow(): ...

or save it once (`storage.save("prod")`) and name it anywhere as
`result_storage="resultstore-storage/prod"`: the package registers this module with
Prefect (`prefect.collections` entry point), so any process with it installed loads the
block by its slug.

Prefect's `ResultStore` still builds every record itself (keys, cache keys, serializers,
expirations, locks); this block only moves the bytes. `write_path` hands them to the
server as an *object* (stored byte for byte in the named block, after the server checked
that a record in it can be read back), and `read_path` reads them back as stored, from
the server's cache shared by every worker and client. So results written through the block
are ordinary Prefect files in the server's block, and any resultstore client (the CLI, Go,
Rust) resolves them.

Missing keys raise `resultstore.errors.NotFound` (Prefect's `exists` treats any error as
"not there", as it does for its own file systems).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from pydantic import Field, PrivateAttr, SecretStr

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem

from resultstore.client import ResultStoreClient

__all__ = ["ResultStoreStorage"]


class ResultStoreStorage(WritableFileSystem):
    """Store Prefect results in a resultstore server's storage block, read through its cache."""

    _block_type_name = "ResultStore Storage"
    _block_type_slug = "resultstore-storage"
    _description = "Persist task and flow results through a resultstore server (shared result cache)."

    url: str = Field(
        default="127.0.0.1:50051",
        description="The resultstore server: host:port or http://host:port; or replicas to route keys across: "
        "URLs separated by commas, or dns://name:port (every address of a headless Service).",
    )
    block: str = Field(
        default="",
        description="The server's storage block results go to (e.g. s3-bucket/prod); empty: its default block.",
    )
    timeout: float = Field(
        default=10.0,
        description="Seconds a call may take before it fails (a call moving N bytes gets N / 4 MiB/s more; a "
        "stream fails only when it made no progress for this long), so a server that hangs does not hang flows.",
    )
    token: Optional[SecretStr] = Field(
        default=None, description="Bearer token, for servers that require one ([auth] in their config)."
    )
    tls_ca: Optional[str] = Field(
        default=None,
        description="TLS: path to (or PEM text of) the CA that signed the server's certificate. "
        "TLS is on with an https:// url or when this is set.",
    )
    tls_cert: Optional[str] = Field(default=None, description="Mutual TLS: path to the client certificate (PEM).")
    tls_key: Optional[SecretStr] = Field(default=None, description="Mutual TLS: path to the client key (PEM).")

    _client: Optional[ResultStoreClient] = PrivateAttr(default=None)

    @property
    def client(self) -> ResultStoreClient:
        if self._client is None:
            self._client = ResultStoreClient(
                self.url,
                timeout=self.timeout,
                token=self.token.get_secret_value() if self.token else None,
                tls_ca=self.tls_ca,
                tls_cert=self.tls_cert,
                tls_key=self.tls_key.get_secret_value() if self.tls_key else None,
            )
        return self._client

    def _resolve_path(self, path: str) -> None:
        # Prefect asks file systems for a local path to record as the storage key when the
        # block is not saved; keys here are keys in the server's block, never local paths.
        return None

    async def aread_path(self, path: str) -> bytes:
        return await asyncio.to_thread(self.client.read_object, self.block, path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self.client.read_object(self.block, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        await asyncio.to_thread(self.client.write_object, self.block, path, content)
        return path

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        self.client.write_object(self.block, path, content)
        return path

    def __getstate__(self) -> Any:
        # A gRPC channel does not pickle (Prefect pickles blocks into task runners).
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private["_client"] = None
        state["__pydantic_private__"] = private
        return state
