"""docs/prefect.md's example, run as the page says: a server on its embedded default
(no config file), then `python examples/prefect_flow.py` against it, twice."""

import json
import subprocess

from conftest import REPO, Server, run_python, server_binary


def test_the_documented_example_flow_runs_against_a_default_server(tmp_path, prefect_env):
    example = (REPO / "examples" / "prefect_flow.py").read_text()
    assert "examples/prefect_flow.py" in (REPO / "docs" / "prefect.md").read_text()
    server = Server(tmp_path, None)
    try:
        env = dict(prefect_env, RESULTSTORE_URL=server.url)
        first = run_python(example, env=env, cwd=tmp_path)
        assert json.loads(first.strip().splitlines()[-1]) == [{"x": i, "square": i * i} for i in range(4)]
        tasks = [json.loads(line) for line in first.splitlines() if line.startswith('{"task"')]
        assert [t["state"] for t in tasks] == ["Completed"] * 4
        # The embedded default block keeps them in ./.prefect-results, as Prefect records.
        for t in tasks:
            assert (tmp_path / ".prefect-results" / t["key"]).read_bytes().startswith(b'{"metadata":')
        second = run_python(example, env=env, cwd=tmp_path)
        assert [json.loads(line)["state"] for line in second.splitlines() if line.startswith('{"task"')] == [
            "Cached"
        ] * 4
        assert "computing" not in second
        out = subprocess.run(
            [str(server_binary()), "resolve", "--server", server.url, "--block", "local-file-system/default",
             "--key", tasks[3]["key"], "--json"],
            capture_output=True, text=True, check=True,
        ).stdout
        assert json.loads(out) == {"x": 3, "square": 9}
    finally:
        server.stop()
