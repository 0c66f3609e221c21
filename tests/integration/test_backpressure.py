"""Backpressure through the real process: with delivery blocked the spool fills to
``spool.max_bytes``, the Forward source stops reading (acks stop, memory stays bounded), and once
delivery works again everything is delivered exactly once."""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import msgpack

from securitylake_sink.forward_client import pack_entries
from tests.integration.sinkproc import SinkProcess, free_port, read_lake, write_config

CHUNKS = 120  # about 15 MB: more than the socket buffers take in while the sink holds the shipper back
RECORDS_PER_CHUNK = 1000
SPOOL_MAX_BYTES = 1024 * 1024  # the smallest limit the config takes
STALL_SECS = 2.0  # no ack for this long while chunks wait: the shipper is held back
HOLD_SECS = 3.0  # how long the test watches the held sink's memory
HOLD_GROWTH_KB = 32 * 1024  # RSS growth accepted while intake is held (none is expected)
PEAK_RSS_KB = 512 * 1024  # the sink's RSS never goes above this (mapping 1000-record chunks)


def _frames() -> list[tuple[str, bytes]]:
    """(token, frame) for every chunk, ids unique across chunks."""
    out = []
    now = time.time_ns()
    for c in range(CHUNKS):
        entries = pack_entries(
            (
                now,
                {
                    "class_uid": 3002,
                    "activity_id": 1,
                    "time": now // 1_000_000,
                    "severity_id": 1,
                    "user": {"name": "x" * 40},
                    "metadata": {"uid": str(c * RECORDS_PER_CHUNK + i)},
                },
            )
            for i in range(RECORDS_PER_CHUNK)
        )
        token = base64.b64encode(hashlib.sha512(entries).digest()[:16]).decode()
        out.append((token, msgpack.packb(["bp.test", entries, {"chunk": token}], use_bin_type=True)))
    return out


class PipelinedShipper:
    """Sends every frame without waiting for acks (one thread) and collects acks (another)."""

    def __init__(self, port: int, frames: list[tuple[str, bytes]]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self.frames = frames
        self.sent = 0
        self.acked: list[str] = []
        self.last_ack = time.monotonic()
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.receiver = threading.Thread(target=self._receive, daemon=True)
        self.sender.start()
        self.receiver.start()

    def _send(self) -> None:
        for _, frame in self.frames:
            self.sock.sendall(frame)
            self.sent += 1

    def _receive(self) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        while len(self.acked) < len(self.frames):
            data = self.sock.recv(65536)
            if not data:
                return
            unpacker.feed(data)
            for reply in unpacker:
                self.acked.append(reply["ack"])
                self.last_ack = time.monotonic()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_full_spool_holds_the_shipper_back_and_loses_nothing(tmp_path: Path) -> None:
    # GIVEN a sink whose lake path is a regular file (every put fails, also for root)
    # and whose spool takes at most 1 MiB
    port = free_port()
    config = write_config(
        tmp_path, port, extra=f"batch: {{max_age_secs: 0.5}}\nspool: {{path: \"{tmp_path / 'spool'}\", "
        f"max_bytes: {SPOOL_MAX_BYTES}}}\n"
    )
    config.write_text(config.read_text().replace(f'spool: {{path: "{tmp_path / "spool"}"}}\n', "", 1))
    lake = tmp_path / "lake"
    lake.write_text("not a directory\n")
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info")
    idle_rss = _rss_kb(sink.proc.pid)
    frames = _frames()

    # WHEN a shipper pipelines many chunks
    shipper = PipelinedShipper(port, frames)
    peak_rss = idle_rss
    deadline = time.monotonic() + 30
    while time.monotonic() - shipper.last_ack < STALL_SECS:
        assert time.monotonic() < deadline, "acks never stopped"
        peak_rss = max(peak_rss, _rss_kb(sink.proc.pid))
        time.sleep(0.1)

    # THEN acks stop before everything is sent, the sink stays up, and its memory is bounded
    assert len(shipper.acked) < CHUNKS, "the spool never filled"
    assert shipper.sent < CHUNKS, "the sink kept reading the connection"
    assert sink.proc.poll() is None
    sink.wait_for_log("the spool is full")
    held_at, held_sent, held_rss = len(shipper.acked), shipper.sent, _rss_kb(sink.proc.pid)
    hold_end = time.monotonic() + HOLD_SECS
    while time.monotonic() < hold_end:
        peak_rss = max(peak_rss, _rss_kb(sink.proc.pid))
        time.sleep(0.1)
    assert len(shipper.acked) == held_at
    assert peak_rss - held_rss < HOLD_GROWTH_KB, (held_rss, peak_rss)

    # WHEN delivery works again
    lake.unlink()
    lake.mkdir()
    deadline = time.monotonic() + 60
    while len(shipper.acked) < CHUNKS:
        assert time.monotonic() < deadline, f"only {len(shipper.acked)} of {CHUNKS} chunks acked"
        peak_rss = max(peak_rss, _rss_kb(sink.proc.pid))
        time.sleep(0.1)
    shipper.sock.close()
    sink.wait_for_log("the spool drained; intake resumed")
    assert sink.stop() == 0, sink.log()

    # THEN every chunk was acked once and every record is in the lake exactly once
    assert peak_rss < PEAK_RSS_KB, peak_rss
    assert sorted(shipper.acked) == sorted(t for t, _ in frames)
    ids = Counter(r["uid"] for r in read_lake(lake).column("metadata").to_pylist())
    assert len(ids) == CHUNKS * RECORDS_PER_CHUNK
    assert set(ids.values()) == {1}
    assert not list((tmp_path / "spool" / "sealed").iterdir())
    print(f"backpressure: held after {held_at} of {CHUNKS} chunks ({held_sent} sent); RSS idle {idle_rss} kB, "
          f"held {held_rss} kB, peak {peak_rss} kB")
    shutil.rmtree(tmp_path / "spool", ignore_errors=True)
