"""Sources: what shippers send (Forward protocol, HTTP) and replayed files, turned into ``Chunk``s."""

from __future__ import annotations

__all__ = ["decode_spooled"]

from collections.abc import Mapping

from securitylake_sink.errors import SpoolCorrupt
from securitylake_sink.model import Chunk


def decode_spooled(
    kind: str, raw: bytes, received_ns: int, *, tag: str = "", meta: Mapping[str, str] | None = None
) -> Chunk:
    """Turn a chunk's raw bytes, as the spool kept them (with its tag and meta), back into the chunk."""
    if kind == "forward":
        from securitylake_sink.sources.forward import decode_spooled as forward  # noqa: PLC0415

        return forward(raw, received_ns)
    if kind in ("http", "replay"):
        from securitylake_sink.sources.body import decode_spooled as body  # noqa: PLC0415

        return body(kind, raw, received_ns, tag, meta or {})
    raise SpoolCorrupt(f"the spool holds a chunk of unknown kind {kind!r}")
