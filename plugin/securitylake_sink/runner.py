"""Running the sink as a process: signals, the flush on SIGTERM, and draining the spools an
earlier run left."""

from __future__ import annotations

__all__ = ["EXIT_SECOND_SIGNAL", "run"]

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Collection, Sequence

from securitylake_sink.app import App
from securitylake_sink.config import Config
from securitylake_sink.memory import tune_gc

log = logging.getLogger("securitylake_sink")

EXIT_SECOND_SIGNAL = 130  # a second SIGTERM/SIGINT during the flush: exit without finishing it


async def _drain_orphan(app: App, stop: asyncio.Event) -> bool:
    """Store everything an orphan spool holds (started already); stop early on ``stop``."""
    drained = asyncio.ensure_future(app.drain())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
    drained.cancel()
    stopped.cancel()
    clean = await app.shutdown()
    where = str(app.spool.path)
    if clean:
        log.info("drained a spool left by an earlier run", extra={"spool": where, "objects": app.counters.objects})
    else:
        log.warning("a spool left by an earlier run is not drained yet; the next start goes on", extra={"spool": where})
    return clean


async def run(
    config: Config,
    *,
    ready: Callable[[App], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    orphans: Sequence[Config] = (),
    immediate: Collection[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``), then flush what is held; the exit code.

    Signals are handled from before start-up, so a SIGTERM while starting also stops cleanly.
    A signal in ``immediate`` during the flush exits at once (others are logged and ignored).
    ``orphans`` are the configs of spools an earlier run left (``workers.orphan_spools``): they
    are recovered before serving and drained into the lake alongside it.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            stop.set()
            return
        if sig not in immediate:
            log.info("already stopping; the flush goes on", extra={"signal": sig.name})
            return
        # Everything acked is already fsynced in the write-ahead log: stopping now loses nothing.
        log.warning(
            "stopping at once on a second signal; the spool keeps what was not stored", extra={"signal": sig.name}
        )
        logging.shutdown()
        os._exit(EXIT_SECOND_SIGNAL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
    drains = []
    for orphan in orphans:
        drain = App(orphan, listen=False)
        log.info("draining a spool left by an earlier run", extra={"spool": str(orphan.spool.path)})
        await drain.start()
        drains.append(asyncio.create_task(_drain_orphan(drain, stop), name=f"drain {orphan.spool.path}"))
    app = App(config, reuse_port=reuse_port)
    await app.start()
    tune_gc()
    if ready is not None:
        ready(app)
    await stop.wait()
    log.info("stopping: flushing what the sink holds", extra={"timeout_secs": config.shutdown.timeout_secs})
    clean, *_ = await asyncio.gather(app.shutdown(), *drains)
    log.info("stopped", extra={"objects": app.counters.objects, "rows": app.counters.object_rows, "clean": clean})
    return 0
