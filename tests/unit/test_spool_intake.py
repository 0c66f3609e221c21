"""The spool's intake rules: resend deduplication by chunk token (durable across restarts and
segment release) and backpressure at ``max_bytes`` — against real files in a temporary directory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest

from securitylake_sink.errors import Backpressure
from securitylake_sink.model import Chunk
from securitylake_sink.spool import Spool, decode_chunk, encode_chunk
from securitylake_sink.spool.wal import SEGMENT_BYTES, WalPosition

START = WalPosition(0, 0)
SMALL_SEGMENT_BYTES = 1024  # rotate every few chunks so segments can be released


def chunk(token: str | None, body: bytes = b"x" * 100, received_ns: int | None = None) -> Chunk:
    return Chunk(
        kind="forward",
        tag="t",
        entries=(),
        raw=body,
        token=token,
        received_ns=time.time_ns() if received_ns is None else received_ns,
    )


def open_spool(path: Path, **kwargs: object) -> Spool:
    spool = Spool(path, **kwargs)  # type: ignore[arg-type]
    spool.wal.segment_bytes = SMALL_SEGMENT_BYTES
    spool.open()
    return spool


def tokens_in_log(spool: Spool, cursor: WalPosition = START) -> list[bytes | None]:
    records, _ = spool.wal.read_from(cursor, 1_000_000)
    return [decode_chunk(payload).token for _, payload in records]


# -- deduplication -------------------------------------------------------------------------------


async def test_a_resent_chunk_is_stored_once(tmp_path: Path) -> None:
    # GIVEN a spool that stored a chunk with a token
    spool = open_spool(tmp_path)
    await spool.submit(chunk("tok-1"))
    # WHEN the same chunk comes again
    await spool.submit(chunk("tok-1"))
    # THEN it returned (the caller acks) but the log holds it once
    assert tokens_in_log(spool) == [b"tok-1"]
    assert spool.deduplicated == 1
    spool.close()


async def test_concurrent_resends_share_one_record(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await asyncio.gather(*(spool.submit(chunk("tok-1")) for _ in range(5)))
    assert tokens_in_log(spool) == [b"tok-1"]
    spool.close()


async def test_a_submit_cancelled_mid_append_still_remembers_its_token(tmp_path: Path) -> None:
    # GIVEN a submit whose connection closed (task cancelled) while its record was being written
    spool = open_spool(tmp_path)
    first = asyncio.create_task(spool.submit(chunk("tok-1")))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(spool.wal.durable.wait(), 5)
    # WHEN the shipper resends the chunk (it got no ack)
    await spool.submit(chunk("tok-1"))
    # THEN the record that did become durable is not stored a second time
    assert tokens_in_log(spool) == [b"tok-1"]
    spool.close()


async def test_chunks_without_token_are_always_stored(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await spool.submit(chunk(None))
    await spool.submit(chunk(None))
    assert tokens_in_log(spool) == [None, None]
    spool.close()


async def test_tokens_are_compared_byte_for_byte(tmp_path: Path) -> None:
    # Fluentd's tokens end in "\n"; undecodable bytes arrive surrogate-escaped.
    spool = open_spool(tmp_path)
    for token in ("abc\n", "abc", "abc\udcff", "abc\n"):
        await spool.submit(chunk(token))
    assert tokens_in_log(spool) == [b"abc\n", b"abc", b"abc\xff"]
    spool.close()


async def test_tokens_survive_a_restart_from_the_log(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await spool.submit(chunk("tok-1"))
    spool.close()
    spool = open_spool(tmp_path)
    await spool.submit(chunk("tok-1"))
    assert tokens_in_log(spool) == [b"tok-1"]
    spool.close()


async def test_tokens_survive_the_release_of_their_segments(tmp_path: Path) -> None:
    # GIVEN chunks spread over several segments, all mapped and released
    spool = open_spool(tmp_path)
    for i in range(30):
        await spool.submit(chunk(f"tok-{i}"))
    spool.write_checkpoint(spool.wal.end)
    assert spool.wal.segments() == [spool.wal.end.segment]
    spool.close()
    # WHEN the sink restarts and every chunk is resent
    spool = open_spool(tmp_path)
    restarted_at = spool.wal.end
    for i in range(30):
        await spool.submit(chunk(f"tok-{i}"))
    # THEN none is stored again (the token file kept them)
    assert tokens_in_log(spool, restarted_at) == []
    assert spool.deduplicated == 30
    spool.close()


async def test_tokens_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, dedup_secs=60)
    await spool.submit(chunk("old", received_ns=time.time_ns() - 120 * 1_000_000_000))
    await spool.submit(chunk("old"))
    assert tokens_in_log(spool) == [b"old", b"old"]
    spool.close()


async def test_only_the_most_recent_tokens_are_kept(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, dedup_tokens=2)
    for token in ("a", "b", "c", "a"):
        await spool.submit(chunk(token))
    assert tokens_in_log(spool) == [b"a", b"b", b"c", b"a"]
    spool.close()


async def test_dedup_tokens_zero_turns_deduplication_off(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, dedup_tokens=0)
    await spool.submit(chunk("a"))
    await spool.submit(chunk("a"))
    assert tokens_in_log(spool) == [b"a", b"a"]
    spool.close()


def test_old_records_without_a_token_still_decode() -> None:
    five = msgpack.packb(["forward", 1, b"raw", "tag", {"k": "v"}], use_bin_type=True)
    spooled = decode_chunk(five)
    assert (spooled.tag, spooled.token) == ("tag", None)


# -- backpressure --------------------------------------------------------------------------------


async def test_submit_refuses_at_max_bytes_and_resumes_once_mapped(tmp_path: Path) -> None:
    # GIVEN a spool bounded to a few chunks (its log segments smaller still)
    spool = open_spool(tmp_path, max_bytes=2000)
    changes: list[float | None] = []
    spool.on_backpressure = changes.append
    # WHEN chunks keep coming without being mapped
    for i in range(5):  # ~140 bytes each
        await spool.submit(chunk(f"t{i}"))
    with pytest.raises(Backpressure) as refused:
        for i in range(5, 40):
            await spool.submit(chunk(f"t{i}"))
    # THEN it refuses at the limit, once backpressure began, and says when to retry
    assert spool.disk_bytes() >= 2000
    assert spool.disk_bytes() == sum(p.stat().st_size for p in (tmp_path / "wal").iterdir())
    assert refused.value.retry_after_secs > 0
    assert spool.backpressure_since is not None
    assert len(changes) == 1
    # AND once the log is mapped (checkpoint at its end, old segments released) it takes chunks again
    spool.write_checkpoint(spool.wal.end)
    assert spool.disk_bytes() < 2000
    assert spool.has_room()
    await spool.submit(chunk("after"))
    assert spool.backpressure_since is None
    assert changes[-1] is None and len(changes) == 2
    spool.close()


def test_a_small_limit_makes_log_segments_smaller(tmp_path: Path) -> None:
    assert Spool(tmp_path, max_bytes=4 * 1024 * 1024).wal.segment_bytes == 1024 * 1024
    assert Spool(tmp_path, max_bytes=10**12).wal.segment_bytes == SEGMENT_BYTES


async def test_resends_are_acked_even_while_the_spool_is_full(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=200)
    await spool.submit(chunk("a"))
    await spool.submit(chunk("b"))
    with pytest.raises(Backpressure):
        await spool.submit(chunk("c"))
    await spool.submit(chunk("a"))  # already durable: nothing to store
    spool.close()


def test_a_tag_and_meta_holding_bytes_that_are_not_utf8_are_spooled_as_those_bytes() -> None:
    # GIVEN a chunk whose tag and meta carry bytes that are not UTF-8 (decoded as surrogate escapes)
    odd = b"\xff\xfe".decode("utf-8", "surrogateescape")
    original = Chunk(kind="forward", tag=f"app.{odd}", entries=(), raw=b"r", received_ns=5, meta={"k": f"v{odd}"})
    # WHEN written to the log and read back; THEN the same text comes back, and the log holds the
    # bytes the shipper sent
    payload = encode_chunk(original)
    back = decode_chunk(payload)
    assert (back.tag, dict(back.meta)) == (original.tag, {"k": f"v{odd}"})
    assert b"app.\xff\xfe" in payload


def test_opening_the_spool_empties_scratch_of_an_object_a_crash_left(tmp_path: Path) -> None:
    # GIVEN a spool whose process died while writing an object's Parquet into scratch/
    spool = open_spool(tmp_path)
    (spool.scratch_dir / "tmpx1.parquet").write_bytes(b"PAR1 half an object")
    spool.close()
    # WHEN it is opened again; THEN scratch/ is empty and counts toward no batch bytes
    spool = open_spool(tmp_path)
    assert list(spool.scratch_dir.iterdir()) == []
    assert spool.disk_bytes() == spool.wal.disk_bytes()
    spool.close()
