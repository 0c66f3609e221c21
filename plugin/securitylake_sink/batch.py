"""Batches: one open batch per (source location, class, event hour), and the flush policy
(age, size, shutdown). Events are appended as Arrow record batches to batch files in the spool.
"""

from __future__ import annotations

__all__ = ["Batcher", "LakeTarget"]

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from securitylake_sink.lake.layout import MS_PER_HOUR, object_key, uuid7
from securitylake_sink.mapping.basic import MappedEvent
from securitylake_sink.ocsf.schema import OcsfSchema
from securitylake_sink.spool.batchfile import BatchFile, BatchHeader
from securitylake_sink.spool.wal import WalPosition

log = logging.getLogger("securitylake_sink.batch")

BatchKey = tuple[str, int, int]  # (location, class_uid, event hour)


@dataclass(frozen=True, slots=True)
class LakeTarget:
    """What object keys need besides the batch: the key prefix, region and account."""

    prefix: str
    region: str
    account_id: str


class Batcher:
    """Owns the open batch files; not thread-safe (the pipeline calls it from one thread)."""

    def __init__(
        self, schema: OcsfSchema, target: LakeTarget, open_dir: Path, *, max_age_secs: float, max_bytes: int
    ) -> None:
        self.schema = schema
        self.target = target
        self.open_dir = open_dir
        self.max_age_ns = int(max_age_secs * 1e9)
        self.max_bytes = max_bytes
        self.open: dict[BatchKey, BatchFile] = {}

    def adopt(self, batches: Iterable[BatchFile]) -> None:
        """Take over open batches recovered from disk."""
        for batch in batches:
            h = batch.header
            self.open[(h.location, h.class_uid, h.hour)] = batch

    def add(self, events: list[tuple[str, MappedEvent]], position: WalPosition) -> None:
        """Append (location, event) pairs from chunks ending at ``position``; not yet durable."""
        groups: dict[BatchKey, list[MappedEvent]] = defaultdict(list)
        for location, event in events:
            groups[(location, event.class_uid, event.time_ms // MS_PER_HOUR)].append(event)
        for key, members in groups.items():
            schema = self.schema.arrow_schema(key[1])
            record_batch = pa.RecordBatch.from_pylist([e.row for e in members], schema=schema)
            self._file_for(key).append(record_batch, position)

    def _file_for(self, key: BatchKey) -> BatchFile:
        batch = self.open.get(key)
        if batch is None:
            location, class_uid, hour = key
            name = str(uuid7())
            header = BatchHeader(
                batch_id=name,
                class_uid=class_uid,
                ocsf_version=self.schema.version,
                location=location,
                hour=hour,
                key=object_key(
                    self.target.prefix,
                    location,
                    region=self.target.region,
                    account_id=self.target.account_id,
                    hour=hour,
                    name=name,
                ),
                created_ns=time.time_ns(),
            )
            batch = self.open[key] = BatchFile.create(self.open_dir, header)
        return batch

    def sync(self) -> None:
        for batch in self.open.values():
            batch.sync()

    def due(self, now_ns: int | None = None, *, everything: bool = False) -> list[BatchFile]:
        """Remove and return the batches to flush: too old, too big, or all of them."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        keys = [
            key
            for key, batch in self.open.items()
            if everything or batch.bytes >= self.max_bytes or now_ns - batch.header.created_ns >= self.max_age_ns
        ]
        return [self.open.pop(key) for key in keys]

    def next_deadline_ns(self) -> int | None:
        if not self.open:
            return None
        return min(b.header.created_ns for b in self.open.values()) + self.max_age_ns
