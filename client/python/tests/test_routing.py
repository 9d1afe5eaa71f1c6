"""Key routing across replicas from Python: the same owners as the Rust client's, real
servers sharing one storage folder, failover when one stops."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, server_binary
from resultstore import ResultStoreClient
from resultstore.routing import parse_endpoints, rendezvous_order, rendezvous_score, replica_id

BLOCK = "local-file-system/default"


def test_scores_match_the_shared_vectors():
    """The vectors the Rust client checks too (client/routing-vectors.json)."""
    vectors = json.loads((REPO / "client" / "routing-vectors.json").read_text())
    assert len(vectors["cases"]) >= 10
    for case in vectors["cases"]:
        assert rendezvous_order(case["replicas"], case["key"]) == case["order"], case["key"]
        for s in case["scores"]:
            assert rendezvous_score(s["replica"], case["key"]) == int(s["score"])


def test_endpoints_parse_like_the_rust_client():
    assert parse_endpoints("http://a:1").urls == ("http://a:1",)
    assert parse_endpoints(" http://a:1/, https://B:2 ").urls == ("http://a:1", "https://B:2")
    assert parse_endpoints(["a:1", "b:2"]).urls == ("a:1", "b:2")
    e = parse_endpoints("dns+https://rs-headless.ns.svc:50051")
    assert (e.dns, e.tls, e.host, e.port) == (True, True, "rs-headless.ns.svc", 50051)
    for bad in ["", "dns://rs", "dns://:1", "ftp://a:1", "dns://rs:x"]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)
    assert replica_id("HTTP://Host.Example") == "host.example:80"
    assert replica_id("https://[::1]") == "[::1]:443"
    assert replica_id("127.0.0.1:7") == "127.0.0.1:7"


def storage_ops(server, operation: str) -> int:
    """The replica's storage operations of one kind on the block, from its /metrics."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("resultstore_storage_operations_total{") and f'operation="{operation}"' in line:
            if f'block="{BLOCK}"' in line:
                total += int(line.rsplit(" ", 1)[1])
    return total


def cache_entries(server) -> int:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return next(int(l.split()[-1]) for l in text.splitlines() if l.startswith("resultstore_cache_entries "))


def test_three_replicas_python_and_rust_clients_route_each_key_to_one_owner(start_server, tmp_path):
    storage = tmp_path / "shared-storage"
    config = textwrap.dedent(
        f"""
        default_block = "{BLOCK}"
        default_serializer = "json"
        [blocks."{BLOCK}"]
        url = "file://{storage}"
        """
    )
    servers = [start_server(config, root=tmp_path / f"replica-{i}", metrics=True) for i in range(3)]
    ids = [replica_id(s.url) for s in servers]
    keys = [f"py-{i:03}" for i in range(60)]
    owner = {k: ids.index(rendezvous_order(ids, k)[0]) for k in keys}
    counts = [sum(1 for k in keys if owner[k] == r) for r in range(3)]
    assert all(n >= 8 for n in counts), counts

    with ResultStoreClient([s.url for s in servers], replica_backoff=0.0) as client:
        assert sorted(client.replicas) == sorted(ids)
        for k in keys:
            assert client.replica_for(k) == ids[owner[k]]
            client.put({"key": k}, key=k)
        # Each Put went to its key's owner, which cached it.
        assert [storage_ops(s, "put") for s in servers] == counts
        assert [cache_entries(s) for s in servers] == counts
        for k in keys:
            assert client.load(BLOCK, k) == {"key": k}
        assert [storage_ops(s, "get") for s in servers] == [0, 0, 0], "every read hit its owner's cache"

        # The Rust CLI, given the same three URLs, reads each key on the same owner: no
        # replica reads storage, so no read landed anywhere but the replica that cached it.
        urls = ",".join(s.url for s in servers)
        rust = Path(os.environ.get("RESULTSTORE_BIN", REPO / "target" / "debug" / "resultstore"))
        assert rust == server_binary()
        for k in keys[:20]:
            out = subprocess.run(
                [str(rust), "resolve", "--server", urls, "--block", BLOCK, "--key", k, "--json"],
                capture_output=True, text=True, timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout) == {"key": k}
        assert [storage_ops(s, "get") for s in servers] == [0, 0, 0], "the Rust client routed alike"

        # Stop the replica with the most keys: every key still reads; only its keys move,
        # each to its second choice, which reads it from storage once.
        stopped = counts.index(max(counts))
        servers[stopped].stop()
        alive = [i for i in range(3) if i != stopped]
        for k in keys:
            assert client.load(BLOCK, k) == {"key": k}
        for r in alive:
            moved_here = sum(
                1 for k in keys if owner[k] == stopped and rendezvous_order(ids, k)[1] == ids[r]
            )
            assert storage_ops(servers[r], "get") == moved_here, f"replica {r} read only the keys it took over"
        for k in keys:
            if owner[k] != stopped:
                assert client.replica_for(k) == ids[owner[k]], f"{k} stays on its owner"


def test_dns_name_resolves_to_the_replica(server):
    port = server.address.rsplit(":", 1)[1]
    with ResultStoreClient(f"dns://localhost:{port}") as client:
        assert f"127.0.0.1:{port}" in client.replicas
        ref = client.put([1, 2], key="dns-key", serializer="json")
        assert client.get(ref) == [1, 2]
    with pytest.raises(OSError):
        ResultStoreClient("dns://no-such-host.invalid:1")
