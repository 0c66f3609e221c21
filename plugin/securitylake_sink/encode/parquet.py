"""Arrow table → Parquet bytes with Security Lake's conventions: zstd, pages ≤ 1 MB, row groups
≤ 256 MB, rows sorted by ``time``; the OCSF version and class in the file's key-value metadata.

Most leaf columns of a class schema are null on every row of an object. Those whose parents are
present on every row (or that are top-level) are written uncompressed and without a dictionary:
their pages hold one run of definition levels, which zstd only makes bigger.

Arrow's writer spends most of an object's time on those columns, walking their levels row by
row. So pyarrow writes only the other columns, and :mod:`.splice` adds the null ones' column
chunks and the full footer by hand. The bytes are those pyarrow writes for the whole table
(``encode_parquet(table, splice_nulls=False)``); a test holds the two to that."""

from __future__ import annotations

__all__ = ["encode_object", "encode_parquet", "leaf_columns"]

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from securitylake_sink.columnar import is_ascending
from securitylake_sink.encode import splice

log = logging.getLogger("securitylake_sink.encode")

# Security Lake custom-source best practices: data pages ≤ 1 MB, row groups ≤ 256 MB.
DATA_PAGE_BYTES = 1024 * 1024
ROW_GROUP_BYTES = 256 * 1024 * 1024
COMPRESSION = "zstd"
STATISTICS = ("time",)


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


@dataclass(frozen=True)
class _Node:
    """A node of the table's type tree being planned: its arrays (one per chunk), where it sits
    (``steady``: no ancestor is null on some rows or is a list; ``level``: its nullable
    ancestors, all present when steady; ``anchor``: its nearest ancestor not null on every row)."""

    arrays: Sequence[pa.Array]
    type: pa.DataType
    path: str
    nullable: bool
    steady: bool = True
    level: int = 0
    anchor: str = ""

    def children(self, empty: bool) -> Iterator[_Node]:
        steady = self.steady and all(a.null_count == 0 for a in self.arrays)
        level = self.level + self.nullable
        anchor = self.anchor if empty else self.path
        for i, f in enumerate(self.type):
            arrays = [a.field(i) for a in self.arrays]
            yield _Node(arrays, f.type, f"{self.path}.{f.name}", f.nullable, steady, level, anchor)


@dataclass
class _Plan:
    """How each leaf is written. ``levels``: its constant definition level, or None when its
    levels vary. ``written``: whether pyarrow writes it. ``copies``: leaves null on every row
    under an object present on some rows only, by the leaf pyarrow writes whose pages they share.
    ``partial``: the structs pyarrow writes only some fields of; ``dropped``: the nodes it
    writes nothing under."""

    info: Sequence[splice.Leaf]
    levels: dict[str, int | None] = field(default_factory=dict)
    written: dict[str, bool] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    firsts: dict[tuple[object, ...], str] = field(default_factory=dict)

    def walk(self, node: _Node) -> str:
        """Plan the leaves under ``node``; "all", "some" or "none" of them written by pyarrow.

        A leaf's levels are constant when it is null on every row and its node is steady.
        Leaves null on every row under the same anchor, of the same type and depth, have the
        same levels, so pyarrow writes the first of them and the others copy its pages."""
        empty = all(a.null_count == len(a) for a in node.arrays)
        if empty and node.steady and node.path not in STATISTICS:
            for leaf in _leaves(node.type, node.path):
                self.levels[leaf] = node.level
                self.written[leaf] = False
            self.dropped.add(node.path)
            return "none"
        if pa.types.is_struct(node.type):
            return self._struct(node, empty)
        if empty:
            return self._copied(node)
        for leaf in _leaves(node.type, node.path):  # a leaf that holds values, a list or a map
            self.levels[leaf] = None
            self.written[leaf] = True
        return "all"

    def _struct(self, node: _Node, empty: bool) -> str:
        results = [self.walk(child) for child in node.children(empty)]
        if all(r == "none" for r in results):
            if empty:
                self.dropped.add(node.path)
                return "none"
            self._write_all(node.type.field(0).type, f"{node.path}.{node.type.field(0).name}")  # pyarrow needs one
            results[0] = "all"
        if all(r == "all" for r in results):
            return "all"
        self.partial.add(node.path)
        return "some"

    def _copied(self, node: _Node) -> str:
        """A leaf, list or map null on every row under an anchor present on some rows only:
        copied when each of its leaves has a first (lists and maps are written whole)."""
        leaves = list(_leaves(node.type, node.path))
        keys = [
            (node.anchor, info.max_definition, info.max_repetition, info.physical_type, node.type)
            for info in self.info[len(self.levels) : len(self.levels) + len(leaves)]
        ]
        copied = all(key in self.firsts for key in keys)
        for leaf, key in zip(leaves, keys, strict=True):
            self.levels[leaf] = None
            self.written[leaf] = not copied
            if copied:
                self.copies[leaf] = self.firsts[key]
            else:
                self.firsts.setdefault(key, leaf)
        if copied:
            self.dropped.add(node.path)
            return "none"
        return "all"

    def _write_all(self, t: pa.DataType, path: str) -> None:
        """Have pyarrow write every leaf under ``path``."""
        for leaf in _leaves(t, path):
            self.written[leaf] = True
            self.copies.pop(leaf, None)
        inside = f"{path}."
        self.partial = {p for p in self.partial if p != path and not p.startswith(inside)}
        self.dropped = {p for p in self.dropped if p != path and not p.startswith(inside)}


def _plan(table: pa.Table, info: Sequence[splice.Leaf]) -> _Plan:
    plan = _Plan(info)
    for f, column in zip(table.schema, table.columns, strict=True):
        plan.walk(_Node(column.chunks, f.type, f.name, f.nullable))
    return plan


def leaf_columns(table: pa.Table) -> dict[str, bool]:
    """Each Parquet leaf column of ``table`` by path, in order: False for a column whose pages
    hold nothing but one run of definition levels (null on every row, under parents present on
    every row), True for the others."""
    return {path: level is None for path, level in _plan(table, _template(table.schema).leaves).levels.items()}


def _narrow(array: pa.Array, path: str, plan: _Plan) -> pa.Array:
    """``array`` with only the fields pyarrow writes (of the structs the plan keeps in part)."""
    if path not in plan.partial:
        return array
    assert isinstance(array, pa.StructArray)
    fields, children = [], []
    for i, f in enumerate(array.type):
        child = f"{path}.{f.name}"
        if child not in plan.dropped:
            narrowed = _narrow(array.field(i), child, plan)
            fields.append(f if narrowed.type == f.type else pa.field(f.name, narrowed.type, f.nullable, f.metadata))
            children.append(narrowed)
    mask = pc.is_null(array) if array.null_count else None
    return pa.StructArray.from_arrays(children, fields=fields, mask=mask)


def _narrow_table(table: pa.Table, plan: _Plan) -> pa.Table:
    """The columns of ``table`` pyarrow writes, in order; the schema's metadata kept."""
    fields, columns = [], []
    for f, column in zip(table.schema, table.columns, strict=True):
        if f.name in plan.partial:
            chunks = [_narrow(chunk, f.name, plan) for chunk in column.chunks]
            fields.append(pa.field(f.name, chunks[0].type, nullable=f.nullable, metadata=f.metadata))
            columns.append(pa.chunked_array(chunks, type=chunks[0].type))
        elif f.name not in plan.dropped:
            fields.append(f)
            columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def _template(schema: pa.Schema) -> splice.Template:
    def no_rows() -> bytes:  # the footer of a file with no row groups: its schema, nothing else
        sink = pa.BufferOutputStream()
        pq.ParquetWriter(sink, schema, store_schema=False).close()
        return bytes(sink.getvalue().to_pybytes())

    return splice.template(schema, no_rows)


def _write(table: pa.Table, levels: dict[str, int | None], rows_per_group: int, sink: pa.NativeFile) -> None:
    """pyarrow's Parquet of ``table`` into ``sink``: constant columns uncompressed, without a
    dictionary."""
    # Parquet's own schema carries every type (read back, it equals the class schema), so the
    # serialized Arrow schema is left out: 50-110 KB per object for the wide classes. The
    # schema's key-value metadata (ocsf.version, ocsf.class_uid) is kept.
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression={p: COMPRESSION if level is None else "none" for p, level in levels.items()},
        use_dictionary=[p for p, level in levels.items() if level is None],
        data_page_size=DATA_PAGE_BYTES,
        write_statistics=list(STATISTICS),
        store_schema=False,
    ) as writer:
        writer.write_table(table, row_group_size=rows_per_group)
        metadata = table.schema.metadata or {}
        if metadata:
            writer.add_key_value_metadata({k.decode(): v.decode() for k, v in metadata.items()})


def _written(table: pa.Table, levels: dict[str, int | None], rows_per_group: int) -> bytes:
    sink = pa.BufferOutputStream()
    _write(table, levels, rows_per_group, sink)
    return bytes(sink.getvalue().to_pybytes())


def _write_file(table: pa.Table, levels: dict[str, int | None], rows_per_group: int, scratch: Path) -> Path:
    """``_write`` into a new file in ``scratch``: unlike a buffer in memory, a file does not grow
    by doubling, nor is it copied out at the end (8 MB less at the peak for a 6 MB object)."""
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".parquet")
    os.close(fd)
    path = Path(name)
    try:
        with pa.OSFile(name, "wb") as sink:
            _write(table, levels, rows_per_group, sink)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def encode_parquet(table: pa.Table, *, splice_nulls: bool = True) -> bytes:
    """Sort by ``time`` and write Parquet; the schema (with its OCSF metadata) is kept as is.

    ``splice_nulls=False`` has pyarrow write every column itself: the same bytes, slower."""
    return _encode(lambda: table, None, splice_nulls=splice_nulls)[0]


def encode_object(read: Callable[[], pa.Table], scratch: Path) -> tuple[bytes, int]:
    """``encode_parquet`` of the table ``read()`` returns, and its row count, with less memory:
    pyarrow writes into a file in ``scratch``, and the table is let go before that file is read
    back and spliced, so the table and the object's bytes are never held at once. ``read`` is
    called again if pyarrow has to write the whole table (see :func:`encode_parquet`)."""
    return _encode(read, scratch)


def _encode(read: Callable[[], pa.Table], scratch: Path | None, *, splice_nulls: bool = True) -> tuple[bytes, int]:
    table = read()  # the only reference, when ``read`` keeps none
    rows = table.num_rows
    # Arrow size is an upper bound of the compressed size, so this keeps row groups in bounds.
    # All-null columns share buffers (columnar.nulls): count each buffer once.
    per_row = max(1, table.get_total_buffer_size() // max(1, rows))
    rows_per_group = max(1, min(rows or 1, ROW_GROUP_BYTES // per_row))
    order = None
    if rows > 1 and not is_ascending(table.column("time")):
        order = pc.sort_indices(table.column("time"))  # stable: rows of one millisecond keep their order
    template = _template(table.schema)
    plan = _plan(table, template.leaves)  # which columns are null on every row does not depend on the order
    if not splice_nulls or rows == 0 or all(plan.written.values()):
        return _written(table if order is None else table.take(order), plan.levels, rows_per_group), rows
    narrow = _narrow_table(table, plan)  # sorted once narrow: a wide table's take costs per column
    del table
    if order is not None:
        narrow = narrow.take(order)
    if scratch is None:
        written = _written(narrow, plan.levels, rows_per_group)
        del narrow
    else:
        file = _write_file(narrow, plan.levels, rows_per_group, scratch)
        del narrow  # the object's columns go before its bytes come in
        try:
            written = file.read_bytes()
        finally:
            file.unlink(missing_ok=True)
    index = {path: i for i, path in enumerate(plan.levels)}
    leaves = [
        splice.Planned(level, plan.written[path], index[plan.copies[path]] if path in plan.copies else None)
        for path, level in plan.levels.items()
    ]
    try:
        return splice.splice(written, template, leaves), rows
    except splice.Unsupported as exc:
        log.warning("Parquet: pyarrow writes this object whole", extra={"reason": str(exc)})
        del written
        return _encode(read, None, splice_nulls=False)
