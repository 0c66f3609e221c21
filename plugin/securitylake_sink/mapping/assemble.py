"""Building a class's columns directly from the columns a rule produced, keyed by OCSF path.

``assemble`` builds a batch pruned to the assigned paths (and the structs holding them), in the
class schema's order: the absent columns are null on every row, and ``columnar.widen_batch`` adds
them back when an object is written. ``struct_of`` builds a struct at its full type."""

from __future__ import annotations

__all__ = ["AttrPath", "assemble", "constant", "prefixes_of", "struct_of", "type_at"]

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import nulls

AttrPath = tuple[str, ...]


def type_at(t: pa.DataType | pa.Schema, path: AttrPath) -> pa.DataType | None:
    """The type at ``path`` inside a schema or struct (not through lists); None when absent."""
    current: pa.DataType | pa.Schema = t
    for part in path:
        if not isinstance(current, pa.Schema) and not pa.types.is_struct(current):
            return None
        index = current.get_field_index(part)
        if index < 0:
            return None
        current = current.field(index).type
    return None if isinstance(current, pa.Schema) else current


_CONSTANTS: dict[tuple[pa.DataType, str], pa.Array] = {}


def constant(value: Any, t: pa.DataType, n: int) -> pa.Array:
    """``n`` copies of ``value`` as ``t``: a slice of a cached array (no copy per batch)."""
    key = (t, repr(value))
    cached = _CONSTANTS.get(key)
    if cached is None or len(cached) < n:
        size = max(n, 2 * len(cached) if cached is not None else 1024)
        cached = _CONSTANTS[key] = pa.repeat(pa.scalar(value, t), size)
    return cached.slice(0, n)


def prefixes_of(paths: Iterable[AttrPath]) -> frozenset[AttrPath]:
    """Every proper prefix of every path: the structs that have at least one assigned field."""
    return frozenset(path[:i] for path in paths for i in range(1, len(path)))


def _column(
    t: pa.DataType, path: AttrPath, values: Mapping[AttrPath, pa.Array], inner: frozenset[AttrPath], n: int
) -> pa.Array:
    given = values.get(path)
    if given is not None:
        return given
    if path in inner and pa.types.is_struct(t):
        return struct_of(t, values, n, path, inner)
    return nulls(t, n)


def struct_of(
    t: pa.StructType,
    values: Mapping[AttrPath, pa.Array],
    n: int,
    base: AttrPath = (),
    inner: frozenset[AttrPath] | None = None,
) -> pa.StructArray:
    """The struct at ``base``, null on rows where every field is null."""
    inner = prefixes_of(values) if inner is None else inner
    fields = list(t)
    children = [_column(f.type, (*base, f.name), values, inner, n) for f in fields]
    return pa.StructArray.from_arrays(children, fields=fields, mask=_empty(children, n))


def _given(
    t: pa.DataType, path: AttrPath, values: Mapping[AttrPath, pa.Array], inner: frozenset[AttrPath], n: int
) -> pa.Array | None:
    given = values.get(path)
    if given is not None:
        return given if given.type == t else given.cast(t)
    if path not in inner or not pa.types.is_struct(t):
        return None
    children, fields = [], []
    for f in t:
        child = _given(f.type, (*path, f.name), values, inner, n)
        if child is not None:
            children.append(child)
            fields.append(pa.field(f.name, child.type, nullable=f.nullable))
    if not children:
        return None
    return pa.StructArray.from_arrays(children, fields=fields, mask=_empty(children, n))


def _empty(children: list[pa.Array], n: int) -> pa.Array:
    """Rows where every one of ``children`` is null: there the struct is null."""
    empty = None
    for child in children:
        if child.null_count == n:
            continue
        empty = pc.is_null(child) if empty is None else pc.and_(empty, pc.is_null(child))
    return constant(True, pa.bool_(), n) if empty is None else empty


def assemble(schema: pa.Schema, values: Mapping[AttrPath, pa.Array], n: int) -> pa.RecordBatch:
    """A record batch of the columns in ``values`` (keyed by attribute path, each of its type in
    ``schema``), in the pruning of ``schema`` to those paths; paths not in ``schema`` are ignored."""
    inner = prefixes_of(values)
    columns, fields = [], []
    for f in schema:
        column = _given(f.type, (f.name,), values, inner, n)
        if column is not None:
            columns.append(column)
            fields.append(pa.field(f.name, column.type, nullable=f.nullable))
    if not columns:  # keep the row count
        return pa.RecordBatch.from_arrays([nulls(pa.null(), n)], names=[schema.field(0).name])
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))
