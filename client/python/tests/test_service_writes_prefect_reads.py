"""resultstore writes, Prefect 3.9.1 reads: records the service wrote, in `prefect3` and in
`split` format, read by Prefect's own `ResultStore.read` to objects equal to the originals.

Both ways of writing are covered: the Python client serializing (`data`), and the server
serializing a JSON document itself (`json`), as a Go or Rust client would.
"""

import json

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore

from conftest import random_document
from resultstore.v1 import resultstore_pb2 as pb
from resultstore.v1 import resultstore_pb2_grpc as pb_grpc

SERIALIZERS = ["json", "pickle", "compressed/json", "compressed/pickle"]


def prefect_reader(server, split: bool) -> ResultStore:
    if split:
        return ResultStore(
            result_storage=LocalFileSystem(basepath=str(server.root / "split")),
            metadata_storage=LocalFileSystem(basepath=str(server.root / "split-meta")),
        )
    return ResultStore(result_storage=LocalFileSystem(basepath=str(server.root / "results")))


@pytest.mark.parametrize("split", [False, True], ids=["prefect3", "split"])
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_prefect_reads_what_the_client_wrote(server, client, prefect_env, serializer, split, rng):
    block = "local-file-system/split" if split else "local-file-system/default"
    written = {}
    for i in range(6):
        value = random_document(rng, json_only="json" in serializer)
        key = f"{serializer.replace('/', '-')}-{i}"
        ref = client.put(value, serializer=serializer, storage=block, key=key)
        assert ref.format == ("split" if split else "prefect3")
        written[key] = value
    reader = prefect_reader(server, split)
    for key, value in written.items():
        record = reader.read(key)
        assert record.result == value
        assert record.metadata.serializer.type == serializer
        assert record.metadata.storage_key == key


@pytest.mark.parametrize("split", [False, True], ids=["prefect3", "split"])
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_prefect_reads_what_the_server_serialized(server, prefect_env, serializer, split, rng):
    block = "local-file-system/split" if split else "local-file-system/default"
    import grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ResultStoreStub(channel)
        written = {}
        for i in range(6):
            value = random_document(rng, json_only=True)
            key = f"server-{i}"
            stub.Put(
                pb.PutRequest(
                    json=json.dumps(value),
                    key=key,
                    task=pb.ResultSettings(
                        result_storage=block, result_serializer=pb.Serializer(type=serializer)
                    ),
                )
            )
            written[key] = value
    reader = prefect_reader(server, split)
    for key, value in written.items():
        assert reader.read(key).result == value


def test_expiration_written_by_the_service_is_prefects(server, client, prefect_env):
    import datetime

    when = datetime.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
    client.put({"v": 1}, key="exp", expiration=when, persist=True)
    record = prefect_reader(server, False).read("exp")
    assert record.metadata.expiration == when
    assert prefect_reader(server, False).exists("exp")
