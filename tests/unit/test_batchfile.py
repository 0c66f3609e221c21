"""Batch files: Arrow frames tagged with write-ahead-log positions; recovery against a checkpoint,
torn tails, damage, and the durable move that seals a batch."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from securitylake_sink.errors import SpoolCorrupt
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.spool.batchfile import BatchFile, BatchHeader
from securitylake_sink.spool.wal import HEADER, WalPosition

SCHEMA = load_schema("1.1.0").arrow_schema(3002)  # Authentication
HOUR = 1_700_000_000 // 3600


def rows(first: int, count: int) -> list[dict[str, object]]:
    """Authentication events with ids ``first`` .. ``first + count - 1`` in ``metadata.uid``."""
    return [
        {
            "class_uid": 3002,
            "activity_id": 1,
            "type_uid": 300201,
            "time": HOUR * 3_600_000 + i,
            "user": {"name": f"user-{i}"},
            "metadata": {"uid": str(i), "version": "1.1.0"},
        }
        for i in range(first, first + count)
    ]


def record_batch(first: int, count: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows(first, count), schema=SCHEMA)


def header(batch_id: str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b") -> BatchHeader:
    return BatchHeader(
        batch_id=batch_id,
        class_uid=3002,
        ocsf_version="1.1.0",
        location="ext/test/",
        hour=HOUR,
        key=f"ext/test/region=eu-west-1/accountId=111122223333/eventDay=20231114/{batch_id}.parquet",
        created_ns=time.time_ns(),
    )


def uids(table: pa.Table) -> list[str]:
    return [m["uid"] for m in table.column("metadata").to_pylist()]


# Three frames from three consecutive chunks; positions as the mapper tags them (chunk end positions).
FRAMES = [
    (WalPosition(1, 120), 0, 3),
    (WalPosition(1, 260), 3, 2),
    (WalPosition(2, 90), 5, 4),
]


def written_file(directory: Path, frames: list[tuple[WalPosition, int, int]] = FRAMES) -> BatchFile:
    """A batch file with ``frames`` appended and synced, then closed."""
    directory.mkdir(parents=True, exist_ok=True)
    batch = BatchFile.create(directory, header())
    for position, first, count in frames:
        batch.append(record_batch(first, count), position)
    batch.sync()
    batch.close()
    return batch


def frame_ends(path: Path) -> list[int]:
    """Byte offsets where the header record and each frame end (parsed independently)."""
    data = path.read_bytes()
    ends, pos = [], 0
    while pos < len(data):
        _, length, _ = HEADER.unpack_from(data, pos)
        pos += HEADER.size + length
        ends.append(pos)
    return ends


def test_appended_frames_read_back_after_reopen(tmp_path: Path) -> None:
    # GIVEN a batch file created, appended to, synced and closed
    batch = written_file(tmp_path / "open")
    expected_ids = [str(i) for _, first, count in FRAMES for i in range(first, first + count)]

    # WHEN it is opened again (no checkpoint: a sealed batch)
    reopened = BatchFile.open(batch.path)

    # THEN its header, row count and size are what was written, and its table holds every row in order
    assert reopened.header == batch.header
    assert reopened.rows == batch.rows == len(expected_ids)
    assert reopened.bytes == batch.bytes
    table = reopened.read_table(SCHEMA)
    assert table.schema == SCHEMA
    assert uids(table) == expected_ids
    assert (
        table.to_pylist()
        == pa.Table.from_batches([record_batch(first, count) for _, first, count in FRAMES], schema=SCHEMA).to_pylist()
    )


def test_appends_after_reopen_follow_the_recovered_frames(tmp_path: Path) -> None:
    # GIVEN a batch file reopened after a restart
    batch = written_file(tmp_path / "open")
    reopened = BatchFile.open(batch.path, FRAMES[-1][0])

    # WHEN the mapper appends another frame and syncs
    reopened.append(record_batch(100, 2), WalPosition(3, 10))
    reopened.sync()
    reopened.close()

    # THEN the file holds the old rows then the new ones
    assert uids(BatchFile.open(batch.path).read_table(SCHEMA))[-3:] == ["8", "100", "101"]
    assert reopened.rows == batch.rows + 2


@pytest.mark.parametrize("kept", range(len(FRAMES)))
def test_frames_past_the_checkpoint_are_cut_and_frames_at_it_kept(tmp_path: Path, kept: int) -> None:
    # GIVEN a batch file whose frames came from three chunks, and a checkpoint at the end of chunk ``kept``
    batch = written_file(tmp_path / "open")
    ends = frame_ends(batch.path)  # header, frame 1, frame 2, frame 3
    checkpoint = FRAMES[kept][0]
    kept_frames = FRAMES[: kept + 1]
    expected_ids = [str(i) for _, first, count in kept_frames for i in range(first, first + count)]

    # WHEN it is opened as an open batch during recovery
    recovered = BatchFile.open(batch.path, checkpoint)

    # THEN the frame AT the checkpoint and those before it are kept, those past it are gone from disk
    assert recovered.rows == len(expected_ids)
    assert uids(recovered.read_table(SCHEMA)) == expected_ids
    assert batch.path.stat().st_size == ends[kept + 1]
    # AND opening again (e.g. a second crash) keeps the same frames
    again = BatchFile.open(batch.path, checkpoint)
    assert again.rows == recovered.rows
    assert uids(again.read_table(SCHEMA)) == expected_ids


def test_checkpoint_between_frames_keeps_the_frames_before_it(tmp_path: Path) -> None:
    # GIVEN a batch file and a checkpoint that lies after frame 1 but before frame 2's position
    batch = written_file(tmp_path / "open")
    checkpoint = WalPosition(FRAMES[1][0].segment, FRAMES[1][0].offset - 1)

    # WHEN it is recovered
    recovered = BatchFile.open(batch.path, checkpoint)

    # THEN only frame 1 is left
    assert uids(recovered.read_table(SCHEMA)) == [str(i) for i in range(FRAMES[0][1], FRAMES[0][1] + FRAMES[0][2])]


def test_checkpoint_before_every_frame_leaves_only_the_header(tmp_path: Path) -> None:
    # GIVEN a batch file whose chunks were all mapped after the checkpoint
    batch = written_file(tmp_path / "open")

    # WHEN it is recovered against an older checkpoint
    recovered = BatchFile.open(batch.path, WalPosition(1, 0))

    # THEN it has no rows and reads as an empty table in its schema
    assert recovered.rows == 0
    assert recovered.bytes == 0
    assert recovered.read_table(SCHEMA).num_rows == 0
    assert recovered.header == batch.header


@pytest.mark.parametrize("cut", [1, 7, 30], ids=lambda c: f"cut-{c}-bytes")
def test_torn_tail_is_cut(tmp_path: Path, cut: int) -> None:
    # GIVEN a batch file whose last frame was only partly written before a crash
    batch = written_file(tmp_path / "open")
    ends = frame_ends(batch.path)  # header, frame 1, frame 2, frame 3
    data = batch.path.read_bytes()
    batch.path.write_bytes(data[:-cut])

    # WHEN it is recovered
    recovered = BatchFile.open(batch.path, FRAMES[-1][0])

    # THEN the torn frame is gone, every whole frame is kept, and the file reads cleanly
    assert batch.path.stat().st_size == ends[-2]
    table = recovered.read_table(SCHEMA)
    assert uids(table) == [str(i) for _, first, count in FRAMES[:-1] for i in range(first, first + count)]
    assert recovered.rows == table.num_rows


def test_garbage_after_the_last_frame_is_cut(tmp_path: Path) -> None:
    # GIVEN a batch file with junk after its last whole frame
    batch = written_file(tmp_path / "open")
    size = batch.path.stat().st_size
    with batch.path.open("ab") as f:
        f.write(b"\x00\x01 not a frame \xff" * 4)

    # WHEN it is recovered THEN the junk is cut and every frame is kept
    recovered = BatchFile.open(batch.path)
    assert batch.path.stat().st_size == size
    assert recovered.rows == batch.rows
    assert recovered.read_table(SCHEMA).num_rows == batch.rows


def test_damaged_frame_in_the_middle_is_corruption(tmp_path: Path) -> None:
    # GIVEN a batch file whose second frame had a byte flipped after it was written
    batch = written_file(tmp_path / "sealed")
    ends = frame_ends(batch.path)
    data = bytearray(batch.path.read_bytes())
    data[ends[1] + HEADER.size + 20] ^= 0xFF  # inside frame 2's payload
    batch.path.write_bytes(bytes(data))

    # WHEN its table is read for delivery THEN it is reported as corrupt, not delivered short
    with pytest.raises(SpoolCorrupt, match=batch.path.name):
        batch.read_table(SCHEMA)


def test_file_without_a_readable_header_is_corruption(tmp_path: Path) -> None:
    # GIVEN a batch file whose header record is damaged
    batch = written_file(tmp_path / "open")
    data = bytearray(batch.path.read_bytes())
    data[HEADER.size + 1] ^= 0xFF
    batch.path.write_bytes(bytes(data))

    # WHEN it is opened THEN it is corrupt
    with pytest.raises(SpoolCorrupt, match="header"):
        BatchFile.open(batch.path)


def test_move_to_moves_the_file_with_its_frames_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an open batch with appended frames that are not yet synced
    open_dir, sealed_dir = tmp_path / "open", tmp_path / "sealed"
    open_dir.mkdir()
    sealed_dir.mkdir()
    batch = BatchFile.create(open_dir, header())
    batch.append(record_batch(0, 3), WalPosition(1, 50))
    batch.append(record_batch(3, 1), WalPosition(1, 90))
    old_path = batch.path
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    # WHEN it is moved to the sealed directory
    batch.move_to(sealed_dir)

    # THEN it lives there under the same name, not in the old directory, with every frame
    assert batch.path == sealed_dir / old_path.name
    assert not old_path.exists()
    assert list(open_dir.iterdir()) == []
    assert uids(BatchFile.open(batch.path).read_table(SCHEMA)) == ["0", "1", "2", "3"]
    # AND durably: its frames were fsynced before the rename, then both directories were fsynced
    assert synced[0] == str(old_path)
    assert str(sealed_dir) in synced[1:]
    assert str(open_dir) in synced[1:]


class _Reads:
    """A file whose reads are recorded by size."""

    def __init__(self, f: Any, sizes: list[int]) -> None:
        self._f, self._sizes = f, sizes

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        self._sizes.append(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _Reads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def test_reading_a_batch_holds_one_frame_of_the_file_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a batch file of three frames
    batch = written_file(tmp_path / "sealed")
    ends = frame_ends(batch.path)
    largest = max(b - a for a, b in itertools.pairwise(ends))
    sizes: list[int] = []
    opened = Path.open

    def recording(self: Path, *args: Any, **kwargs: Any) -> Any:
        f = opened(self, *args, **kwargs)
        return _Reads(f, sizes) if self == batch.path else f

    monkeypatch.setattr(Path, "open", recording)
    # WHEN its table is read for delivery
    table = batch.read_table(SCHEMA)
    # THEN every row is there, and no read took more than one frame's bytes: the compressed
    # file is never held whole beside the batches it decompresses into
    assert uids(table) == [str(i) for i in range(9)]
    assert sizes and max(sizes) <= largest < batch.path.stat().st_size / 2


def test_a_sealed_batch_cut_short_is_corruption_when_read(tmp_path: Path) -> None:
    # GIVEN a batch file whose last frame lost its tail after it was sealed
    batch = written_file(tmp_path / "sealed")
    ends = frame_ends(batch.path)
    with batch.path.open("r+b") as f:
        f.truncate(ends[-1] - 10)
    # WHEN its table is read for delivery THEN it is corrupt at the last good frame's end
    with pytest.raises(SpoolCorrupt, match=f"damaged at byte {ends[-2]}"):
        batch.read_table(SCHEMA)
