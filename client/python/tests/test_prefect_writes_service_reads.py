"""Prefect 3.9.1 writes, resultstore reads: records, flow results, expirations, the split
layout (`key_storage`), and real `@flow` runs writing into a service block's folder.

`Get` must return exactly the serializer bytes Prefect produced, and `Resolve(want=JSON)`
the value, for plain data.
"""

import datetime
import json
from pathlib import Path

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import (
    CompressedJSONSerializer,
    CompressedPickleSerializer,
    JSONSerializer,
    PickleSerializer,
)

import resultstore.errors as errors
from conftest import SAMPLES, random_document, run_python

PREFECT_SERIALIZERS = {
    "json": JSONSerializer(),
    "pickle": PickleSerializer(),
    "compressed/pickle": CompressedPickleSerializer(),
    "compressed/json": CompressedJSONSerializer(),
}


def python_json(value) -> object:
    """The value as the server's JSON transcoding shows it (tuples are lists)."""
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("name", list(PREFECT_SERIALIZERS))
def test_records_prefect_wrote_resolve(name, server, client, prefect_env, rng):
    serializer = PREFECT_SERIALIZERS[name]
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(server.root / "results")), serializer=serializer)
    values = {}
    for i in range(8):
        # Values JSON can show (the JSON check below needs them); pickles get a tuple too.
        value = random_document(rng, json_only=True)
        if "pickle" in name:
            value["tuple"] = (i, "t", None, [1.5])
        store.write(value, key=f"{name.replace('/', '-')}-{i}")
        values[f"{name.replace('/', '-')}-{i}"] = value
    for key, value in values.items():
        # Get: exactly the bytes Prefect's serializer produced.
        _, data, metadata = client.read_record("local-file-system/default", key)
        assert data == serializer.dumps(value)
        assert metadata["serializer"]["type"] == name
        # Resolve: the value, through the client and as JSON from the server.
        assert client.load("local-file-system/default", key) == value
        assert json.loads(client.resolve_json(("local-file-system/default", key))) == python_json(value)


def test_expirations_prefect_wrote_are_honoured(server, client, prefect_env):
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(server.root / "results")), serializer=JSONSerializer())
    now = datetime.datetime.now(datetime.timezone.utc)
    store.write({"fresh": 1}, key="fresh", expiration=now + datetime.timedelta(days=1))
    store.write({"stale": 1}, key="stale", expiration=now - datetime.timedelta(seconds=1))
    ref, _, _ = client.read_record("local-file-system/default", "fresh")
    assert abs((ref.expiration - (now + datetime.timedelta(days=1))).total_seconds()) < 1
    assert client.load("local-file-system/default", "fresh") == {"fresh": 1}
    with pytest.raises(errors.FailedPrecondition, match="expired"):
        client.load("local-file-system/default", "stale")
    assert client.load("local-file-system/default", "stale", allow_expired=True) == {"stale": 1}


FLOW = r'''
import json, sys, datetime
from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.filesystems import LocalFileSystem

results, keys, values_file, out = sys.argv[1:5]
values = json.loads(open(values_file).read())
LocalFileSystem(basepath=results).save("rs-results", overwrite=True)

@task(persist_result=True, result_serializer="json", cache_policy=INPUTS)
def t_json(v):
    return v

@task(persist_result=True, result_serializer="compressed/pickle", cache_policy=INPUTS)
def t_pickle(v):
    return {"pickled": v}

@task(persist_result=True, result_serializer="json",
      cache_policy=INPUTS, cache_expiration=datetime.timedelta(days=1))
def t_expiring(v):
    return ["expiring", v]

@task(persist_result=True, result_serializer="json", result_storage_key="custom/{parameters[n]}.json")
def t_custom(n, v):
    return v

@task(persist_result=True, result_serializer="json",
      cache_policy=INPUTS.configure(key_storage=keys))
def t_split(v):
    return {"split": v}

@flow(persist_result=True, result_storage="local-file-system/rs-results", result_serializer="json")
def interop(values):
    states = {
        "json": t_json(values[0], return_state=True),
        "pickle": t_pickle(values[1], return_state=True),
        "expiring": t_expiring(values[2], return_state=True),
        "custom": t_custom(7, values[3], return_state=True),
        "split": t_split(values[4], return_state=True),
    }
    return {name: {"key": s.data.metadata.storage_key, "value": s.result()} for name, s in states.items()}

state = interop(values, return_state=True)
written = state.result()
written["flow"] = {"key": state.data.metadata.storage_key, "value": written.copy()}
open(out, "w").write(json.dumps(written))
'''


def test_a_real_flow_writes_and_the_service_reads(start_server, prefect_env, rng, tmp_path):
    root = tmp_path / "svc"

    def config(root: Path) -> str:
        return f"""
default_block = "local-file-system/flow"
[blocks."local-file-system/flow"]
url = "file://{root}/flow-results"
[blocks."local-file-system/keyed"]
url = "file://{root}/flow-results"
format = "split"
metadata_url = "file://{root}/cache-keys"
"""

    server = start_server(config, root)
    values = [random_document(rng, json_only=True) for _ in range(5)]
    values_file, out = tmp_path / "values.json", tmp_path / "written.json"
    values_file.write_text(json.dumps(values))
    (root / "flow-results").mkdir(exist_ok=True)
    run_python(
        FLOW, str(root / "flow-results"), str(root / "cache-keys"), str(values_file), str(out), env=prefect_env
    )
    written = json.loads(out.read_text())

    from resultstore import ResultStoreClient

    with ResultStoreClient(server.url) as client:

        def key_in_block(name: str) -> str:
            # A saved block records the key relative to its folder.
            key = written[name]["key"]
            assert not Path(key).is_absolute(), key
            return key

        for name in ("json", "pickle", "expiring", "custom"):
            key = key_in_block(name)
            value = written[name]["value"]
            assert client.load("local-file-system/flow", key) == value, name
            assert json.loads(client.resolve_json(("local-file-system/flow", key))) == python_json(value), name
        assert written["custom"]["key"] == "custom/7.json"
        ref, _, meta = client.read_record("local-file-system/flow", key_in_block("expiring"))
        assert ref.expiration is not None and meta["expiration"] is not None
        assert ref.serializer["type"] == "json"
        assert client.read_record("local-file-system/flow", key_in_block("pickle"))[0].serializer["type"] == (
            "compressed/pickle"
        )
        # The split layout Prefect wrote with key_storage: payload in the results folder,
        # metadata under the cache key in the key storage folder.
        split_key = written["split"]["key"]
        cache_keys = [p.name for p in (root / "cache-keys").iterdir()]
        assert len(cache_keys) == 1, cache_keys
        assert client.load("local-file-system/keyed", cache_keys[0]) == written["split"]["value"]
        assert Path(split_key).name == cache_keys[0]
        # The flow's own result: a bare payload (no record), read with the flow's serializer.
        flow_key = key_in_block("flow")
        raw = (root / "flow-results" / flow_key).read_bytes()
        assert not raw.startswith(b'{"metadata"')
        assert client.load("local-file-system/flow", flow_key, serializer="json") == written["flow"]["value"]


PREFECT2_EXPECTED = {
    # Prefect 2 wrapped the datetime as {"__class__": "datetime.datetime", ...}; the client
    # rebuilds it as Prefect's decoder does.
    "json-dict": {
        "a": 1,
        "b": [1, 2.5, "x"],
        "c": None,
        "d": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    },
    "json-orjson": {"a": 1, "t": "hé"},
    "pickle-int": 42,
    "compressed-json": {"x": 1},
    "compressed-pickle": [1, 2, 3],
}


def test_prefect_2_samples_resolve(start_server, tmp_path):
    samples = SAMPLES / "v2.20.25"
    assert samples.is_dir(), f"the Prefect samples are missing at {samples}"
    server = start_server(
        lambda root: f'default_block = "local-file-system/p2"\n[blocks."local-file-system/p2"]\nurl = "file://{samples}"\n'
        f'[blocks."local-file-system/p2-saved"]\nurl = "file://{samples}/flow-saved-block"\n'
    )
    from resultstore import ResultStoreClient

    with ResultStoreClient(server.url) as client:
        for name, value in PREFECT2_EXPECTED.items():
            assert client.load("local-file-system/p2", f"resultfactory-api/{name}") == value, name
        # Every file of the 2.x flow run resolves (blobs carry their own serializer).
        saved = samples / "flow-saved-block"
        files = [p for p in saved.rglob("*") if p.is_file()]
        assert len(files) >= 4
        for path in files:
            key = str(path.relative_to(saved))
            json.loads(client.resolve_json(("local-file-system/p2-saved", key)))
        # The crashed flow's persisted exception, as Prefect 2 wrote it.
        exc = client.load("local-file-system/p2", "flow-crashed/8c4904d9bbf04bfd94f07e29791b8bb5")
        assert isinstance(exc, TypeError)
