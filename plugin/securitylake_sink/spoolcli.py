"""``securitylake-sink spool ls|retry|drop``: what a spool holds, and its quarantine handled by hand.

None of them takes the spool's lock, so they work next to a running sink: ``ls`` only reads,
``retry`` renames a quarantined batch into ``sealed/`` (the running sink looks there every few
seconds; the next start does in any case), ``drop`` deletes quarantined items, which the sink
never reads again.
"""

from __future__ import annotations

__all__ = ["drop_items", "list_spool", "retry_items", "spool_state"]

import json
from pathlib import Path
from typing import Any, TextIO

from securitylake_sink.errors import SpoolCorrupt, SpoolError
from securitylake_sink.spool import quarantine
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.spool.quarantine import QuarantinedItem

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NO_CHECKPOINT = {"segment": 0, "offset": 0}


def _batches(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        entry: dict[str, Any] = {"id": path.name.removesuffix(SUFFIX), "bytes": 0}
        try:
            entry["bytes"] = path.stat().st_size
            batch = BatchFile.peek(path)
            entry |= {"key": batch.header.key, "class_uid": batch.header.class_uid, "rows": batch.rows}
        except FileNotFoundError:
            continue  # stored or moved while we looked
        except SpoolCorrupt as exc:
            entry["error"] = str(exc)
        failures = quarantine.read_failures(path)
        if failures is not None:
            entry["failures"] = failures.attempts
            entry["last_error"] = failures.last_error
        out.append(entry)
    return out


def _wal(path: Path) -> dict[str, Any]:
    """Log segments, their bytes, and the bytes past the checkpoint (not yet mapped)."""
    try:
        checkpoint = json.loads((path / "checkpoint").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        checkpoint = NO_CHECKPOINT
    sizes = {}
    for segment in (path / "wal").glob("*.wal"):
        if segment.stem.isdigit():
            try:
                sizes[int(segment.stem)] = segment.stat().st_size
            except FileNotFoundError:
                continue
    at, offset = int(checkpoint.get("segment", 0)), int(checkpoint.get("offset", 0))
    backlog = sum(size - (offset if seq == at else 0) for seq, size in sizes.items() if seq >= at)
    return {"segments": len(sizes), "bytes": sum(sizes.values()), "backlog_bytes": max(0, backlog),
            "checkpoint": {"segment": at, "offset": offset}}  # fmt: skip


def _item(item: QuarantinedItem) -> dict[str, Any]:
    return {"id": item.id, "kind": item.kind, "bytes": item.bytes, "reason": item.reason}


def spool_state(path: Path) -> dict[str, Any]:
    """Everything ``ls`` shows, as one JSON-ready dict."""
    return {
        "path": str(path),
        "wal": _wal(path),
        "open": _batches(path / "open"),
        "sealed": _batches(path / "sealed"),
        "quarantine": [_item(i) for i in quarantine.list_items(path)],
    }


def _detail(state: str, entry: dict[str, Any]) -> str:
    if state != "quarantine":
        text = entry.get("key", entry.get("error", ""))
        if "failures" in entry:
            text += f"  (rejected {entry['failures']}x: {entry['last_error']})"
        return str(text)
    reason = entry["reason"]
    if entry["kind"] == "wal_segment":
        return f"wal segment damaged at byte {reason.get('damaged_at')}: {reason.get('lost', '')}"
    attempts = f", {reason['attempts']} attempts" if "attempts" in reason else ""
    return f"{reason.get('cause', '?')}{attempts}: {reason.get('last_error', '')}  key {reason.get('key', '?')}"


def list_spool(path: Path, out: TextIO, err: TextIO, *, as_json: bool) -> int:
    """Print the spool's open, sealed and quarantined items and its log, as a table or JSON."""
    if not path.is_dir():
        print(f"error: no spool at {path}", file=err)
        return EXIT_FAILED
    state = spool_state(path)
    if as_json:
        print(json.dumps(state, indent=2), file=out)
        return EXIT_OK
    wal = state["wal"]
    print(f"spool {path}", file=out)
    print(f"  write-ahead log  {wal['segments']} segments, {wal['bytes']} bytes; "
          f"backlog (not yet mapped) {wal['backlog_bytes']} bytes", file=out)  # fmt: skip
    rows = [("STATE", "ID", "CLASS", "ROWS", "BYTES", "DETAIL")]
    for group in ("open", "sealed", "quarantine"):
        for entry in state[group]:
            reason = entry.get("reason", {})
            rows.append((
                group, entry["id"], str(entry.get("class_uid", reason.get("class_uid", "-"))),
                str(entry.get("rows", reason.get("rows", "-"))), str(entry["bytes"]), _detail(group, entry),
            ))  # fmt: skip
    if len(rows) == 1:
        print("  no batches and nothing quarantined", file=out)
        return EXIT_OK
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[5],
              file=out)  # fmt: skip
    return EXIT_OK


def _resolve(path: Path, ids: list[str], every: bool, err: TextIO) -> list[QuarantinedItem] | None:
    """The items named (all of them with ``every``); None after printing what is wrong."""
    if not path.is_dir():
        print(f"error: no spool at {path}", file=err)
        return None
    if every == bool(ids):
        print("error: name quarantined items by ID or give --all (not both)", file=err)
        return None
    if every:
        return quarantine.list_items(path)
    try:
        return [quarantine.find(path, item_id) for item_id in ids]
    except SpoolError as exc:
        print(f"error: {exc}; `securitylake-sink spool ls` lists them", file=err)
        return None


def retry_items(path: Path, ids: list[str], every: bool, out: TextIO, err: TextIO) -> int:
    """Move quarantined batches back to sealed/ for delivery; damaged log segments cannot be."""
    items = _resolve(path, ids, every, err)
    if items is None:
        return EXIT_USAGE if every == bool(ids) else EXIT_FAILED
    segments = [i for i in items if i.kind != "batch"]
    if segments and not every:
        print(f"error: {segments[0].id} is a damaged write-ahead-log segment: it cannot be delivered again "
              "(what was readable was mapped); inspect it or drop it", file=err)  # fmt: skip
        return EXIT_FAILED
    moved = 0
    for item in items:
        if item.kind == "batch":
            quarantine.retry(path, item)
            moved += 1
            print(f"{item.id}: back in sealed/", file=out)
    print(f"{moved} batch(es) queued for delivery: a running sink picks them up within a few seconds, "
          "otherwise the next start does", file=out)  # fmt: skip
    if segments:
        print(f"{len(segments)} damaged write-ahead-log segment(s) stay in quarantine (drop them when done)", file=out)
    return EXIT_OK


def drop_items(path: Path, ids: list[str], every: bool, *, yes: bool, answer: TextIO, out: TextIO, err: TextIO) -> int:
    """Delete quarantined items for good, after a confirmation read from ``answer`` unless ``yes``."""
    items = _resolve(path, ids, every, err)
    if items is None:
        return EXIT_USAGE if every == bool(ids) else EXIT_FAILED
    if not items:
        print("nothing is quarantined", file=out)
        return EXIT_OK
    rows = sum(int(i.reason.get("rows", 0)) for i in items)
    for item in items:
        print(f"{item.id}  {item.kind}  {item.bytes} bytes", file=out)
    if not yes:
        print(f"delete these {len(items)} item(s) ({rows} rows known) for good? [y/N] ", end="", file=out, flush=True)
        if answer.readline().strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=out)
            return EXIT_FAILED
    for item in items:
        quarantine.drop(item)
    print(f"deleted {len(items)} quarantined item(s)", file=out)
    return EXIT_OK
