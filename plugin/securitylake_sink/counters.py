"""The sink's running counts: what went where, read by the metrics catalogue (telemetry.py)."""

from __future__ import annotations

__all__ = ["Counters"]

from dataclasses import dataclass, field

from securitylake_sink.telemetry import Histogram


@dataclass
class Counters:
    """What went where; ``records_in == mapped + dead_lettered + sum(dropped)`` once drained."""

    records_in: int = 0
    mapped: int = 0
    dead_lettered: int = 0
    objects: int = 0
    object_rows: int = 0
    object_bytes: int = 0
    delivery_failures: int = 0
    by_class: dict[int, int] = field(default_factory=dict)
    # For the metrics catalogue (telemetry.py), read at scrape time:
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # telemetry.reason_label
    dropped: dict[str, int] = field(default_factory=dict)  # by reason (mappings_fallback: drop)
    objects_by_class: dict[int, int] = field(default_factory=dict)
    bytes_by_class: dict[int, int] = field(default_factory=dict)
    delivery_retries: int = 0
    permanent_failures: int = 0
    delivery_failing: str | None = None  # the reason while the last attempt failed permanently
    upload_seconds: Histogram = field(default_factory=Histogram)
    backpressure_since: float | None = None  # Unix time intake paused on a full spool; None: reading
    dead_letter_objects: int = 0  # dead-letter files shipped to an s3:// dead_letter.location
    dead_letter_failures: dict[str, int] = field(default_factory=dict)  # failed ship attempts, by kind

    def stored(self, class_uid: int, rows: int, size: int) -> None:
        """Count one object stored in the lake."""
        self.objects += 1
        self.object_rows += rows
        self.object_bytes += size
        self.by_class[class_uid] = self.by_class.get(class_uid, 0) + rows
        self.objects_by_class[class_uid] = self.objects_by_class.get(class_uid, 0) + 1
        self.bytes_by_class[class_uid] = self.bytes_by_class.get(class_uid, 0) + size
