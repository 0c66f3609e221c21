"""Progress of a long command on stderr: one ``\\r``-redrawn line on a terminal, plain lines every
few seconds otherwise (logs, CI). Records, bytes, rate and, when the total is known, ETA."""

from __future__ import annotations

__all__ = ["DEFAULT_INTERVAL_SECS", "Progress"]

import threading
import time
from typing import Final, TextIO

DEFAULT_INTERVAL_SECS: Final = 5.0  # between plain lines when the output is not a terminal
TTY_REFRESH_SECS: Final = 0.2  # between redraws of the terminal line
MIB: Final = 1024 * 1024


def _duration(secs: float) -> str:
    hours, rest = divmod(int(secs), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Thread-safe: ``update`` may be called from a reader thread, the rest from anywhere."""

    def __init__(
        self,
        out: TextIO,
        *,
        total_bytes: int | None = None,
        interval_secs: float = DEFAULT_INTERVAL_SECS,
        tty: bool | None = None,
    ) -> None:
        self._out = out
        self._total = total_bytes
        self._tty = out.isatty() if tty is None else tty
        self.interval_secs = TTY_REFRESH_SECS if self._tty else interval_secs
        self._started: float | None = None  # the first update starts the clock
        self._last = 0.0
        self._lock = threading.Lock()
        self._width = 0  # of the terminal line drawn last; 0 when none is open

    def update(self, records: int, bytes_read: int) -> None:
        """Show the counts if the last line is older than the interval."""
        now = time.monotonic()
        if self._started is None:
            self._started = self._last = now
        if now - self._last >= self.interval_secs:
            self.show(self.line(records, bytes_read, now), now)

    def line(self, records: int, bytes_read: int, now: float | None = None) -> str:
        """``12,000 records  3.2 MiB  8,000 records/s  40%  ETA 0:00:02  0:00:01 elapsed``"""
        now = now or time.monotonic()
        elapsed = max(now - (self._started or now), 1e-9)
        text = f"{records:,} records  {bytes_read / MIB:,.1f} MiB  {records / elapsed:,.0f} records/s"
        if self._total:
            done = min(bytes_read / self._total, 1.0)
            text += f"  {done:.0%}"
            if 0 < done < 1:
                text += f"  ETA {_duration(elapsed * (1 - done) / done)}"
        return text + f"  {_duration(elapsed)} elapsed"

    def show(self, text: str, now: float | None = None) -> None:
        """A status line now: it replaces the terminal line, or is printed as a line of its own."""
        with self._lock:
            self._last = now or time.monotonic()
            if self._tty:
                pad = " " * max(0, self._width - len(text))
                self._width = len(text)
                self._out.write(f"\r{text}{pad}")
                self._out.flush()
            else:
                print(f"progress: {text}", file=self._out, flush=True)

    def finish(self, records: int, bytes_read: int) -> None:
        """The final counts, always shown, and the terminal line ended."""
        self.show(self.line(records, bytes_read))
        self.end_line()

    def end_line(self) -> None:
        """End the terminal line, so what is printed next starts on a line of its own."""
        with self._lock:
            if self._tty and self._width:
                self._out.write("\n")
                self._out.flush()
                self._width = 0
