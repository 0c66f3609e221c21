"""Dead letters: records that could not be mapped, kept as ndjson with their tag, rule and reason,
and (with an s3:// ``dead_letter.location``) shipped from the spool to an object store.

Lines are appended to a local file and made durable by ``sync`` before the spool moves past the
chunk they came from. Each line carries the spool position of that chunk, so on recovery the lines
past the checkpoint are cut (those chunks are mapped again): a dead letter is never lost and never
written twice.

Local files: ``<dir>/<YYYYMMDD>.ndjson``, one per UTC day, kept.

Shipped files (``Rotation`` set): ``<dir>/<uuid7>.ndjson``, one per open period. ``rotate`` closes
the open file once it is ``max_age_secs`` old or ``max_bytes`` big; it is called only right after a
checkpoint, so a closed file holds no line past the checkpoint. ``DeadLetterShipper`` puts a closed
file as ``<prefix><YYYY>/<MM>/<DD>/<uuid7>.ndjson.gz`` (gzip, deterministic bytes; the date is the
file's creation day in UTC from its uuid7) and deletes it only after the put succeeded. The key
derives from the file name, so a crash between put and delete puts the same object again.
"""

from __future__ import annotations

__all__ = ["DeadLetterShipper", "DeadLetterWriter", "Rotation", "Shipped", "dead_letter_key"]

import base64
import contextlib
import gzip
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from securitylake_sink.lake.layout import uuid7
from securitylake_sink.mapping.basic import DeadLetter
from securitylake_sink.spool.wal import WalPosition, fsync_dir

if TYPE_CHECKING:
    from securitylake_sink.lake.store import ObjectStore

START = WalPosition(0, 0)
SUFFIX = ".ndjson"
SHIPPED_SUFFIX = ".ndjson.gz"
DAY_NAME = re.compile(r"^\d{8}\Z")  # local files: <YYYYMMDD>.ndjson
UUID7_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
UUID7_MS_SHIFT = 80
GZIP_LEVEL = 6  # ndjson compresses about tenfold at this level; higher levels gain little


def _utf8(text: str) -> str:
    try:  # bytes that were not UTF-8, kept by the decoders as surrogate escapes: U+FFFD
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate no decoder made (JSON "\ud800"): "?"
        return text.encode("utf-8", "replace").decode("utf-8")


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict):
        return {str(_json_safe(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def _created_ms(name: str) -> int | None:
    """Creation time (Unix ms) of a shipped-mode file named ``<uuid7>.ndjson``; None otherwise."""
    stem = name.removesuffix(SUFFIX)
    if not name.endswith(SUFFIX) or not UUID7_NAME.match(stem):
        return None
    return uuid.UUID(stem).int >> UUID7_MS_SHIFT


def dead_letter_key(prefix: str, name: str) -> str:
    """The object key of a closed dead-letter file: ``<prefix><YYYY>/<MM>/<DD>/<uuid7>.ndjson.gz``."""
    created = _created_ms(name)
    if created is None:
        raise ValueError(f"{name!r} is not a dead-letter file name (<uuid7>{SUFFIX})")
    day = datetime.fromtimestamp(created / 1000, tz=UTC).strftime("%Y/%m/%d")
    return f"{prefix}{day}/{name.removesuffix(SUFFIX)}{SHIPPED_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Rotation:
    """When a shipping writer closes its open file: at this age or size, whichever comes first."""

    max_age_secs: float
    max_bytes: int


class DeadLetterWriter:
    """Appends dead letters to a local directory; counts what it wrote; with a ``Rotation``,
    closes files for shipping."""

    def __init__(
        self, directory: Path, rotation: Rotation | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.dir = directory
        self.rotation = rotation
        self.clock = clock
        self._file: TextIO | None = None
        self._path: Path | None = None
        self._day = ""
        self._opened = 0.0  # clock() when the open file was created
        self._bytes = 0
        self._closed: list[Path] = []
        self.count = 0

    def recover(self, checkpoint: WalPosition) -> None:
        """Cut the lines of chunks past ``checkpoint`` from the newest files (after a crash)."""
        if not self.dir.is_dir():
            return
        names = sorted(self.dir.glob(f"*{SUFFIX}"))
        days = [p for p in names if DAY_NAME.match(p.name.removesuffix(SUFFIX))]
        shipped = [p for p in names if _created_ms(p.name) is not None]  # uuid7 names sort by time
        for path in days[-2:] + shipped[-2:]:
            with contextlib.suppress(FileNotFoundError):  # shipped meanwhile (a reset while running)
                self._cut_after(path, checkpoint)

    @staticmethod
    def _cut_after(path: Path, checkpoint: WalPosition) -> None:
        keep = 0
        with path.open("rb") as f:
            for line in f:
                try:
                    position = WalPosition(*json.loads(line)["spool_position"])
                except (ValueError, KeyError, TypeError):
                    break  # a torn last line, or a line written by hand: stop here
                if position > checkpoint:
                    break
                keep += len(line)
        if keep < path.stat().st_size:
            with path.open("r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())

    def closed_on_disk(self) -> list[Path]:
        """At start-up, after ``recover``: every file to ship, oldest first. All of them are wholly
        before the checkpoint. A day file (left from local dead letters) is renamed to a uuid7 name
        of its day first, which fixes its object key."""
        if not self.dir.is_dir():
            return []
        renamed = False
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            stem = path.name.removesuffix(SUFFIX)
            if DAY_NAME.match(stem):
                day = datetime.strptime(stem, "%Y%m%d").replace(tzinfo=UTC)
                path.replace(self.dir / f"{uuid7(int(day.timestamp() * 1000))}{SUFFIX}")
                renamed = True
        if renamed:
            fsync_dir(self.dir)
        return sorted(p for p in self.dir.glob(f"*{SUFFIX}") if _created_ms(p.name) is not None)

    def write(self, letters: Iterable[DeadLetter], position: WalPosition = START) -> None:
        """Append ``letters`` that came from chunks ending at spool ``position``; not yet durable."""
        now = time.time()
        day = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%d")
        for letter in letters:
            if self._file is None or (self.rotation is None and day != self._day):
                self._open(day)
            line = {
                "time": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds"),
                "tag": _json_safe(letter.tag),
                "rule": letter.rule,
                "reason": _json_safe(letter.reason),
                "event_time_ns": letter.time_ns,
                "spool_position": [position.segment, position.offset],
                "record": _json_safe(letter.record),
            }
            text = json.dumps(line, ensure_ascii=False) + "\n"
            assert self._file is not None
            self._file.write(text)
            self._bytes += len(text.encode("utf-8", "surrogateescape"))
            self.count += 1

    def _open(self, day: str) -> None:
        self.close()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = day if self.rotation is None else str(uuid7())
        self._path = self.dir / f"{name}{SUFFIX}"
        self._file = self._path.open("a", encoding="utf-8")
        fsync_dir(self.dir)  # the new name is durable before any line in it counts as written
        self._day = day
        self._opened = self.clock()
        self._bytes = 0

    def rotate(self, *, force: bool = False) -> None:
        """Close the open file for shipping when it is due (or ``force``); only with a Rotation.
        Call it only right after a checkpoint that passed every line written so far."""
        if self.rotation is None or self._file is None or self._path is None:
            return
        age = self.clock() - self._opened
        if force or age >= self.rotation.max_age_secs or self._bytes >= self.rotation.max_bytes:
            path = self._path
            self.close()
            self._closed.append(path)

    def reset(self, checkpoint: WalPosition) -> None:
        """After a failed pipeline step: let go of the open file (what it still buffers is past the
        checkpoint), cut its lines past ``checkpoint``; a shipping writer then ships it as closed."""
        path, self._path = self._path, None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.recover(checkpoint)
        if self.rotation is not None and path is not None and path.exists():
            self._closed.append(path)

    def take_closed(self) -> list[Path]:
        """The files ``rotate`` closed since the last call, oldest first."""
        closed, self._closed = self._closed, []
        return closed

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
            self._path = None


@dataclass(frozen=True, slots=True)
class Shipped:
    """One closed file stored: its key, lines, and the bytes of the object."""

    key: str
    lines: int
    size: int


class DeadLetterShipper:
    """Puts closed dead-letter files into a store under ``prefix``; a file is deleted only after
    its put succeeded (a failed put raises the store's DeliveryError and keeps the file)."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def describe(self) -> str:
        return self.store.describe()

    def ship(self, path: Path) -> Shipped | None:
        """Store one closed file and delete it; None when it is gone already or was empty."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data:  # recovery cut every line of it: nothing to store
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
            return None
        key = dead_letter_key(self.prefix, path.name)
        body = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)  # mtime=0: a retry stores the same bytes
        self.store.put(key, body)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return Shipped(key, data.count(b"\n"), len(body))
