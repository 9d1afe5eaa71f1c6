"""The Python client against a real server: put/get, literals, settings, errors, listing."""

import datetime
import json
import subprocess

import orjson
import pytest

import resultstore.errors as errors
from conftest import random_document, server_binary
from resultstore import (
    CompressedSerializer,
    JSONSerializer,
    PickleSerializer,
    ResultLiteral,
    ResultReference,
    ResultStoreClient,
)
from resultstore.serializers import serializer_from

SERIALIZERS = [
    "pickle",
    "json",
    "compressed/pickle",
    "compressed/json",
    CompressedSerializer("json", compressionlib="bz2"),
    CompressedSerializer(PickleSerializer(), compressionlib="zlib"),
    JSONSerializer(jsonlib="orjson"),
]


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=str)
def test_random_values_round_trip(client, server, serializer, rng):
    json_only = "json" in str(serializer)
    for i in range(10):
        value = random_document(rng, json_only=json_only)
        if "orjson" in str(serializer):
            try:
                orjson.dumps(value)
            except TypeError:
                continue  # an integer beyond 64 bits: orjson refuses it (see test_serializers)
        ref = client.put(value, serializer=serializer, key=f"k{i}")
        assert isinstance(ref, ResultReference)
        assert ref.persisted and ref.format == "prefect3" and ref.size > 0
        # Through the reference, and through a reference document as any client holds it.
        assert ref.get() == value
        assert ref.get() is ref.get(), "get() keeps the value it loaded"
        again = ResultReference.from_dict(json.loads(ref.to_json()), client)
        assert again.get() == value
        # On disk: a Prefect record whose result is the serializer's bytes.
        record = json.loads((server.root / "results" / f"k{i}").read_text())
        assert record["metadata"]["serializer"] == ref.serializer
        assert record["result"].encode() == serializer_from(ref.serializer).dumps(value)


def test_literals_stay_in_the_reply_unless_a_key_is_given(client, server):
    for value in (True, False, None):
        lit = client.put(value)
        assert lit == ResultLiteral(value) and lit.get() is value
        assert client.get(lit.to_dict()) is value
    ref = client.put(True, key="flag", serializer="json")
    assert isinstance(ref, ResultReference) and ref.get() is True
    assert (server.root / "results" / "flag").is_file()
    assert not [p for p in (server.root / "results").iterdir() if p.name != "flag"]


def test_settings_follow_prefects_rules(client, server):
    # Nothing says persist: held in the server's memory only.
    ref = client.put({"a": 1})
    assert not ref.persisted and ref.get() == {"a": 1}
    # The flow's settings are inherited; retries need persistence.
    ref = client.put({"b": 2}, flow={"persist_result": True, "result_storage": "local-file-system/split"})
    assert ref.persisted and ref.block == "local-file-system/split" and ref.format == "split"
    assert client.put({"c": 3}, retries=2).persisted
    # persist=False always wins, and a later read says why it fails.
    ref = client.put({"d": 4}, persist=False, retries=3)
    assert not ref.persisted
    server.stop()
    from conftest import Server

    restarted = Server(server.root, server.config_path.read_text())
    try:
        with ResultStoreClient(restarted.url) as fresh:
            with pytest.raises(errors.FailedPrecondition, match="not persisted"):
                fresh.get(json.loads(ref.to_json()))
    finally:
        restarted.stop()


def test_expiration_and_create_only(client):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    ref = client.put({"old": True}, key="old", expiration=past)
    with pytest.raises(errors.FailedPrecondition, match="expired"):
        client.get(json.loads(ref.to_json()))
    assert client.get(ref, allow_expired=True) == {"old": True}
    ref = client.put({"v": 1}, key="once", expiration=datetime.timedelta(hours=1))
    assert ref.expiration > datetime.datetime.now(datetime.timezone.utc)
    with pytest.raises(errors.AlreadyExists):
        client.put({"v": 2}, key="once", create_only=True)
    assert client.load("local-file-system/default", "once") == {"v": 1}


def test_errors_name_what_is_wrong(client):
    with pytest.raises(errors.NotFound, match="memory/nope"):
        client.put({"a": 1}, storage="memory/nope", persist=True)
    with pytest.raises(errors.InvalidArgument, match="unknown block type"):
        client.put({"a": 1}, storage="nope/nope", persist=True)
    with pytest.raises(errors.InvalidArgument, match=r"\.\."):
        client.put({"a": 1}, key="../escape")
    with pytest.raises(errors.NotFound):
        client.load("local-file-system/default", "missing")
    with pytest.raises(ValueError, match="unknown serializer type"):
        client.put({"a": 1}, serializer="yaml")
    # A reference whose digest does not match what is stored is DATA_LOSS, never wrong data.
    ref = client.put({"a": 1}, key="k", persist=True)
    doc = json.loads(ref.to_json())
    doc["sha256"] = "0" * 64
    with pytest.raises(errors.DataLoss):
        client.get(doc, bypass_cache=True)


def test_list_exists_delete_blocks(client):
    for i in range(5):
        client.put(i, key=f"dir/{i}", persist=True)
    assert list(client.list("local-file-system/default", "dir/")) == [f"dir/{i}" for i in range(5)]
    assert client.exists("local-file-system/default", "dir/3")
    client.delete("local-file-system/default", "dir/3")
    assert not client.exists("local-file-system/default", "dir/3")
    slugs = {b["slug"]: b for b in client.blocks()}
    assert slugs["local-file-system/default"]["is_default"] and slugs["local-file-system/split"]["format"] == "split"


def test_the_cli_resolves_what_python_stored(client, server):
    value = {"from": "python", "n": [1, 2.5, None]}
    ref = client.put(value, serializer="compressed/pickle", key="for-cli", persist=True)
    out = subprocess.run(
        [str(server_binary()), "resolve", "--server", server.url, "--json", ref.to_json()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == value
