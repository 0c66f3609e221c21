"""The spool: everything the sink has acked and not yet stored lives here, on disk.

On-disk layout under ``spool.path``::

    lock                      flock held by the one process that owns this spool
    wal/<seq>.wal             intake write-ahead log: chunks exactly as received
    checkpoint                JSON {"segment", "offset"}: the log position up to which every
                              chunk has been mapped into batch files (or dead letters)
    open/<id>.batch           open batches, one per (location, class, event hour)
    sealed/<id>.batch         closed batches waiting to be stored; header holds the object key
    dead_letter/<day>.ndjson  records no mapping could take (unless dead_letter.location moves it)

Invariants:

1. A chunk is acked only after its record in ``wal/`` is fsynced (group commit: one fsync serves
   every append that arrived while the previous one ran).
2. The mapper consumes the log in order. Frames it appends to batch files carry the log
   position of their chunk; the batch files and dead letters are fsynced *before* the
   checkpoint moves past those chunks, and log segments wholly before the checkpoint are deleted.
3. A batch is sealed only right after a checkpoint, so a sealed batch holds no frame past the
   checkpoint. Its object key is fixed in its header when it is created.
4. A sealed batch is deleted only after its object is stored; storing the same key again
   replaces the object, so a crash between the put and the delete leaves no duplicate.

Recovery (``open``): cut a torn tail off the newest log segment; in every open batch cut a torn
tail and every frame past the checkpoint (those chunks are mapped again from the log);
then the mapper resumes at the checkpoint and sealed batches are stored.
"""

from __future__ import annotations

__all__ = ["Spool", "SpooledChunk"]

import fcntl
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgpack

from securitylake_sink.errors import SpoolCorrupt, SpoolError, SpoolLocked
from securitylake_sink.model import Chunk
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.spool.wal import WalPosition, WriteAheadLog, fsync_dir

log = logging.getLogger("securitylake_sink.spool")


@dataclass(frozen=True, slots=True)
class SpooledChunk:
    """A chunk read back from the log: its source kind, receive time, raw bytes, tag and meta.

    Records written before tag and meta were kept hold only the first three (``""``, ``{}``).
    """

    kind: str
    received_ns: int
    raw: bytes
    tag: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)


def encode_chunk(chunk: Chunk) -> bytes:
    """``[kind, received_ns, raw, tag, meta]`` as msgpack."""
    return bytes(
        msgpack.packb([chunk.kind, chunk.received_ns, chunk.raw, chunk.tag, dict(chunk.meta)], use_bin_type=True)
    )


def decode_chunk(payload: bytes) -> SpooledChunk:
    """Read a log record's chunk, old 3-item ones included."""
    item = msgpack.unpackb(payload, raw=False)
    if not isinstance(item, list) or len(item) not in (3, 5):
        raise SpoolCorrupt("a write-ahead log record is not a spooled chunk")
    if len(item) == 3:
        kind, received_ns, raw = item
        return SpooledChunk(kind, received_ns, raw)
    kind, received_ns, raw, tag, meta = item
    return SpooledChunk(kind, received_ns, raw, tag, meta)


class Spool:
    """The spool directory: its write-ahead log, checkpoint and batch files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wal = WriteAheadLog(path / "wal")
        self.open_dir = path / "open"
        self.sealed_dir = path / "sealed"
        self._lock: IO[bytes] | None = None
        self.checkpoint = WalPosition(0, 0)

    def open(self) -> tuple[list[BatchFile], list[BatchFile]]:
        """Lock, recover, and return the (open, sealed) batches found on disk."""
        try:
            for d in (self.path, self.open_dir, self.sealed_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._lock = (self.path / "lock").open("ab")
        except OSError as exc:
            raise SpoolError(f"cannot use spool.path {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolLocked(f"spool.path {self.path} is in use by another securitylake-sink process") from None
        self.checkpoint = self._read_checkpoint()
        self.wal.open()
        opened = [self._recover(p, self.checkpoint) for p in sorted(self.open_dir.glob(f"*{SUFFIX}"))]
        sealed = [self._recover(p, None) for p in sorted(self.sealed_dir.glob(f"*{SUFFIX}"))]
        return [b for b in opened if b is not None], [b for b in sealed if b is not None]

    def _recover(self, path: Path, checkpoint: WalPosition | None) -> BatchFile | None:
        try:
            return BatchFile.open(path, checkpoint)
        except SpoolCorrupt as exc:
            log.error("set aside a batch file that cannot be read", extra={"file": str(path), "reason": str(exc)})
            path.rename(path.with_suffix(".corrupt"))
            return None

    async def submit(self, chunk: Chunk) -> None:
        """Make a chunk durable; returns once it is fsynced (the caller may ack then)."""
        await self.wal.append(encode_chunk(chunk), chunk, weight=len(chunk.raw))

    def _read_checkpoint(self) -> WalPosition:
        path = self.path / "checkpoint"
        try:
            data = json.loads(path.read_text())
            return WalPosition(int(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            return WalPosition(0, 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolCorrupt(f"spool checkpoint {path} is unreadable: {exc}") from exc

    def write_checkpoint(self, position: WalPosition) -> None:
        """Durably move the checkpoint, then drop log segments wholly before it."""
        path = self.path / "checkpoint"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump({"segment": position.segment, "offset": position.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(self.path)
        self.checkpoint = position
        self.wal.release_before(position)

    def disk_bytes(self) -> int:
        """Bytes the spool holds on disk now (log and batches)."""
        total = 0
        for d in (self.wal.dir, self.open_dir, self.sealed_dir):
            for p in d.iterdir():
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    continue
        return total

    def close(self) -> None:
        self.wal.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
