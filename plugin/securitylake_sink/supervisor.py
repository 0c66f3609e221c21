"""``run --workers N``: the supervisor process and its N worker processes.

The supervisor maps nothing and opens no port or spool. It starts each worker as a fresh
interpreter (multiprocessing ``spawn``: no fork of a process that has threads) with its config from
``workers.worker_config``; each worker is a whole App that binds the shared ports with
SO_REUSEPORT, so the kernel spreads connections over the workers. Signals: the first SIGTERM or
SIGINT is passed on to every worker as SIGTERM (flush within ``shutdown.timeout_secs``, then exit),
a later one as SIGINT (exit at once). Workers run in a process group of their own, so a terminal's
Ctrl-C reaches them only through the supervisor; a worker ignores a repeated SIGTERM, which a
process manager may also send to every process of the service (systemd's control group). The
supervisor exits with the worst worker exit code; a worker a signal stopped before it served
counts as a clean stop (it acked nothing).
A worker that exits while the supervisor is not stopping is started again after a backoff; its
spool's recovery brings back everything it acked. A worker that fails on its first start
(before it ever served) stops the whole run: that is a setup problem, not a crash.
"""

from __future__ import annotations

__all__ = ["supervise"]

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Final

from securitylake_sink.config import Config
from securitylake_sink.errors import SinkError, SpoolError
from securitylake_sink.lake.retry import backoff_delay
from securitylake_sink.telemetry import setup_logging
from securitylake_sink.workers import holds_data, orphan_config, orphan_spools, worker_config

log = logging.getLogger("securitylake_sink.supervisor")

RESTART_BASE_SECS: Final = 1.0
RESTART_MAX_SECS: Final = 30.0
STABLE_SECS: Final = 60.0  # a worker that ran this long starts its restart backoff afresh
POLL_SECS: Final = 0.5  # how often the supervisor looks at readiness between events
PARENT_POLL_SECS: Final = 1.0  # how often a worker checks that its supervisor is still there
EXIT_FAILED: Final = 1
EXIT_SIGNALLED: Final = 128  # an exit code above this: killed by signal (code - 128)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled into the spawned interpreter)."""

    config: Config
    index: int
    orphans: tuple[Config, ...]  # spools left by an earlier run, drained alongside serving
    level: str
    fmt: str
    parent: int  # the supervisor's pid


@dataclass
class _Worker:
    """One worker slot: its config, the orphan spools it drains, its current process."""

    index: int
    config: Config
    orphans: list[Config]
    process: BaseProcess | None = None
    ready: Event | None = None
    started: float = 0.0
    served: bool = False  # some process of this slot reached "serving"
    attempts: int = 0  # restarts in a row, each after a run shorter than STABLE_SECS
    restart_at: float | None = None
    exit_code: int | None = None  # of its last process


def _exit_code(process: BaseProcess) -> int:
    code = process.exitcode
    if code is None:
        return EXIT_FAILED
    return 128 - code if code < 0 else code  # killed by signal n: 128 + n, as a shell reports it


class Supervisor:
    """Starts, restarts and stops the worker processes; ``run`` returns the exit code."""

    def __init__(self, workers: list[_Worker], *, level: str, fmt: str) -> None:
        self._workers = workers
        self._level, self._fmt = level, fmt
        self._context = multiprocessing.get_context("spawn")
        self._signals: list[int] = []
        self._stopping = False
        self._failed = False  # a worker failed on its first start: the run ends with EXIT_FAILED
        self._all_ready_logged = False
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> int:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        previous = signal.set_wakeup_fd(self._wake_w.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self._workers:
                self._start(worker)
            return self._loop()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous)
            self._wake_r.close()
            self._wake_w.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)  # handled in the loop, woken by the wakeup fd

    def _loop(self) -> int:
        while True:
            self._take_signals()
            self._reap()
            now = time.monotonic()
            if not self._stopping:
                for worker in self._workers:
                    if worker.restart_at is not None and worker.restart_at <= now:
                        self._start(worker)
                self._check_ready()
            live = [w.process for w in self._workers if w.process is not None]
            if self._stopping and not live:
                codes = [w.exit_code or 0 for w in self._workers]
                log.info("every worker has stopped", extra={"exit_codes": codes})
                return EXIT_FAILED if self._failed else max(codes)
            due = [w.restart_at - now for w in self._workers if w.restart_at is not None and not self._stopping]
            timeout = min([POLL_SECS, *due]) if due else POLL_SECS
            wait([*(p.sentinel for p in live), self._wake_r], max(0.0, timeout))

    def _take_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(64):
                pass
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if not self._stopping:
                self._stopping = True
                log.info("stopping: every worker flushes what it holds", extra={"signal": name})
                self._send_all(signal.SIGTERM)
            else:
                log.warning("stopping at once on a second signal", extra={"signal": name})
                self._send_all(signal.SIGINT)
            for worker in self._workers:
                worker.restart_at = None

    def _send_all(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, sig)

    def _start(self, worker: _Worker) -> None:
        worker.restart_at = None
        worker.ready = self._context.Event()
        # A process that stopped before draining its orphans leaves them to the next one.
        orphans = [orphan for orphan in worker.orphans if holds_data(orphan.spool.path)]
        spec = WorkerSpec(worker.config, worker.index, tuple(orphans), self._level, self._fmt, os.getpid())
        process = self._context.Process(
            target=worker_main,
            args=(spec, worker.ready),
            name=f"securitylake-sink worker {worker.index}",
        )
        process.start()
        worker.process, worker.started = process, time.monotonic()
        log.info("started a worker", extra={"worker": worker.index, "pid": process.pid})

    def _check_ready(self) -> None:
        for worker in self._workers:
            if not worker.served and worker.ready is not None and worker.ready.is_set():
                worker.served = True
        if not self._all_ready_logged and all(w.served for w in self._workers):
            self._all_ready_logged = True
            log.info("every worker is serving", extra={"workers": len(self._workers)})

    def _reap(self) -> None:
        for worker in self._workers:
            process = worker.process
            if process is None or process.exitcode is None:
                continue
            process.join()
            code = _exit_code(process)
            ran = time.monotonic() - worker.started
            worker.served = worker.served or (worker.ready is not None and worker.ready.is_set())
            worker.process, worker.exit_code = None, code
            process.close()
            if self._stopping:
                if code > EXIT_SIGNALLED and not worker.served:  # still starting: killed before it acked anything
                    code = worker.exit_code = 0
                log.info("a worker stopped", extra={"worker": worker.index, "exit_code": code})
                continue
            if not worker.served:
                log.error(
                    "a worker failed while starting; stopping every worker",
                    extra={"worker": worker.index, "exit_code": code},
                )
                self._stopping = self._failed = True
                self._send_all(signal.SIGTERM)
                continue
            worker.attempts = 1 if ran >= STABLE_SECS else worker.attempts + 1
            delay = backoff_delay(worker.attempts, base_secs=RESTART_BASE_SECS, cap_secs=RESTART_MAX_SECS)
            worker.restart_at = time.monotonic() + delay
            log.warning(
                "a worker exited unexpectedly; starting it again (its spool keeps what it acked)",
                extra={"worker": worker.index, "exit_code": code, "restart_in_secs": round(delay, 1)},
            )


def supervise(config: Config, workers: int, *, level: str, fmt: str) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; the worst worker exit code.

    The region is looked up once here; the spool limit is split evenly; orphan spools are spread
    over the workers (a restarted worker takes over what its last process did not drain).
    """
    from securitylake_sink.lake.store import resolve_region  # noqa: PLC0415
    from securitylake_sink.plan import destination_of  # noqa: PLC0415

    region = resolve_region(destination_of(config), config.auth).region
    config = config.model_copy(
        update={"destination": config.destination.model_copy(update={"region": region}), "workers": workers}
    )
    share = config.spool.resolved_max_bytes() // workers
    try:
        config.spool.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot use spool.path {config.spool.path}: {exc.strerror or exc}") from exc
    slots = [_Worker(i, worker_config(config, i, spool_max_bytes=share), []) for i in range(workers)]
    for k, path in enumerate(orphan_spools(config, workers)):
        slots[k % workers].orphans.append(orphan_config(config, path))
    log.info(
        "starting the workers",
        extra={"workers": workers, "spool": str(config.spool.path), "spool_max_bytes_each": share},
    )
    return Supervisor(slots, level=level, fmt=fmt).run()


class _WorkerField(logging.Filter):
    """Adds ``worker=<i>`` to every log line of a worker process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop (with a flush) when the supervisor is gone, so no worker outlives it holding a port."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_POLL_SECS)
    log.warning("the supervisor is gone; stopping", extra={"supervisor_pid": parent})
    stop.set()


async def _serve(spec: WorkerSpec, ready: Event) -> int:
    from securitylake_sink.runner import run  # noqa: PLC0415

    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_parent(spec.parent, stop))
    try:
        return await run(
            spec.config,
            ready=lambda _: ready.set(),
            stop=stop,
            reuse_port=True,
            orphans=spec.orphans,
            immediate=(signal.SIGINT,),
        )
    finally:
        watcher.cancel()


def worker_main(spec: WorkerSpec, ready: Event) -> None:
    """The entry point of one worker process (spawned): serve until signalled, exit with the code;
    ``ready`` is set once it serves."""
    # A process group of its own: a terminal's Ctrl-C (SIGINT to the foreground group) reaches the
    # supervisor only, which passes it on; a worker would otherwise see one key press twice.
    os.setpgid(0, 0)
    setup_logging(spec.level, spec.fmt)
    for handler in logging.getLogger("securitylake_sink").handlers:
        handler.addFilter(_WorkerField(spec.index))
    import pyarrow as pa  # noqa: PLC0415

    pa.set_memory_pool(pa.system_memory_pool())  # as in a single-process run (cli.py)
    try:
        code = asyncio.run(_serve(spec, ready))
    except (SinkError, OSError) as exc:  # a port in use, a spool in use: one clear line
        print(f"error: worker {spec.index}: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    logging.shutdown()
    sys.exit(code)
