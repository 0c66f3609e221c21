"""Dead letters: records that could not be mapped, kept as ndjson with their tag, rule and reason.

Lines are appended to ``<dir>/<YYYYMMDD>.ndjson`` and made durable by ``sync`` before the spool
moves past the chunk they came from. Each line carries the spool position of that chunk, so on
recovery the lines past the checkpoint are cut (those chunks are mapped again): a dead letter is
never lost and never written twice.
"""

from __future__ import annotations

__all__ = ["DeadLetterWriter"]

import base64
import json
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from securitylake_sink.mapping.basic import DeadLetter
from securitylake_sink.spool.wal import WalPosition

START = WalPosition(0, 0)


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_json_safe(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


class DeadLetterWriter:
    """Appends dead letters to a local directory; counts what it wrote."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._file: TextIO | None = None
        self._day = ""
        self.count = 0

    def recover(self, checkpoint: WalPosition) -> None:
        """Cut the lines of chunks past ``checkpoint`` from the newest files (after a crash)."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.ndjson"))[-2:]:
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

    def write(self, letters: Iterable[DeadLetter], position: WalPosition = START) -> None:
        """Append ``letters`` that came from chunks ending at spool ``position``; not yet durable."""
        now = time.time()
        day = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%d")
        for letter in letters:
            if self._file is None or day != self._day:
                self.close()
                self.dir.mkdir(parents=True, exist_ok=True)
                self._file = (self.dir / f"{day}.ndjson").open("a", encoding="utf-8")
                self._day = day
            line = {
                "time": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds"),
                "tag": letter.tag,
                "rule": letter.rule,
                "reason": letter.reason,
                "event_time_ns": letter.time_ns,
                "spool_position": [position.segment, position.offset],
                "record": _json_safe(letter.record),
            }
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.count += 1

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
