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

from securitylake_sink.columnar import nulls, prune_batch, pruned_type, widen, widen_batch
from securitylake_sink.errors import MappingError, SchemaError
from securitylake_sink.mapping.engine import PRODUCT, ClassRows, Outcome
from securitylake_sink.ocsf.conform import conform_event, to_epoch_ms
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
    event = dict(record)
    class_uid = _integer(event.get("class_uid"), "class_uid")
    event["time"] = to_epoch_ms(event["time"]) if event.get("time") is not None else fallback_ms
    _derive(event, class_uid, schema)
    return class_uid, conform_event(event, schema.arrow_schema(class_uid))


def _to_batch(events: list[dict[str, Any]], arrow_schema: pa.Schema) -> pa.RecordBatch:
    """Conformed events as a record batch of the class: converted with only the fields they hold,
    then widened to the full schema."""
    pruned = pruned_type(pa.struct(list(arrow_schema)), events)
    narrow = pa.array(events, type=pruned) if pruned.num_fields else None
    columns = [
        widen(narrow.field(f.name), f.type) if narrow is not None and pruned.get_field_index(f.name) >= 0
        else nulls(f.type, len(events))
        for f in arrow_schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


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
    for class_uid, (unsorted_rows, unsorted) in by_class.items():
        order = sorted(range(len(unsorted)), key=lambda i: unsorted[i]["time"])  # the batcher cuts hours
        rows, events = [unsorted_rows[i] for i in order], [unsorted[i] for i in order]
        batch = _to_batch(events, schema.arrow_schema(class_uid))
        verdict = validate(batch, schema, class_uid)
        for index, reason in verdict.reasons.items():
            outcome.failed[rows[index]] = reason
        picked = pa.array(rows, pa.int64())
        if verdict.reasons:
            good = pc.invert(verdict.bad)
            if not pc.any(good).as_py():
                continue
            # filtering the few columns that hold values beats filtering every struct of the class
            narrow = prune_batch(batch).filter(good)
            batch, picked = widen_batch(narrow, batch.schema).to_batches()[0], picked.filter(good)
        outcome.mapped.append(ClassRows(class_uid, batch, picked))
    return outcome
