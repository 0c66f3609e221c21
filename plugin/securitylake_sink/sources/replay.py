"""Replay: files (plain or gzip, told apart by their magic bytes) or stdin run through the same
spool, mapping and lake as live input, as chunks of kind ``replay``, with no network listener.
A record that cannot be read is skipped, reported with its file and line, and counted."""

from __future__ import annotations

__all__ = ["DEFAULT_CHUNK_RECORDS", "FORMATS", "KIND", "ReplayResult", "replay", "run_replay"]

import asyncio
import contextlib
import gzip
import io
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, TextIO, cast

from securitylake_sink.errors import Backpressure, ProtocolError, SinkError, SpoolLocked
from securitylake_sink.model import Chunk, Entry
from securitylake_sink.progress import DEFAULT_INTERVAL_SECS, Progress
from securitylake_sink.sources.body import decode_item
from securitylake_sink.sources.forward_codec import FrameReader

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from securitylake_sink.app import App
    from securitylake_sink.config import Config
    from securitylake_sink.spool import Spool

log = logging.getLogger("securitylake_sink.sources.replay")

KIND: Final = "replay"
DEFAULT_CHUNK_RECORDS: Final = 1000
MAX_CHUNK_BYTES: Final = 4 * 1024 * 1024  # a chunk also ends here, whatever its record count
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024  # a longer line or msgpack object is skipped
READ_BYTES: Final = 64 * 1024
GZIP_MAGIC: Final = b"\x1f\x8b"
IN_FLIGHT: Final = 4  # chunks being made durable while the next one is read
# Mapping and storing what was read may outlast the read; what is left stays in the spool.
FLUSH_TIMEOUT_SECS: Final = 3600.0
MAX_REPORTED: Final = 10  # skipped records named one by one; the rest are only counted
# --format → the body format of sources/body.py
FORMATS: Final = {"ndjson": "json_lines", "lines": "lines", "msgpack": "msgpack"}
STDIN: Final = "-"
EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class ReplayResult:
    """What a replay read, skipped and left in the lake (``clean``: nothing left in the spool)."""

    records: int = 0
    bytes_read: int = 0
    skipped: int = 0
    clean: bool = False
    objects: int = 0
    rows: int = 0
    dead_lettered: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(f"{where}: {reason}")


class _Counting(io.RawIOBase):
    """Counts the bytes read from the file itself (compressed, for gzip) for the progress."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._source.read(len(view))
        view[: len(data)] = data
        self.count += len(data)
        return len(data)


@contextlib.contextmanager
def _open(path: str, stdin: BinaryIO) -> Iterator[tuple[BinaryIO, _Counting]]:
    """The file's (decompressed) byte stream and its byte counter."""
    with contextlib.ExitStack() as stack:
        source = stdin if path == STDIN else stack.enter_context(Path(path).open("rb"))
        counting = _Counting(source)
        buffered = io.BufferedReader(counting, READ_BYTES)
        if buffered.peek(len(GZIP_MAGIC))[: len(GZIP_MAGIC)] == GZIP_MAGIC:
            yield cast(BinaryIO, stack.enter_context(gzip.GzipFile(fileobj=buffered, mode="rb"))), counting
        else:
            yield buffered, counting


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its end) — ``None`` for a line over MAX_RECORD_BYTES."""
    number = 0
    while line := stream.readline(MAX_RECORD_BYTES + 1):
        number += 1
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(READ_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        yield number, line.rstrip(b"\n").removesuffix(b"\r")


def _objects(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(object number, its bytes) of a msgpack stream; ProtocolError ends the file."""
    reader = FrameReader(MAX_RECORD_BYTES)
    number = 0
    while data := stream.read(READ_BYTES):
        reader.feed(data)
        for _, raw in reader.frames():
            number += 1
            yield number, raw
    if reader.pending_bytes:
        raise ProtocolError(f"the file ends inside msgpack object {number + 1}")


class _Reader:
    """Cuts the inputs into chunks, one input after another; runs on a worker thread."""

    def __init__(
        self, paths: Sequence[str], *, fmt: str, tag: str, chunk_records: int, progress: Progress, stdin: BinaryIO
    ) -> None:
        self.fmt, self.tag, self.chunk_records = FORMATS[fmt], tag, chunk_records
        self.paths, self.progress, self.stdin = paths, progress, stdin
        self.result = ReplayResult()

    def chunks(self) -> Iterator[Chunk]:
        done_bytes = 0
        for path in self.paths:
            name = "<stdin>" if path == STDIN else path
            with _open(path, self.stdin) as (stream, counting):
                yield from self._file_chunks(name, stream, counting, done_bytes)
                done_bytes += counting.count
            self.result.bytes_read = done_bytes

    def _file_chunks(self, name: str, stream: BinaryIO, counting: _Counting, done_bytes: int) -> Iterator[Chunk]:
        items = _objects(stream) if self.fmt == "msgpack" else _lines(stream)
        joiner = b"" if self.fmt == "msgpack" else b"\n"
        pieces: list[bytes] = []
        entries: list[Entry] = []
        size = 0
        try:
            for number, raw in items:
                where = f"{name}:{number}" if self.fmt != "msgpack" else f"{name} object {number}"
                new = self._decode(where, raw)
                if not new or raw is None:
                    continue
                pieces.append(raw)
                entries.extend(new)
                size += len(raw)
                if len(entries) >= self.chunk_records or size >= MAX_CHUNK_BYTES:
                    yield self._chunk(name, joiner.join(pieces), entries)
                    pieces, entries, size = [], [], 0
                self.progress.update(self.result.records, done_bytes + counting.count)
        except ProtocolError as exc:  # msgpack with no boundary left to resync on
            self.result.skip(name, f"{exc}; the rest of the file was skipped")
        if entries:
            yield self._chunk(name, joiner.join(pieces), entries)

    def _decode(self, where: str, raw: bytes | None) -> tuple[Entry, ...]:
        """One item's entries; a bad item is skipped, named and counted."""
        if raw is None:
            self.result.skip(where, f"longer than {MAX_RECORD_BYTES} bytes")
            return ()
        try:
            new = decode_item(raw, self.fmt)
        except ProtocolError as exc:
            self.result.skip(where, str(exc))
            return ()
        self.result.records += len(new)
        return new

    def _chunk(self, name: str, raw: bytes, entries: list[Entry]) -> Chunk:
        meta = {"format": self.fmt, "tag": self.tag, "shipper": "other", "date_key": "date", "file": name}
        return Chunk(kind=KIND, tag=self.tag, entries=tuple(entries), raw=raw, received_ns=time.time_ns(), meta=meta)


async def _submit(spool: Spool, chunk: Chunk) -> None:
    """Make one chunk durable, waiting out backpressure instead of dropping it."""
    while True:
        try:
            await spool.submit(chunk)
            return
        except Backpressure as exc:
            await asyncio.sleep(exc.retry_after_secs)


async def replay(
    config: Config,
    tag: str,
    fmt: str,
    paths: Sequence[str],
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    progress: Progress | None = None,
    stdin: BinaryIO | None = None,
) -> ReplayResult:
    """Read every input into the spool, then shut down: every chunk read is mapped and stored."""
    from securitylake_sink.app import App  # noqa: PLC0415 (the app imports every stage)

    for path in paths:
        if path != STDIN and not Path(path).is_file():
            raise SinkError(f"cannot replay {path}: no such file")
    progress = progress or Progress(sys.stderr)
    app = App(config, listen=False)
    try:
        await app.start()
    except SpoolLocked as exc:
        raise SpoolLocked(
            f"{exc}: stop the running sink first, or give the replay its own spool.path in a copy of the config"
        ) from None
    reader = _Reader(
        paths, fmt=fmt, tag=tag, chunk_records=chunk_records, progress=progress, stdin=stdin or sys.stdin.buffer
    )
    chunks = reader.chunks()
    pending: set[asyncio.Task[None]] = set()
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            if len(pending) >= IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(_submit(app.spool, chunk)))
        await asyncio.gather(*pending)
    finally:
        await asyncio.gather(*pending, return_exceptions=True)  # after an error: let them finish
        result = reader.result
        progress.finish(result.records, result.bytes_read)
        result.clean = await _flush(app, result.records, progress)
    result.objects, result.rows = app.counters.objects, app.counters.object_rows
    result.dead_lettered = app.counters.dead_lettered
    return result


async def _flush(app: App, records: int, progress: Progress) -> bool:
    """Shut the app down (map, seal and store everything), showing how far it got."""
    shutdown = asyncio.create_task(app.shutdown(timeout=FLUSH_TIMEOUT_SECS))
    while not shutdown.done():
        counters = app.counters
        progress.show(
            f"flushing: {counters.records_in:,} of {records:,} records mapped, "
            f"{counters.objects:,} objects ({counters.object_rows:,} rows) stored"
        )
        await asyncio.wait({shutdown}, timeout=progress.interval_secs)
    progress.end_line()
    return shutdown.result()


def run_replay(
    config: Config,
    tag: str,
    fmt: str,
    paths: Sequence[str],
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
    progress_secs: float = DEFAULT_INTERVAL_SECS,
    err: TextIO | None = None,
) -> int:
    """The ``replay`` command: run, report on stderr, and return the exit code."""
    err = err or sys.stderr
    progress = Progress(err, interval_secs=progress_secs, total_bytes=_total_bytes(paths))
    started = time.monotonic()
    try:
        result = asyncio.run(replay(config, tag, fmt, paths, chunk_records=chunk_records, progress=progress))
    except (SinkError, OSError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
    for problem in result.problems:
        print(f"skipped: {problem}", file=err)
    print(
        f"replayed {result.records:,} records from {len(paths)} input(s) in {time.monotonic() - started:.1f} s; "
        f"skipped {result.skipped:,}; lake: {result.objects:,} objects, {result.rows:,} rows; "
        f"dead letters: {result.dead_lettered:,}",
        file=err,
    )
    if not result.clean:
        print("warning: not everything was stored in time; it stays in the spool for the next run", file=err)
    return EXIT_OK if result.clean and not result.skipped else EXIT_FAILED


def _total_bytes(paths: Sequence[str]) -> int | None:
    """The inputs' size on disk, when every one is a regular file (not stdin)."""
    try:
        return sum(Path(p).stat().st_size for p in paths) if STDIN not in paths else None
    except OSError:
        return None
