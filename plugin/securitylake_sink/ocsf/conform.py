"""Fit one event dict to a class's Arrow type: known fields cast, unknown ones moved to ``unmapped``.

A value that cannot be cast raises ``MappingError`` naming its dotted path, so the record goes
to the dead letters instead of being written half-valid.
"""

from __future__ import annotations

__all__ = ["conform_event", "flatten", "is_time", "to_epoch_ms"]

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from securitylake_sink.errors import MappingError

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
# Epoch values above these are taken as ms, µs and ns (1e11 s is the year 5138).
SECONDS_BELOW, MILLIS_BELOW, MICROS_BELOW = 10**11, 10**14, 10**17


def to_epoch_ms(value: Any, path: str = "time") -> int:  # noqa: PLR0911 (one return per input form)
    """Epoch s/ms/µs/ns (by magnitude), float seconds, or an RFC 3339 string → epoch ms."""
    if isinstance(value, bool):
        raise MappingError(f"{path}: expected a time, got a boolean")
    if isinstance(value, int):
        magnitude = abs(value)
        if magnitude < SECONDS_BELOW:
            return value * 1000
        if magnitude < MILLIS_BELOW:
            return value
        if magnitude < MICROS_BELOW:
            return value // 1000
        return value // 1_000_000
    if isinstance(value, float) and math.isfinite(value):
        return to_epoch_ms(int(value)) if abs(value) >= SECONDS_BELOW else round(value * 1000)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return to_epoch_ms(int(text), path)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise MappingError(f"{path}: {value!r} is not an epoch number or an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise MappingError(f"{path}: {value!r} has no time zone offset")
        return round(parsed.timestamp() * 1000)
    raise MappingError(f"{path}: expected a time, got {type(value).__name__}")


def flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    """Nested maps and lists → dotted keys with string values (``unmapped`` form)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            flatten(item, f"{prefix}.{index}" if prefix else str(index), out)
    elif value is not None:
        out[prefix] = _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(value) else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _integer(value: Any, path: str, limit: int) -> int:
    if isinstance(value, bool):
        raise MappingError(f"{path}: expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise MappingError(f"{path}: expected an integer, got {value!r:.60}")
    if not -limit - 1 <= value <= limit:
        raise MappingError(f"{path}: {value} does not fit in {limit.bit_length() + 1} bits")
    return value


def _scalar(value: Any, arrow_type: pa.DataType, path: str) -> Any:  # noqa: PLR0911 (one per type)
    if pa.types.is_string(arrow_type):
        if isinstance(value, Mapping | list | tuple):
            return json.dumps(value, default=_text, ensure_ascii=False)
        return _text(value)
    if pa.types.is_int32(arrow_type):
        return _integer(value, path, MAX_INT32)
    if pa.types.is_int64(arrow_type):
        if is_time(path.rpartition(".")[2]):
            return to_epoch_ms(value, path)
        return _integer(value, path, MAX_INT64)
    if pa.types.is_floating(arrow_type):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MappingError(f"{path}: expected a number, got {value!r:.60}") from None
    if pa.types.is_boolean(arrow_type):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise MappingError(f"{path}: expected true or false, got {value!r:.60}")
    if pa.types.is_timestamp(arrow_type):
        return to_epoch_ms(value, path)
    raise MappingError(f"{path}: no rule to cast into {arrow_type}")


# A converter casts one value to its column's Python form. ``parent`` and ``name`` give the
# dotted path lazily (built only for errors and nested objects); unknown keys go to ``unmapped``.
Convert = Callable[[Any, str, str, dict[str, str]], Any]


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _compile(arrow_type: pa.DataType, name: str) -> Convert:  # noqa: C901 (one converter per type)
    """The converter of a column of ``arrow_type`` whose attribute is called ``name``."""
    if pa.types.is_struct(arrow_type):
        return _compile_struct(arrow_type)
    if pa.types.is_list(arrow_type):
        item_convert = _compile(arrow_type.value_type, name)

        def convert_list(value: Any, parent: str, key: str, unmapped: dict[str, str]) -> Any:
            if value is None:
                return None
            path = _join(parent, key)
            items = value if isinstance(value, list | tuple) else [value]
            return [item_convert(item, path, str(i), unmapped) for i, item in enumerate(items)]

        return convert_list
    if pa.types.is_map(arrow_type):

        def convert_map(value: Any, parent: str, key: str, unmapped: dict[str, str]) -> Any:
            if value is None:
                return None
            flat: dict[str, str] = {}
            flatten(value, "", flat)
            return list(flat.items())

        return convert_map
    if pa.types.is_string(arrow_type):

        def convert_string(value: Any, parent: str, key: str, unmapped: dict[str, str]) -> Any:
            if type(value) is str and (value.isascii() or not _has_surrogates(value)):
                return value
            if value is None:
                return None
            return _scalar(value, arrow_type, _join(parent, key))

        return convert_string
    if pa.types.is_int32(arrow_type) or (pa.types.is_int64(arrow_type) and not is_time(name)):
        low, high = (-MAX_INT32 - 1, MAX_INT32) if pa.types.is_int32(arrow_type) else (-MAX_INT64 - 1, MAX_INT64)

        def convert_int(value: Any, parent: str, key: str, unmapped: dict[str, str]) -> Any:
            if type(value) is int and low <= value <= high:
                return value
            if value is None:
                return None
            return _scalar(value, arrow_type, _join(parent, key))

        return convert_int

    def convert_other(value: Any, parent: str, key: str, unmapped: dict[str, str]) -> Any:
        return None if value is None else _scalar(value, arrow_type, _join(parent, key))

    return convert_other


def is_time(name: str) -> bool:
    """Whether an int64 attribute named ``name`` holds a time (epoch ms): ``time`` and ``*_time``."""
    return name == "time" or name.endswith("_time")


def _compile_struct(arrow_type: pa.StructType) -> Convert:
    fields = {f.name: _compile(f.type, f.name) for f in arrow_type}

    def convert_struct(value: Any, parent: str, key: str, unmapped: dict[str, str]) -> Any:
        if value is None:
            return None
        path = _join(parent, key)
        if type(value) is not dict and not isinstance(value, Mapping):
            raise MappingError(f"{path}: expected an object, got {type(value).__name__}")
        out: dict[str, Any] = {}
        for child, item in value.items():
            convert = fields.get(child)  # keys that are not strings are never fields
            if convert is None:
                flatten(item, _join(path, str(child)), unmapped)
                continue
            out[child] = convert(item, path, child, unmapped)
        return out

    return convert_struct


_CONVERTERS: dict[int, tuple[pa.Schema, Convert]] = {}


def _converter(schema: pa.Schema) -> Convert:
    """The compiled converter of a class schema (kept for the life of the schema object)."""
    cached = _CONVERTERS.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = _CONVERTERS[id(schema)] = (schema, _compile_struct(pa.struct(list(schema))))
    return cached[1]


def conform_event(event: Mapping[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """The event with every known attribute cast to its column type and the rest in ``unmapped``."""
    unmapped: dict[str, str] = {}
    given = event.get("unmapped")
    if given is not None:
        flatten(given, "", unmapped)
    body = {k: v for k, v in event.items() if k != "unmapped"}
    out: dict[str, Any] = _converter(schema)(body, "", "", unmapped)
    if unmapped:
        out["unmapped"] = list(unmapped.items())
    return out
