"""Fit one event dict to a class's Arrow type: known fields cast, unknown ones moved to ``unmapped``.

A value that cannot be cast raises ``MappingError`` naming its dotted path, so the record goes
to the dead letters instead of being written half-valid.
"""

from __future__ import annotations

__all__ = ["conform_event", "flatten", "to_epoch_ms"]

import json
import math
from collections.abc import Mapping
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
        if path.rpartition(".")[2] == "time" or path.endswith("_time"):
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


def _value(value: Any, arrow_type: pa.DataType, path: str, unmapped: dict[str, str]) -> Any:
    if value is None:
        return None
    if pa.types.is_struct(arrow_type):
        if not isinstance(value, Mapping):
            raise MappingError(f"{path}: expected an object, got {type(value).__name__}")
        return _struct(value, arrow_type, path, unmapped)
    if pa.types.is_list(arrow_type):
        items = value if isinstance(value, list | tuple) else [value]
        return [_value(item, arrow_type.value_type, f"{path}.{i}", unmapped) for i, item in enumerate(items)]
    if pa.types.is_map(arrow_type):
        flat: dict[str, str] = {}
        flatten(value, "", flat)
        return list(flat.items())
    return _scalar(value, arrow_type, path)


def _struct(value: Mapping[str, Any], arrow_type: pa.StructType, path: str, unmapped: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        index = arrow_type.get_field_index(key) if isinstance(key, str) else -1
        child = f"{path}.{key}" if path else str(key)
        if index < 0:
            flatten(item, child, unmapped)
            continue
        out[key] = _value(item, arrow_type.field(index).type, child, unmapped)
    return out


def conform_event(event: Mapping[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """The event with every known attribute cast to its column type and the rest in ``unmapped``."""
    struct_type = pa.struct(list(schema))
    unmapped: dict[str, str] = {}
    given = event.get("unmapped")
    if given is not None:
        flatten(given, "", unmapped)
    body = {k: v for k, v in event.items() if k != "unmapped"}
    out = _struct(body, struct_type, "", unmapped)
    if unmapped:
        out["unmapped"] = list(unmapped.items())
    return out
