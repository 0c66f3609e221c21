"""The benchmark suite in one command: end to end per mix (``preparsed``, ``raw``, ``mixed``, each
its own sink run), the mixed run paced at half its measured rate (ack latency), the stages in
process and the floor on the same mixed records, each built-in rule, and Fluent Bit as the sender
against a Fluent Bit baseline when ``fluent-bit`` is on PATH. Prints a table, writes every figure
as JSON with ``--json``; exits 1 when a correctness check fails (never on a timing). ``--rounds N``
runs the whole suite N times in turn and reports each figure's median and its spread: on a shared
machine one run's figures move by a quarter or more.

    .venv/bin/python bench/run.py [--records 100000] [--chunk 1000] [--rounds 1] [--json out.json] [--no-fluent-bit]
    .venv/bin/python bench/run.py --smoke     # a few thousand records per part; checks only
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import e2e
import fluentbit
import stages
from frames import pack_frames
from records import generate
from report import acked_per_sec, combine, machine, table

MIXES = ("preparsed", "raw", "mixed")
SMOKE_RECORDS = 3000
SMOKE_CHUNK = 500
# Fluent Bit updates the counters the Fluent Bit runs read once a second: a run of a few seconds
# would be timed to within a third. This many records make each run last long enough.
FLUENT_BIT_MIN_RECORDS = 1_000_000


def _fluent_bit(records: int, start_ms: int, enabled: bool) -> dict[str, Any]:
    if not enabled:
        return {"skipped": "--smoke or --no-fluent-bit"}
    if fluentbit.FLUENT_BIT is None:
        return {"skipped": "no fluent-bit on PATH"}
    records = max(records, FLUENT_BIT_MIN_RECORDS)
    items = generate("mixed", records, start_ms)
    timeout = max(120.0, records / 200)  # generous: a stall fails the run, a slow machine does not
    to_sink, baseline = fluentbit.to_sink(items, timeout), fluentbit.baseline(items, timeout)
    return {"binary": fluentbit.FLUENT_BIT, "to_sink": to_sink, "baseline": baseline,
            "sink_over_baseline": round(to_sink["records_per_sec"] / baseline["records_per_sec"], 3),
            "acked_over_baseline": round((acked_per_sec(to_sink) or 0) / baseline["records_per_sec"], 3)}


def checks(result: dict[str, Any]) -> dict[str, bool]:
    """Correctness only: every record sent is a row or a dead letter; every stage had output."""
    records = result["settings"]["records"]
    stage, floor = result["stages"], result["floor"]
    out = {f"e2e {mix}: rows + dead letters == sent": f["counts_ok"] for mix, f in result["e2e"].items()}
    out["e2e mixed paced: rows + dead letters == sent"] = result["paced"]["counts_ok"]
    out["e2e raw, raw_data false: rows + dead letters == sent"] = result["raw_no_raw_data"]["counts_ok"]
    out["decode: every record"] = stage["decode"]["records"] == records
    out["map: mapped + dead letters == records"] = stage["map"]["mapped"] + stage["map"]["dead_letters"] == records
    out["map: rows mapped"] = stage["map"]["mapped"] > 0
    out["map in steps, tags spread: the same rows"] = (
        stage["map_steps"]["records"] == records and stage["map_steps"]["mapped"] == stage["map"]["mapped"]
    )
    out["validate: rows checked"] = stage["validate"]["records"] == stage["map"]["mapped"]
    out["encode: objects written"] = stage["encode"]["objects"] > 0 and stage["encode"]["parquet_bytes"] > 0
    out["floor: every record written"] = floor["records"] == records and floor["parquet"]["parquet_bytes"] > 0
    out["rules: each maps its fixtures"] = all(f["mapped"] > 0 for f in stage["map_rules"].values())
    if "to_sink" in result["fluent_bit"]:
        out["fluent-bit -> sink: rows + dead letters == sent"] = result["fluent_bit"]["to_sink"]["counts_ok"]
    return out


def run(records: int, chunk: int, rule_records: int, rule_rounds: int, fluent_bit: bool) -> dict[str, Any]:
    start_ms = int(time.time() * 1000)
    result: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {"records": records, "chunk": chunk, "rule_records": rule_records, "rule_rounds": rule_rounds},
    }
    result["e2e"] = {mix: e2e.run(mix, records, chunk, start_ms=start_ms) for mix in MIXES}
    half = max(1.0, result["e2e"]["mixed"]["records_per_sec"] / 2)
    result["paced"] = e2e.run("mixed", records, chunk, start_ms=start_ms, rate=half)
    # the same raw lines with each mapping's raw_data: false (the parsed fields only)
    result["raw_no_raw_data"] = e2e.run("raw", records, chunk, start_ms=start_ms, raw_data=False)
    frames = pack_frames(generate("mixed", records, start_ms), chunk)
    result["stages"] = stages.pipeline(frames, rule_records, rule_rounds)
    result["floor"] = stages.floor(frames)
    result["e2e_over_floor"] = round(result["e2e"]["mixed"]["records_per_sec"] / result["floor"]["records_per_sec"], 4)
    result["fluent_bit"] = _fluent_bit(records, start_ms, fluent_bit)
    result["checks"] = checks(result)
    result["ok"] = all(result["checks"].values())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records per part (default 100000)")
    parser.add_argument("--chunk", type=int, default=1000, help="records per Forward chunk (default 1000)")
    parser.add_argument("--rule-records", type=int, default=50_000, help="records per built-in rule (default 50000)")
    parser.add_argument("--rounds", type=int, default=1, help="run the whole suite this many times; report medians")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--no-fluent-bit", action="store_true", help="skip the Fluent Bit sender and baseline")
    parser.add_argument("--smoke", action="store_true", help="a few thousand records per part; checks only")
    args = parser.parse_args()
    if args.records < 1 or args.chunk < 1 or args.rule_records < 1 or args.rounds < 1:
        parser.error("--records, --chunk, --rule-records and --rounds must be at least 1")
    rounds = []
    for index in range(args.rounds):
        if args.smoke:
            rounds.append(run(SMOKE_RECORDS, SMOKE_CHUNK, 1000, 1, fluent_bit=False))
        else:
            rounds.append(run(args.records, args.chunk, args.rule_records, 2, fluent_bit=not args.no_fluent_bit))
        if args.rounds > 1:
            print(f"round {index + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    result = rounds[0] if args.rounds == 1 else combine(rounds)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
