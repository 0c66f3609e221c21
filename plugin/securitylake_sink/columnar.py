"""Arrow helpers for the wide class schemas (hundreds of mostly-null leaf columns): cached
all-null arrays, pruning a batch to the columns that hold values, and widening it back.

A batch of a class schema is built pruned (the mapper assembles only the columns a rule
assigned), kept and moved around pruned (validation, batch files, sorting) and widened to the
full schema only when an object is written, with all-null columns as slices of one
cached array each, which share their buffers.
"""

from __future__ import annotations

__all__ = [
    "FALSE",
    "is_ascending",
    "is_pruning",
    "kept_where",
    "null_of",
    "nulled_where",
    "nulls",
    "prune",
    "prune_batch",
    "pruned_type",
    "row_numbers",
    "scalar_of",
    "union_type",
    "widen",
    "widen_batch",
]

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Hashing a wide struct type walks all of it (tens of µs, holding the GIL), so the cache is keyed
# by a cheap summary of the type and the few candidates under a key are compared with ==.
_NULLS: dict[tuple[object, ...], list[tuple[pa.DataType, pa.Array]]] = {}
# Every cached all-null array is built on this one zeroed buffer (its validity, offsets and values
# alike). ``pa.nulls`` gives each array a zeroed buffer of its own: the cache held one per type,
# over 30 MB once objects of 100,000 rows had been written, for buffers nothing reads.
_ZEROS: list[pa.Buffer] = []
_BYTES_PER_ROW = 8  # the widest buffer of an all-null array of the schemas' types: int64 values
_FIXED_WIDTH = (pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_temporal)


def _summary(t: pa.DataType) -> tuple[object, ...]:
    if pa.types.is_struct(t):
        n = t.num_fields
        return ("struct", n, t.field(0).name if n else "", t.field(n - 1).name if n else "")
    if pa.types.is_list(t):
        return ("list", *_summary(t.value_type))
    if pa.types.is_map(t):
        return ("map", str(t.key_type), str(t.item_type))
    return (str(t),)


def _zeros(rows: int) -> pa.Buffer:
    """The shared zeroed buffer, large enough for ``rows`` rows; a new one (and an empty cache,
    whose arrays hold the old one) when it is not."""
    if not _ZEROS or _ZEROS[0].size < (rows + 1) * _BYTES_PER_ROW:
        _NULLS.clear()
        rows = max(rows, 2 * _ZEROS[0].size // _BYTES_PER_ROW if _ZEROS else 0)
        _ZEROS[:] = [pa.nulls(rows + 1, pa.int64()).buffers()[1]]  # Arrow's allocator: aligned, zero-filled
    return _ZEROS[0]


def _null_array(t: pa.DataType, n: int, zeros: pa.Buffer) -> pa.Array:
    """An all-null array of ``t`` whose buffers are slices of ``zeros``, each of the size it needs
    (an IPC writer writes a list's empty values whole); ``pa.nulls`` for other types."""
    bitmap = zeros.slice(0, (n + 7) // 8)
    offsets = zeros.slice(0, (n + 1) * 4)  # int32 offsets, all 0
    if pa.types.is_struct(t):
        children = [_null_array(f.type, n, zeros) for f in t]
        return pa.Array.from_buffers(t, n, [bitmap], null_count=n, children=children)
    if pa.types.is_list(t):
        values = _null_array(t.value_type, 0, zeros)
        return pa.Array.from_buffers(t, n, [bitmap, offsets], null_count=n, children=[values])
    if pa.types.is_map(t):
        keys, items = (_null_array(f.type, 0, zeros) for f in (t.key_field, t.item_field))
        entries = pa.Array.from_buffers(pa.struct([t.key_field, t.item_field]), 0, [None], children=[keys, items])
        return pa.Array.from_buffers(t, n, [bitmap, offsets], null_count=n, children=[entries])
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return pa.Array.from_buffers(t, n, [bitmap, offsets, zeros.slice(0, 0)], null_count=n)
    if any(test(t) for test in _FIXED_WIDTH) and t.bit_width <= _BYTES_PER_ROW * 8:
        return pa.Array.from_buffers(t, n, [bitmap, zeros.slice(0, (n * t.bit_width + 7) // 8)], null_count=n)
    return pa.nulls(n, t)


def nulls(t: pa.DataType, n: int) -> pa.Array:
    """An all-null array of ``t``: a slice of a cached one (big nested types are slow to make),
    whose buffers are all one shared zeroed buffer."""
    key = _summary(t)
    cached = [array for known, array in _NULLS.get(key, ()) if known == t]
    if cached and len(cached[0]) >= n:
        return cached[0].slice(0, n)
    rows = max(n, 1024, 2 * len(cached[0]) if cached else 0)
    zeros = _zeros(rows)  # may empty the cache
    array = _null_array(t, rows, zeros)
    _NULLS[key] = [(known, a) for known, a in _NULLS.get(key, ()) if known != t] + [(t, array)]
    return array.slice(0, n)


# Kernels convert a bare Python value (None, False, 0) on every call, 3-15 µs each (more than the
# kernel itself on a small batch); a typed scalar made once costs nothing more.
FALSE = pa.scalar(False)
_SCALARS: dict[tuple[object, pa.DataType], pa.Scalar] = {}


def scalar_of(value: bool | int | float | str | None, t: pa.DataType) -> pa.Scalar:
    """``value`` as a scalar of type ``t``, made once per (value, primitive type)."""
    if pa.types.is_nested(t):  # hashing a nested type walks all of it
        return pa.scalar(value, t)
    key = (value, t)
    found = _SCALARS.get(key)
    if found is None:
        found = _SCALARS[key] = pa.scalar(value, t)
    return found


def null_of(values: pa.Array | pa.ChunkedArray) -> pa.Scalar:
    """A null of ``values``' type: what ``if_else`` puts where a row is dropped."""
    return scalar_of(None, values.type)


def kept_where(mask: pa.Array, values: pa.Array) -> pa.Array:
    """``values`` where ``mask`` is true; null where it is false or null."""
    return pc.if_else(mask, values, null_of(values))


def nulled_where(mask: pa.Array, values: pa.Array) -> pa.Array:
    """``values`` with null where ``mask`` is true; where ``mask`` is null, null too (as ``if_else``)."""
    return pc.if_else(mask, null_of(values), values)


_ROWS: list[pa.Array] = [pa.array([], pa.int64())]


def row_numbers(n: int) -> pa.Array:
    """0, 1, ..., n-1 as int64: a slice of one cached array (building it from a Python range
    takes 80 ns a row)."""
    cached = _ROWS[0]
    if len(cached) < n:
        size = max(n, 2 * len(cached), 1024)
        cached = _ROWS[0] = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), size)), 1)
    return cached.slice(0, n)


def pruned_type(t: pa.StructType, rows: Sequence[Mapping[str, Any]]) -> pa.StructType:
    """``t`` cut down to the fields some row of ``rows`` (dicts in ``t``'s shape) holds.

    Converting rows with the pruned type and then widening is far cheaper than converting with
    a class's full type, whose absent leaves would each take a null per row.
    """
    keys: set[str] = set().union(*rows)
    fields = []
    for f in t:
        if f.name not in keys:
            continue
        ft = f.type
        if pa.types.is_struct(ft) or pa.types.is_list(ft):
            name = f.name
            values = [v for row in rows if (v := row.get(name)) is not None]
            if not values:
                continue
            if pa.types.is_struct(ft):
                ft = pruned_type(ft, [v for v in values if isinstance(v, Mapping)])
            elif pa.types.is_struct(ft.value_type):
                items = [item for v in values if isinstance(v, list) for item in v if isinstance(item, Mapping)]
                ft = pa.list_(pa.field(ft.value_field.name, pruned_type(ft.value_type, items)))
        fields.append(pa.field(f.name, ft, nullable=f.nullable))
    return pa.struct(fields)


def prune(array: pa.Array) -> pa.Array | None:
    """``array`` without the struct fields (at any depth) that are null on every row; None when
    the whole array is null."""
    n = len(array)
    if array.null_count == n:
        return None
    t = array.type
    if pa.types.is_struct(t):
        assert isinstance(array, pa.StructArray)
        # Children may hold values under null parents (builders fill them in): flatten merges
        # the parent's validity in, so only what is visible counts.
        given = array.flatten() if array.null_count else [array.field(i) for i in range(t.num_fields)]
        children, fields = [], []
        for i in range(t.num_fields):
            child = prune(given[i])
            if child is not None:
                children.append(child)
                fields.append(pa.field(t.field(i).name, child.type, nullable=t.field(i).nullable))
        mask = pc.is_null(array) if array.null_count else None
        if not children:  # present but empty objects: keep one field so the rows stay non-null
            return pa.StructArray.from_arrays([nulls(t.field(0).type, n)], fields=[t.field(0)], mask=mask)
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        assert isinstance(array, pa.ListArray)
        offsets, items = _list_parts(array)
        values = prune(items)
        if values is None:
            values = items
        mask = pc.is_null(array) if array.null_count else None
        return pa.ListArray.from_arrays(offsets, values, mask=mask)
    return array


def _list_parts(array: pa.ListArray) -> tuple[pa.Array, pa.Array]:
    """The offsets (from 0) and the values of just the rows of ``array``, a slice or not."""
    offsets = array.offsets
    start = offsets[0].as_py() if len(offsets) else 0
    if array.offset == 0 and start == 0:
        return offsets, array.values
    end = offsets[-1].as_py()
    return pc.subtract(offsets, pa.scalar(start, offsets.type)), array.values.slice(start, end - start)


def prune_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with only its columns (and struct fields, at any depth) that hold a value."""
    columns, fields = [], []
    for f, column in zip(batch.schema, batch.columns, strict=True):
        pruned = prune(column)
        if pruned is not None:
            columns.append(pruned)
            fields.append(pa.field(f.name, pruned.type, nullable=f.nullable))
    if not columns:  # keep the row count
        return pa.RecordBatch.from_arrays([nulls(pa.null(), batch.num_rows)], names=[batch.schema.field(0).name])
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


def widen(array: pa.Array, t: pa.DataType) -> pa.Array:
    """``array``, whose type is a pruning of ``t``, as ``t``: the fields it lacks all null."""
    if array.type == t:
        return array
    if pa.types.is_null(array.type):
        return nulls(t, len(array))
    mask = pc.is_null(array) if array.null_count else None
    if pa.types.is_struct(t):
        assert isinstance(array, pa.StructArray)
        given = {array.type.field(i).name: i for i in range(array.type.num_fields)}
        n = len(array)
        children = [widen(array.field(given[f.name]), f.type) if f.name in given else nulls(f.type, n) for f in t]
        return pa.StructArray.from_arrays(children, fields=list(t), mask=mask)
    if pa.types.is_list(t):
        assert isinstance(array, pa.ListArray)
        offsets, items = _list_parts(array)
        return pa.ListArray.from_arrays(offsets, widen(items, t.value_type), type=t, mask=mask)
    return array.cast(t)


def widen_batch(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """A pruned batch or table as a table in ``schema``, absent columns all null; no copy of the
    columns it holds (chunks are widened one by one)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    n = table.num_rows
    names = set(table.schema.names)
    columns = [
        pa.chunked_array([widen(chunk, f.type) for chunk in table.column(f.name).chunks], type=f.type)
        if f.name in names
        else nulls(f.type, n)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def union_type(full: pa.DataType, types: Iterable[pa.DataType]) -> pa.DataType:
    """The pruning of ``full`` that holds every field any of ``types`` (prunings of it) holds."""
    types = [t for t in types if not pa.types.is_null(t)]
    if not types:
        return pa.null()
    if pa.types.is_struct(full):
        fields = []
        for f in full:
            present = [t.field(t.get_field_index(f.name)).type for t in types if t.get_field_index(f.name) >= 0]
            if present:
                fields.append(pa.field(f.name, union_type(f.type, present), nullable=f.nullable))
        return pa.struct(fields)
    if pa.types.is_list(full) and pa.types.is_struct(full.value_type):
        return pa.list_(union_type(full.value_type, [t.value_type for t in types]))
    return full


def is_pruning(t: pa.DataType | pa.Schema, full: pa.DataType | pa.Schema) -> bool:
    """Whether ``t`` is ``full`` with some struct fields (at any depth) left out: the fields it
    keeps are in ``full``'s order, with ``full``'s leaf types."""
    as_struct = [pa.struct(list(x)) if isinstance(x, pa.Schema) else x for x in (t, full)]
    return bool(union_type(as_struct[1], [as_struct[0]]) == as_struct[0])


def is_ascending(values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether ``values`` (e.g. ``time``) is ascending already, with no nulls: live traffic
    usually is, and then the copy that sorting makes is skipped."""
    flat = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(flat) < 2:
        return True
    if flat.null_count:
        return False
    return bool(pc.all(pc.greater_equal(flat[1:], flat[:-1])).as_py())
