"""Prefect's own read path, for resultstore's benchmark suite (run by resultstore-bench).

`many`: reads results `PREFIX0..PREFIX{count-1}` once each with Prefect's
`ResultStore.read`, as a worker does, and reports how many files it opened under the
storage directory (its storage reads), counted by an audit hook on `open`.
`latency`: reads one key back to back for `--seconds` and reports request count and
latency percentiles. Prefect keeps records it read in a per-process LRU cache
(`cache_result_in_memory`, default true); `--memory-cache` measures that, without it every
read goes to storage, which is what each new worker process meets.
"""

import argparse
import json
import os
import sys
import time

from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["many", "latency"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--key", default="")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--memory-cache", action="store_true")
    args = ap.parse_args()

    root = os.path.realpath(args.dir)
    reads = 0

    def count_opens(event, event_args):
        nonlocal reads
        if event == "open" and isinstance(event_args[0], str) and os.path.realpath(event_args[0]).startswith(root):
            reads += 1

    store = ResultStore(result_storage=LocalFileSystem(basepath=root), cache_result_in_memory=args.memory_cache)
    sys.addaudithook(count_opens)
    if args.mode == "many":
        for i in range(args.count):
            store.read(f"{args.prefix}{i}").result
        print(json.dumps({"reads": reads}))
        return
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        t0 = time.perf_counter()
        store.read(args.key).result
        latencies.append(time.perf_counter() - t0)
    secs = time.perf_counter() - start
    latencies.sort()

    def p(q: float) -> float:
        return latencies[min(len(latencies) - 1, max(0, int(len(latencies) * q + 0.999999) - 1))] * 1000

    print(json.dumps({"requests": len(latencies), "secs": secs, "p50_ms": p(0.5), "p99_ms": p(0.99)}))


if __name__ == "__main__":
    main()
