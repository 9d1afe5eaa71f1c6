"""resultstore: a Python client for the resultstore service.

- `ResultStoreClient(url)`: one server, or replicas it routes keys across (a list of
  URLs, or `dns://name:port`; see `resultstore.routing`). `put(obj, serializer=...,
  storage=..., persist=..., key=..., expiration=...)` returns a `ResultLiteral` or a `ResultReference`; `reference.get()`
  fetches the value through the server's shared cache and deserializes it here, at any
  size (large values stream). `load(block, key)` reads what Prefect or anyone wrote;
  `load_prefect(block, document)` reads by a document from Prefect's API.
- `resultstore.serializers`: Prefect's serializers (json, pickle, compressed), giving the
  bytes Prefect gives, so what this client writes is what Prefect reads.
- `resultstore.prefect.ResultStoreStorage`: a Prefect storage block backed by a server
  (needs `prefect`; imported on demand).
- `resultstore.errors`: one exception per gRPC status.
- `resultstore.v1`: the generated protobuf and gRPC stubs, for the raw API.
"""

from resultstore.client import PrefectDocument, ResultLiteral, ResultReference, ResultStoreClient, ResultStream
from resultstore.errors import ResultStoreError
from resultstore.serializers import (
    CompressedJSONSerializer,
    CompressedPickleSerializer,
    CompressedSerializer,
    JSONSerializer,
    PickleSerializer,
    Serializer,
)

__all__ = [
    "ResultStoreClient",
    "ResultStream",
    "ResultReference",
    "ResultLiteral",
    "PrefectDocument",
    "ResultStoreError",
    "Serializer",
    "JSONSerializer",
    "PickleSerializer",
    "CompressedSerializer",
    "CompressedJSONSerializer",
    "CompressedPickleSerializer",
]
