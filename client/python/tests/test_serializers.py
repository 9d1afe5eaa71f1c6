"""The client's serializers give Prefect 3.9.1's bytes and configs, and read Prefect's.

Values are generated at random (seed printed; replay with RESULTSTORE_TEST_SEED), plus
the non-JSON types Prefect's JSON encoder wraps (datetime, UUID, models, exceptions...).
"""

import datetime
import decimal
import json
import pathlib
import uuid

import prefect
import pydantic
import pytest
from prefect import serializers as ps
from prefect.results import ResultStore

import resultstore.serializers as rs
from conftest import random_document

assert prefect.__version__ == "3.9.1", prefect.__version__


class Point(pydantic.BaseModel):
    x: int
    label: str


PAIRS = [
    (rs.PickleSerializer(), ps.PickleSerializer()),
    (rs.JSONSerializer(), ps.JSONSerializer()),
    (rs.JSONSerializer(jsonlib="orjson"), ps.JSONSerializer(jsonlib="orjson")),
    (rs.JSONSerializer(dumps_kwargs={"sort_keys": True}), ps.JSONSerializer(dumps_kwargs={"sort_keys": True})),
    (rs.CompressedPickleSerializer(), ps.CompressedPickleSerializer()),
    (rs.CompressedJSONSerializer(), ps.CompressedJSONSerializer()),
    (rs.CompressedSerializer("json", compressionlib="bz2"), ps.CompressedSerializer(serializer="json", compressionlib="bz2")),
    (rs.CompressedSerializer("pickle", compressionlib="zlib"), ps.CompressedSerializer(serializer="pickle", compressionlib="zlib")),
    (rs.CompressedSerializer("json", compressionlib="gzip"), ps.CompressedSerializer(serializer="json", compressionlib="gzip")),
]
IDS = [json.dumps(ours.config())[:60] for ours, _ in PAIRS]


def recorded_config(prefect_serializer) -> dict:
    """The serializer config as Prefect writes it into a record."""
    record = ResultStore(serializer=prefect_serializer).create_result_record(1, key="k")
    return json.loads(record.serialize_metadata())["serializer"]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_configs_are_the_ones_prefect_records(ours, theirs):
    assert ours.config() == recorded_config(theirs)
    assert list(ours.config()) == list(recorded_config(theirs)), "key order"
    # And a config read back gives the same serializer.
    assert rs.serializer_from(recorded_config(theirs)) == ours


def is_json(ser) -> bool:
    while isinstance(ser, rs.CompressedSerializer):
        ser = ser.serializer
    return isinstance(ser, rs.JSONSerializer)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_random_values_serialize_to_prefects_bytes(ours, theirs, rng):
    orjson = "orjson" in json.dumps(ours.config())
    for _ in range(40):
        value = random_document(rng, json_only=is_json(ours))
        try:
            expected = theirs.dumps(value)
        except TypeError as e:  # orjson refuses integers beyond 64 bits: so must we
            with pytest.raises(TypeError, match=str(e)):
                ours.dumps(value)
            continue
        blob = ours.dumps(value)
        assert blob == expected, value
        assert ours.loads(blob) == value
        if not orjson:  # Prefect 3.9.1 cannot read orjson records (see docs/prefect.md)
            assert theirs.loads(blob) == value
        # And what Prefect wrote, the client reads.
        assert ours.loads(theirs.dumps(value)) == value


EXTENDED = [
    datetime.datetime(2026, 11, 21, 12, 30, 5, 123456, tzinfo=datetime.timezone.utc),
    datetime.date(2024, 1, 2),
    datetime.timedelta(hours=3, seconds=1),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("3.14159"),
    pathlib.Path("/tmp/x"),
    {1, 2, 3},
    b"bytes\x00",
    Point(x=1, label="p"),
    ValueError("boom 1"),
]


@pytest.mark.parametrize("jsonlib", ["json", "orjson"])
def test_prefect_wrappers_for_non_json_types_match(jsonlib):
    ours, theirs = rs.JSONSerializer(jsonlib=jsonlib), ps.JSONSerializer(jsonlib=jsonlib)
    for value in EXTENDED:
        blob = ours.dumps({"v": value})
        assert blob == theirs.dumps({"v": value}), value
        back = ours.loads(blob)["v"]
        if isinstance(value, BaseException):
            assert type(back) is ValueError and str(back) == "boom 1"
        elif jsonlib == "json":
            # Prefect reads stdlib JSON back through the same wrappers.
            assert back == ps.JSONSerializer().loads(blob)["v"]


def test_prefects_own_files_load():
    from conftest import SAMPLES

    store = SAMPLES / "v3.9.1" / "resultstore-api"
    expected = {
        "json-dict": {"a": 1, "b": [1, 2.5, "x"], "c": None},
        "json-orjson": {"a": 1, "t": "hé"},
        "pickle-int": 42,
        "compressed-json": {"x": 1},
        "compressed-pickle": [1, 2, 3],
        "compressed-json-bz2": "hi",
    }
    for name, value in expected.items():
        record = json.loads((store / name).read_text())
        ser = rs.serializer_from(record["metadata"]["serializer"])
        assert ser.loads(record["result"].encode()) == value, name


def test_unknown_types_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown serializer type 'yaml'"):
        rs.serializer_from("yaml")
    with pytest.raises(ValueError, match="inner serializer"):
        rs.serializer_from("compressed")
    with pytest.raises(ValueError, match="object_encoder"):
        rs.JSONSerializer(dumps_kwargs={"default": str})
