"""The client's side of the contract: keys exactly as written both ways with real Prefect,
every read API at any size (no refused unary call first), reads by Prefect API documents,
deadlines that name the call and the server, and PutStreams that commit only when whole
(a client that crashes or drops its connection stores nothing)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer, PickleSerializer

from resultstore import PrefectDocument, ResultStoreClient
from resultstore.errors import DeadlineExceeded
from resultstore.v1 import resultstore_pb2 as pb
from resultstore.v1 import resultstore_pb2_grpc as pb_grpc
from conftest import REPO, SAMPLES, base_config, server_binary

MIB = 1024 * 1024
BLOCK = "local-file-system/default"

#: Keys every block stores exactly as written: the table the Rust suite reads too.
KEY_TABLE = json.loads((REPO / "tests" / "key-table.json").read_text())["keys"]


def rpc_counts(server) -> dict:
    """`{(method, code): finished calls}` from the server's /metrics."""
    counts = {}
    for line in urllib.request.urlopen(server.metrics_url, timeout=10).read().decode().splitlines():
        if line.startswith("resultstore_rpc_requests_total{"):
            labels, value = line[len("resultstore_rpc_requests_total{") :].split("} ")
            fields = dict(part.split("=", 1) for part in labels.split(","))
            counts[(fields["method"].strip('"'), fields["code"].strip('"'))] = int(float(value))
    return counts


def finished(server, method: str) -> int:
    return sum(n for (m, _), n in rpc_counts(server).items() if m == method)


def wait_for_calls(server, method: str, count: int) -> None:
    """Waits until `count` calls of `method` have ended on the server (whatever their
    code): the server is done with them. A condition, polled, not a sleep."""
    deadline = time.monotonic() + 30
    while finished(server, method) < count:
        assert time.monotonic() < deadline, f"{method}: still {finished(server, method)} of {count} calls ended"
        time.sleep(0.02)


@pytest.fixture
def prefect_store(server, prefect_env):
    """Prefect's own ResultStore on the server's default block's folder."""
    return ResultStore(result_storage=LocalFileSystem(basepath=str(server.root / "results")), serializer=JSONSerializer())


def test_keys_as_written_both_ways_with_real_prefect(server, client, prefect_store):
    # The service writes, Prefect reads, at the same key.
    for key in KEY_TABLE:
        client.put({"written-by": "service", "key": key}, serializer="json", storage=BLOCK, key=key)
    for key in KEY_TABLE:
        assert prefect_store.read(key).result == {"written-by": "service", "key": key}, key
        assert (server.root / "results" / key).is_file(), key
    assert sorted(client.list(BLOCK, "keys/")) == sorted(KEY_TABLE)
    for key in KEY_TABLE:
        client.delete(BLOCK, key)
        assert not prefect_store.exists(key), key
    # Prefect writes, the service reads, lists and deletes by the same keys.
    for key in KEY_TABLE:
        prefect_store.write({"written-by": "prefect", "key": key}, key=key)
    for key in client.list(BLOCK, "keys/"):
        assert client.load(BLOCK, key) == {"written-by": "prefect", "key": key}
        ref, _, metadata = client.read_record(BLOCK, key)
        assert ref.uri == f"file://{(server.root / 'results').resolve()}/{key}"
        assert os.path.isfile(ref.uri[len("file://") :])
        client.delete(BLOCK, key)
        assert not prefect_store.exists(key), key
    assert list(client.list(BLOCK, "keys/")) == []


@pytest.fixture
def metered_server(start_server):
    return start_server(metrics=True)


def test_every_read_api_works_above_the_unary_limit(metered_server, rng, prefect_env):
    server = metered_server
    big_bytes = rng.randbytes(20 * MIB)
    big_doc = {"rows": ["x" * 1000] * (20 * 1024)}  # about 20 MiB of JSON
    # Written by Prefect itself, as a 20 MiB task result would be.
    results = LocalFileSystem(basepath=str(server.root / "results"))
    ResultStore(result_storage=results, serializer=PickleSerializer()).write(big_bytes, key="big/pickle")
    ResultStore(result_storage=results, serializer=JSONSerializer()).write(big_doc, key="big/json")

    with ResultStoreClient(server.url) as c:
        assert c.load(BLOCK, "big/pickle") == big_bytes
        assert c.load(BLOCK, "big/json") == big_doc
        assert json.loads(c.resolve_json((BLOCK, "big/json"))) == big_doc
        ref, data, metadata = c.read_record(BLOCK, "big/json")
        assert ref.size > 16 * MIB and metadata["serializer"]["type"] == "json"
        # By reference: the size says the value streams; `get` and `ResultReference.get`.
        assert c.get(ref) == big_doc
        assert c.get(ref.to_dict()) == big_doc
        assert ref.get() == big_doc
        assert json.loads(c.resolve_json(ref)) == big_doc
        stored = c.put_stream([PickleSerializer().dumps(big_bytes)], "pickle", storage=BLOCK, key="big/put")
        assert stored.size > 16 * MIB
        assert stored.get() == big_bytes
    # The CLI's resolve, raw and as JSON.
    cli = [str(server_binary()), "resolve", "--server", server.url, "--block", BLOCK, "--key", "big/json"]
    out = subprocess.run(cli + ["--json"], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == big_doc
    out = subprocess.run(cli, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == big_doc  # the value bytes of a JSON result: its text

    # Prefect's block reads a large object in one call: no unary call was refused first.
    from resultstore.prefect import ResultStoreStorage

    storage = ResultStoreStorage(url=server.url, block=BLOCK)
    assert json.loads(storage.read_path("big/json"))["metadata"]["serializer"]["type"] == "json"
    refused = {k: n for k, n in rpc_counts(server).items() if k[1] == "RESOURCE_EXHAUSTED"}
    assert refused == {}, f"reads spent refused calls: {refused}"


def test_results_read_by_prefect_api_documents(server, client, prefect_env):
    # A task run state's `data` as Prefect's API records it, for a saved block's record.
    dump = json.loads((SAMPLES / "v3.9.1/flow-saved-block.api-db-dump.json").read_text())
    results = server.root / "results"
    read = 0
    for state in dump["task_run_state"]:
        doc = state["data"]
        record = SAMPLES / "v3.9.1/flow-saved-block" / doc["storage_key"]
        if not record.is_file():
            continue
        (results / doc["storage_key"]).parent.mkdir(parents=True, exist_ok=True)
        (results / doc["storage_key"]).write_bytes(record.read_bytes())
        value = client.load_prefect(BLOCK, doc, allow_expired=True)
        assert value == client.load(BLOCK, doc["storage_key"], allow_expired=True)
        assert client.get(PrefectDocument(BLOCK, json.dumps(doc)), allow_expired=True) == value
        read += 1
    assert read >= 3
    # Prefect's default storage records absolute paths: they read when they lie under the
    # block's folder (the block's url is that folder), and are refused elsewhere.
    client.put({"a": 1}, serializer="json", storage=BLOCK, key="abs/one")
    absolute = {"storage_key": str((results / "abs/one").resolve()), "serializer": {"type": "json"}}
    assert client.load_prefect(BLOCK, absolute) == {"a": 1}
    assert json.loads(client.resolve_json(PrefectDocument(BLOCK, absolute))) == {"a": 1}
    from resultstore.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="outside block"):
        client.load_prefect(BLOCK, {"storage_key": "/etc/passwd", "serializer": {"type": "json"}})
    # A literal document needs no call.
    assert client.load_prefect(BLOCK, {"type": "literal", "value": True}) is True


def test_a_hung_server_fails_calls_fast_naming_the_call_and_the_server(server, prefect_env):
    with ResultStoreClient(server.url) as c:
        ref = c.put({"a": 1}, serializer="json", storage=BLOCK, key="k")
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        with ResultStoreClient(server.url, timeout=1.0) as c:
            for call, name in [
                (lambda: c.exists(BLOCK, "k"), "Exists"),
                (lambda: c.get(ref), "Resolve"),
                (lambda: c.load(BLOCK, "k"), "GetStream"),
                (lambda: c.put_stream([b"MQ=="], "pickle", storage=BLOCK, key="p"), "PutStream"),
            ]:
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded) as e:
                    call()
                assert time.monotonic() - started < 5, name
                assert str(e.value).startswith(f"DEADLINE_EXCEEDED calling {name} on {server.url}"), str(e.value)
        from resultstore.prefect import ResultStoreStorage

        storage = ResultStoreStorage(url=server.url, block=BLOCK, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            storage.read_path("k")
        assert time.monotonic() - started < 5
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


# A PutStream whose client goes away mid-way, without having announced a size: the
# server must store nothing. The client runs in its own process, sends 12 MiB (the server
# uploads parts of 5 MiB as they come), then waits for the test to crash it or tell it
# to drop its connection.
CLIENT = r"""
import sys, grpc
from resultstore.v1 import resultstore_pb2 as pb, resultstore_pb2_grpc as pb_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = pb_grpc.ResultStoreStub(channel)
header = pb.PutStreamHeader(key="kept", task=pb.ResultSettings(result_storage="local-file-system/default",
    result_serializer=pb.Serializer(type="pickle")))
def messages():
    yield pb.PutStreamRequest(header=header)
    for _ in range(12):
        yield pb.PutStreamRequest(chunk=b"QUFB" * (256 * 1024))
    print("sent", flush=True)
    sys.stdin.readline()     # the test says when (a crash never gets here)
    channel.close()          # the connection goes away mid-stream
    yield pb.PutStreamRequest(chunk=b"QUFB")
try:
    stub.PutStream(messages())
except grpc.RpcError:
    pass
"""


@pytest.mark.parametrize("how", ["crash", "drop"])
def test_streams_whose_client_goes_away_store_nothing(start_server, how):
    server = start_server(
        lambda root: base_config(root) + '[limits]\nstream_chunk_size = "5MiB"\n', metrics=True
    )
    with ResultStoreClient(server.url) as c:
        c.put_stream([b"T0xE"], "pickle", storage=BLOCK, key="kept")
        before = finished(server, "PutStream")
        child = subprocess.Popen(
            [sys.executable, "-c", CLIENT, server.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline() == "sent\n"
            # The server is uploading what it received (object_store stages a local
            # multipart upload as `kept#N`): the stream is well under way.
            deadline = time.monotonic() + 30
            while sum(p.stat().st_size for p in (server.root / "results").glob("kept#*")) < 5 * MIB:
                assert time.monotonic() < deadline, "the server never uploaded a part"
                time.sleep(0.02)
            if how == "crash":
                child.kill()
            else:
                child.stdin.write("drop\n")
                child.stdin.flush()
            child.wait(timeout=30)
        finally:
            child.kill()
        wait_for_calls(server, "PutStream", before + 1)
        _, data, _ = c.read_record(BLOCK, "kept")
        assert data == b"T0xE", f"a stream cut by a {how} replaced the result"
        assert not list((server.root / "results").glob("kept#*")), "the aborted upload left its parts"
