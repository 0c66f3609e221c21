"""Replay's reading and chunking, the spool's tag and meta, and the progress line, without a process."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from securitylake_sink.errors import Backpressure
from securitylake_sink.model import Chunk
from securitylake_sink.progress import Progress
from securitylake_sink.sources import decode_spooled
from securitylake_sink.sources.replay import _Reader, _submit
from securitylake_sink.spool import SpooledChunk, decode_chunk, encode_chunk

EPOCH = 1_700_000_000


def read_chunks(
    paths: list[str], fmt: str, *, chunk_records: int = 3, stdin: bytes = b""
) -> tuple[list[Chunk], _Reader]:
    out = io.StringIO()
    reader = _Reader(
        paths,
        fmt=fmt,
        tag="t",
        chunk_records=chunk_records,
        progress=Progress(out, tty=False),
        stdin=io.BytesIO(stdin),
    )
    return list(reader.chunks()), reader


def assert_recovers(chunk: Chunk) -> None:
    spooled = decode_chunk(encode_chunk(chunk))
    again = decode_spooled(spooled.kind, spooled.raw, spooled.received_ns, tag=spooled.tag, meta=spooled.meta)
    assert again == chunk


def test_lines_plain_and_gzip_in_chunks_that_recover(tmp_path: Path) -> None:
    # GIVEN a plain file with CRLF ends and a blank line, and a gzip file
    plain = tmp_path / "a.log"
    plain.write_bytes(b"one\r\ntwo\n\nthree\nfour\xff\n")
    packed = tmp_path / "b.log.gz"
    packed.write_bytes(gzip.compress(b"five\nsix"))
    # WHEN they are read as lines, three records a chunk
    chunks, reader = read_chunks([str(plain), str(packed)], "lines")
    # THEN the records come in order, a chunk never spans files, and each chunk recovers as read
    assert [[e.record["log"] for e in c.entries] for c in chunks] == [
        ["one", "two", "three"],
        ["four\ufffd"],
        ["five", "six"],
    ]
    assert [c.meta["file"] for c in chunks] == [str(plain), str(plain), str(packed)]
    assert reader.result.records == 6
    assert reader.result.bytes_read == plain.stat().st_size + packed.stat().st_size
    for chunk in chunks:
        assert chunk.kind == "replay"
        assert_recovers(chunk)


def test_ndjson_from_stdin_skips_and_names_bad_lines() -> None:
    body = "\n".join(
        [
            json.dumps({"date": EPOCH, "log": "a"}),
            "{not json",
            json.dumps({"timestamp": "2023-11-14T22:13:20Z", "log": "b"}),
            "[1]",
            json.dumps({"log": "c"}),
        ]
    ).encode()
    chunks, reader = read_chunks(["-"], "ndjson", stdin=body)
    [chunk] = chunks
    assert [(e.time_ns, dict(e.record)) for e in chunk.entries] == [
        (EPOCH * 10**9, {"log": "a"}),
        (EPOCH * 10**9, {"log": "b"}),
        (None, {"log": "c"}),
    ]
    assert reader.result.skipped == 2
    assert reader.result.problems[0].startswith("<stdin>:2: not valid JSON")
    assert reader.result.problems[1] == "<stdin>:4: not a JSON object"
    assert_recovers(chunk)


def test_msgpack_entries_maps_markers_and_a_torn_tail(tmp_path: Path) -> None:
    source = tmp_path / "x.msgpack"
    source.write_bytes(
        msgpack.packb([EPOCH, {"log": "a"}])
        + msgpack.packb([[-1, {}], {}])  # a group marker: no record
        + msgpack.packb({"log": "b"})
        + msgpack.packb("not an entry")
        + msgpack.packb([[EPOCH, {"m": 1}], {"log": "c"}])
        + msgpack.packb({"log": "torn"})[:-2]
    )
    chunks, reader = read_chunks([str(source)], "msgpack", chunk_records=10)
    [chunk] = chunks
    assert [e.record["log"] for e in chunk.entries] == ["a", "b", "c"]
    assert chunk.entries[2].metadata == {"m": 1}
    assert reader.result.skipped == 2
    assert "object 4" in reader.result.problems[0]
    assert "ends inside msgpack object 6" in reader.result.problems[1]
    assert_recovers(chunk)


def test_the_spool_reads_chunks_written_before_tag_and_meta() -> None:
    old = msgpack.packb(["forward", 7, b"raw"], use_bin_type=True)
    assert decode_chunk(old) == SpooledChunk("forward", 7, b"raw", "", {})


class FlakySpool:
    def __init__(self) -> None:
        self.calls = 0

    async def submit(self, chunk: Chunk) -> None:
        self.calls += 1
        if self.calls == 1:
            raise Backpressure("spool full", retry_after_secs=0.01)


async def test_replay_waits_out_backpressure() -> None:
    spool: Any = FlakySpool()
    await _submit(spool, Chunk(kind="replay", tag="t", entries=(), raw=b""))
    assert spool.calls == 2


@pytest.mark.parametrize("tty", [False, True])
def test_progress_lines(tty: bool) -> None:
    out = io.StringIO()
    progress = Progress(out, total_bytes=1000, interval_secs=0.0, tty=tty)
    progress.interval_secs = 0.0  # a terminal redraws every 0.2 s: show every update here
    progress.update(0, 0)  # starts the clock
    progress.update(10, 250)
    progress.finish(40, 1000)
    text = out.getvalue()
    if tty:
        assert text.startswith("\r") and text.endswith("\n")
        assert "25%  ETA " in text
    else:
        assert text.splitlines()[-1].startswith("progress: 40 records  0.0 MiB")
        assert "\r" not in text
    assert "100%" in text
