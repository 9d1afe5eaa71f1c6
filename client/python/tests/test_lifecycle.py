"""Lifecycle from Python: results a real Prefect 3.9.1 flow wrote with `cache_expiration`
are swept once expired (`ResultStoreClient.gc`), and bulk invalidation by prefix
(`delete_prefix`) removes results and this client's local copies of them."""

import json
from pathlib import Path

import pytest

import resultstore.errors as errors
from conftest import run_python

FLOW = r'''
import datetime, json, sys
from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.filesystems import LocalFileSystem

results, out = sys.argv[1:3]
LocalFileSystem(basepath=results).save("rs-results", overwrite=True)

# Expired a millisecond after it is written: long gone when the sweep looks.
@task(persist_result=True, result_serializer="json", cache_policy=INPUTS,
      cache_expiration=datetime.timedelta(milliseconds=1))
def brief(v):
    return v

@task(persist_result=True, result_serializer="json", cache_policy=INPUTS,
      cache_expiration=datetime.timedelta(days=1))
def daily(v):
    return v

@task(persist_result=True, result_serializer="json", cache_policy=INPUTS)
def forever(v):
    return v

@flow(persist_result=True, result_storage="local-file-system/rs-results", result_serializer="json")
def lifecycle():
    states = {"brief": brief(1, return_state=True), "daily": daily(2, return_state=True),
              "forever": forever(3, return_state=True)}
    return {name: s.data.metadata.storage_key for name, s in states.items()}

open(out, "w").write(json.dumps(lifecycle()))
'''


def test_results_prefect_wrote_with_cache_expiration_are_swept(start_server, prefect_env, tmp_path):
    root = tmp_path / "svc"

    def config(root: Path) -> str:
        return f'default_block = "local-file-system/flow"\n[blocks."local-file-system/flow"]\nurl = "file://{root}/flow"\n'

    server = start_server(config, root)
    (root / "flow").mkdir(exist_ok=True)
    out = tmp_path / "keys.json"
    run_python(FLOW, str(root / "flow"), str(out), env=prefect_env)
    keys = json.loads(out.read_text())

    from resultstore import ResultStoreClient

    with ResultStoreClient(server.url) as client:
        for name in keys:
            assert (root / "flow" / keys[name]).exists(), name
        dry = client.gc("local-file-system/flow", dry_run=True)
        assert (dry["expired"], dry["deleted"]) == (1, 0), dry
        swept = client.gc("local-file-system/flow")
        assert (swept["expired"], swept["deleted"]) == (1, 1), swept
        assert not (root / "flow" / keys["brief"]).exists()
        assert client.load("local-file-system/flow", keys["daily"]) == 2
        assert client.load("local-file-system/flow", keys["forever"]) == 3
        with pytest.raises(errors.InvalidArgument):
            client.gc("local-file-system/flow", older_than=__import__("datetime").timedelta(0))


def test_delete_prefix_removes_results_and_local_copies(client):
    refs = [client.put({"n": i}, key=f"flow-a/{i}") for i in range(30)]
    other = client.put({"n": -1}, key="flow-b/0")
    assert [client.get(json.loads(r.to_json())) for r in refs[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    with pytest.raises(errors.InvalidArgument, match="all"):
        client.delete_prefix("local-file-system/default", "")
    done = client.delete_prefix("local-file-system/default", "flow-a/")
    assert done["deleted"] == 30 and done["bytes"] > 0
    assert list(client.list("local-file-system/default", "flow-a/")) == []
    # A copy this client kept does not outlive the bulk delete.
    with pytest.raises(errors.NotFound):
        client.get(json.loads(refs[0].to_json()))
    assert client.get(other) == {"n": -1}
