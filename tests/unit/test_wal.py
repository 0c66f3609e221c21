"""The spool's write-ahead log: round trip, group commit, torn tails, rotation, the reader's cache,
segment release and failed writes — against real files in a temporary directory."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from securitylake_sink.errors import SpoolCorrupt, SpoolError
from securitylake_sink.spool import wal as wal_module
from securitylake_sink.spool.wal import (
    HEADER,
    MAGIC,
    WalPosition,
    WriteAheadLog,
    encode_record,
    read_records,
    scan_records,
)

START = WalPosition(0, 0)  # a fresh spool's checkpoint: before every record
RECORD_OVERHEAD = HEADER.size  # bytes each record adds to its payload


def payload(i: int, size: int = 40) -> bytes:
    """A recognisable payload of ``size`` bytes for record ``i``."""
    return f"record-{i:06d}-".encode().ljust(size, b".")


def open_wal(path: Path, *, segment_bytes: int = wal_module.SEGMENT_BYTES) -> WriteAheadLog:
    wal = WriteAheadLog(path, segment_bytes=segment_bytes)
    wal.open()
    return wal


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return tmp_path / "wal"


async def append_all(wal: WriteAheadLog, payloads: list[bytes]) -> list[WalPosition]:
    """Append one after the other (one group each); the end position of each."""
    return [await wal.append(p, decoded=p, weight=len(p)) for p in payloads]


def read_all(wal: WriteAheadLog, cursor: WalPosition = START) -> list[bytes]:
    records, _ = wal.read_from(cursor, 1_000_000)
    return [bytes(p) for _, p in records]  # views into one read of the segment


def newest_segment(wal_dir: Path) -> Path:
    return sorted(wal_dir.glob("*.wal"))[-1]


# -- round trip ----------------------------------------------------------------------------------


async def test_appended_records_read_back_in_order_with_their_end_positions(wal_dir: Path) -> None:
    # GIVEN a new log
    wal = open_wal(wal_dir)
    written = [payload(i, size=10 + i) for i in range(5)]

    # WHEN records are appended one by one
    ends = await append_all(wal, written)

    # THEN each end lies after the previous one, the log's end is the last of them,
    # and reading from the start yields exactly those records with those end positions
    assert ends == sorted(ends)
    assert len(set(ends)) == len(ends)
    assert wal.end == ends[-1]
    records, bound = wal.read_from(START, 100)
    assert [p for _, p in records] == written
    assert [pos for pos, _ in records] == ends
    assert bound == wal.end
    wal.close()


async def test_records_survive_close_and_reopen(wal_dir: Path) -> None:
    # GIVEN a log with records, closed
    wal = open_wal(wal_dir)
    written = [payload(i) for i in range(4)]
    ends = await append_all(wal, written)
    wal.close()

    # WHEN it is opened again and more records are appended
    wal = open_wal(wal_dir)
    more = [payload(i) for i in range(4, 6)]
    await append_all(wal, more)

    # THEN the old records read back unchanged, followed by the new ones
    assert read_all(wal) == written + more
    # AND reading from the end of the old records yields only the new ones
    assert read_all(wal, ends[-1]) == more
    wal.close()


async def test_read_from_honours_its_limit_and_resumes_where_it_stopped(wal_dir: Path) -> None:
    # GIVEN a log with 7 records
    wal = open_wal(wal_dir)
    written = [payload(i) for i in range(7)]
    await append_all(wal, written)

    # WHEN it is read 3 records at a time, each read starting where the last one ended
    seen: list[bytes] = []
    cursor = START
    while True:
        records, _ = wal.read_from(cursor, 3)
        assert len(records) <= 3
        if not records:
            break
        seen += [p for _, p in records]
        cursor = records[-1][0]

    # THEN every record was seen once, in order
    assert seen == written
    wal.close()


# -- group commit --------------------------------------------------------------------------------


async def test_concurrent_appends_share_fsyncs(wal_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a log whose fsyncs are counted (and slow, as on a real disk)
    wal = open_wal(wal_dir)
    calls = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    n = 64

    # WHEN n appends are made concurrently
    ends = await asyncio.gather(*(wal.append(payload(i)) for i in range(n)))

    # THEN fewer fsyncs than appends made them all durable, and every record is there once, in order
    assert 1 <= calls < n
    assert len(set(ends)) == n
    assert read_all(wal) == [payload(i) for i in range(n)]
    wal.close()


async def test_appends_arriving_during_an_fsync_share_the_next_one(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log whose fsync takes a while and is counted
    wal = open_wal(wal_dir)
    calls = 0
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        real_fsync(fd)
        time.sleep(0.02)  # the WAL thread waits here; the event loop keeps queueing appends meanwhile

    monkeypatch.setattr(os, "fsync", slow_fsync)

    # WHEN appends trickle in while earlier ones are being fsynced
    async def trickle(i: int) -> WalPosition:
        await asyncio.sleep(i * 0.002)
        return await wal.append(payload(i))

    n = 40
    ends = await asyncio.gather(*(trickle(i) for i in range(n)))

    # THEN they were grouped: fewer fsyncs than appends, and all records are durable in order
    assert 1 <= calls < n
    assert sorted(ends) == sorted(set(ends))
    assert sorted(read_all(wal)) == sorted(payload(i) for i in range(n))
    wal.close()


# -- torn tails ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data, last: data[: last + 3], id="cut-inside-header"),
        pytest.param(lambda data, last: data[: last + RECORD_OVERHEAD + 5], id="cut-inside-payload"),
        pytest.param(lambda data, last: data[:-1], id="cut-last-byte"),
        pytest.param(lambda data, last: data + b"\x00garbage\xff" * 3, id="garbage-appended"),
        pytest.param(lambda data, last: data + encode_record(b"x" * 30)[:-4], id="half-record-appended"),
    ],
)
async def test_torn_tail_of_newest_segment_is_cut_on_open(wal_dir: Path, damage: Callable[[bytes, int], bytes]) -> None:
    # GIVEN a closed log of 4 records whose newest segment then had its tail torn
    wal = open_wal(wal_dir)
    written = [payload(i) for i in range(4)]
    ends = await append_all(wal, written)
    wal.close()
    segment = newest_segment(wal_dir)
    data = segment.read_bytes()
    last_start = ends[-2].offset  # where the last record begins
    torn = damage(data, last_start)
    segment.write_bytes(torn)
    survivors = [p for p, end in zip(written, ends, strict=True) if end.offset <= len(torn)]

    # WHEN the log is opened
    wal = open_wal(wal_dir)

    # THEN the torn bytes are gone from disk, every whole record before them is kept,
    # and a new record follows the kept ones directly
    assert segment.stat().st_size == max([0] + [e.offset for e in ends if e.offset <= len(torn)])
    assert read_all(wal) == survivors
    await wal.append(b"after-recovery")
    assert read_all(wal) == [*survivors, b"after-recovery"]
    wal.close()

    # AND a second recovery finds nothing more to cut
    wal = open_wal(wal_dir)
    assert read_all(wal) == [*survivors, b"after-recovery"]
    wal.close()


async def test_damaged_record_in_an_older_segment_is_corruption(wal_dir: Path) -> None:
    # GIVEN a log spread over several segments, reopened, whose first segment then had a byte flipped
    wal = open_wal(wal_dir, segment_bytes=120)
    await append_all(wal, [payload(i) for i in range(10)])
    wal.close()
    first = sorted(wal_dir.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[RECORD_OVERHEAD + 2] ^= 0xFF  # inside the first record's payload
    first.write_bytes(bytes(data))
    wal = open_wal(wal_dir, segment_bytes=120)
    assert len(wal.segments()) > 2

    # WHEN the reader reads over it THEN it is told the spool is corrupt (not silently given less)
    with pytest.raises(SpoolCorrupt, match=first.name):
        wal.read_from(START, 100)
    wal.close()


async def test_damaged_older_segment_is_set_aside_after_the_records_before_the_damage(wal_dir: Path) -> None:
    # GIVEN three records per segment, the first segment damaged inside its second record, and a
    # reader whose damaged segments go to a callback (the spool's quarantine)
    wal = open_wal(wal_dir, segment_bytes=120)
    await append_all(wal, [payload(i) for i in range(10)])
    wal.close()
    first = sorted(wal_dir.glob("*.wal"))[0]
    record = RECORD_OVERHEAD + 40
    data = bytearray(first.read_bytes())
    data[record + RECORD_OVERHEAD + 5] ^= 0xFF  # inside the second record's payload
    first.write_bytes(bytes(data))
    wal = open_wal(wal_dir, segment_bytes=120)
    damaged: list[tuple[str, int, bytes]] = []

    def set_aside(path: Path, offset: int) -> None:
        damaged.append((path.name, offset, path.read_bytes()))
        path.unlink()

    wal.on_damaged = set_aside

    # WHEN the reader reads from the start
    before, _ = wal.read_from(START, 100)
    # THEN it first hands out only the record before the damage, and sets nothing aside yet
    assert [p for _, p in before] == [payload(0)]
    assert damaged == []
    # WHEN it reads on from there THEN the segment goes to the callback with the damage's offset,
    # and reading goes on with the next segment
    rest, _ = wal.read_from(before[-1][0], 100)
    assert [p for _, p in rest] == [payload(i) for i in range(3, 10)]
    assert [(name, offset) for name, offset, _ in damaged] == [(first.name, record)]
    assert damaged[0][2] == bytes(data)
    assert not first.exists()
    assert rest[0][0].segment == int(first.stem) + 1
    wal.close()


# -- rotation ------------------------------------------------------------------------------------


async def test_rotation_spreads_records_over_segments_and_reads_cross_them(wal_dir: Path) -> None:
    # GIVEN a log with tiny segments
    segment_bytes = 2 * (40 + RECORD_OVERHEAD) + 1  # rotates after every third record
    wal = open_wal(wal_dir, segment_bytes=segment_bytes)
    written = [payload(i) for i in range(10)]

    # WHEN records are appended
    ends = await append_all(wal, written)

    # THEN they are spread over several segments, none of which holds more than needed to pass the limit
    segments = wal.segments()
    assert len(segments) >= 3
    for seg in segments:
        assert wal.segment_path(seg).stat().st_size < segment_bytes + 40 + RECORD_OVERHEAD
    assert len({e.segment for e in ends}) >= 3
    # AND reading from the start, and from every record's end, crosses segment boundaries in order
    assert read_all(wal) == written
    for i, end in enumerate(ends):
        assert read_all(wal, end) == written[i + 1 :]
    # AND the same holds after a reopen
    wal.close()
    wal = open_wal(wal_dir, segment_bytes=segment_bytes)
    assert read_all(wal) == written
    for i, end in enumerate(ends):
        assert read_all(wal, end) == written[i + 1 :]
    wal.close()


# -- the reader's cache --------------------------------------------------------------------------


async def test_take_cached_returns_the_chunks_that_follow_the_cursor(wal_dir: Path) -> None:
    # GIVEN a log that has been read up to its end, and then gets 5 more records
    wal = open_wal(wal_dir)
    cursor = wal.end
    written = [payload(i) for i in range(5)]
    ends = await append_all(wal, written)

    # WHEN the reader takes cached chunks from its cursor
    taken = wal.take_cached(cursor, 100)

    # THEN it gets exactly the new records' decoded values with their end positions, in order
    assert taken == list(zip(ends, written, strict=True))
    # AND a limit is honoured, and taking again from a later cursor continues from there
    assert wal.take_cached(cursor, 2) == list(zip(ends[:2], written[:2], strict=True))
    assert wal.take_cached(ends[2], 100) == list(zip(ends[3:], written[3:], strict=True))
    wal.close()


async def test_take_cached_crosses_a_segment_rotated_while_running(wal_dir: Path) -> None:
    # GIVEN a running log with tiny segments, read up to its end, that then rotates while appending
    wal = open_wal(wal_dir, segment_bytes=100)
    cursor = wal.end
    written = [payload(i) for i in range(6)]
    ends = await append_all(wal, written)
    assert len({e.segment for e in ends}) > 1

    # WHEN the reader takes cached chunks
    taken = wal.take_cached(cursor, 100)

    # THEN the chunks come across the segment boundary without a gap
    assert taken == list(zip(ends, written, strict=True))
    wal.close()


async def test_a_reader_behind_by_more_than_the_cache_reads_from_disk_until_it_catches_up(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log whose cache holds three chunks, and a reader that falls behind by eight
    monkeypatch.setattr(wal_module, "CACHE_BYTES", 3 * 40)
    wal = open_wal(wal_dir)
    cursor = wal.end
    written = [payload(i) for i in range(8)]
    ends = await append_all(wal, written)

    # WHEN the reader, still at the old cursor, asks for cached chunks
    taken = wal.take_cached(cursor, 100)

    # THEN it gets none, and reads them all from disk instead
    assert taken == []
    assert read_all(wal, cursor) == written
    # AND the cache holds none of them: it would only keep chunks evicted before the reader got there
    assert all(wal.take_cached(end, 100) == [] for end in ends[:-1])
    # AND chunks that come while the reader is behind are not cached either
    more = await append_all(wal, [payload(8)])
    assert wal.take_cached(ends[-1], 100) == []

    # WHEN the reader has caught up with the end of the log
    assert wal.take_cached(more[-1], 100) == []
    newest = [payload(9), payload(10)]
    newest_ends = await append_all(wal, newest)

    # THEN the cache serves what follows again
    assert wal.take_cached(more[-1], 100) == list(zip(newest_ends, newest, strict=True))
    wal.close()


async def test_after_reopen_new_chunks_do_not_follow_a_cursor_inside_an_old_segment(wal_dir: Path) -> None:
    # GIVEN a log of 4 records, read only up to the 2nd, then reopened (a restart)
    wal = open_wal(wal_dir)
    old = [payload(i) for i in range(4)]
    ends = await append_all(wal, old)
    wal.close()
    wal = open_wal(wal_dir)
    cursor = ends[1]  # the checkpoint: in the middle of the old segment

    # WHEN a new record is appended (it lands at the start of a new segment) and the reader asks the cache
    new_end = await wal.append(b"new", decoded=b"new", weight=3)
    assert new_end.segment == cursor.segment + 1
    taken = wal.take_cached(cursor, 100)

    # THEN the new record is NOT offered as following the cursor: records 3 and 4 come first,
    # and reading from disk yields them before it
    assert taken == []
    assert read_all(wal, cursor) == [*old[2:], b"new"]
    wal.close()


async def test_after_reopen_new_chunks_follow_a_cursor_at_the_end_of_the_old_segment(wal_dir: Path) -> None:
    # GIVEN a log of 3 records, wholly read, then reopened
    wal = open_wal(wal_dir)
    ends = await append_all(wal, [payload(i) for i in range(3)])
    wal.close()
    wal = open_wal(wal_dir)

    # WHEN new records are appended in the new segment
    new = [b"n1", b"n2"]
    new_ends = await append_all(wal, new)

    # THEN the cache offers them as following the end of the old segment
    assert wal.take_cached(ends[-1], 100) == list(zip(new_ends, new, strict=True))
    wal.close()


async def test_after_reopen_with_a_cut_tail_new_chunks_follow_the_last_whole_record(wal_dir: Path) -> None:
    # GIVEN a log of 3 records whose last one was torn, reopened (so the old segment ends after record 2)
    wal = open_wal(wal_dir)
    ends = await append_all(wal, [payload(i) for i in range(3)])
    wal.close()
    segment = newest_segment(wal_dir)
    segment.write_bytes(segment.read_bytes()[:-7])
    wal = open_wal(wal_dir)

    # WHEN a new record is appended
    new_end = await wal.append(b"new", decoded=b"new", weight=3)

    # THEN it follows a cursor at the end of record 2, and not one inside the old segment
    assert wal.take_cached(ends[1], 100) == [(new_end, b"new")]
    assert wal.take_cached(ends[0], 100) == []
    wal.close()


# -- releasing segments --------------------------------------------------------------------------


async def test_release_before_deletes_only_wholly_consumed_segments(wal_dir: Path) -> None:
    # GIVEN a log over at least 4 segments
    wal = open_wal(wal_dir, segment_bytes=100)
    written = [payload(i) for i in range(12)]
    ends = await append_all(wal, written)
    segments = wal.segments()
    assert len(segments) >= 4
    # a cursor in the middle of the third segment
    third = segments[2]
    middle = next(i for i, e in enumerate(ends) if e.segment == third)

    # WHEN segments before that cursor are released
    wal.release_before(ends[middle])

    # THEN exactly the segments before the cursor's are gone, and everything after the cursor reads back
    assert wal.segments() == [s for s in segments if s >= third]
    assert read_all(wal, ends[middle]) == written[middle + 1 :]

    # WHEN the cursor is at the end of the log
    before = wal.segments()
    wal.release_before(ends[-1])

    # THEN the segment holding the cursor (and any after it) is kept, and appends go on
    assert wal.segments() == [s for s in before if s >= ends[-1].segment]
    await wal.append(b"more")
    assert read_all(wal, ends[-1]) == [b"more"]
    wal.close()


async def test_release_before_never_deletes_the_segment_being_written(wal_dir: Path) -> None:
    # GIVEN a log with one segment being written
    wal = open_wal(wal_dir)
    ends = await append_all(wal, [payload(0), payload(1)])

    # WHEN a cursor beyond it is released (nothing must be lost even then)
    wal.release_before(WalPosition(ends[-1].segment + 5, 0))

    # THEN the current segment stays and later appends are durable and readable
    assert wal.segments() == [ends[-1].segment]
    end = await wal.append(b"later")
    assert read_all(wal, ends[-1]) == [b"later"]
    assert end.segment == ends[-1].segment
    wal.close()


# -- failed writes -------------------------------------------------------------------------------


def fail_writes_of(wal: WriteAheadLog, monkeypatch: pytest.MonkeyPatch, *, cut_fails: bool = False) -> dict[str, bool]:
    """Make the WAL's next writes put half their bytes on disk, then raise ENOSPC, while
    ``state["full"]``; with ``cut_fails`` the cut-back (ftruncate) fails too while full."""
    state = {"full": True}
    real_write, real_ftruncate = os.write, os.ftruncate

    def write(fd: int, data: Any) -> int:
        if fd == wal._fd and state["full"]:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def ftruncate(fd: int, size: int) -> None:
        if fd == wal._fd and state["full"] and cut_fails:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_ftruncate(fd, size)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    return state


async def test_failed_write_fails_the_whole_group_and_leaves_no_partial_record(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log with 2 durable records, whose next write hits a full disk half-way through a record
    wal = open_wal(wal_dir)
    earlier = [payload(0), payload(1)]
    await append_all(wal, earlier)
    end_before = wal.end
    size_before = newest_segment(wal_dir).stat().st_size
    disk = fail_writes_of(wal, monkeypatch)

    # WHEN a group of 3 appends is made (the write fails half-way)
    results = await asyncio.gather(*(wal.append(payload(i)) for i in range(2, 5)), return_exceptions=True)

    # THEN every append of the group fails with SpoolError, the log's end has not moved,
    # and no byte of the group is left in the segment
    assert all(isinstance(r, SpoolError) for r in results), results
    assert wal.end == end_before
    assert newest_segment(wal_dir).stat().st_size == size_before
    assert read_all(wal) == earlier

    # AND the log keeps working: a later append lands right after the earlier records
    disk["full"] = False
    later = await wal.append(b"later")
    assert read_all(wal) == [*earlier, b"later"]
    assert later.offset == size_before + RECORD_OVERHEAD + len(b"later")
    wal.close()

    # AND after a reopen only the earlier records and the later one are there
    wal = open_wal(wal_dir)
    assert read_all(wal) == [*earlier, b"later"]
    wal.close()


async def test_failed_fsync_fails_the_group_and_cuts_its_records(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log with 2 durable records whose next fsync fails (EIO)
    wal = open_wal(wal_dir)
    earlier = [payload(0), payload(1)]
    await append_all(wal, earlier)
    size_before = newest_segment(wal_dir).stat().st_size
    real_fsync = os.fsync
    failures = [OSError(errno.EIO, os.strerror(errno.EIO))]

    def failing_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)

    # WHEN a group of 3 appends is made
    results = await asyncio.gather(*(wal.append(payload(i)) for i in range(2, 5)), return_exceptions=True)

    # THEN all of them fail, and their records (written but not durable) are cut off again
    assert all(isinstance(r, SpoolError) for r in results), results
    assert newest_segment(wal_dir).stat().st_size == size_before
    wal.close()
    wal = open_wal(wal_dir)
    assert read_all(wal) == earlier
    wal.close()


async def test_failed_group_on_a_disk_that_stays_full_leaves_no_record_behind(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log with 2 durable records, on a disk that then fills up
    wal = open_wal(wal_dir)
    earlier = [payload(0), payload(1)]
    await append_all(wal, earlier)
    size_before = newest_segment(wal_dir).stat().st_size
    disk = fail_writes_of(wal, monkeypatch, cut_fails=True)

    # WHEN a group of 2 appends fails (ENOSPC on the flush, and again on the cut-back)
    results = await asyncio.gather(*(wal.append(payload(i)) for i in range(2, 4)), return_exceptions=True)
    assert all(isinstance(r, SpoolError) for r in results), results
    # AND space is freed and one more record is appended and acked
    disk["full"] = False
    later_end = await wal.append(b"later")

    # THEN the acked record ends where the log says it does, and only acked records are on disk
    assert newest_segment(wal_dir).stat().st_size == later_end.offset
    assert later_end.offset == size_before + RECORD_OVERHEAD + len(b"later")
    wal.close()
    wal = open_wal(wal_dir)
    assert read_all(wal) == [*earlier, b"later"]
    wal.close()


# -- reading while the WAL thread writes ---------------------------------------------------------


def stall_next_write(wal: WriteAheadLog, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The WAL's next write puts the first half of its bytes on disk, sets ``stalled`` and waits
    for ``resume`` before writing the rest (a write in progress)."""
    stalled, resume = threading.Event(), threading.Event()
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if fd == wal._fd and not stalled.is_set():
            half = len(data) // 2
            real_write(fd, bytes(data[:half]))
            stalled.set()
            resume.wait(10)
            return half + real_write(fd, bytes(data[half:]))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return stalled, resume


async def test_read_from_ignores_a_record_still_being_written_after_a_rotation(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log whose last group filled its segment, so the WAL thread rotated to a new, empty one
    wal = open_wal(wal_dir, segment_bytes=100)
    earlier = [payload(0), payload(1)]
    ends = await append_all(wal, earlier)
    assert wal.segments()[-1] == ends[-1].segment + 1
    assert wal.end == ends[-1]
    # AND the next record is half-way onto the disk (not durable, not acked)
    stalled, resume = stall_next_write(wal, monkeypatch)
    pending = asyncio.create_task(wal.append(payload(2, size=400)))
    assert await asyncio.get_running_loop().run_in_executor(None, stalled.wait, 10)

    # WHEN the mapper reads the log from disk meanwhile (as it does when the cache cannot serve it)
    try:
        records, bound = wal.read_from(START, 100)
    finally:
        resume.set()
        await pending

    # THEN it gets the durable records and nothing past the durable end it reports
    assert bound == ends[-1]
    assert [p for _, p in records] == earlier
    wal.close()


async def test_read_from_ignores_records_not_yet_fsynced_after_a_rotation(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a log whose last group filled its segment, so the WAL thread rotated to a new, empty one
    wal = open_wal(wal_dir, segment_bytes=100)
    earlier = [payload(0), payload(1)]
    ends = await append_all(wal, earlier)
    assert wal.segments()[-1] == ends[-1].segment + 1
    # AND the next group is written and flushed, and its fsync has not returned yet
    in_fsync, resume = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def stalling_fsync(fd: int) -> None:
        in_fsync.set()
        resume.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stalling_fsync)
    pending = asyncio.create_task(wal.append(payload(2)))
    assert await asyncio.get_running_loop().run_in_executor(None, in_fsync.wait, 10)

    # WHEN the mapper reads the log from disk meanwhile
    try:
        records, bound = wal.read_from(START, 100)
    finally:
        resume.set()
        await pending

    # THEN it gets only records up to the durable end it reports
    assert bound == ends[-1]
    assert all(pos <= bound for pos, _ in records)
    assert [p for _, p in records] == earlier
    wal.close()


async def test_a_budgeted_read_takes_about_its_budget_and_resumes_where_it_stopped(wal_dir: Path) -> None:
    # GIVEN 400 records of 10 KiB in one segment
    wal = WriteAheadLog(wal_dir)
    wal.open()
    payloads = [bytes([i % 256]) * 10_240 for i in range(400)]
    for payload in payloads:
        await wal.append(payload)
    # WHEN they are read back with a budget of 1 MiB per read
    got: list[bytes] = []
    cursor = START
    reads = 0
    while reads < 100:
        records, _ = wal.read_from(cursor, 1_000_000, max_bytes=1024 * 1024)
        if not records:
            break
        reads += 1
        assert sum(len(p) for _, p in records) < 1024 * 1024 + 10_240  # the budget, plus the record that crossed it
        got += [p for _, p in records]
        cursor = records[-1][0]
    # THEN every record comes back once, in order, over several reads
    assert got == payloads
    assert reads >= 4
    wal.close()


async def test_a_budgeted_read_still_finds_damage_at_its_cursor(wal_dir: Path) -> None:
    # GIVEN segments of about 3 MiB, and records after the first of the oldest one damaged
    wal = WriteAheadLog(wal_dir)
    wal.segment_bytes = 3 * 1024 * 1024
    wal.open()
    for i in range(60):
        await wal.append(bytes([i]) * 100_000)
    first, _ = wal.read_from(START, 1)
    wal.close()
    path = sorted(wal_dir.glob("*.wal"))[0]
    assert len(list(wal_dir.glob("*.wal"))) > 1
    data = bytearray(path.read_bytes())
    offset = first[0][0].offset
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    wal = WriteAheadLog(wal_dir)
    wal.open()
    # WHEN a budgeted read (smaller than what follows in the segment) starts at the damage
    # THEN the damage is reported, not taken for the end of the records
    with pytest.raises(SpoolCorrupt):
        wal.read_from(first[0][0], 100, max_bytes=1024 * 1024)
    wal.close()


def _records_file() -> bytes:
    return b"".join(encode_record(bytes([i]) * (i * 7 + 1)) for i in range(6))


def _damaged(kind: str) -> bytes:
    """The six records of ``_records_file``, damaged as ``kind`` says."""
    data = bytearray(_records_file())
    third = len(encode_record(b"\x00")) + len(encode_record(b"\x01" * 8))  # where record 2 starts
    if kind == "torn":
        del data[-5:]
    elif kind == "flipped":
        data[third + HEADER.size + 3] ^= 0xFF
    elif kind == "magic":
        data[third] = ord("X")
    elif kind == "huge":
        HEADER.pack_into(data, third, MAGIC, 2**31, 0)
    elif kind == "short header":
        data += b"W1\x00"
    return bytes(data)


@pytest.mark.parametrize("kind", ["whole", "torn", "flipped", "magic", "huge", "short header"])
def test_records_read_from_a_file_are_those_scanned_from_its_bytes(tmp_path: Path, kind: str) -> None:
    # GIVEN a file of records, whole or damaged
    path = tmp_path / "records"
    path.write_bytes(_damaged(kind))
    # WHEN it is read a record at a time
    with path.open("rb") as f:
        read = list(read_records(f))
    # THEN the records and their offsets are those a scan of the whole file finds, stopping at
    # the same first bad record
    assert read == list(scan_records(path.read_bytes()))
    assert len(read) == {"whole": 6, "torn": 5, "short header": 6}.get(kind, 2)
