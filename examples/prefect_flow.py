"""A Prefect flow whose results are persisted and read through resultstore.

Start a server (`cargo run -p resultstore -- serve`), install Prefect and the client
(`pip install prefect ./client/python`), then run `python examples/prefect_flow.py`.
See docs/prefect.md. `RESULTSTORE_URL` and `RESULTSTORE_BLOCK` pick the server and the
block (default: 127.0.0.1:50051, the server's default block).
"""

import json
import os

from prefect import flow, task
from prefect.cache_policies import INPUTS

from resultstore.prefect import ResultStoreStorage


@task(cache_policy=INPUTS, result_serializer="json")
def square(x: int) -> dict:
    print(f"computing the square of {x}")
    return {"x": x, "square": x * x}


@flow(persist_result=True)
def squares(n: int = 4) -> list:
    states = [square(i, return_state=True) for i in range(n)]
    # Where each task result is in the server's block, for `resultstore resolve --key`.
    for s in states:
        print(json.dumps({"task": "square", "state": s.name, "key": s.data.metadata.storage_key}))
    return [s.result() for s in states]


if __name__ == "__main__":
    storage = ResultStoreStorage(
        url=os.environ.get("RESULTSTORE_URL", "127.0.0.1:50051"),
        block=os.environ.get("RESULTSTORE_BLOCK", ""),
    )
    # Prefect takes only saved blocks as a flow's result storage.
    storage.save("example", overwrite=True)
    print(json.dumps(squares.with_options(result_storage=storage)(4)))
