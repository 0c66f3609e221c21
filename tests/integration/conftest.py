"""Integration fixtures: no sink process outlives the test that started it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.sinkproc import SinkProcess


@pytest.fixture(autouse=True)
def no_sink_left_running() -> Iterator[None]:
    """Kill every sink a test started and did not stop (it failed before its ``stop``)."""
    yield
    while SinkProcess.started:
        sink = SinkProcess.started.pop()
        if sink.proc.poll() is None:
            sink.kill()
