"""Arrow table → Parquet bytes with Security Lake's conventions: zstd, pages ≤ 1 MB, row groups
≤ 256 MB, rows sorted by ``time``; the OCSF version and class in the file's key-value metadata.

Most leaf columns of a class schema are null on every row of an object. Those whose parents are
present on every row (or that are top-level) are written uncompressed and without a dictionary:
their pages hold one run of definition levels, which zstd only makes bigger, at the cost of a
compression context each."""

from __future__ import annotations

__all__ = ["encode_parquet", "leaf_columns"]

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from securitylake_sink.columnar import is_ascending

# Security Lake custom-source best practices: data pages ≤ 1 MB, row groups ≤ 256 MB.
DATA_PAGE_BYTES = 1024 * 1024
ROW_GROUP_BYTES = 256 * 1024 * 1024
COMPRESSION = "zstd"


def _leaves(t: pa.DataType, path: str) -> Iterator[str]:
    """The Parquet column paths of the leaves under ``t`` (nested types as pyarrow writes them)."""
    if pa.types.is_struct(t):
        for f in t:
            yield from _leaves(f.type, f"{path}.{f.name}")
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from _leaves(t.value_type, f"{path}.list.element")
    elif pa.types.is_map(t):
        yield from _leaves(t.key_type, f"{path}.key_value.key")
        yield from _leaves(t.item_type, f"{path}.key_value.value")
    else:
        yield path


def _walk(arrays: Sequence[pa.Array], t: pa.DataType, path: str, steady: bool, out: dict[str, bool]) -> None:
    """Mark each leaf under ``path``: False when it is null on every row and its definition
    levels are one run (``steady``: no ancestor is null on some rows, none is a list), else True."""
    empty = all(a.null_count == len(a) for a in arrays)
    if empty and steady:
        out.update((leaf, False) for leaf in _leaves(t, path))
    elif pa.types.is_struct(t) and not empty:
        steady = steady and all(a.null_count == 0 for a in arrays)
        for i, f in enumerate(t):
            _walk([a.field(i) for a in arrays], f.type, f"{path}.{f.name}", steady, out)
    else:  # a leaf, a list or a map, or null on every row under an uneven parent
        out.update((leaf, True) for leaf in _leaves(t, path))


def leaf_columns(table: pa.Table) -> dict[str, bool]:
    """Each Parquet leaf column of ``table`` by path, in order: False for a column whose pages
    hold nothing but one run of definition levels (null on every row, under parents present on
    every row), True for the others."""
    out: dict[str, bool] = {}
    for f, column in zip(table.schema, table.columns, strict=True):
        _walk(column.chunks, f.type, f.name, True, out)
    return out


def encode_parquet(table: pa.Table) -> bytes:
    """Sort by ``time`` and write Parquet; the schema (with its OCSF metadata) is kept as is."""
    if table.num_rows > 1 and not is_ascending(table.column("time")):
        table = table.take(pc.sort_indices(table, sort_keys=[("time", "ascending")]))
    # Arrow size is an upper bound of the compressed size, so this keeps row groups in bounds.
    # All-null columns share buffers (columnar.nulls): count each buffer once.
    per_row = max(1, table.get_total_buffer_size() // max(1, table.num_rows))
    rows_per_group = max(1, min(table.num_rows or 1, ROW_GROUP_BYTES // per_row))
    leaves = leaf_columns(table)
    sink = pa.BufferOutputStream()
    # Parquet's own schema carries every type (read back, it equals the class schema), so the
    # serialized Arrow schema is left out: 50-110 KB per object for the wide classes. The
    # schema's key-value metadata (ocsf.version, ocsf.class_uid) is kept.
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression={path: COMPRESSION if varied else "none" for path, varied in leaves.items()},
        use_dictionary=[path for path, varied in leaves.items() if varied],
        data_page_size=DATA_PAGE_BYTES,
        write_statistics=["time"],
        store_schema=False,
    ) as writer:
        writer.write_table(table, row_group_size=rows_per_group)
        metadata = table.schema.metadata or {}
        if metadata:
            writer.add_key_value_metadata({k.decode(): v.decode() for k, v in metadata.items()})
    return bytes(sink.getvalue().to_pybytes())
