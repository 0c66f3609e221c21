"""Building a class's struct columns directly from the columns a rule produced, keyed by OCSF
path: assigned paths take their arrays, everything else is null of its fixed type."""

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
    empty = None
    for child in children:
        if child.null_count == n:
            continue
        empty = pc.is_null(child) if empty is None else pc.and_(empty, pc.is_null(child))
    mask = pa.repeat(pa.scalar(True), n) if empty is None else empty
    return pa.StructArray.from_arrays(children, fields=fields, mask=mask)


def assemble(schema: pa.Schema, values: Mapping[AttrPath, pa.Array], n: int) -> pa.RecordBatch:
    """A record batch in ``schema`` from columns keyed by attribute path."""
    inner = prefixes_of(values)
    columns = [_column(f.type, (f.name,), values, inner, n) for f in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)

