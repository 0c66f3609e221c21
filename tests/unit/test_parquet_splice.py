"""Parquet objects are written by pyarrow for the columns that vary and spliced together with the
constant all-null chunks by hand; the result must be the very bytes pyarrow writes for the whole
table, on real mapped tables of every class the built-in rules reach."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securitylake_sink.columnar import widen_batch
from securitylake_sink.encode import parquet, splice, thrift
from securitylake_sink.encode.parquet import encode_parquet
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.route import builtin_rule_names
from securitylake_sink.ocsf.schema import load_schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mapping"
T = 1_732_795_200_000
RULES = [r for r in builtin_rule_names() if r != "base_event"]


def _mapped_tables(version: str = "1.1.0") -> dict[int, pa.Table]:
    """Every fixture record mapped by its rule, as one full-width table per class."""
    schema = load_schema(version)
    parts: dict[int, list[pa.RecordBatch]] = defaultdict(list)
    for rule in RULES:
        lines = (FIXTURES / f"{rule}.input.ndjson").read_text(encoding="utf-8").splitlines()
        records: list[dict[str, Any]] = [json.loads(line) for line in lines if line.strip()]
        outcome = Mapper(schema, [("*", rule)]).map_records(f"test.{rule}", records, [T] * len(records))
        for _, rows in outcome.mapped:
            parts[rows.class_uid].append(rows.batch)
    out = {}
    for class_uid, batches in parts.items():
        full = schema.arrow_schema(class_uid)
        table = pa.concat_tables([widen_batch(b, full) for b in batches])
        out[class_uid] = table.replace_schema_metadata(full.metadata)
    return out


TABLES = _mapped_tables()
TABLES_1_8 = _mapped_tables("1.8.0")


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the objects the splice put together (it falls back to pyarrow when it cannot)."""
    calls: list[int] = []
    real = splice.splice

    def spy(written: bytes, made: splice.Template, leaves: Any) -> bytes:
        out = real(written, made, leaves)
        calls.append(len(out))
        return out

    monkeypatch.setattr(splice, "splice", spy)
    return calls


def test_thrift_reads_and_writes_a_footer_with_row_groups_unchanged() -> None:
    data = encode_parquet(TABLES[6003], splice_nulls=False)
    length = int.from_bytes(data[-8:-4], "little")
    raw = data[-8 - length : -8]
    meta, end = thrift.read_struct(raw)
    assert (end, len(meta[4][1][1])) == (length, 1)
    assert thrift.write_struct(meta) == raw


@pytest.mark.parametrize("class_uid", sorted(TABLES))
def test_spliced_object_is_pyarrows_byte_for_byte(class_uid: int, spliced: list[int]) -> None:
    # GIVEN the mapped fixture records of a class, whole and cut down to a few rows
    table = TABLES[class_uid]
    for part in (table, table.slice(0, 1), table.slice(1, 7), table.slice(2, 9)):
        if not part.num_rows:
            continue
        # WHEN encoded with the constant columns spliced in, and by pyarrow alone
        data = encode_parquet(part)
        # THEN the bytes are the same, and the splice did the work
        assert data == encode_parquet(part, splice_nulls=False)
        assert spliced and spliced[-1] == len(data)
        back = pq.read_table(io.BytesIO(data))
        assert back.num_rows == part.num_rows
        assert back.schema.equals(part.schema, check_metadata=False)


@pytest.mark.parametrize("class_uid", sorted(TABLES_1_8))
def test_spliced_object_is_pyarrows_byte_for_byte_in_ocsf_1_8(class_uid: int, spliced: list[int]) -> None:
    table = TABLES_1_8[class_uid]
    assert encode_parquet(table) == encode_parquet(table, splice_nulls=False)
    assert spliced


def test_spliced_object_of_many_rows_spans_pages_and_row_groups(
    spliced: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 50,000 rows of network activity: more than two data pages (20,000 rows each) per
    # column, and more than one row group (row groups bounded to 8 MB of Arrow data here)
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 8 * 1024 * 1024)
    table = TABLES[4001]
    big = table.take(pa.array([i % table.num_rows for i in range(50_000)]))
    big = big.set_column(big.schema.get_field_index("time"), "time", pa.array(range(T, T + 50_000), pa.int64()))
    # WHEN encoded both ways
    data = encode_parquet(big)
    # THEN the bytes are the same, and DuckDB reads the rows and their values back
    assert data == encode_parquet(big, splice_nulls=False)
    assert spliced
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert meta.num_row_groups > 1
    path = tmp_path / "object.parquet"
    path.write_bytes(data)
    query = duckdb.sql(f"SELECT count(*), count(src_endpoint.ip), min(time), max(time) FROM '{path}'")
    assert query is not None
    ips = big.column("src_endpoint").combine_chunks().field("ip").is_valid().true_count
    assert query.fetchall() == [(50_000, ips, T, T + 49_999)]


def test_splice_refuses_a_footer_it_does_not_know() -> None:
    # GIVEN a file pyarrow wrote with a page index (offsets this module does not move)
    table = TABLES[3002]
    sink = io.BytesIO()
    pq.write_table(table, sink, write_page_index=True, store_schema=False)
    made = splice.template(table.schema, lambda: encode_parquet(table.schema.empty_table()))
    leaves = [splice.Planned(None, True, None)] * len(made.leaves)
    # WHEN spliced; THEN it is refused, not written wrong
    with pytest.raises(splice.Unsupported, match="page index"):
        splice.splice(sink.getvalue(), made, leaves)
    with pytest.raises(splice.Unsupported, match="not a Parquet file"):
        splice.splice(b"PAR1 not parquet", made, leaves)
    # AND a footer that is not Thrift, or one that lacks what a footer holds, is refused too
    for footer in (b"\x19\xff\xff", b"\x15\x04\x00"):
        with pytest.raises(splice.Unsupported, match="unexpected footer"):
            splice.splice(b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1", made, leaves)


def test_encode_falls_back_to_pyarrow_when_the_splice_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a splice that refuses every file (as it does a footer it does not know)
    def refuse(written: bytes, made: splice.Template, leaves: Any) -> bytes:
        raise splice.Unsupported("test")

    monkeypatch.setattr(splice, "splice", refuse)
    table = TABLES[3002]
    # WHEN an object is encoded; THEN pyarrow writes it all: the same bytes, read back whole
    data = encode_parquet(table)
    assert data == encode_parquet(table, splice_nulls=False)
    assert pq.read_table(io.BytesIO(data)).num_rows == table.num_rows
    assert [r.reason for r in caplog.records if r.name == "securitylake_sink.encode"] == ["test"]  # type: ignore[attr-defined]


def test_thrift_round_trips_every_kind_of_value_and_refuses_cut_bytes() -> None:
    s: thrift.Struct = {
        1: (thrift.BOOL, True),
        2: (thrift.BOOL, False),
        3: (thrift.I32, -5),
        40: (thrift.I64, 2**62),  # a jump of more than 15 field ids
        41: (thrift.BINARY, b"\x00\xff"),
        42: (thrift.LIST, (thrift.I64, list(range(-20, 20)))),  # 15 or more items
        43: (thrift.LIST, (thrift.BOOL, [True, False, True])),
        44: (7, 1.5),  # double
        45: (3, -3),  # byte
        46: (thrift.STRUCT, {1: (thrift.LIST, (thrift.STRUCT, [{}, {2: (thrift.I32, 1)}]))}),
    }
    raw = thrift.write_struct(s)
    assert thrift.read_struct(raw) == (s, len(raw))
    for cut in range(len(raw)):
        with pytest.raises(thrift.ThriftError):
            thrift.read_struct(raw[:cut])


def test_an_object_encoded_through_a_scratch_file_is_the_same_and_lets_its_table_go_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a table that only the reader holds (as delivery reads a batch file)
    base = TABLES[3002]
    reads: list[int] = []

    def read() -> pa.Table:
        table = pa.concat_tables([base] * 500).combine_chunks()  # fresh buffers, ~500 x the rows
        reads.append(pa.total_allocated_bytes())
        return table

    at_splice: list[int] = []
    real = splice.splice

    def watch(written: bytes, made: splice.Template, leaves: Any) -> bytes:
        at_splice.append(pa.total_allocated_bytes())
        return real(written, made, leaves)

    monkeypatch.setattr(splice, "splice", watch)
    before = pa.total_allocated_bytes()
    # WHEN it is encoded through a scratch directory
    data, rows = parquet.encode_object(read, tmp_path)
    # THEN the bytes are encode_parquet's, read once, and no scratch file is left
    assert (rows, len(reads)) == (base.num_rows * 500, 1)
    assert data == encode_parquet(read())
    assert list(tmp_path.iterdir()) == []
    # AND the table was let go before its bytes were spliced
    table_bytes = reads[0] - before
    assert table_bytes > 5_000_000
    assert at_splice[0] - before < table_bytes // 10


def test_an_object_the_splice_refuses_is_read_again_and_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(written: bytes, made: splice.Template, leaves: Any) -> bytes:
        raise splice.Unsupported("test")

    monkeypatch.setattr(splice, "splice", refuse)
    reads: list[None] = []

    def read() -> pa.Table:
        reads.append(None)
        return TABLES[3002]

    data, rows = parquet.encode_object(read, tmp_path)
    assert (data, rows, len(reads)) == (encode_parquet(TABLES[3002], splice_nulls=False), TABLES[3002].num_rows, 2)
    assert list(tmp_path.iterdir()) == []
