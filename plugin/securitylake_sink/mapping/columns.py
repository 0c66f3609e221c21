"""The frame a rule works on: the one Python pass over a batch of records that pulls the fields a
rule needs into columns and everything it does not use into ``unmapped`` (dotted keys, text)."""

from __future__ import annotations

__all__ = ["Frame", "UsedFields", "getter", "merge_unmapped", "path_parts", "pull_frame"]

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import row_numbers
from securitylake_sink.mapping.ops import text_of, texts, to_array

UNMAPPED_TYPE = pa.map_(pa.string(), pa.string())
_LEAF: dict[str, Any] = {}


_SEGMENT = re.compile(r"""\[(?:"([^"]*)"|'([^']*)')\]|([^.\[\]]+)""")


def path_parts(path: str) -> tuple[str, ...]:
    """``a.b["c.d"].e`` → ``("a", "b", "c.d", "e")``: brackets keep a key that has dots."""
    return tuple(next(g for g in m.groups() if g is not None) for m in _SEGMENT.finditer(path))


def getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    """A function reading ``path`` from a record: the literal key first (Zeek's ``id.orig_h``),
    then the dotted path into nested objects (``userIdentity.userName``); a bracketed segment
    (``annotations["authorization.k8s.io/decision"]``) is one key."""
    parts = path_parts(path)
    literal = "[" not in path
    if len(parts) == 1:
        key = parts[0]
        return lambda r: r.get(key)

    def nested(r: Mapping[str, Any]) -> Any:
        value: Any = r.get(path) if literal else None
        if value is not None:
            return value
        value = r
        for part in parts:
            # records are dicts (msgpack, JSON): the exact check first, the ABC's only otherwise
            value = value.get(part) if value.__class__ is dict or isinstance(value, Mapping) else None
            if value is None:
                return None
        return value

    return nested


@dataclass(frozen=True)
class UsedFields:
    """The record fields a rule reads, as a trie, to tell what goes to ``unmapped``."""

    paths: tuple[str, ...]
    line_fields: tuple[str, ...]
    trie: dict[str, Any] = field(init=False, repr=False)
    whole: frozenset[str] = field(init=False, repr=False)  # top-level keys read entirely

    def __post_init__(self) -> None:
        trie: dict[str, Any] = {}
        for path in self.paths:
            if "[" not in path:
                trie[path] = _LEAF  # the literal key
            node = trie
            parts = path_parts(path)
            for part in parts[:-1]:
                child = node.get(part)
                if child is _LEAF:
                    break
                node = node.setdefault(part, {})
            else:
                node[parts[-1]] = _LEAF
        object.__setattr__(self, "trie", trie)
        object.__setattr__(self, "whole", frozenset(k for k, v in trie.items() if v is _LEAF))


def _flatten(value: Any, prefix: str, keys: list[str], values: list[str]) -> None:
    cls = value.__class__  # exact types first: the ABC checks cost more than the work
    if cls is str or cls is int or cls is float or cls is bool:
        keys.append(prefix)
        values.append(text_of(value))
    elif cls is dict:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", keys, values)
    elif cls is list:
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}", keys, values)
    elif value is None:
        pass
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", keys, values)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}", keys, values)
    else:
        keys.append(prefix)
        values.append(text_of(value))


def _leftover(
    record: Mapping[str, Any],
    trie: Mapping[str, Any],
    prefix: str,
    out: tuple[list[str], list[str]],
    *,
    only: Sequence[str] | None = None,
) -> None:
    """Append the (dotted key, text) pairs of ``record`` that ``trie`` does not cover to ``out``;
    ``only``: the record's keys that may hold any (the others are covered, or skipped)."""
    keys, values = out
    for key in record if only is None else only:
        node = trie.get(key)
        if node is _LEAF:
            continue
        value = record[key]
        name = f"{prefix}{key}" if prefix else key
        if node is not None and (value.__class__ is dict or isinstance(value, Mapping)):
            _leftover(value, node, f"{name}.", out)
        elif value.__class__ is str:
            keys.append(name)
            values.append(value)
        else:
            _flatten(value, name, keys, values)


@dataclass
class Frame:
    """Columns of ``n`` records for one rule: pulled fields, parse captures, and ``unmapped``."""

    n: int
    tag: str  # the records' tag (the first record's when they come from several tags)
    records: Sequence[Mapping[str, Any]]
    ref_ms: pa.Array  # the transport time of each record, epoch ms
    line: pa.Array  # the raw line of each record (null when it has none)
    unmapped: pa.Array  # map<string, string>
    pulled: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    arrays: dict[str, pa.Array] = field(default_factory=dict)
    captures: dict[str, pa.Array] = field(default_factory=dict)
    matched: dict[str, pa.Array] = field(default_factory=dict)
    tags: pa.Array | None = None  # each record's tag, when they come from several tags

    def field(self, path: str) -> pa.Array:
        """The pulled field ``path`` as an Arrow array (converted once)."""
        arr = self.arrays.get(path)
        if arr is None:
            values = self.pulled[path]
            empty = not any(v is not None for v in values)
            arr = self.arrays[path] = pa.nulls(self.n, pa.null()) if empty else to_array(values)
        return arr

    def take(self, indices: pa.Array) -> Frame:
        """The rows at ``indices`` (all columns converted to arrays first)."""
        rows = indices.to_pylist()
        return Frame(
            n=len(rows),
            tag=self.tag,
            records=[self.records[i] for i in rows],
            ref_ms=self.ref_ms.take(indices),
            line=self.line.take(indices),
            unmapped=self.unmapped.take(indices),
            arrays={p: self.field(p).take(indices) for p in self.pulled},
            pulled={p: () for p in self.pulled},
            captures={k: v.take(indices) for k, v in self.captures.items()},
            matched={k: v.take(indices) for k, v in self.matched.items()},
            tags=None if self.tags is None else self.tags.take(indices),
        )


def _decode_json(
    records: Sequence[Mapping[str, Any]], lines: list[Any], line_keys: list[str | None]
) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for record, line, key in zip(records, lines, line_keys, strict=True):
        if isinstance(line, str) and line.lstrip().startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                out.append({**{k: v for k, v in record.items() if k != key}, **parsed})
                continue
        out.append(record)
    return out


def _lines(records: Sequence[Mapping[str, Any]], candidates: Sequence[str]) -> list[Any]:
    """Each record's raw line: the first string among ``candidates`` (None when it has none)."""
    if not candidates:
        return [None] * len(records)
    first = candidates[0]
    lines = [r.get(first) for r in records]
    for key in candidates[1:]:
        if all(v.__class__ is str for v in lines):
            break
        lines = [v if v.__class__ is str else r.get(key) for v, r in zip(lines, records, strict=True)]
    return [v if v.__class__ is str else None for v in lines]


def _line_key(record: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if isinstance(record.get(k), str)), None)


class _Shapes:
    """The key sets (shapes) of a batch of records: records of one tag share a few, so what
    depends only on the keys is decided once per shape, not once per record."""

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        index: dict[tuple[str, ...], int] = {}
        self.ids = [index.setdefault(tuple(r), len(index)) for r in records]
        self.shapes = list(index)
        self.present: set[str] = set().union(*self.shapes)
        self.rows: list[list[int]] = [[] for _ in self.shapes]
        if len(self.shapes) > 1:
            for row, sid in enumerate(self.ids):
                self.rows[sid].append(row)
        elif self.shapes:
            self.rows[0] = list(range(len(self.ids)))

    def rows_with(self, wanted: Callable[[tuple[str, ...]], bool]) -> list[int] | None:
        """Rows whose shape is ``wanted`` (ascending); None when every row's is."""
        picked = [i for i, shape in enumerate(self.shapes) if wanted(shape)]
        if len(picked) == len(self.shapes):
            return None
        return sorted(row for sid in picked for row in self.rows[sid])


def _column(
    records: Sequence[Mapping[str, Any]], path: str, shapes: _Shapes, walked: dict[tuple[str, ...], list[Any]]
) -> list[Any]:
    parts = path_parts(path)
    n = len(records)
    if parts[0] not in shapes.present and path not in shapes.present:
        return [None] * n  # no record has it: skip the pass
    if len(parts) > 1 and path not in shapes.present:  # no literal dotted key: walk level by level
        return _walk(records, parts, walked)
    get: Callable[[Mapping[str, Any]], Any] = getter(path)
    rows = shapes.rows_with(lambda shape: parts[0] in shape or path in shape)
    if rows is None:
        if len(parts) == 1:
            return [r.get(path) for r in records]
        return [get(r) for r in records]
    column: list[Any] = [None] * n
    for row in rows:
        column[row] = get(records[row])
    return column


def _walk(
    records: Sequence[Mapping[str, Any]], parts: tuple[str, ...], walked: dict[tuple[str, ...], list[Any]]
) -> list[Any]:
    """The values at ``parts`` in each record, one pass per level; the levels are kept in
    ``walked``, so paths that share a parent (``userIdentity.arn``, ``userIdentity.type``) read
    it once."""
    column = walked.get(parts)
    if column is not None:
        return column
    if len(parts) == 1:
        key = parts[0]
        column = [r.get(key) for r in records]
    else:
        key = parts[-1]
        column = [
            v.get(key) if v.__class__ is dict else None if v is None else _get(v, key)
            for v in _walk(records, parts[:-1], walked)
        ]
    walked[parts] = column
    return column


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else None


def _leftovers(
    records: Sequence[Mapping[str, Any]],
    lines: Sequence[Any],
    candidates: Sequence[str],
    used: UsedFields,
    shapes: _Shapes,
) -> pa.Array:
    """``unmapped`` of each record: what the rule does not read, except the raw line itself."""
    whole, trie = used.whole, used.trie
    allowed, wanted = whole | set(candidates), set(candidates)

    def needs_look(shape: tuple[str, ...]) -> bool:
        names = set(shape)
        return not (names <= allowed and len(names & wanted) <= 1)

    rows = shapes.rows_with(needs_look)
    # A record whose line field holds no text (a map, a number) keeps that field in unmapped.
    with_line_key = {i for i, shape in enumerate(shapes.shapes) if wanted.intersection(shape)}
    odd = (
        [
            row
            for row, (sid, line) in enumerate(zip(shapes.ids, lines, strict=True))
            if line is None and sid in with_line_key
        ]
        if with_line_key
        else []
    )
    look = sorted(set(range(len(records)) if rows is None else rows) | set(odd))
    counts = [0] * len(records)
    keys: list[str] = []
    values: list[str] = []
    # The top-level keys worth a look, per shape (and line field): most are read whole by the rule.
    worth: dict[tuple[int, str | None], list[str]] = {}
    for row in look:
        record = records[row]
        line_key = _line_key(record, candidates) if candidates else None
        plan = worth.get((shapes.ids[row], line_key))
        if plan is None:
            skip = whole if line_key is None else whole | {line_key}
            shape = shapes.shapes[shapes.ids[row]]
            plan = worth[(shapes.ids[row], line_key)] = [k for k in shape if k not in skip and trie.get(k) is not _LEAF]
        before = len(keys)
        _leftover(record, trie, "", (keys, values), only=plan)
        counts[row] = len(keys) - before
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(pa.array(counts, pa.int64()))])
    return pa.MapArray.from_arrays(pc.cast(offsets, pa.int32()), texts(keys), texts(values))


def pull_frame(
    records: Sequence[Mapping[str, Any]],
    tag: str | Sequence[str],
    ref_ms: pa.Array,
    used: UsedFields,
    *,
    decode_json: bool = False,
) -> Frame:
    """Pull ``used.paths`` (one list per path) and the leftovers (``unmapped``) of ``records``;
    ``tag`` is their tag, or each record's."""
    n = len(records)
    shapes = _Shapes(records)
    candidates = [k for k in used.line_fields if k in shapes.present]
    lines = _lines(records, candidates)
    if decode_json:
        records = _decode_json(records, lines, [_line_key(r, candidates) for r in records])
        shapes = _Shapes(records)
    walked: dict[tuple[str, ...], list[Any]] = {}
    pulled = {path: _column(records, path, shapes, walked) for path in used.paths}
    unmapped = _leftovers(records, lines, candidates, used, shapes)
    line = texts(lines) if candidates else pa.nulls(n, pa.string())
    # A tag is text in columns: bytes that were not UTF-8 are replaced, as in values.
    if isinstance(tag, str):
        return Frame(n, text_of(tag), records, ref_ms, line, unmapped, pulled)
    tags = texts(tag)
    first = tags[0].as_py() if n else ""
    return Frame(n, first, records, ref_ms, line, unmapped, pulled, tags=tags)


def merge_unmapped(base: pa.Array, extras: Iterable[tuple[str, pa.Array]]) -> pa.Array:
    """``base`` (map<string,string>) with ``key → value`` added per row where value is not null."""
    extras = [(k, v) for k, v in extras if v.null_count < len(v)]
    if not extras:
        return base
    n = len(base)
    entries = pa.ListArray.from_arrays(base.offsets, base.keys)  # list kernels do not take maps
    rows = [pc.list_parent_indices(entries)]
    all_keys = [base.keys]
    all_values = [base.items]
    counts = pc.cast(pc.fill_null(pc.list_value_length(entries), 0), pa.int64())
    row_ids = row_numbers(n)
    for key, value in extras:
        valid = pc.is_valid(value)
        rows.append(pc.cast(row_ids.filter(valid), pa.int64()))
        present = value.filter(valid)
        all_values.append(present)
        all_keys.append(pa.repeat(pa.scalar(key), len(present)))
        counts = pc.add(counts, pc.cast(valid, pa.int64()))
    order = pc.sort_indices(pa.concat_arrays([pc.cast(r, pa.int64()) for r in rows]))  # stable: base first
    keys = pc.take(pa.concat_arrays(all_keys), order)
    values = pc.take(pa.concat_arrays(all_values), order)
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(counts)])
    return pa.MapArray.from_arrays(pc.cast(offsets, pa.int32()), keys, values)
