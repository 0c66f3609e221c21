"""Forward frames for the benchmarks: records packed per tag into PackedForward frames with a chunk
token, as Fluent Bit's forward output sends them, and a sender that waits for each ack."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from records import Item
from securitylake_sink.forward_client import pack_entries


@dataclass(frozen=True, slots=True)
class Frame:
    """One Forward frame: its bytes, its chunk token and how many records it carries."""

    tag: str
    data: bytes
    token: str
    records: int


def _frame(tag: str, entries: list[tuple[int, dict[str, Any]]]) -> Frame:
    packed = pack_entries(entries)
    # Fluent Bit's token: base64 of the first 16 bytes of SHA-512 over the entries.
    token = base64.b64encode(hashlib.sha512(packed).digest()[:16]).decode()
    return Frame(tag, msgpack.packb([tag, packed, {"chunk": token}], use_bin_type=True), token, len(entries))


def pack_frames(items: Sequence[Item], chunk: int) -> list[Frame]:
    """Frames of up to ``chunk`` records of one tag, in the order each fills up (as a shipper with
    one buffer per tag sends them). Identical entries would give identical tokens, which the sink
    stores once; generated records vary, so every token differs."""
    pending: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    frames: list[Frame] = []
    for tag, time_ns, record in items:
        entries = pending.setdefault(tag, [])
        entries.append((time_ns, record))
        if len(entries) >= chunk:
            frames.append(_frame(tag, pending.pop(tag)))
    frames.extend(_frame(tag, entries) for tag, entries in pending.items())
    return frames


@dataclass
class SendReport:
    """What the sender saw: wall-clock times of the first byte and the last ack, ack latencies."""

    first_byte: float = 0.0
    last_ack: float = 0.0
    wire_bytes: int = 0
    records: int = 0
    latencies_ns: list[int] = field(default_factory=list)


def send_frames(port: int, frames: Sequence[Frame], rate: float | None = None, timeout: float = 120) -> SendReport:
    """Send each frame over one connection and wait for its ack, as Fluent Bit does with
    ``Require_ack_response On``; with ``rate``, pace the frames to that many records per second."""
    report = SendReport()
    unpacker = msgpack.Unpacker(raw=False)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        report.first_byte = time.time()
        started = time.perf_counter()
        for frame in frames:
            if rate:
                # Pace on records sent so far, so a slow ack is caught up on rather than added.
                delay = started + report.records / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent = time.perf_counter_ns()
            sock.sendall(frame.data)
            await_ack(sock, unpacker, frame.token)
            report.latencies_ns.append(time.perf_counter_ns() - sent)
            report.wire_bytes += len(frame.data)
            report.records += frame.records
        report.last_ack = time.time()
    return report


def await_ack(sock: socket.socket, unpacker: msgpack.Unpacker, token: str) -> None:
    while True:
        for reply in unpacker:
            if not isinstance(reply, dict) or reply.get("ack") != token:
                raise RuntimeError(f"unexpected reply to chunk {token}: {reply!r}")
            return
        data = sock.recv(4096)
        if not data:
            raise RuntimeError(f"the sink closed the connection before acking chunk {token}")
        unpacker.feed(data)
