"""Metrics and probes of the real ``securitylake-sink run`` process: ``/metrics`` parses as
Prometheus text and its counters add up with what the lake holds; ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from securitylake_sink.forward_client import ForwardClient
from securitylake_sink.telemetry import CATALOGUE, PREFIX
from tests.integration.sinkproc import SinkProcess, free_port, write_config

CHUNKS, PER_CHUNK, BAD_EVERY = 6, 50, 10  # every 10th record has a bad activity_id
BASE_NS = int(datetime(2026, 11, 27, 22, tzinfo=UTC).timestamp()) * 1_000_000_000
SOURCES = """    - {class_uid: 3002, location: "ext/auth/"}
    - {class_uid: 6003, location: "ext/api/"}
"""


def _record(i: int) -> dict[str, object]:
    cls = 3002 if i % 2 else 6003
    activity: object = "not-an-int" if i % BAD_EVERY == 0 else 1
    record: dict[str, object] = {
        "class_uid": cls,
        "activity_id": activity,
        "severity_id": 1,
        "metadata": {"uid": f"r{i}"},
    }
    if cls == 3002:
        record["user"] = {"name": f"u{i}"}
    else:  # API Activity requires actor, api and src_endpoint
        record.update(
            actor={"user": {"name": f"u{i}"}}, api={"operation": "GetObject"}, src_endpoint={"ip": "192.0.2.1"}
        )
    return record


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name → {sorted labels: value}, after checking every family is in the catalogue."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    names = {PREFIX + spec.name for spec in CATALOGUE}
    for family in text_string_to_metric_families(text):
        assert family.name in names, family.name
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _total(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    return sum(samples.get(PREFIX + name, {}).values())


def test_metrics_add_up_with_the_lake(tmp_path: Path) -> None:
    # GIVEN a sink with metrics on a free port, 1-second batches and JSON logs
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, port, sources=SOURCES, extra="batch: {max_age_secs: 1}\nlogging: {format: json}\n")
    forward_line = f'  forward: {{address: "127.0.0.1:{port}"}}\n'
    text = config.read_text()
    assert forward_line in text
    metrics_line = f'  metrics: {{address: "127.0.0.1:{metrics_port}"}}\n'
    config.write_text(text.replace(forward_line, forward_line + metrics_line))
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info")
    try:
        assert _get(metrics_port, "/healthz") == (200, "ok\n")
        # WHEN records arrive in acked chunks and the sink has had time to deliver them
        total = CHUNKS * PER_CHUNK
        bad = total // BAD_EVERY
        with ForwardClient("127.0.0.1", port) as client:
            for c in range(CHUNKS):
                ids = range(c * PER_CHUNK, (c + 1) * PER_CHUNK)
                client.send("app", [(BASE_NS + i * 1_000_000_000, _record(i)) for i in ids])
        deadline = time.monotonic() + 30
        while True:
            status, body = _get(metrics_port, "/metrics")
            assert status == 200
            samples = _samples(body)
            if _total(samples, "rows_delivered_total") == total - bad:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        ready = _get(metrics_port, "/readyz")
    finally:
        code = sink.stop()
    assert code == 0

    # THEN the intake counters add up: received = mapped + dead-lettered, every chunk acked
    assert samples[PREFIX + "records_received_total"] == {(("source", "forward"),): total}
    assert samples[PREFIX + "chunks_acked_total"] == {(("source", "forward"),): CHUNKS}
    assert _total(samples, "records_mapped_total") == total - bad
    assert samples[PREFIX + "records_dead_lettered_total"] == {(("reason", "activity_id"),): bad}
    assert _total(samples, "records_dropped_total") == 0
    # AND the delivery counters match the Parquet objects in the lake, class by class
    objects = sorted((tmp_path / "lake").rglob("*.parquet"))
    rows: dict[str, int] = defaultdict(int)
    for path in objects:
        table = pq.read_table(path)
        rows[str(table.column("class_uid")[0].as_py())] += table.num_rows
    assert {labels[0][1]: v for labels, v in samples[PREFIX + "rows_delivered_total"].items()} == rows
    assert _total(samples, "objects_delivered_total") == len(objects)
    assert _total(samples, "bytes_delivered_total") == sum(p.stat().st_size for p in objects)
    assert samples[PREFIX + "upload_duration_seconds_count"][()] == len(objects)
    assert _total(samples, "delivery_failures_total") == 0
    assert samples[PREFIX + "backpressure"][()] == 0
    assert PREFIX + "credential_expiry_timestamp_seconds" not in samples  # a file lake has no credentials
    assert samples[PREFIX + "spool_bytes"][()] > 0
    # AND the probes say alive and ready
    assert ready == (200, "ready\n")
    # AND the log lines are JSON objects
    lines = [line for line in sink.log().splitlines() if line.startswith("{")]
    serving = [json.loads(line) for line in lines if "securitylake-sink is serving" in line]
    assert serving and serving[0]["level"] == "info" and serving[0]["time"].endswith("Z")
