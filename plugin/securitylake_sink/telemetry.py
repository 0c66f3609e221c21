"""Telemetry: the fixed catalogue of Prometheus metrics (names, help and labels in one table, read
from a ``Snapshot`` of the running sink at scrape time) and the process's logging, as text or JSON.
"""

from __future__ import annotations

__all__ = [
    "CATALOGUE",
    "CONTENT_TYPE",
    "PREFIX",
    "UPLOAD_BUCKETS_SECS",
    "Histogram",
    "HistogramValue",
    "MetricSpec",
    "Snapshot",
    "credential_expiry",
    "reason_label",
    "render_metrics",
    "set_credential_expiry",
    "setup_logging",
    "tally",
]

import bisect
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from securitylake_sink import __version__

PREFIX: Final = "securitylake_sink_"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# A local put takes milliseconds, an S3 multipart put of a 256 MB object a minute or more.
UPLOAD_BUCKETS_SECS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Reason labels are bounded so a stream of odd records cannot grow the scrape without limit.
MAX_REASON_LABELS: Final = 64
OTHER_REASON: Final = "other"
_REASON_FIELD: Final = re.compile(r"^[A-Za-z_][\w.\[\]-]{0,63}$")


# -- values read at scrape time ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HistogramValue:
    """Cumulative bucket counts (upper bound, count), ending with +Inf; and the sum."""

    buckets: tuple[tuple[float, int], ...]
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


class Histogram:
    """Observations counted per bucket; ``observe`` is cheap and safe from any thread."""

    def __init__(self, bounds: Iterable[float] = UPLOAD_BUCKETS_SECS) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)  # the first bound with value <= bound
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def value(self) -> HistogramValue:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramValue(tuple(cumulative), total)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the running sink has counted, copied at scrape time; None means "not known here"."""

    records_received: Mapping[str, int] = field(default_factory=dict)  # by source
    records_mapped: int = 0
    records_dead_lettered: Mapping[str, int] = field(default_factory=dict)  # by reason
    records_dropped: Mapping[str, int] = field(default_factory=dict)  # by reason
    chunks_acked: Mapping[str, int] = field(default_factory=dict)  # by source
    chunks_deduplicated: int = 0
    http_requests: int = 0
    http_responses: Mapping[int, int] = field(default_factory=dict)  # by status code
    objects_delivered: Mapping[int, int] = field(default_factory=dict)  # by class_uid
    rows_delivered: Mapping[int, int] = field(default_factory=dict)
    bytes_delivered: Mapping[int, int] = field(default_factory=dict)
    upload_seconds: HistogramValue = field(default_factory=lambda: Histogram().value())
    delivery_retries: int = 0
    delivery_failures: Mapping[str, int] = field(default_factory=dict)  # by kind
    dead_letter_objects: int = 0
    dead_letter_failures: Mapping[str, int] = field(default_factory=dict)  # by kind
    spool_bytes: int = 0
    quarantined: Mapping[str, int] = field(default_factory=dict)  # set aside by this process, by kind
    quarantine_items: Mapping[str, int] = field(default_factory=dict)  # in quarantine/ now, by kind
    spool_oldest_age_secs: float | None = None
    backpressure_since: float | None = None  # Unix time; None while reading
    credential_expiry: float | None = None  # Unix time; None for file lakes
    forward_connections: int = 0
    forward_connections_refused: int = 0
    forward_open_connections: int = 0
    forward_protocol_errors: Mapping[str, int] = field(default_factory=dict)  # by reason
    start_time: float = 0.0


Samples = Mapping[tuple[str, ...], float]


def _bound_text(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it: ``0.25``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _one(value: float | None) -> Samples:
    return {} if value is None else {(): value}


def _by(values: Mapping[Any, int]) -> Samples:
    return {(str(key),): value for key, value in values.items()}


# -- the catalogue ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name (without ``PREFIX``; counters get ``_total``), type, help and labels."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    read: Callable[[Snapshot], Samples | HistogramValue]

    def family(self, snapshot: Snapshot) -> Metric:
        name, value = PREFIX + self.name, self.read(snapshot)
        if isinstance(value, HistogramValue):
            histogram = HistogramMetricFamily(name, self.help, labels=self.labels)
            buckets = [(_bound_text(bound), float(count)) for bound, count in value.buckets]
            histogram.add_metric([], buckets, value.sum)
            return histogram
        family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = family_type(name, self.help, labels=self.labels)
        for labels, sample in sorted(value.items()):
            family.add_metric(list(labels), sample)
        return family


CATALOGUE: Final[tuple[MetricSpec, ...]] = (
    # intake
    MetricSpec("records_received", "counter", "Records made durable in the spool, by source.", ("source",),
               lambda s: _by(s.records_received)),
    MetricSpec("chunks_acked", "counter", "Chunks acked to their shipper after they were durable, by source.",
               ("source",), lambda s: _by(s.chunks_acked)),
    MetricSpec("chunks_deduplicated", "counter",
               "Chunks acked again without being stored again: resends within the dedup window.", (),
               lambda s: _one(s.chunks_deduplicated)),
    MetricSpec("http_requests", "counter", "HTTP requests received by the http source.", (),
               lambda s: _one(s.http_requests)),
    MetricSpec("http_responses", "counter", "HTTP source answers, by status code.", ("code",),
               lambda s: _by(s.http_responses)),
    MetricSpec("forward_connections", "counter", "Forward connections accepted.", (),
               lambda s: _one(s.forward_connections)),
    MetricSpec("forward_connections_refused", "counter", "Forward connections refused: server full or closing.",
               (), lambda s: _one(s.forward_connections_refused)),
    MetricSpec("forward_open_connections", "gauge", "Forward connections open now.", (),
               lambda s: _one(s.forward_open_connections)),
    MetricSpec("forward_protocol_errors", "counter",
               "Forward connections closed for bad input or a failed handshake, by reason.", ("reason",),
               lambda s: _by(s.forward_protocol_errors)),
    # mapping
    MetricSpec("records_mapped", "counter", "Records mapped to an OCSF event and batched.", (),
               lambda s: _one(s.records_mapped)),
    MetricSpec("records_dead_lettered", "counter", "Records written to the dead letters, by reason.", ("reason",),
               lambda s: _by(s.records_dead_lettered)),
    MetricSpec("records_dropped", "counter", "Records dropped on purpose by configuration, by reason.", ("reason",),
               lambda s: _by(s.records_dropped)),
    # delivery
    MetricSpec("objects_delivered", "counter", "Parquet objects stored in the lake, by OCSF class.", ("class_uid",),
               lambda s: _by(s.objects_delivered)),
    MetricSpec("rows_delivered", "counter", "Rows in the Parquet objects stored, by OCSF class.", ("class_uid",),
               lambda s: _by(s.rows_delivered)),
    MetricSpec("bytes_delivered", "counter", "Bytes of the Parquet objects stored, by OCSF class.", ("class_uid",),
               lambda s: _by(s.bytes_delivered)),
    MetricSpec("upload_duration_seconds", "histogram", "Time to store one object in the lake (successful puts).",
               (), lambda s: s.upload_seconds),
    MetricSpec("delivery_retries", "counter", "Object store attempts that failed and are tried again.", (),
               lambda s: _one(s.delivery_retries)),
    MetricSpec("delivery_failures", "counter", "Failed object store attempts, by kind (retriable or permanent).",
               ("kind",), lambda s: _by(s.delivery_failures)),
    MetricSpec("dead_letter_objects", "counter",
               "Dead-letter files shipped as objects to an s3:// dead_letter.location.", (),
               lambda s: _one(s.dead_letter_objects)),
    MetricSpec("dead_letter_failures", "counter",
               "Failed attempts to ship a dead-letter file, by kind (retriable or permanent).", ("kind",),
               lambda s: _by(s.dead_letter_failures)),
    # spool and process
    MetricSpec("spool_bytes", "gauge", "Bytes the spool holds on disk: write-ahead log and batches.", (),
               lambda s: _one(s.spool_bytes)),
    MetricSpec("quarantined", "counter",
               "Items this process moved to the spool's quarantine/, by kind (batch, wal_segment).", ("kind",),
               lambda s: _by(s.quarantined)),
    MetricSpec("quarantine_items", "gauge", "Items in the spool's quarantine/ now, by kind (batch, wal_segment).",
               ("kind",), lambda s: _by(s.quarantine_items)),
    MetricSpec("spool_oldest_record_age_seconds", "gauge",
               "Age of the oldest batch the spool holds (open or waiting for delivery); 0 when empty.", (),
               lambda s: _one(s.spool_oldest_age_secs or 0.0)),
    MetricSpec("backpressure", "gauge", "1 while intake is paused because the spool is full, else 0.", (),
               lambda s: _one(0 if s.backpressure_since is None else 1)),
    MetricSpec("backpressure_since_timestamp_seconds", "gauge", "Unix time intake was paused; absent while reading.",
               (), lambda s: _one(s.backpressure_since)),
    MetricSpec("credential_expiry_timestamp_seconds", "gauge",
               "Unix time the lake credentials expire; absent for file lakes.", (),
               lambda s: _one(s.credential_expiry)),
    MetricSpec("start_time_seconds", "gauge", "Unix time the sink started.", (), lambda s: _one(s.start_time)),
    MetricSpec("build_info", "gauge", "Always 1; the version label names the running build.", ("version",),
               lambda s: {(__version__,): 1}),
)  # fmt: skip


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        for spec in CATALOGUE:
            yield spec.family(self._snapshot)


def render_metrics(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of every metric in the catalogue."""
    registry = CollectorRegistry(auto_describe=False)  # our own registry, never the global one
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


def reason_label(reason: str) -> str:
    """A bounded label for a free-text reason: the field it names (``"activity_id: …"``) or other."""
    head = reason.partition(":")[0].strip()
    return head if _REASON_FIELD.match(head) else OTHER_REASON


def tally(counts: dict[str, int], labels: Iterable[str]) -> None:
    """Count each label; past ``MAX_REASON_LABELS`` distinct labels new ones count as other."""
    for label in labels:
        key = label if label in counts or len(counts) < MAX_REASON_LABELS else OTHER_REASON
        counts[key] = counts.get(key, 0) + 1


class _ProcessGauges:
    """Values pushed by layers that own them (the S3 credentials), read at scrape time."""

    credential_expiry: float | None = None


_process = _ProcessGauges()


def set_credential_expiry(epoch_secs: float | None) -> None:
    """The S3 layer calls this whenever it gets new credentials (None: they do not expire)."""
    _process.credential_expiry = epoch_secs


def credential_expiry() -> float | None:
    return _process.credential_expiry


# -- logging ----------------------------------------------------------------------------------
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _utc(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``time level message key=value …``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower():7} {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            data.setdefault(key, value)  # a field never hides the line's own keys
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send the package's log lines to stderr as ``text`` or ``json`` at ``level`` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("securitylake_sink")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
