"""The built-in mappings every config has: ``ocsf`` (records that carry ``class_uid`` pass through
with their derived fields filled) and ``base_event`` (any record as an OCSF Base Event, with the
original line in ``raw_data`` and its fields in ``unmapped``)."""

from __future__ import annotations

__all__ = ["PRODUCT", "DeadLetter", "MappedEvent", "Mapper"]

import fnmatch
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from securitylake_sink import __version__
from securitylake_sink.errors import MappingError, SchemaError
from securitylake_sink.model import Chunk, Entry
from securitylake_sink.ocsf.conform import conform_event, flatten, to_epoch_ms
from securitylake_sink.ocsf.schema import OcsfSchema, type_uid

PRODUCT = {"name": "securitylake-sink", "vendor_name": "securitylake-sink", "version": __version__}
LINE_FIELDS = ("log", "message")  # Fluent Bit's tail input and Vector's raw line
BASE_EVENT = 0


@dataclass(frozen=True, slots=True)
class MappedEvent:
    """One OCSF event, cast to its class schema, with its class and event time."""

    class_uid: int
    time_ms: int
    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be mapped, with the rule that tried and why it failed."""

    tag: str
    rule: str
    reason: str
    record: Mapping[str, Any]
    time_ns: int | None


def _entry_time_ms(entry: Entry, chunk: Chunk) -> int:
    if entry.time_ns is not None:
        return entry.time_ns // 1_000_000
    return (chunk.received_ns or time.time_ns()) // 1_000_000


class Mapper:
    """Turns chunks into OCSF events per the config's ``mappings`` (first matching tag glob wins)."""

    def __init__(self, schema: OcsfSchema, bindings: Sequence[tuple[str, str]] = ()) -> None:
        self.schema = schema
        self.bindings = tuple(bindings)

    def rule_for(self, tag: str, record: Mapping[str, Any]) -> str:
        for pattern, rule in self.bindings:
            if fnmatch.fnmatchcase(tag, pattern):
                return rule
        return "ocsf" if "class_uid" in record else "base_event"

    def map_chunks(
        self, chunks: Iterable[Chunk], locate: Callable[[int], str | None]
    ) -> tuple[list[tuple[str, MappedEvent]], list[DeadLetter]]:
        """Map every entry; ``locate`` gives a class's source location (None: not configured)."""
        events: list[tuple[str, MappedEvent]] = []
        dead: list[DeadLetter] = []
        for chunk in chunks:
            for entry in chunk.entries:
                rule = self.rule_for(chunk.tag, entry.record)
                try:
                    if rule == "ocsf":
                        event = self.pass_through(entry.record, _entry_time_ms(entry, chunk))
                    else:
                        event = self.base_event(chunk.tag, entry.record, _entry_time_ms(entry, chunk))
                    mapped = self.conform(event)
                    location = locate(mapped.class_uid)
                    if location is None:
                        raise MappingError(
                            f"class_uid: no destination.sources location is configured for class {mapped.class_uid}"
                        )
                    events.append((location, mapped))
                except MappingError as exc:
                    dead.append(DeadLetter(chunk.tag, rule, str(exc), entry.record, entry.time_ns))
        return events, dead

    def conform(self, event: dict[str, Any]) -> MappedEvent:
        row = conform_event(event, self.schema.arrow_schema(event["class_uid"]))
        return MappedEvent(event["class_uid"], row["time"], row)

    def _derive(self, event: dict[str, Any], class_uid: int) -> None:
        """Fill category, type, names and metadata the way OCSF derives them."""
        try:
            info = self.schema.class_info(class_uid)
        except SchemaError as exc:
            raise MappingError(f"class_uid: {exc}") from None
        activity = event.get("activity_id")
        if activity is None:
            given_type = event.get("type_uid")
            activity = given_type - class_uid * 100 if isinstance(given_type, int) else 0
        if not isinstance(activity, int) or isinstance(activity, bool):
            raise MappingError(f"activity_id: expected an integer, got {activity!r:.40}")
        expected_type = type_uid(class_uid, activity)
        if event.get("type_uid", expected_type) != expected_type:
            raise MappingError(
                f"type_uid: {event['type_uid']} does not match class_uid {class_uid} "
                f"and activity_id {activity} (expected {expected_type})"
            )
        if event.get("category_uid", info.category_uid) != info.category_uid:
            raise MappingError(
                f"category_uid: {event['category_uid']} is not the category of class {class_uid} ({info.category_uid})"
            )
        activity_name = info.activities.get(activity, "Other" if activity == 99 else "Unknown")
        event.update(
            class_uid=class_uid,
            activity_id=activity,
            type_uid=expected_type,
            category_uid=info.category_uid,
        )
        event.setdefault("class_name", info.caption)
        event.setdefault("category_name", info.category_name)
        event.setdefault("activity_name", activity_name)
        event.setdefault("type_name", f"{info.caption}: {activity_name}")
        severity = event.setdefault("severity_id", 0)
        severities = self.schema.enum(class_uid, "severity_id")
        if severities is not None and isinstance(severity, int):
            event.setdefault("severity", severities.values.get(severity, "Unknown"))
        metadata = dict(event.get("metadata") or {})
        metadata["version"] = self.schema.version
        metadata.setdefault("product", PRODUCT)
        event["metadata"] = metadata

    def pass_through(self, record: Mapping[str, Any], fallback_ms: int) -> dict[str, Any]:
        """A record that is OCSF already: derived fields filled, ``time`` as epoch ms."""
        event = dict(record)
        class_uid = event.get("class_uid")
        if isinstance(class_uid, str) and class_uid.isdigit():
            class_uid = int(class_uid)
        if not isinstance(class_uid, int) or isinstance(class_uid, bool):
            raise MappingError(f"class_uid: expected an integer, got {class_uid!r:.40}")
        event["time"] = to_epoch_ms(event["time"]) if event.get("time") is not None else fallback_ms
        self._derive(event, class_uid)
        return event

    def base_event(self, tag: str, record: Mapping[str, Any], time_ms: int) -> dict[str, Any]:
        """Any record as a Base Event: the line in ``raw_data``, the other fields in ``unmapped``."""
        line_field = next((f for f in LINE_FIELDS if isinstance(record.get(f), str)), None)
        unmapped: dict[str, str] = {}
        flatten({k: v for k, v in record.items() if k != line_field}, "", unmapped)
        event: dict[str, Any] = {
            "time": time_ms,
            "metadata": {"log_name": tag},
            "unmapped": unmapped,
        }
        if line_field is not None:
            event["raw_data"] = record[line_field]
        self._derive(event, BASE_EVENT)
        return event
