"""Fluent Bit as the sender: it tails files of the generated records (one file per tag, from the
head) and forwards them with ``Require_ack_response On`` to the sink; and the baseline, the same
sender forwarding to a second Fluent Bit with a ``forward`` input and a ``null`` output. Configs
are written into the run's temporary directory; nothing is built or downloaded."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import e2e
from records import RAW_TAGS, Item, as_line

FLUENT_BIT = shutil.which("fluent-bit")
POLL_SECS = 0.05


def _section(name: str, options: dict[str, object]) -> str:
    """One section of Fluent Bit's classic config format."""
    return f"[{name}]\n" + "".join(f"    {key:<22} {value}\n" for key, value in options.items())


def _write_inputs(tmp: Path, items: Sequence[Item]) -> list[str]:
    """One log file per tag; the tail input sections that read them (JSON records parsed)."""
    lines: dict[str, list[str]] = {}
    for tag, _time_ns, record in items:
        lines.setdefault(tag, []).append(as_line(tag, record))
    sections = []
    for tag, text in lines.items():
        path = tmp / f"{tag}.log"
        path.write_text("\n".join(text) + "\n")
        parser = {} if tag in RAW_TAGS else {"Parser": "bench_json"}
        options = {"Name": "tail", "Path": path, "Tag": tag, "Read_from_Head": "On", "Buffer_Max_Size": "1M"}
        sections.append(_section("INPUT", options | parser))
    (tmp / "parsers.conf").write_text(_section("PARSER", {"Name": "bench_json", "Format": "json"}))
    return sections


def _service(http_port: int, parsers: Path | None = None) -> str:
    options: dict[str, object] = {"Flush": 0.2, "Grace": 5, "Log_Level": "warn", "HTTP_Server": "On",
                                  "HTTP_Listen": "127.0.0.1", "HTTP_Port": http_port}
    return _section("SERVICE", options | ({"Parsers_File": parsers} if parsers else {}))


def _sender(tmp: Path, items: Sequence[Item], port: int, http_port: int) -> Path:
    output = {"Name": "forward", "Match": "*", "Host": "127.0.0.1", "Port": port, "Require_ack_response": "On",
              "Retry_Limit": "no_limits"}
    inputs = _write_inputs(tmp, items)
    path = tmp / "sender.conf"
    path.write_text("\n".join([_service(http_port, tmp / "parsers.conf"), *inputs, _section("OUTPUT", output)]))
    return path


def _receiver(tmp: Path, port: int, http_port: int) -> Path:
    path = tmp / "receiver.conf"
    forward = {"Name": "forward", "Listen": "127.0.0.1", "Port": port}
    path.write_text("\n".join([_service(http_port), _section("INPUT", forward),
                               _section("OUTPUT", {"Name": "null", "Match": "*"})]))
    return path


def _counter(http_port: int, kind: str, plugin: str, name: str) -> object:
    """One of Fluent Bit's own counters (/api/v1/metrics), e.g. output forward.0 proc_records."""
    return _metrics(http_port).get(kind, {}).get(plugin, {}).get(name)


def _metrics(http_port: int) -> dict[str, Any]:
    """Fluent Bit's own counters (/api/v1/metrics); {} while it is not serving yet."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
    try:
        conn.request("GET", "/api/v1/metrics")
        body: dict[str, Any] = json.loads(conn.getresponse().read())
        return body
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()


def _start(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    assert FLUENT_BIT is not None
    with log.open("wb") as out:
        return subprocess.Popen([FLUENT_BIT, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)


def _wait(done: Callable[[], bool], procs: Sequence[subprocess.Popen[bytes]], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"Fluent Bit did not deliver every record: {log.read_text()[-2000:]}")
        time.sleep(POLL_SECS)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def to_sink(items: Sequence[Item], timeout: float) -> dict[str, Any]:
    """Fluent Bit → sink: records/s from Fluent Bit's start to the last object written."""
    tmp = Path(tempfile.mkdtemp(prefix="slsink-bench-fb-"))
    port, http_port = e2e.free_port(), e2e.free_port()
    sink = e2e.start_sink(tmp, port)
    conf = _sender(tmp, items, port, http_port)
    started = time.time()
    sender = _start(conf, tmp / "fluent-bit.log")
    try:
        def acked() -> bool:
            return _counter(http_port, "output", "forward.0", "proc_records") == len(items)

        _wait(acked, [sender, sink], timeout, tmp / "fluent-bit.log")
        acked_at = time.time()
    except BaseException:
        e2e.kill_sink(sink)
        _stop(sender)
        raise
    code, cpu, rss, startup = e2e.stop_sink(sink)
    _stop(sender)
    lake = e2e.lake_figures(tmp)
    seconds = max(lake.pop("last_object_at"), acked_at) - started
    if code == 0:
        shutil.rmtree(tmp)
    return {
        "records": len(items),
        **lake,
        "counts_ok": lake["rows_in_lake"] + lake["dead_letters"] == len(items) and code == 0,
        "exit_status": code,
        "seconds_to_last_ack": round(acked_at - started, 2),
        "seconds_to_last_object": round(seconds, 2),
        "records_per_sec": round(len(items) / seconds),
        "sink_cpu_secs_per_million": round(cpu / len(items) * 1e6, 2),
        "sink_startup_cpu_secs": round(startup, 2),
        "sink_peak_rss_mb": round(rss, 1),
    }


def baseline(items: Sequence[Item], timeout: float) -> dict[str, Any]:
    """Fluent Bit → Fluent Bit (forward input, null output): records/s from the sender's start to
    the receiver having counted every record."""
    tmp = Path(tempfile.mkdtemp(prefix="slsink-bench-fb-"))
    port, sender_http, receiver_http = e2e.free_port(), e2e.free_port(), e2e.free_port()
    receiver = _start(_receiver(tmp, port, receiver_http), tmp / "receiver.log")
    conf = _sender(tmp, items, port, sender_http)
    try:
        _wait(lambda: bool(_metrics(receiver_http)), [receiver], 30, tmp / "receiver.log")
        started = time.time()
        sender = _start(conf, tmp / "fluent-bit.log")
        try:
            def received() -> bool:
                return _counter(receiver_http, "input", "forward.0", "records") == len(items)

            _wait(received, [sender, receiver], timeout, tmp / "fluent-bit.log")
            seconds = time.time() - started
        finally:
            _stop(sender)
    finally:
        _stop(receiver)
    shutil.rmtree(tmp)
    return {"records": len(items), "seconds": round(seconds, 2), "records_per_sec": round(len(items) / seconds)}
