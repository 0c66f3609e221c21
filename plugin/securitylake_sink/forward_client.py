"""A small Forward protocol client that asks for acks, as Fluent Bit's ``forward`` output does
with ``Require_ack_response On``; used by ``demo`` and the benchmarks."""

from __future__ import annotations

__all__ = ["ForwardClient", "pack_entries"]

import base64
import gzip
import hashlib
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from securitylake_sink.errors import ProtocolError


def event_time(ns: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, (ns // 1_000_000_000).to_bytes(4, "big") + (ns % 1_000_000_000).to_bytes(4, "big"))


def pack_entries(records: Iterable[tuple[int, Mapping[str, Any]]]) -> bytes:
    """Concatenated ``[EventTime, record]`` entries, as in a PackedForward frame."""
    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
    return b"".join(packer.pack([event_time(ns), record]) for ns, record in records)


class ForwardClient:
    """One TCP connection; ``send`` blocks until the sink acks the chunk."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0, compress: bool = False) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.compress = compress
        self.unpacker = msgpack.Unpacker(raw=False)
        self.latencies_ns: list[int] = []

    def send(self, tag: str, records: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        entries = pack_entries(records)
        # Fluent Bit's token: base64 of the first 16 bytes of SHA-512 over the entries.
        token = base64.b64encode(hashlib.sha512(entries).digest()[:16]).decode()
        options: dict[str, Any] = {"chunk": token}
        if self.compress:
            entries = gzip.compress(entries)
            options["compressed"] = "gzip"
        frame = msgpack.packb([tag, entries, options], use_bin_type=True, unicode_errors="surrogateescape")
        started = time.perf_counter_ns()
        self.sock.sendall(frame)
        while True:
            for reply in self.unpacker:
                if not isinstance(reply, dict) or reply.get("ack") != token:
                    raise ProtocolError(f"unexpected reply to chunk {token}: {reply!r}")
                self.latencies_ns.append(time.perf_counter_ns() - started)
                return
            data = self.sock.recv(4096)
            if not data:
                raise ProtocolError(f"the sink closed the connection before acking chunk {token}")
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ForwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
