"""The results console in a real browser (Debian's chromium, headless, driven by
playwright-core): a person with a token browses to a result real Prefect wrote, sees its
JSON and metadata, deletes it, and sees it gone. A screenshot is saved as an artifact
(target/artifacts/console.png), and the page must log no error once the token is in."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer

from conftest import REPO
from test_http import DELETER, auth_config, node_modules

HERE = Path(__file__).parent


def test_a_person_browses_reads_and_deletes_a_result_prefect_wrote(start_server, tmp_path, prefect_env):
    server = start_server(auth_config(tmp_path))
    value = {"rows": [1, 2, 3], "owner": "console", "ok": True}
    ResultStore(
        result_storage=LocalFileSystem(basepath=str(server.root / "results")), serializer=JSONSerializer()
    ).write(value, key="flow-a/report")
    stored = server.root / "results" / "flow-a" / "report"
    assert stored.is_file()

    artifacts = REPO / "target" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "console.png"
    screenshot.unlink(missing_ok=True)
    env = dict(os.environ, RESULTSTORE_NODE_MODULES=node_modules())
    env.setdefault("RESULTSTORE_CHROMIUM", "/usr/bin/chromium")
    out = subprocess.run(
        ["node", str(HERE / "js" / "console.cjs"), server.url, DELETER, "flow-a/report", str(screenshot)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)

    assert "needs a token" in report["no_token_message"], report["no_token_message"]
    assert report["value"] == value
    ref = report["reference"]
    assert ref["serializer"] == "json" and ref["format"] == "prefect3" and ref["persisted"] == "true"
    assert len(ref["sha256"]) == 64 and ref["uri"].endswith("flow-a/report")
    assert "hits" in report["cache"]
    assert report["deleted_message"] == "Deleted flow-a/report."
    assert report["still_listed"] is False
    assert not stored.exists(), "the result is gone from storage"
    assert report["page_errors"] == [] and report["console_errors"] == []
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
