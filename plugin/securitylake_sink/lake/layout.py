"""Security Lake object keys: ``<location>region=<r>/accountId=<a>/eventDay=<YYYYMMDD>/<uuid7>.parquet``."""

from __future__ import annotations

__all__ = ["event_day", "object_key", "uuid7"]

import os
import threading
import time
import uuid
from datetime import UTC, datetime

MS_PER_HOUR = 3_600_000


_RAND_BITS = 74  # rand_a (12) and rand_b (62)
_last: tuple[int, int] = (-1, 0)  # (ms, random) of the last uuid7 this process made
_lock = threading.Lock()


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond time, version, 74 random bits; sorts by time.

    Without ``unix_ms`` the ids one process makes are strictly increasing, within a millisecond
    too: one made in the same millisecond as (or, the clock stepping back, before) the last one
    takes that one's time and random bits plus one (RFC 9562 §6.2, method 2)."""
    global _last  # noqa: PLW0603 (one sequence per process)
    rand = int.from_bytes(os.urandom(10)) & ((1 << _RAND_BITS) - 1)
    if unix_ms is not None:
        return _pack(unix_ms, rand)
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _last
        if ms <= last_ms:
            ms, rand = last_ms, last_rand + 1
            if rand >> _RAND_BITS:
                ms, rand = last_ms + 1, 0
        _last = (ms, rand)
    return _pack(ms, rand)


def _pack(ms: int, rand: int) -> uuid.UUID:
    rand_a, rand_b = rand >> 62, rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0x2 << 62 | rand_b
    return uuid.UUID(int=value)


def event_day(hour: int) -> str:
    """``YYYYMMDD`` in UTC of an event hour (epoch seconds // 3600)."""
    return datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y%m%d")


def object_key(prefix: str, location: str, *, region: str, account_id: str, hour: int, name: str) -> str:
    """The full key of an object; ``prefix`` is the destination URL's key prefix ('' or 'a/b/')."""
    return f"{prefix}{location}region={region}/accountId={account_id}/eventDay={event_day(hour)}/{name}.parquet"
