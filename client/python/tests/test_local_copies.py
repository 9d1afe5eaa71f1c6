"""A second read of a reference in one process makes no call, and never serves what the
server would refuse (`resultstore.local_copies`). "No call" is shown by stopping the
server: a read that still answers cannot have asked it."""

from __future__ import annotations

import datetime
import json

import pytest

from resultstore import ResultStoreClient, errors


def fresh(ref):
    """The same reference as another part of the program would hold it (from its document)."""
    return json.loads(ref.to_json())


def test_a_second_read_of_a_reference_makes_no_call(server):
    with ResultStoreClient(server.url, timeout=5) as client:
        ref = client.put({"a": [1, 2, 3]}, key="copied")
        assert client.get(fresh(ref)) == {"a": [1, 2, 3]}
        server.stop()
        assert client.get(fresh(ref)) == {"a": [1, 2, 3]}
        # Each read gets its own value: changing one does not change the next.
        first = client.get(fresh(ref))
        first["a"].append(4)
        assert client.get(fresh(ref)) == {"a": [1, 2, 3]}


def test_without_local_copies_every_read_calls(server):
    with ResultStoreClient(server.url, timeout=5, local_copies=0) as client:
        ref = client.put({"a": 1}, key="not-copied")
        assert client.get(fresh(ref)) == {"a": 1}
        server.stop()
        with pytest.raises(errors.Unavailable):
            client.get(fresh(ref))


def test_a_copy_serves_for_its_ttl_only(server):
    now = [0.0]
    with ResultStoreClient(server.url, timeout=5, local_copy_ttl=30) as client:
        client._copies.clock = lambda: now[0]
        ref = client.put({"a": 1}, key="ttl")
        assert client.get(fresh(ref)) == {"a": 1}
        server.stop()
        now[0] = 29.9
        assert client.get(fresh(ref)) == {"a": 1}
        now[0] = 30.0
        with pytest.raises(errors.Unavailable):
            client.get(fresh(ref))


def test_deleting_or_replacing_drops_the_copy(client):
    ref = client.put({"v": 1}, key="gone")
    assert client.get(fresh(ref)) == {"v": 1}
    client.delete("local-file-system/default", "gone")
    with pytest.raises(errors.NotFound):
        client.get(fresh(ref))

    old = client.put({"v": 1}, key="replaced")
    assert client.get(fresh(old)) == {"v": 1}
    new = client.put({"v": 2}, key="replaced")
    # The old reference names bytes the key no longer holds: the server says so.
    with pytest.raises(errors.ResultStoreError):
        client.get(fresh(old))
    assert client.get(fresh(new)) == {"v": 2}


def test_an_expired_result_is_refused_even_when_copied(client):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    ref = client.put({"old": True}, key="expired", expiration=past)
    assert client.get(fresh(ref), allow_expired=True) == {"old": True}
    assert len(client._copies) == 1
    with pytest.raises(errors.FailedPrecondition, match="expired"):
        client.get(fresh(ref))


def test_copies_stay_within_their_bytes(server):
    with ResultStoreClient(server.url, local_copies=64 * 1024) as client:
        refs = [client.put(f"{i:04}" + "x" * 996, key=f"small/{i}") for i in range(200)]
        for ref in refs:
            client.get(fresh(ref))
        assert 0 < client._copies.bytes <= 64 * 1024
        # Least recently used go first: the last ones read are kept.
        server.stop()
        assert client.get(fresh(refs[-1])) == "0199" + "x" * 996
        with pytest.raises(errors.Unavailable):
            client.get(fresh(refs[0]))


def test_a_large_result_is_not_copied(client):
    client._copies.capacity = 8 * 1024
    ref = client.put("y" * 2000, key="large")
    assert client.get(fresh(ref)) == "y" * 2000
    assert len(client._copies) == 0
