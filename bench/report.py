"""The benchmark's report: the machine it ran on (from /proc), the figures of a run as a table, and
several rounds of the suite combined into one run of medians with their spread."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from securitylake_sink.app import STEP_RECORDS


def _proc_field(path: str, name: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM and load: figures on a shared machine are read against these."""
    mem_kb = (_proc_field("/proc/meminfo", "MemTotal") or "0 kB").split()[0]
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kb) / 1024 / 1024, 1),
        "load_avg_at_start": " ".join(load),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
    }


def _median(values: Sequence[Any]) -> Any:
    """One figure over the rounds: numbers by their median (ints stay ints), a check passes only
    if it passed every time, dicts figure by figure; anything else as the first round had it."""
    first = values[0]
    if isinstance(first, bool):
        return all(values)
    if isinstance(first, dict):
        return {key: _median([v[key] for v in values]) for key in first if all(key in v for v in values)}
    if isinstance(first, int | float) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        middle = statistics.median(values)
        return round(middle) if all(isinstance(v, int) for v in values) else middle
    return first


def combine(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of the suite as one result: each figure the median of its rounds (a ratio
    the median of the rounds' ratios, not a ratio of medians), each check passed only when it
    passed in every round; every round's own result kept under ``rounds``."""
    if not rounds:
        raise ValueError("no rounds to combine")
    combined: dict[str, Any] = _median(rounds)  # "ok" too: a bool, so all()
    combined["rounds"] = list(rounds)
    return combined


# The figures whose spread over the rounds the report shows: a label and where each round has it.
_SPREAD: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    *(
        (f"{mix}: {label}", lambda r, mix=mix, key=key: r["e2e"][mix][key])
        for mix in ("preparsed", "raw", "mixed")
        for label, key in (("records/s", "records_per_sec"), ("CPU-s/M", "sink_cpu_secs_per_million"),
                           ("peak RSS MB", "sink_peak_rss_mb"))
    ),
    ("mixed paced: ack p99 ms", lambda r: r["paced"]["ack_p99_ms"]),
    ("map in steps: per CPU-s", lambda r: r["stages"]["map_steps"]["records_per_cpu_sec"]),
    ("floor: records/s", lambda r: r["floor"]["records_per_sec"]),
    ("end to end (mixed) / floor", lambda r: r["e2e_over_floor"]),
    ("fluent-bit -> sink: acked / baseline", lambda r: r["fluent_bit"].get("acked_over_baseline")),
    ("fluent-bit -> sink: peak RSS MB", lambda r: r["fluent_bit"].get("to_sink", {}).get("sink_peak_rss_mb")),
    ("fluent-bit -> fluent-bit: records/s", lambda r: r["fluent_bit"].get("baseline", {}).get("records_per_sec")),
)


def _spread(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Each figure of ``_SPREAD`` that every round has: lowest, median, highest, then each round's."""
    rows: list[list[Any]] = []
    for label, figure in _SPREAD:
        values = [figure(r) for r in rounds]
        if all(v is not None for v in values):
            low, middle, high = (_fig(v) for v in (min(values), _median(values), max(values)))
            rows.append([label, low, middle, high, " ".join(_fig(v) for v in values)])
    return ["", f"Spread over the {len(rounds)} rounds (each the whole suite, in turn)",
            *_rows(["figure", "lowest", "median", "highest", "notes"], rows)]


def _fig(value: Any) -> str:
    """A figure of the spread: ratios and other small numbers to three decimals."""
    return f"{value:.3f}" if isinstance(value, float) and abs(value) < 10 else _num(value)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Aligned columns: the first and a ``notes`` column to the left, figures to the right."""
    cells = [header, *[[_num(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    left = {0} | {i for i, name in enumerate(header) if name == "notes"}
    lines = [
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    return [line.rstrip() for line in (lines[0], "  ".join("-" * w for w in widths), *lines[1:])]


def acked_per_sec(f: dict[str, Any]) -> int | None:
    seconds = f.get("seconds_to_last_ack")
    return round(f["records"] / seconds) if seconds else None


def _e2e_row(name: str, f: dict[str, Any]) -> list[Any]:
    counts = f"{f['rows_in_lake']:,}+{f['dead_letters']:,}={f['records']:,}" + ("" if f["counts_ok"] else " MISMATCH")
    return [name, f["records_per_sec"], acked_per_sec(f), f["sink_cpu_secs_per_million"], f["sink_peak_rss_mb"],
            f.get("ack_p50_ms"), f.get("ack_p99_ms"), f.get("parquet_over_wire"), f.get("wire_zstd_over_wire"), counts]


def _stage_row(name: str, f: dict[str, Any], note: str = "") -> list[Any]:
    return [name, f["records"], f["records_per_sec"], f["records_per_cpu_sec"], note]


def _startup(result: dict[str, Any]) -> str:
    """The sinks' start-up CPU seconds over the end-to-end runs, as ``lo-hi``."""
    runs = [*result["e2e"].values(), result.get("paced"), result.get("raw_no_raw_data")]
    seconds = sorted(f["sink_startup_cpu_secs"] for f in runs if f and "sink_startup_cpu_secs" in f)
    if not seconds:
        return "?"
    return f"{seconds[0]:.2f}" if seconds[0] == seconds[-1] else f"{seconds[0]:.2f}-{seconds[-1]:.2f}"


def table(result: dict[str, Any]) -> str:
    """The whole run as text: machine and command first, then each part."""
    m = result["machine"]
    out = [
        "securitylake-sink benchmark",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, load {m['load_avg_at_start']} "
        f"({m['os']}, Python {m['python']}, pyarrow {m['pyarrow']})",
        f"command: {result['command']}",
        *([f"figures: the median of {len(result['rounds'])} rounds of the whole suite, in turn; their spread is "
           "at the end"] if "rounds" in result else []),
        f"records per part: {result['settings']['records']:,}; chunks of {result['settings']['chunk']:,} records "
        "per tag; file:// lake; OCSF 1.1.0",
        "",
        "End to end: generator process -> Forward with acks -> securitylake-sink run -> file:// lake "
        "(records/s from first byte to last object; acked/s from first byte to last ack; CPU-s/M from when "
        f"the sink accepts connections: its start-up, {_startup(result)} CPU-s, is not counted)",
    ]
    e2e_rows = [_e2e_row(mix, f) for mix, f in result["e2e"].items()]
    paced = result.get("paced")
    if paced:
        e2e_rows.append(_e2e_row(f"mixed paced at {paced['paced_records_per_sec']:,.0f}/s", paced))
    if "raw_no_raw_data" in result:
        e2e_rows.append(_e2e_row("raw, raw_data: false", result["raw_no_raw_data"]))
    out += _rows(
        [
            "mix",
            "records/s",
            "acked/s",
            "CPU-s/M",
            "RSS MB",
            "ack p50 ms",
            "ack p99 ms",
            "parquet/wire",
            "zstd/wire",
            "rows+dead=sent",
        ],
        e2e_rows,
    )
    stages, floor = result["stages"], result["floor"]
    out += ["", "Stages in process, on the mixed records"]
    out += _rows(
        ["stage", "records", "records/s", "per CPU-s", "notes"],
        [
            _stage_row("decode (forward_codec)", stages["decode"], f"{stages['decode']['chunks']} chunks"),
            _stage_row(
                "map (Mapper.map_chunks)",
                stages["map"],
                f"{stages['map']['mapped']:,} mapped, {stages['map']['dead_letters']:,} dead letters",
            ),
            _stage_row(
                "map in steps, tags spread",
                stages["map_steps"],
                f"{stages['map_steps']['steps']} steps of ≤ {STEP_RECORDS:,} records, "
                f"{stages['map_steps']['tags']} tags",
            ),
            _stage_row("validate (ocsf/validate)", stages["validate"], f"{stages['validate']['failed']} failed"),
            _stage_row(
                "encode (encode_parquet)",
                stages["encode"],
                f"{stages['encode']['objects']} objects, {stages['encode']['parquet_bytes']:,} bytes",
            ),
            _stage_row(
                "floor: msgpack+arrow+parquet",
                floor,
                f"arrow types: {floor['arrow']['inferred_tags']} tags inferred, "
                f"{floor['arrow']['string_tags']} all-string",
            ),
        ],
    )
    out.append(f"end to end (mixed) / floor: {result['e2e_over_floor']:.3f}")
    out += ["", "Each built-in rule in process, on its fixtures"]
    out += _rows(
        ["rule", "records/s", "per CPU-s", "mapped", "dead"],
        [
            [rule, f["records_per_sec"], f["records_per_cpu_sec"], f["mapped"], f["dead_letters"]]
            for rule, f in stages["map_rules"].items()
        ],
    )
    fb = result["fluent_bit"]
    if "skipped" in fb:
        out += ["", "Fluent Bit as the sender (tail of generated files, forward with Require_ack_response On)"]
        out.append(f"skipped ({fb['skipped']})")
    else:
        sink, base = fb["to_sink"], fb["baseline"]
        out += [
            "",
            f"Fluent Bit as the sender (tail of generated files, forward with Require_ack_response On), "
            f"{sink['records']:,} mixed records",
        ]
        out += _rows(
            ["run", "records/s", "acked/s", "CPU-s/M", "RSS MB", "rows+dead=sent"],
            [
                [
                    "fluent-bit -> sink (to last object)",
                    sink["records_per_sec"],
                    acked_per_sec(sink),
                    sink["sink_cpu_secs_per_million"],
                    sink["sink_peak_rss_mb"],
                    f"{sink['rows_in_lake']:,}+{sink['dead_letters']:,}={sink['records']:,}"
                    + ("" if sink["counts_ok"] else " MISMATCH"),
                ],
                [
                    "fluent-bit -> fluent-bit (null output)",
                    base["records_per_sec"],
                    base["records_per_sec"],
                    None,
                    None,
                    "-",
                ],
            ],
        )
        out.append(
            f"sink / baseline: {fb['sink_over_baseline']:.3f} to the last object, "
            f"{fb['acked_over_baseline']:.3f} acked"
        )
    if "rounds" in result:
        out += _spread(result["rounds"])
    failed = [name for name, ok in result["checks"].items() if not ok]
    out += ["", "checks: all passed" if not failed else f"checks FAILED: {', '.join(failed)}"]
    return "\n".join(out)
