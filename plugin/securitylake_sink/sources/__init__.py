"""Sources: what shippers send (Forward protocol, later HTTP and replay), turned into ``Chunk``s."""

from __future__ import annotations

__all__ = ["decode_spooled"]

from securitylake_sink.errors import SpoolCorrupt
from securitylake_sink.model import Chunk


def decode_spooled(kind: str, raw: bytes, received_ns: int) -> Chunk:
    """Turn a chunk's raw bytes, as the spool kept them, back into the chunk."""
    if kind == "forward":
        from securitylake_sink.sources.forward import decode_spooled as forward  # noqa: PLC0415

        return forward(raw, received_ns)
    raise SpoolCorrupt(f"the spool holds a chunk of unknown kind {kind!r}")
