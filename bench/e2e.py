"""End-to-end benchmark: a generator process sends Forward chunks with acks over loopback to the
real ``securitylake-sink run`` process with a ``file://`` lake; prints records/s from the first
byte to the last object written, sink CPU seconds per million records, peak RSS, ack latency and
bytes on the wire against bytes of Parquet (and against the same bytes zstd-compressed as one
stream: how far the records compress at all), and writes them as JSON.

    .venv/bin/python bench/e2e.py [--records 200000] [--chunk 1000] [--mix MIX] [--rate R] [--workers N]
                                  [--no-raw-data] [--json out.json]
    .venv/bin/python bench/e2e.py --smoke     # a few thousand records; checks counts only

MIX is one of bench/records.py's mixes (default ``mixed``); ``--rate`` paces the sender to that
many records per second. ``bench/run.py`` runs this for every mix, with the other measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq
import zstandard

from frames import pack_frames, send_frames
from records import MAPPINGS, MIXES, generate

BIN = Path(sys.executable).parent / "securitylake-sink"
DEFAULT_CHUNK = 1000
# The sent frames compressed as one stream at zstd's default level, for the parquet/wire column: how
# far the generated records compress at all, with every record in one window.
ZSTD_LEVEL = 3


def sink_config(tmp: Path, port: int, *, raw_data: bool = True, spool_max_bytes: int | None = None) -> Path:
    """A file-lake config under ``tmp`` (lake/, spool/) listening on ``port``, every bench tag
    bound to its built-in rule (with ``raw_data`` as given); one source location for every class."""
    keep = "true" if raw_data else "false"
    spool_cap = "" if spool_max_bytes is None else f", max_bytes: {spool_max_bytes}"
    mappings = "".join(f"  - {{match: {tag!r}, rule: {rule}, raw_data: {keep}}}\n" for tag, rule in MAPPINGS)
    path = tmp / "config.yaml"
    path.write_text(
        f"""destination:
  url: "file://{tmp / "lake"}"
  region: us-east-1
  account_id: "111122223333"
  sources: [{{class_uid: "*", location: "ext/bench/"}}]
listen:
  forward: {{address: "127.0.0.1:{port}"}}
  metrics: {{enabled: false}}
spool: {{path: "{tmp / "spool"}"{spool_cap}}}
# the figures run to the last object: let the flush on SIGTERM finish whatever the backlog
shutdown: {{timeout_secs: 3600}}
mappings:
{mappings}"""
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants, from /proc."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children") if Path(f"/proc/{current}").exists() else []:
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in task.read_text().split()]
    return pids


class PeakRss(threading.Thread):
    """The peak resident memory of a process and its children, read from /proc while it runs.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's peak into a child started with
    fork or vfork and exec, so a big benchmark process would show as the sink's peak.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.done = threading.Event()

    @staticmethod
    def _field(pid: int, name: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def run(self) -> None:
        while not self.done.wait(0.05):
            tree = process_tree(self.pid)
            own_peak = self._field(self.pid, "VmHWM:")  # the sink's own peak, exact
            together = sum(self._field(pid, "VmRSS:") for pid in tree)  # workers: sampled
            self.peak_kb = max(self.peak_kb, own_peak, together)


_PEAKS: dict[int, PeakRss] = {}
_STARTUP_CPU: dict[int, float] = {}  # CPU seconds a sink had spent when it began accepting


def start_sink(
    tmp: Path, port: int, workers: int = 1, *, raw_data: bool = True, spool_max_bytes: int | None = None
) -> subprocess.Popen[bytes]:
    """Start the sink (``run --workers``) on ``sink_config(tmp, port, ...)`` and wait until it
    accepts connections."""
    config = sink_config(tmp, port, raw_data=raw_data, spool_max_bytes=spool_max_bytes)
    command = [str(BIN), "run", "-c", str(config), "--log-level", "warning", "--workers", str(workers)]
    with (tmp / "sink.log").open("wb") as log:
        sink = subprocess.Popen(command, stdout=log, stderr=log)
    _PEAKS[sink.pid] = PeakRss(sink.pid)
    _PEAKS[sink.pid].start()
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            if workers > 1:  # the first worker to bind answers: give the others time to bind too
                time.sleep(3)
            _STARTUP_CPU[sink.pid] = tree_cpu_secs(sink.pid)
            return sink
        except OSError:
            if sink.poll() is not None or time.monotonic() > deadline:
                sink.kill()
                raise RuntimeError(f"the sink did not start: {(tmp / 'sink.log').read_text()[-2000:]}") from None
            time.sleep(0.05)


class SinkExit(NamedTuple):
    """How a sink run ended: its CPU is counted from when it accepted connections (start-up, the
    imports and the OCSF schema, is a fixed cost of about a second, apart in ``startup_cpu_secs``)."""

    code: int
    cpu_secs: float
    peak_rss_mb: float
    startup_cpu_secs: float


def tree_cpu_secs(pid: int) -> float:
    """CPU seconds (user and system) of a process and its descendants so far, from /proc."""
    ticks = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def stop_sink(sink: subprocess.Popen[bytes]) -> SinkExit:
    """SIGTERM (the sink flushes every open batch) and wait: exit code, CPU seconds since it was
    serving, peak RSS MB, start-up CPU seconds."""
    sink.send_signal(signal.SIGTERM)
    peak = _PEAKS.pop(sink.pid)
    startup = _STARTUP_CPU.pop(sink.pid, 0.0)
    # the last reading: the pid is waited for right after, so /proc still shows the process until then
    _, status, usage = os.wait4(sink.pid, 0)
    peak.done.set()
    peak.join()
    sink.returncode = os.waitstatus_to_exitcode(status)
    return SinkExit(sink.returncode, usage.ru_utime + usage.ru_stime - startup, peak.peak_kb / 1024, startup)


def peak_rss_mb(sink: subprocess.Popen[bytes]) -> float:
    """The sink's peak RSS so far, in MB (read from /proc while it runs)."""
    return _PEAKS[sink.pid].peak_kb / 1024


def kill_sink(sink: subprocess.Popen[bytes]) -> None:
    """SIGKILL the sink (what it holds stays in its spool) and wait; its RSS reading stops."""
    sink.kill()
    sink.wait()
    _STARTUP_CPU.pop(sink.pid, None)
    peak = _PEAKS.pop(sink.pid, None)
    if peak is not None:
        peak.done.set()
        peak.join()


def lake_figures(tmp: Path) -> dict[str, Any]:
    """Rows, objects, Parquet bytes and the last object's write time in ``tmp/lake``; dead letters."""
    objects = list((tmp / "lake").rglob("*.parquet"))
    return {
        "rows_in_lake": sum(pq.ParquetFile(p).metadata.num_rows for p in objects),
        "dead_letters": sum(1 for p in (tmp / "spool").rglob("dead_letter/*.ndjson") for _ in p.open()),
        "objects": len(objects),
        "parquet_bytes": sum(p.stat().st_size for p in objects),
        "last_object_at": max((p.stat().st_mtime for p in objects), default=0.0),
    }


@dataclass(frozen=True)
class Load:
    """What the generator sends: ``records`` of ``mix`` in chunks, paced to ``rate`` when given."""

    port: int
    mix: str
    records: int
    chunk: int
    start_ms: int
    rate: float | None


def _generate(load: Load, out: Any) -> None:
    """Runs in its own process: build every frame first, then send them all with acks."""
    try:
        frames = pack_frames(generate(load.mix, load.records, load.start_ms), load.chunk)
        # before the first byte, so not in the timings
        stream_zstd = len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b"".join(f.data for f in frames)))
        out.put({**asdict(send_frames(load.port, frames, load.rate)), "wire_zstd_bytes": stream_zstd})
    except Exception as exc:  # reported to the parent, which fails the run
        out.put({"error": repr(exc)})


def wait_for_result(generator: Any, results: Any) -> dict[str, Any]:
    """What a generator process put on ``results``; raise when it died or reported an error."""
    while True:
        try:
            result: dict[str, Any] = results.get(timeout=1)
            break
        except queue.Empty:
            if not generator.is_alive():
                raise RuntimeError("the generator process died") from None
    generator.join()
    if "error" in result:
        raise RuntimeError(f"the generator failed: {result['error']}")
    return result


def run(mix: str, records: int, chunk: int = DEFAULT_CHUNK, *, start_ms: int | None = None,
        rate: float | None = None, workers: int = 1, raw_data: bool = True) -> dict[str, Any]:
    """One sink run of ``records`` records of ``mix`` (``raw_data``: each mapping's option); the
    figures as a flat dict."""
    start_ms = start_ms if start_ms is not None else int(time.time() * 1000)
    tmp = Path(tempfile.mkdtemp(prefix="slsink-bench-"))
    port = free_port()
    sink = start_sink(tmp, port, workers, raw_data=raw_data)
    try:
        ctx = mp.get_context("spawn")
        results: Any = ctx.Queue()
        generator = ctx.Process(target=_generate, args=(Load(port, mix, records, chunk, start_ms, rate), results))
        generator.start()
        sent = wait_for_result(generator, results)
    except BaseException:
        kill_sink(sink)
        raise
    code, cpu, rss, startup = stop_sink(sink)
    lake = lake_figures(tmp)
    if code == 0:
        shutil.rmtree(tmp)  # kept when the sink failed, for its log
    lat = sorted(n / 1e6 for n in sent["latencies_ns"])
    first = sent["first_byte"]
    to_last_object = max(lake.pop("last_object_at"), sent["last_ack"]) - first
    return {
        "mix": mix,
        "records": sent["records"],
        "chunk": chunk,
        "paced_records_per_sec": rate,
        "raw_data": raw_data,
        **lake,
        "counts_ok": lake["rows_in_lake"] + lake["dead_letters"] == sent["records"] == records and code == 0,
        "exit_status": code,
        "seconds_to_last_ack": round(sent["last_ack"] - first, 2),
        "seconds_to_last_object": round(to_last_object, 2),
        "records_per_sec": round(records / to_last_object) if to_last_object > 0 else 0,
        "sink_cpu_secs_per_million": round(cpu / records * 1e6, 2),
        "sink_startup_cpu_secs": round(startup, 2),
        "sink_peak_rss_mb": round(rss, 1),
        "ack_p50_ms": round(statistics.median(lat), 2),
        "ack_p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 2),
        "wire_bytes": sent["wire_bytes"],
        "parquet_over_wire": round(lake["parquet_bytes"] / sent["wire_bytes"], 3),
        "wire_zstd_over_wire": round(sent["wire_zstd_bytes"] / sent["wire_bytes"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--rate", type=float, help="pace the sender to this many records per second")
    parser.add_argument("--workers", type=int, default=1, help="run the sink with --workers N")
    parser.add_argument("--no-raw-data", action="store_true", help="every mapping with raw_data: false")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="a few thousand records; exit 1 unless counts match")
    args = parser.parse_args()
    figures = run(args.mix, 3000 if args.smoke else args.records, 500 if args.smoke else args.chunk, rate=args.rate,
                  workers=args.workers, raw_data=not args.no_raw_data)
    for key, value in figures.items():
        print(f"{key:28} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["counts_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
