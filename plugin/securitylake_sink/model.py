"""The small immutable values that cross stage boundaries: what a source hands to the spool."""

from __future__ import annotations

__all__ = ["Chunk", "DeferredEntries", "Entry", "built"]

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload


class Entry(NamedTuple):
    """One log record as a shipper sent it (a named tuple: one is built per record, and a tuple
    builds in half the time of a frozen dataclass).

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


class DeferredEntries(Sequence[Entry]):
    """A chunk's entries, decoded when first read: the count is known (the frame was checked),
    the records are built later by ``decode``, on whichever thread reads them first, and kept;
    ``build`` builds them without keeping them (the pipeline reads each chunk once).

    ``decode`` may raise (input a structural check cannot see, such as a map key that is an
    array); the reader gets the exception, not a partial list.
    """

    __slots__ = ("_count", "_decode", "_entries")

    def __init__(self, count: int, decode: Callable[[], Sequence[Entry]]) -> None:
        self._count = count
        self._decode: Callable[[], Sequence[Entry]] | None = decode
        self._entries: Sequence[Entry] | None = None

    @property
    def decoded(self) -> bool:
        return self._entries is not None

    def _load(self) -> Sequence[Entry]:
        if self._entries is None:
            self._entries = self.build()
            self._decode = None  # holds the frame's bytes
        return self._entries

    def build(self) -> Sequence[Entry]:
        """The entries, built anew and not kept (unless they were already): a reader that goes
        over them once lets them go when it is done with them."""
        if self._entries is not None:
            return self._entries
        assert self._decode is not None
        return self._decode()

    def __len__(self) -> int:
        return self._count if self._entries is None else len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._load())

    def __eq__(self, other: object) -> bool:
        """Equal to the same entries, deferred or not (so chunks compare by what they hold)."""
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return tuple(self._load()) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        return self._load()[index]


def built(entries: Sequence[Entry]) -> Sequence[Entry]:
    """``entries`` with their records built, kept only by the caller where they were deferred."""
    return entries.build() if isinstance(entries, DeferredEntries) else entries
