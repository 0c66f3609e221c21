"""``run --workers N`` through real processes: the workers share the Forward port (SO_REUSEPORT),
each acked record lands once, a worker killed with SIGKILL is started again, and spools an earlier
run left behind are drained into the lake."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from securitylake_sink.errors import ProtocolError
from securitylake_sink.forward_client import ForwardClient
from securitylake_sink.workers import holds_data
from tests.integration.sinkproc import BIN, SinkProcess, auth_records, free_port, read_lake, write_config

ALL_SERVING = "every worker is serving"
CHUNK = 100


def _ports(count: int) -> int:
    """A first port such that it and the next ``count - 1`` are free on loopback (bounded search)."""
    for _ in range(50):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"found no {count} free ports in a row")


def _config(
    tmp: Path,
    port: int,
    *,
    spool: Path | None = None,
    metrics_port: int = 0,
    http_port: int | None = None,
    extra: str = "",
) -> Path:
    """A file-lake config under ``tmp`` (lake/, spool/ unless ``spool``) listening on ``port``
    (and for HTTP on ``http_port``), in a file of its own."""
    listen = f'  metrics: {{address: "127.0.0.1:{metrics_port}"}}\n'
    if http_port is not None:
        listen += f'  http: {{address: "127.0.0.1:{http_port}"}}\n'
    name = f"config-{len(list(tmp.glob('config-*')))}.yaml"
    return write_config(tmp, port, extra=extra, listen=listen, spool=spool, name=name)


def _metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"securitylake_sink_{name}" and labels.items() <= sample.labels.items()
    )


def _worker_pids(log: str) -> dict[int, int]:
    """The newest pid of each worker index, from the supervisor's "started a worker" lines."""
    return {int(w): int(p) for w, p in re.findall(r"started a worker +worker=(\d+) pid=(\d+)", log)}


def _send(port: int, first_id: int, chunks: int) -> list[int]:
    """Send ``chunks`` acked chunks of ids from ``first_id`` on one connection; the acked ids."""
    acked: list[int] = []
    with ForwardClient("127.0.0.1", port, timeout=10) as client:
        for c in range(chunks):
            ids = range(first_id + c * CHUNK, first_id + (c + 1) * CHUNK)
            client.send("workers.test", auth_records(ids, time.time_ns()))
            acked.extend(ids)
    return acked


def _uid_counts(lake: Path) -> Counter[int]:
    table = read_lake(lake)
    return Counter(int(m["uid"]) for m in table.column("metadata").to_pylist()) if table.num_rows else Counter()


def _post(http_port: int, ids: range) -> int:
    """POST OCSF records as Fluent Bit's http output (format json) does, on a new connection."""
    body = json.dumps([record for _, record in auth_records(ids, time.time_ns())]).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/workers.http", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (as above)
        return int(response.status)


def test_two_workers_share_the_ports_and_store_each_acked_record_once(tmp_path: Path) -> None:
    # GIVEN run --workers 2 on one Forward and one HTTP port, worker i serving metrics on the
    # metrics port + i
    port, http_port, metrics = free_port(), free_port(), _ports(2)
    config = _config(tmp_path, port, metrics_port=metrics, http_port=http_port)
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info", args=["--workers", "2"], serving=ALL_SERVING)
    try:
        # WHEN 16 connections, each from its own thread, send 3 acked chunks each
        results: dict[int, list[int]] = {}

        def client(k: int) -> None:
            results[k] = _send(port, k * 10_000, 3)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        acked = [i for ids in results.values() for i in ids]
        assert len(acked) == 16 * 3 * CHUNK
        # AND 8 HTTP requests, each on its own connection, are answered 200
        for k in range(8):
            ids = range(900_000 + k * CHUNK, 900_000 + (k + 1) * CHUNK)
            assert _post(http_port, ids) == 200
            acked.extend(ids)

        # THEN the kernel spread the connections over both workers, and both spools took records
        connections = [_metric(metrics + i, "forward_connections_total") for i in range(2)]
        received = [_metric(metrics + i, "records_received_total") for i in range(2)]
        print(f"connections per worker {connections}, records per worker {received}")
        assert sum(connections) == 16
        assert sum(received) == len(acked)
        http = [_metric(metrics + i, "chunks_acked_total", source="http") for i in range(2)]
        print(f"HTTP requests per worker {http}")
        assert sum(http) == 8
        assert all(n > 0 for n in connections), "16 connections all hashed to one worker (p = 2**-15)"
        assert all(n > 0 for n in received)

        # AND SIGTERM to the supervisor flushes every worker and exits 0
        assert sink.stop() == 0, sink.log()
    finally:
        if sink.proc.poll() is None:
            sink.kill()
    log = sink.log()
    assert log.count("stopped  objects=") == 2, log
    counts = _uid_counts(tmp_path / "lake")
    assert sorted(counts) == sorted(acked)
    assert set(counts.values()) == {1}
    for i in range(2):
        assert not holds_data(tmp_path / "spool" / f"worker-{i}")


def test_a_worker_killed_with_sigkill_is_started_again_and_loses_nothing(tmp_path: Path) -> None:
    # GIVEN run --workers 2 and 8 clients sending acked chunks, each reconnecting after an error
    port = free_port()
    config = _config(tmp_path, port, extra="batch: {max_age_secs: 1}\n")
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info", args=["--workers", "2"], serving=ALL_SERVING)
    stop = threading.Event()
    acked: list[int] = []
    unacked: list[int] = []  # in flight when a connection broke: stored at most once

    def client(k: int) -> None:
        next_id, end = k * 1_000_000, (k + 1) * 1_000_000
        while not stop.is_set() and next_id < end:
            ids = range(next_id, next_id + CHUNK)
            try:
                with ForwardClient("127.0.0.1", port, timeout=10) as forward:
                    while not stop.is_set() and next_id < end:
                        ids = range(next_id, next_id + CHUNK)
                        forward.send("workers.kill", auth_records(ids, time.time_ns()))
                        acked.extend(ids)
                        next_id = ids.stop
            except (OSError, ProtocolError):
                unacked.extend(ids)
                next_id = ids.stop

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acked) < 20 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.05)

        # WHEN worker 1 is killed with SIGKILL while records flow
        victim = _worker_pids(sink.log())[1]
        os.kill(victim, signal.SIGKILL)
        sink.wait_for_log("a worker exited unexpectedly")
        sink.wait_for_log("securitylake-sink is serving", count=3)
        restarted = _worker_pids(sink.log())[1]
        after_restart = len(acked)
        deadline = time.monotonic() + 30
        while len(acked) < after_restart + 20 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    # THEN the supervisor started worker 1 again and, on SIGTERM, exits 0 with everything flushed
    assert restarted != victim
    assert len(acked) > after_restart
    code = sink.stop()
    log = sink.log()
    assert code == 0, log
    assert re.search(r"a worker exited unexpectedly.*worker=1 exit_code=137", log), log
    counts = _uid_counts(tmp_path / "lake")
    missing = [i for i in acked if counts[i] == 0]
    assert not missing, f"{len(missing)} acked records lost, first {missing[:5]}"
    twice = [i for i in acked if counts[i] > 1]
    assert not twice, f"{len(twice)} acked records stored twice"
    assert all(counts[i] <= 1 for i in unacked)
    assert set(counts) <= set(acked) | set(unacked)
    stored = sum(counts[i] for i in unacked)
    print(f"acked {len(acked)}, in flight at the kill {len(unacked)}, of those stored {stored}")


def _leave_records(tmp: Path, port: int, spool: Path, first_id: int) -> list[int]:
    """A single-process sink on ``spool`` acks 5 chunks and is killed with SIGKILL before it
    stores them (batches wait 300 s): the spool holds them."""
    config = _config(tmp, port, spool=spool, extra="batch: {max_age_secs: 300}\n")
    sink = SinkProcess(config, port, tmp / f"leave-{spool.name}.log", level="info")
    try:
        acked = _send(port, first_id, 5)
    finally:
        sink.kill()
    assert holds_data(spool)
    return acked


def test_workers_drain_the_spools_of_a_single_process_run_and_of_a_retired_worker(tmp_path: Path) -> None:
    # GIVEN records acked and left in <spool.path> by a single-process run, and in
    # <spool.path>/worker-2 by a run with more workers
    port = free_port()
    base = tmp_path / "spool"
    left = _leave_records(tmp_path, port, base, 0) + _leave_records(tmp_path, port, base / "worker-2", 100_000)

    # WHEN run --workers 2 starts on the same spool.path and is stopped with SIGTERM
    config = _config(tmp_path, port)
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info", args=["--workers", "2"], serving=ALL_SERVING)
    sink.wait_for_log("drained a spool left by an earlier run", count=2)
    assert sink.stop() == 0, sink.log()

    # THEN every record they held is in the lake once, and neither spool holds data any more
    counts = _uid_counts(tmp_path / "lake")
    assert sorted(counts) == sorted(left)
    assert set(counts.values()) == {1}
    assert not holds_data(base)
    assert not holds_data(base / "worker-2")


def _kill_all(sink: SinkProcess) -> None:
    """SIGKILL the supervisor and its workers, frozen first so none of them flushes or restarts."""
    pids = list(_worker_pids(sink.log()).values())
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    sink.kill()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_a_single_process_run_drains_the_spools_of_workers(tmp_path: Path) -> None:
    # GIVEN run --workers 2 that acked records and was killed, supervisor and workers, with SIGKILL
    port = free_port()
    config = _config(tmp_path, port, extra="batch: {max_age_secs: 300}\n")
    sink = SinkProcess(config, port, tmp_path / "workers.log", args=["--workers", "2"], serving=ALL_SERVING)
    try:
        acked = [i for k in range(8) for i in _send(port, k * 10_000, 2)]
    finally:
        _kill_all(sink)
    held = [p for p in (tmp_path / "spool").glob("worker-*") if holds_data(p)]
    assert held

    # WHEN a single-process run (no --workers) starts on the same spool.path and is stopped
    sink = SinkProcess(config, port, tmp_path / "single.log", level="info")
    sink.wait_for_log("drained a spool left by an earlier run", count=len(held))
    assert sink.stop() == 0, sink.log()

    # THEN every acked record is in the lake once and no worker spool holds data
    counts = _uid_counts(tmp_path / "lake")
    assert sorted(counts) == sorted(acked)
    assert set(counts.values()) == {1}
    assert not any(holds_data(p) for p in (tmp_path / "spool").glob("worker-*"))


def test_a_worker_that_cannot_start_stops_the_run_with_an_error(tmp_path: Path) -> None:
    # GIVEN the Forward port held by a socket without SO_REUSEPORT
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, port)

        # WHEN run --workers 2 starts
        log_path = tmp_path / "sink.log"
        with log_path.open("wb") as out:
            code = subprocess.run(
                [str(BIN), "run", "-c", str(config), "--workers", "2"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            ).returncode

    # THEN it exits 1 without restarting the workers, saying which worker failed
    log = log_path.read_text()
    assert code == 1, log
    assert "a worker failed while starting; stopping every worker" in log
    assert "exited unexpectedly" not in log


def test_sigint_to_the_whole_group_still_flushes_every_worker(tmp_path: Path) -> None:
    # GIVEN run --workers 2 in a process group of its own, with acked records in open batches
    port = free_port()
    config = _config(tmp_path, port, extra="batch: {max_age_secs: 300}\n")
    sink = SinkProcess(
        config,
        port,
        tmp_path / "sink.log",
        level="info",
        args=["--workers", "2"],
        serving=ALL_SERVING,
        new_session=True,
    )
    try:
        acked = [i for k in range(8) for i in _send(port, k * 10_000, 2)]

        # WHEN SIGINT reaches the supervisor and both workers at once, as a terminal's Ctrl-C does
        os.killpg(sink.proc.pid, signal.SIGINT)
        code = sink.proc.wait(60)
    finally:
        if sink.proc.poll() is None:
            sink.kill()  # the workers stop when they see their supervisor gone

    # THEN only the supervisor's SIGTERM reaches the workers: each flushes, and the run exits 0
    log = sink.log()
    assert code == 0, log
    assert "stopping at once" not in log
    counts = _uid_counts(tmp_path / "lake")
    assert sorted(counts) == sorted(acked)
    assert set(counts.values()) == {1}


def test_workers_flush_and_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    # GIVEN run --workers 2 with acked records in open batches
    port = free_port()
    config = _config(tmp_path, port, extra="batch: {max_age_secs: 300}\n")
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info", args=["--workers", "2"], serving=ALL_SERVING)
    acked = [i for k in range(8) for i in _send(port, k * 10_000, 2)]
    pids = _worker_pids(sink.log())

    # WHEN the supervisor alone is killed with SIGKILL
    sink.kill()

    # THEN each worker sees it is gone, flushes what it holds and exits
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in pids.values()):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.1)
    assert sink.log().count("the supervisor is gone; stopping") == 2
    counts = _uid_counts(tmp_path / "lake")
    assert sorted(counts) == sorted(acked)
    assert set(counts.values()) == {1}


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie (an exited child its dead parent left behind)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_second_signal_stops_every_worker_at_once_and_the_spools_keep_the_records(tmp_path: Path) -> None:
    # GIVEN run --workers 2 whose lake cannot be written (a file stands where its directory goes),
    # so a flush cannot finish, and acked records
    port = free_port()
    config = _config(tmp_path, port, extra="shutdown: {timeout_secs: 300}\n")
    (tmp_path / "lake").write_text("not a directory")
    sink = SinkProcess(config, port, tmp_path / "sink.log", level="info", args=["--workers", "2"], serving=ALL_SERVING)
    try:
        acked = [i for k in range(8) for i in _send(port, k * 10_000, 2)]

        # WHEN SIGTERM starts the flush and a second SIGTERM follows
        sink.proc.send_signal(signal.SIGTERM)
        sink.wait_for_log("stopping: flushing what the sink holds", count=2)
        sink.proc.send_signal(signal.SIGTERM)
        code = sink.proc.wait(60)
    finally:
        if sink.proc.poll() is None:
            sink.kill()

    # THEN both workers exit at once (130) and so does the supervisor, long before the timeout
    log = sink.log()
    assert code == 130, log
    assert log.count("stopping at once on a second signal") == 3, log  # the supervisor and each worker
    # AND the spools keep every acked record: the next start, with a lake it can write, stores each once
    assert any(holds_data(p) for p in (tmp_path / "spool").glob("worker-*"))
    (tmp_path / "lake").unlink()
    again = SinkProcess(
        config, port, tmp_path / "again.log", level="info", args=["--workers", "2"], serving=ALL_SERVING
    )
    assert again.stop() == 0, again.log()
    counts = _uid_counts(tmp_path / "lake")
    assert sorted(counts) == sorted(acked)
    assert set(counts.values()) == {1}
