"""Several rounds of the benchmark suite combined into one result of medians (bench/report.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report


def _round(rate: int, floor: int, cpu: float, ok: bool = True) -> dict[str, Any]:
    return {
        "command": "bench/run.py",
        "e2e": {"mixed": {"records_per_sec": rate, "sink_cpu_secs_per_million": cpu, "counts_ok": ok}},
        "floor": {"records_per_sec": floor},
        "e2e_over_floor": round(rate / floor, 4),
        "fluent_bit": {"skipped": "no fluent-bit on PATH"},
        "checks": {"e2e mixed: rows + dead letters == sent": ok},
        "ok": ok,
    }


def test_each_figure_is_the_median_of_its_rounds_and_ints_stay_ints() -> None:
    # GIVEN three rounds whose figures move from round to round
    rounds = [_round(30_000, 100_000, 30.5), _round(45_000, 150_000, 28.0), _round(20_000, 200_000, 41.25)]
    # WHEN they are combined
    combined = report.combine(rounds)
    # THEN each figure is the median of its rounds, an int where the rounds gave ints
    assert combined["e2e"]["mixed"]["records_per_sec"] == 30_000
    assert isinstance(combined["e2e"]["mixed"]["records_per_sec"], int)
    assert combined["e2e"]["mixed"]["sink_cpu_secs_per_million"] == 30.5
    assert combined["floor"]["records_per_sec"] == 150_000
    # AND a ratio is the median of the rounds' ratios (0.3, 0.3, 0.1), not 30,000 / 150,000
    assert combined["e2e_over_floor"] == 0.3
    # AND what is not a figure is kept as the first round had it, and every round is kept whole
    assert combined["command"] == "bench/run.py"
    assert combined["fluent_bit"] == {"skipped": "no fluent-bit on PATH"}
    assert combined["rounds"] == rounds


def test_an_even_number_of_rounds_takes_the_mean_of_the_middle_two() -> None:
    combined = report.combine([_round(30_001, 100_000, 30.0), _round(40_000, 100_000, 20.0)])
    assert combined["e2e"]["mixed"]["records_per_sec"] == 35_000
    assert combined["e2e"]["mixed"]["sink_cpu_secs_per_million"] == 25.0


def test_a_check_failed_in_any_round_fails_the_combined_result() -> None:
    # GIVEN three rounds, one of which lost a record
    combined = report.combine([_round(30_000, 100_000, 30.0), _round(30_000, 100_000, 30.0, ok=False),
                               _round(30_000, 100_000, 30.0)])
    # THEN the check, and the result, fail: a majority of good rounds does not hide a bad one
    assert combined["checks"] == {"e2e mixed: rows + dead letters == sent": False}
    assert combined["e2e"]["mixed"]["counts_ok"] is False
    assert combined["ok"] is False


def test_no_rounds_is_an_error() -> None:
    with pytest.raises(ValueError, match="no rounds"):
        report.combine([])
