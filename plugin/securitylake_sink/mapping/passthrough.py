"""Records that are OCSF already (they carry ``class_uid``): derived fields filled
(``category_uid``, ``type_uid``, names, ``metadata.version``), cast to the class's Arrow type,
grouped by class, and validated like any mapped event."""

from __future__ import annotations

__all__ = ["map_ocsf"]

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import nulls, pruned_type
from securitylake_sink.errors import MappingError, SchemaError
from securitylake_sink.mapping.engine import PRODUCT, ClassRows, Outcome
from securitylake_sink.ocsf.conform import MILLIS_BELOW, SECONDS_BELOW, conform_event, is_time, to_epoch_ms
from securitylake_sink.ocsf.schema import OcsfSchema, type_uid
from securitylake_sink.ocsf.validate import validate


def _integer(value: Any, name: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MappingError(f"{name}: expected an integer, got {value!r:.40}")
    return value


def _derive(event: dict[str, Any], class_uid: int, schema: OcsfSchema) -> None:
    """Fill category, type, names and metadata the way OCSF derives them."""
    try:
        info = schema.class_info(class_uid)
    except SchemaError as exc:
        raise MappingError(f"class_uid: {exc}") from None
    activity = event.get("activity_id")
    if activity is None:
        given_type = event.get("type_uid")
        activity = given_type - class_uid * 100 if isinstance(given_type, int) else 0
    activity = _integer(activity, "activity_id")
    expected_type = type_uid(class_uid, activity)
    if event.get("type_uid", expected_type) != expected_type:
        raise MappingError(
            f"type_uid: {event['type_uid']} does not match class_uid {class_uid} "
            f"and activity_id {activity} (expected {expected_type})"
        )
    activity_name = info.activities.get(activity, "Other" if activity == 99 else "Unknown")
    event.update(class_uid=class_uid, activity_id=activity, type_uid=expected_type)
    event.setdefault("category_uid", info.category_uid)
    event.setdefault("class_name", info.caption)
    event.setdefault("category_name", info.category_name)
    event.setdefault("activity_name", activity_name)
    event.setdefault("type_name", f"{info.caption}: {info.activities.get(activity, activity_name)}")
    severity = event.setdefault("severity_id", 0)
    severities = schema.enum(class_uid, "severity_id")
    if severities is not None and isinstance(severity, int):
        event.setdefault("severity", severities.values.get(severity, "Unknown"))
    metadata = dict(event.get("metadata") or {})
    metadata["version"] = schema.version
    metadata.setdefault("product", PRODUCT)
    event["metadata"] = metadata


def _event(record: Mapping[str, Any], fallback_ms: int, schema: OcsfSchema) -> tuple[int, dict[str, Any]]:
    """The record with its time in epoch ms and its derived fields filled (not yet conformed)."""
    event = dict(record)
    class_uid = _integer(event.get("class_uid"), "class_uid")
    event["time"] = to_epoch_ms(event["time"]) if event.get("time") is not None else fallback_ms
    _derive(event, class_uid, schema)
    return class_uid, event


def _plain_type(t: pa.StructType, rows: Sequence[Mapping[str, Any]]) -> pa.StructType | None:  # noqa: C901, PLR0911, PLR0912
    """``t`` pruned to the fields ``rows`` hold, when Arrow can convert the rows as they are: every
    key an attribute of the class, objects as maps, times in epoch ms, ``unmapped`` flat strings.
    None otherwise: the rows then go through ``conform_event`` one by one."""
    keys: set[Any] = set().union(*rows)
    by_name = {f.name: f for f in t}
    if not keys <= by_name.keys():
        return None
    fields = []
    for f in t:
        if f.name not in keys:
            continue
        ft, name = f.type, f.name
        nested = pa.types.is_struct(ft) or pa.types.is_list(ft) or pa.types.is_map(ft)
        if nested or is_time(name):
            values = [v for row in rows if (v := row.get(name)) is not None]
            if not values:
                continue
            if pa.types.is_struct(ft):
                if any(type(v) is not dict for v in values):
                    return None
                inner = _plain_type(ft, values)
                if inner is None:
                    return None
                ft = inner
            elif pa.types.is_list(ft):
                if any(type(v) is not list for v in values):
                    return None
                if pa.types.is_struct(ft.value_type):
                    items = [item for v in values for item in v if item is not None]
                    if any(type(item) is not dict for item in items):
                        return None
                    inner = _plain_type(ft.value_type, items)
                    if inner is None:
                        return None
                    ft = pa.list_(pa.field(ft.value_field.name, inner))
            elif pa.types.is_map(ft):
                if any(type(v) is not dict or any(type(x) is not str for x in v.values()) for v in values):
                    return None
            elif any(type(v) is not int or not SECONDS_BELOW <= v < MILLIS_BELOW for v in values):
                return None  # a time that is not epoch ms: conform_event scales it
        fields.append(pa.field(name, ft, nullable=f.nullable))
    return pa.struct(fields)


def _narrow(events: list[dict[str, Any]], arrow_schema: pa.Schema) -> tuple[pa.StructType, pa.StructArray] | None:
    """The events converted by Arrow as they are, or None when they need ``conform_event``."""
    plain = _plain_type(pa.struct(list(arrow_schema)), events)
    if plain is None or not plain.num_fields:
        return None
    try:
        return plain, pa.array(events, type=plain)
    except (pa.ArrowException, TypeError, ValueError, UnicodeError, OverflowError):
        return None  # a value of another type: conform_event casts it or names it


def _to_batch(
    events: list[dict[str, Any]], arrow_schema: pa.Schema, narrow: pa.StructArray | None = None
) -> pa.RecordBatch:
    """Events as a record batch in a pruning of the class schema: converted with only the fields
    they hold (see ``columnar``)."""
    if narrow is None:
        pruned = pruned_type(pa.struct(list(arrow_schema)), events)
        narrow = pa.array(events, type=pruned) if pruned.num_fields else None
    if narrow is None:  # keep the row count
        return pa.RecordBatch.from_arrays([nulls(pa.null(), len(events))], names=[arrow_schema.field(0).name])
    return pa.RecordBatch.from_struct_array(narrow)


def _conformed(
    rows: list[int], events: list[dict[str, Any]], arrow_schema: pa.Schema, outcome: Outcome
) -> tuple[list[int], list[dict[str, Any]]]:
    """Each event cast by ``conform_event``; the ones that cannot be cast fail with the reason."""
    kept_rows, kept = [], []
    for row, event in zip(rows, events, strict=True):
        try:
            kept.append(conform_event(event, arrow_schema))
        except MappingError as exc:
            outcome.failed[row] = str(exc)
            continue
        kept_rows.append(row)
    return kept_rows, kept


def map_ocsf(records: Sequence[Mapping[str, Any]], ref_ms: Sequence[int], schema: OcsfSchema) -> Outcome:
    """OCSF records → one batch per class (validated); the rest failed with their reason."""
    outcome = Outcome()
    by_class: dict[int, tuple[list[int], list[dict[str, Any]]]] = defaultdict(lambda: ([], []))
    for row, (record, fallback) in enumerate(zip(records, ref_ms, strict=True)):
        try:
            class_uid, event = _event(record, fallback, schema)
        except MappingError as exc:
            outcome.failed[row] = str(exc)
            continue
        rows, events = by_class[class_uid]
        rows.append(row)
        events.append(event)
    for class_uid, (given_rows, given) in by_class.items():  # in the records' order, as rules map them
        rows, events = given_rows, given
        arrow_schema = schema.arrow_schema(class_uid)
        fast = _narrow(events, arrow_schema)
        if fast is None:
            rows, events = _conformed(rows, events, arrow_schema, outcome)
            if not events:
                continue
        batch = _to_batch(events, arrow_schema, None if fast is None else fast[1])
        verdict = validate(batch, schema, class_uid)
        for index, reason in verdict.reasons.items():
            outcome.failed[rows[index]] = reason
        picked = pa.array(rows, pa.int64())
        if verdict.reasons:
            good = pc.invert(verdict.bad)
            if good.true_count == 0:
                continue
            batch, picked = batch.filter(good), picked.filter(good)
        outcome.mapped.append(ClassRows(class_uid, batch, picked))
    return outcome
