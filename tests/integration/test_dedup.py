"""Resend deduplication through the real process: a chunk sent again with the same token (its
first ack "lost") is acked again and stored once, also when the sink restarted in between."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from securitylake_sink.forward_client import ForwardClient
from tests.integration.sinkproc import SinkProcess, auth_records, free_port, read_lake, write_config

RECORDS = 50


def _records(now: int) -> list[tuple[int, dict[str, object]]]:
    return auth_records(range(RECORDS), now)


def _send(port: int, records: list[tuple[int, dict[str, object]]]) -> None:
    """One chunk on a new connection; returns once it is acked (ForwardClient checks the token)."""
    with ForwardClient("127.0.0.1", port, timeout=10) as client:
        client.send("dedup.test", records)


def _stored_ids(lake: Path) -> Counter[str]:
    rows = read_lake(lake).column("metadata").to_pylist()
    return Counter(r["uid"] for r in rows)


def test_a_resent_chunk_is_acked_twice_and_stored_once(tmp_path: Path) -> None:
    # GIVEN a running sink that acked a chunk
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 1}\n")
    sink = SinkProcess(config, port, tmp_path / "sink.log")
    records = _records(time.time_ns())
    _send(port, records)
    # WHEN the shipper sends it again on a new connection (as if the ack was lost)
    _send(port, records)
    assert sink.stop() == 0, sink.log()
    # THEN both sends were acked and every record is stored once
    assert _stored_ids(tmp_path / "lake") == Counter(str(i) for i in range(RECORDS))


def test_a_chunk_resent_after_a_restart_is_stored_once(tmp_path: Path) -> None:
    # GIVEN a sink that acked a chunk and was then killed before storing anything
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 60}\n")
    records = _records(time.time_ns())
    sink = SinkProcess(config, port, tmp_path / "sink0.log")
    _send(port, records)
    sink.kill()
    # WHEN it restarts and the shipper resends the chunk
    sink = SinkProcess(config, port, tmp_path / "sink1.log")
    _send(port, records)
    assert sink.stop() == 0, sink.log()
    # THEN it is stored once
    assert _stored_ids(tmp_path / "lake") == Counter(str(i) for i in range(RECORDS))


def test_a_chunk_resent_after_its_log_segment_was_released_is_stored_once(tmp_path: Path) -> None:
    # GIVEN a sink that stored a chunk and stopped cleanly (its log segments released)
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 1}\n")
    records = _records(time.time_ns())
    sink = SinkProcess(config, port, tmp_path / "sink0.log")
    _send(port, records)
    assert sink.stop() == 0, sink.log()
    # WHEN it restarts and maps another chunk (which releases the first segment)
    sink = SinkProcess(config, port, tmp_path / "sink1.log")
    _send(port, _records(time.time_ns() + 1))
    assert sink.stop() == 0, sink.log()
    assert (tmp_path / "spool" / "tokens").exists()
    # AND after another restart the first chunk is resent
    sink = SinkProcess(config, port, tmp_path / "sink2.log")
    _send(port, records)
    assert sink.stop() == 0, sink.log()
    # THEN it is stored once (each of the two chunks holds every id once)
    assert _stored_ids(tmp_path / "lake") == Counter({str(i): 2 for i in range(RECORDS)})
