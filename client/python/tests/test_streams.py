"""PutStream and GetStream from Python: large results a chunk at a time, checked against
the server's trailer, and Prefect's storage block moving objects above the unary limit.

The server here streams in 5 MiB pieces and caches entries up to 1 MiB, so results of a
dozen MiB take the multipart path in and the past-the-cache path out."""

import base64
import hashlib
import pickle

import pytest

from resultstore import ResultStoreClient
from resultstore.errors import AlreadyExists, DataLoss, InvalidArgument, ResourceExhausted
from resultstore.v1 import resultstore_pb2 as pb
from conftest import base_config

MIB = 1024 * 1024


def streaming_config(root):
    return base_config(root) + '[cache]\nmax_entry_size = "1MiB"\n[limits]\nstream_chunk_size = "5MiB"\n'


@pytest.fixture
def big_server(start_server):
    return start_server(streaming_config)


def pickled(rng, size):
    """A pickle of about `size` bytes (random bytes), as pickle serializer bytes."""
    return base64.encodebytes(pickle.dumps(rng.randbytes(size)))


def test_large_results_round_trip_in_chunks(big_server, rng):
    data = pickled(rng, 9 * MIB)
    with ResultStoreClient(big_server.url) as c:
        for block in ["local-file-system/default", "local-file-system/split"]:
            chunks = (data[i : i + 700_001] for i in range(0, len(data), 700_001))
            ref = c.put_stream(chunks, "pickle", storage=block, key="big", size=len(data))
            assert ref.size == len(data)
            assert ref.sha256 == hashlib.sha256(data).hexdigest()
            stream = c.get_stream(ref)
            assert stream.reference.size == len(data)
            assert stream.read() == data
            assert stream.trailer.sha256 == ref.sha256
            # The value loads as Prefect would load it.
            assert ref.get() == pickle.loads(base64.decodebytes(data))


def test_streams_that_lie_store_nothing(big_server, rng):
    old = pickled(rng, 6 * MIB)
    new = pickled(rng, 7 * MIB)
    with ResultStoreClient(big_server.url) as c:
        c.put_stream([old], "pickle", key="keep")
        with pytest.raises(InvalidArgument):
            c.put_stream([new[: 6 * MIB]], "pickle", key="keep", size=len(new))
        with pytest.raises(DataLoss):
            c.put_stream([new], "pickle", key="keep", sha256=hashlib.sha256(old).hexdigest())
        with pytest.raises(AlreadyExists):
            c.put_stream([new], "pickle", key="keep", create_only=True)
        assert c.get_stream(("local-file-system/default", "keep")).read() == old


def test_get_to_file_keeps_nothing_of_a_stream_that_fails(big_server, rng, tmp_path):
    data = pickled(rng, 8 * MIB)
    with ResultStoreClient(big_server.url) as c:
        ref = c.put_stream([data], "pickle", storage="local-file-system/split", key="f")
        path = tmp_path / "out.b64"
        c.get_to_file(ref, path)
        assert path.read_bytes() == data
        # Altered behind the service's back: the reference's digest catches it at the end.
        altered = bytearray(data)
        altered[7 * MIB] ^= 1
        (big_server.root / "split" / "f").write_bytes(bytes(altered))
        path.unlink()
        with pytest.raises(DataLoss):
            c.get_to_file(ref, path)
        assert not path.exists() and not (tmp_path / "out.b64.partial").exists()


def test_put_file_streams_a_file(big_server, rng, tmp_path):
    data = pickled(rng, 6 * MIB)
    src = tmp_path / "in.b64"
    src.write_bytes(data)
    with ResultStoreClient(big_server.url) as c:
        ref = c.put_file(src, "pickle", storage="local-file-system/split", key="file")
        assert (big_server.root / "split" / "file").read_bytes() == data
        assert ref.sha256 == hashlib.sha256(data).hexdigest()


def test_the_prefect_block_moves_objects_above_the_unary_limit(big_server, rng):
    from resultstore.prefect import ResultStoreStorage

    # A client whose message limit is 4 MiB: objects above it go through the streams.
    storage = ResultStoreStorage(url=big_server.url, block="local-file-system/default")
    storage._client = ResultStoreClient(big_server.url, max_message_size=4 * MIB)
    payload = rng.randbytes(9 * MIB)  # a bare object (a flow result)
    storage.write_path("flow-result", payload)
    assert (big_server.root / "results" / "flow-result").read_bytes() == payload
    assert storage.read_path("flow-result") == payload
    # The plain unary read of it is what the limit refuses.
    request = pb.GetRequest(location=pb.Location(block="local-file-system/default", key="flow-result"), as_stored=True)
    with pytest.raises(ResourceExhausted):
        storage._client._call("Get", request, "flow-result")
