"""Wires the stages (sources, spool, mapping, batches, encoding, lake) and owns their start,
drain and shutdown; runner.py runs an App as a process (signals, flush, orphan spools).

Blocking work runs on three threads: ``pipeline`` (map, append, checkpoint, seal; serialised so
the spool's invariants hold; after a failed step it backs off and resumes from the checkpoint as
a restart would), and delivery.py's ``deliver`` (encode and store objects) and ``deadletter``
(ship closed dead-letter files to an s3:// ``dead_letter.location``), each retrying with its own
backoff, so a failing dead-letter bucket never holds up the lake and the other way round.
"""

from __future__ import annotations

__all__ = ["App", "Counters"]

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from securitylake_sink.batch import Batcher, LakeTarget
from securitylake_sink.config import Config, split_address
from securitylake_sink.counters import Counters
from securitylake_sink.deadletter import DeadLetterShipper, DeadLetterWriter, Rotation
from securitylake_sink.delivery import Delivery
from securitylake_sink.errors import SpoolError
from securitylake_sink.lake.retry import backoff_delay
from securitylake_sink.lake.store import ObjectStore, resolve_region, store_for
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.memory import tune_malloc
from securitylake_sink.metrics_server import MetricsServer, serve_metrics
from securitylake_sink.model import Chunk
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.plan import dead_letter_destination, destination_of
from securitylake_sink.sources import decode_spooled
from securitylake_sink.sources.forward import ForwardServer
from securitylake_sink.sources.handshake import handshake_for
from securitylake_sink.sources.http import HttpServer
from securitylake_sink.sources.tls import context_for
from securitylake_sink.spool import Spool, decode_chunk
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.spool.wal import WalPosition
from securitylake_sink.telemetry import reason_label, tally

log = logging.getLogger("securitylake_sink")

MAP_LIMIT = 512  # chunks per pipeline step
# Records per pipeline step: mapping builds every column of the class at once, so this bounds the
# step's memory (a step always takes at least one chunk).
STEP_RECORDS = 16_384
# Log bytes a step reads back from disk (a backlog past the cache): STEP_RECORDS records of up to
# 512 bytes each as packed; what the step does not take is read again by the next one.
STEP_READ_BYTES = 8 * 1024 * 1024
IDLE_WAKE_SECS = 1.0  # how often an idle pipeline checks batch ages
# Steps that take the whole backlog are at least this far apart. Each rule call costs a few ms of
# Arrow calls whatever its size: at 24,000 records/s, 0.5 s (steps of about 12,000 records)
# instead of 0.2 s took 16% less CPU per record, with acks still under 40 ms at p99.
MIN_STEP_SECS = 0.5
GROW_POLL_SECS = 0.05  # how often a waiting pipeline looks whether a whole step has come in
# After a failed pipeline step (e.g. a full disk under the batch files): back off, then resume.
STEP_RETRY_BASE_SECS, STEP_RETRY_MAX_SECS = 1.0, 30.0


class App:
    """One running sink. ``start`` → serve → ``shutdown``; or ``run_until`` a stop event."""

    def __init__(
        self,
        config: Config,
        *,
        store: ObjectStore | None = None,
        dead_letter_store: ObjectStore | None = None,
        listen: bool = True,
        reuse_port: bool = False,
    ) -> None:
        """``listen=False`` starts no network listener (``replay`` feeds the spool directly);
        ``reuse_port`` shares the listening ports with the other workers of ``run --workers``."""
        tune_malloc()
        self.config = config
        self.listen = listen
        # HeadBucket at start-up when neither the config, the URL nor the bucket name gives the region.
        self.destination = resolve_region(destination_of(config), config.auth)
        assert self.destination.region is not None
        self.schema = load_schema(config.ocsf.version)
        self.spool = Spool(
            config.spool.path,
            max_bytes=config.spool.resolved_max_bytes(),
            dedup_tokens=config.spool.dedup_tokens,
            dedup_secs=config.spool.dedup_secs,
        )
        bindings = [(m.match, m.rule, m.raw_data) for m in config.mappings]
        self.mapper = Mapper(self.schema, bindings, config.mappings_fallback)
        self.batcher = Batcher(
            self.schema,
            LakeTarget(self.destination.prefix, self.destination.region, config.destination.account_id),
            self.spool.open_dir,
            max_age_secs=config.batch.max_age_secs,
            max_bytes=config.batch.max_bytes,
        )
        self.store = store or store_for(self.destination, config)
        target = dead_letter_destination(config, self.destination)
        self.shipper: DeadLetterShipper | None = None
        rotation: Rotation | None = None
        if target is not None:
            rotation = Rotation(config.dead_letter.max_age_secs, config.dead_letter.max_bytes)
            ship_to = dead_letter_store or store_for(target, config, lake=False)
            self.shipper = DeadLetterShipper(ship_to, target.prefix)
        self.dead_letters = DeadLetterWriter(config.dead_letter_path, rotation)
        host, port = split_address(config.listen.forward.address)
        self.forward = ForwardServer(
            self.spool,
            host=host,
            port=port,
            max_frame_bytes=config.listen.forward.max_frame_bytes,
            ssl=context_for(config.listen.forward.tls),
            handshake=handshake_for(config.listen.forward),
            reuse_port=reuse_port,
        )
        self.metrics: MetricsServer | None = None
        self.http = (
            HttpServer.from_config(self.spool, config.listen.http, reuse_port=reuse_port)
            if listen and config.listen.http
            else None
        )
        self.counters = Counters()
        self.spool.on_backpressure = self._backpressure
        self._pipeline = ThreadPoolExecutor(1, thread_name_prefix="pipeline")
        self.delivery = Delivery(self.spool, self.store, config.delivery, self.counters, self.shipper)
        self._step_failures = 0  # pipeline steps failed in a row
        self._checkpointed: set[str] = set()  # open batch files wholly before the checkpoint
        self._cursor = WalPosition(0, 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._drained = asyncio.Event()

    def _backpressure(self, since: float | None) -> None:
        self.counters.backpressure_since = since

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        opened, sealed = self.spool.open()
        self._cursor = self.spool.checkpoint
        self.dead_letters.recover(self.spool.checkpoint)
        if self.shipper is not None:
            for path in self.dead_letters.closed_on_disk():
                self.delivery.dead_files.put_nowait(path)
        self.batcher.adopt(opened)
        self._checkpointed = {batch.path.name for batch in opened}
        for batch in sealed:
            self.delivery.queued.add(batch.path.name)
            self.delivery.sealed.put_nowait(batch)
        if opened or sealed:
            log.info("recovered batches from the spool", extra={"open": len(opened), "sealed": len(sealed)})
        if self.listen:
            await self.forward.start()
        if self.http is not None:
            await self.http.start()
        self._tasks = [asyncio.create_task(self._map_loop(), name="map"), *self.delivery.tasks()]
        self.metrics = await serve_metrics(self) if self.listen else None
        log.info(
            "securitylake-sink is serving" if self.listen else "securitylake-sink is running without listeners",
            extra={
                "forward": f"{self.forward.port}" if self.listen else "off",
                "http": f"{self.http.port}" if self.http is not None else "off",
                "lake": self.store.describe(),
                "dead_letters": self.shipper.describe() if self.shipper else str(self.dead_letters.dir),
                "spool": str(self.spool.path),
                "spool_max_bytes": self.spool.max_bytes,
            },
        )

    async def drain(self) -> None:
        """Take no more data and wait, without a time limit, until everything held is stored."""
        self._stopping.set()
        self.spool.wal.durable.set()
        await asyncio.shield(self._drained.wait())

    async def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting, map and store everything held; True when nothing is left behind."""
        if self.http is not None:
            await self.http.close()
        await self.forward.close()
        self._stopping.set()
        self.spool.wal.durable.set()
        if timeout is None:
            timeout = self.config.shutdown.timeout_secs
        try:
            await asyncio.wait_for(asyncio.shield(self._drained.wait()), timeout)
            clean = True
        except TimeoutError:
            log.warning("shutdown timed out; what is left stays in the spool for the next start")
            clean = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._pipeline, self._close_files)
        self._pipeline.shutdown(wait=True)
        self.delivery.close()
        self.spool.close()
        if self.metrics is not None:
            await self.metrics.close()
        return clean

    def _close_files(self) -> None:
        for batch in self.batcher.open.values():
            batch.close()
        self.dead_letters.close()

    # -- mapping -------------------------------------------------------------------------
    async def _map_loop(self) -> None:
        loop = asyncio.get_running_loop()
        wal = self.spool.wal
        partial_step, stepped = True, 0.0
        while True:
            if self._cursor >= wal.end and not self._stopping.is_set():
                deadline = self.batcher.next_deadline_ns()
                wait = IDLE_WAKE_SECS if deadline is None else (deadline - time.time_ns()) / 1e9
                wal.durable.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wal.durable.wait(), max(0.0, min(IDLE_WAKE_SECS, wait)))
            if not partial_step:
                # A small backlog waits a moment to grow: fewer, larger steps take less CPU per
                # record and fewer fsyncs, which the log's fsyncs (and so the acks) would queue behind.
                # It waits no longer once a whole step is there (a burst must not outgrow the cache).
                rest = MIN_STEP_SECS - (time.monotonic() - stepped)
                while rest > 0 and not self._stopping.is_set() and self._backlog_is_small():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), min(rest, GROW_POLL_SECS))
                    rest = MIN_STEP_SECS - (time.monotonic() - stepped)
            stopping = self._stopping.is_set()
            cached = wal.take_cached(self._cursor, MAP_LIMIT)
            items: list[tuple[WalPosition, Chunk]] = _bounded(cached)
            # a step that leaves cached work behind is followed by the next one at once
            # (a backlog read back from disk, after a restart or past the cache, is never paced)
            partial_step = len(items) < len(cached) or len(cached) >= MAP_LIMIT or not cached
            stepped = time.monotonic()
            try:
                sealed = await loop.run_in_executor(self._pipeline, self._step, items, stopping)
            except (SpoolError, OSError) as exc:
                # Damaged log segments are quarantined by the spool; this is what it could not handle
                # (e.g. a full disk under the batch files). What is not mapped stays in the log.
                await self._resume_after(exc)
                continue
            self._step_failures = 0
            for batch in sealed:
                self.delivery.sealed.put_nowait(batch)
            for path in self.dead_letters.take_closed():
                self.delivery.dead_files.put_nowait(path)
            if stopping and self._cursor >= wal.end and not self.batcher.open:
                await self.delivery.sealed.join()
                await self.delivery.dead_files.join()
                self._drained.set()
                return

    def _backlog_is_small(self) -> bool:
        """Whether what follows the cursor is all in the log's cache and less than a step."""
        cached = self.spool.wal.take_cached(self._cursor, MAP_LIMIT)
        if not cached:  # nothing waits, or what waits was read back from disk: a backlog
            return self._cursor >= self.spool.wal.end
        return len(cached) < MAP_LIMIT and sum(len(chunk.entries) for _, chunk in cached) < STEP_RECORDS

    async def _resume_after(self, exc: BaseException) -> None:
        """Back off after a failed step, then go back to the checkpoint as a restart would (again
        after each failure of that), so the step is redone without duplicates."""
        while True:
            self._step_failures += 1
            delay = backoff_delay(self._step_failures, base_secs=STEP_RETRY_BASE_SECS, cap_secs=STEP_RETRY_MAX_SECS)
            log.error(
                "cannot map the spool's write-ahead log; resuming from the checkpoint after a pause",
                extra={"reason": str(exc), "failures": self._step_failures, "retry_in_secs": delay},
            )
            await asyncio.sleep(delay)
            try:
                await asyncio.get_running_loop().run_in_executor(self._pipeline, self._back_to_checkpoint)
                return
            except (SpoolError, OSError) as again:
                exc = again

    def _back_to_checkpoint(self) -> None:
        """Pipeline thread: what ``start`` recovers, for the pipeline only: the open batches and the
        dead letters lose every frame past the checkpoint (a failed step's partial appends), and the
        cursor goes back to it; a batch sealed by the failed step is found by the next rescan."""
        for batch in self.batcher.open.values():
            with contextlib.suppress(OSError):  # what it still buffers is past the checkpoint
                batch.close()
        self.batcher.open.clear()
        checkpoint = self.spool.checkpoint
        self.dead_letters.reset(checkpoint)
        for path in sorted(self.spool.open_dir.glob(f"*{SUFFIX}")):
            if path.name not in self._checkpointed:  # created by the failed step: all past the checkpoint
                path.unlink()
            elif (recovered := self.spool.recover_open(path, checkpoint)) is not None:
                self.batcher.adopt([recovered])
        self._cursor = checkpoint
        self.delivery.rescanned = 0.0  # look for a batch the failed step sealed
        self.spool.refresh_batch_bytes()
        log.info("resumed mapping from the checkpoint", extra={"open": len(self.batcher.open)})

    def _step(self, items: list[tuple[WalPosition, Chunk]], flush_all: bool) -> list[BatchFile]:
        """One pipeline step (pipeline thread): map what follows the cursor, checkpoint, seal."""
        if not items and self._cursor < self.spool.wal.end:
            records, end = self.spool.wal.read_from(self._cursor, MAP_LIMIT, max_bytes=STEP_READ_BYTES)
            items = _bounded((pos, self._decode(payload)) for pos, payload in records)  # decodes as it goes
            if not items:  # nothing durable between the cursor and the end it read up to
                self._cursor = max(self._cursor, end)
        if items:
            chunks = [chunk for _, chunk in items]
            with self.delivery.turns:  # not while delivery reads a batch (see Delivery.turns)
                result = self.mapper.map_chunks(chunks, self.config.destination.location_for)
            self.batcher.add(result.batches, items[-1][0])
            self.dead_letters.write(result.dead, items[-1][0])
            self.batcher.sync()
            self.dead_letters.sync()
            self._cursor = items[-1][0]
            self.spool.write_checkpoint(self._cursor)
            self._checkpointed = {batch.path.name for batch in self.batcher.open.values()}
            self.counters.records_in += result.records
            self.counters.mapped += result.mapped
            self.counters.dead_lettered += len(result.dead)
            tally(self.counters.dead_letter_reasons, (reason_label(d.reason) for d in result.dead))
            if dropped := sum(result.dropped.values()):
                self.counters.dropped["mappings_fallback"] = self.counters.dropped.get("mappings_fallback", 0) + dropped
            self.spool.refresh_batch_bytes()
        drained = flush_all and self._cursor >= self.spool.wal.end
        # Every dead letter written so far is behind the checkpoint: a closed file is safe to ship.
        self.dead_letters.rotate(force=drained)
        # A full spool seals its open batches now rather than at batch.max_age_secs: only
        # delivery makes room, and it takes sealed batches only.
        full = self.spool.backpressure_since is not None
        sealed = []
        for batch in self.batcher.due(everything=drained or full):
            if batch.rows == 0:
                batch.close()
                batch.path.unlink(missing_ok=True)
                continue
            batch.move_to(self.spool.sealed_dir)
            sealed.append(batch)
        if sealed:
            self.spool.refresh_batch_bytes()
        self.delivery.queued.update(batch.path.name for batch in sealed)
        return sealed + self.delivery.put_back()


    @staticmethod
    def _decode(payload: bytes | memoryview) -> Chunk:
        spooled = decode_chunk(payload)
        return decode_spooled(spooled.kind, spooled.raw, spooled.received_ns, tag=spooled.tag, meta=spooled.meta)

    # -- delivery (delivery.py) ------------------------------------------------------------
    def _deliver_one(self, batch: BatchFile) -> tuple[int, int]:
        return self.delivery.deliver_one(batch)


def _bounded(items: Iterable[tuple[WalPosition, Chunk]]) -> list[tuple[WalPosition, Chunk]]:
    """The leading chunks of ``items`` that hold at most STEP_RECORDS records (at least one);
    ``items`` is consumed only that far (one chunk more), so a lazy one is decoded only that far."""
    out: list[tuple[WalPosition, Chunk]] = []
    total = 0
    for item in items:
        total += len(item[1].entries)
        if total > STEP_RECORDS and out:
            break
        out.append(item)
    return out
