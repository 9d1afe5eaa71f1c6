"""Key routing across replicas: which server a call goes to.

The same rules as the Rust client's (`client/src/routing.rs`), checked against the same
vectors (`client/routing-vectors.json`), so a Python worker and a Rust one send each key
to the same replica and share its cache:

    score(replica, key) = first 8 bytes, big-endian, of sha256(replica_id + "\\n" + key)
    replica_id          = "host:port" as the endpoint names it, lowercase ("[v6]:port")
    order               = replicas by score, highest first (ties: smaller id first)

A call's key is the result's storage key (a Put's `key`, else its `cache_key`; a
reference's or a location's key). A Put without either names its key itself (`new_key`,
a uuid4 hex as the server would make) and goes to that key's owner; List goes to the
owner of its prefix.

Failover: a call that ends UNAVAILABLE is tried on the next replica in the key's order.
A replica that failed at the transport, or said it is draining, is set aside for
`replica_backoff` seconds (tried after the others); one whose storage was unavailable
(trailer `resultstore-unavailable: storage`) is not. A write that failed over may have
been applied by the replica that failed: an overwrite or delete repeated is the same, a
`create_only` put may then raise AlreadyExists.

Discovery: `dns://name:port` (or `dns+https://name:port`) is every address the name
resolves to (a Kubernetes headless Service), looked up again when `dns_refresh` seconds
have passed, by the call that finds the list stale; a lookup that fails or finds nothing
keeps the list it had.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence, Union

import grpc

__all__ = ["rendezvous_score", "rendezvous_order", "replica_id", "Endpoints", "parse_endpoints"]

#: The trailer a server sets on an UNAVAILABLE status to say why (`draining`, `storage`).
UNAVAILABLE_REASON = "resultstore-unavailable"
#: Its value when the replica's object store did not answer (the replica itself is fine).
UNAVAILABLE_STORAGE = "storage"


def rendezvous_score(replica: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{replica}\n{key}".encode()).digest()[:8], "big")


def rendezvous_order(replicas: Iterable[str], key: str) -> List[str]:
    """Replica ids in the order a key tries them: its owner first."""
    return sorted(replicas, key=lambda r: (-rendezvous_score(r, key), r))


def replica_id(url: str) -> str:
    """`host:port` of a URL (`http://`, `https://`, or none), lowercase; the scheme's
    default port when it names none."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    defaults = {"http": 80, "https": 443, "grpc": 80}
    if scheme.lower() not in defaults:
        raise ValueError(f"resultstore: unsupported URL {url!r}; use host:port, http://host:port or https://host:port")
    authority = rest.split("/", 1)[0].lower()
    if not authority:
        raise ValueError(f"resultstore: {url!r} names no host")
    head, colon, port = authority.rpartition(":")
    has_port = bool(colon) and "]" not in port
    return authority if has_port else f"{authority}:{defaults[scheme.lower()]}"


@dataclass(frozen=True)
class Endpoints:
    """Fixed `urls`, or every address `host` resolves to at `port` (`dns` is true)."""

    urls: tuple = ()
    dns: bool = False
    tls: bool = False
    host: str = ""
    port: int = 0


def parse_endpoints(spec: Union[str, Sequence[str]]) -> Endpoints:
    """`http://a:1` or `a:1` (one server); several, as a list or separated by commas;
    `dns://name:port` or `dns+https://name:port`."""
    if isinstance(spec, str):
        text = spec.strip()
        for scheme, tls in (("dns://", False), ("dns+http://", False), ("dns+https://", True)):
            if text.startswith(scheme):
                rest = text[len(scheme) :].rstrip("/")
                host, colon, port = rest.rpartition(":")
                if not colon or not host or not port.isdigit() or "/" in host or "," in host:
                    raise ValueError(f"resultstore: {spec!r}: expected {scheme}name:port")
                return Endpoints(dns=True, tls=tls, host=host, port=int(port))
        items = [u for u in (p.strip() for p in text.split(",")) if u]
    else:
        items = [u.strip() for u in spec if u.strip()]
    if not items:
        raise ValueError("resultstore: no server named")
    urls = tuple(u.rstrip("/") for u in items)
    for u in urls:
        replica_id(u)
    return Endpoints(urls=urls)


@dataclass
class Replica:
    id: str
    url: str
    channel: Any
    stub: Any
    set_aside_until: float = 0.0

    def set_aside(self) -> bool:
        return time.monotonic() < self.set_aside_until


@dataclass
class Router:
    """The replicas of one client and how calls choose among them. `connect(url,
    server_name)` makes `(channel, stub)` for one replica URL."""

    endpoints: Endpoints
    connect: Callable[[str, Optional[str]], tuple]
    dns_refresh: float = 30.0
    replica_backoff: float = 5.0
    replicas: List[Replica] = field(default_factory=list)
    _next_refresh: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.endpoints.dns:
            ids = self._resolve()
            if not ids:
                raise ValueError(f"resultstore: {self.endpoints.host} resolves to no address")
            self.replicas = self._build(ids)
            self._next_refresh = time.monotonic() + self.dns_refresh
        else:
            self.replicas = [self._replica(replica_id(u), u, None) for u in self.endpoints.urls]

    def _replica(self, rid: str, url: str, server_name: Optional[str]) -> Replica:
        channel, stub = self.connect(url, server_name)
        return Replica(rid, url, channel, stub)

    def _resolve(self) -> List[str]:
        e = self.endpoints
        infos = socket.getaddrinfo(e.host, e.port, type=socket.SOCK_STREAM)
        ids = set()
        for family, _, _, _, addr in infos:
            ids.add(f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}")
        return sorted(ids)

    def _build(self, ids: List[str]) -> List[Replica]:
        current = {r.id: r for r in self.replicas}
        scheme = "https" if self.endpoints.tls else "http"
        out = []
        for rid in ids:
            out.append(current.pop(rid, None) or self._replica(rid, f"{scheme}://{rid}", self.endpoints.host))
        for gone in current.values():
            gone.channel.close()
        return out

    def _refresh_if_due(self) -> None:
        if not self.endpoints.dns or time.monotonic() < self._next_refresh:
            return
        with self._lock:
            if time.monotonic() < self._next_refresh:
                return
            try:
                ids = self._resolve()
                if ids:
                    self.replicas = self._build(ids)
            except OSError:
                pass  # Keep the list it had; try again at the next interval.
            self._next_refresh = time.monotonic() + self.dns_refresh

    def order(self, key: str) -> List[Replica]:
        """The replicas a call for `key` (a storage key, or a List's prefix) tries: in
        `rendezvous_order`, set-aside ones last."""
        self._refresh_if_due()
        replicas = self.replicas
        if len(replicas) == 1:
            return list(replicas)
        by_id = {r.id: r for r in replicas}
        ordered = [by_id[i] for i in rendezvous_order(by_id, key)]
        return sorted(ordered, key=Replica.set_aside)  # stable: set-aside ones keep their order

    def failed_over(self, replica: Replica, error: Optional[Any]) -> bool:
        """Notes how a call to `replica` ended (`error`: a grpc.RpcError or None); returns
        whether the call goes on to the next replica."""
        if error is not None and error.code() == grpc.StatusCode.UNAVAILABLE:
            trailers = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
            if trailers.get(UNAVAILABLE_REASON) != UNAVAILABLE_STORAGE:
                replica.set_aside_until = time.monotonic() + self.replica_backoff
            return True
        replica.set_aside_until = 0.0
        return False

    def close(self) -> None:
        for r in self.replicas:
            r.channel.close()
