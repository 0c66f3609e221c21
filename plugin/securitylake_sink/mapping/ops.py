"""Column operations the rules are made of, over Arrow arrays with ``pyarrow.compute``: Python
lists → arrays, casts that report the rows they could not cast, value transforms and tests."""

from __future__ import annotations

__all__ = [
    "Faults",
    "apply_ops",
    "as_text",
    "cast_column",
    "lookup",
    "test",
    "text_of",
    "texts",
    "to_array",
]

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import FALSE, kept_where, nulled_where, row_numbers, scalar_of
from securitylake_sink.mapping.assemble import constant
from securitylake_sink.mapping.spec import Ops
from securitylake_sink.mapping.timeparse import parse_times

INT_RE = r"^\s*[+-]?\d+\s*$"
FLOAT_RE = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"
HEX_RE = r"^(?:[0-9A-Fa-f]{2})+$"
_HEX = re.compile(HEX_RE)
INT_LIMITS = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


def text_of(value: Any) -> str:
    """A value as the text ``unmapped`` and string columns hold (JSON for objects and lists)."""
    cls = value.__class__
    if cls is int or cls is float:
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, default=text_of, ensure_ascii=False, separators=(",", ":"))
        return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")
    return str(value)


def texts(values: Sequence[str | None]) -> pa.Array:
    """Python strings as an Arrow string array. A string holding bytes that were not UTF-8 (the
    decoders keep them as surrogate escapes) gets them replaced, as ``text_of`` does."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([None if v is None else text_of(v) for v in values], pa.string())


def to_array(values: Sequence[Any]) -> pa.Array:
    """Pulled Python values as an Arrow array; mixed or odd types become text."""
    try:
        arr = pa.array(values, from_pandas=False)
        if _nested(arr.type):
            arr.validate(full=True)  # bytes inside a list can slip into a string child unchecked
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, ValueError, UnicodeError):
        if all(v is None or isinstance(v, list | tuple) for v in values):  # mixed items: a list of texts
            return _text_lists(values)
        return _texts_of(values)
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return _texts_of(values)
    if pa.types.is_large_string(arr.type):
        return pc.cast(arr, pa.string())
    return arr


def _texts_of(values: Sequence[Any]) -> pa.Array:
    """``text_of`` of each value (None kept) as a string array; strings go to Arrow as they are."""
    return texts([v if v is None or v.__class__ is str else text_of(v) for v in values])


def _text_lists(values: Sequence[Sequence[Any] | None]) -> pa.Array:
    """Lists (or None) of any items as list<string>, each item as ``text_of`` gives it."""
    offsets: list[int] = [0]
    flat: list[Any] = []
    for v in values:
        if v is not None:
            flat.extend(v)
        offsets.append(len(flat))
    mask = pa.array([v is None for v in values]) if None in values else None
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), _texts_of(flat), mask=mask)


def _nested(t: pa.DataType) -> bool:
    return bool(pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t))


def as_text(values: pa.Array) -> pa.Array:
    """Any column as strings (numbers printed, booleans true/false, objects as JSON)."""
    t = values.type
    if pa.types.is_string(t):
        return values
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.string())
    if _nested(t):
        return _texts_of(values.to_pylist())
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _texts_of(values.to_pylist())


class Faults:
    """Rows whose values could not be produced, with the first reason per row."""

    def __init__(self) -> None:
        self.items: list[tuple[pa.Array, str, pa.Array | None]] = []

    def add(self, mask: pa.Array | None, message: str, values: pa.Array | None = None) -> None:
        """Record ``message`` for every row where ``mask`` is true (``{value}`` is filled in)."""
        if mask is not None and mask.true_count > 0:
            self.items.append((pc.fill_null(mask, FALSE), message, values))

    def mask(self, n: int) -> pa.Array:
        out = constant(False, pa.bool_(), n)
        for mask, _, _ in self.items:
            out = pc.or_(out, mask)
        return out

    def reasons(self) -> dict[int, str]:
        """Row → reason, for rows with at least one fault (the first recorded fault wins)."""
        out: dict[int, str] = {}
        for mask, message, values in self.items:
            rows = pc.indices_nonzero(mask).to_pylist()
            shown = values.take(pa.array(rows, pa.int64())).to_pylist() if values is not None else [None] * len(rows)
            for row, value in zip(rows, shown, strict=True):
                out.setdefault(row, message.replace("{value}", repr(value)[:80]))
        return out

    def take(self, indices: pa.Array) -> Faults:
        sub = Faults()
        for mask, message, values in self.items:
            sub.add(mask.take(indices), message, values.take(indices) if values is not None else None)
        return sub


def _ints(values: pa.Array, bits: int) -> tuple[pa.Array, pa.Array | None]:
    t = values.type
    low, high = INT_LIMITS[bits]
    target = pa.int32() if bits == 32 else pa.int64()
    if pa.types.is_integer(t):
        if pa.types.is_unsigned_integer(t):
            values = pc.cast(pc.min_element_wise(values, pa.scalar(2**63 - 1, t)), pa.int64())
        wide = pc.cast(values, pa.int64())
        bad = None
        if bits == 32:
            int64 = pa.int64()
            bad = pc.or_kleene(pc.less(wide, scalar_of(low, int64)), pc.greater(wide, scalar_of(high, int64)))
            wide = nulled_where(bad, wide)
        return pc.cast(wide, target), bad
    if pa.types.is_floating(t):
        integral = pc.and_(
            pc.equal(pc.floor(values), values), pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high))
        )
        bad = pc.invert(integral)
        return pc.cast(kept_where(integral, values), target), bad
    if pa.types.is_string(t):
        ok = pc.match_substring_regex(values, INT_RE)
        text = kept_where(ok, pc.utf8_trim_whitespace(values))
        try:
            wide = pc.cast(text, pa.int64())
        except pa.ArrowInvalid:  # a run of digits past int64
            return _ints(pa.array([_big(v) for v in text.to_pylist()], pa.float64()), bits)
        number, bad = _ints(wide, bits)
        return number, pc.or_kleene(pc.invert(ok), bad) if bad is not None else pc.invert(ok)
    return pa.nulls(len(values), target), pc.is_valid(values)


def _big(text: str | None) -> float | None:
    return None if text is None else float(text)


def _floats(values: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    t = values.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return pc.cast(values, pa.float64()), None
    if pa.types.is_string(t):
        ok = pc.match_substring_regex(values, FLOAT_RE)
        return pc.cast(kept_where(ok, pc.utf8_trim_whitespace(values)), pa.float64()), pc.invert(ok)
    return pa.nulls(len(values), pa.float64()), pc.is_valid(values)


def _bools(values: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    t = values.type
    if pa.types.is_boolean(t):
        return values, None
    if pa.types.is_string(t):
        lower = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        ok = pc.is_in(lower, value_set=pa.array(["true", "false"]))
        return pc.if_else(ok, pc.equal(lower, "true"), scalar_of(None, pa.bool_())), pc.invert(ok)
    return pa.nulls(len(values), pa.bool_()), pc.is_valid(values)


def _lists(values: pa.Array, target: pa.ListType) -> tuple[pa.Array, pa.Array | None]:
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        item, bad = cast_column(values, target.value_type)
        offsets = pc.cumulative_sum(pc.cast(pc.is_valid(item), pa.int32()))
        offsets = pa.concat_arrays([pa.array([0], pa.int32()), offsets])
        lists = pa.ListArray.from_arrays(offsets, item.filter(pc.is_valid(item)), mask=pc.is_null(item))
        return lists.cast(target), bad
    flat = pc.list_flatten(values)
    item, bad = cast_column(flat, target.value_type)
    rebuilt = pa.ListArray.from_arrays(values.offsets, item, mask=pc.is_null(values))
    if bad is None or bad.true_count == 0:
        return rebuilt.cast(target), None
    parents = pc.list_parent_indices(values).filter(bad)
    row_bad = pc.is_in(row_numbers(len(values)), value_set=pc.cast(parents, pa.int64()))
    return rebuilt.cast(target), row_bad


def cast_column(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """``values`` as ``target``; the second result marks rows (non-null in) that could not be cast."""
    n = len(values)
    if values.type == target:
        return values, None
    if pa.types.is_null(values.type):
        return pa.nulls(n, target), None
    if pa.types.is_string(target):
        return as_text(values), None
    if pa.types.is_int32(target) or pa.types.is_int64(target):
        out, bad = _ints(values, 32 if pa.types.is_int32(target) else 64)
    elif pa.types.is_floating(target):
        out, bad = _floats(values)
    elif pa.types.is_boolean(target):
        out, bad = _bools(values)
    elif pa.types.is_timestamp(target):
        ms = parse_times(values, ("auto",), pa.nulls(n, pa.int64()))
        out, bad = pc.cast(ms, target), pc.and_(pc.is_valid(values), pc.is_null(ms))
    elif pa.types.is_list(target):
        out, bad = _lists(values, target)
    else:
        return pa.nulls(n, target), pc.is_valid(values)
    if bad is not None:
        bad = pc.and_(pc.fill_null(bad, FALSE), pc.is_valid(values))
    return out, bad


# -- transforms ----------------------------------------------------------------------------------
def _each(values: pa.Array, key: str) -> pa.Array:
    """From a list of objects, the list of their ``key`` values (``dns.answers`` → rdata list)."""
    if not pa.types.is_list(values.type) or not pa.types.is_struct(values.type.value_type):
        return pa.nulls(len(values), pa.list_(pa.string()))
    items = values.type.value_type
    if items.get_field_index(key) < 0:
        child = pa.nulls(len(pc.list_flatten(values)), pa.string())
    else:
        child = pc.struct_field(pc.list_flatten(values), key)
    return pa.ListArray.from_arrays(values.offsets, child, mask=pc.is_null(values))


def _element(values: pa.Array, index: int) -> pa.Array:
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        return values if index == 0 else pa.nulls(len(values), values.type)
    long_enough = pc.greater(pc.list_value_length(values), index)
    return pc.list_element(kept_where(long_enough, values), index)


def _split(text: pa.Array, sep: str, after: bool) -> pa.Array:
    """The text after (or before) the first ``sep``; ``after`` is null when ``sep`` is absent."""
    # Appending sep guarantees two parts, so list_element never runs past a list's end.
    parts = pc.split_pattern(pc.binary_join_element_wise(text, pa.scalar(sep), ""), sep, max_splits=1)
    if not after:
        return pc.list_element(parts, 0)
    rest = pc.utf8_slice_codeunits(pc.list_element(parts, 1), 0, -len(sep))
    found = pc.find_substring(text, sep)
    return kept_where(pc.greater_equal(found, scalar_of(0, found.type)), rest)


def _split_list(text: pa.Array, sep: str) -> pa.Array:
    """``"a, b"`` → ``["a", "b"]`` (items trimmed of whitespace)."""
    parts = pc.split_pattern(text, sep)
    items = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    return pa.ListArray.from_arrays(parts.offsets, items, mask=pc.is_null(text))


def _python_map(values: pa.Array, mask: pa.Array, fn: Any, out_type: pa.DataType) -> pa.Array:
    """Apply ``fn`` in Python to the rows of ``mask`` only (the rare escape hatch)."""
    if mask.true_count == 0:
        return values if values.type == out_type else pc.cast(values, out_type)
    picked = [fn(v) for v in values.filter(mask).to_pylist()]
    base = values if values.type == out_type else pa.nulls(len(values), out_type)
    return pc.replace_with_mask(base, mask, pa.array(picked, out_type))


def _hex_text(value: str) -> str:
    return bytes.fromhex(value).replace(b"\x00", b" ").decode("utf-8", "replace")


def _decode(text: pa.Array, how: str) -> pa.Array:
    if how == "audit":
        quoted = pc.fill_null(pc.and_(pc.starts_with(text, '"'), pc.ends_with(text, '"')), FALSE)
        text = pc.if_else(quoted, pc.utf8_slice_codeunits(text, 1, -1), text)
        text = nulled_where(pc.is_in(text, value_set=pa.array(["(null)", "?"])), text)
        hexed = pc.and_(pc.invert(quoted), pc.fill_null(pc.match_substring_regex(text, HEX_RE), FALSE))
    else:
        hexed = pc.fill_null(pc.match_substring_regex(text, HEX_RE), FALSE)
    return _python_map(text, hexed, _hex_text, pa.string())


def _int_of(value: str, base: int) -> int | None:
    """``"0x1a0"`` with base 16 → 416; None when the text is not a number in that base."""
    try:
        return int(value.strip(), base)
    except ValueError:
        return None


def lookup(values: pa.Array, table: Mapping[str, Any], default: Any, ignore_case: bool) -> pa.Array:
    """Source value → result by ``table`` (keys compared as text); ``default`` where none fits."""
    keys = list(table)
    text = as_text(values)
    if ignore_case:
        text = pc.utf8_lower(text)
        keys = [k.lower() for k in keys]
    results = pa.array(list(table.values()))
    picked = pc.take(results, pc.index_in(text, value_set=pa.array(keys, pa.string())))
    if default is not None:
        picked = pc.if_else(pc.is_valid(values), pc.fill_null(picked, pa.scalar(default, results.type)), picked)
    return picked


def _shape_ops(values: pa.Array, ops: Ops) -> pa.Array:
    """Picking and cutting: each, index, after, before, trim, null_if, split, replace, case."""
    if ops.each is not None:
        values = _each(values, ops.each)
    if ops.index is not None:
        values = _element(values, ops.index)
    if ops.after is not None or ops.before is not None or ops.trim is not None or ops.replace or ops.case:
        values = as_text(values)
    if ops.after is not None:
        values = _split(values, ops.after, after=True)
    if ops.before is not None:
        values = _split(values, ops.before, after=False)
    if ops.trim is not None:
        values = pc.utf8_trim(values, ops.trim) if ops.trim else pc.utf8_trim_whitespace(values)
    if ops.null_if:
        listed = pa.array([text_of(v) for v in ops.null_if], pa.string())
        values = nulled_where(pc.fill_null(pc.is_in(as_text(values), value_set=listed), FALSE), values)
    if ops.split is not None:
        values = _split_list(values, ops.split)
    if ops.replace:
        values = pc.replace_substring_regex(values, ops.replace[0], ops.replace[1])
    if ops.case:
        values = pc.utf8_lower(values) if ops.case == "lower" else pc.utf8_upper(values)
    return values


def _floor_div(whole: pa.Array, divisor: int) -> pa.Array:
    return pc.cast(pc.floor(pc.divide(pc.cast(whole, pa.float64()), float(divisor))), pa.int64())


def _number_ops(values: pa.Array, ops: Ops) -> pa.Array:
    """Decoding and arithmetic: decode, int_base, scale, div, mod."""
    if ops.decode:
        values = _decode(as_text(values), ops.decode)
    if ops.int_base is not None:
        text = as_text(values)
        base = ops.int_base
        values = _python_map(text, pc.is_valid(text), lambda v: _int_of(v, base), pa.int64())
    if ops.scale is not None:
        values = pc.cast(pc.floor(pc.multiply(_numeric(values), ops.scale)), pa.int64())
    if ops.div is not None or ops.mod is not None:
        whole = pc.cast(pc.floor(_numeric(values)), pa.int64())
        if ops.div is not None:
            whole = _floor_div(whole, ops.div)
        if ops.mod is not None:
            whole = pc.subtract(whole, pc.multiply(_floor_div(whole, ops.mod), ops.mod))
        values = whole
    return values


def _item_ops(ops: Ops) -> Ops:
    return Ops(trim=ops.trim, replace=ops.replace, case=ops.case, decode=ops.decode)


def _basename(values: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(as_text(values), r"^.*[/\\]", "")


def _per_item(values: pa.Array, ops: Ops) -> pa.Array:
    """Text transforms on each item of a list (after ``split``), then ``join``."""
    item_ops = _item_ops(ops)
    items = _number_ops(_shape_ops(pc.list_flatten(values), item_ops), item_ops)
    if ops.basename:
        items = _basename(items)
    values = pa.ListArray.from_arrays(values.offsets, items, mask=pc.is_null(values))
    return pc.binary_join(values, ops.join) if ops.join is not None else values


def apply_ops(values: pa.Array, ops: Ops, ref_ms: pa.Array) -> pa.Array:
    """The transforms of ``ops`` in their fixed order (``default`` is applied by the caller).
    With ``split`` or ``join`` the text transforms apply to each item of the list."""
    if ops.split is not None or ops.join is not None:
        outer = replace(ops, trim=None, replace=None, case=None, decode=None, basename=False)
        values = _shape_ops(values, outer)
        if pa.types.is_list(values.type):
            values = _per_item(values, ops)
        values = _number_ops(values, outer)
    else:
        values = _number_ops(_shape_ops(values, ops), ops)
        if ops.basename:
            values = _basename(values)
    if ops.map is not None:
        values = lookup(values, ops.map, ops.map_default, ops.ignore_case)
    if ops.time:
        values = parse_times(values, ops.time, ref_ms, ops.tz_minutes)
    return values


# -- tests ---------------------------------------------------------------------------------------
def _numeric(values: pa.Array) -> pa.Array:
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.float64())
    return _floats(as_text(values))[0]


def test(values: pa.Array, op: str, operand: Any, ignore_case: bool) -> pa.Array:
    """A boolean column (never null) for one test of a condition."""
    if op == "exists":
        present = pc.is_valid(values)
        return present if operand else pc.invert(present)
    if op in ("gt", "gte", "lt", "lte"):
        fn = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}[op]
        return pc.fill_null(fn(_numeric(values), scalar_of(float(operand), pa.float64())), FALSE)
    text = as_text(values)
    if op == "matches":
        return pc.fill_null(pc.match_substring_regex(text, operand, ignore_case=ignore_case), FALSE)
    if op in ("starts_with", "contains"):
        fn = pc.starts_with if op == "starts_with" else pc.match_substring
        return pc.fill_null(fn(text, operand, ignore_case=ignore_case), FALSE)
    wanted = [text_of(v) for v in (operand if op == "in" else [operand])]
    if ignore_case:
        text, wanted = pc.utf8_lower(text), [w.lower() for w in wanted]
    return pc.fill_null(pc.is_in(text, value_set=pa.array(wanted, pa.string())), FALSE)
