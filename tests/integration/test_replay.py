"""``securitylake-sink replay`` as a real process: files and stdin through the spool into the
file:// lake, every record once; progress lines when stderr is not a terminal; a clear error
when a running sink holds the spool."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import duckdb
import msgpack
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tests.integration.sinkproc import BIN, SinkProcess, free_port, read_lake, write_config

LINES = 100_000
EPOCH = 1_764_000_000  # 2025-11-24T16:00:00Z


def replay(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "replay", "-c", str(config), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_100k_line_gzip_file_lands_every_line_once(tmp_path: Path) -> None:
    # GIVEN a gzip file of 100,000 distinct lines
    source = tmp_path / "auth.log.gz"
    with gzip.open(source, "wt") as f:
        for i in range(LINES):
            f.write(f"sshd[42]: Accepted password for u{i % 7} id={i:06d}\n")
    config = write_config(tmp_path, free_port(), extra="mappings_fallback: base_event\n")

    # WHEN it is replayed as lines, with stderr not a terminal
    done = replay(config, "--tag", "host.sshd", "--format", "lines", "--progress-secs", "0.2", str(source))

    # THEN it succeeds, shows plain progress lines and a summary
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "progress: " in done.stderr
    assert "records/s" in done.stderr
    assert f"replayed {LINES:,} records" in done.stderr
    # AND every line is in the lake once
    lake = tmp_path / "lake"
    table = read_lake(lake)
    assert table.num_rows == LINES
    ids = pc.extract_regex(table.column("raw_data").combine_chunks(), r"id=(?P<id>\d{6})").field("id").to_pylist()
    assert sorted(ids) == [f"{i:06d}" for i in range(LINES)]
    assert set(table.column("metadata").combine_chunks().field("log_name").to_pylist()) == {"host.sshd"}
    glob = str(lake / "**" / "*.parquet")
    query = f"SELECT count(DISTINCT raw_data), count(*) FROM read_parquet('{glob}', hive_partitioning=true)"
    assert duckdb.sql(query).fetchall() == [(LINES, LINES)]
    # AND the spool holds nothing afterwards
    assert not list((tmp_path / "spool" / "sealed").iterdir())


def test_stdin_ndjson_with_times_and_a_bad_line(tmp_path: Path) -> None:
    # GIVEN NDJSON on stdin, Fluent Bit style epoch dates, and one line that is not an object
    lines = [json.dumps({"date": EPOCH + i, "log": f"event {i}"}) for i in range(500)]
    lines.insert(250, "[1, 2]")
    config = write_config(tmp_path, free_port(), extra="mappings_fallback: base_event\n")

    # WHEN it is replayed from -
    done = replay(config, "--tag", "app", "-", stdin=("\n".join(lines) + "\n").encode())

    # THEN the 500 records land with their times, and the bad line is named and counted (exit 1)
    assert done.returncode == 1, done.stderr
    assert "skipped: <stdin>:251: not a JSON object" in done.stderr
    assert "skipped 1;" in done.stderr
    table = read_lake(tmp_path / "lake")
    assert sorted(table.column("time").to_pylist()) == [(EPOCH + i) * 1000 for i in range(500)]


def test_msgpack_entries_and_maps(tmp_path: Path) -> None:
    # GIVEN a msgpack file of Forward-style [time, record] entries and plain maps
    source = tmp_path / "events.msgpack"
    source.write_bytes(
        b"".join(msgpack.packb([EPOCH + i, {"log": f"entry {i}"}]) for i in range(50))
        + b"".join(msgpack.packb({"log": f"map {i}"}) for i in range(50))
    )
    config = write_config(tmp_path, free_port(), extra="mappings_fallback: base_event\n")
    done = replay(config, "--tag", "mp", "--format", "msgpack", "--chunk-records", "7", str(source))
    assert done.returncode == 0, done.stderr
    rows = read_lake(tmp_path / "lake").column("raw_data").to_pylist()
    assert sorted(rows) == sorted([f"entry {i}" for i in range(50)] + [f"map {i}" for i in range(50)])


def test_a_running_sink_holding_the_spool_is_a_clear_error(tmp_path: Path) -> None:
    # GIVEN a sink running with the same config
    port = free_port()
    config = write_config(tmp_path, port, extra="mappings_fallback: base_event\n")
    source = tmp_path / "one.log"
    source.write_text("one line\n")
    sink = SinkProcess(config, port, tmp_path / "sink.log")
    try:
        # WHEN a replay uses its spool
        done = replay(config, "--tag", "t", "--format", "lines", str(source))
    finally:
        sink.stop()
    # THEN it fails and says what to do
    assert done.returncode == 1
    assert "is in use by another securitylake-sink process" in done.stderr
    assert "stop the running sink first, or give the replay its own spool.path" in done.stderr
    assert not any(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / "lake").rglob("*.parquet"))
