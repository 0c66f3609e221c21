"""Quarantine of sealed batches the lake keeps rejecting, and of unreadable batch files: the real
App and spool on a temporary directory, with small ObjectStores that reject on purpose."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import msgpack
import pyarrow.parquet as pq
import pytest

from securitylake_sink import app as app_module
from securitylake_sink.app import App
from securitylake_sink.config import Config, parse_config
from securitylake_sink.errors import PermanentDelivery, RetriableDelivery
from securitylake_sink.forward_client import pack_entries
from securitylake_sink.lake.store import LocalStore
from securitylake_sink.metrics_server import app_snapshot
from securitylake_sink.model import Chunk
from securitylake_sink.sources.forward_codec import decode_spooled
from securitylake_sink.spool import Spool, quarantine
from securitylake_sink.spool.batchfile import SUFFIX
from securitylake_sink.telemetry import render_metrics

T0_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
HOUR_MS = 3_600_000
ROWS = 20


def config_for(root: Path, delivery: str) -> Config:
    return parse_config(
        f"""
destination:
  url: "file://{root / "lake"}"
  region: eu-west-1
  account_id: "111122223333"
  sources:
    - {{class_uid: "*", location: "ext/unit/"}}
spool: {{path: "{root / "spool"}"}}
batch: {{max_age_secs: 86400}}
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
    monkeypatch.setattr(app_module, "RETRY_BASE_SECS", 0.001)
    monkeypatch.setattr(app_module, "RETRY_MAX_SECS", 0.01)


async def run_sink(config: Config, store: LocalStore, hours: range, timeout: float = 30) -> tuple[App, bool]:
    """Start the App (no listeners), spool one chunk per hour, shut down; (the App, clean)."""
    app = App(config, store=store, listen=False)
    await app.start()
    for hour in hours:
        await app.spool.submit(hour_chunk(hour))
    return app, await app.shutdown(timeout=timeout)


def lake_uids(lake: Path) -> list[str]:
    return sorted(r["uid"] for p in lake.rglob("*.parquet") for r in pq.read_table(p).column("metadata").to_pylist())


async def test_object_rejected_max_attempts_times_is_quarantined_and_the_next_delivered(tmp_path: Path) -> None:
    # GIVEN three objects and a lake that rejects the first one it is given, permanently
    store = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied: not allowed on that key"))
    config = config_for(tmp_path, "{max_attempts: 3}")

    # WHEN the sink stores them
    started = time.time()
    app, clean = await run_sink(config, store, range(3))

    # THEN the rejected one was tried exactly max_attempts times and is in quarantine/, with its reason
    assert clean
    assert store.rejected is not None
    assert store.calls.count(store.rejected) == 3
    items = quarantine.list_items(tmp_path / "spool")
    assert [(i.kind, i.path.suffix) for i in items] == [("batch", SUFFIX)]
    reason = json.loads((tmp_path / "spool" / "quarantine" / f"{items[0].id}.reason.json").read_text())
    assert reason["key"] == store.rejected
    assert (reason["kind"], reason["cause"], reason["class_uid"], reason["rows"]) == (
        "batch", "permanent_failure", 3002, ROWS)  # fmt: skip
    assert reason["attempts"] == 3
    assert reason["last_error"] == "AccessDenied: not allowed on that key"
    for moment in ("first_failure", "last_failure", "quarantined_at"):
        assert reason[moment].endswith("Z") and reason[moment] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started))
    # AND the other two objects were delivered after it, and nothing is left in sealed/
    assert len(lake_uids(tmp_path / "lake")) == 2 * ROWS
    assert store.calls[:3] == [store.rejected] * 3 and len(store.calls) == 5
    assert list((tmp_path / "spool" / "sealed").iterdir()) == []
    assert app.spool.quarantined == {"batch": 1}
    assert app.counters.objects == 2 and app.counters.permanent_failures == 3
    assert app.counters.delivery_failing is None


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


async def test_rejections_count_across_restarts_and_max_age_secs_quarantines(tmp_path: Path) -> None:
    # GIVEN a sink that stopped while one object kept being rejected (the shutdown timed out)
    rejecting = RejectingStore(tmp_path / "lake", PermanentDelivery("NoSuchBucket: the bucket does not exist"))
    _, clean = await run_sink(config_for(tmp_path, "{max_attempts: 1000}"), rejecting, range(1), timeout=0.5)
    assert not clean
    sealed = list((tmp_path / "spool" / "sealed").glob(f"*{SUFFIX}"))
    assert len(sealed) == 1
    before = quarantine.read_failures(sealed[0])
    # (a put still running when the shutdown gave up is not counted: at most one behind)
    assert before is not None and 1 <= before.attempts <= len(rejecting.calls) <= before.attempts + 1

    # WHEN it restarts with max_attempts one above that count, THEN one more rejection quarantines it
    again = RejectingStore(tmp_path / "lake", PermanentDelivery("NoSuchBucket: the bucket does not exist"))
    config = config_for(tmp_path, f"{{max_attempts: {before.attempts + 1}}}")
    _, clean = await run_sink(config, again, range(0))
    assert clean and len(again.calls) == 1
    (item,) = quarantine.list_items(tmp_path / "spool")
    assert item.reason["attempts"] == before.attempts + 1
    assert not list((tmp_path / "spool" / "sealed").iterdir())  # the failure count went with it

    # GIVEN it put back, with a first rejection an hour ago WHEN rejected once more under
    # max_age_secs: 60 and a high max_attempts THEN it is quarantined at once
    target = quarantine.retry(tmp_path / "spool", item)
    quarantine.record_failure(target, "AccessDenied", now=time.time() - 3600)
    third = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied: explicit deny"))
    _, clean = await run_sink(config_for(tmp_path, "{max_attempts: 1000, max_age_secs: 60}"), third, range(0))
    assert clean and len(third.calls) == 1
    (item,) = quarantine.list_items(tmp_path / "spool")
    assert item.reason["attempts"] == 2 and item.reason["last_error"] == "AccessDenied: explicit deny"


async def test_a_batch_put_back_while_running_is_delivered(tmp_path: Path) -> None:
    # GIVEN a quarantined batch and a running sink whose lake now accepts everything
    store = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied"))
    await run_sink(config_for(tmp_path, "{max_attempts: 1}"), store, range(1))
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
    store = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied"))
    app = App(config_for(tmp_path, "{max_attempts: 1}"), store=store, listen=False)
    await app.start()
    received_now = dataclasses.replace(hour_chunk(0), received_ns=time.time_ns())  # inside the dedup window
    chunk = dataclasses.replace(received_now, token="chunk-0001")  # noqa: S106 (a chunk token, not a secret)
    await app.spool.submit(chunk)
    await app.spool.submit(chunk)
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
