"""Regex captures of the built-in rules, one pass against passes of at most four groups: for each
pattern with more groups, the microseconds per row of each way on the column the rule really
captures from (its fixtures replicated, as bench/map_rules.py maps them), best of five, and the
way the sink chose for it on its own sample.

    .venv/bin/python bench/captures.py [RULE ...]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pyarrow as pa

from map_rules import FIXTURES, bench
from securitylake_sink.mapping import capture, evaluate
from securitylake_sink.mapping.route import builtin_rule_names

ROUNDS = 5
MIN_ROWS = 10_000


def columns_by_pattern(rules: list[str]) -> dict[str, pa.Array]:
    """The first large column each split-worthy pattern is captured from while the rules map."""
    seen: dict[str, pa.Array] = {}
    extract = capture.extract

    def noting(source: pa.Array, pattern: str, *args: Any) -> list[pa.Array]:
        if len(capture.passes(pattern)) > 1 and len(source) >= MIN_ROWS:
            seen.setdefault(pattern, source)
        return extract(source, pattern, *args)

    evaluate.extract = noting  # type: ignore[assignment]
    try:
        for rule in rules:
            bench(rule, 100_000, rounds=1)
    finally:
        evaluate.extract = extract
    return seen


def per_row_us(source: pa.Array, way: tuple[str, ...]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        capture._captured(source, way)
        best = min(best, time.process_time() - started)
    return best / len(source) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rules", nargs="*")
    args = parser.parse_args()
    rules = args.rules or [r for r in builtin_rule_names() if (FIXTURES / f"{r}.input.ndjson").exists()]
    print(f"{'groups':>6} {'rows':>7} {'one pass':>9} {'passes':>12} {'chosen':>7}  pattern")
    for pattern, source in columns_by_pattern(rules).items():
        values = source.drop_null() if source.null_count else source
        split = capture.passes(pattern)
        one, several = per_row_us(values, (pattern,)), per_row_us(values, split)
        chosen = capture._chosen.get(pattern)
        way = "-" if chosen is None else "passes" if len(chosen) > 1 else "one"
        print(
            f"{len(capture.group_names(pattern)):>6} {len(values):>7} {one:7.2f}µs {several:7.2f}µs ({len(split)})"
            f" {way:>7}  {pattern[:60]}"
        )


if __name__ == "__main__":
    main()
