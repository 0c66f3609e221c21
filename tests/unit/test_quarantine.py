"""Quarantine of sealed batches the lake keeps rejecting, and of unreadable batch files: the real
App and spool on a temporary directory, with small ObjectStores that reject on purpose."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securitylake_sink import app as app_module
from securitylake_sink import delivery as delivery_module
from securitylake_sink.app import App
from securitylake_sink.config import Config, parse_config
from securitylake_sink.errors import PermanentDelivery, RetriableDelivery
from securitylake_sink.forward_client import pack_entries
from securitylake_sink.lake.store import LocalStore
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.metrics_server import app_readiness, app_snapshot
from securitylake_sink.model import Chunk
from securitylake_sink.sources.forward_codec import decode_spooled
from securitylake_sink.spool import Spool, quarantine
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.telemetry import render_metrics

T0_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
HOUR_MS = 3_600_000
ROWS = 20


def config_for(root: Path, delivery: str, batch_age_secs: float = 86400) -> Config:
    """Class 6003 goes to ext/denied/, every other class to ext/unit/."""
    return parse_config(
        f"""
destination:
  url: "file://{root / "lake"}"
  region: eu-west-1
  account_id: "111122223333"
  sources:
    - {{class_uid: 6003, location: "ext/denied/"}}
    - {{class_uid: "*", location: "ext/unit/"}}
spool: {{path: "{root / "spool"}"}}
batch: {{max_age_secs: {batch_age_secs}}}
delivery: {delivery}
"""
    )


def hour_chunk(hour: int) -> Chunk:
    """ROWS Authentication records in event hour ``hour``: one batch, so one object, per hour."""
    records = []
    for i in range(ROWS):
        t = T0_MS + hour * HOUR_MS + i
        records.append((t * 1_000_000, {"class_uid": 3002, "activity_id": 1, "time": t, "user": {"name": "u"},
                                        "metadata": {"uid": f"{hour}-{i}"}}))  # fmt: skip
    raw = msgpack.packb(["unit.auth", pack_entries(records), {}], use_bin_type=True)
    return decode_spooled(raw, T0_MS * 1_000_000)


def denied_chunk(hour: int) -> Chunk:
    """ROWS API Activity records (class 6003, stored under ext/denied/) in event hour ``hour``."""
    records = []
    for i in range(ROWS):
        t = T0_MS + hour * HOUR_MS + i
        records.append((t * 1_000_000, {"class_uid": 6003, "activity_id": 1, "time": t,
                                        "actor": {"user": {"name": "u"}}, "api": {"operation": "PutObject"},
                                        "src_endpoint": {"ip": "10.0.0.2"},
                                        "metadata": {"uid": f"denied-{hour}-{i}"}}))  # fmt: skip
    raw = msgpack.packb(["unit.api", pack_entries(records), {}], use_bin_type=True)
    return decode_spooled(raw, T0_MS * 1_000_000)


class PrefixRejectingStore(LocalStore):
    """A local lake that rejects every key under ``prefix`` with ``error`` (while it is set) and
    stores the others; ``calls`` lists every key it was asked to store, in order."""

    def __init__(self, root: Path, prefix: str, error: Exception | None) -> None:
        super().__init__(root)
        self.prefix = prefix
        self.error = error
        self.calls: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.calls.append(key)
        if self.error is not None and key.startswith(self.prefix):
            raise self.error
        super().put(key, data)


class RejectingStore(LocalStore):
    """A local lake that rejects the first key it is given, every time, with ``error``; other keys
    are stored. ``calls`` lists every key it was asked to store, in order."""

    def __init__(self, root: Path, error: Exception | None) -> None:
        super().__init__(root)
        self.error = error
        self.rejected: str | None = None
        self.calls: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.calls.append(key)
        if self.error is not None and self.rejected in (None, key):
            self.rejected = key
            raise self.error
        super().put(key, data)


class FlakyStore(LocalStore):
    """A local lake that fails its first ``failures`` puts with a transient error."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def put(self, key: str, data: bytes) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RetriableDelivery("SlowDown: reduce your request rate")
        super().put(key, data)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries a few milliseconds apart, so a test sees many attempts."""
    monkeypatch.setattr(delivery_module, "RETRY_BASE_SECS", 0.001)
    monkeypatch.setattr(delivery_module, "RETRY_MAX_SECS", 0.01)


async def run_sink(config: Config, store: LocalStore, hours: range, timeout: float = 30) -> tuple[App, bool]:
    """Start the App (no listeners), spool one chunk per hour, shut down; (the App, clean)."""
    app = App(config, store=store, listen=False)
    await app.start()
    for hour in hours:
        await app.spool.submit(hour_chunk(hour))
    return app, await app.shutdown(timeout=timeout)


async def stream_until(app: App, done: Callable[[], bool], first_hour: int = 100, limit: int = 200) -> int:
    """Keep the lake busy with objects it accepts: one accepted chunk (a new event hour, so a new
    object) at a time, each waited for until stored, until ``done()``; the number sent. Needs a
    short batch.max_age_secs so each chunk is sealed at once."""
    for sent in range(limit):
        if done():
            return sent
        stored = app.counters.objects
        await app.spool.submit(hour_chunk(first_hour + sent))
        for _ in range(400):
            if app.counters.objects > stored or done():
                break
            await asyncio.sleep(0.01)
    pytest.fail(f"not done after {limit} accepted objects")


def quarantined(root: Path) -> Callable[[], bool]:
    return lambda: bool(quarantine.list_items(root / "spool"))


def lake_uids(lake: Path) -> list[str]:
    return sorted(r["uid"] for p in lake.rglob("*.parquet") for r in pq.read_table(p).column("metadata").to_pylist())


async def test_a_rejected_class_waits_its_backoff_while_the_other_is_stored_then_is_quarantined(
    tmp_path: Path,
) -> None:
    # GIVEN a lake that rejects class 6003's prefix for good and stores class 3002
    error = PermanentDelivery("AccessDenied: not on that prefix")
    store = PrefixRejectingStore(tmp_path / "lake", "ext/denied/", error)
    app = App(config_for(tmp_path, "{max_attempts: 3}", batch_age_secs=0.05), store=store, listen=False)
    await app.start()
    started = time.time()
    try:
        # WHEN an object of each class is spooled, then more of the stored class keep coming
        await app.spool.submit(denied_chunk(0))
        await app.spool.submit(hour_chunk(0))
        sent = await stream_until(app, quarantined(tmp_path))
    finally:
        assert await app.shutdown(timeout=30)

    # THEN objects of the accepted class were stored between the rejected one's attempts (it never
    # held them up) and the rejected one is in quarantine/ after max_attempts counted rejections
    denied = [i for i, key in enumerate(store.calls) if key.startswith("ext/denied/")]
    accepted = [i for i, key in enumerate(store.calls) if key.startswith("ext/unit/")]
    assert len({store.calls[i] for i in denied}) == 1
    assert len(denied) >= 4  # its first rejection cannot count: nothing was stored since it was tried
    assert sum(denied[0] < i < denied[-1] for i in accepted) >= 3
    (item,) = quarantine.list_items(tmp_path / "spool")
    reason = item.reason
    assert reason["key"] == store.calls[denied[0]]
    assert (item.kind, reason["cause"], reason["class_uid"], reason["rows"]) == (
        "batch", "permanent_failure", 6003, ROWS)  # fmt: skip
    assert reason["attempts"] == 3
    assert reason["last_error"] == "AccessDenied: not on that prefix"
    for moment in ("first_failure", "last_failure", "quarantined_at"):
        assert reason[moment].endswith("Z") and reason[moment] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started))
    # AND every object of the accepted class is in the lake, nothing is left in sealed/
    assert len(lake_uids(tmp_path / "lake")) == (1 + sent) * ROWS
    assert app.counters.objects == 1 + sent and app.counters.permanent_failures == len(denied)
    assert list((tmp_path / "spool" / "sealed").iterdir()) == []
    assert app.spool.quarantined == {"batch": 1}


async def test_a_destination_rejecting_everything_quarantines_nothing_and_delivers_once_it_accepts(
    tmp_path: Path,
) -> None:
    # GIVEN a lake that rejects every object for good (the bucket is gone), max_attempts 2
    store = PrefixRejectingStore(tmp_path / "lake", "", PermanentDelivery("NoSuchBucket: the bucket does not exist"))
    app = App(config_for(tmp_path, "{max_attempts: 2, max_age_secs: 0.001}", batch_age_secs=0.05),
              store=store, listen=False)  # fmt: skip
    await app.start()
    try:
        # WHEN three objects of two classes are rejected many more times than max_attempts
        for chunk in (hour_chunk(0), hour_chunk(1), denied_chunk(0)):
            await app.spool.submit(chunk)
        for _ in range(1000):
            if len(store.calls) >= 60:
                break
            await asyncio.sleep(0.01)
        # THEN none was counted or quarantined, and delivery says it is failing
        assert len(store.calls) >= 60 and len(set(store.calls)) == 3
        assert quarantine.list_items(tmp_path / "spool") == []
        assert list((tmp_path / "spool" / "sealed").glob("*.failures")) == []
        assert app.counters.delivery_failing == "NoSuchBucket: the bucket does not exist"
        assert app_readiness(app) == "delivery fails permanently: NoSuchBucket: the bucket does not exist"
        assert app.counters.objects == 0

        # WHEN the lake accepts again THEN everything is stored, without a restart
        store.error = None
        for _ in range(1000):
            if app.counters.objects == 3:
                break
            await asyncio.sleep(0.01)
        assert app.counters.objects == 3
        assert app.counters.delivery_failing is None and app_readiness(app) is None
    finally:
        assert await app.shutdown(timeout=30)
    assert len(lake_uids(tmp_path / "lake")) == 3 * ROWS
    assert quarantine.list_items(tmp_path / "spool") == []
    assert list((tmp_path / "spool" / "sealed").iterdir()) == []


async def test_transient_failures_never_quarantine(tmp_path: Path) -> None:
    # GIVEN a lake that throttles the first 8 puts, far more than max_attempts
    store = FlakyStore(tmp_path / "lake", failures=8)
    config = config_for(tmp_path, "{max_attempts: 2, max_age_secs: 0.001}")

    # WHEN the sink stores two objects
    app, clean = await run_sink(config, store, range(2))

    # THEN both are delivered once the throttling stops, and nothing was quarantined or counted
    assert clean
    assert store.calls == 10
    assert len(lake_uids(tmp_path / "lake")) == 2 * ROWS
    assert quarantine.list_items(tmp_path / "spool") == []
    assert app.spool.quarantined == {}
    assert app.counters.delivery_failures == 8 and app.counters.permanent_failures == 0


def failures_of_denied(root: Path) -> Callable[[], int]:
    """The counted rejections of the one sealed batch of class 6003 (0 while none)."""

    def attempts() -> int:
        for path in (root / "spool" / "sealed").glob(f"*{SUFFIX}"):
            failures = quarantine.read_failures(path)
            if failures is not None and "ext/denied/" in failures.last_error:
                return failures.attempts
        return 0

    return attempts


async def test_rejections_count_across_restarts_and_max_age_secs_quarantines(tmp_path: Path) -> None:
    # GIVEN a sink that stopped while one object kept being rejected, with two rejections counted
    def rejecting(message: str) -> PrefixRejectingStore:
        return PrefixRejectingStore(tmp_path / "lake", "ext/denied/", PermanentDelivery(f"{message} ext/denied/"))

    counted = failures_of_denied(tmp_path)
    app = App(config_for(tmp_path, "{max_attempts: 1000}", 0.05), store=rejecting("AccessDenied:"), listen=False)
    await app.start()
    await app.spool.submit(denied_chunk(0))
    await stream_until(app, lambda: counted() >= 2)
    assert not await app.shutdown(timeout=0.5)  # the rejected object is still held
    (sealed,) = (tmp_path / "spool" / "sealed").glob(f"*{SUFFIX}")
    before = quarantine.read_failures(sealed)
    assert before is not None and before.attempts >= 2

    # WHEN it restarts with max_attempts one above that count, THEN one more counted rejection
    # quarantines it
    again = rejecting("NoSuchKey:")
    app = App(config_for(tmp_path, f"{{max_attempts: {before.attempts + 1}}}", 0.05), store=again, listen=False)
    await app.start()
    await stream_until(app, quarantined(tmp_path), first_hour=300)
    assert await app.shutdown(timeout=30)
    (item,) = quarantine.list_items(tmp_path / "spool")
    assert item.reason["attempts"] == before.attempts + 1
    assert item.reason["last_error"] == "NoSuchKey: ext/denied/"
    assert not list((tmp_path / "spool" / "sealed").iterdir())  # the failure count went with it

    # GIVEN it put back, with a first rejection an hour ago WHEN rejected (and counted) once more
    # under max_age_secs: 60 and a high max_attempts THEN it is quarantined at once
    target = quarantine.retry(tmp_path / "spool", item)
    quarantine.record_failure(target, "AccessDenied", now=time.time() - 3600)
    third = rejecting("AccessDenied: explicit deny")
    app = App(config_for(tmp_path, "{max_attempts: 1000, max_age_secs: 60}", 0.05), store=third, listen=False)
    await app.start()
    await stream_until(app, quarantined(tmp_path), first_hour=500)
    assert await app.shutdown(timeout=30)
    (item,) = quarantine.list_items(tmp_path / "spool")
    assert item.reason["attempts"] == 2 and item.reason["last_error"] == "AccessDenied: explicit deny ext/denied/"


async def test_a_batch_put_back_while_running_is_delivered(tmp_path: Path) -> None:
    # GIVEN a quarantined batch and a running sink whose lake now accepts everything
    store = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied"))
    await run_sink(config_for(tmp_path, "{max_attempts: 1}"), store, range(1), timeout=0.3)
    (sealed,) = (tmp_path / "spool" / "sealed").glob(f"*{SUFFIX}")
    quarantine.quarantine_batch(tmp_path / "spool", sealed, "permanent_failure", "AccessDenied")
    (item,) = quarantine.list_items(tmp_path / "spool")
    app = App(config_for(tmp_path, "{max_attempts: 1}"), store=LocalStore(tmp_path / "lake"), listen=False)
    await app.start()
    try:
        # WHEN the batch is moved back to sealed/ (as `spool retry` does)
        quarantine.retry(tmp_path / "spool", item)
        # THEN the running sink finds and stores it (bounded wait)
        for _ in range(200):
            if app.counters.objects:
                break
            await asyncio.sleep(0.05)
        assert app.counters.objects == 1
    finally:
        assert await app.shutdown(timeout=10)
    assert len(lake_uids(tmp_path / "lake")) == ROWS
    assert quarantine.list_items(tmp_path / "spool") == []


def test_unreadable_batch_files_are_quarantined_on_open(tmp_path: Path) -> None:
    # GIVEN a spool whose sealed/ and open/ each hold a file with no readable header
    root = tmp_path / "spool"
    for directory, name in (("sealed", "0190a1b2-0000-7000-8000-000000000001"), ("open", "0190a1b2-0000-7000-8000-2")):
        (root / directory).mkdir(parents=True)
        (root / directory / f"{name}{SUFFIX}").write_bytes(b"not a batch file at all")
    spool = Spool(root)

    # WHEN the spool is opened
    opened, sealed = spool.open()
    spool.close()

    # THEN neither is handed out; both are in quarantine/ with a reason naming the damage
    assert (opened, sealed) == ([], [])
    items = quarantine.list_items(root)
    assert sorted(i.id for i in items) == ["0190a1b2-0000-7000-8000-000000000001", "0190a1b2-0000-7000-8000-2"]
    for item in items:
        assert item.reason["cause"] == "corrupt" and "no readable header" in item.reason["last_error"]
        assert item.path.read_bytes() == b"not a batch file at all"
    assert not list((root / "sealed").iterdir()) and not list((root / "open").iterdir())
    assert spool.quarantined == {"batch": 2}


async def test_metrics_show_quarantined_items_and_deduplicated_chunks(tmp_path: Path) -> None:
    # GIVEN a sink that quarantined one object and got one chunk twice (same token)
    store = PrefixRejectingStore(tmp_path / "lake", "ext/denied/", PermanentDelivery("AccessDenied"))
    app = App(config_for(tmp_path, "{max_attempts: 1}", 0.05), store=store, listen=False)
    await app.start()
    await app.spool.submit(denied_chunk(0))
    received_now = dataclasses.replace(hour_chunk(0), received_ns=time.time_ns())  # inside the dedup window
    chunk = dataclasses.replace(received_now, token="chunk-0001")  # noqa: S106 (a chunk token, not a secret)
    await app.spool.submit(chunk)
    await app.spool.submit(chunk)
    await stream_until(app, quarantined(tmp_path))
    assert await app.shutdown(timeout=30)

    # WHEN the metrics are scraped
    text = render_metrics(app_snapshot(app, 0.0)).decode()

    # THEN they count the quarantined batch and the deduplicated chunk
    assert 'securitylake_sink_quarantined_total{kind="batch"} 1.0' in text
    assert 'securitylake_sink_quarantine_items{kind="batch"} 1.0' in text
    assert 'securitylake_sink_quarantine_items{kind="wal_segment"} 0.0' in text
    assert "securitylake_sink_chunks_deduplicated_total 1.0" in text
    assert "securitylake_sink_http_requests_total 0.0" in text


async def test_a_damaged_sealed_batch_is_quarantined_whole_not_cut(tmp_path: Path) -> None:
    # GIVEN a sealed batch left behind by a stopped sink, then a byte flipped inside its last frame
    store = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied"))
    await run_sink(config_for(tmp_path, "{max_attempts: 1000}"), store, range(1), timeout=0.3)
    (path,) = (tmp_path / "spool" / "sealed").glob(f"*{SUFFIX}")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))

    # WHEN the spool is opened again
    spool = Spool(tmp_path / "spool")
    opened, sealed = spool.open()
    spool.close()

    # THEN the batch is not handed out short: it is in quarantine/, byte for byte, with what is known
    assert (opened, sealed) == ([], [])
    (item,) = quarantine.list_items(tmp_path / "spool")
    assert item.path.read_bytes() == bytes(data)
    assert item.reason["cause"] == "corrupt" and "is damaged at byte" in item.reason["last_error"]
    assert item.reason["key"] == store.rejected and item.reason["class_uid"] == 3002
    assert not list((tmp_path / "spool" / "sealed").iterdir())  # nor its failure count


class TableWatchingStore(LocalStore):
    """A local lake that notes, at each put, whether the table the object was encoded from is
    still held (``tables`` holds weak references to every table a batch file was read into)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.tables: list[weakref.ref[pa.Table]] = []
        self.held_at_put: list[bool] = []

    def put(self, key: str, data: bytes) -> None:
        self.held_at_put.append(any(ref() is not None for ref in self.tables))
        super().put(key, data)


async def test_an_upload_holds_the_objects_bytes_but_not_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a lake that watches the tables batch files are read into
    store = TableWatchingStore(tmp_path / "lake")
    read_table = BatchFile.read_table

    def watched(batch: BatchFile, schema: pa.Schema) -> pa.Table:
        table = read_table(batch, schema)
        store.tables.append(weakref.ref(table))
        return table

    monkeypatch.setattr(BatchFile, "read_table", watched)
    # WHEN two hours of records are delivered
    app, clean = await run_sink(config_for(tmp_path, "{max_attempts: 3}"), store, range(2))
    # THEN each object was stored while its table was already let go (an upload can take seconds)
    assert clean and app.counters.objects == 2
    assert store.held_at_put == [False, False]
    assert len(lake_uids(tmp_path / "lake")) == 2 * ROWS


async def test_a_spool_scratch_that_cannot_be_written_is_retried_not_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a running sink whose spool scratch/ is not a directory (as a failing spool disk would
    # refuse the object's Parquet file)
    store = PrefixRejectingStore(tmp_path / "lake", "", None)
    app = App(config_for(tmp_path, "{max_attempts: 1, max_age_secs: 0.001}", batch_age_secs=0.05), store=store,
              listen=False)  # fmt: skip
    await app.start()
    scratch = app.spool.scratch_dir
    scratch.rmdir()
    scratch.write_bytes(b"")
    # WHEN a batch is sealed and delivery tries it a few times
    await app.spool.submit(hour_chunk(0))
    for _ in range(500):
        if app.counters.delivery_failures >= 3:
            break
        await asyncio.sleep(0.01)
    # THEN each try is a transient failure that names the scratch file's trouble, and nothing is set aside
    assert app.counters.delivery_failures >= 3 and app.counters.permanent_failures == 0
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.getMessage().startswith("could not store")]
    assert reasons and all("scratch" in reason and "Not a directory" in reason for reason in reasons)
    assert store.calls == []
    assert quarantine.list_items(tmp_path / "spool") == []
    # AND once scratch/ can be written again, the object is stored
    scratch.unlink()
    scratch.mkdir()
    assert await app.shutdown(timeout=30)
    assert len(lake_uids(tmp_path / "lake")) == ROWS


async def test_a_batch_is_read_for_delivery_only_while_no_step_is_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a sink whose mapping and batch reading each take a while and note any overlap with
    # the other, and batches that are sealed as soon as they are written
    monkeypatch.setattr(app_module, "MIN_STEP_SECS", 0.0)
    active: list[str] = []
    overlaps: list[tuple[str, tuple[str, ...]]] = []
    calls: list[str] = []

    def slow(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if active:
                overlaps.append((name, tuple(active)))
            active.append(name)
            calls.append(name)
            try:
                time.sleep(0.03)
                return call(*args, **kwargs)
            finally:
                active.remove(name)

        return run

    monkeypatch.setattr(BatchFile, "read_table", slow("read", BatchFile.read_table))
    monkeypatch.setattr(Mapper, "map_chunks", slow("map", Mapper.map_chunks))
    app = App(config_for(tmp_path, "{max_attempts: 3}", batch_age_secs=0.01), store=LocalStore(tmp_path / "lake"),
              listen=False)  # fmt: skip
    await app.start()
    # WHEN chunks of new event hours keep coming while earlier hours are delivered
    for hour in range(30):
        await app.spool.submit(hour_chunk(hour))
        await asyncio.sleep(0.02)
    assert await app.shutdown(timeout=30)
    # THEN every hour is an object, and no batch was read while a step was mapping (nor the reverse)
    assert app.counters.objects == 30 and len(lake_uids(tmp_path / "lake")) == 30 * ROWS
    assert calls.count("read") == 30 and calls.count("map") > 1
    assert overlaps == []
