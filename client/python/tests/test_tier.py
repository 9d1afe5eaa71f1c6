"""One cache for every client: three replicas with `[tier] peers`, read by a client that
does not route at all (grpcio's generated stubs, each call to the next replica in turn,
as a Go or Java client behind a Kubernetes Service would be)."""

from __future__ import annotations

import socket
import textwrap
import urllib.request

import grpc

from resultstore.v1 import resultstore_pb2 as pb
from resultstore.v1 import resultstore_pb2_grpc as pb_grpc

BLOCK = "local-file-system/default"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def metric(server, prefix: str, label: str = "") -> int:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix) and label in line
    )


def storage_gets(servers) -> int:
    return sum(metric(s, "resultstore_storage_operations_total{", 'operation="get"') for s in servers)


def location(key: str) -> pb.ResolveRequest:
    return pb.ResolveRequest(location=pb.Location(block=BLOCK, key=key), want=pb.WANT_JSON)


def put_json(key: str, value: str) -> pb.PutRequest:
    return pb.PutRequest(
        json=value,
        task=pb.ResultSettings(result_serializer=pb.Serializer(type="json")),
        key=key,
    )


def start_tier(start_server, tmp_path, storage):
    ports = free_ports(3)
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    config = textwrap.dedent(
        f"""
        default_block = "{BLOCK}"
        [blocks."{BLOCK}"]
        url = "file://{storage}"
        [tier]
        peers = "{peers}"
        copies = 0
        """
    )
    servers = []
    for i, port in enumerate(ports):
        root = tmp_path / f"replica-{i}"
        root.mkdir()
        servers.append(
            start_server(config, root=root, listen=f"127.0.0.1:{port}", metrics=True,
                         extra_args=["--advertise", f"127.0.0.1:{port}"])
        )
    return servers


def test_round_robin_stubs_fill_each_result_once_and_see_overwrites_at_once(start_server, tmp_path):
    storage = tmp_path / "shared-storage"
    keys = [f"tier/py-{i:03}" for i in range(90)]
    # Written by a server outside the tier, so the tier's caches start empty.
    writer = start_server(
        textwrap.dedent(
            f"""
            default_block = "{BLOCK}"
            [blocks."{BLOCK}"]
            url = "file://{storage}"
            """
        ),
        root=tmp_path / "writer",
    )
    with grpc.insecure_channel(writer.address) as channel:
        stub = pb_grpc.ResultStoreStub(channel)
        for k in keys:
            stub.Put(put_json(k, f'"{k}"'))
    writer.stop()

    servers = start_tier(start_server, tmp_path, storage)
    channels = [grpc.insecure_channel(s.address) for s in servers]
    stubs = [pb_grpc.ResultStoreStub(c) for c in channels]
    try:
        for round_ in range(2):
            for i, k in enumerate(keys):
                reply = stubs[(i + round_) % 3].Resolve(location(k))
                assert reply.json == f'"{k}"'
        # Each result read from storage once, by its owner (without the tier: 180).
        assert storage_gets(servers) == len(keys)
        forwarded = sum(metric(s, "resultstore_tier_forwarded_total{", 'method="Resolve"') for s in servers)
        assert forwarded >= len(keys)
        # HTTP callers are served through the owners too (the HTTP API is the gRPC
        # handlers transcoded): reading every key over HTTP, round-robin, reads no storage.
        import httpx

        for i, k in enumerate(keys):
            r = httpx.get(f"{servers[i % 3].url}/v1/blocks/local-file-system/default/results/{k}", timeout=10)
            assert r.status_code == 200 and r.json() == k
        assert storage_gets(servers) == len(keys)

        # An overwrite through one replica is what every replica answers next, at once.
        for i, k in enumerate(keys[:15]):
            stubs[i % 3].Put(put_json(k, '"new"'))
            for stub in stubs:
                assert stub.Resolve(location(k)).json == '"new"'
        # A delete through one is seen through all, with the same status.
        stubs[0].Delete(pb.DeleteRequest(location=pb.Location(block=BLOCK, key=keys[0])))
        for stub in stubs:
            try:
                stub.Resolve(location(keys[0]))
                raise AssertionError("deleted")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for c in channels:
            c.close()
