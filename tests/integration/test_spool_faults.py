"""Damaged and full spools under the real process: a torn tail is cut, a damaged older log segment
goes to quarantine/ while every record outside its damaged part lands in the lake, and a write-ahead
log that runs out of space (a real, tiny tmpfs) fails the chunk without an ack and keeps what was
acked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import msgpack
import pytest

from securitylake_sink.errors import ProtocolError
from securitylake_sink.forward_client import ForwardClient, pack_entries
from securitylake_sink.model import Chunk
from securitylake_sink.sources.forward_codec import decode_spooled
from securitylake_sink.spool import Spool
from securitylake_sink.spool.wal import encode_record, scan_records
from tests.integration.sinkproc import SinkProcess, auth_records, free_port, write_config

RECORDS_PER_CHUNK = 50
CHUNKS = 24
SEGMENT_BYTES = 16 * 1024  # a few chunks per segment


def lake_uid_counts(lake: Path) -> Counter[int]:
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT metadata.uid::BIGINT AS uid, count(*) FROM read_parquet('{lake}/**/*.parquet', "
            "hive_partitioning = 1) GROUP BY uid"
        )
        .fetchall()
    )
    return Counter({int(uid): int(n) for uid, n in rows})


def chunk_ids(index: int) -> range:
    return range(index * RECORDS_PER_CHUNK, (index + 1) * RECORDS_PER_CHUNK)


def spooled_chunk(index: int) -> Chunk:
    raw = msgpack.packb(["fault.test", pack_entries(auth_records(chunk_ids(index), time.time_ns())), {}],
                        use_bin_type=True)  # fmt: skip
    return decode_spooled(raw, time.time_ns())


def write_log(spool_path: Path, chunks: int) -> None:
    """Acked chunks the sink never got to map: written with the spool's own API, small segments."""

    async def fill() -> None:
        spool = Spool(spool_path)
        spool.wal.segment_bytes = SEGMENT_BYTES
        spool.open()
        try:
            for index in range(chunks):
                await spool.submit(spooled_chunk(index))
        finally:
            spool.close()

    asyncio.run(fill())


def test_torn_tail_is_cut_and_a_damaged_segment_quarantined(tmp_path: Path) -> None:
    # GIVEN a spool whose log holds CHUNKS acked chunks over several segments, none mapped yet
    spool = tmp_path / "spool"
    write_log(spool, CHUNKS)
    segments = sorted((spool / "wal").glob("*.wal"))
    assert len(segments) >= 4
    records = [(path, offset) for path in segments for offset, _, _ in scan_records(path.read_bytes())]
    assert len(records) == CHUNKS  # record i holds chunk i
    # AND the second segment has bytes flipped inside its second record (an older segment)
    damaged = segments[1]
    in_damaged = [i for i, (path, _) in enumerate(records) if path == damaged]
    assert len(in_damaged) >= 2
    hit = in_damaged[1]
    offset = records[hit][1]
    data = bytearray(damaged.read_bytes())
    for i in range(offset + 20, offset + 28):
        data[i] ^= 0x5A
    damaged.write_bytes(bytes(data))
    lost = set(in_damaged[1:])  # the damaged record and everything after it in that segment
    # AND the newest segment ends with half a record (a write cut short by a crash)
    torn = encode_record(b"half of a chunk that was never acked" * 20)
    newest = segments[-1]
    size_before_tear = newest.stat().st_size
    with newest.open("ab") as f:
        f.write(torn[: len(torn) // 2])

    # WHEN the sink starts on that spool, then takes more records, then stops
    port = free_port()
    sink = SinkProcess(write_config(tmp_path, port, extra="batch: {max_age_secs: 1}\n"), port, tmp_path / "sink.log")
    sink.wait_for_log("quarantined a damaged write-ahead-log segment", timeout=60)
    later = range(100_000, 100_000 + RECORDS_PER_CHUNK)
    with ForwardClient("127.0.0.1", port, timeout=30) as client:
        client.send("fault.test", auth_records(later, time.time_ns()))
    assert sink.stop() == 0, sink.log()

    # THEN the torn tail was cut, and only it
    log = sink.log()
    assert "cut a torn record off the spool's write-ahead log" in log
    assert f"kept_bytes={size_before_tear}" in log
    # AND the damaged segment is in quarantine/, whole, with a reason saying where and what was lost
    quarantined = spool / "quarantine" / damaged.name
    assert quarantined.read_bytes() == bytes(data)
    reason = (spool / "quarantine" / f"{damaged.stem}.reason.json").read_text()
    assert f'"damaged_at": {offset}' in reason and f'"lost_bytes": {len(data) - offset}' in reason
    assert f'"intact_records_after_damage": {len(lost) - 1}' in reason
    # AND every record outside the damaged part, and every record sent later, is in the lake once
    expected = Counter(uid for i in range(CHUNKS) if i not in lost for uid in chunk_ids(i))
    expected.update(later)
    assert lake_uid_counts(tmp_path / "lake") == expected
    assert not list((spool / "sealed").glob("*.batch"))


# -- a write-ahead log that runs out of space -----------------------------------------------------

FULL_WAL_BYTES = 512 * 1024  # what the tmpfs under wal/ holds at first
CHUNK_RECORDS = 200


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: int) -> Iterator[None]:
    """A real tmpfs of ``size`` bytes mounted at ``mount_point`` (root only; the test is skipped
    where mounting is not allowed)."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_wal(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of FULL_WAL_BYTES mounted at <spool>/wal (root only; skipped elsewhere)."""
    wal = tmp_path / "spool" / "wal"
    wal.mkdir(parents=True)
    with tmpfs(wal, FULL_WAL_BYTES):
        yield wal


def test_a_full_write_ahead_log_fails_the_chunk_and_keeps_what_was_acked(tmp_path: Path, small_wal: Path) -> None:
    # GIVEN a sink whose write-ahead log lives on a small file system, batches kept open (nothing
    # leaves the spool before the fault)
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 86400}\n")
    sink = SinkProcess(config, port, tmp_path / "sink1.log")

    # WHEN a client sends chunks until one is not acked
    acked: list[int] = []
    failed: range | None = None
    with ForwardClient("127.0.0.1", port, timeout=30) as client:
        for index in range(2 * FULL_WAL_BYTES // (CHUNK_RECORDS * 100)):  # bounded: far more than fits
            ids = range(index * CHUNK_RECORDS, (index + 1) * CHUNK_RECORDS)
            try:
                client.send("fault.test", auth_records(ids, time.time_ns()))
            except (OSError, ProtocolError):
                failed = ids
                break
            acked.extend(ids)

    # THEN the chunk that did not fit got no ack, and the log says why
    assert failed is not None, "the write-ahead log never filled"
    assert acked, "nothing was acked before the file system filled"
    sink.wait_for_log("Closed a connection without ack: the chunk could not be stored.")
    assert "No space left on device" in sink.log()
    # AND the log holds no trace of the failed chunk: every segment is whole records only
    for segment in small_wal.glob("*.wal"):
        data = segment.read_bytes()
        assert sum(end - start for start, end, _ in scan_records(data)) == len(data)

    # WHEN the sink dies, the file system gets room, and the sink starts again and stops
    sink.kill()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_wal)], check=True)
    sink = SinkProcess(config, port, tmp_path / "sink2.log")
    assert sink.stop() == 0, sink.log()

    # THEN every acked record is in the lake exactly once, the failed chunk is not, nothing was
    # cut or quarantined on recovery
    assert lake_uid_counts(tmp_path / "lake") == Counter(acked)
    assert "cut a torn record" not in sink.log() and "quarantined" not in sink.log()
    assert not list((tmp_path / "spool" / "quarantine").iterdir())


SMALL_BATCHES_BYTES = 1024 * 1024  # the tmpfs under the batch files
ROOM_LEFT_BYTES = 16 * 1024  # what the filler leaves free: less than one step appends


@pytest.fixture
def small_open(tmp_path: Path) -> Iterator[Path]:
    """<spool>/open (returned) and <spool>/sealed on one real tmpfs of SMALL_BATCHES_BYTES (sealing
    is a rename, so both live on it; the log stays on the disk). Root only; skipped elsewhere."""
    mount_point = tmp_path / "batches"
    mount_point.mkdir()
    with tmpfs(mount_point, SMALL_BATCHES_BYTES):
        (tmp_path / "spool").mkdir()
        for name in ("open", "sealed"):
            (mount_point / name).mkdir()
            (tmp_path / "spool" / name).symlink_to(mount_point / name, target_is_directory=True)
        yield tmp_path / "spool" / "open"


def fill(directory: Path, leave: int) -> Path:
    """A file taking all the free space of ``directory``'s file system but ``leave`` bytes."""
    filler = directory / "filler.bin"
    stat = os.statvfs(directory)
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def send_chunks(client: ForwardClient, indexes: range, sent: list[int]) -> None:
    for index in indexes:
        ids = range(index * CHUNK_RECORDS, (index + 1) * CHUNK_RECORDS)
        client.send("fault.test", auth_records(ids, time.time_ns()))
        sent.extend(ids)


def test_a_full_disk_under_the_batch_files_pauses_mapping_then_it_resumes_without_loss_or_duplicates(
    tmp_path: Path, small_open: Path
) -> None:
    # GIVEN a running sink whose batch files live on a small file system, batches kept open
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 86400}\n")
    sink = SinkProcess(config, port, tmp_path / "sink.log")
    sent: list[int] = []
    with ForwardClient("127.0.0.1", port, timeout=30) as client:
        send_chunks(client, range(3), sent)  # mapped into an open batch before the fault
        for _ in range(600):
            if list(small_open.glob("*.batch")):
                break
            time.sleep(0.05)
        # WHEN that file system fills up and more records come (acked: the log is elsewhere)
        filler = fill(small_open, ROOM_LEFT_BYTES)
        send_chunks(client, range(3, 13), sent)
        unmapped = list(range(900_000, 900_000 + CHUNK_RECORDS))  # no rule maps them: dead letters
        client.send("fault.unmapped", [(time.time_ns(), {"message": "no class", "n": n}) for n in unmapped])
        # THEN mapping fails on the full disk and pauses, and the sink still takes and acks records
        sink.wait_for_log("cannot map the spool's write-ahead log; resuming from the checkpoint after a pause")
        assert "No space left on device" in sink.log()
        send_chunks(client, range(13, 15), sent)

    # WHEN the space comes back, THEN the same process goes back to its checkpoint and maps on
    filler.unlink()
    sink.wait_for_log("resumed mapping from the checkpoint", timeout=60)
    assert sink.proc.poll() is None  # never restarted
    assert sink.stop() == 0, sink.log()

    # AND every acked record is in the lake exactly once: the failed steps' partial appends were cut
    assert lake_uid_counts(tmp_path / "lake") == Counter(sent)
    letters = [json.loads(line) for path in (tmp_path / "spool" / "dead_letter").glob("*.ndjson")
               for line in path.read_text().splitlines()]  # fmt: skip
    assert Counter(letter["record"]["n"] for letter in letters) == Counter(unmapped)
    assert "stopped  objects=" in sink.log() and "clean=True" in sink.log()
    assert not list((tmp_path / "spool" / "quarantine").iterdir())
    assert not list((tmp_path / "spool" / "sealed").glob("*.batch"))
