"""Object keys, UUIDv7 names and the Parquet encoder's conventions."""

from __future__ import annotations

import io
import itertools
import time
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securitylake_sink.encode import splice, thrift
from securitylake_sink.encode.parquet import encode_parquet, leaf_columns
from securitylake_sink.lake.layout import event_day, object_key, uuid7
from securitylake_sink.ocsf.schema import load_schema


def _hour(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) // 3600


@pytest.mark.parametrize(
    ("prefix", "location", "region", "account", "hour", "expected"),
    [
        (
            "",
            "ext/sshd/",
            "us-east-1",
            "123456789012",
            _hour("2026-11-28T23:00"),
            "ext/sshd/region=us-east-1/accountId=123456789012/eventDay=20261128/N.parquet",
        ),
        (
            "lake/",
            "ext/src/1.0/",
            "eu-west-1",
            "external",
            _hour("2026-01-01T00:00"),
            "lake/ext/src/1.0/region=eu-west-1/accountId=external/eventDay=20260101/N.parquet",
        ),
        (
            "",
            "ext/a/",
            "cn-north-1",
            "external_acme",
            _hour("2024-02-29T12:00"),
            "ext/a/region=cn-north-1/accountId=external_acme/eventDay=20240229/N.parquet",
        ),
    ],
    ids=["plain", "prefix-and-version", "leap-day"],
)
def test_object_key_follows_the_security_lake_layout(  # noqa: PLR0917
    prefix: str, location: str, region: str, account: str, hour: int, expected: str
) -> None:
    assert object_key(prefix, location, region=region, account_id=account, hour=hour, name="N") == expected


def test_event_day_is_utc() -> None:
    # 2026-11-28 23:30 UTC is already the 29th in Tokyo and still the 28th in UTC
    assert event_day(_hour("2026-11-28T23:30")) == "20261128"


def test_uuid7_has_version_variant_and_sorts_by_time() -> None:
    first = uuid7(1_700_000_000_000)
    later = uuid7(1_700_000_000_001)
    assert first.version == 7
    assert first.variant == "specified in RFC 4122"
    assert str(first) < str(later)
    assert int(first.hex[:12], 16) == 1_700_000_000_000
    now = uuid7()
    assert abs(int(now.hex[:12], 16) - time.time_ns() // 1_000_000) < 5_000
    assert len({uuid7(5).hex for _ in range(1000)}) == 1000


def test_parquet_rows_sorted_by_time_zstd_for_columns_with_values() -> None:
    # GIVEN an authentication table in the fixed class schema, out of time order
    schema = load_schema().arrow_schema(3002)
    times = [1_700_000_003_000, 1_700_000_001_000, 1_700_000_002_000]
    table = pa.Table.from_pylist(
        [
            {"class_uid": 3002, "time": t, "user": {"name": f"u{t}"}, "observables": [{"name": "n", "type_id": 1}]}
            | ({"device": {"hostname": "h", "type_id": 0}} if t == times[0] else {})
            for t in times
        ],
        schema=schema,
    )
    # WHEN encoded
    data = encode_parquet(table)
    # THEN it reads back sorted, with the same schema, zstd-compressed
    parquet = pq.ParquetFile(io.BytesIO(data))
    back = parquet.read()
    assert back.column("time").to_pylist() == sorted(times)
    assert [u["name"] for u in back.column("user").to_pylist()] == [f"u{t}" for t in sorted(times)]
    assert back.schema.equals(schema, check_metadata=False)
    # AND columns that hold a value, sit in a list, or in an object present on some rows only
    # (device) are zstd-compressed; the ones that are one run of nulls (top-level, or in an object
    # present on every row) are written uncompressed
    meta = parquet.metadata
    codecs = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).compression
              for i in range(meta.num_columns)}  # fmt: skip
    uneven = {path for path in codecs if path.startswith(("observables.list.element.", "device."))}
    assert {path for path, codec in codecs.items() if codec == "ZSTD"} == {"class_uid", "time", "user.name"} | uneven
    assert codecs["message"] == codecs["user.uid"] == "UNCOMPRESSED"
    assert codecs["device.ip"] == "ZSTD"
    assert back.schema.metadata[b"ocsf.class_uid"] == b"3002"
    assert back.schema.metadata[b"ocsf.version"] == b"1.1.0"
    # AND the types come from Parquet's own schema: no serialized Arrow schema in the footer
    assert b"ARROW:schema" not in (meta.metadata or {})


@pytest.mark.parametrize("version", ["1.1.0", "1.8.0"])
def test_leaf_columns_name_every_parquet_column_of_every_class_in_order(version: str) -> None:
    # GIVEN an empty object of every class schema of a version, as pyarrow writes it
    schema = load_schema(version)
    for index, class_uid in enumerate(schema.class_uids()):
        arrow_schema = schema.arrow_schema(class_uid)
        table = arrow_schema.empty_table()
        sink = io.BytesIO()
        pq.write_table(table, sink, store_schema=False)
        data = sink.getvalue()
        written = pq.ParquetFile(io.BytesIO(data)).schema
        columns = [written.column(i) for i in range(len(written))]
        # WHEN the splice reads the leaves from its footer, and leaf_columns lists them
        made = splice.template(arrow_schema, lambda data=data: data)  # type: ignore[misc]
        # THEN both give the Parquet file's column paths in order, with their levels
        assert [".".join(p.decode() for p in leaf.path) for leaf in made.leaves] == [c.path for c in columns]
        assert [(leaf.max_definition, leaf.max_repetition) for leaf in made.leaves] == [
            (c.max_definition_level, c.max_repetition_level) for c in columns
        ], class_uid
        assert list(leaf_columns(table)) == [c.path for c in columns], class_uid
        # AND the footer reads and writes back unchanged through the splice's Thrift codec
        if index % 8:
            continue  # a sample: the big footers take a while in Python
        length = int.from_bytes(data[-8:-4], "little")
        footer, end = thrift.read_struct(data[-8 - length : -8])
        assert end == length
        assert thrift.write_struct(footer) == data[-8 - length : -8], class_uid


def test_uuid7s_of_one_process_strictly_increase_within_a_millisecond() -> None:
    ids = [uuid7() for _ in range(20_000)]  # many share a millisecond
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len({i.int >> 80 for i in ids}) < len(ids)  # the test did cover shared milliseconds
