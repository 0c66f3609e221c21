"""Batches: one open batch per (source location, class, event hour), and the flush policy
(age, size, shutdown). The mapper's per-class record batches are split by event hour and
appended to batch files in the spool.
"""

from __future__ import annotations

__all__ = ["Batcher", "LakeTarget"]

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.lake.layout import MS_PER_HOUR, object_key, uuid7
from securitylake_sink.mapping.mapper import MappedBatch
from securitylake_sink.ocsf.schema import OcsfSchema
from securitylake_sink.spool.batchfile import BatchFile, BatchHeader
from securitylake_sink.spool.wal import WalPosition

log = logging.getLogger("securitylake_sink.batch")

BatchKey = tuple[str, int, int]  # (location, class_uid, event hour)


def _by_hour(batch: pa.RecordBatch) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The rows of each event hour: zero-copy slices when the rows are sorted by time (logs mostly
    are), else each hour filtered out (the mapper's batches hold only the columns with values)."""
    if batch.num_rows == 0:
        return
    hours = pc.divide(batch.column("time"), MS_PER_HOUR)  # epoch ms → hour (times from 1970 on)
    first, last = pc.min_max(hours).values()
    if first == last:
        yield int(first.as_py()), batch
        return
    if pc.all(pc.greater_equal(hours.slice(1), hours.slice(0, len(hours) - 1))).as_py():
        starts = pc.indices_nonzero(pc.not_equal(hours.slice(1), hours.slice(0, len(hours) - 1))).to_pylist()
        bounds = [0, *(i + 1 for i in starts), batch.num_rows]
        for start, stop in itertools.pairwise(bounds):
            yield int(hours[start].as_py()), batch.slice(start, stop - start)
        return
    for hour in pc.unique(hours).to_pylist():
        yield int(hour), batch.filter(pc.equal(hours, hour))


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

    def add(self, batches: Iterable[MappedBatch], position: WalPosition) -> None:
        """Append mapped batches (each in its class schema) from chunks ending at ``position``,
        split by event hour; not yet durable."""
        for mapped in batches:
            for hour, part in _by_hour(mapped.batch):
                self._file_for((mapped.location, mapped.class_uid, hour)).append(part, position)

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
