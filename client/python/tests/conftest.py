"""Fixtures: a real resultstore server (the binary built from this checkout) on 127.0.0.1:0.

The binary is `$RESULTSTORE_BIN`, else `target/debug/resultstore` in the repository;
`scripts/test` builds it and sets the variable. Without it every test here fails with a
message saying so: nothing is skipped.

Prefect runs offline against a throwaway home: an ephemeral API server with SQLite.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SAMPLES = Path(os.environ.get("RESULTSTORE_PREFECT_SAMPLES", REPO.parent / "shared" / "prefect-samples"))


def server_binary() -> Path:
    path = Path(os.environ.get("RESULTSTORE_BIN", REPO / "target" / "debug" / "resultstore"))
    if not path.is_file():
        pytest.fail(f"the resultstore binary is missing at {path}: run scripts/test (it builds it), "
                    "or set RESULTSTORE_BIN")
    return path


class Server:
    """A running `resultstore serve` with the given config, in its own directory."""

    def __init__(self, root: Path, config: str | None, listen: str = "127.0.0.1:0", metrics: bool = False,
                 extra_args: list[str] | tuple[str, ...] = ()):
        """`config=None` runs the embedded default (as `resultstore serve` with no file).
        `metrics`: also serve /metrics on a free port (`metrics_url`). `extra_args` go to
        `serve` as they are (`--advertise ...`)."""
        self.root = root
        self.config_path = root / "resultstore.toml"
        args = [str(server_binary()), "serve", "--listen", listen, *extra_args]
        if metrics:
            args += ["--metrics-listen", "127.0.0.1:0"]
        if config is not None:
            self.config_path.write_text(config)
            args += ["--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            args,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=open(root / "server.log", "wb"),
            text=True,
        )
        # The server prints its address once it accepts connections: that line is the
        # readiness signal (no sleeping, no polling).
        line = self.proc.stdout.readline()
        if not line.startswith("resultstore listening on "):
            self.proc.kill()
            log = (root / "server.log").read_text(errors="replace")
            raise RuntimeError(f"resultstore did not start: {line!r}\n{log}")
        self.address = line.split()[-1]
        self.url = f"http://{self.address}"
        self.metrics_url = None
        if metrics:
            line = self.proc.stdout.readline()
            if not line.startswith("resultstore metrics on "):
                self.proc.kill()
                raise RuntimeError(f"resultstore printed no metrics address: {line!r}")
            self.metrics_url = line.split()[-1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def base_config(root: Path, default_serializer: str = "pickle") -> str:
    """Blocks rooted in `root`: a prefect3 default block, a split block, memory."""
    return textwrap.dedent(
        f"""
        default_block = "local-file-system/default"
        default_serializer = "{default_serializer}"
        [blocks."local-file-system/default"]
        url = "file://{root}/results"
        [blocks."local-file-system/split"]
        url = "file://{root}/split"
        format = "split"
        metadata_url = "file://{root}/split-meta"
        [blocks."memory/default"]
        url = "memory://"
        """
    )


@pytest.fixture
def start_server(tmp_path):
    """Starts servers with a config (text, or a function of the root dir); stops them after."""
    started = []

    def start(config=None, root: Path | None = None, **kwargs) -> Server:
        root = root or tmp_path
        root.mkdir(parents=True, exist_ok=True)
        text = config(root) if callable(config) else (config or base_config(root))
        server = Server(root, text, **kwargs)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(start_server) -> Server:
    return start_server()


@pytest.fixture
def client(server):
    from resultstore import ResultStoreClient

    with ResultStoreClient(server.url) as c:
        yield c


@pytest.fixture
def rng(request) -> random.Random:
    """A seeded generator; the seed is printed so a failure can be replayed with
    RESULTSTORE_TEST_SEED."""
    seed = int(os.environ.get("RESULTSTORE_TEST_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"{request.node.nodeid}: RESULTSTORE_TEST_SEED={seed}")
    return random.Random(seed)


@pytest.fixture(scope="session")
def prefect_database(tmp_path_factory) -> Path:
    """An empty Prefect database at the current schema, made once per session and copied
    into each test's Prefect home: migrating a new database is about half of a first flow
    run's 40 s here, and a copy starts every test from the same empty database a
    migration would make."""
    home = tmp_path_factory.mktemp("prefect-database")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"prefect server database upgrade failed:\n{proc.stdout}\n{proc.stderr}")
    database = home / "prefect.db"
    # One file: what the write-ahead log holds goes into the database first.
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return database


@pytest.fixture
def prefect_env(tmp_path, monkeypatch, prefect_database):
    """Environment for running Prefect offline: its own home (with a migrated, empty
    database), an ephemeral API."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    shutil.copyfile(prefect_database, home / "prefect.db")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        # The ephemeral API server starts in a subprocess; on CI's two busy cores it has
        # taken longer than Prefect's default 20 s wait ("Timed out while attempting to
        # connect to ephemeral Prefect API server"). A bound, not a sleep: it is ready sooner.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        # No telemetry calls to the internet, which this machine does not reach.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return env


def run_python(script: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> str:
    """Runs a script with this interpreter in a fresh process (Prefect flows get their own
    process, as in real use); fails the test with its output when it fails."""
    full_env = dict(os.environ)
    full_env.pop("PREFECT_API_URL", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=full_env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"python failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def random_plain(rng: random.Random, depth: int = 0, json_only: bool = False):
    """A random plain-data value: what both JSON and plain pickles hold."""
    kinds = ["int", "bigint", "float", "str", "bool", "none"]
    if depth < 3:
        kinds += ["list", "dict"] * 2
    if not json_only:
        kinds += ["bytes", "tuple", "nan"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(2**31), 2**31)
    if kind == "bigint":
        return rng.randint(-(2**80), 2**80)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "nan":
        return rng.choice([float("inf"), float("-inf"), 1e-300])
    if kind == "str":
        alphabet = "abcxyz 0123\"\\/\n\té€😀\u2028"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 16)))
    if kind == "tuple":
        return tuple(random_plain(rng, depth + 1, json_only) for _ in range(rng.randint(0, 3)))
    if kind == "list":
        return [random_plain(rng, depth + 1, json_only) for _ in range(rng.randint(0, 4))]
    return {f"k{i}_{rng.randint(0, 99)}": random_plain(rng, depth + 1, json_only) for i in range(rng.randint(0, 4))}


def random_document(rng: random.Random, json_only: bool = False) -> dict:
    """A random value with a dict at the top (so it is never a literal)."""
    return {"id": rng.randrange(10**9), "payload": random_plain(rng, 0, json_only)}
