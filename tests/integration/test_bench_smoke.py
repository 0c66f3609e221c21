"""The benchmark suite runs in smoke mode so it cannot rot; it checks counts and outputs, never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
SMOKE_RECORDS = 3000


def test_bench_smoke_mode_accounts_for_every_record_in_every_part(tmp_path: Path) -> None:
    # GIVEN the one benchmark command in smoke mode, two rounds
    figures_path = tmp_path / "figures.json"
    # WHEN it runs every part twice: three mixes end to end, a paced run, the stages, the floor
    result = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--rounds", "2", "--json", str(figures_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # THEN it passes its own checks and prints the table with the machine and the command
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks: all passed" in result.stdout
    assert "machine: " in result.stdout and "command: " in result.stdout
    # AND the figures are the rounds' medians, with their spread at the end
    assert "figures: the median of 2 rounds" in result.stdout
    assert "Spread over the 2 rounds" in result.stdout
    figures = json.loads(figures_path.read_text())
    assert len(figures["rounds"]) == 2
    each = sorted(r["floor"]["records_per_sec"] for r in figures["rounds"])
    assert figures["floor"]["records_per_sec"] == round((each[0] + each[1]) / 2)
    # AND every record sent to a sink landed as a row or a dead letter, in every end-to-end run of both rounds
    runs = [
        run
        for figure in (figures, *figures["rounds"])
        for run in (*figure["e2e"].values(), figure["paced"], figure["raw_no_raw_data"])
    ]
    assert sorted(figures["e2e"]) == ["mixed", "preparsed", "raw"]
    for run in runs:
        assert run["exit_status"] == 0
        assert run["records"] == SMOKE_RECORDS
        assert run["rows_in_lake"] + run["dead_letters"] == SMOKE_RECORDS
        assert run["rows_in_lake"] > 0 and run["objects"] > 0
    # AND the raw lines without raw_data make smaller objects than with it
    assert figures["raw_no_raw_data"]["raw_data"] is False
    assert figures["raw_no_raw_data"]["parquet_bytes"] < figures["e2e"]["raw"]["parquet_bytes"]
    # AND the mixed records map to several classes: the stages decode, map, validate and encode them
    stages = figures["stages"]
    assert stages["decode"]["records"] == SMOKE_RECORDS
    assert stages["map"]["mapped"] + stages["map"]["dead_letters"] == SMOKE_RECORDS
    assert stages["validate"]["records"] == stages["map"]["mapped"] > 0
    assert stages["encode"]["objects"] >= 3 and stages["encode"]["parquet_bytes"] > 0
    assert figures["floor"]["records"] == SMOKE_RECORDS
    assert figures["floor"]["parquet"]["parquet_bytes"] > 0
    assert stages["map_rules"] and all(rule["mapped"] > 0 for rule in stages["map_rules"].values())
    # AND the Fluent Bit part is skipped in smoke mode, and says so
    assert "skipped" in figures["fluent_bit"]


def test_e2e_bench_smoke_mode_lands_every_record() -> None:
    # GIVEN the end-to-end harness on its own, WHEN it runs in smoke mode
    result = subprocess.run(
        [sys.executable, str(BENCH / "e2e.py"), "--smoke"], check=False, capture_output=True, text=True, timeout=300
    )
    # THEN every record is a row or a dead letter
    assert result.returncode == 0, result.stdout + result.stderr
    figures = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert int(figures["rows_in_lake"]) + int(figures["dead_letters"]) == int(figures["records"]) == SMOKE_RECORDS


def test_buffered_bench_smoke_fills_the_spool_and_reports_its_memory(tmp_path: Path) -> None:
    # GIVEN the deep-backlog harness with a few thousand records, repeats of a thousand
    out = tmp_path / "buffered.json"
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH / "buffered.py"),
            "--records",
            str(SMOKE_RECORDS),
            "--distinct",
            "1000",
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # THEN every record was acked, and the figures of the spool and the memory are there
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["records_acked"] == SMOKE_RECORDS
    assert 0 <= figures["records_in_spool_at_last_ack"] <= SMOKE_RECORDS
    assert figures["spool_bytes_at_last_ack"] > 0 and figures["sink_peak_rss_mb"] > 0
