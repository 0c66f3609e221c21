"""The spool: everything the sink has acked and not yet stored lives here, on disk.

On-disk layout under ``spool.path``::

    lock                      flock held by the one process that owns this spool
    wal/<seq>.wal             intake write-ahead log: chunks exactly as received
    checkpoint                JSON {"segment", "offset"}: the log position up to which every
                              chunk has been mapped into batch files (or dead letters)
    tokens                    msgpack [[token, received_ns], ...]: recent chunk tokens, written
                              before log segments are released (resend deduplication)
    open/<id>.batch           open batches, one per (location, class, event hour)
    sealed/<id>.batch         closed batches waiting to be stored; header holds the object key
    sealed/<id>.failures      JSON: that batch's permanent rejections so far (count, first, last)
    scratch/<name>.parquet    an object's columns as pyarrow writes them, read back at once to
                              splice its footer (encode/parquet.py); emptied at open
    quarantine/<id>.batch     batches set aside: rejected permanently too often, or unreadable
    quarantine/<seq>.wal      log segments damaged before their end (the part before was mapped)
    quarantine/<id>.reason.json   why each item is there (quarantine.py; ``spool ls`` shows it)
    dead_letter/<day>.ndjson  records no mapping could take (unless dead_letter.location moves it)
    dead_letter/<uuid7>.ndjson  with an s3:// dead_letter.location: the same lines, one file per
                              period; closed files are shipped and deleted after the put
                              (deadletter.py)

Under ``run --workers N`` each worker owns a whole spool of this layout in
``<spool.path>/worker-<i>/``; ``securitylake_sink.workers`` says how spools left by a run with
another worker count are found and drained.

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

5. Resend deduplication: a chunk's token (the Forward ``chunk`` option) is kept in its log record.
   A chunk whose token (compared byte for byte) was made durable within the last ``dedup_secs``
   and is among the last ``dedup_tokens`` is acked again but not stored again. Chunks without
   a token are always stored. Message-mode tokens hash one record, so two identical records
   sent within the window share a token and the second is taken as a resend.
6. Backpressure: ``submit`` raises ``Backpressure`` while ``disk_bytes()`` (log segments plus
   batch files; a running figure) is at or above ``max_bytes``. Nothing is dropped: the source
   holds the chunk (Forward stops reading, HTTP answers 503) and tries again. Log segments are
   at most a quarter of ``max_bytes``, so mapped log bytes are released while intake waits; a
   full spool seals its open batches at once, so delivery can drain it.
7. Quarantine: nothing leaves the spool unstored except through ``quarantine/`` (or ``spool
   drop``). A sealed batch is quarantined only after permanent rejections (``PermanentDelivery``)
   reached ``delivery.max_attempts`` or lasted ``delivery.max_age_secs``; transient failures never
   count and retry forever. A permanent rejection counts only if the lake stored another object
   since this batch's previous rejection (or since it was first tried), so a destination that
   refuses everything sets nothing aside (delivery.py). The count is kept in
   ``sealed/<id>.failures`` (written before the next attempt), so it survives restarts. A batch
   that ``spool retry`` puts back into ``sealed/`` starts a fresh count; the running sink looks
   for such batches every few seconds.

Recovery (``open``): cut a torn tail off the newest log segment (a crash artefact, not damage);
in every open batch cut a torn tail and every frame past the checkpoint (those chunks are mapped
again from the log); move batch files that cannot be read, and sealed ones with any damage (they
were whole when sealed), to ``quarantine/``; rebuild the token set from the ``tokens`` file plus
every log segment still on disk; then the mapper resumes at the checkpoint and sealed batches are
stored. A pipeline step that fails while running (e.g. no space for the batch files) is undone
the same way without a restart: frames and dead letters past the checkpoint are cut, open batch
files created since it are deleted, and the mapper resumes at the checkpoint (app.py). When the
mapper meets a damaged record in an older segment (bad checksum or framing before the segment's
end), it maps the records before it, moves the segment to ``quarantine/`` with the offset of the
damage, and goes on with the next segment.
"""

from __future__ import annotations

__all__ = ["DEFAULT_DEDUP_SECS", "DEFAULT_DEDUP_TOKENS", "Spool", "SpooledChunk", "token_bytes"]

import asyncio
import fcntl
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import msgpack

from securitylake_sink.errors import Backpressure, SpoolCorrupt, SpoolError, SpoolLocked
from securitylake_sink.model import Chunk, DeferredEntries
from securitylake_sink.spool import quarantine
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.spool.wal import SEGMENT_BYTES, WalPosition, WriteAheadLog, fsync_dir, scan_records

log = logging.getLogger("securitylake_sink.spool")
# A chunk whose records are built (Python dicts and strings, and its wire bytes) takes about this
# many times its wire bytes in memory (5.3 measured for the benchmark's mixes); the log's cache
# weighs such chunks (HTTP bodies) by that estimate, Forward chunks with deferred records by their bytes.
DECODED_EXPANSION = 5



def _cache_weight(chunk: Chunk) -> int:
    """What a chunk kept in the log's cache takes in memory: its bytes, or several times that
    once its records are built."""
    deferred = isinstance(chunk.entries, DeferredEntries) and not chunk.entries.decoded
    return len(chunk.raw) * (1 if deferred else DECODED_EXPANSION)


DEFAULT_DEDUP_TOKENS: Final = 10_000
DEFAULT_DEDUP_SECS: Final = 3600.0
TOKENS_FILE: Final = "tokens"
# What a full spool tells its shippers to wait before they try again.
BACKPRESSURE_RETRY_SECS: Final = 1.0
NS_PER_SEC: Final = 1_000_000_000
# With a small spool.max_bytes the log rotates sooner, so mapped log bytes are released in time.
SEGMENTS_PER_LIMIT: Final = 4
MIN_SEGMENT_BYTES: Final = 64 * 1024


def token_bytes(token: str) -> bytes:
    """A chunk token as the bytes the shipper sent (sources decode them with surrogateescape)."""
    return token.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class SpooledChunk:
    """A chunk read back from the log: its source kind, receive time, raw bytes, tag, meta, token.

    Records written before tag and meta (or the token) were kept hold ``""``, ``{}`` (``None``).
    """

    kind: str
    received_ns: int
    raw: bytes
    tag: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)
    token: bytes | None = None


def encode_chunk(chunk: Chunk) -> bytes:
    """``[kind, received_ns, raw, tag, meta, token]`` as msgpack (token: bytes or nil). A tag or
    meta value holding bytes that were not UTF-8 (surrogate escapes) is kept as those bytes."""
    token = None if chunk.token is None else token_bytes(chunk.token)
    item = [chunk.kind, chunk.received_ns, chunk.raw, chunk.tag, dict(chunk.meta), token]
    return bytes(msgpack.packb(item, use_bin_type=True, unicode_errors="surrogateescape"))


def decode_chunk(payload: bytes | memoryview) -> SpooledChunk:
    """Read a log record's chunk, old 3- and 5-item ones included."""
    item = msgpack.unpackb(payload, raw=False, unicode_errors="surrogateescape")
    if not isinstance(item, list) or len(item) not in (3, 5, 6):
        raise SpoolCorrupt("a write-ahead log record is not a spooled chunk")
    if len(item) == 3:
        kind, received_ns, raw = item
        return SpooledChunk(kind, received_ns, raw)
    if len(item) == 5:
        kind, received_ns, raw, tag, meta = item
        return SpooledChunk(kind, received_ns, raw, tag, meta)
    kind, received_ns, raw, tag, meta, token = item
    return SpooledChunk(kind, received_ns, raw, tag, meta, token)


class _Tokens:
    """Recent durable chunk tokens, bounded by count and age; thread-safe (loop and pipeline)."""

    def __init__(self, max_count: int, max_age_secs: float) -> None:
        self.max_count = max_count
        self.max_age_ns = int(max_age_secs * NS_PER_SEC)
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # token -> received_ns, oldest first
        self._lock = threading.Lock()

    def add(self, token: bytes, received_ns: int) -> None:
        if self.max_count <= 0:
            return
        with self._lock:
            self._seen[token] = max(received_ns, self._seen.get(token, 0))
            self._seen.move_to_end(token)
            while len(self._seen) > self.max_count:
                self._seen.popitem(last=False)

    def seen(self, token: bytes, now_ns: int) -> bool:
        with self._lock:
            received_ns = self._seen.get(token)
            return received_ns is not None and now_ns - received_ns <= self.max_age_ns

    def prune(self, now_ns: int) -> None:
        with self._lock:
            while self._seen:
                token, received_ns = next(iter(self._seen.items()))
                if now_ns - received_ns <= self.max_age_ns:
                    break
                del self._seen[token]

    def snapshot(self) -> list[tuple[bytes, int]]:
        with self._lock:
            return list(self._seen.items())

    def __len__(self) -> int:
        return len(self._seen)


class Spool:
    """The spool directory: its write-ahead log, checkpoint, batch files and recent tokens."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        dedup_tokens: int = DEFAULT_DEDUP_TOKENS,
        dedup_secs: float = DEFAULT_DEDUP_SECS,
    ) -> None:
        self.path = path
        self.wal = WriteAheadLog(path / "wal")
        self.open_dir = path / "open"
        self.sealed_dir = path / "sealed"
        self.scratch_dir = path / "scratch"
        self.quarantine_dir = path / quarantine.QUARANTINE_DIR
        self.quarantined: dict[str, int] = {}  # items this process set aside, by kind
        self.wal.on_damaged = self._quarantine_segment
        self._lock: IO[bytes] | None = None
        self.checkpoint = WalPosition(0, 0)
        self.max_bytes = max_bytes
        if max_bytes is not None:  # mapped log bytes wait for their segment's release: keep it small
            self.wal.segment_bytes = max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, max_bytes // SEGMENTS_PER_LIMIT))
        self.tokens = _Tokens(dedup_tokens, dedup_secs)
        self._in_flight: dict[bytes, asyncio.Future[WalPosition]] = {}
        self.deduplicated = 0  # chunks acked again without being stored again
        self._batch_bytes = 0
        self.backpressure_since: float | None = None  # Unix time submit started refusing
        self.on_backpressure: Callable[[float | None], None] | None = None
        self._state = threading.Lock()  # backpressure starts and ends once (loop and pipeline thread)

    def open(self) -> tuple[list[BatchFile], list[BatchFile]]:
        """Lock, recover, and return the (open, sealed) batches found on disk."""
        try:
            for d in (self.path, self.open_dir, self.sealed_dir, self.scratch_dir, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._lock = (self.path / "lock").open("ab")
        except OSError as exc:
            raise SpoolError(f"cannot use spool.path {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolLocked(f"spool.path {self.path} is in use by another securitylake-sink process") from None
        for leftover in self.scratch_dir.iterdir():  # a crash while an object was written
            leftover.unlink(missing_ok=True)
        self.checkpoint = self._read_checkpoint()
        self.wal.open()
        self._recover_tokens()
        opened = [self._recover(p, self.checkpoint) for p in sorted(self.open_dir.glob(f"*{SUFFIX}"))]
        sealed = [self._recover(p, None, sealed=True) for p in sorted(self.sealed_dir.glob(f"*{SUFFIX}"))]
        quarantine.remove_orphan_failures(self.sealed_dir)
        self.refresh_batch_bytes()
        return [b for b in opened if b is not None], [b for b in sealed if b is not None]

    def _recover(self, path: Path, checkpoint: WalPosition | None, *, sealed: bool = False) -> BatchFile | None:
        try:
            return BatchFile.open(path, checkpoint, sealed=sealed)
        except SpoolCorrupt as exc:
            self.quarantine_batch(path, "corrupt", str(exc))
            return None

    def recover_open(self, path: Path, checkpoint: WalPosition) -> BatchFile | None:
        """An open batch file as ``open`` recovers it while running (after a failed pipeline step):
        every frame past ``checkpoint`` cut; None when it is unreadable (then quarantined)."""
        return self._recover(path, checkpoint)

    def adopt_sealed(self, path: Path) -> BatchFile | None:
        """A batch found in ``sealed/`` while running (put back by ``spool retry``); None when it
        is gone or unreadable (then quarantined again)."""
        try:
            return self._recover(path, None, sealed=True)
        except FileNotFoundError:
            return None

    # -- quarantine ----------------------------------------------------------------------
    def quarantine_batch(
        self, batch: BatchFile | Path, cause: str, error: str, failures: quarantine.Failures | None = None
    ) -> None:
        """Set a batch file aside in ``quarantine/`` with its reason (see quarantine.py)."""
        quarantine.quarantine_batch(self.path, batch, cause, error, failures)
        self.quarantined["batch"] = self.quarantined.get("batch", 0) + 1
        self.refresh_batch_bytes()

    def _quarantine_segment(self, segment_path: Path, offset: int) -> None:
        quarantine.quarantine_segment(self.path, segment_path, offset)
        self.quarantined["wal_segment"] = self.quarantined.get("wal_segment", 0) + 1

    # -- deduplication -------------------------------------------------------------------
    def _recover_tokens(self) -> None:
        """Rebuild recent tokens from the token file, then from every log segment on disk."""
        if self.tokens.max_count <= 0:
            return
        path = self.path / TOKENS_FILE
        try:
            saved = msgpack.unpackb(path.read_bytes(), raw=False)
            for token, received_ns in saved:
                self.tokens.add(bytes(token), int(received_ns))
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            log.warning("ignored an unreadable token file", extra={"file": str(path), "reason": str(exc)})
        for segment in self.wal.segments():
            for _, _, payload in scan_records(self.wal.segment_path(segment).read_bytes()):
                try:
                    spooled = decode_chunk(payload)
                except (SpoolCorrupt, ValueError, msgpack.UnpackException):
                    continue  # the mapper reports damaged records
                if spooled.token is not None:
                    self.tokens.add(spooled.token, spooled.received_ns)
        self.tokens.prune(time.time_ns())
        if len(self.tokens):
            log.info("recovered recent chunk tokens", extra={"tokens": len(self.tokens)})

    def _write_tokens(self) -> None:
        """Durably save the recent tokens (before the log segments holding them are deleted)."""
        self.tokens.prune(time.time_ns())
        path = self.path / TOKENS_FILE
        tmp = path.with_suffix(".tmp-tokens")
        with tmp.open("wb") as f:
            f.write(msgpack.packb([[t, ns] for t, ns in self.tokens.snapshot()], use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fsync_dir(self.path)

    # -- intake --------------------------------------------------------------------------
    async def submit(self, chunk: Chunk) -> None:
        """Make a chunk durable; returns once it is fsynced (the caller may ack then).

        A chunk whose token was made durable within the dedup window returns at once, stored
        once. Raises ``Backpressure`` while the spool is at ``max_bytes``.
        """
        token = None if chunk.token is None or self.tokens.max_count <= 0 else token_bytes(chunk.token)
        if token is not None:
            if self.tokens.seen(token, time.time_ns()):
                self.deduplicated += 1
                log.debug("acked a resent chunk again without storing it", extra={"token": chunk.token})
                return
            earlier = self._in_flight.get(token)
            if earlier is not None:  # the same chunk is being stored right now: share its result
                await asyncio.shield(earlier)
                self.deduplicated += 1
                return
        self._check_room()
        weight = _cache_weight(chunk)
        if token is None:
            await self.wal.append(encode_chunk(chunk), chunk, weight=weight)
            return
        # The append runs to its end even when this submit is cancelled (its connection closed):
        # a record that became durable always has its token remembered.
        append = asyncio.ensure_future(self.wal.append(encode_chunk(chunk), chunk, weight=weight))
        self._in_flight[token] = append
        received_ns = chunk.received_ns or time.time_ns()

        def remember(done: asyncio.Future[WalPosition]) -> None:
            self._in_flight.pop(token, None)
            if not done.cancelled() and done.exception() is None:
                self.tokens.add(token, received_ns)

        append.add_done_callback(remember)
        await asyncio.shield(append)

    # -- size and backpressure -----------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes the spool holds on disk: log segments and batch files (a running figure)."""
        return self.wal.disk_bytes() + self._batch_bytes

    def refresh_batch_bytes(self) -> None:
        """Recount the batch files (few and small in number); call after batches change."""
        total = 0
        for d in (self.open_dir, self.sealed_dir):
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    continue
        self._batch_bytes = total
        self._check_drained()

    def _full(self) -> bool:
        return self.max_bytes is not None and self.disk_bytes() >= self.max_bytes

    def _check_room(self) -> None:
        if not self._full():
            self._check_drained()
            return
        with self._state:
            if self.backpressure_since is None:
                self.backpressure_since = time.time()
                log.warning(
                    "the spool is full; intake is paused until it drains",
                    extra={"disk_bytes": self.disk_bytes(), "max_bytes": self.max_bytes},
                )
                if self.on_backpressure is not None:
                    self.on_backpressure(self.backpressure_since)
        raise Backpressure(
            f"the spool holds {self.disk_bytes()} bytes, at its limit spool.max_bytes={self.max_bytes}",
            retry_after_secs=BACKPRESSURE_RETRY_SECS,
        )

    def _check_drained(self) -> None:
        if self.backpressure_since is None:
            return
        with self._state:
            since = self.backpressure_since
            if since is None or self._full():
                return
            self.backpressure_since = None
            log.info(
                "the spool drained; intake resumed",
                extra={"paused_secs": round(time.time() - since, 3), "disk_bytes": self.disk_bytes()},
            )
            if self.on_backpressure is not None:
                self.on_backpressure(None)

    def has_room(self) -> bool:
        """Whether ``submit`` would take a chunk now (below ``max_bytes``)."""
        full = self._full()
        if not full:
            self._check_drained()
        return not full

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
        if self.tokens.max_count > 0 and self.wal.releasable_before(position):
            self._write_tokens()
        self.wal.release_before(position)

    def close(self) -> None:
        self.wal.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
