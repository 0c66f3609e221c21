"""The metrics catalogue, its text exposition, the probes' answers and the JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from securitylake_sink.metrics_server import MetricsServer, app_readiness
from securitylake_sink.telemetry import (
    CATALOGUE,
    MAX_REASON_LABELS,
    OTHER_REASON,
    PREFIX,
    Histogram,
    JsonFormatter,
    Snapshot,
    reason_label,
    render_metrics,
    tally,
)


def test_histogram_counts_are_cumulative_and_bounds_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    value = histogram.value()
    assert value.buckets == ((0.1, 2), (1.0, 4), (float("inf"), 5))
    assert value.count == 5
    assert value.sum == pytest.approx(8.65)


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("activity_id: expected an integer, got 'x'", "activity_id"),
        ("class_uid: no destination.sources location is configured for class 4001", "class_uid"),
        ("src_endpoint.ip: not an IP address", "src_endpoint.ip"),
        ("something went wrong", OTHER_REASON),
        ("", OTHER_REASON),
        ("a b: c", OTHER_REASON),
    ],
)
def test_reason_label_is_the_field_named(reason: str, label: str) -> None:
    assert reason_label(reason) == label


def test_tally_caps_distinct_labels() -> None:
    counts: dict[str, int] = {}
    tally(counts, [f"f{i}" for i in range(MAX_REASON_LABELS + 10)] + ["f0"])
    assert len(counts) == MAX_REASON_LABELS + 1  # the cap plus "other"
    assert counts["f0"] == 2
    assert counts[OTHER_REASON] == 10


def test_every_catalogue_metric_is_exposed_with_help_and_type() -> None:
    snapshot = Snapshot(
        records_received={"forward": 7},
        records_dead_lettered={"activity_id": 2},
        rows_delivered={3002: 5},
        credential_expiry=1_900_000_000.0,
        dead_letter_objects=3,
        dead_letter_failures={"retriable": 2},
    )
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(snapshot).decode())}
    assert set(families) == {PREFIX + spec.name for spec in CATALOGUE}
    for spec in CATALOGUE:
        family = families[PREFIX + spec.name]
        assert family.type == spec.kind
        assert family.documentation == spec.help
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(spec.labels)
    assert families[PREFIX + "records_received"].samples[0].value == 7
    assert families[PREFIX + "rows_delivered"].samples[0].labels == {"class_uid": "3002"}
    assert families[PREFIX + "credential_expiry_timestamp_seconds"].samples[0].value == 1_900_000_000.0
    assert families[PREFIX + "backpressure_since_timestamp_seconds"].samples == []
    assert families[PREFIX + "dead_letter_objects"].samples[0].value == 3
    [failures] = families[PREFIX + "dead_letter_failures"].samples
    assert (failures.name, failures.labels, failures.value) == (
        PREFIX + "dead_letter_failures_total",
        {"kind": "retriable"},
        2,
    )


def test_names_are_unique_and_prometheus_shaped() -> None:
    names = [spec.name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    for spec in CATALOGUE:
        assert spec.name.islower() and " " not in spec.name
        assert not spec.name.endswith("_total")  # counters get it in the exposition


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_server_answers_metrics_and_probes() -> None:
    reasons: list[str | None] = [None]
    server = MetricsServer(Snapshot, lambda: reasons[0], port=0)
    await server.start()
    try:
        status, body = await asyncio.to_thread(_get, server.port, "/metrics")
        assert status == 200 and PREFIX + "build_info" in body
        assert await asyncio.to_thread(_get, server.port, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(_get, server.port, "/readyz") == (200, "ready\n")
        reasons[0] = "delivery fails permanently: access denied"
        assert await asyncio.to_thread(_get, server.port, "/readyz") == (
            503,
            "not ready: delivery fails permanently: access denied\n",
        )
    finally:
        await server.close()


def _app(spool: Path, failing: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(spool=SimpleNamespace(path=spool), counters=SimpleNamespace(delivery_failing=failing))


def test_readiness_checks_the_spool_and_the_last_delivery(tmp_path: Path) -> None:
    assert app_readiness(_app(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []  # the probe file is gone again
    reason = app_readiness(_app(tmp_path, "cannot write /lake: Permission denied"))
    assert reason == "delivery fails permanently: cannot write /lake: Permission denied"
    reason = app_readiness(_app(tmp_path / "missing"))
    assert reason is not None and reason.startswith("the spool is not writable")


def test_json_log_lines_keep_their_own_keys() -> None:
    record = logging.LogRecord("securitylake_sink.x", logging.WARNING, __file__, 1, "Closed a connection.", None, None)
    record.peer = "127.0.0.1:5"
    record.level = "spoofed"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning"
    assert line["message"] == "Closed a connection."
    assert line["peer"] == "127.0.0.1:5"
    assert line["time"].endswith("Z")
