"""Graceful shutdown of the real process: ``shutdown.timeout_secs`` bounds the flush on SIGTERM, a
second signal exits at once, and what was acked but not stored is delivered after a restart."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from securitylake_sink.forward_client import ForwardClient
from tests.integration.sinkproc import SinkProcess, auth_records, free_port, read_lake, write_config

RECORDS = 100
SHUTDOWN_TIMEOUT_SECS = 2
EXIT_SECOND_SIGNAL = 130
PROMPT_EXIT_SECS = 3.0  # a second signal ends the process within this


def _send(port: int) -> None:
    now = time.time_ns()
    with ForwardClient("127.0.0.1", port, timeout=10) as client:
        client.send("shutdown.test", auth_records(range(RECORDS), now))


def _blocked_sink(tmp_path: Path, timeout_secs: float) -> tuple[SinkProcess, Path, int]:
    """A sink whose lake path is a regular file, so no put succeeds (also for root)."""
    port = free_port()
    config = write_config(
        tmp_path, port, extra=f"batch: {{max_age_secs: 0.5}}\nshutdown: {{timeout_secs: {timeout_secs}}}\n"
    )
    (tmp_path / "lake").write_text("not a directory\n")
    return SinkProcess(config, port, tmp_path / "sink0.log", level="info"), config, port


def _deliver_after_restart(tmp_path: Path, config: Path, port: int) -> None:
    lake = tmp_path / "lake"
    lake.unlink()
    lake.mkdir()
    sink = SinkProcess(config, port, tmp_path / "sink1.log", level="info")
    assert sink.stop() == 0, sink.log()
    ids = Counter(r["uid"] for r in read_lake(lake).column("metadata").to_pylist())
    assert ids == Counter(str(i) for i in range(RECORDS))


def test_sigterm_flush_is_bounded_by_shutdown_timeout(tmp_path: Path) -> None:
    # GIVEN a sink holding acked records it cannot store
    sink, config, port = _blocked_sink(tmp_path, SHUTDOWN_TIMEOUT_SECS)
    _send(port)
    sink.wait_for_log("could not store an object")
    # WHEN it gets SIGTERM
    started = time.monotonic()
    code = sink.stop(timeout=SHUTDOWN_TIMEOUT_SECS + 15)
    # THEN it gives up after shutdown.timeout_secs, and keeps the records for the next start
    assert code == 0
    assert time.monotonic() - started < SHUTDOWN_TIMEOUT_SECS + 10
    assert "shutdown timed out" in sink.log()
    _deliver_after_restart(tmp_path, config, port)


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    # GIVEN a sink flushing on SIGTERM with a long timeout and records it cannot store
    sink, config, port = _blocked_sink(tmp_path, 120)
    _send(port)
    sink.wait_for_log("could not store an object")
    sink.proc.send_signal(signal.SIGTERM)
    sink.wait_for_log("stopping: flushing what the sink holds")
    # WHEN a second signal comes
    started = time.monotonic()
    sink.proc.send_signal(signal.SIGINT)
    code = sink.proc.wait(PROMPT_EXIT_SECS)
    # THEN it exits at once, and nothing acked is lost
    assert code == EXIT_SECOND_SIGNAL
    assert time.monotonic() - started < PROMPT_EXIT_SECS
    assert "stopping at once on a second signal" in sink.log()
    sink.kill()
    _deliver_after_restart(tmp_path, config, port)
