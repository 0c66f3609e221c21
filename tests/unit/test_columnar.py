"""Pruning a class-wide batch to the columns that hold values and widening it back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from securitylake_sink.columnar import (
    is_pruning,
    kept_where,
    null_of,
    nulled_where,
    nulls,
    prune_batch,
    pruned_type,
    row_numbers,
    scalar_of,
    union_type,
    widen_batch,
)
from securitylake_sink.ocsf.conform import conform_event
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.spool.batchfile import FRAME_POS, ROWS, BatchFile, BatchHeader
from securitylake_sink.spool.wal import WalPosition, encode_record

SCHEMA = load_schema("1.1.0")
HTTP = SCHEMA.arrow_schema(4002)


def _events() -> list[dict[str, object]]:
    return [
        {
            "time": 1_700_000_000_000 + i,
            "class_uid": 4002,
            "activity_id": 1,
            "http_request": {"http_method": "GET", "url": {"path": f"/p{i}"}} if i % 3 else None,
            "http_response": {"code": 200 + i},
            # lists of objects, an empty object and a null inside a list
            "observables": [{"name": "a", "type_id": 1}, None] if i == 1 else None,
            "metadata": {} if i == 2 else {"version": "1.1.0", "product": {"name": "x"}},
        }
        for i in range(5)
    ]


def _full_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([conform_event(e, HTTP) for e in _events()], schema=HTTP)


def test_prune_then_widen_gives_back_the_same_rows() -> None:
    batch = _full_batch()
    pruned = prune_batch(batch)
    assert len(pruned.schema) < 10 < len(HTTP)
    assert "actor" not in pruned.schema.names
    request = pruned.schema.field("http_request").type
    assert {f.name for f in request} == {"http_method", "url"}
    assert widen_batch(pruned, HTTP).to_pylist() == pa.Table.from_batches([batch]).to_pylist()


def test_prune_keeps_a_slice_exact() -> None:
    batch = _full_batch().slice(1, 3)
    assert widen_batch(prune_batch(batch), HTTP).to_pylist() == batch.to_pylist()


def test_pruned_type_holds_exactly_the_fields_rows_hold() -> None:
    rows = [conform_event(e, HTTP) for e in _events()]
    t = pruned_type(pa.struct(list(HTTP)), rows)
    array = pa.array(rows, type=t)
    full = widen_batch(pa.RecordBatch.from_struct_array(array), HTTP)
    assert full.to_pylist() == pa.Table.from_batches([_full_batch()]).to_pylist()


def test_union_of_prunings_takes_every_field_of_each() -> None:
    full = pa.struct(list(HTTP))
    one = pa.struct(list(prune_batch(_full_batch().slice(0, 1)).schema))
    two = pa.struct(list(prune_batch(_full_batch().slice(1, 1)).schema))
    union = union_type(full, [one, two])
    assert isinstance(union, pa.StructType)
    names = {f.name for f in union}
    assert names == {f.name for f in one} | {f.name for f in two}
    assert [f.name for f in union] == [f.name for f in full if f.name in names]  # class order kept


def test_is_pruning_accepts_left_out_fields_only() -> None:
    pruned = prune_batch(pa.RecordBatch.from_pylist([conform_event(e, HTTP) for e in _events()], schema=HTTP)).schema
    assert is_pruning(pruned, HTTP)
    assert is_pruning(HTTP, HTTP)
    # a field in another order, of another type, or not in the class is not a pruning
    assert not is_pruning(pa.schema(list(reversed(list(pruned)))), HTTP)
    assert not is_pruning(pruned.set(pruned.get_field_index("time"), pa.field("time", pa.string())), HTTP)
    assert not is_pruning(pruned.append(pa.field("zzz", pa.string())), HTTP)


@pytest.mark.parametrize("n", [0, 1, 5, 1024, 5000, 3])
def test_row_numbers_count_from_zero(n: int) -> None:
    rows = row_numbers(n)
    assert rows.type == pa.int64() and rows.to_pylist() == list(range(n))


def test_nulls_are_slices_of_one_cached_array() -> None:
    t = HTTP.field("actor").type
    first, second = nulls(t, 10), nulls(t, 5)
    assert first.null_count == 10 and second.null_count == 5
    assert first.buffers()[0] is None or first.buffers()[0].address == second.buffers()[0].address


def _buffers(array: pa.Array) -> set[int]:
    return {b.address for b in array.buffers() if b is not None and b.size}


def test_nulls_of_every_type_share_one_zeroed_buffer() -> None:
    # GIVEN every column type of a wide class (structs, lists, maps, strings, numbers, times)
    schema = SCHEMA.arrow_schema(3002)
    before = pa.total_allocated_bytes()

    # WHEN all-null columns of 100,000 rows are made for each
    columns = [nulls(f.type, 100_000) for f in schema]

    # THEN each is what pa.nulls makes
    for f, column in zip(schema, columns, strict=True):
        column.validate(full=True)
        assert column.type == f.type and column.null_count == len(column) == 100_000
        assert column.equals(pa.nulls(100_000, f.type))
    # AND every buffer of every one of them is the same buffer, so they cost one buffer's bytes
    # between them (pa.nulls allocates about 20 MB for these)
    assert len(set().union(*(_buffers(c) for c in columns))) == 1
    assert pa.total_allocated_bytes() - before < 4 * 1024 * 1024
    # AND a short one is written to IPC (as batch files are) no bigger than pa.nulls's: no buffer of
    # it, nor of a list's empty values, carries the shared buffer's 100,000 rows of zeros
    for f in schema:
        assert _ipc_size(nulls(f.type, 10)) <= _ipc_size(pa.nulls(10, f.type)), f.name


def _ipc_size(array: pa.Array) -> int:
    batch = pa.RecordBatch.from_arrays([array], names=["a"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return int(sink.getvalue().size)


def _header() -> BatchHeader:
    return BatchHeader("b1", 4002, "1.1.0", "ext/http/", 472_222, "key.parquet", 0)


def test_batch_file_round_trips_pruned_frames_sorted_by_time(tmp_path: Path) -> None:
    batch = _full_batch()
    file = BatchFile.create(tmp_path, _header())
    file.append(batch.slice(3, 2), WalPosition(1, 10))
    file.append(batch.slice(0, 3), WalPosition(1, 20))
    file.close()
    assert file.bytes < batch.nbytes / 10  # what is accounted is the pruned size
    table = BatchFile.open(tmp_path / "b1.batch").read_table(HTTP)
    assert table.schema == HTTP
    assert table.to_pylist() == pa.Table.from_batches([batch]).to_pylist()


# Counts what it allocates; lives as long as the process, as buffers it allocated may be cached.
_COUNTING_POOL = pa.proxy_memory_pool(pa.system_memory_pool())


def test_reading_an_unsorted_batch_file_holds_the_table_and_about_one_column_more(tmp_path: Path) -> None:
    # GIVEN a batch file of 4 frames whose rows are in reverse time order, with 8 string columns of
    # about 1 MB each beside `time`
    rows = 40_000
    schema = pa.schema([("time", pa.timestamp("ms", tz="UTC"))] + [(f"s{i}", pa.string()) for i in range(8)])
    table = pa.table(
        [pa.array(range(rows, 0, -1), pa.int64()).cast(schema.field(0).type)]
        + [pa.array([f"{i}-{r:020d}" for r in range(rows)]) for i in range(8)],
        schema=schema,
    )
    file = BatchFile.create(tmp_path, _header())
    for batch in table.to_batches(max_chunksize=rows // 4):
        file.append(batch, WalPosition(1, 10))
    file.close()

    # WHEN it is read back, every Arrow allocation counted
    pool = _COUNTING_POOL
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        read = BatchFile.open(tmp_path / "b1.batch").read_table(schema)
    finally:
        pa.set_memory_pool(previous)

    # THEN the rows come sorted, and the peak is the table plus about one column, not two tables
    assert read.column("time").to_pylist() == sorted(table.column("time").to_pylist())
    assert read.column("s0").to_pylist() == table.column("s0").to_pylist()[::-1]
    assert pool.max_memory() < 1.5 * read.nbytes


# The process that reads: the batch file is written in frames of 2,000 rows (buffers under malloc's
# mmap threshold, as the pipeline's steps make them), then read back sorted; it prints its peak RSS
# over the read, against the sorted table's size.
_READ_PEAK = """
import gc
import sys
from pathlib import Path
import pyarrow as pa
from securitylake_sink.memory import give_back, tune_malloc
from securitylake_sink.spool.batchfile import BatchFile, BatchHeader
from securitylake_sink.spool.wal import WalPosition
tune_malloc()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key): return int(line.split()[1]) * 1024
rows = 200_000
schema = pa.schema([("time", pa.timestamp("ms", tz="UTC"))] + [(f"s{i}", pa.string()) for i in range(8)])
tmp = Path(sys.argv[1])
file = BatchFile.create(tmp, BatchHeader("b1", 4002, "1.1.0", "ext/http/", 472_222, "key.parquet", 0))
for start in range(0, rows, 2000):
    part = pa.table([pa.array(range(rows - start, rows - start - 2000, -1), pa.int64()).cast(schema.field(0).type)]
        + [pa.array([f"{i}-{r:020d}" for r in range(start, start + 2000)]) for i in range(8)], schema=schema)
    file.append(part.to_batches()[0], WalPosition(1, 10))
file.close()
del part; gc.collect(); give_back()
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
read = BatchFile.open(tmp / "b1.batch").read_table(schema)
print((status("VmHWM") - base) / read.get_total_buffer_size())
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to reset the peak RSS")
def test_reading_an_unsorted_batch_file_hands_back_the_unsorted_columns_pages(tmp_path: Path) -> None:
    # GIVEN a 43 MB batch file of 100 frames in reverse time order, read in a process of its own
    result = subprocess.run([sys.executable, "-c", _READ_PEAK, str(tmp_path)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    # THEN the process's resident peak is the table and a column or two more: the unsorted
    # columns' pages went back as the sort let them go (they stayed resident before: 2.2-2.3x)
    assert float(result.stdout) < 1.6


def test_batch_file_reads_frames_of_the_full_width_form(tmp_path: Path) -> None:
    """Files written before frames were pruned hold one record-batch message in the class schema."""
    batch = _full_batch()
    file = BatchFile.create(tmp_path, _header())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, HTTP) as writer:
        writer.write_batch(batch.slice(2, 3))
    messages = pa.ipc.MessageReader.open_stream(sink.getvalue())
    messages.read_next_message()
    old = ROWS.pack(3, batch.slice(2, 3).nbytes) + messages.read_next_message().serialize().to_pybytes()
    with file.path.open("ab") as f:
        f.write(encode_record(FRAME_POS.pack(1, 5) + old))
    file.append(batch.slice(0, 2), WalPosition(1, 9))
    file.close()
    reopened = BatchFile.open(file.path)
    assert reopened.rows == 5
    assert reopened.read_table(HTTP).to_pylist() == pa.Table.from_batches([batch]).to_pylist()


@pytest.mark.parametrize("class_uid", [3002, 6003, 2004])
def test_an_all_null_but_time_batch_round_trips(class_uid: int) -> None:
    schema = SCHEMA.arrow_schema(class_uid)
    batch = pa.RecordBatch.from_pylist([{"time": 1}, {"time": 2}], schema=schema)
    pruned = prune_batch(batch)
    assert pruned.schema.names == ["time"]
    assert widen_batch(pruned, schema).to_pylist() == batch.to_pylist()


@pytest.mark.parametrize(
    ("value", "t"),
    [(0, pa.int32()), (0, pa.int64()), (1e11, pa.float64()), (None, pa.string()), (False, pa.bool_())],
)
def test_a_typed_scalar_is_made_once_per_value_and_type(value: object, t: pa.DataType) -> None:
    made = scalar_of(value, t)  # type: ignore[arg-type]
    assert made.type == t
    assert made.as_py() == value
    assert scalar_of(value, t) is made  # type: ignore[arg-type]


def test_a_nested_type_s_scalar_is_made_each_time_but_right() -> None:
    t = pa.list_(pa.string())
    assert scalar_of(None, t).type == t
    assert not scalar_of(None, t).is_valid


def test_null_of_fills_dropped_rows_as_a_bare_none_would() -> None:
    for values in (pa.array(["a", None, "c"]), pa.array([1, 2, None], pa.int32()), pa.array([[1], None, [2, 3]])):
        keep = pa.array([True, False, None])
        assert pc.if_else(keep, values, null_of(values)).equals(pc.if_else(keep, values, None))


def test_kept_where_and_nulled_where_null_the_rows_a_mask_leaves_out_or_names() -> None:
    values = pa.array(["a", "b", "c", None])
    mask = pa.array([True, False, None, True])
    assert kept_where(mask, values).to_pylist() == ["a", None, None, None]
    assert nulled_where(mask, values).to_pylist() == [None, "b", None, None]
    assert kept_where(mask, values).type == nulled_where(mask, values).type == pa.string()
