"""End-to-end benchmark: a generator process sends Forward chunks with acks over loopback to the
real ``securitylake-sink run`` process with a ``file://`` lake; prints records/s from the first
byte to the last object written, sink CPU seconds per million records, peak RSS, ack latency and
bytes on the wire against bytes of Parquet, and writes them as JSON.

    .venv/bin/python bench/e2e.py [--records 200000] [--chunk 1000] [--mix ocsf|sshd|mixed] [--json out.json]
    .venv/bin/python bench/e2e.py --smoke     # a few thousand records; checks counts only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import pyarrow.parquet as pq

from securitylake_sink.forward_client import ForwardClient

BIN = Path(sys.executable).parent / "securitylake-sink"
SYSLOG = "Nov 28 10:{m:02d}:{s:02d} bastion-1 sshd[{pid}]: "
SSHD = [
    SYSLOG + "Accepted publickey for deploy from 192.0.2.{h} port {p} ssh2",
    SYSLOG + "Failed password for invalid user admin from 203.0.113.{h} port {p} ssh2",
    SYSLOG + "Failed password for root from 198.51.100.{h} port {p} ssh2",
]


def _record(kind: str, i: int, now_ms: int) -> tuple[str, dict[str, Any]]:
    if kind == "ocsf" or (kind == "mixed" and i % 2 == 0):
        return "ocsf.auth", {
            "class_uid": 3002,
            "activity_id": 1,
            "severity_id": 1,
            "time": now_ms,
            "status_id": 1 + i % 2,
            "user": {"name": f"user{i % 97}"},
            "src_endpoint": {"ip": f"192.0.2.{i % 250}", "port": 1024 + i % 60000},
            "dst_endpoint": {"hostname": "bastion-1"},
            "metadata": {"uid": str(i), "product": {"name": "bench", "vendor_name": "example"}},
        }
    # pid = i keeps every chunk distinct: identical chunks share a token and are stored once
    line = SSHD[i % 3].format(m=i % 60, s=(i // 60) % 60, pid=1000 + i, h=1 + i % 250, p=1024 + i % 60000)
    return "host.sshd", {"log": line}


def _generate(port: int, records: int, chunk: int, kind: str, out: Any) -> None:
    """Runs in its own process: send everything with acks, report latencies and wire bytes."""
    now_ms = int(time.time() * 1000)
    wire = 0
    with ForwardClient("127.0.0.1", port, timeout=120) as client:
        for start in range(0, records, chunk):
            batch = [_record(kind, i, now_ms) for i in range(start, min(start + chunk, records))]
            by_tag: dict[str, list[tuple[int, dict[str, Any]]]] = {}
            for tag, record in batch:
                by_tag.setdefault(tag, []).append((now_ms * 1_000_000, record))
            for tag, items in by_tag.items():
                wire += len(msgpack.packb(items))
                client.send(tag, items)
        out.put({"latencies_ns": client.latencies_ns, "wire_bytes": wire})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(records: int, chunk: int, kind: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="slsink-bench-"))
    port = _free_port()
    config = tmp / "config.yaml"
    config.write_text(
        f"""destination:
  url: "file://{tmp / "lake"}"
  region: us-east-1
  sources: [{{class_uid: 3002, location: "ext/auth/"}}]
listen:
  forward: {{address: "127.0.0.1:{port}"}}
  metrics: {{enabled: false}}
spool: {{path: "{tmp / "spool"}"}}
mappings: [{{match: "host.sshd", rule: sshd}}]
"""
    )
    log = (tmp / "sink.log").open("wb")
    sink = subprocess.Popen([str(BIN), "run", "-c", str(config), "--log-level", "warning"], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    queue: Any = mp.get_context("spawn").Queue()
    generator = mp.get_context("spawn").Process(target=_generate, args=(port, records, chunk, kind, queue))
    started = time.perf_counter()
    generator.start()
    result = queue.get(timeout=3600)
    generator.join()
    acked = time.perf_counter()
    sink.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(sink.pid, 0)
    finished = time.perf_counter()
    objects = list((tmp / "lake").rglob("*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in objects)
    parquet_bytes = sum(p.stat().st_size for p in objects)
    dead = sum(1 for p in (tmp / "spool" / "dead_letter").glob("*.ndjson") for _ in p.open())
    lat = sorted(n / 1e6 for n in result["latencies_ns"])
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "records": records,
        "chunk": chunk,
        "mix": kind,
        "rows_in_lake": rows,
        "dead_letters": dead,
        "objects": len(objects),
        "exit_status": os.waitstatus_to_exitcode(status),
        "seconds_to_last_ack": round(acked - started, 2),
        "seconds_to_last_object": round(finished - started, 2),
        "records_per_sec": round(records / (finished - started)),
        "sink_cpu_secs_per_million": round(cpu / records * 1e6, 2),
        "sink_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "ack_p50_ms": round(statistics.median(lat), 2),
        "ack_p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "wire_bytes": result["wire_bytes"],
        "parquet_bytes": parquet_bytes,
        "parquet_over_wire": round(parquet_bytes / result["wire_bytes"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--mix", choices=["ocsf", "sshd", "mixed"], default="mixed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="a few thousand records; exit 1 unless counts match")
    args = parser.parse_args()
    figures = run(3000 if args.smoke else args.records, 500 if args.smoke else args.chunk, args.mix)
    for key, value in figures.items():
        print(f"{key:28} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["rows_in_lake"] + figures["dead_letters"] == figures["records"] and figures["exit_status"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
