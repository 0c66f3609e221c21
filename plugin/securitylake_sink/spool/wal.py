"""The intake write-ahead log: received bytes appended, fsynced in groups, read back in order.

Records are ``MAGIC | u32 length | u32 crc32(payload) | payload`` in segment files named by a
sequence number. ``append`` returns only after the record is on disk (one fsync serves every
append that arrived while the previous fsync ran). A torn record at the tail of the newest
segment is cut off on open; everything before it is kept. A damaged record in an older segment
is found by the reader: the records before it are handed out, then ``on_damaged`` moves the
segment away (the spool quarantines it) and reading goes on with the next segment.
"""

from __future__ import annotations

__all__ = ["WalPosition", "WriteAheadLog", "encode_record", "read_records", "scan_records"]

import asyncio
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, overload

from securitylake_sink.errors import SpoolCorrupt, SpoolError

log = logging.getLogger("securitylake_sink.spool")

MAGIC = b"W1"
HEADER = struct.Struct(">2sII")
SEGMENT_BYTES = 64 * 1024 * 1024
# Chunks kept in memory for the mapper (weighed by spool._cache_weight). A reader more than this
# behind reads from disk, and nothing is cached until it has caught up: a cache of the newest
# chunks would only hold ones evicted before the reader gets to them.
CACHE_BYTES = 16 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True, order=True, slots=True)
class WalPosition:
    """A point in the log: segment sequence number and byte offset within it."""

    segment: int
    offset: int


def encode_record(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@overload
def scan_records(data: bytes, start: int = 0) -> Iterator[tuple[int, int, bytes]]: ...


@overload
def scan_records(data: memoryview, start: int = 0) -> Iterator[tuple[int, int, memoryview]]: ...


def scan_records(data: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, int, bytes | memoryview]]:
    """Yield (offset, end, payload) of each whole, valid record; stop at the first bad one. Over a
    memoryview the payloads are views, not copies."""
    pos = start
    while pos + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if magic != MAGIC or length > MAX_RECORD_BYTES or end > len(data):
            return
        payload = data[pos + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            return
        yield pos, end, payload
        pos = end


def read_records(f: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """``scan_records`` over a file read from its current position a record at a time: only one
    record's bytes are held, not the whole file's."""
    pos = f.tell()
    while len(head := f.read(HEADER.size)) == HEADER.size:
        magic, length, crc = HEADER.unpack(head)
        if magic != MAGIC or length > MAX_RECORD_BYTES:
            return
        payload = f.read(length)
        if len(payload) != length or zlib.crc32(payload) != crc:
            return
        end = pos + HEADER.size + length
        yield pos, end, payload
        del payload  # not held while the next record is read
        pos = end


# A budgeted read takes this much more than its budget, so the records it cuts are few.
WINDOW_SLACK = 1024 * 1024


def _read_window(path: Path, start: int, stop: int, want: int | None) -> bytes:
    """Bytes ``start``..``stop`` of a segment; with ``want``, only about that many (whole records
    worth at least ``want`` bytes, or the first record whatever its size)."""
    with path.open("rb") as f:
        f.seek(start)
        if want is None or stop - start <= want + WINDOW_SLACK:
            return f.read(stop - start)
        data = f.read(want + WINDOW_SLACK)
        if len(data) >= HEADER.size:
            magic, length, _ = HEADER.unpack_from(data, 0)
            first_end = HEADER.size + length
            if magic == MAGIC and len(data) < first_end <= stop - start:  # a record longer than the window
                data += f.read(first_end - len(data))
        return data


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """Segments under one directory; one writer (this object), one reader cursor (the mapper)."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self._fd: int | None = None  # unbuffered: nothing of a failed write lingers in a buffer
        self._cut_pending = False  # a failed group's bytes could not be cut off yet
        self._segment = 0
        self._offset = 0  # the WAL thread's write position; may be ahead of what is durable
        self._durable_end = WalPosition(0, 0)
        self._segment_sizes: dict[int, int] = {}  # final sizes of segments no longer written
        self._pending: list[tuple[bytes, Any, asyncio.Future[WalPosition]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self._cache: deque[tuple[WalPosition, WalPosition, Any, int]] = deque()  # start, end, chunk, weight
        self._cache_bytes = 0
        self._reader_behind = False  # the cache overflowed: off until the reader reaches the end
        self.durable = asyncio.Event()  # set whenever new records become durable
        self.appended_bytes = 0
        # Moves a segment damaged before its end out of the log, given the path and the offset of
        # the damage (the spool's quarantine); None: reading it raises SpoolCorrupt.
        self.on_damaged: Callable[[Path, int], None] | None = None

    # -- opening and recovery ------------------------------------------------------------
    def open(self) -> None:
        """Create the directory, cut a torn tail off the newest segment, start a new one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        segments = self.segments()
        for segment in segments[:-1]:
            self._segment_sizes[segment] = self.segment_path(segment).stat().st_size
        if segments:
            last = segments[-1]
            path = self.segment_path(last)
            data = path.read_bytes()
            good = 0
            for _, end, _ in scan_records(data):
                good = end
            if good < len(data):
                log.warning(
                    "cut a torn record off the spool's write-ahead log",
                    extra={"segment": path.name, "kept_bytes": good, "cut_bytes": len(data) - good},
                )
                with path.open("r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            self._segment_sizes[last] = good
        self._segment = (segments[-1] + 1) if segments else 1
        self._open_segment()
        self._durable_end = WalPosition(self._segment, self._offset)

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.wal") if p.stem.isdigit())

    def segment_path(self, segment: int) -> Path:
        return self.dir / f"{segment:020d}.wal"

    def _open_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.segment_path(self._segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._offset = os.fstat(self._fd).st_size
        fsync_dir(self.dir)

    @property
    def end(self) -> WalPosition:
        """The position after the last durable record (moves only on the event loop)."""
        return self._durable_end

    # -- appending -----------------------------------------------------------------------
    async def append(self, payload: bytes, decoded: Any = None, weight: int = 0) -> WalPosition:
        """Append one record; returns its end position once it is on disk.

        ``decoded`` (the chunk the payload came from) is cached for the reader so the live
        path does not read the log back; ``weight`` is its size for the cache bound.
        """
        future: asyncio.Future[WalPosition] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, (decoded, weight), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        return await future

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            try:
                spans = await loop.run_in_executor(self._io, self._write_group, [p for p, _, _ in group])
            except OSError as exc:
                error = SpoolError(f"cannot write the spool's write-ahead log: {exc.strerror or exc}")
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            if spans:
                self._durable_end = spans[-1][1]
            for (start, end), (_, (decoded, weight), future) in zip(spans, group, strict=True):
                if decoded is not None and not self._reader_behind:
                    self._cache.append((start, end, decoded, weight))
                    self._cache_bytes += weight
                if not future.done():
                    future.set_result(end)
            if self._cache_bytes > CACHE_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
                self._reader_behind = True
            self.durable.set()

    def _write_group(self, payloads: list[bytes]) -> list[tuple[WalPosition, WalPosition]]:
        """Runs on the WAL thread: write, fsync, rotate. On error, cut back to the old end."""
        assert self._fd is not None
        start_offset = offset = self._offset
        spans = []
        records = []
        for payload in payloads:
            record = encode_record(payload)
            records.append(record)
            spans.append((WalPosition(self._segment, offset), WalPosition(self._segment, offset + len(record))))
            offset += len(record)
        data = memoryview(b"".join(records))
        try:
            if self._cut_pending:  # never append behind bytes of a group that was not acked
                os.ftruncate(self._fd, start_offset)
                self._cut_pending = False
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError:
            try:  # leave no half-written record behind the durable ones
                os.ftruncate(self._fd, start_offset)
            except OSError:
                self._cut_pending = True
                log.exception("cannot cut back the write-ahead log after a failed write; will retry")
            raise
        self._offset = offset
        self.appended_bytes += self._offset - start_offset
        if self._offset >= self.segment_bytes:
            self._segment_sizes[self._segment] = self._offset
            self._segment += 1
            self._open_segment()
        return spans

    # -- reading -------------------------------------------------------------------------
    def take_cached(self, cursor: WalPosition, limit: int) -> list[tuple[WalPosition, Any]]:
        """Cached chunks that follow ``cursor`` contiguously, with their end positions. A reader
        at the end of the log turns the cache back on after it overflowed."""
        if self._reader_behind and cursor >= self._durable_end:
            self._reader_behind = False
        while self._cache and self._cache[0][0] < cursor:
            self._cache_bytes -= self._cache.popleft()[3]
        out: list[tuple[WalPosition, Any]] = []
        expected = cursor
        for start, end, decoded, _ in self._cache:
            if len(out) >= limit or not self._follows(expected, start):
                break
            out.append((end, decoded))
            expected = end
        return out

    def _follows(self, cursor: WalPosition, start: WalPosition) -> bool:
        """Whether a record starting at ``start`` is the next one after ``cursor``: the same
        place, or the start of the next segment when ``cursor`` is at the end of its own."""
        if start == cursor:
            return True
        return (start.offset == 0 and start.segment == cursor.segment + 1
                and self._segment_sizes.get(cursor.segment) == cursor.offset)

    def read_from(
        self, cursor: WalPosition, limit: int, max_bytes: int | None = None
    ) -> tuple[list[tuple[WalPosition, bytes | memoryview]], WalPosition]:
        """Up to ``limit`` durable records from disk after ``cursor`` (and, with ``max_bytes``, no
        more records once that many payload bytes are read; at least one), and the durable end that
        bounded the read (blocking; call off the loop)."""
        out: list[tuple[WalPosition, bytes | memoryview]] = []
        end = self._durable_end
        budget = max_bytes if max_bytes is not None else float("inf")
        for segment in self.segments():
            if segment > end.segment:
                break  # written, maybe not yet durable: never hand it out before its fsync
            if segment < cursor.segment or len(out) >= limit or budget <= 0:
                continue
            path = self.segment_path(segment)
            start = cursor.offset if segment == cursor.segment else 0
            stop = end.offset if segment == end.segment else path.stat().st_size
            data = _read_window(path, start, stop, None if max_bytes is None else int(budget))
            if start + len(data) < stop and next(scan_records(data), None) is None:
                data = _read_window(path, start, stop, None)  # no whole record in the window: look at all
            whole = start + len(data) >= stop  # the read reached the end of what is durable
            last = start
            for _, rec_end, payload in scan_records(memoryview(data)):  # views: no second copy
                out.append((WalPosition(segment, start + rec_end), payload))
                last = start + rec_end
                budget -= len(payload)
                if len(out) >= limit or budget <= 0:
                    break
            if not whole:
                break  # the budget's window ends inside this segment: the next read goes on from here
            if len(out) < limit and budget > 0 and last < stop and segment != end.segment:
                if self.on_damaged is None:
                    raise SpoolCorrupt(f"spool segment {path.name} is damaged at byte {last}")
                if last > start:
                    break  # the records before the damage are mapped first; the next read sets it aside
                self.on_damaged(path, last)
                self._segment_sizes.pop(segment, None)
        return out, end

    def disk_bytes(self) -> int:
        """Durable bytes of every segment on disk (from recorded sizes; no file system calls)."""
        end = self._durable_end
        closed = sum(size for segment, size in list(self._segment_sizes.items()) if segment != end.segment)
        return closed + end.offset

    def releasable_before(self, cursor: WalPosition) -> bool:
        """Whether ``release_before(cursor)`` would delete a segment."""
        return any(segment < cursor.segment and segment != self._segment for segment in self.segments())

    def release_before(self, cursor: WalPosition) -> None:
        """Delete the segments wholly before ``cursor``: their records are in batch files."""
        for segment in self.segments():
            if segment < cursor.segment and segment != self._segment:
                self.segment_path(segment).unlink(missing_ok=True)
                self._segment_sizes.pop(segment, None)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._io.shutdown(wait=True)
