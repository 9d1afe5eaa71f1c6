"""Results over HTTP: the JSON API against the real server, with real HTTP clients (curl,
httpx, Node's fetch), gRPC-Web, the OpenAPI document checked against the running server
(schemathesis), and the same answers and statuses as gRPC for the same requests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import textwrap
from pathlib import Path

import grpc
import httpx
import pytest

from conftest import REPO, base_config
from resultstore import ResultStoreClient
from resultstore.v1 import resultstore_pb2 as pb
from resultstore.v1 import resultstore_pb2_grpc as pb_grpc

HERE = Path(__file__).parent
BLOCK = "local-file-system/default"
RESULTS = "/v1/blocks/local-file-system/default/results"

WRITER, READER, DELETER = "writer-token-1", "reader-token-1", "deleter-token-1"


def auth_config(root: Path, extra: str = "") -> str:
    def digest(t: str) -> str:
        return hashlib.sha256(t.encode()).hexdigest()

    return base_config(root) + extra + textwrap.dedent(
        f"""
        [auth]
        [[auth.tokens]]
        name = "writer"
        sha256 = "{digest(WRITER)}"
        scopes = {{ "*" = ["read", "write"] }}
        [[auth.tokens]]
        name = "reader"
        sha256 = "{digest(READER)}"
        scopes = {{ "*" = ["read"] }}
        [[auth.tokens]]
        name = "deleter"
        sha256 = "{digest(DELETER)}"
        scopes = {{ "*" = ["read", "delete"] }}
        """
    )


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def node_modules() -> str:
    path = os.environ.get("RESULTSTORE_NODE_MODULES", str(REPO / ".test-env" / "node" / "node_modules"))
    if not Path(path, "playwright-core").is_dir():
        pytest.fail(f"playwright-core is missing under {path}: run scripts/test-env (it installs it)")
    return path


def test_curl_script_walks_every_endpoint(server):
    """The curl examples of docs/http.md, run as a script against the server."""
    out = subprocess.run(
        ["bash", str(HERE / "http" / "curl.sh"), server.url], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all curl checks passed" in out.stdout


def test_http_and_grpc_give_the_same_answers(server, client):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # Written over gRPC, read over HTTP.
        ref = client.put({"a": [1, 2.5, None], "b": "é"}, serializer="json", key="same/one")
        r = http.get(f"{RESULTS}/same/one")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"a": [1, 2.5, None], "b": "é"}
        assert r.text == client.resolve_json((BLOCK, "same/one"))
        assert r.headers["etag"] == f'"{ref.sha256}"'
        reference = json.loads(r.headers["resultstore-reference"])
        assert reference["sha256"] == ref.sha256 and reference["key"] == "same/one"
        # 304 for the same ETag, 200 for another.
        assert http.get(f"{RESULTS}/same/one", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        assert http.get(f"{RESULTS}/same/one", headers={"If-None-Match": '"other"'}).status_code == 200
        # Raw bytes, and a range of them.
        raw = http.get(f"{RESULTS}/same/one", params={"want": "raw"})
        _, data, _ = client.read_record(BLOCK, "same/one")
        assert raw.content == data
        part = http.get(f"{RESULTS}/same/one", params={"want": "raw"}, headers={"Range": "bytes=2-5"})
        assert part.status_code == 206 and part.content == data[2:6]
        assert part.headers["content-range"] == f"bytes 2-5/{len(data)}"
        assert http.get(f"{RESULTS}/same/one", params={"want": "raw"}, headers={"Range": "bytes=999-"}).status_code == 416
        # As stored: the file on disk.
        stored = http.get(f"{RESULTS}/same/one", params={"want": "stored"})
        assert stored.content == (server.root / "results" / "same" / "one").read_bytes()

        # Written over HTTP (JSON, and the pickle serializer's bytes: base64 of a pickle, as
        # Prefect's PickleSerializer writes them), read over gRPC.
        put = http.put(f"{RESULTS}/http/json", json={"x": 1})
        assert put.status_code == 200 and put.json()["type"] == "reference"
        assert client.load(BLOCK, "http/json") == {"x": 1}
        import pickle

        put = http.put(
            f"{RESULTS}/http/pickle",
            content=base64.b64encode(pickle.dumps({"t": (1, 2)}, protocol=4)),
            params={"serializer": "pickle"},
            headers={"content-type": "application/octet-stream"},
        )
        assert put.status_code == 200, put.text
        assert client.load(BLOCK, "http/pickle") == {"t": (1, 2)}
        assert http.get(f"{RESULTS}/http/pickle").json() == {"t": [1, 2]}

        # Exists, list with pagination, blocks, the reference document, delete.
        assert http.head(f"{RESULTS}/http/json").status_code == 200
        assert http.head(f"{RESULTS}/http/none").status_code == 404
        for i in range(5):
            http.put(f"{RESULTS}/page/{i}", json=i)
        keys, token = [], None
        while True:
            page = http.get(RESULTS, params={"prefix": "page/", "page_size": 2, **({"page_token": token} if token else {})}).json()
            keys += [e["key"] for e in page["entries"]]
            token = page["next_page_token"]
            if not token:
                break
        assert keys == [f"page/{i}" for i in range(5)]
        assert [b["slug"] for b in http.get("/v1/blocks").json()["blocks"]] == [b["slug"] for b in client.blocks()]
        doc = put.json()
        assert http.post("/v1/resolve", json=doc).json() == {"t": [1, 2]}
        assert http.post("/v1/resolve", json={"type": "literal", "value": None}).json() is None
        assert http.delete(f"{RESULTS}/http/json").status_code == 204
        assert http.get(f"{RESULTS}/http/json").status_code == 404
        deleted = http.delete(RESULTS, params={"prefix": "page/"}).json()
        assert deleted["deleted"] == 5
        stats = http.get("/v1/stats").json()["cache"]
        assert stats["hits"] > 0 and stats["capacity"] > 0


# The bad-input table of the gRPC API (tests/tests/bad_input.rs), through HTTP: each request,
# its HTTP status, the gRPC code named in the body, and nothing stored changed.
BAD_INPUTS = [
    # (what, method, path, kwargs, status, code)
    ("unknown block", "GET", "/v1/blocks/s3-bucket/nope/results/k", {}, 404, "NOT_FOUND"),
    ("missing result", "GET", f"{RESULTS}/missing", {}, 404, "NOT_FOUND"),
    ("key escaping the block", "PUT", f"{RESULTS}/a/%2E%2E/%2E%2E/etc", {"json": 1}, 400, "INVALID_ARGUMENT"),
    ("invalid JSON body", "PUT", f"{RESULTS}/guarded", {"content": b"[1,", "headers": {"content-type": "application/json"}}, 400, "INVALID_ARGUMENT"),
    ("unknown serializer", "PUT", f"{RESULTS}/guarded", {"json": 1, "params": {"serializer": "nope"}}, 400, "INVALID_ARGUMENT"),
    ("bytes without a serializer", "PUT", f"{RESULTS}/guarded", {"content": b"x", "headers": {"content-type": "application/octet-stream"}}, 400, "INVALID_ARGUMENT"),
    ("pickle bytes that are no pickle", "PUT", f"{RESULTS}/guarded", {"content": b"not a pickle", "params": {"serializer": "pickle"}, "headers": {"content-type": "application/octet-stream"}}, 400, "INVALID_ARGUMENT"),
    ("create_only over a result", "PUT", f"{RESULTS}/guarded", {"json": 2, "params": {"mode": "create_only"}}, 409, "ALREADY_EXISTS"),
    ("body above the message limit", "PUT", f"{RESULTS}/guarded", {"content": b"1" * (2 << 20), "headers": {"content-type": "application/json"}}, 413, "RESOURCE_EXHAUSTED"),
    ("unknown want", "GET", f"{RESULTS}/guarded", {"params": {"want": "xml"}}, 400, "INVALID_ARGUMENT"),
    ("unknown query parameter", "GET", f"{RESULTS}/guarded", {"params": {"wnat": "json"}}, 400, "INVALID_ARGUMENT"),
    ("a pickle that is not plain data, as JSON", "GET", f"{RESULTS}/object", {}, 412, "FAILED_PRECONDITION"),
    ("an expired result", "GET", f"{RESULTS}/expired", {}, 412, "FAILED_PRECONDITION"),
    ("delete a whole block without all=true", "DELETE", RESULTS, {}, 400, "INVALID_ARGUMENT"),
    ("a document that is not JSON", "POST", "/v1/resolve", {"content": b"{"}, 400, "INVALID_ARGUMENT"),
    ("a Range on JSON", "GET", f"{RESULTS}/guarded", {"headers": {"Range": "bytes=0-1"}}, 400, "INVALID_ARGUMENT"),
]


def test_bad_input_gets_its_status_and_changes_nothing(start_server, tmp_path):
    server = start_server(base_config(tmp_path) + "\n[limits]\nmax_message_size = \"1MiB\"\nmax_request_bytes_in_flight = \"8MiB\"\n")
    import datetime
    import pickle

    with ResultStoreClient(server.url) as client:
        client.put([1, 2, 3], serializer="json", key="guarded")
        # A pickle of a class instance: valid, but not plain data.
        import collections

        obj = pickle.dumps(collections.OrderedDict(a=1), protocol=4)
        client.put_stream([base64.b64encode(obj)], serializer="pickle", key="object")
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
        client.put("old", serializer="json", key="expired", expiration=past)
    guarded = server.root / "results" / "guarded"
    before = guarded.read_bytes()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for what, method, path, kwargs, status, code in BAD_INPUTS:
            r = http.request(method, path, **kwargs)
            assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
            assert r.json()["error"]["code"] == code, what
            assert r.json()["error"]["status"] == status, what
            assert guarded.read_bytes() == before, f"{what} changed the stored result"
    assert not (server.root / "etc").exists()


def grpc_code(stub, method: str, request, token: str | None) -> grpc.StatusCode:
    try:
        getattr(stub, method)(request, metadata=[("authorization", f"Bearer {token}")] if token else None)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


HTTP_OF_GRPC = {
    grpc.StatusCode.OK: {200, 204},
    grpc.StatusCode.UNAUTHENTICATED: {401},
    grpc.StatusCode.PERMISSION_DENIED: {403},
    grpc.StatusCode.NOT_FOUND: {404},
}


def test_tokens_are_scoped_as_for_grpc(start_server, tmp_path):
    """The token matrix: every operation with every token, over gRPC and over HTTP, gives
    the same answer (HTTP's status is the gRPC code's)."""
    server = start_server(auth_config(tmp_path))
    loc = pb.Location(block=BLOCK, key="m/k")
    put = pb.PutRequest(json="1", key="m/k", task=pb.ResultSettings(result_serializer=pb.Serializer(type="json")))
    ops = [
        ("Put", put, "PUT", f"{RESULTS}/m/k", {"json": 1}),
        ("Resolve", pb.ResolveRequest(location=loc, want=pb.WANT_JSON), "GET", f"{RESULTS}/m/k", {}),
        ("Exists", pb.ExistsRequest(location=loc), "HEAD", f"{RESULTS}/m/k", {}),
        ("List", pb.ListRequest(block=BLOCK, prefix="m/"), "GET", RESULTS, {"params": {"prefix": "m/"}}),
        ("Delete", pb.DeleteRequest(location=loc), "DELETE", f"{RESULTS}/m/k", {}),
        ("DeletePrefix", pb.DeletePrefixRequest(block=BLOCK, prefix="m/"), "DELETE", RESULTS, {"params": {"prefix": "m/"}}),
    ]
    with grpc.insecure_channel(server.address) as channel, httpx.Client(base_url=server.url, timeout=30) as http:
        stub = pb_grpc.ResultStoreStub(channel)
        for token in [None, "wrong", READER, WRITER, DELETER]:
            for name, request, method, path, kwargs in ops:
                # The same state for both: the result there before each pair of calls.
                stub.Put(put, metadata=[("authorization", f"Bearer {WRITER}")])
                code = grpc_code(stub, name, request, token)
                stub.Put(put, metadata=[("authorization", f"Bearer {WRITER}")])
                r = http.request(method, path, headers=bearer(token), **kwargs)
                assert r.status_code in HTTP_OF_GRPC[code], f"{name} with {token}: gRPC {code}, HTTP {r.status_code}"
                if method != "HEAD" and r.status_code >= 400:
                    assert r.json()["error"]["code"] == code.name, name


def test_large_results_stream_in_bounded_memory(start_server, tmp_path):
    """A 64 MiB result in a split block (past the cache and the message limit) read over
    HTTP as stored: it streams, and the server's peak memory grows by far less than the
    result. (`want=json` and `want=raw` read the value whole, up to
    limits.max_result_size, as Resolve does.)"""
    config = base_config(tmp_path) + (
        '\n[cache]\ncapacity = "16MiB"\nmax_entry_size = "1MiB"\n[limits]\nstream_chunk_size = "5MiB"\n'
    )
    server = start_server(config)
    text = base64.b64encode(os.urandom(48 << 20))  # 64 MiB of pickle serializer bytes' shape
    piece = 1 << 20
    # Serializer bytes of an opaque serializer: the stream is stored as it is.
    with ResultStoreClient(server.url) as client:
        client.put_stream(
            (text[i : i + piece] for i in range(0, len(text), piece)),
            serializer="compressed/pickle", storage="local-file-system/split", key="big", size=len(text),
        )

    def peak_rss() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024

    before = peak_rss()
    split = "/v1/blocks/local-file-system/split/results"
    with httpx.Client(base_url=server.url, timeout=120) as http:
        body = bytearray()
        with http.stream("GET", f"{split}/big", params={"want": "stored"}) as r:
            assert r.status_code == 200
            for part in r.iter_bytes():
                body += part
    # A split result as stored is the Prefect 3 record its document and payload make.
    assert json.loads(body)["result"] == text.decode()
    # A stream holds about three of its pieces (docs/operations.md): 15 MiB here, and the
    # HTTP side's buffers a few more.
    grew = peak_rss() - before
    assert grew < 32 << 20, f"peak RSS grew {grew >> 20} MiB reading a {len(text) >> 20} MiB result"


def b64_segments(text: bytes) -> bytes:
    """gRPC-Web text: each frame is base64 of its own (padded), one after another."""
    out, i = b"", 0
    while i < len(text):
        j = i
        while j < len(text):
            group = text[j : j + 4]
            j += 4
            if b"=" in group:
                break
        out += base64.b64decode(text[i:j])
        i = j
    return out


def grpc_web_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def test_grpc_web_calls_the_same_service(server, client):
    client.put({"web": True}, serializer="json", key="web/one")
    request = pb.ResolveRequest(location=pb.Location(block=BLOCK, key="web/one"), want=pb.WANT_JSON)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for kind, encode, decode in [
            ("application/grpc-web+proto", lambda b: b, lambda b: b),
            ("application/grpc-web-text", base64.b64encode, b64_segments),
        ]:
            r = http.post(
                "/resultstore.v1.ResultStore/Resolve",
                content=encode(grpc_web_frame(request.SerializeToString())),
                headers={"content-type": kind, "accept": kind, "x-grpc-web": "1"},
            )
            assert r.headers["content-type"].startswith(kind)
            assert r.status_code == 200, r.text
            body = decode(r.content)
            flag, length = body[0], struct.unpack(">I", body[1:5])[0]
            assert flag == 0
            reply = pb.ResolveResponse.FromString(body[5 : 5 + length])
            assert json.loads(reply.json) == {"web": True}
            trailers = body[5 + length :]
            assert trailers[0] == 0x80 and b"grpc-status:0" in trailers.replace(b" ", b"")


def test_node_fetch_reads_and_writes(server):
    out = subprocess.run(
        ["node", str(HERE / "js" / "fetch.cjs"), server.url], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report == {
        "put": 200,
        "value": {"from": "node", "n": [1, 2, 3]},
        "etag_matches_reference": True,
        "not_modified": 304,
        "missing": {"status": 404, "code": "NOT_FOUND"},
        "deleted": 204,
    }


def test_the_openapi_document_matches_the_running_server(server):
    """schemathesis generates requests from service/src/wire/openapi.json (which the server serves as it
    is) and checks every reply's status, content type, headers and body against it."""
    schemathesis = os.environ.get("RESULTSTORE_SCHEMATHESIS", str(REPO / ".test-env" / "http" / "bin" / "schemathesis"))
    if not Path(schemathesis).is_file():
        pytest.fail(f"schemathesis is missing at {schemathesis}: run scripts/test-env (it installs it)")
    served = httpx.get(f"{server.url}/openapi.json", timeout=10)
    assert served.json() == json.loads((REPO / "service" / "src" / "wire" / "openapi.json").read_text()), "the served document is the repo's"
    out = subprocess.run(
        [
            schemathesis, "--config-file", str(HERE / "http" / "schemathesis.toml"), "run", f"{server.url}/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--phases", "coverage,fuzzing", "--max-examples", "30", "--workers", "2", "--seed", "1",
        ],
        capture_output=True, text=True, timeout=600, cwd=server.root,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_a_prefect_result_document_resolves_over_http(server, prefect_env):
    """What Prefect's API hands a UI or another language: the result's metadata document.
    POSTed to /v1/resolve with the block it lives in, it reads as the value."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore
    from prefect.serializers import JSONSerializer

    store = ResultStore(result_storage=LocalFileSystem(basepath=str(server.root / "results")), serializer=JSONSerializer())
    store.write({"from": "prefect", "n": 3}, key="prefect/doc")
    # The metadata document, as Prefect wrote it in the record.
    document = json.dumps(json.loads((server.root / "results" / "prefect" / "doc").read_text())["metadata"])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/v1/resolve", params={"block": BLOCK}, content=document)
        assert r.status_code == 200, r.text
        assert r.json() == {"from": "prefect", "n": 3}
        assert json.loads(r.headers["resultstore-reference"])["key"] == "prefect/doc"
