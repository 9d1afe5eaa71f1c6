"""`ResultStoreClient`: put Python objects as Prefect-compatible results, get them back.

Serialization happens here, in the caller's process, with the serializers of
`resultstore.serializers` (the same bytes Prefect's give), and the server stores and
caches the bytes. Reading asks the server to `Resolve` (it removes base64 and
compression, verifies the digest, and serves from its shared cache), then loads the value
here with the library the result's serializer config names.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import io
import json
import os
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from resultstore.errors import DeadlineExceeded, IncompleteStream, ResultStoreError, error_from_rpc
from resultstore.local_copies import LocalCopies
from resultstore.routing import Router, parse_endpoints
from resultstore.serializers import (
    CompressedSerializer,
    JSONSerializer,
    PickleSerializer,
    Serializer,
    serializer_from,
)
from resultstore.v1 import resultstore_pb2 as pb
from resultstore.v1 import resultstore_pb2_grpc as pb_grpc

__all__ = ["ResultStoreClient", "ResultReference", "ResultLiteral", "PrefectDocument"]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Seconds a small call may take before it fails with `DeadlineExceeded`: a server that
#: hangs costs a flow this long per call, not minutes.
DEFAULT_TIMEOUT = 10.0
#: The slowest transfer a deadline allows for: a unary call carrying N bytes gets
#: `timeout + N / MIN_THROUGHPUT` seconds.
MIN_THROUGHPUT = 4 * 1024 * 1024
#: Value bytes of results read by reference that a client keeps (see `resultstore.local_copies`).
DEFAULT_LOCAL_COPIES = 32 * 1024 * 1024
#: Seconds a kept copy serves before the next read asks the server again.
DEFAULT_LOCAL_COPY_TTL = 60.0
#: Bytes per PutStream message (every server accepts it, whatever its message limit).
STREAM_CHUNK = 1024 * 1024
_LITERAL_OF_VALUE = {True: pb.LITERAL_TRUE, False: pb.LITERAL_FALSE, None: pb.LITERAL_NULL}
_VALUE_OF_LITERAL = {code: value for value, code in _LITERAL_OF_VALUE.items()}
_UNSET: Any = object()

SerializerSpec = Union[str, dict, Serializer, Any]


def _target_key(target: Union["ResultReference", "PrefectDocument", tuple]) -> str:
    """The key a reference, a Prefect document or a `(block, key)` pair is routed by."""
    return target.key if isinstance(target, (ResultReference, PrefectDocument)) else target[1]


def _target(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    if "://" in url:
        raise ValueError(f"resultstore: unsupported URL {url!r}; use host:port, http://host:port or https://host:port")
    return url


def _pem(value: Union[None, str, bytes, os.PathLike]) -> Optional[bytes]:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    with open(text, "rb") as f:
        return f.read()


class _Token(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer TOKEN` to every call (plaintext or TLS alike)."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token.strip()}")

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or []) + [self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def _timestamp(t: Optional[Union[_dt.datetime, _dt.timedelta]]) -> Optional[Timestamp]:
    if t is None:
        return None
    if isinstance(t, _dt.timedelta):
        t = _dt.datetime.now(_dt.timezone.utc) + t
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    ts = Timestamp()
    ts.FromDatetime(t.astimezone(_dt.timezone.utc))
    return ts


def _datetime(ts: Timestamp, present: bool) -> Optional[_dt.datetime]:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=_dt.timezone.utc)


def _set_target(request: Any, target: Union["ResultReference", "PrefectDocument", tuple]) -> None:
    """Points a Get or Resolve request at a reference, a Prefect document or a `(block,
    key)` pair."""
    if isinstance(target, ResultReference):
        request.reference.CopyFrom(target.message)
    elif isinstance(target, PrefectDocument):
        request.prefect.CopyFrom(pb.PrefectReference(block=target.block, document=target.text))
    else:
        block, key = target
        request.location.CopyFrom(pb.Location(block=block, key=key))


class PrefectDocument:
    """A result as Prefect's API records it: a Prefect 3 `ResultRecordMetadata` document
    (a task run state's `data`, with `storage_key`, `serializer`, `expiration`) or a
    Prefect 2 result document, read in `block`, the server's block that holds Prefect's
    storage. A `storage_key` that is an absolute path (Prefect 3 records one for storage
    that is not a saved block, such as its default `~/.prefect/storage`) must lie under
    that block's root (a `local-file-system` block whose url is that folder): the server
    reads the rest of the path as the key, and refuses any path outside the block."""

    def __init__(self, block: str, document: Union[str, dict]):
        self.block = block
        self.doc = json.loads(document) if isinstance(document, (str, bytes)) else dict(document)
        self.text = document if isinstance(document, str) else json.dumps(self.doc)

    @property
    def key(self) -> str:
        """What calls for it are routed by: the key the document names."""
        return str(self.doc.get("storage_key") or "")

    @property
    def literal(self) -> tuple:
        """`(True, value)` for a literal document (no record to read), else `(False, None)`."""
        if self.doc.get("type") == "literal":
            return True, self.doc.get("value")
        return False, None

    def __repr__(self) -> str:
        return f"PrefectDocument(block={self.block!r}, key={self.key!r})"


class _ChunkReader(io.RawIOBase):
    """A binary file over an iterator of byte chunks: lets `pickle.load` read a value as
    it streams, one chunk in memory at a time."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = chunk
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Watchdog:
    """Cancels a streaming call that made no progress for `timeout` seconds: a stalled
    server or network fails the call, a large transfer that keeps moving never does.
    `kick()` on every message; `stop()` when the call is over."""

    def __init__(self, timeout: Optional[float], cancel: Callable[[], Any]):
        self.timeout = timeout
        self._cancel = cancel
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        self.fired = False
        self.kick()

    def _fire(self) -> None:
        self.fired = True
        self._cancel()

    def kick(self) -> None:
        if self.timeout is None:
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.timeout, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def _serializer_pb(s: Serializer) -> pb.Serializer:
    return pb.Serializer(type=s.type, config_json=json.dumps(s.config()))


def _serializer_of(reference: pb.Reference) -> Serializer:
    """The serializer a reference names."""
    cfg = reference.serializer
    return _serializer_named(cfg.type, cfg.config_json)


@functools.lru_cache(maxsize=256)
def _serializer_named(type_: str, config_json: str) -> Serializer:
    """One serializer object per config a process meets (they hold no per-call state):
    parsing the config on every read cost more than the rest of the client's work."""
    return serializer_from(json.loads(config_json) if config_json else type_)


def _expired(reference: pb.Reference) -> bool:
    """Whether the result's expiration (as its reference tells it) has passed."""
    if not reference.HasField("expiration"):
        return False
    e = reference.expiration
    return e.seconds + e.nanos / 1e9 <= time.time()


def _innermost(s: Serializer) -> Serializer:
    while isinstance(s, CompressedSerializer):
        s = s.serializer
    return s


class ResultLiteral:
    """A `True`, `False` or `None` result: the value itself, never stored."""

    def __init__(self, value: Optional[bool]):
        if value not in (True, False, None):
            raise ValueError("a literal is True, False or None")
        self.value = value

    def get(self) -> Optional[bool]:
        return self.value

    def to_dict(self) -> dict:
        return {"type": "literal", "value": self.value}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultLiteral) and other.value is self.value

    def __repr__(self) -> str:
        return f"ResultLiteral({self.value!r})"


class ResultReference:
    """A self-verifying pointer to a stored result; `get()` loads (and keeps) its value.

    `to_dict()` gives the document the Rust client and the `resultstore` CLI read
    (`resultstore resolve '<json>'`), so a reference made here resolves anywhere.
    """

    def __init__(self, message: pb.Reference, client: Optional["ResultStoreClient"] = None):
        self._pb = message
        self._client = client
        self._value: Any = _UNSET

    # What the reference says.
    @property
    def block(self) -> str:
        return self._pb.block

    @property
    def key(self) -> str:
        return self._pb.key

    @property
    def serializer(self) -> dict:
        cfg = self._pb.serializer
        return json.loads(cfg.config_json) if cfg.config_json else {"type": cfg.type}

    @property
    def size(self) -> int:
        return self._pb.size

    @property
    def sha256(self) -> str:
        return self._pb.sha256

    @property
    def version(self) -> Optional[str]:
        return self._pb.version or None

    @property
    def created(self) -> Optional[_dt.datetime]:
        return _datetime(self._pb.created, self._pb.HasField("created"))

    @property
    def expiration(self) -> Optional[_dt.datetime]:
        return _datetime(self._pb.expiration, self._pb.HasField("expiration"))

    @property
    def persisted(self) -> bool:
        return self._pb.persisted if self._pb.HasField("persisted") else True

    @property
    def uri(self) -> str:
        return self._pb.uri

    @property
    def format(self) -> str:
        return self._pb.format

    @property
    def message(self) -> pb.Reference:
        """The protobuf message, for the raw API."""
        return self._pb

    def get(self, client: Optional["ResultStoreClient"] = None) -> Any:
        """The value: fetched once through the server's cache, deserialized here, kept."""
        if self._value is _UNSET:
            client = client or self._client
            if client is None:
                raise ResultStoreError("this reference has no client: pass one to get(client)")
            self._value = client.get(self)
        return self._value

    def to_dict(self) -> dict:
        def iso(t: Optional[_dt.datetime]) -> Optional[str]:
            return t.isoformat().replace("+00:00", "Z") if t else None

        doc = {
            "type": "reference",
            "block": self.block,
            "key": self.key,
            "serializer": self.serializer,
            "size": self.size,
            "sha256": self.sha256,
            "version": self.version,
            "created": iso(self.created),
            "expiration": iso(self.expiration),
            "persisted": self.persisted,
            "uri": self.uri,
            "format": self.format,
        }
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: dict, client: Optional["ResultStoreClient"] = None) -> "ResultReference":
        if doc.get("type", "reference") != "reference":
            raise ValueError(f"type is {doc.get('type')!r}, not 'reference'")
        ser = doc.get("serializer")
        m = pb.Reference(
            block=doc["block"],
            key=doc["key"],
            size=int(doc.get("size") or 0),
            sha256=doc.get("sha256") or "",
            version=doc.get("version") or "",
            persisted=bool(doc.get("persisted", True)),
            uri=doc.get("uri") or "",
            format=doc.get("format") or "",
        )
        if isinstance(ser, str):
            m.serializer.CopyFrom(pb.Serializer(type=ser))
        elif isinstance(ser, dict):
            m.serializer.CopyFrom(pb.Serializer(type=ser.get("type", ""), config_json=json.dumps(ser)))
        for field in ("created", "expiration"):
            if doc.get(field):
                t = _dt.datetime.fromisoformat(doc[field].replace("Z", "+00:00"))
                getattr(m, field).CopyFrom(_timestamp(t))
        return cls(m, client)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultReference) and other._pb == self._pb

    def __repr__(self) -> str:
        return f"ResultReference(block={self.block!r}, key={self.key!r}, size={self.size})"


class ResultStoreClient:
    """A connection to one resultstore server (`host:port` or `http://host:port`), or to
    replicas it routes keys across: several URLs (a list, or separated by commas), or
    `dns://name:port` for every address a headless Service's name resolves to (see
    `resultstore.routing`).

    Thread-safe; one per process is enough. Every failed call raises a
    `resultstore.errors.ResultStoreError` subclass named after its gRPC status.
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]] = "127.0.0.1:50051",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        token: Optional[str] = None,
        tls_ca: Union[None, str, bytes, os.PathLike] = None,
        tls_cert: Union[None, str, bytes, os.PathLike] = None,
        tls_key: Union[None, str, bytes, os.PathLike] = None,
        tls_server_name: Optional[str] = None,
        dns_refresh: float = 30.0,
        replica_backoff: float = 5.0,
        local_copies: int = DEFAULT_LOCAL_COPIES,
        local_copy_ttl: float = DEFAULT_LOCAL_COPY_TTL,
    ):
        """`timeout`: seconds a call may take (`None`: no limit); a call that carries
        N bytes gets N / MIN_THROUGHPUT seconds more, and a stream is cut only when no
        message moved for `timeout` seconds. Errors name the call and the server
        (`DEADLINE_EXCEEDED calling Resolve on http://...: ...`).
        `token`: bearer token for servers with `[auth]`. TLS is on for `https://` URLs,
        `dns+https://` names, or when `tls_ca` is given: `tls_ca` is the CA that signed
        the server's certificate (PEM text, bytes or a path; the system roots when
        omitted), `tls_cert`/`tls_key` the client certificate for mutual TLS,
        `tls_server_name` the name to check the server's certificate against when it is
        not the URL's host (for a `dns+https://` name: that name). With several replicas:
        `dns_refresh` is how often a DNS name is looked up again, `replica_backoff` how
        long a replica that failed is tried only after the others (seconds).
        `local_copies`: bytes of values read by reference this client keeps, so a second
        `get` of the same reference in this process makes no call (the reference names its
        digest, so a copy cannot be another result; see `resultstore.local_copies`);
        `local_copy_ttl`: seconds a copy serves before the server is asked again, the
        longest a result deleted by another process stays readable here. Either at 0: off."""
        self.url = url
        self._copies = LocalCopies(local_copies, local_copy_ttl)
        self.timeout = timeout
        self.max_message_size = max_message_size
        endpoints = parse_endpoints(url)
        options = [
            ("grpc.max_send_message_length", max_message_size),
            ("grpc.max_receive_message_length", max_message_size),
        ]
        if endpoints.dns or len(endpoints.urls) > 1:
            # A replica that comes back is noticed within seconds, not gRPC's default minutes.
            options.append(("grpc.max_reconnect_backoff_ms", 5000))
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("resultstore: mutual TLS needs both tls_cert and tls_key")
        credentials = None
        if endpoints.tls or any(u.startswith("https://") for u in endpoints.urls) or tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(tls_ca), private_key=_pem(tls_key), certificate_chain=_pem(tls_cert)
            )

        def connect(replica_url: str, server_name: Optional[str]) -> tuple:
            name = tls_server_name or server_name
            if credentials is not None:
                extra = [("grpc.ssl_target_name_override", name)] if name else []
                channel = grpc.secure_channel(_target(replica_url), credentials, options=options + extra)
            else:
                channel = grpc.insecure_channel(_target(replica_url), options=options)
            intercepted = grpc.intercept_channel(channel, _Token(token)) if token else channel
            return channel, pb_grpc.ResultStoreStub(intercepted)

        self._router = Router(endpoints, connect, dns_refresh=dns_refresh, replica_backoff=replica_backoff)

    @property
    def replicas(self) -> list:
        """The replicas' ids (`host:port`), as the client knows them now."""
        return [r.id for r in self._router.replicas]

    def replica_for(self, key: str) -> str:
        """The replica a call for `key` would go to now (its owner, unless set aside)."""
        return self._router.order(key)[0].id

    def close(self) -> None:
        self._router.close()

    def __enter__(self) -> "ResultStoreClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _deadline(self, size: int = 0) -> Optional[float]:
        """The timeout of a unary call carrying `size` bytes either way."""
        return None if self.timeout is None else self.timeout + size / MIN_THROUGHPUT

    def _call(self, method: str, request: Any, key: str, size: int = 0) -> Any:
        """One unary call, routed by `key` (a storage key, or a List's prefix), failing
        over while replicas answer UNAVAILABLE."""
        timeout = self._deadline(size)
        return self._routed(key, method, lambda replica: getattr(replica.stub, method)(request, timeout=timeout))

    def _routed(self, key: str, method: str, call: Any) -> Any:
        """`call(replica)` on the replicas for `key` in turn, while they answer UNAVAILABLE."""
        last = None
        for replica in self._router.order(key):
            try:
                result = call(replica)
            except grpc.RpcError as e:
                if not self._router.failed_over(replica, e):
                    raise error_from_rpc(e, method, replica.url) from None
                last = (e, replica.url)
                continue
            self._router.failed_over(replica, None)
            return result
        raise error_from_rpc(last[0], method, last[1]) from None

    # Writing.
    def put(
        self,
        obj: Any,
        serializer: Optional[SerializerSpec] = None,
        storage: Optional[str] = None,
        persist: Optional[bool] = None,
        key: Optional[str] = None,
        expiration: Optional[Union[_dt.datetime, _dt.timedelta]] = None,
        *,
        retries: int = 0,
        cache_key: Optional[str] = None,
        flow: Optional[dict] = None,
        create_only: bool = False,
    ) -> Union[ResultLiteral, ResultReference]:
        """Stores `obj` as a task result and returns a literal or a reference.

        Settings follow Prefect's rules, applied by the server: `storage` (a block slug)
        and `serializer` default to the enclosing `flow`'s (a dict of `persist_result`,
        `result_storage`, `result_serializer`, `retries`), then to the server's default
        block and to `pickle`; `persist` is the task's explicit value, else the flow's,
        else true when `retries`, a `cache_key` or a `key` needs it. `True`, `False` and
        `None` come back as `ResultLiteral` unless a key is given. `expiration` is a time
        or a time from now.
        """
        flow = flow or {}
        ser = serializer_from(serializer or flow.get("result_serializer") or "pickle")
        task = pb.ResultSettings(
            result_storage=storage or "",
            result_serializer=_serializer_pb(ser),
            retries=retries,
            cache_key=cache_key or "",
        )
        if persist is not None:
            task.persist_result = persist
        request = pb.PutRequest(
            task=task,
            key=key or "",
            mode=pb.WRITE_MODE_CREATE_ONLY if create_only else pb.WRITE_MODE_OVERWRITE,
            # The key the server would make, made here, so the Put goes to the replica
            # that serves its reads (a result that is not persisted lives only there).
            new_key="" if key or cache_key else uuid.uuid4().hex,
        )
        if flow:
            request.flow.CopyFrom(self._flow_settings(flow))
        ts = _timestamp(expiration)
        if ts is not None:
            request.expiration.CopyFrom(ts)
        if (obj is True or obj is False or obj is None) and not key and not cache_key:
            request.literal = _LITERAL_OF_VALUE[obj]
        else:
            request.data = ser.dumps(obj)
        return self._stored(self._call("Put", request, key or cache_key or request.new_key, len(request.data)))

    @staticmethod
    def _flow_settings(flow: dict) -> pb.ResultSettings:
        unknown = set(flow) - {"persist_result", "result_storage", "result_serializer", "retries"}
        if unknown:
            raise ValueError(f"unknown flow settings: {', '.join(sorted(unknown))}")
        s = pb.ResultSettings(result_storage=flow.get("result_storage") or "", retries=flow.get("retries") or 0)
        if flow.get("persist_result") is not None:
            s.persist_result = flow["persist_result"]
        if flow.get("result_serializer") is not None:
            s.result_serializer.CopyFrom(_serializer_pb(serializer_from(flow["result_serializer"])))
        return s

    def _stored(self, reply: pb.PutResponse) -> Union[ResultLiteral, ResultReference]:
        if reply.WhichOneof("result") == "literal":
            return ResultLiteral(_VALUE_OF_LITERAL.get(reply.literal))
        # A copy of what the key held before names the old digest: a read by its reference
        # is the server's to answer now (it says the result changed).
        self._copies.forget(reply.reference.block, reply.reference.key)
        return ResultReference(reply.reference, self)

    def write_object(self, storage: str, key: str, content: bytes) -> ResultReference:
        """Stores bytes as Prefect's `ResultStore` wrote them (a record, a bare payload
        or a metadata document), byte for byte: a storage block's `write_path`. Objects
        above the unary message limit go through PutStream."""
        if len(content) > self._unary_payload_limit():
            chunks = (content[i : i + STREAM_CHUNK] for i in range(0, len(content), STREAM_CHUNK))
            return self.put_stream(chunks, storage=storage, key=key, object=True, size=len(content))
        request = pb.PutRequest(object=content, key=key, task=pb.ResultSettings(result_storage=storage))
        reference = self._call("Put", request, key, len(content)).reference
        self._copies.forget(reference.block, reference.key)
        return ResultReference(reference, self)

    def _unary_payload_limit(self) -> int:
        # Room for the settings and framing around the payload.
        return self.max_message_size - 64 * 1024

    # Streams: results above the unary message limit, a chunk at a time.
    def put_stream(
        self,
        chunks: Iterable[bytes],
        serializer: Optional[SerializerSpec] = None,
        storage: Optional[str] = None,
        persist: Optional[bool] = None,
        key: Optional[str] = None,
        expiration: Optional[Union[_dt.datetime, _dt.timedelta]] = None,
        *,
        create_only: bool = False,
        object: bool = False,
        size: Optional[int] = None,
        sha256: Optional[str] = None,
    ) -> ResultReference:
        """Stores serializer bytes (or, with `object=True`, an object as `write_object`
        takes it) sent as `chunks`, any number of bytes each. Memory on both sides stays a
        few chunks whatever the total. When `chunks` is exhausted the client sends `end`,
        the message that tells the server the payload is whole; if `chunks` raises, the
        call is cancelled without it and nothing is stored. Give `size` (and `sha256`)
        when the source may stop early without raising: the server then refuses a stream
        that does not match."""
        header = pb.PutStreamHeader(
            payload=pb.STREAM_PAYLOAD_OBJECT if object else pb.STREAM_PAYLOAD_DATA,
            task=pb.ResultSettings(result_storage=storage or ""),
            key=key or "",
            mode=pb.WRITE_MODE_CREATE_ONLY if create_only else pb.WRITE_MODE_OVERWRITE,
            sha256=sha256 or "",
            new_key="" if key else uuid.uuid4().hex,
        )
        if serializer is not None or not object:
            header.task.result_serializer.CopyFrom(_serializer_pb(serializer_from(serializer or "pickle")))
        if persist is not None:
            header.task.persist_result = persist
        if size is not None:
            header.size = size
        ts = _timestamp(expiration)
        if ts is not None:
            header.expiration.CopyFrom(ts)

        # Cancels the call when no message could be sent (or no reply came) for `timeout`.
        future: list = []
        watchdog = _Watchdog(self.timeout, lambda: future and future[0].cancel())

        def messages() -> Iterator[pb.PutStreamRequest]:
            yield pb.PutStreamRequest(header=header)
            for chunk in chunks:
                for i in range(0, len(chunk), STREAM_CHUNK):
                    watchdog.kick()
                    yield pb.PutStreamRequest(chunk=bytes(chunk[i : i + STREAM_CHUNK]))
            watchdog.kick()
            yield pb.PutStreamRequest(end=pb.PutStreamEnd())

        # The first replica for the key, without failover: the chunks are consumed as they
        # are sent, so they could not be sent again.
        replica = self._router.order(key or header.new_key)[0]
        try:
            future.append(replica.stub.PutStream.future(messages(), timeout=None))
            reply = future[0].result()
        except (grpc.RpcError, grpc.FutureCancelledError) as e:
            if watchdog.fired:
                raise DeadlineExceeded(
                    f"the stream made no progress for {self.timeout} s", call="PutStream", server=replica.url
                ) from None
            if not isinstance(e, grpc.RpcError):
                raise
            self._router.failed_over(replica, e)
            raise error_from_rpc(e, "PutStream", replica.url) from None
        finally:
            watchdog.stop()
        self._router.failed_over(replica, None)
        return self._stored(reply)

    def put_file(self, path: Union[str, os.PathLike], serializer: Optional[SerializerSpec] = None, **kwargs: Any) -> ResultReference:
        """Streams a file of serializer bytes into a result (its size is announced)."""
        size = os.stat(path).st_size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(STREAM_CHUNK)
                    if not chunk:
                        return
                    yield chunk

        return self.put_stream(chunks(), serializer, size=size, **kwargs)

    def get_stream(
        self,
        target: Union[ResultReference, "PrefectDocument", tuple],
        *,
        as_stored: bool = False,
        allow_expired: bool = False,
        bypass_cache: bool = False,
        want: Optional[str] = None,
        serializer: Optional[SerializerSpec] = None,
    ) -> "ResultStream":
        """Reads a stored record in chunks: `target` is a reference, a `PrefectDocument`
        or `(block, key)`. Iterate the returned `ResultStream` for the bytes (serializer
        bytes; with `as_stored` the object as stored; with `want="raw"` the value bytes
        and `want="json"` the value as JSON, as Resolve gives them, at any size); the last
        iteration checks them against the server's trailer, so only a loop that ends
        without an exception read them whole. `serializer` names the serializer of a bare
        payload (a Prefect 3 flow result) when its bytes cannot tell. A stream that makes
        no progress for `timeout` seconds fails with `DeadlineExceeded`."""
        request = pb.GetRequest(allow_expired=allow_expired, bypass_cache=bypass_cache, as_stored=as_stored)
        _set_target(request, target)
        if want is not None:
            request.want = {"raw": pb.WANT_RAW, "json": pb.WANT_JSON}[want]
        if serializer is not None:
            request.serializer_hint.CopyFrom(_serializer_pb(serializer_from(serializer)))

        # Fails over like a unary call until the first message arrived; not after.
        def first_message(replica: Any) -> tuple:
            url = replica.url
            call = replica.stub.GetStream(request, timeout=None)
            watchdog = _Watchdog(self.timeout, call.cancel)
            try:
                return call, next(call, None), watchdog, url
            except grpc.RpcError:
                watchdog.stop()
                if watchdog.fired:
                    raise DeadlineExceeded(
                        f"no reply within {self.timeout} s", call="GetStream", server=url
                    ) from None
                raise

        call, first, watchdog, url = self._routed(_target_key(target), "GetStream", first_message)
        return ResultStream(call, self, first, watchdog=watchdog, server=url)

    def get_to_file(self, target: Union[ResultReference, tuple], path: Union[str, os.PathLike], **kwargs: Any) -> "ResultStream":
        """Reads a stored record into `path`, through `PATH.partial`, renamed only when
        the stream ended whole. Returns the finished stream (its `trailer` says what was
        written)."""
        partial = f"{os.fspath(path)}.partial"
        stream = self.get_stream(target, **kwargs)
        try:
            with open(partial, "wb") as f:
                for chunk in stream:
                    f.write(chunk)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        os.replace(partial, path)
        return stream

    # Reading. Every read works at any size: a reference's size says whether one message
    # holds the value (then one Resolve); other reads, and large ones, take one GetStream
    # of the value, so no read spends a refused unary call before it streams.
    def _fits_one_message(self, size: int) -> bool:
        return size <= self._unary_payload_limit()

    def get(
        self,
        target: Union[ResultReference, ResultLiteral, "PrefectDocument", dict, str],
        *,
        allow_expired: bool = False,
        bypass_cache: bool = False,
    ) -> Any:
        """The value of a reference (or of its `to_dict()` document, of a literal, or of a
        `PrefectDocument`)."""
        if isinstance(target, ResultLiteral):
            return target.value
        if isinstance(target, PrefectDocument):
            return self.load_prefect(target.block, target.doc, allow_expired=allow_expired)
        if isinstance(target, str):
            target = json.loads(target)
        if isinstance(target, dict):
            if target.get("type") == "literal":
                return target.get("value")
            target = ResultReference.from_dict(target, self)
        if not self._fits_one_message(target.size):
            stream = self.get_stream(target, want="raw", allow_expired=allow_expired, bypass_cache=bypass_cache)
            return self._value_of_stream(stream)
        copy = LocalCopies.key_of(target.message) if self._copies.enabled else None
        if copy is not None and not bypass_cache:
            reply = self._copies.get(copy)
            # An expired result is the server's to refuse (or to serve, with allow_expired).
            if reply is not None and (allow_expired or not _expired(reply.reference)):
                return self._load(reply, allow_expired)
        request = pb.ResolveRequest(
            reference=target.message, want=pb.WANT_RAW, allow_expired=allow_expired, bypass_cache=bypass_cache
        )
        reply = self._call("Resolve", request, target.key, target.size)
        if copy is not None and reply.HasField("data"):
            self._copies.put(copy, reply)
        return self._load(reply, allow_expired)

    def load(
        self,
        storage: str,
        key: str,
        serializer: Optional[SerializerSpec] = None,
        *,
        allow_expired: bool = False,
    ) -> Any:
        """The value stored at `key` in a block (a record Prefect or anyone wrote), at any
        size. `serializer` is needed only for bare payloads (Prefect 3 flow results) whose
        bytes do not say what they are (JSON text and base64 pickles do)."""
        stream = self.get_stream((storage, key), want="raw", allow_expired=allow_expired, serializer=serializer)
        return self._value_of_stream(stream)

    def load_prefect(self, storage: str, document: Union[str, dict], *, allow_expired: bool = False) -> Any:
        """The value a Prefect API document points to (see `PrefectDocument`), read in the
        server's block `storage`: a task run state's `data`, a Prefect 2 result document,
        or a literal document (its value, with no call)."""
        doc = PrefectDocument(storage, document)
        is_literal, value = doc.literal
        if is_literal:
            return value
        return self._value_of_stream(self.get_stream(doc, want="raw", allow_expired=allow_expired))

    def _load(self, reply: pb.ResolveResponse, allow_expired: bool) -> Any:
        if reply.WhichOneof("value") == "literal":
            return _VALUE_OF_LITERAL.get(reply.literal)
        ser = _serializer_of(reply.reference)
        inner = _innermost(ser)
        # The server removed base64 and compression: load the value bytes directly.
        if reply.value_serializer == "json" and isinstance(inner, JSONSerializer):
            return inner.loads(reply.data)
        if reply.value_serializer == "pickle" and isinstance(inner, PickleSerializer):
            return inner.loads_value(reply.data)
        # A layer the server leaves alone (a compressionlib it does not know): do it all here.
        return ser.loads(self._serializer_bytes(ResultReference(reply.reference, self), allow_expired))

    def _value_of_stream(self, stream: "ResultStream") -> Any:
        """The value whose value bytes `stream` carries (GetStream with `want="raw"`).
        Pickles load as they arrive (one chunk held at a time beside the value); JSON
        text is read whole, as every JSON library reads it."""
        ser = _serializer_of(stream.reference.message)
        inner = _innermost(ser)
        if stream.value_serializer == "pickle" and isinstance(inner, PickleSerializer):
            chunks = iter(stream)
            value = inner.load_value(io.BufferedReader(_ChunkReader(chunks)))
            # The rest (nothing, for a whole pickle) and the trailer's check.
            for _ in chunks:
                pass
            return value
        data = stream.read()
        if stream.value_serializer == "json" and isinstance(inner, JSONSerializer):
            return inner.loads(data)
        # The server left the layers alone: the value bytes are the serializer bytes.
        return ser.loads(data)

    def _serializer_bytes(self, reference: ResultReference, allow_expired: bool) -> bytes:
        """The serializer bytes of a reference's result, in one Get or, when large, streamed."""
        if not self._fits_one_message(reference.size):
            return self.get_stream(reference, allow_expired=allow_expired).read()
        get = pb.GetRequest(reference=reference.message, allow_expired=allow_expired)
        return self._call("Get", get, reference.key, reference.size).data

    def resolve_json(
        self, target: Union[ResultReference, "PrefectDocument", tuple], *, allow_expired: bool = False
    ) -> str:
        """The value as JSON text, transcoded by the server (plain data only); for
        clients without a Python runtime's view of the value, at any size. `target` is a
        reference, a `PrefectDocument` or a `(block, key)` pair."""
        if isinstance(target, PrefectDocument) and target.literal[0]:
            return json.dumps(target.literal[1])
        # JSON of a pickle may be larger than the pickle: one message only for small ones.
        if isinstance(target, ResultReference) and self._fits_one_message(4 * target.size):
            request = pb.ResolveRequest(want=pb.WANT_JSON, allow_expired=allow_expired)
            _set_target(request, target)
            return self._call("Resolve", request, _target_key(target), 4 * target.size).json
        return self.get_stream(target, want="json", allow_expired=allow_expired).read().decode()

    def read_record(self, storage: str, key: str, *, allow_expired: bool = False) -> tuple:
        """`(reference, serializer bytes, metadata dict)` of the record at `key`, at any size."""
        stream = self.get_stream((storage, key), allow_expired=allow_expired)
        data = stream.read()
        return stream.reference, data, stream.metadata

    def read_object(self, storage: str, key: str) -> bytes:
        """The object at `key` as stored (what a storage block's `read_path` returns),
        through the server's cache, in one GetStream whatever its size. Expired records
        are returned too: Prefect checks expiration itself."""
        return self.get_stream((storage, key), as_stored=True, allow_expired=True).read()

    def exists(self, storage: str, key: str) -> bool:
        return self._call("Exists", pb.ExistsRequest(location=pb.Location(block=storage, key=key)), key).exists

    def delete(self, storage: str, key: str) -> None:
        self._copies.forget(storage, key)
        self._call("Delete", pb.DeleteRequest(location=pb.Location(block=storage, key=key)), key)

    def delete_prefix(self, storage: str = "", prefix: str = "", *, all: bool = False) -> dict:
        """Deletes every result whose key starts with `prefix` (a string prefix) in a block,
        on the server, a page at a time; the whole block only with `prefix=""` and
        `all=True`. Returns `{"deleted": n, "bytes": b}`. Needs a delete-scoped token."""
        self._copies.forget_prefix(storage, prefix)
        request = pb.DeletePrefixRequest(block=storage, prefix=prefix, all=all)
        # A prefix may hold any number of results: no deadline but the server's own.
        reply = self._routed(prefix, "DeletePrefix", lambda replica: replica.stub.DeletePrefix(request))
        return {"deleted": reply.deleted, "bytes": reply.bytes}

    def gc(
        self,
        storage: str = "",
        *,
        older_than: Optional[_dt.timedelta] = None,
        prefix: str = "",
        dry_run: bool = False,
        progress: Optional[Callable[[dict], Any]] = None,
    ) -> dict:
        """Deletes (or, with `dry_run`, counts) the expired results of a block: by their
        records' expiration, or last written longer ago than `older_than` (else the block's
        `retention`). `progress` hears the running totals every 1000 listed results.
        Returns the totals: scanned, expired, deleted, bytes, rewritten, unreadable,
        orphaned_documents (split blocks)."""
        request = pb.SweepRequest(block=storage, prefix=prefix, dry_run=dry_run)
        if older_than is not None:
            request.older_than.FromTimedelta(older_than)
        fields = ("scanned", "expired", "deleted", "bytes", "rewritten", "unreadable", "orphaned_documents")

        def sweep(replica: Any) -> dict:
            last = None
            for p in replica.stub.Sweep(request):
                last = {f: getattr(p, f) for f in fields}
                if p.done:
                    return last
                if progress is not None:
                    progress(last)
            raise IncompleteStream(f"the sweep of {storage or 'the default block'} ended without its totals")

        return self._routed(prefix, "Sweep", sweep)

    def list(self, storage: str = "", prefix: str = "") -> Iterator[str]:
        """Every key under `prefix` in a block, in order, page by page."""
        token = ""
        while True:
            page = self._call("List", pb.ListRequest(block=storage, prefix=prefix, page_token=token), prefix)
            for entry in page.entries:
                yield entry.key
            if not page.next_page_token:
                return
            token = page.next_page_token

    def blocks(self) -> list:
        """The server's blocks: dicts of slug, block_type, format, url, is_default."""
        reply = self._call("ListBlocks", pb.ListBlocksRequest(), "")
        return [
            {"slug": b.slug, "block_type": b.block_type, "format": b.format, "url": b.url, "is_default": b.is_default}
            for b in reply.blocks
        ]


class ResultStream:
    """A GetStream being read: `reference` and `metadata` from its header, then the bytes
    by iteration. Iteration ends only when the trailer arrived and matched every byte
    (`IncompleteStream` otherwise); a server error mid-way raises its status's error."""

    def __init__(
        self,
        call: Any,
        client: ResultStoreClient,
        first: Optional[pb.GetStreamResponse],
        *,
        watchdog: Optional[_Watchdog] = None,
        server: str = "",
    ):
        """`first`: the stream's first message, already read (None: the stream ended);
        `watchdog` cancels the call when it stalls."""
        self._call = call
        self._watchdog = watchdog
        self._server = server
        self._hash = hashlib.sha256()
        self._received = 0
        self.trailer: Optional[pb.GetStreamTrailer] = None
        if first is None:
            self._stop()
            raise IncompleteStream("the stream ended before its header")
        if first.WhichOneof("part") != "header":
            self._stop()
            raise IncompleteStream("the stream did not start with a header")
        self.reference = ResultReference(first.header.reference, client)
        self.metadata = json.loads(first.header.metadata_json or "{}")
        #: With `want`: what the value bytes are (`json`, `pickle`, ...).
        self.value_serializer = first.header.value_serializer

    def _stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._parts()
        except grpc.RpcError as e:
            if self._watchdog is not None and self._watchdog.fired:
                raise DeadlineExceeded(
                    f"the stream made no progress for {self._watchdog.timeout} s",
                    call="GetStream",
                    server=self._server,
                ) from None
            raise error_from_rpc(e, "GetStream", self._server) from None
        finally:
            self._stop()

    def _parts(self) -> Iterator[bytes]:
        for message in self._call:
            if self._watchdog is not None:
                self._watchdog.kick()
            part = message.WhichOneof("part")
            if part == "chunk":
                self._hash.update(message.chunk)
                self._received += len(message.chunk)
                yield message.chunk
            elif part == "trailer":
                t = message.trailer
                if t.size != self._received or t.sha256 != self._hash.hexdigest():
                    raise IncompleteStream(
                        f"received {self._received} bytes with sha256 {self._hash.hexdigest()}; "
                        f"the server sent {t.size} bytes with sha256 {t.sha256}"
                    )
                self.trailer = t
                return
            else:
                raise IncompleteStream("a second header arrived")
        raise IncompleteStream("the stream ended without its trailer")

    def read(self) -> bytes:
        """All remaining bytes, for results known to fit in memory."""
        return b"".join(self)
