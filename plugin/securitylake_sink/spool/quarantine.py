"""Quarantine: spool data set aside instead of lost, each item with a reason file.

    quarantine/<batch_id>.batch        a sealed batch the lake kept rejecting, or a batch file
                                       that cannot be read; the file as it was
    quarantine/<seq>.wal               a write-ahead-log segment damaged before its end, whole
    quarantine/<id>.reason.json        what it is, why it is here, when (never a secret)
    sealed/<batch_id>.failures         a sealed batch's permanent rejections so far (JSON), so
                                       ``delivery.max_attempts``/``max_age_secs`` count across restarts

The reason file is written and fsynced before its item is moved in, so every item has one.
``retry`` moves a batch back to ``sealed/`` (a running sink notices it there; the next start
does in any case) and forgets its failures; ``drop`` deletes an item and its reason. A damaged
segment cannot be retried: what was readable before its damage was mapped; the rest is kept
for inspection until dropped.
"""

from __future__ import annotations

__all__ = [
    "FAILURES_SUFFIX",
    "QUARANTINE_DIR",
    "REASON_SUFFIX",
    "Failures",
    "QuarantinedItem",
    "clear_failures",
    "count_items",
    "drop",
    "find",
    "list_items",
    "quarantine_batch",
    "quarantine_segment",
    "read_failures",
    "record_failure",
    "remove_orphan_failures",
    "retry",
]

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from securitylake_sink.errors import SpoolError
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.spool.wal import MAGIC, fsync_dir, scan_records

log = logging.getLogger("securitylake_sink.spool")

QUARANTINE_DIR: Final = "quarantine"
REASON_SUFFIX: Final = ".reason.json"
FAILURES_SUFFIX: Final = ".failures"
SEGMENT_SUFFIX: Final = ".wal"
Kind = Literal["batch", "wal_segment"]


def _utc(epoch_secs: float) -> str:
    return datetime.fromtimestamp(epoch_secs, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` whole or not at all (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# -- permanent rejections of a sealed batch -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Failures:
    """A sealed batch's permanent rejections: how many, the first and last (Unix time), the last error."""

    attempts: int
    first_failure: float
    last_failure: float
    last_error: str


def _failures_path(batch_path: Path) -> Path:
    return batch_path.with_suffix(FAILURES_SUFFIX)


def read_failures(batch_path: Path) -> Failures | None:
    """The failures recorded for the batch at ``batch_path``; None when none (or unreadable)."""
    try:
        data = json.loads(_failures_path(batch_path).read_text(encoding="utf-8"))
        return Failures(int(data["attempts"]), float(data["first_failure"]), float(data["last_failure"]),
                        str(data["last_error"]))  # fmt: skip
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a lost count only delays the quarantine


def record_failure(batch_path: Path, error: str, now: float | None = None) -> Failures:
    """Count one more permanent rejection of the batch; durable before it returns."""
    now = time.time() if now is None else now
    before = read_failures(batch_path)
    failures = Failures(
        attempts=1 if before is None else before.attempts + 1,
        first_failure=now if before is None else before.first_failure,
        last_failure=now,
        last_error=error,
    )
    _write_json(_failures_path(batch_path), asdict(failures))
    return failures


def clear_failures(batch_path: Path) -> None:
    _failures_path(batch_path).unlink(missing_ok=True)


def remove_orphan_failures(sealed_dir: Path) -> None:
    """Failure counts whose batch is gone (stored, then a crash before the count was removed)."""
    for path in sealed_dir.glob(f"*{FAILURES_SUFFIX}"):
        if not path.with_suffix(SUFFIX).exists():
            path.unlink(missing_ok=True)


# -- setting aside ------------------------------------------------------------------------------
def _move_in(spool_path: Path, item: Path, reason: dict[str, Any], stem: str, suffix: str) -> Path:
    """Write the reason, then move ``item`` into quarantine/ under a name not yet taken."""
    directory = spool_path / QUARANTINE_DIR
    directory.mkdir(exist_ok=True)
    name = stem
    if (directory / f"{name}{suffix}").exists():
        name = f"{stem}-{time.time_ns()}"
    reason = {"id": name, **reason, "quarantined_at": _utc(time.time())}
    _write_json(directory / f"{name}{REASON_SUFFIX}", reason)
    target = directory / f"{name}{suffix}"
    old_dir = item.parent
    item.replace(target)
    fsync_dir(directory)
    fsync_dir(old_dir)
    return target


def quarantine_batch(
    spool_path: Path, batch: BatchFile | Path, cause: str, error: str, failures: Failures | None = None
) -> Path:
    """Move a batch file into quarantine/ with its reason; ``cause`` is permanent_failure or corrupt."""
    path = batch if isinstance(batch, Path) else batch.path
    reason: dict[str, Any] = {"kind": "batch", "cause": cause, "file": path.name, "bytes": path.stat().st_size}
    if isinstance(batch, Path):
        with contextlib.suppress(SpoolError, OSError):  # what can still be read of a damaged file
            batch = BatchFile.peek(path)
    if isinstance(batch, BatchFile):
        header = batch.header
        reason |= {"key": header.key, "class_uid": header.class_uid, "ocsf_version": header.ocsf_version,
                   "rows": batch.rows}  # fmt: skip
    if failures is not None:
        reason |= {
            "attempts": failures.attempts,
            "first_failure": _utc(failures.first_failure),
            "last_failure": _utc(failures.last_failure),
        }
    reason["last_error"] = error
    target = _move_in(spool_path, path, reason, path.name.removesuffix(SUFFIX), SUFFIX)
    clear_failures(path)
    log.error(
        "quarantined a batch; delivery goes on with the next one",
        extra={"file": target.name, "cause": cause, "key": reason.get("key"), "reason": error},
    )
    return target


def _records_after(data: bytes, offset: int) -> int:
    """Whole, valid records found by resynchronising on the magic after ``offset``: a lower bound
    of the chunks lost with the rest of the segment (the damaged one itself not counted)."""
    found, pos = 0, data.find(MAGIC, offset + 1)
    while pos != -1:
        record = next(scan_records(data, pos), None)
        if record is None:
            pos = data.find(MAGIC, pos + 1)
            continue
        found += 1
        pos = data.find(MAGIC, record[1]) if record[1] < len(data) else -1
    return found


def quarantine_segment(spool_path: Path, segment_path: Path, offset: int) -> Path:
    """Move a log segment damaged at ``offset`` into quarantine/; its records before ``offset``
    have been mapped, the rest could not be read."""
    data = segment_path.read_bytes()
    after = _records_after(data, offset)
    reason = {
        "kind": "wal_segment",
        "cause": "corrupt",
        "segment": segment_path.name,
        "bytes": len(data),
        "damaged_at": offset,
        "lost_bytes": len(data) - offset,
        "intact_records_after_damage": after,
        "lost": f"the chunks in bytes {offset}-{len(data)} of the segment: the damaged one and at least "
        f"{after} more; the records before byte {offset} were mapped",
    }
    target = _move_in(spool_path, segment_path, reason, segment_path.stem, SEGMENT_SUFFIX)
    log.error(
        "quarantined a damaged write-ahead-log segment; mapping goes on with the next one",
        extra={"segment": segment_path.name, "damaged_at": offset, "lost_bytes": len(data) - offset},
    )
    return target


# -- what quarantine/ holds, for the CLI and metrics ---------------------------------------------
@dataclass(frozen=True, slots=True)
class QuarantinedItem:
    """One quarantined file: its id (the name without suffix), kind, path, size and reason."""

    id: str
    kind: Kind
    path: Path
    bytes: int
    reason: dict[str, Any]


def list_items(spool_path: Path) -> list[QuarantinedItem]:
    """Every quarantined batch and segment, oldest first."""
    directory = spool_path / QUARANTINE_DIR
    items = []
    try:
        paths = [p for p in directory.iterdir() if p.suffix in (SUFFIX, SEGMENT_SUFFIX)]
    except FileNotFoundError:
        return []
    for path in paths:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        item_id = path.name.removesuffix(path.suffix)
        try:
            reason = json.loads((directory / f"{item_id}{REASON_SUFFIX}").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            reason = {}
        kind: Kind = "batch" if path.suffix == SUFFIX else "wal_segment"
        items.append(QuarantinedItem(item_id, kind, path, size, reason if isinstance(reason, dict) else {}))
    return sorted(items, key=lambda i: (str(i.reason.get("quarantined_at", "")), i.id))


def count_items(spool_path: Path) -> dict[str, int]:
    """Quarantined items by kind (a directory listing; no file is opened)."""
    counts = {"batch": 0, "wal_segment": 0}
    try:
        for path in (spool_path / QUARANTINE_DIR).iterdir():
            if path.suffix == SUFFIX:
                counts["batch"] += 1
            elif path.suffix == SEGMENT_SUFFIX:
                counts["wal_segment"] += 1
    except FileNotFoundError:
        pass
    return counts


def find(spool_path: Path, item_id: str) -> QuarantinedItem:
    """The quarantined item ``item_id``; SpoolError naming the id when there is none."""
    for item in list_items(spool_path):
        if item.id == item_id:
            return item
    raise SpoolError(f"no quarantined item {item_id!r} in {spool_path / QUARANTINE_DIR}")


def retry(spool_path: Path, item: QuarantinedItem) -> Path:
    """Move a quarantined batch back to sealed/ with a fresh failure count; its reason goes."""
    if item.kind != "batch":
        raise SpoolError(
            f"{item.id} is a damaged write-ahead-log segment: it cannot be delivered again "
            "(what was readable was mapped); inspect it or drop it"
        )
    sealed = spool_path / "sealed"
    sealed.mkdir(parents=True, exist_ok=True)
    target = sealed / item.path.name
    clear_failures(target)
    item.path.replace(target)
    fsync_dir(sealed)
    fsync_dir(item.path.parent)
    (item.path.parent / f"{item.id}{REASON_SUFFIX}").unlink(missing_ok=True)
    return target


def drop(item: QuarantinedItem) -> None:
    """Delete a quarantined item and its reason for good."""
    item.path.unlink(missing_ok=True)
    (item.path.parent / f"{item.id}{REASON_SUFFIX}").unlink(missing_ok=True)
    fsync_dir(item.path.parent)
