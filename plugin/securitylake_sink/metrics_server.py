"""The HTTP server for Prometheus and Kubernetes on ``listen.metrics.address``: ``/metrics`` (the
telemetry catalogue, read from the running App at scrape time), ``/healthz`` and ``/readyz``."""

from __future__ import annotations

__all__ = ["MetricsServer", "app_readiness", "app_snapshot", "serve_metrics"]

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aiohttp import web

from securitylake_sink.config import split_address
from securitylake_sink.spool.batchfile import SUFFIX
from securitylake_sink.spool.quarantine import count_items
from securitylake_sink.telemetry import CONTENT_TYPE, Snapshot, credential_expiry, render_metrics

if TYPE_CHECKING:
    from securitylake_sink.app import App

log = logging.getLogger("securitylake_sink.metrics")

FORWARD: Final = "forward"  # source labels: the Forward protocol server
HTTP: Final = "http"  # and the HTTP server (Fluent Bit http output, Vector http sink)
PROBE_NAME: Final = ".readyz-probe"  # written and removed in spool.path by every /readyz
SHUTDOWN_TIMEOUT_SECS: Final = 2.0
_UUID7_MS_SHIFT: Final = 80  # a UUIDv7 starts with 48 bits of Unix milliseconds


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz``; the callables run on a worker thread."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        readiness: Callable[[], str | None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._snapshot = snapshot
        self._readiness = readiness
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port once started, else the configured one."""
        return self._port

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_SECS)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])
        log.info("Serving metrics and probes.", extra={"host": self._host, "port": self._port})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body = await asyncio.to_thread(lambda: render_metrics(self._snapshot()))
        except Exception:
            log.exception("Could not collect the metrics.")
            return web.Response(status=500, text="could not collect the metrics\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = await asyncio.to_thread(self._readiness)
        if reason is not None:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")


def _oldest_batch_ns(directories: tuple[Path, ...]) -> int | None:
    """Creation time of the oldest batch file, from its UUIDv7 name (no file is opened)."""
    oldest: int | None = None
    for directory in directories:
        try:
            names = [path.name for path in directory.iterdir() if path.name.endswith(SUFFIX)]
        except OSError:
            continue
        for name in names:
            try:
                created = (uuid.UUID(name.removesuffix(SUFFIX)).int >> _UUID7_MS_SHIFT) * 1_000_000
            except ValueError:
                continue
            oldest = created if oldest is None else min(oldest, created)
    return oldest


def app_snapshot(app: App, started: float) -> Snapshot:
    """Copy what the App has counted (run off the event loop: it lists the spool directories)."""
    counters, stats = app.counters, app.forward.stats
    try:
        spool_bytes = app.spool.disk_bytes()
    except OSError:
        spool_bytes = 0
    oldest = _oldest_batch_ns((app.spool.open_dir, app.spool.sealed_dir))
    permanent = counters.permanent_failures
    received, acked = {FORWARD: stats.records}, {FORWARD: stats.acks}
    http_requests, http_responses = 0, {}
    if app.http is not None:  # a 2xx answer is the HTTP source's ack
        received[HTTP], acked[HTTP] = app.http.stats.records, app.http.stats.chunks
        http_requests, http_responses = app.http.stats.requests, dict(app.http.stats.responses)
    return Snapshot(
        records_received=received,
        records_mapped=counters.mapped,
        records_dead_lettered=dict(counters.dead_letter_reasons),
        records_dropped=dict(counters.dropped),
        chunks_acked=acked,
        chunks_deduplicated=app.spool.deduplicated,
        http_requests=http_requests,
        http_responses=http_responses,
        objects_delivered=dict(counters.objects_by_class),
        rows_delivered=dict(counters.by_class),
        bytes_delivered=dict(counters.bytes_by_class),
        upload_seconds=counters.upload_seconds.value(),
        delivery_retries=counters.delivery_retries,
        delivery_failures={"retriable": counters.delivery_failures - permanent, "permanent": permanent},
        dead_letter_objects=counters.dead_letter_objects,
        dead_letter_failures=dict(counters.dead_letter_failures),
        spool_bytes=spool_bytes,
        quarantined=dict(app.spool.quarantined),
        quarantine_items=count_items(app.spool.path),
        spool_oldest_age_secs=None if oldest is None else max(0.0, (time.time_ns() - oldest) / 1e9),
        backpressure_since=counters.backpressure_since,
        credential_expiry=credential_expiry(),
        forward_connections=stats.connections,
        forward_connections_refused=stats.connections_refused,
        forward_open_connections=app.forward.open_connections,
        forward_protocol_errors=dict(stats.protocol_errors),
        start_time=started,
    )


def app_readiness(app: App) -> str | None:
    """None when ready: the spool takes a write and the last delivery did not fail permanently."""
    probe = app.spool.path / PROBE_NAME
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return f"the spool is not writable: {exc.strerror or exc}"
    failing = app.counters.delivery_failing
    if failing is not None:
        return f"delivery fails permanently: {failing}"
    return None


async def serve_metrics(app: App) -> MetricsServer | None:
    """Start the server ``listen.metrics`` asks for; None when it is off or cannot bind.

    A busy port does not stop the sink: it logs an error and keeps taking data without metrics
    (the failing probes then show it).
    """
    listen = app.config.listen.metrics
    if not listen.enabled:
        return None
    host, port = split_address(listen.address)
    server = MetricsServer(partial(app_snapshot, app, time.time()), partial(app_readiness, app), host=host, port=port)
    try:
        await server.start()
    except OSError as exc:
        log.error(
            "Cannot serve metrics and probes; the sink runs without them.",
            extra={"option": "listen.metrics.address", "address": listen.address, "reason": exc.strerror or str(exc)},
        )
        return None
    return server
