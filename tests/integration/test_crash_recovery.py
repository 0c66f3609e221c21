"""Ack means durable: records acked before a ``kill -9`` reach the lake after a restart."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb

from securitylake_sink.errors import ProtocolError
from securitylake_sink.forward_client import ForwardClient
from tests.integration.sinkproc import SinkProcess, auth_records, free_port, read_lake, write_config

CHUNK = 200


def _send_until_killed(port: int, start: int, stop_at: int) -> tuple[list[int], int]:
    """Send chunks of ids from ``start``; return the acked ids and where sending stopped."""
    acked: list[int] = []
    next_id = start
    try:
        with ForwardClient("127.0.0.1", port, timeout=10) as client:
            while next_id < stop_at:
                ids = range(next_id, min(next_id + CHUNK, stop_at))
                now = time.time_ns()
                client.send("crash.test", auth_records(ids, now))
                acked.extend(ids)
                next_id = ids.stop
    except (OSError, ProtocolError):
        next_id += CHUNK  # the chunk in flight was not acked: it may or may not be stored
    return acked, next_id


def test_acked_records_survive_kill_9(tmp_path: Path) -> None:
    # GIVEN a sink receiving acked chunks, killed with SIGKILL three times at random moments
    rng = random.Random(1234)
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 1}\n")
    acked: list[int] = []
    next_id = 0
    for round_ in range(3):
        sink = SinkProcess(config, port, tmp_path / f"sink{round_}.log")
        killer = threading.Timer(rng.uniform(0.3, 1.2), sink.proc.kill)
        killer.start()
        got, next_id = _send_until_killed(port, next_id, next_id + 1_000_000)
        killer.join()
        sink.proc.wait(10)
        acked.extend(got)
        assert got, "the sink acked nothing before it was killed"

    # WHEN it restarts on the same spool and is stopped cleanly
    sink = SinkProcess(config, port, tmp_path / "final.log")
    assert sink.stop() == 0, sink.log()

    # THEN every acked record is in the lake exactly once
    rows = read_lake(tmp_path / "lake").column("metadata").to_pylist()
    counts = Counter(int(r["uid"]) for r in rows)
    missing = [i for i in acked if counts[i] == 0]
    assert not missing, f"{len(missing)} acked records lost, first {missing[:5]}"
    duplicated = [i for i, n in counts.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} records stored twice"
    assert len(acked) > 3 * CHUNK
    assert not list((tmp_path / "spool" / "sealed").iterdir())


# -- at scale: 200,000 records, at least 5 kills, resends deduplicated -----------------------------

SCALE_RECORDS = 200_000
SCALE_CHUNK = 1000  # records per chunk, as Fluent Bit sends them
SCALE_KILLS = 5
# A kill comes at a random moment soon after the client has had this many more chunks acked, so
# it always lands while records flow, however fast the sink takes them.
KILL_AFTER_CHUNKS = (5, 30)
KILL_WITHIN_SECS = 0.05


def _scale_chunk(index: int, base_ns: int) -> list[tuple[int, dict[str, object]]]:
    """Chunk ``index``: the same records (hence the same token) every time it is sent."""
    return auth_records(range(index * SCALE_CHUNK, (index + 1) * SCALE_CHUNK), base_ns + index)


def _send_chunks(
    port: int,
    first: int,
    stop_at: int,
    base_ns: int,
    *,
    kill_at: int | None = None,
    kill: threading.Timer | None = None,
) -> int:
    """Send chunks from ``first`` until one is not acked (starting ``kill`` once chunk ``kill_at``
    is acked); the index of the first chunk not acked."""
    index = first
    try:
        with ForwardClient("127.0.0.1", port, timeout=10) as client:
            while index < stop_at:
                client.send("crash.scale", _scale_chunk(index, base_ns))
                index += 1
                if kill is not None and index == kill_at:
                    kill.start()
    except (OSError, ProtocolError):
        pass  # the chunk in flight is sent again to the next process: stored once either way
    return index


def test_200k_acked_records_survive_repeated_kill_9_exactly_once(tmp_path: Path) -> None:
    # GIVEN a client sending 200 chunks of 1000 records with acks, resending whatever was not
    # acked, while the sink is killed with SIGKILL at random moments and restarted
    rng = random.Random(2026)
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 1}\n")
    chunks = SCALE_RECORDS // SCALE_CHUNK
    base_ns = time.time_ns()
    started = time.monotonic()
    acked_chunks = kills = 0
    acked_at_kill: list[int] = []
    while kills < SCALE_KILLS or acked_chunks < chunks:
        sink = SinkProcess(config, port, tmp_path / f"scale{kills}.log", level="info")
        if kills < SCALE_KILLS:
            killer = threading.Timer(rng.uniform(0, KILL_WITHIN_SECS), sink.proc.kill)
            kill_at = acked_chunks + rng.randint(*KILL_AFTER_CHUNKS)
            acked_chunks = _send_chunks(port, acked_chunks, chunks, base_ns, kill_at=kill_at, kill=killer)
            killer.join()
            sink.proc.wait(10)
            kills += 1
            acked_at_kill.append(acked_chunks)
        else:
            acked_chunks = _send_chunks(port, acked_chunks, chunks, base_ns)
            assert sink.stop() == 0, sink.log()

    # WHEN it restarts once more and is stopped cleanly
    sink = SinkProcess(config, port, tmp_path / "scale-final.log", level="info")
    assert sink.stop() == 0, sink.log()

    # THEN every acked record is in the lake exactly once
    lake = tmp_path / "lake"
    row = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), count(DISTINCT metadata.uid), min(metadata.uid::BIGINT), max(metadata.uid::BIGINT) "
            f"FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = 1)"
        )
        .fetchone()
    )
    assert row is not None
    total, distinct, lowest, highest = row
    elapsed = time.monotonic() - started
    print(
        f"crash at scale: sent/acked {acked_chunks * SCALE_CHUNK}, delivered {total}, "
        f"duplicates {total - distinct}, lost {acked_chunks * SCALE_CHUNK - distinct}, "
        f"kills {kills} (chunks acked by each: {acked_at_kill}), {elapsed:.1f} s"
    )
    assert acked_at_kill[-1] < chunks, "every kill should come while records are still flowing"
    assert acked_chunks == chunks
    assert (total, distinct, lowest, highest) == (SCALE_RECORDS, SCALE_RECORDS, 0, SCALE_RECORDS - 1)
    assert not list((tmp_path / "spool" / "sealed").iterdir())
