"""Splices constant column chunks into a Parquet file: the leaves that are null on every row and
whose definition levels are one run, which pyarrow was not given to write.

Each such chunk is written as parquet-cpp writes it (data pages of at most 20,000 rows holding
one RLE run of levels each, uncompressed, no statistics but the level histograms), and the
footer is the full schema's, with every row group's chunks in schema order and the chunks
pyarrow wrote moved to their place. The result is the file pyarrow writes for the whole table,
byte for byte, which the tests check; a footer this module does not expect (page indexes, bloom
filters, encryption) raises :class:`Unsupported` and the caller has pyarrow write it all."""

from __future__ import annotations

__all__ = ["ROWS_PER_PAGE", "Leaf", "Planned", "Template", "Unsupported", "splice", "template"]

import functools
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa

from securitylake_sink.encode.thrift import (
    BINARY,
    I32,
    I64,
    LIST,
    STRUCT,
    Raw,
    Struct,
    ThriftError,
    read_struct,
    varint,
    write_fields,
    write_struct,
    write_value,
)

MAGIC = b"PAR1"
ROWS_PER_PAGE = 20_000  # parquet-cpp's default bound on the rows of a data page
BYTE_ARRAY = 6
PLAIN, RLE = 0, 3
OPTIONAL, REPEATED = 1, 2
# ColumnChunk / ColumnMetaData fields this module moves or does not expect
DATA_PAGE_OFFSET, INDEX_PAGE_OFFSET, DICTIONARY_PAGE_OFFSET, BLOOM_FILTER_OFFSET = 9, 10, 11, 14
CHUNK_UNMOVED_FIELDS = (1, 4, 5, 6, 7, 8, 9)  # another file's path, page indexes, encryption
TEMPLATES_KEPT = 128  # more than the classes of an OCSF version


class Unsupported(ValueError):
    """A Parquet file whose footer holds something this module does not move."""


@dataclass(frozen=True)
class Leaf:
    """A leaf column of the Parquet schema: its path, physical type and maximum levels."""

    path: tuple[bytes, ...]
    physical_type: int
    max_definition: int
    max_repetition: int

    @property
    def encoded_path(self) -> Raw:
        return _encoded_path(self.path)


class Planned(NamedTuple):
    """How a leaf of the full schema is had: its constant definition level (None when its levels
    vary), whether the file pyarrow wrote holds it, and else the leaf (by index) whose pages it
    copies, when not constant."""

    level: int | None
    written: bool
    copy_of: int | None


@dataclass(frozen=True)
class Template:
    """The footer parts that depend on the schema alone (encoded once)."""

    schema: tuple[int, Raw]
    column_orders: tuple[int, Raw] | None
    leaves: tuple[Leaf, ...]


_TEMPLATES: list[tuple[pa.Schema, Template]] = []


def footer(data: bytes) -> Struct:
    """The FileMetaData of a Parquet file."""
    if len(data) < 12 or data[:4] != MAGIC or data[-4:] != MAGIC:
        raise Unsupported("not a Parquet file")
    (length,) = struct.unpack_from("<i", data, len(data) - 8)
    start = len(data) - 8 - length
    meta, end = read_struct(memoryview(data)[start : len(data) - 8])
    if end != length:
        raise Unsupported("footer length does not match")
    return meta


def _leaves(elements: Sequence[Struct]) -> tuple[Leaf, ...]:
    """Each leaf of a flattened Parquet schema (depth first, as the footer lists it)."""
    out: list[Leaf] = []
    position = 1

    def walk(path: tuple[bytes, ...], definition: int, repetition: int) -> None:
        nonlocal position
        element = elements[position]
        position += 1
        kind = element[3][1] if 3 in element else 0
        path = (*path, element[4][1])
        definition += kind in (OPTIONAL, REPEATED)
        repetition += kind == REPEATED
        children = element[5][1] if 5 in element else 0
        if children:
            for _ in range(children):
                walk(path, definition, repetition)
        else:
            out.append(Leaf(path, element[1][1], definition, repetition))

    for _ in range(elements[0][5][1]):
        walk((), 0, 0)
    return tuple(out)


def template(schema: pa.Schema, write_empty: Callable[[], bytes]) -> Template:
    """The template of ``schema``, from the footer of an empty file pyarrow wrote of it; kept."""
    for known, found in _TEMPLATES:
        if known.equals(schema, check_metadata=True):  # field metadata can set Parquet field ids
            return found
    meta = footer(write_empty())
    elements = meta[2][1][1]
    orders = meta.get(7)
    made = Template(
        (LIST, write_value(LIST, meta[2][1])),
        None if orders is None else (LIST, write_value(LIST, orders[1])),
        _leaves(elements),
    )
    _TEMPLATES.append((schema, made))
    del _TEMPLATES[:-TEMPLATES_KEPT]
    return made


@functools.lru_cache(maxsize=16384)
def _encoded_path(path: tuple[bytes, ...]) -> Raw:
    return write_value(LIST, (BINARY, list(path)))


def _run(count: int, value: int, max_level: int) -> bytes:
    """Levels as v1 data pages hold them: a length, then ``count`` times ``value``, RLE."""
    run = varint(count << 1) + value.to_bytes((max_level.bit_length() + 7) // 8, "little")
    return struct.pack("<i", len(run)) + run


_SHAPES: dict[tuple[int, int, int, bool, int], tuple[bytes, bytes, bytes]] = {}


def _shape(leaf: Leaf, level: int, rows: int) -> tuple[bytes, bytes, bytes]:
    """What a constant chunk holds but its type and path (kept for each shape of leaf, which
    all the chunks of a row group share): its pages, and its ColumnMetaData's fields from the
    codec to the data page offset's header, and from after that offset to the end."""
    key = (leaf.max_definition, leaf.max_repetition, level, leaf.physical_type == BYTE_ARRAY, rows)
    found = _SHAPES.get(key)
    if found is not None:
        return found
    pages = bytearray()
    counts = [ROWS_PER_PAGE] * (rows // ROWS_PER_PAGE) + ([rows % ROWS_PER_PAGE] if rows % ROWS_PER_PAGE else [])
    for count in counts:
        body = (_run(count, 0, leaf.max_repetition) if leaf.max_repetition else b"") + _run(
            count, level, leaf.max_definition
        )
        header: Struct = {
            1: (I32, 0),  # DATA_PAGE
            2: (I32, len(body)),
            3: (I32, len(body)),
            5: (STRUCT, {1: (I32, count), 2: (I32, PLAIN), 3: (I32, RLE), 4: (I32, RLE), 5: (STRUCT, {})}),
        }
        pages += write_struct(header) + body
    sizes: Struct = {1: (I64, 0)} if leaf.physical_type == BYTE_ARRAY else {}
    repetition = [rows] + [0] * leaf.max_repetition if leaf.max_repetition else []
    definition = [0] * (leaf.max_definition + 1)
    definition[level] = rows
    sizes[2] = (LIST, (I64, repetition))
    sizes[3] = (LIST, (I64, definition))
    # codec 0: UNCOMPRESSED
    middle = write_fields({4: (I32, 0), 5: (I64, rows), 6: (I64, len(pages)), 7: (I64, len(pages))}, 3)
    offset_header = write_fields({DATA_PAGE_OFFSET: (I64, 0)}, 7)[:-1]  # its value follows
    tail = write_fields(
        {
            13: (LIST, (STRUCT, [{1: (I32, 0), 2: (I32, PLAIN), 3: (I32, len(counts))}])),
            16: (STRUCT, sizes),
        },
        DATA_PAGE_OFFSET,
    )
    if len(_SHAPES) > 1024:
        _SHAPES.clear()
    made = _SHAPES[key] = (bytes(pages), middle + offset_header, tail + b"\0\0")  # ColumnMetaData's stop, ColumnChunk's
    return made


@functools.lru_cache(maxsize=16384)
def _chunk_head(leaf: Leaf) -> bytes:
    """A constant chunk's ColumnChunk up to its ColumnMetaData's path."""
    head = write_fields({2: (I64, 0), 3: (STRUCT, {})})[:-1]  # file_offset 0, then ColumnMetaData open
    fields: Struct = {1: (I32, leaf.physical_type), 2: (LIST, _ENCODINGS), 3: (LIST, _encoded_path(leaf.path))}
    return head + write_fields(fields)


_ENCODINGS = write_value(LIST, (I32, [RLE, PLAIN]))


def _constant_chunk(leaf: Leaf, level: int, rows: int, offset: int) -> tuple[bytes, Raw]:
    """The pages of a leaf at definition ``level`` on ``rows`` rows, and its ColumnChunk."""
    pages, middle, tail = _shape(leaf, level, rows)
    return pages, Raw(_chunk_head(leaf) + middle + write_value(I64, offset) + tail)


def _moved(meta: Struct, delta: int) -> Struct:
    """A ColumnMetaData whose pages moved by ``delta`` bytes."""
    if BLOOM_FILTER_OFFSET in meta:
        raise Unsupported("bloom filters")
    out = dict(meta)
    for fid in (DATA_PAGE_OFFSET, INDEX_PAGE_OFFSET, DICTIONARY_PAGE_OFFSET):
        if fid in out:
            out[fid] = (I64, out[fid][1] + delta)
    return out


def _held(chunk: Struct) -> tuple[Struct, int, int]:
    """A chunk of the written file: its ColumnMetaData, first byte and size."""
    if any(fid in chunk for fid in CHUNK_UNMOVED_FIELDS):
        raise Unsupported("page indexes, encryption or chunks in another file")
    column = chunk[3][1]
    return column, column.get(DICTIONARY_PAGE_OFFSET, column[DATA_PAGE_OFFSET])[1], column[7][1]


@dataclass
class _Splice:
    """The whole file being put together: its parts so far and their length."""

    made: Template
    leaves: Sequence[Planned]
    view: memoryview
    parts: list[bytes | memoryview] = field(default_factory=lambda: [MAGIC])
    position: int = len(MAGIC)

    def group(self, group: Struct) -> Struct:
        """One row group of the whole file, its chunks appended to the parts."""
        chunks: Iterator[Struct | None] = iter(group[1][1][1])
        rows = group[3][1]
        columns: list[Struct | Raw] = []
        held: dict[int, Struct] = {}  # the chunks of the written file, by leaf
        start = self.position
        uncompressed = 0
        for index, (leaf, planned) in enumerate(zip(self.made.leaves, self.leaves, strict=True)):
            if planned.written or planned.copy_of is not None:
                chunk = next(chunks, None) if planned.copy_of is None else held[planned.copy_of]
                if chunk is None:
                    raise Unsupported("fewer chunks than leaves")
                held[index] = chunk
                column, first, size = _held(chunk)
                moved = _moved(column, self.position - first)
                if not planned.written:
                    moved[3] = (LIST, leaf.encoded_path)
                self.parts.append(self.view[first : first + size])
                columns.append({**chunk, 3: (STRUCT, moved)})
                uncompressed += column[6][1]
            else:
                assert planned.level is not None
                pages, raw = _constant_chunk(leaf, planned.level, rows, self.position)
                size = len(pages)
                self.parts.append(pages)
                columns.append(raw)
                uncompressed += size
            self.position += size
        if next(chunks, None) is not None:
            raise Unsupported("more chunks than leaves")
        out = dict(group)
        out[1] = (LIST, (STRUCT, columns))
        out[2] = (I64, uncompressed)
        if 5 in out:
            out[5] = (I64, start)
        if 6 in out:
            out[6] = (I64, self.position - start)
        return out


def splice(written: bytes, made: Template, leaves: Sequence[Planned]) -> bytes:
    """The file ``written`` with the leaves it lacks added, in schema order (see :class:`Planned`).
    Raises :class:`Unsupported` for anything it does not expect, never writing a file wrong."""
    try:
        return _splice(written, made, leaves)
    except (ThriftError, KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, Unsupported):
            raise
        raise Unsupported(f"unexpected footer: {exc!r}") from exc


def _splice(written: bytes, made: Template, leaves: Sequence[Planned]) -> bytes:
    if len(leaves) != len(made.leaves):
        raise Unsupported("the leaves do not match the schema")
    meta = footer(written)
    if any(fid not in (1, 2, 3, 4, 5, 6, 7) for fid in meta):
        raise Unsupported("footer fields not known")
    whole = _Splice(made, leaves, memoryview(written))
    groups = [whole.group(group) for group in meta[4][1][1]]
    out = dict(meta)
    out[2] = made.schema
    out[4] = (LIST, (STRUCT, groups))
    if made.column_orders is not None:
        out[7] = made.column_orders
    tail = write_struct(out)
    return b"".join([*whole.parts, tail, struct.pack("<i", len(tail)), MAGIC])
