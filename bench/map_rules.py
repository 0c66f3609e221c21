"""Records per second of each built-in mapping rule, in process: the rule's test fixtures
(tests/fixtures/mapping/<rule>.input.ndjson) replicated to about 100,000 records and mapped as
one batch of one tag, as the pipeline does, under the sink's malloc and collector settings; best
of three runs. Besides wall-clock records/s it prints records per CPU-second of the process,
which other load on the machine does not skew.

    .venv/bin/python bench/map_rules.py [--records N] [RULE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.route import builtin_rule_names
from securitylake_sink.memory import tune_gc, tune_malloc
from securitylake_sink.ocsf.schema import load_schema

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mapping"
TRANSPORT_MS = 1_732_795_200_000


def bench(rule: str, records: int, rounds: int = 3) -> tuple[float, float, int, int]:
    """(records per wall second, per CPU second, mapped, dead-lettered) for one rule."""
    lines = (FIXTURES / f"{rule}.input.ndjson").read_text().splitlines()
    base = [json.loads(line) for line in lines]
    batch = (base * (records // len(base) + 1))[:records]
    mapper = Mapper(load_schema("1.1.0"), [("*", rule)])
    mapper.map_records(f"bench.{rule}", batch[:1000], [TRANSPORT_MS] * 1000)  # warm up
    best, best_cpu = float("inf"), float("inf")
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        outcome = mapper.map_records(f"bench.{rule}", batch, [TRANSPORT_MS] * len(batch))
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
    mapped = sum(rows.batch.num_rows for _, rows in outcome.mapped)
    return len(batch) / best, len(batch) / best_cpu, mapped, len(outcome.failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("rules", nargs="*")
    args = parser.parse_args()
    rules = args.rules or [r for r in builtin_rule_names() if (FIXTURES / f"{r}.input.ndjson").exists()]
    tune_malloc()  # as the sink process does
    tune_gc()
    print(f"{'rule':18} {'records/s':>12} {'per CPU-s':>12} {'mapped':>8} {'dead':>7}")
    for rule in rules:
        rate, cpu_rate, mapped, dead = bench(rule, args.records)
        print(f"{rule:18} {rate:12,.0f} {cpu_rate:12,.0f} {mapped:8} {dead:7}")


if __name__ == "__main__":
    main()
