"""End to end through the real process: fluent-logger sends, the file:// lake is read back with
pyarrow and DuckDB."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from fluent import sender

from securitylake_sink.ocsf.schema import load_schema
from tests.integration.sinkproc import SinkProcess, free_port, read_lake, write_config

SOURCES = """    - {class_uid: 3002, location: "ext/auth/"}
    - {class_uid: 6003, location: "ext/api/1.0/"}
    - {class_uid: "*", location: "ext/other/"}
"""
# Two days, several hours each: 2026-11-27 22:00 .. 2026-11-28 02:59 UTC.
BASE = int(datetime(2026, 11, 27, 22, tzinfo=UTC).timestamp())


def _records(n: int) -> list[tuple[str, int, dict[str, object]]]:
    out: list[tuple[str, int, dict[str, object]]] = []
    for i in range(n):
        t = BASE + (i * 97) % (5 * 3600)
        rid = f"r{i:05d}"
        if i % 3 == 0:
            out.append(
                (
                    "auth",
                    t,
                    {
                        "class_uid": 3002,
                        "activity_id": 1,
                        "time": t * 1000,
                        "severity_id": 1,
                        "user": {"name": f"u{i % 7}"},
                        "metadata": {"uid": rid},
                    },
                )
            )
        elif i % 3 == 1:
            out.append(
                (
                    "api",
                    t,
                    {
                        "class_uid": 6003,
                        "activity_id": 2,
                        "time": t * 1000,
                        "severity_id": 1,
                        "api": {"operation": "GetObject"},
                        "actor": {"user": {"name": f"u{i % 7}"}},  # required in API Activity
                        "src_endpoint": {"ip": "192.0.2.10"},  # required in API Activity
                        "metadata": {"uid": rid},
                    },
                )
            )
        else:
            out.append(("host.sshd", t, {"log": f"sshd[42]: Accepted password for u{i % 5} {rid}", "rid": rid}))
    return out


@pytest.fixture
def sink(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    # Raw lines no rule is bound to become Base Events (class 0) under ext/other/.
    config = write_config(tmp_path, port, sources=SOURCES, extra="mappings_fallback: base_event\n")
    proc = SinkProcess(config, port, tmp_path / "sink.log")
    yield proc
    if proc.proc.poll() is None:
        proc.kill()


def test_fluent_logger_records_land_once_in_class_and_hour(sink: SinkProcess, tmp_path: Path) -> None:
    # GIVEN records of three kinds sent with the fluent-logger package (Message mode, int times)
    records = _records(1500)
    logger = sender.FluentSender("app", host="127.0.0.1", port=sink.port)
    for label, t, record in records:
        assert logger.emit_with_time(label, t, record), logger.last_error
    logger.close()
    sink.wait_for_log("Connection closed.")  # fluent-logger has no acks: wait for it to be read

    # WHEN the sink is stopped with SIGTERM
    assert sink.stop() == 0, sink.log()

    # THEN every record is in the lake once, in the right class, location, eventDay and hour
    lake = tmp_path / "lake"
    table = read_lake(lake).to_pylist()
    assert len(table) == len(records)
    ids = [r["metadata"]["uid"] if r["class_uid"] != 0 else dict(r["unmapped"])["rid"] for r in table]
    assert sorted(ids) == sorted(str(rec.get("rid") or rec["metadata"]["uid"]) for _, _, rec in records)  # type: ignore[index]
    location = {3002: "ext/auth/", 6003: "ext/api/1.0/", 0: "ext/other/"}
    for row in table:
        day = datetime.fromtimestamp(row["time"] / 1000, tz=UTC).strftime("%Y%m%d")
        assert row["_key"].startswith(
            f"{location[row['class_uid']]}region=eu-west-1/accountId=111122223333/eventDay={day}/"
        )
        assert row["metadata"]["version"] == "1.1.0"
    for row in table:
        if row["class_uid"] == 0:
            assert row["raw_data"].startswith("sshd[42]: Accepted password")
            assert dict(row["unmapped"])["rid"] == row["raw_data"].rsplit(" ", 1)[1]

    # AND each object holds one class and one event hour, sorted by time, in the class's fixed schema
    schema = load_schema("1.1.0")
    for path in lake.rglob("*.parquet"):
        t = pq.read_table(path)
        assert len(set(t.column("class_uid").to_pylist())) == 1
        times = t.column("time").to_pylist()
        assert times == sorted(times)
        assert len({ms // 3_600_000 for ms in times}) == 1
        cls = t.column("class_uid")[0].as_py()
        assert t.schema.remove_metadata() == schema.arrow_schema(cls).remove_metadata()
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_lake_reads_in_duckdb_with_hive_partitions(sink: SinkProcess, tmp_path: Path) -> None:
    # GIVEN records sent with nanosecond EventTime
    records = _records(300)
    logger = sender.FluentSender("app", host="127.0.0.1", port=sink.port, nanosecond_precision=True)
    for label, t, record in records:
        assert logger.emit_with_time(label, float(t), record), logger.last_error
    logger.close()
    sink.wait_for_log("Connection closed.")
    assert sink.stop() == 0, sink.log()

    # WHEN DuckDB reads each location with hive partitioning
    lake = tmp_path / "lake"
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT region, accountId, eventDay, count(*) AS n,
                   count(*) FILTER (
                       WHERE strftime(to_timestamp(time / 1000), '%Y%m%d') = CAST(eventDay AS VARCHAR)
                   ) AS in_day,
                   count(DISTINCT metadata.uid) AS ids
            FROM read_parquet('{lake}/ext/auth/**/*.parquet', hive_partitioning = 1)
            GROUP BY ALL ORDER BY eventDay"""
    ).fetchall()

    # THEN the partitions are the Security Lake ones and every row is in its own eventDay
    expected_auth = sum(1 for _, _, r in records if r.get("class_uid") == 3002)
    assert sum(r[3] for r in rows) == expected_auth
    assert all(r[0] == "eu-west-1" and str(r[1]) == "111122223333" for r in rows)
    assert [str(r[2]) for r in rows] == ["20261127", "20261128"]
    assert all(r[3] == r[4] == r[5] for r in rows)
    total = con.execute(
        f"SELECT count(*) FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = 1, union_by_name = true)"
    ).fetchone()
    assert total is not None and total[0] == len(records)
