"""Security Lake object keys: ``<location>region=<r>/accountId=<a>/eventDay=<YYYYMMDD>/<uuid7>.parquet``."""

from __future__ import annotations

__all__ = ["event_day", "object_key", "uuid7"]

import os
import time
import uuid
from datetime import UTC, datetime

MS_PER_HOUR = 3_600_000


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond time, version, 74 random bits; sorts by time."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    value = (ms & (1 << 48) - 1) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


def event_day(hour: int) -> str:
    """``YYYYMMDD`` in UTC of an event hour (epoch seconds // 3600)."""
    return datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y%m%d")


def object_key(prefix: str, location: str, *, region: str, account_id: str, hour: int, name: str) -> str:
    """The full key of an object; ``prefix`` is the destination URL's key prefix ('' or 'a/b/')."""
    return f"{prefix}{location}region={region}/accountId={account_id}/eventDay={event_day(hour)}/{name}.parquet"
