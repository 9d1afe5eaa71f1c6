"""Real `@flow` runs whose results go through `ResultStoreStorage`, the Prefect block
backed by the service: results land in the service's block as Prefect's own files, a
second run hits the cache keys, and the CLI resolves a task's result to JSON.
"""

import json
import pickle
import subprocess

import pytest

import resultstore.errors as errors
from conftest import random_document, run_python, server_binary

PIPELINE = r'''
import json, sys
from prefect import flow, task
from prefect.cache_policies import INPUTS

url, block, counter, values_file, out = sys.argv[1:6]
values = json.loads(open(values_file).read())

def bump(name):
    with open(counter, "a") as f:
        f.write(name + "\n")

@task(cache_policy=INPUTS, result_serializer="json")
def expensive(v):
    bump("expensive")
    return {"computed": v}

@task(cache_policy=INPUTS, result_serializer="compressed/pickle")
def pickled(v):
    bump("pickled")
    return ("a tuple", v)

@task(result_storage_key="named/{parameters[n]}.json", result_serializer="json")
def named(n, v):
    return [n, v]

def run(storage):
    @flow(result_storage=storage, persist_result=True)
    def pipeline(values):
        states = {
            "expensive": expensive(values[0], return_state=True),
            "pickled": pickled(values[1], return_state=True),
            "named": named(3, values[2], return_state=True),
        }
        return {k: {"key": s.data.metadata.storage_key, "state": s.name, "value": s.result()} for k, s in states.items()}

    state = pipeline(values, return_state=True)
    result = state.result()
    result["flow"] = {"key": state.data.metadata.storage_key, "value": result.copy()}
    open(out, "w").write(json.dumps(result))
'''

# Prefect 3 takes only saved blocks as a flow's `result_storage` object.
INLINE = PIPELINE + r'''
from resultstore.prefect import ResultStoreStorage
storage = ResultStoreStorage(url=url, block=block)
storage.save("inline", overwrite=True)
run(storage)
'''

# The saved block is named by its slug only: the process never imports resultstore
# itself; Prefect finds the block type through the package's entry point.
BY_SLUG = PIPELINE + r'''
import resultstore  # noqa: F401  (not the block module: the client only, for the assertion)
assert "resultstore.prefect" not in sys.modules
run("resultstore-storage/shared")
'''

SAVE = r'''
import sys
from resultstore.prefect import ResultStoreStorage
ResultStoreStorage(url=sys.argv[1], block=sys.argv[2]).save("shared", overwrite=True)
'''


def run_pipeline(script, server, block, prefect_env, tmp_path, values):
    values_file, out, counter = tmp_path / "values.json", tmp_path / "out.json", tmp_path / "counter"
    values_file.write_text(json.dumps(values))
    run_python(script, server.url, block, str(counter), str(values_file), str(out), env=prefect_env)
    calls = counter.read_text().split() if counter.exists() else []
    return json.loads(out.read_text()), calls


def check_results_in_service(server, client, block, folder, written, values):
    # Every task result is a Prefect record in the service's block, at the key Prefect chose.
    assert written["named"]["key"] == "named/3.json"
    for name in ("expensive", "pickled", "named"):
        key = written[name]["key"]
        assert not key.startswith("/"), key
        assert (server.root / folder / key).read_bytes().startswith(b'{"metadata":'), name
    assert client.load(block, written["expensive"]["key"]) == {"computed": values[0]}
    assert client.load(block, written["pickled"]["key"]) == ("a tuple", values[1])
    assert client.load(block, written["named"]["key"]) == [3, values[2]]
    # The flow's result: Prefect writes it bare, with its default serializer (pickle).
    flow_value = client.load(block, written["flow"]["key"], serializer="pickle")
    assert flow_value["expensive"]["value"] == {"computed": values[0]}


def test_a_flow_persists_and_reads_through_the_service(server, client, prefect_env, tmp_path, rng):
    values = [random_document(rng, json_only=True) for _ in range(3)]
    block = "local-file-system/default"
    first, calls = run_pipeline(INLINE, server, block, prefect_env, tmp_path, values)
    assert sorted(calls) == ["expensive", "pickled"]
    assert first["expensive"]["state"] == "Completed"
    check_results_in_service(server, client, block, "results", first, values)

    # A second run finds both cache keys through the block: nothing is computed again.
    second, calls = run_pipeline(INLINE, server, block, prefect_env, tmp_path, values)
    assert sorted(calls) == ["expensive", "pickled"], "the cached tasks ran again"
    assert second["expensive"]["state"] == "Cached" and second["pickled"]["state"] == "Cached"
    assert second["expensive"]["key"] == first["expensive"]["key"]
    assert second["expensive"]["value"] == first["expensive"]["value"]

    # A reader with no Python runtime view: the CLI resolves the task's result to JSON.
    out = subprocess.run(
        [str(server_binary()), "resolve", "--server", server.url, "--block", block,
         "--key", first["expensive"]["key"], "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out) == {"computed": values[0]}


def test_a_saved_block_is_found_by_its_slug(server, client, prefect_env, tmp_path, rng):
    values = [random_document(rng, json_only=True) for _ in range(3)]
    block = "local-file-system/split"
    run_python(SAVE, server.url, block, env=prefect_env)
    written, calls = run_pipeline(BY_SLUG, server, block, prefect_env, tmp_path, values)
    assert sorted(calls) == ["expensive", "pickled"]
    # In a split block the records are split on storage, and still read back whole.
    key = written["expensive"]["key"]
    assert json.loads((server.root / "split-meta" / key).read_text())["storage_key"] == key
    assert client.load(block, key) == {"computed": values[0]}
    again, calls = run_pipeline(BY_SLUG, server, block, prefect_env, tmp_path, values)
    assert again["expensive"]["state"] == "Cached" and sorted(calls) == ["expensive", "pickled"]


def test_the_block_reads_and_writes_bytes_as_they_are(server, client, prefect_env):
    from resultstore.prefect import ResultStoreStorage

    storage = ResultStoreStorage(url=server.url, block="local-file-system/default")
    record = (
        b'{"metadata":{"storage_key":"k","expiration":null,"serializer":{"type":"json"},'
        b'"prefect_version":"3.9.1","storage_block_id":"00000000-0000-4000-8000-000000000001"},"result":"[1, 2]"}'
    )
    assert storage.write_path("k", record, _sync=True) == "k"
    assert storage.read_path("k", _sync=True) == record
    assert (server.root / "results" / "k").read_bytes() == record
    with pytest.raises(errors.NotFound):
        storage.read_path("missing", _sync=True)
    with pytest.raises(errors.InvalidArgument):
        storage.write_path("k", record[:40], _sync=True)
    assert storage.read_path("k", _sync=True) == record, "a refused write replaced the record"
    # Prefect's ResultStore over an unsaved block: keys stay keys (no local paths).
    from prefect.results import ResultStore
    from prefect.serializers import CompressedJSONSerializer

    store = ResultStore(result_storage=storage, serializer=CompressedJSONSerializer())
    store.write({"direct": [1, 2]}, key="direct")
    assert ResultStore(result_storage=storage).read("direct").result == {"direct": [1, 2]}
    assert client.load("local-file-system/default", "direct") == {"direct": [1, 2]}
    assert store.exists("direct") and not store.exists("absent")
    # Async flows call the async methods.
    import asyncio

    asyncio.run(storage.awrite_path("async", record))
    assert asyncio.run(storage.aread_path("async")) == record
    # Prefect pickles blocks into task runners; the gRPC channel is left behind.
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_path("k", _sync=True) == record
