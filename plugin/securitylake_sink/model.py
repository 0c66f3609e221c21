"""The small immutable values that cross stage boundaries: what a source hands to the spool."""

from __future__ import annotations

__all__ = ["Chunk", "Entry"]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Entry:
    """One log record as a shipper sent it.

    ``time_ns`` is the transport's event time in nanoseconds since the epoch, or ``None`` when
    the shipper sent no usable time (Fluentd's ``0`` means unknown, not 1970).
    """

    time_ns: int | None
    record: Mapping[str, Any]
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """The unit a source submits and a shipper retries: one frame or one request body.

    ``raw`` holds the bytes as received (one Forward frame, or an HTTP body with its
    encoding in ``meta``); the spool stores them unchanged and ``kind`` names the decoder that
    turns them back into this chunk on recovery. ``token`` is the shipper's idempotency key
    (the Forward ``chunk`` option) when it sent one.
    """

    kind: str
    tag: str
    entries: Sequence[Entry]
    raw: bytes
    token: str | None = None
    received_ns: int = 0
    meta: Mapping[str, str] = field(default_factory=dict)
