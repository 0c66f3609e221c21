"""Tests for securitylake_sink.deadletter: local files, rotation for shipping, the object key, and
shipping that deletes a file only after its put (real files, a real LocalStore; Stubber for the
exact S3 call)."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from securitylake_sink.deadletter import DeadLetterShipper, DeadLetterWriter, Rotation, dead_letter_key
from securitylake_sink.errors import PermanentDelivery
from securitylake_sink.lake.layout import uuid7
from securitylake_sink.lake.s3 import S3Store
from securitylake_sink.lake.store import LocalStore
from securitylake_sink.lake.url import parse_destination
from securitylake_sink.mapping.basic import DeadLetter
from securitylake_sink.spool.wal import WalPosition

NOV_28_MS = int(datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
JAN_1_MS = int(datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp() * 1000)
NEVER = Rotation(max_age_secs=3600, max_bytes=1024 * 1024)


def letters(*ids: int, tag: str = "app.raw") -> list[DeadLetter]:
    return [DeadLetter(tag, "nginx_access", "mappings: no rule takes it", {"id": i, "msg": f"m{i}"}, None) for i in ids]


def ids_in(data: bytes) -> list[int]:
    return [json.loads(line)["record"]["id"] for line in data.splitlines()]


def stored(root: Path) -> dict[str, bytes]:
    """key → the object's bytes, gunzipped, for every object under a LocalStore root."""
    return {str(p.relative_to(root)): gzip.decompress(p.read_bytes()) for p in root.rglob("*.gz")}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the object key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "ms", "day"),
    [("", NOV_28_MS, "2026/11/28"), ("dead/", NOV_28_MS, "2026/11/28"), ("a/b/", JAN_1_MS, "2027/01/01")],
)
def test_key_is_the_prefix_the_files_utc_day_and_its_name(prefix: str, ms: int, day: str) -> None:
    name = str(uuid7(ms))
    assert dead_letter_key(prefix, f"{name}.ndjson") == f"{prefix}{day}/{name}.ndjson.gz"


@pytest.mark.parametrize(
    "name", ["20261128.ndjson", "notes.ndjson", f"{uuid7()}.txt", "0190f0a4-aaaa-4bbb-8ccc-0123456789ab.ndjson"]
)
def test_key_needs_a_uuid7_file_name(name: str) -> None:
    with pytest.raises(ValueError, match="not a dead-letter file name"):
        dead_letter_key("dead/", name)


# -- writing and rotation ------------------------------------------------------------------------


def test_local_writer_keeps_one_file_per_day_and_never_rotates(tmp_path: Path) -> None:
    writer = DeadLetterWriter(tmp_path)
    writer.write(letters(1, 2), WalPosition(0, 10))
    writer.rotate(force=True)
    writer.write(letters(3), WalPosition(0, 20))
    writer.close()
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert [p.name for p in tmp_path.iterdir()] == [f"{today}.ndjson"]
    assert ids_in((tmp_path / f"{today}.ndjson").read_bytes()) == [1, 2, 3]
    assert writer.take_closed() == []


def test_text_that_is_not_utf8_is_written_replaced(tmp_path: Path) -> None:
    # GIVEN records holding bytes that were not UTF-8 (a surrogate escape, as the forward decoder
    # keeps them) and a lone surrogate (as JSON "\ud800" decodes), also in a key and in a list
    records = [{"id": 1, "msg": "a\udcffb"}, {"id": 2, "msg": "c\ud800d", "k\udcfe": ["\ud801"]}]
    writer = DeadLetterWriter(tmp_path)
    # WHEN they are written as dead letters
    writer.write([DeadLetter("app", "r", "why", r, None) for r in records], WalPosition(0, 10))
    writer.close()
    # THEN every line is valid UTF-8 JSON, the odd bytes replaced, nothing else changed
    (path,) = tmp_path.iterdir()
    got = [json.loads(line)["record"] for line in path.read_bytes().decode("utf-8").splitlines()]
    assert got == [{"id": 1, "msg": "a\ufffdb"}, {"id": 2, "msg": "c?d", "k\ufffd": ["?"]}]


def test_rotation_closes_the_file_at_its_size(tmp_path: Path) -> None:
    writer = DeadLetterWriter(tmp_path, Rotation(max_age_secs=3600, max_bytes=400))
    writer.write(letters(1), WalPosition(0, 1))
    writer.rotate()
    assert writer.take_closed() == []  # one line is below 400 bytes
    writer.write(letters(2, 3), WalPosition(0, 2))
    writer.rotate()
    [first] = writer.take_closed()
    writer.write(letters(4), WalPosition(0, 3))
    writer.rotate(force=True)
    [second] = writer.take_closed()
    assert first != second and first.name < second.name  # uuid7 names sort by creation
    assert ids_in(first.read_bytes()) == [1, 2, 3] and ids_in(second.read_bytes()) == [4]


def test_rotation_closes_the_file_at_its_age(tmp_path: Path) -> None:
    clock = Clock()
    writer = DeadLetterWriter(tmp_path, Rotation(max_age_secs=60, max_bytes=1024 * 1024), clock=clock)
    writer.rotate()  # no open file: nothing to close
    writer.write(letters(1), WalPosition(0, 1))
    clock.now += 59
    writer.rotate()
    assert writer.take_closed() == []
    clock.now += 1
    writer.rotate()
    [closed] = writer.take_closed()
    assert ids_in(closed.read_bytes()) == [1]
    assert writer.take_closed() == []  # taken once


# -- shipping ------------------------------------------------------------------------------------


class WatchingStore:
    """A LocalStore that notes, at each put, whether the local file still existed."""

    def __init__(self, watched: Path, root: Path) -> None:
        self.watched, self.inner = watched, LocalStore(root)
        self.seen: list[bool] = []

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, data: bytes) -> None:
        self.seen.append(self.watched.exists())
        self.inner.put(key, data)


def test_shipping_stores_gzip_ndjson_and_deletes_the_file_after_the_put(tmp_path: Path) -> None:
    writer = DeadLetterWriter(tmp_path / "spool", NEVER)
    writer.write(letters(1, 2, 3), WalPosition(0, 5))
    writer.rotate(force=True)
    [path] = writer.take_closed()
    original = path.read_bytes()
    store = WatchingStore(path, tmp_path / "bucket")
    shipped = DeadLetterShipper(store, "dead/").ship(path)
    assert shipped is not None and shipped.lines == 3
    assert store.seen == [True]  # the file was still there while the put ran
    assert not path.exists()
    assert stored(tmp_path / "bucket") == {shipped.key: original}
    line = json.loads(original.splitlines()[0])
    assert (line["tag"], line["rule"], line["reason"], line["record"]) == (
        "app.raw",
        "nginx_access",
        "mappings: no rule takes it",
        {"id": 1, "msg": "m1"},
    )


def test_a_failed_put_keeps_the_file_and_a_later_one_ships_it(tmp_path: Path) -> None:
    writer = DeadLetterWriter(tmp_path / "spool", NEVER)
    writer.write(letters(7), WalPosition(0, 5))
    writer.rotate(force=True)
    [path] = writer.take_closed()
    (tmp_path / "not-a-dir").write_text("x")
    # WHEN the store cannot take the object, THEN the error is the store's and the file stays
    with pytest.raises(PermanentDelivery):
        DeadLetterShipper(LocalStore(tmp_path / "not-a-dir"), "dead/").ship(path)
    assert ids_in(path.read_bytes()) == [7]
    # WHEN it works again, THEN the same file is shipped and deleted
    shipped = DeadLetterShipper(LocalStore(tmp_path / "bucket"), "dead/").ship(path)
    assert shipped is not None and not path.exists()
    assert [ids_in(data) for data in stored(tmp_path / "bucket").values()] == [[7]]


def test_a_crash_between_put_and_delete_stores_the_same_object_again(tmp_path: Path) -> None:
    writer = DeadLetterWriter(tmp_path / "spool", NEVER)
    writer.write(letters(1, 2), WalPosition(0, 5))
    writer.rotate(force=True)
    [path] = writer.take_closed()
    kept = tmp_path / "copy"
    shutil.copy(path, kept)
    shipper = DeadLetterShipper(LocalStore(tmp_path / "bucket"), "dead/")
    first = shipper.ship(path)
    shutil.copy(kept, path)  # as if the process died after the put, before the delete
    second = shipper.ship(path)
    assert first is not None and second is not None and first.key == second.key
    objects = list((tmp_path / "bucket").rglob("*.gz"))
    assert len(objects) == 1 and ids_in(gzip.decompress(objects[0].read_bytes())) == [1, 2]


def test_recover_then_ship_after_a_crash(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    # GIVEN a closed file wholly before the checkpoint, and an open one whose last lines are past it
    writer = DeadLetterWriter(spool, NEVER)
    writer.write(letters(1, 2), WalPosition(0, 10))
    writer.sync()
    writer.rotate(force=True)
    writer.write(letters(3), WalPosition(0, 20))
    writer.write(letters(4), WalPosition(0, 30))
    writer.sync()  # the process dies before the checkpoint passes (0, 30): no close, no rotate
    # WHEN the next process recovers at checkpoint (0, 20) and lists what to ship
    after = DeadLetterWriter(spool, NEVER)
    after.recover(WalPosition(0, 20))
    files = after.closed_on_disk()
    # THEN both files ship; the line past the checkpoint is gone (its chunk is mapped again)
    assert len(files) == 2
    shipper = DeadLetterShipper(LocalStore(tmp_path / "bucket"), "")
    for path in files:
        shipper.ship(path)
    assert sorted(i for data in stored(tmp_path / "bucket").values() for i in ids_in(data)) == [1, 2, 3]
    assert list(spool.iterdir()) == []


def test_a_file_recovery_empties_is_deleted_without_a_put(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    writer = DeadLetterWriter(spool, NEVER)
    writer.write(letters(9), WalPosition(1, 0))
    writer.sync()
    after = DeadLetterWriter(spool, NEVER)
    after.recover(WalPosition(0, 99))
    [path] = after.closed_on_disk()
    assert DeadLetterShipper(LocalStore(tmp_path / "bucket"), "").ship(path) is None
    assert not path.exists() and not (tmp_path / "bucket").exists()


def test_day_files_from_local_dead_letters_are_renamed_to_their_day_and_shipped(tmp_path: Path) -> None:
    # GIVEN a day file left by local dead letters (dead_letter.location was the default)
    spool = tmp_path / "spool"
    local = DeadLetterWriter(spool)
    local.write(letters(5), WalPosition(0, 1))
    local.close()
    day = datetime.now(UTC)
    # WHEN shipping starts, THEN it is renamed once (fixing its key) and ships under its day
    [path] = DeadLetterWriter(spool, NEVER).closed_on_disk()
    assert path.name != f"{day:%Y%m%d}.ndjson"
    shipped = DeadLetterShipper(LocalStore(tmp_path / "bucket"), "dead/").ship(path)
    assert shipped is not None and shipped.key.startswith(f"dead/{day:%Y/%m/%d}/")


def test_the_s3_put_is_one_checksummed_put_object_without_the_lake_key(tmp_path: Path) -> None:
    # GIVEN an S3 store for the dead-letter bucket (no SSE-KMS: the bucket's own encryption)
    client: Any = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing").client(  # noqa: S106
        "s3", region_name="us-east-1"
    )
    store = S3Store(parse_destination("s3://dead-letters/sink/", region="us-east-1"), lambda _region: client)
    writer = DeadLetterWriter(tmp_path, NEVER)
    writer.write(letters(1), WalPosition(0, 1))
    writer.rotate(force=True)
    [path] = writer.take_closed()
    key = dead_letter_key("sink/", path.name)
    body = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
    with Stubber(client) as stub:
        expected = {"Bucket": "dead-letters", "Key": key, "Body": body, "ChecksumAlgorithm": "CRC32"}
        stub.add_response("put_object", {}, expected)
        DeadLetterShipper(store, "sink/").ship(path)
        stub.assert_no_pending_responses()
    assert not path.exists()
