"""When the pipeline waits for a small backlog to grow: only while what waits is in the log's
cache and less than a step (the real App and spool on a temporary directory, the loop not started)."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest

from securitylake_sink.app import STEP_RECORDS, App
from securitylake_sink.config import parse_config
from securitylake_sink.forward_client import pack_entries
from securitylake_sink.model import Chunk
from securitylake_sink.sources.forward_codec import decode_spooled
from securitylake_sink.spool import wal as wal_module

T0_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def chunk_of(records: int, first: int = 0) -> Chunk:
    """``records`` Authentication events in one Forward chunk, as intake hands it to the spool."""
    entries = [
        (T0_MS * 1_000_000, {"class_uid": 3002, "activity_id": 1, "time": T0_MS, "metadata": {"uid": str(first + i)}})
        for i in range(records)
    ]
    raw = msgpack.packb(["unit.auth", pack_entries(entries), {}], use_bin_type=True)
    return decode_spooled(raw, time.time_ns())


def idle_app(tmp_path: Path) -> App:
    """An App on a file:// lake whose spool is open and whose pipeline is not running."""
    config = parse_config(
        f'destination: {{url: "file://{tmp_path / "lake"}", region: eu-west-1, account_id: "111122223333",\n'
        '  sources: [{class_uid: "*", location: ext/unit/}]}\n'
        f'spool: {{path: "{tmp_path / "spool"}"}}\n'
    )
    app = App(config, listen=False)
    app.spool.open()
    app._cursor = app.spool.wal.end  # where an idle pipeline's cursor stands
    return app


async def test_a_small_cached_backlog_waits_to_grow_and_a_whole_step_does_not(tmp_path: Path) -> None:
    app = idle_app(tmp_path)
    try:
        # GIVEN a chunk of a few records after the cursor, THEN the pipeline may wait for more
        await app.spool.submit(chunk_of(20))
        assert app._backlog_is_small()
        # WHEN a whole step's worth has come in, THEN it steps at once
        await app.spool.submit(chunk_of(STEP_RECORDS, first=20))
        assert not app._backlog_is_small()
    finally:
        app.spool.close()


async def test_a_backlog_past_the_cache_never_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a log cache that holds about one small chunk
    monkeypatch.setattr(wal_module, "CACHE_BYTES", 1024)
    app = idle_app(tmp_path)
    try:
        # WHEN three small chunks come in, the first of them no longer cached
        for n in range(3):
            await app.spool.submit(chunk_of(5, first=5 * n))
        # THEN what waits is read back from disk: the pipeline does not wait for more
        assert app.spool.wal.take_cached(app._cursor, 10) == []
        assert not app._backlog_is_small()
    finally:
        app.spool.close()
