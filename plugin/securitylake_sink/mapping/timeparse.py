"""Time columns → epoch milliseconds with ``pyarrow.compute``: epoch numbers (s/ms/µs/ns or by
magnitude), RFC 3339, RFC 3164 syslog time (year inferred from the record's transport time),
common log format, and strptime formats. Unparseable values come back null, never raise."""

from __future__ import annotations

__all__ = ["parse_times"]

from collections.abc import Sequence
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import FALSE, kept_where, nulled_where, scalar_of

MS_PER_DAY = 86_400_000
# Epoch values at or above these are taken as ms, µs and ns (1e11 s is the year 5138).
SECONDS_BELOW, MILLIS_BELOW, MICROS_BELOW = 1e11, 1e14, 1e17
_NUMBER = r"^\s*-?\d+(?:\.\d+)?\s*$"
_RFC3339 = r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?: ?(?:[Zz]|[+-]\d\d(?::?\d\d)?))?$"
_ZONED = r"(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"
_RFC3164 = r"^[A-Z][a-z][a-z] +\d\d? \d\d:\d\d:\d\d$"
_CLF = r"^\d\d/[A-Z][a-z][a-z]/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}$"
_MONTHS = pa.array(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"])
_EPOCH = datetime(1970, 1, 1)  # wall-clock arithmetic on purpose: no zone
_MM = pa.array([f"{m:02d}" for m in range(1, 13)])


def _null_ms(n: int) -> pa.Array:
    return pa.nulls(n, pa.int64())


def _as_text(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(values), pa.string())


def _numbers(values: pa.Array) -> pa.Array:
    """Numeric values as float64; numeric strings parsed; anything else null."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.float64(), safe=False)
    if pa.types.is_boolean(values.type) or pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.float64())
    text = _as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER), FALSE)
    return pc.cast(kept_where(ok, pc.utf8_trim_whitespace(text)), pa.float64())


def _epoch_ints(values: pa.Array, unit: str) -> pa.Array:
    """Integer epochs in integer arithmetic (ns values do not fit a double exactly)."""
    wide = pc.cast(values, pa.int64())
    if unit == "epoch":
        magnitude = pc.abs(wide)
        return pc.case_when(
            pc.make_struct(
                pc.less(magnitude, int(SECONDS_BELOW)),
                pc.less(magnitude, int(MILLIS_BELOW)),
                pc.less(magnitude, int(MICROS_BELOW)),
            ),
            pc.multiply(wide, 1000),
            wide,
            pc.divide(wide, 1000),
            pc.divide(wide, 1_000_000),
        )
    if unit == "epoch_s":
        return pc.multiply(wide, 1000)
    return wide if unit == "epoch_ms" else pc.divide(wide, 1000 if unit == "epoch_us" else 1_000_000)


def _epoch(values: pa.Array, unit: str) -> pa.Array:
    if pa.types.is_integer(values.type):
        return _epoch_ints(values, unit)
    numbers = _numbers(values)
    if unit == "epoch":
        magnitude = pc.abs(numbers)
        factor = pc.case_when(
            pc.make_struct(
                pc.less(magnitude, scalar_of(SECONDS_BELOW, magnitude.type)),
                pc.less(magnitude, scalar_of(MILLIS_BELOW, magnitude.type)),
                pc.less(magnitude, scalar_of(MICROS_BELOW, magnitude.type)),
            ),
            1000.0,
            1.0,
            0.001,
            0.000001,
        )
    else:
        factor = {"epoch_s": 1000.0, "epoch_ms": 1.0, "epoch_us": 0.001, "epoch_ns": 0.000001}[unit]
    return pc.cast(pc.floor(pc.multiply(numbers, factor)), pa.int64())


def _shift(ms: pa.Array, tz_minutes: int) -> pa.Array:
    """Local wall-clock ms at a fixed UTC offset → UTC ms."""
    return pc.subtract(ms, tz_minutes * 60_000) if tz_minutes else ms


def _ns_to_ms(ts: pa.Array) -> pa.Array:
    return pc.divide(pc.cast(ts, pa.int64()), scalar_of(1_000_000, pa.int64()))


def _python_iso(text: pa.Array, tz_minutes: int) -> pa.Array:
    """The slow path for ISO values Arrow's parser refused (years outside 1677..2262)."""
    out: list[int | None] = []
    for value in text.to_pylist():
        try:
            parsed = datetime.fromisoformat(value.replace(" +", "+").replace(" -", "-").replace(",", "."))
        except (AttributeError, ValueError):
            out.append(None)
            continue
        if parsed.tzinfo is None:
            out.append(_naive_ms(parsed) - tz_minutes * 60_000)
        else:
            out.append(round(parsed.timestamp() * 1000))
    return pa.array(out, pa.int64())


def _naive_ms(parsed: datetime) -> int:
    """Milliseconds from 1970-01-01 00:00 to a wall-clock time, with no zone involved."""
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def _rfc3339(values: pa.Array, tz_minutes: int) -> pa.Array:
    text = _as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(text, _RFC3339), FALSE)
    if ok.true_count == 0:
        return _null_ms(len(values))
    text = kept_where(ok, text)
    if pc.match_substring(text, " +").true_count > 0 or pc.match_substring(text, " -").true_count > 0:
        text = pc.replace_substring_regex(text, r" ([+-]\d\d(?::?\d\d)?)$", r"\1")
    text = pc.replace_substring(text, ",", ".")
    zoned = pc.fill_null(pc.match_substring_regex(text, _ZONED), FALSE)
    try:
        with_zone = _ns_to_ms(pc.cast(kept_where(zoned, text), pa.timestamp("ns", "UTC")))
        local = _ns_to_ms(pc.cast(nulled_where(zoned, text), pa.timestamp("ns")))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _python_iso(text, tz_minutes)
    return pc.coalesce(with_zone, _shift(local, tz_minutes))


def _rfc3164(values: pa.Array, ref_ms: pa.Array, tz_minutes: int) -> pa.Array:
    text = _as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(text, _RFC3164), FALSE)
    if ok.true_count == 0:
        return _null_ms(len(values))
    parts = pc.split_pattern(pc.replace_substring(kept_where(ok, text), "  ", " "), " ")
    month = pc.take(_MM, pc.index_in(pc.list_element(parts, 0), _MONTHS))
    day = pc.utf8_lpad(pc.list_element(parts, 1), 2, "0")
    hms = pc.list_element(parts, 2)
    ref_year = pc.year(pc.cast(ref_ms, pa.timestamp("ms")))

    def at_year(year: pa.Array) -> pa.Array:
        iso = pc.binary_join_element_wise(pc.cast(year, pa.string()), "-", month, "-", day, "T", hms, "")
        stamp = pc.cast(kept_where(pc.is_valid(month), iso), pa.timestamp("s"), safe=False)
        return _shift(pc.multiply(pc.cast(stamp, pa.int64()), 1000), tz_minutes)

    this_year = at_year(ref_year)
    # A December line read early in January belongs to the previous year.
    ahead = pc.fill_null(pc.greater(this_year, pc.add(ref_ms, 2 * MS_PER_DAY)), FALSE)
    if ahead.true_count == 0:
        return this_year
    return pc.if_else(ahead, at_year(pc.subtract(ref_year, 1)), this_year)


def _clf(values: pa.Array) -> pa.Array:
    text = _as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(text, _CLF), FALSE)
    if ok.true_count == 0:
        return _null_ms(len(values))
    text = kept_where(ok, text)

    def part(start: int, stop: int) -> pa.Array:
        return pc.utf8_slice_codeunits(text, start, stop)

    month = pc.take(_MM, pc.index_in(part(3, 6), _MONTHS))
    iso = pc.binary_join_element_wise(part(7, 11), "-", month, "-", part(0, 2), "T", part(12, 20), part(21, 26), "")
    return _ns_to_ms(pc.cast(iso, pa.timestamp("ns", "UTC")))


def _strptime(values: pa.Array, fmt: str, tz_minutes: int) -> pa.Array:
    text = _as_text(values)
    zoned = "%z" in fmt or "%Z" in fmt
    parsed = pc.strptime(text, format=fmt, unit="ms", error_is_null=True)
    ms = pc.cast(parsed, pa.int64())
    return ms if zoned else _shift(ms, tz_minutes)


def parse_times(values: pa.Array, formats: Sequence[str], ref_ms: pa.Array, tz_minutes: int = 0) -> pa.Array:
    """Epoch ms per row from the first format that parses it; null where none does."""
    n = len(values)
    if pa.types.is_timestamp(values.type):
        return pc.cast(pc.cast(values, pa.timestamp("ms", values.type.tz)), pa.int64())
    if values.null_count == n:  # also true when empty
        return _null_ms(n)
    result: pa.Array | None = None
    for fmt in formats:
        if result is not None:
            if result.null_count == values.null_count:
                break
            values = kept_where(pc.is_null(result), values)  # only what is still unparsed
        if fmt == "auto":
            step = pc.coalesce(_epoch(values, "epoch"), _rfc3339(values, tz_minutes))
        elif fmt.startswith("epoch"):
            step = _epoch(values, fmt)
        elif fmt == "rfc3339":
            step = _rfc3339(values, tz_minutes)
        elif fmt == "rfc3164":
            step = _rfc3164(values, ref_ms, tz_minutes)
        elif fmt == "clf":
            step = _clf(values)
        else:
            step = _strptime(values, fmt, tz_minutes)
        result = step if result is None else pc.coalesce(result, step)
    return result if result is not None else _null_ms(n)
