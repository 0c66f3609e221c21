"""Memory with a deep backlog: a generator process sends ``--records`` records (10 million by
default) with acks as fast as the sink takes them, into a sink whose mapping falls behind, so the
records wait in the spool. Prints the sink's peak RSS while it fills, the records the spool held
when the last one was acked (acked, minus rows in the lake and dead letters) and its bytes on disk;
then the sink is killed (what it holds is not drained).

    .venv/bin/python bench/buffered.py [--records 10000000] [--distinct 100000] [--json out.json]

The generator builds ``--distinct`` records of the ``mixed`` mix once and sends them again and
again, each time under new chunk tokens (the sink would store a resent token once).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing as mp
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

import e2e
from frames import await_ack, pack_frames
from records import generate


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _send(port: int, records: int, distinct: int, chunk: int, out: Any) -> None:
    """Runs in its own process: send ``records`` records as repeats of ``distinct`` ones."""
    try:
        frames = pack_frames(generate("mixed", distinct, int(time.time() * 1000)), chunk)
        base = [(f.tag, msgpack.unpackb(f.data, raw=False)[1], f.records) for f in frames]
        unpacker = msgpack.Unpacker(raw=False)
        sent = wire = 0
        with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
            started = time.time()
            round_no = 0
            while sent < records:
                for tag, packed, count in base:
                    token = base64.b64encode(hashlib.sha512(packed + round_no.to_bytes(8)).digest()[:16]).decode()
                    data = msgpack.packb([tag, packed, {"chunk": token}], use_bin_type=True)
                    sock.sendall(data)
                    await_ack(sock, unpacker, token)
                    sent += count
                    wire += len(data)
                    if sent >= records:
                        break
                round_no += 1
            out.put({"records": sent, "wire_bytes": wire, "seconds": time.time() - started})
    except Exception as exc:  # reported to the parent, which fails the run
        out.put({"error": repr(exc)})


def run(records: int, distinct: int, chunk: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="slsink-buffered-"))
    port = e2e.free_port()
    # room for every record in the spool: the point is a deep backlog, not backpressure
    sink = e2e.start_sink(tmp, port, spool_max_bytes=64 * 1024**3)
    try:
        ctx = mp.get_context("spawn")
        results: Any = ctx.Queue()
        sender = ctx.Process(target=_send, args=(port, records, distinct, chunk, results))
        sender.start()
        sent = e2e.wait_for_result(sender, results)
        peak = e2e.peak_rss_mb(sink)  # the peak up to the last ack
        lake = e2e.lake_figures(tmp)
        held = sent["records"] - lake["rows_in_lake"] - lake["dead_letters"]
        spool_bytes = _tree_bytes(tmp / "spool")
    finally:
        e2e.kill_sink(sink)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "records_acked": sent["records"],
        "seconds_to_last_ack": round(sent["seconds"], 1),
        "acked_records_per_sec": round(sent["records"] / sent["seconds"]),
        "wire_bytes": sent["wire_bytes"],
        "records_in_spool_at_last_ack": held,
        "spool_bytes_at_last_ack": spool_bytes,
        "sink_peak_rss_mb": round(peak, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=e2e.DEFAULT_CHUNK)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args.records, args.distinct, args.chunk)
    for key, value in figures.items():
        print(f"{key:30} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
