"""Delivery: stores sealed batches in the lake and ships closed dead-letter files, each on its own
thread, and decides when a batch the lake keeps rejecting goes to quarantine.

Sealed batches are tried in the order they were sealed; one that fails waits for its own backoff
at the back of the line while the others go on, so one rejected prefix never holds up the rest.
A permanent rejection counts towards ``delivery.max_attempts``/``max_age_secs`` only when the lake
stored some other object since that batch's previous rejection (or since it was first tried): while
every object is rejected (a bucket gone, a role without s3:PutObject, a disabled KMS key) the
destination is at fault, not the batch, so nothing counts and everything is retried.
"""

from __future__ import annotations

__all__ = ["Delivery"]

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from securitylake_sink.config import DeliveryConfig
from securitylake_sink.counters import Counters
from securitylake_sink.deadletter import DeadLetterShipper, Shipped
from securitylake_sink.encode.parquet import encode_object
from securitylake_sink.errors import DeliveryError, PermanentDelivery, RetriableDelivery, SpoolCorrupt
from securitylake_sink.lake.retry import backoff_delay
from securitylake_sink.lake.store import ObjectStore
from securitylake_sink.memory import give_back
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.spool import Spool
from securitylake_sink.spool.batchfile import SUFFIX, BatchFile
from securitylake_sink.spool.quarantine import Failures, clear_failures, record_failure

log = logging.getLogger("securitylake_sink")

RETRY_BASE_SECS, RETRY_MAX_SECS = 1.0, 300.0
# How often the pipeline looks in sealed/ for batches put back by ``spool retry``.
SEALED_RESCAN_SECS = 2.0
T = TypeVar("T")


@dataclass(slots=True)
class _Pending:
    """A sealed batch waiting for delivery: when it may be tried next, its failed attempts, and the
    count of objects stored when it was last rejected (or first tried); None: not tried yet."""

    batch: BatchFile
    not_before: float = 0.0
    attempts: int = 0
    stored_mark: int | None = None


class Delivery:
    """The deliver and dead-letter threads and their queues; the pipeline feeds ``sealed`` (after
    adding the file name to ``queued``) and ``dead_files``; ``join`` on them waits for delivery."""

    def __init__(
        self,
        spool: Spool,
        store: ObjectStore,
        limits: DeliveryConfig,
        counters: Counters,
        shipper: DeadLetterShipper | None,
    ) -> None:
        self.spool = spool
        self.store = store
        self.limits = limits
        self.counters = counters
        self.shipper = shipper
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="deliver")
        self.ship_executor = ThreadPoolExecutor(1, thread_name_prefix="deadletter")
        self.sealed: asyncio.Queue[BatchFile] = asyncio.Queue()
        self.dead_files: asyncio.Queue[Path] = asyncio.Queue()  # closed dead-letter files to ship
        # Names of the sealed batches queued or being delivered: a batch file in sealed/ that is
        # not here was put back by ``spool retry``. The pipeline adds, delivery discards (after
        # the file has left sealed/), so a rescan never queues a batch twice.
        self.queued: set[str] = set()
        self.stored = 0  # objects stored since start: a rejection counts only if this moved
        self.rescanned = time.monotonic()
        # Reading a batch (an object's table, sorted) and mapping a pipeline step each build tens
        # of MB that are freed right after. They take turns, so their peaks do not add up
        # (25-30 MB less at the sink's peak with Fluent Bit sending). Writing the object's
        # Parquet, the larger part of delivery's work, still runs beside a step.
        self.turns = threading.Lock()

    def tasks(self) -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(self.deliver_loop(), name="deliver")]
        if self.shipper is not None:
            tasks.append(asyncio.create_task(self.dead_letter_loop(self.shipper), name="deadletter"))
        return tasks

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.ship_executor.shutdown(wait=True)

    def put_back(self) -> list[BatchFile]:
        """Pipeline thread: sealed batches not queued yet (put back from quarantine/ while the sink
        runs), each added to ``queued``; looks every SEALED_RESCAN_SECS."""
        if time.monotonic() - self.rescanned < SEALED_RESCAN_SECS:
            return []
        self.rescanned = time.monotonic()
        found = []
        for path in sorted(self.spool.sealed_dir.glob(f"*{SUFFIX}")):
            if path.name in self.queued:
                continue
            batch = self.spool.adopt_sealed(path)
            if batch is not None:
                log.info("found a sealed batch put back for delivery", extra={"file": path.name, "rows": batch.rows})
                self.queued.add(path.name)
                found.append(batch)
        return found

    # -- lake ------------------------------------------------------------------------------
    async def deliver_loop(self) -> None:
        """Try the first batch whose backoff is over; a failed one goes to the back of the line."""
        waiting: list[_Pending] = []
        while True:
            while not self.sealed.empty():
                waiting.append(_Pending(self.sealed.get_nowait()))
            now = time.monotonic()
            pending = next((p for p in waiting if p.not_before <= now), None)
            if pending is None:
                wait = min((p.not_before for p in waiting), default=now + RETRY_MAX_SECS) - now
                with contextlib.suppress(TimeoutError):
                    waiting.append(_Pending(await asyncio.wait_for(self.sealed.get(), max(0.0, wait))))
                continue
            waiting.remove(pending)
            if await self._attempt(pending):
                self.queued.discard(pending.batch.path.name)
                self.sealed.task_done()
                self.spool.refresh_batch_bytes()
            else:
                waiting.append(pending)

    async def _attempt(self, pending: _Pending) -> bool:
        """Try to store one batch; True when it left sealed/ (stored or quarantined)."""
        loop = asyncio.get_running_loop()
        batch = pending.batch
        if pending.stored_mark is None:
            pending.stored_mark = self.stored
        try:
            rows, size = await loop.run_in_executor(self.executor, self.deliver_one, batch)
        except SpoolCorrupt as exc:
            if await loop.run_in_executor(self.executor, self._set_aside, batch, "corrupt", str(exc), None):
                return True
            reason, permanent, counted = str(exc), False, False
        except DeliveryError as exc:
            reason, permanent = str(exc), isinstance(exc, PermanentDelivery)
            counted = permanent and self.stored > pending.stored_mark
            self.counters.delivery_failures += 1
            self.counters.permanent_failures += permanent
            self.counters.delivery_failing = reason if permanent else None
            if permanent:
                pending.stored_mark = self.stored
            if counted and await loop.run_in_executor(self.executor, self._count_rejection, batch, reason):
                return True
            self.counters.delivery_retries += 1
        else:
            self.stored += 1
            self.counters.delivery_failing = None
            self.counters.stored(batch.header.class_uid, rows, size)
            log.info("stored an object", extra={"key": batch.header.key, "rows": rows, "bytes": size})
            return True
        pending.attempts += 1
        delay = backoff_delay(pending.attempts, base_secs=RETRY_BASE_SECS, cap_secs=RETRY_MAX_SECS)
        pending.not_before = time.monotonic() + delay
        log.warning(
            "could not store an object; it stays in the spool and is retried"
            if counted or not permanent
            else "could not store an object and no other was stored since: delivery is failing, nothing is "
            "counted towards quarantine",
            extra={"key": batch.header.key, "attempt": pending.attempts, "retry_in_secs": round(delay, 1),
                   "permanent": permanent, "counted": counted, "reason": reason},
        )  # fmt: skip
        return False

    def _count_rejection(self, batch: BatchFile, reason: str) -> bool:
        """Deliver thread: count a permanent rejection durably; quarantine the batch (True) once they
        reached ``delivery.max_attempts`` or have lasted ``delivery.max_age_secs``."""
        try:
            failures = record_failure(batch.path, reason)
        except OSError as exc:
            log.warning("cannot count a rejection of an object", extra={"key": batch.header.key, "reason": str(exc)})
            return False
        lasted = failures.last_failure - failures.first_failure
        if failures.attempts < self.limits.max_attempts and lasted < self.limits.max_age_secs:
            return False
        return self._set_aside(batch, "permanent_failure", reason, failures)

    def _set_aside(self, batch: BatchFile, cause: str, reason: str, failures: Failures | None) -> bool:
        """Deliver thread: move a batch to quarantine/; False (it stays sealed) when that fails."""
        try:
            self.spool.quarantine_batch(batch, cause, reason, failures)
        except OSError as exc:
            log.error("cannot quarantine a batch; it stays sealed", extra={"file": batch.path.name, "reason": str(exc)})
            return False
        return True

    def deliver_one(self, batch: BatchFile) -> tuple[int, int]:
        """Deliver thread: encode and store one sealed batch, then delete it; (rows, bytes)."""
        schema = load_schema(batch.header.ocsf_version).arrow_schema(batch.header.class_uid)

        def read() -> pa.Table:
            with self.turns:
                table = batch.read_table(schema)
            give_back()  # what reading and sorting freed, before the Parquet writer allocates
            return table

        # The table is read and let go inside: an upload can take seconds, so only the object's
        # bytes are held meanwhile.
        try:
            data, rows = encode_object(read, self.spool.scratch_dir)
        except OSError as exc:  # the spool's disk (full, failing): the batch is intact, try again later
            raise RetriableDelivery(
                f"cannot write the object's Parquet in {self.spool.scratch_dir}: {exc.strerror or exc}"
            ) from exc
        give_back()
        started = time.monotonic()
        self.store.put(batch.header.key, data)
        self.counters.upload_seconds.observe(time.monotonic() - started)
        batch.path.unlink(missing_ok=True)
        clear_failures(batch.path)
        return rows, len(data)

    # -- dead letters ----------------------------------------------------------------------
    async def until_done(
        self,
        executor: ThreadPoolExecutor,
        call: Callable[[], T],
        errors: tuple[type[Exception], ...],
        failed: Callable[[Exception, bool], None],
        *,
        message: str,
        what: dict[str, object],
    ) -> T:
        """Run ``call`` on ``executor`` until it returns; after each failure in ``errors``: count it
        (``failed(exc, permanent)``), log ``message`` with ``what``, wait the backoff, try again."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                return await loop.run_in_executor(executor, call)
            except errors as exc:
                attempt += 1
                permanent = isinstance(exc, PermanentDelivery)
                failed(exc, permanent)
                delay = backoff_delay(attempt, base_secs=RETRY_BASE_SECS, cap_secs=RETRY_MAX_SECS)
                log.warning(message, extra={**what, "attempt": attempt, "retry_in_secs": round(delay, 1),
                                            "permanent": permanent, "reason": str(exc)})  # fmt: skip
                await asyncio.sleep(delay)

    def _shipping_failed(self, _exc: Exception, permanent: bool) -> None:
        kind = "permanent" if permanent else "retriable"
        self.counters.dead_letter_failures[kind] = self.counters.dead_letter_failures.get(kind, 0) + 1

    async def dead_letter_loop(self, shipper: DeadLetterShipper) -> None:
        """Ship closed dead-letter files in order; a failing one is kept and retried with backoff."""
        while True:
            path = await self.dead_files.get()
            shipped: Shipped | None = await self.until_done(
                self.ship_executor,
                partial(shipper.ship, path),
                (DeliveryError, OSError),  # OSError: the local file could not be read
                self._shipping_failed,
                message="could not ship dead letters; the file stays in the spool and is retried",
                what={"file": path.name},
            )
            if shipped is not None:
                self.counters.dead_letter_objects += 1
                log.info(
                    "shipped dead letters", extra={"key": shipped.key, "lines": shipped.lines, "bytes": shipped.size}
                )
            self.dead_files.task_done()
