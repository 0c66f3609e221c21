"""A model of the spool as the app uses it: chunks are acked, mapped, checkpointed, sealed and
stored, and the sink crashes at any of those points and recovers. Whatever happens, every acked
record ends in the lake (or the dead letters) and no record is stored twice.

The driver builds a real ``App`` from a config with a ``file://`` lake and calls its ``_step`` and
``_deliver_one`` directly (no server, no tasks): ``Sink.step`` mirrors one turn of
``App._map_loop`` and ``Sink.__init__`` mirrors ``App.start``'s recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from securitylake_sink import batch as batch_module
from securitylake_sink.app import MAP_LIMIT, App
from securitylake_sink.config import Config, parse_config
from securitylake_sink.forward_client import pack_entries
from securitylake_sink.lake.layout import uuid7
from securitylake_sink.model import Chunk
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.sources.forward_codec import decode_spooled as decode_forward
from securitylake_sink.spool.batchfile import FRAME_POS, SUFFIX, BatchFile, BatchHeader
from securitylake_sink.spool.wal import WalPosition, encode_record, scan_records

T0_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
HOUR_MS = 3_600_000
# Log segment sizes: a few chunks per segment (segments rotate and are released), or one segment
# per life of the process (a restart leaves the checkpoint inside the newest old segment).
SEGMENT_BYTES = (1500, 1 << 20)
NEVER = 1 << 60  # batch.max_bytes that seals nothing
KINDS = ("auth", "api", "unmapped")  # Authentication, API Activity, a record for the dead letters


class Crash(Exception):
    """Raised by an injected fault: the process dies right here."""


def config_for(root: Path) -> Config:
    return parse_config(
        f"""
destination:
  url: "file://{root / "lake"}"
  region: eu-west-1
  account_id: "111122223333"
  sources:
    - {{class_uid: "*", location: "ext/model/"}}
listen:
  forward: {{address: "127.0.0.1:0"}}
spool: {{path: "{root / "spool"}"}}
batch: {{max_age_secs: 86400}}
mappings_fallback: dead_letter
"""
    )


def record(kind: str, uid: int, time_ms: int) -> dict[str, Any]:
    """A record of ``kind`` carrying the model id ``uid``."""
    if kind == "auth":
        return {
            "class_uid": 3002,
            "activity_id": 1,
            "time": time_ms,
            "user": {"name": "u"},
            "service": {"name": "sshd"},
            "dst_endpoint": {"ip": "10.0.0.1"},
            "metadata": {"uid": str(uid)},
        }
    if kind == "api":
        return {
            "class_uid": 6003,
            "activity_id": 1,
            "time": time_ms,
            "actor": {"user": {"name": "u"}},
            "api": {"operation": "GetObject"},
            "src_endpoint": {"ip": "10.0.0.2"},
            "metadata": {"uid": str(uid)},
        }
    return {"log": f"line {uid}", "uid": str(uid)}  # no class_uid and no rule: mappings_fallback


def forward_chunk(kind: str, hour: int, uids: list[int]) -> Chunk:
    """One PackedForward frame of records with ids ``uids``, decoded as the server decodes it."""
    times = [T0_MS + hour * HOUR_MS + u for u in uids]
    entries = pack_entries((t * 1_000_000, record(kind, u, t)) for u, t in zip(uids, times, strict=True))
    raw = msgpack.packb([f"model.{kind}", entries, {}], use_bin_type=True)
    return decode_forward(raw, times[0] * 1_000_000)


def uid_of(row: dict[str, Any]) -> int:
    """The model id of a record as sent, or as stored (``metadata.uid``) or dead-lettered."""
    metadata = row.get("metadata")
    return int(metadata["uid"] if metadata else row["uid"])


def drop_unflushed(f: Any) -> None:
    """Close a file's descriptor without flushing what Python still buffers: what a kill -9 does."""
    if f is None:
        return
    raw = f.buffer.raw if isinstance(f, io.TextIOWrapper) else getattr(f, "raw", f)
    raw.close()


class Sink:
    """One life of the sink process, from recovery until it stops or crashes."""

    def __init__(self, config: Config, segment_bytes: int) -> None:
        self.app = App(config)
        self.app.spool.wal.segment_bytes = segment_bytes
        # Mirrors App.start: open (lock, recover), resume at the checkpoint, adopt open batches,
        # queue sealed ones for delivery.
        opened, sealed = self.app.spool.open()
        self.app._cursor = self.app.spool.checkpoint
        self.app.dead_letters.recover(self.app.spool.checkpoint)
        self.app.batcher.adopt(opened)
        self.sealed: list[BatchFile] = list(sealed)
        self.running = True

    async def submit(self, chunks: list[Chunk]) -> None:
        """The server acks each chunk once this returns (concurrent appends: one group commit)."""
        await asyncio.gather(*(self.app.spool.submit(c) for c in chunks))

    def step(self, limit: int, flush_all: bool) -> None:
        """Mirrors one turn of App._map_loop: cached chunks after the cursor, then App._step."""
        items = self.app.spool.wal.take_cached(self.app._cursor, limit)
        self.sealed += self.app._step(items, flush_all)

    def deliver(self, count: int) -> None:
        """Mirrors Delivery.deliver_loop with a lake that accepts all: sealed batches in order (App._deliver_one)."""
        for _ in range(min(count, len(self.sealed))):
            self.app._deliver_one(self.sealed[0])
            self.sealed.pop(0)

    def drain(self) -> None:
        """Mirrors shutdown: map everything, seal all, store all."""
        for _ in range(1000):
            self.step(MAP_LIMIT, flush_all=True)
            if self.app._cursor >= self.app.spool.wal.end and not self.app.batcher.open:
                break
        else:
            pytest.fail("the pipeline did not drain")
        self.deliver(len(self.sealed))

    def crash(self) -> None:
        """Die: lose what is buffered in memory, release the lock as the kernel would."""
        self.running = False
        app = self.app
        for batch in app.batcher.open.values():
            drop_unflushed(batch._file)
        drop_unflushed(app.dead_letters._file)
        wal = app.spool.wal
        if wal._fd is not None:  # unbuffered: nothing to drop, just let go of the descriptor
            os.close(wal._fd)
            wal._fd = None
        wal._io.shutdown(wait=True)
        assert app.spool._lock is not None
        app.spool._lock.close()
        app._pipeline.shutdown(wait=True)
        app.delivery.close()

    def close(self) -> None:
        self.running = False
        for batch in self.app.batcher.open.values():
            batch.close()
        self.app.dead_letters.close()
        self.app.spool.close()
        self.app._pipeline.shutdown(wait=True)
        self.app.delivery.close()


# -- reading what is where, independently of the pipeline -----------------------------------------


_OBJECT_IDS: dict[tuple[str, int, int, int], list[int]] = {}


def object_ids(path: Path) -> list[int]:
    """The ids in one stored object; cached by file identity (a replaced object is read again)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _OBJECT_IDS:
        _OBJECT_IDS[key] = [uid_of(row) for row in pq.read_table(path, columns=["metadata"]).to_pylist()]
    return _OBJECT_IDS[key]


def lake_ids(lake: Path) -> Counter[int]:
    ids: Counter[int] = Counter()
    for path in sorted(lake.rglob("*.parquet")):
        ids.update(object_ids(path))
    return ids


def dead_letter_ids(directory: Path) -> Counter[int]:
    ids: Counter[int] = Counter()
    for path in sorted(directory.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            ids[uid_of(json.loads(line)["record"])] += 1
    return ids


def batch_ids(directory: Path) -> Counter[int]:
    """Ids in the batch files of ``directory`` (read only; recovery is not run)."""
    ids: Counter[int] = Counter()
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        first = next(scan_records(path.read_bytes()))
        header = BatchHeader(**json.loads(first[2]))
        schema = load_schema(header.ocsf_version).arrow_schema(header.class_uid)
        table: pa.Table = BatchFile(path, header).read_table(schema)
        ids.update(uid_of(row) for row in table.to_pylist())
    return ids


def wal_ids_after(wal_dir: Path, checkpoint: WalPosition) -> Counter[int]:
    """Ids of the records in the log after ``checkpoint`` (the chunks still to be mapped)."""
    ids: Counter[int] = Counter()
    for path in sorted(wal_dir.glob("*.wal")):
        segment = int(path.stem)
        if segment < checkpoint.segment:
            continue
        start = checkpoint.offset if segment == checkpoint.segment else 0
        for _, _, payload in scan_records(path.read_bytes(), start):
            ids.update(uid_of(entry.record) for entry in App._decode(payload).entries)
    return ids


# -- fault injection ------------------------------------------------------------------------------


def crash_after(call: Callable[..., Any]) -> Callable[..., Any]:
    def run_then_crash(*args: Any, **kwargs: Any) -> Any:
        call(*args, **kwargs)
        raise Crash(call.__name__)

    return run_then_crash


def crash_instead(*_: Any, **__: Any) -> Any:
    raise Crash


CRASH_POINTS = (
    "idle",  # between steps
    "before_sync",  # frames appended to batch files, not yet fsynced (lost with the process)
    "torn_batch",  # the same, but half of a frame had reached each open batch file
    "before_checkpoint",  # batch files and dead letters fsynced, checkpoint not moved
    "after_checkpoint",  # checkpoint moved, batches not yet sealed
    "mid_seal",  # the first due batch moved to sealed/, the others not
    "after_put",  # an object stored, its sealed batch not yet deleted
    "torn_wal",  # the process died while writing a group (never acked): half a record on disk
)


CHUNK = st.tuples(st.sampled_from(KINDS), st.integers(0, 1), st.integers(1, 4))  # (kind, event hour, records)


class SpoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Batch ids are UUIDv7s (time + random); recovery and sealing go in id order, so make that
        # order the creation order for runs Hypothesis can replay.
        created = iter(range(T0_MS, T0_MS + 1_000_000))
        self.ids = mock.patch.object(batch_module, "uuid7", lambda: uuid7(next(created)))
        self.ids.start()
        self.root = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.config = config_for(self.root)
        self.loop = asyncio.new_event_loop()
        self.segment_bytes = SEGMENT_BYTES[0]
        self.sink = Sink(self.config, self.segment_bytes)
        self.next_uid = 0
        self.acked: dict[int, str] = {}  # id → kind

    # -- rules ------------------------------------------------------------------------------------

    @initialize(segment_bytes=st.sampled_from(SEGMENT_BYTES))
    def choose_segment_size(self, segment_bytes: int) -> None:
        self.segment_bytes = self.sink.app.spool.wal.segment_bytes = segment_bytes

    @rule(chunks=st.lists(CHUNK, min_size=1, max_size=4))
    def submit(self, chunks: list[tuple[str, int, int]]) -> None:
        """Chunks arrive concurrently (one group commit) and are acked."""
        built, kinds = [], {}
        for kind, hour, n in chunks:
            uids = list(range(self.next_uid, self.next_uid + n))
            self.next_uid += n
            built.append(forward_chunk(kind, hour, uids))
            kinds.update(dict.fromkeys(uids, kind))
        self.loop.run_until_complete(self.sink.submit(built))
        self.acked.update(kinds)  # acked only now that every append has returned

    @rule(
        limit=st.integers(1, 4),
        seal_over=st.sampled_from([NEVER, 2000, 1]),
        flush_all=st.booleans(),
    )
    def step(self, limit: int, seal_over: int, flush_all: bool) -> None:
        self.sink.app.batcher.max_bytes = seal_over
        self.sink.step(limit, flush_all)

    @precondition(lambda self: self.sink.sealed)
    @rule(count=st.integers(1, 3))
    def deliver(self, count: int) -> None:
        self.sink.deliver(count)

    @rule(now=st.integers(0, 3))
    def deliver_everything(self, now: int) -> None:
        """Now and then (one draw in four), map, seal and store everything, as a clean shutdown does."""
        if now == 0:
            self.sink.drain()
            self.check_everything_stored_once()

    @rule(
        point=st.sampled_from(CRASH_POINTS),
        limit=st.integers(1, 4),
        seal_over=st.sampled_from([NEVER, 1]),
        intake=st.lists(CHUNK, max_size=2),
    )
    def crash(self, point: str, limit: int, seal_over: int, intake: list[tuple[str, int, int]]) -> None:
        """Die at ``point``, restart and recover; ``intake`` arrives before the mapper's first step
        (the server accepts while the mapper catches up)."""
        app = self.sink.app
        app.batcher.max_bytes = seal_over
        with contextlib.suppress(Crash):
            if point in ("before_sync", "torn_batch"):
                app.batcher.sync = crash_instead  # type: ignore[method-assign]
                self.sink.step(limit, flush_all=False)
            elif point == "before_checkpoint":
                app.spool.write_checkpoint = crash_instead  # type: ignore[method-assign]
                self.sink.step(limit, flush_all=False)
            elif point == "after_checkpoint":
                app.spool.write_checkpoint = crash_after(app.spool.write_checkpoint)  # type: ignore[method-assign]
                self.sink.step(limit, flush_all=False)
            elif point == "mid_seal":
                real_due = app.batcher.due

                def due_then_crash_after_first(*args: Any, **kwargs: Any) -> list[BatchFile]:
                    batches = real_due(*args, **kwargs)
                    for batch in batches[:1]:
                        batch.move_to = crash_after(batch.move_to)  # type: ignore[method-assign]
                    return batches

                app.batcher.due = due_then_crash_after_first  # type: ignore[method-assign]
                self.sink.step(limit, flush_all=False)
            elif point == "after_put" and self.sink.sealed:
                app.store.put = crash_after(app.store.put)  # type: ignore[method-assign]
                self.sink.deliver(1)
        self.sink.crash()
        if point == "torn_wal":
            newest = sorted((self.root / "spool" / "wal").glob("*.wal"))[-1]
            with newest.open("ab") as f:
                f.write(b"W1\x00\x00\x01\x00torn")
        if point == "torn_batch":
            for path in (self.root / "spool" / "open").glob(f"*{SUFFIX}"):
                with path.open("ab") as f:
                    f.write(encode_record(FRAME_POS.pack(2**32, 0) + b"frame")[:-3])
        self.sink = Sink(self.config, self.segment_bytes)
        if intake:
            self.submit(intake)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def acked_records_are_stored_or_still_spooled(self) -> None:
        spool = self.root / "spool"
        lake = lake_ids(self.root / "lake")
        assert not [i for i, n in lake.items() if n > 1], "a record was stored twice"
        held = (
            lake
            + dead_letter_ids(self.config.dead_letter_path)
            + batch_ids(spool / "open")
            + batch_ids(spool / "sealed")
            + wal_ids_after(spool / "wal", self.sink.app.spool.checkpoint)
        )
        lost = sorted(i for i in self.acked if held[i] == 0)
        assert not lost, f"acked records neither stored nor spooled: {lost[:10]}"

    def check_everything_stored_once(self) -> None:
        lake = lake_ids(self.root / "lake")
        dead = dead_letter_ids(self.config.dead_letter_path)
        want_lake = {i for i, kind in self.acked.items() if kind != "unmapped"}
        want_dead = {i for i, kind in self.acked.items() if kind == "unmapped"}
        assert set(lake) == want_lake, (
            f"missing {sorted(want_lake - set(lake))[:10]}, unexpected {sorted(set(lake) - want_lake)[:10]}"
        )
        assert not [i for i, n in lake.items() if n > 1], "a record was stored twice"
        # Dead letters are checked for presence only: a crash after they are fsynced and before the
        # checkpoint writes them again (see test_dead_letters_are_not_written_twice_after_a_crash).
        assert set(dead) == want_dead
        assert not list((self.root / "spool" / "sealed").iterdir())
        assert not list((self.root / "spool" / "open").iterdir())

    def crash_recover_and_drain(self) -> None:
        """A final crash, recovery and drain: then everything acked is stored exactly once."""
        self.sink.crash()
        self.sink = Sink(self.config, self.segment_bytes)
        self.sink.drain()
        self.check_everything_stored_once()
        self.sink.close()

    def clean_up(self) -> None:
        if self.sink.running:
            self.sink.crash()
        self.loop.close()
        self.ids.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def teardown(self) -> None:
        try:
            self.crash_recover_and_drain()
        finally:
            self.clean_up()


SpoolModel.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None, report_multiple_bugs=False
)
# Green runs take well under a minute; a failing one may shrink for up to five more.
TestSpoolModel = pytest.mark.timeout(600)(SpoolModel.TestCase)


# -- a known gap the model tolerates ----------------------------------------------------------------


def records_of(kinds: list[str]) -> Iterator[Chunk]:
    for i, kind in enumerate(kinds):
        yield forward_chunk(kind, 0, [i])


def test_dead_letters_are_not_written_twice_after_a_crash(tmp_path: Path) -> None:
    # GIVEN a sink that acked a chunk holding one record no mapping can take
    config = config_for(tmp_path)
    loop = asyncio.new_event_loop()
    try:
        sink = Sink(config, SEGMENT_BYTES[0])
        loop.run_until_complete(sink.submit(list(records_of(["unmapped"]))))

        # WHEN it maps the chunk (the dead letter is fsynced) and dies before moving the checkpoint
        sink.app.spool.write_checkpoint = crash_instead  # type: ignore[method-assign]
        with pytest.raises(Crash):
            sink.step(MAP_LIMIT, flush_all=False)
        sink.crash()
        # AND restarts and drains
        sink = Sink(config, SEGMENT_BYTES[0])
        sink.drain()
        sink.close()
    finally:
        loop.close()

    # THEN the record is a dead letter once
    assert dead_letter_ids(config.dead_letter_path) == Counter({0: 1})


# -- the model's shortest paths to the two recovery bugs fixed before, replayed every run ------------


def replay(*moves: Callable[[SpoolModel], None]) -> None:
    """Run rules on a fresh model, checking the invariant after each, then the final recovery."""
    state = SpoolModel()
    try:
        state.choose_segment_size(SEGMENT_BYTES[1])
        for move in moves:
            move(state)
            state.acked_records_are_stored_or_still_spooled()
        state.crash_recover_and_drain()
    finally:
        state.clean_up()


def test_restart_with_the_checkpoint_inside_the_newest_segment_maps_its_rest_first() -> None:
    # GIVEN acked chunks of which only the first is mapped when the sink dies (checkpoint mid-segment)
    # WHEN it restarts and a new chunk arrives (in a new segment) before the mapper's first step
    # THEN the rest of the old segment is mapped, not skipped: everything is stored once
    replay(
        lambda s: s.submit([("auth", 0, 2), ("api", 0, 2)]),
        lambda s: s.crash(point="after_checkpoint", limit=1, seal_over=NEVER, intake=[("auth", 1, 1)]),
        lambda s: s.step(limit=4, seal_over=NEVER, flush_all=False),
        lambda s: s.deliver_everything(now=0),
    )


def test_frames_of_the_last_checkpointed_step_survive_a_crash() -> None:
    # GIVEN a chunk mapped and checkpointed into an open batch
    # WHEN the sink dies before sealing it, restarts and drains
    # THEN the chunk's records are in the lake (its frames sit AT the checkpoint and are kept)
    replay(
        lambda s: s.submit([("auth", 0, 3)]),
        lambda s: s.crash(point="after_checkpoint", limit=4, seal_over=NEVER, intake=[]),
        lambda s: s.deliver_everything(now=0),
    )
