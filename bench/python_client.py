"""The Python client's read path, for resultstore's benchmark suite (run by resultstore-bench).

Against a running server (`--url`), in one process, sequential calls (a Python program
calls one at a time per thread):
- `client`: `ResultStoreClient.get` of a reference to a cached result, local copies off,
  so every read is a Resolve call (and the value is loaded from its bytes);
- `grpcio`: the same Resolve request through grpcio's generated stub, nothing else: the
  fastest any Python client of this RPC can be; `grpcio_loads` also loads the value
  from the reply's bytes with `json.loads`, which every reader of the value does;
- `local`: `ResultStoreClient.get` with its local copies on: after the first read, a read
  of the same reference makes no call.
`client` and `grpcio` run in four rounds each, in shuffled order, each keeping its best
round (sequential Python calls share the two cores with the server and grpc's threads,
and a single pair of rounds moved by ±15% between runs). Prints one JSON object: per mode, requests, seconds, p50/p99 ms.
"""

import argparse
import json
import random
import time

import grpc

from resultstore import ResultStoreClient
from resultstore.v1 import resultstore_pb2 as pb
from resultstore.v1 import resultstore_pb2_grpc as pb_grpc


def measure(call, seconds: float) -> dict:
    for _ in range(200):  # warm-up
        call()
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    secs = time.perf_counter() - start
    latencies.sort()

    def p(q: float) -> float:
        return latencies[min(len(latencies) - 1, max(0, int(len(latencies) * q + 0.999999) - 1))] * 1000

    return {"requests": len(latencies), "secs": secs, "p50_ms": p(0.5), "p99_ms": p(0.99)}


def rate(m: dict) -> float:
    return m["requests"] / m["secs"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--block", required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()

    value = "v" * (args.size - 2)  # JSON text of `size` bytes
    plain = ResultStoreClient(args.url, local_copies=0)
    ref = plain.put(value, serializer="json", storage=args.block, key=f"python/{args.size}")
    document = ref.to_dict()
    assert plain.get(document) == value  # cached in the server from here on

    channel = grpc.insecure_channel(args.url.removeprefix("http://"))
    stub = pb_grpc.ResultStoreStub(channel)
    request = pb.ResolveRequest(reference=ref.message, want=pb.WANT_RAW)
    assert stub.Resolve(request).data

    modes = {
        "client": lambda: plain.get(ref),
        "grpcio": lambda: stub.Resolve(request),
        "grpcio_loads": lambda: json.loads(stub.Resolve(request).data),
    }
    rounds = {mode: [] for mode in modes}
    order = list(modes) * 4
    random.Random(7).shuffle(order)
    for mode in order:
        rounds[mode].append(measure(modes[mode], args.seconds / 4))
    out = {mode: max(ms, key=rate) for mode, ms in rounds.items()}

    with ResultStoreClient(args.url) as local:
        out["local"] = measure(lambda: local.get(document), args.seconds / 2)
        out["local_calls"] = out["local"]["requests"] + 200 - local._copies.hits
    plain.close()
    channel.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
