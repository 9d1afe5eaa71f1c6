"""Copies of results this process read by reference, so a second read makes no call.

Why this is safe: a reference names its result's digest (the sha256 of the stored record),
and the server answers a read by reference only with the bytes of that digest. Two reads
of one digest with one serializer config give the same value bytes, so a kept reply can
never be a different result than the server would send. What a copy can outlive is the
result itself: a result deleted in storage (by this process's `delete`, the copy goes at
once; by anyone else, it stays readable here for at most `ttl` seconds), and the
record's expiration, which is checked at every read, as the server checks it.

Bounded by bytes (`capacity`, the value bytes kept) and by age (`ttl`); least recently
used copies go first. A reply larger than an eighth of the capacity is not kept, so one
large result cannot flush the rest.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Dict, Optional, Set, Tuple

from resultstore.v1 import resultstore_pb2 as pb

__all__ = ["LocalCopies"]

#: What a copy is filed under: the digest and the serializer config the reference names.
CopyKey = Tuple[str, str, str]


class LocalCopies:
    """Resolve replies (value bytes and reference) by digest; thread-safe."""

    def __init__(self, capacity: int, ttl: float):
        if capacity < 0 or ttl < 0:
            raise ValueError("local copies: capacity and ttl are zero (off) or more")
        self.capacity = capacity
        self.ttl = ttl
        self.hits = 0
        #: Seconds, for ages (a test sets it to move time on).
        self.clock = time.monotonic
        self._bytes = 0
        self._entries: "OrderedDict[CopyKey, Tuple[float, pb.ResolveResponse]]" = OrderedDict()
        # The copies of each (block, key), so forgetting a location costs its copies only.
        self._at: Dict[Tuple[str, str], Set[CopyKey]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.ttl > 0

    @staticmethod
    def key_of(reference: pb.Reference) -> Optional[CopyKey]:
        """Where a reference's copy is filed; None for a reference without a digest."""
        if not reference.sha256:
            return None
        s = reference.serializer
        return (reference.sha256, s.type, s.config_json)

    def get(self, key: CopyKey) -> Optional[pb.ResolveResponse]:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored, reply = entry
            if now - stored >= self.ttl:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return reply

    def put(self, key: CopyKey, reply: pb.ResolveResponse) -> None:
        size = len(reply.data)
        if size > self.capacity // 8:
            return
        with self._lock:
            self._drop(key)
            self._entries[key] = (self.clock(), reply)
            self._at.setdefault((reply.reference.block, reply.reference.key), set()).add(key)
            self._bytes += size
            while self._bytes > self.capacity:
                self._drop(next(iter(self._entries)))

    def forget(self, block: str, key: str) -> None:
        """Drops the copies of the result at `key` in `block` (it was deleted or replaced)."""
        with self._lock:
            # An empty block is the server's default, which may be any of them.
            places = [(block, key)] if block else [at for at in self._at if at[1] == key]
            for place in places:
                for k in list(self._at.get(place, ())):
                    self._drop(k)

    def forget_prefix(self, block: str, prefix: str) -> None:
        """Drops the copies of every result whose key starts with `prefix` in `block`
        (an empty `block`: in any block, as the server's default may be any of them)."""
        with self._lock:
            for b, k in [at for at in self._at if (not block or at[0] == block) and at[1].startswith(prefix)]:
                for copy in list(self._at.get((b, k), ())):
                    self._drop(copy)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _drop(self, key: CopyKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        reply = entry[1]
        self._bytes -= len(reply.data)
        where = (reply.reference.block, reply.reference.key)
        copies = self._at.get(where)
        if copies is not None:
            copies.discard(key)
            if not copies:
                del self._at[where]
