"""The benchmark harness runs in smoke mode so it cannot rot; it checks counts, never timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "e2e.py"


def test_e2e_bench_smoke_mode_lands_every_record() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert int(figures["rows_in_lake"]) + int(figures["dead_letters"]) == int(figures["records"]) == 3000
