"""The sink's stages in process, on the same records the end-to-end runs send: decode (Forward
frames → chunks, with the package's own codec), map (the mix through ``Mapper.map_chunks``: in
one call, and in the pipeline's steps with each source's chunks spread over many tags, as a
tail input or Kubernetes gives them; and each built-in rule on its fixtures), validate (the
mapped batches), encode (Parquet per class).
And the floor: plain msgpack decoding, an Arrow table of the records as they are, Parquet (zstd),
which no sink that keeps every record can beat. Both run under the sink process's malloc and
cycle-collector settings (``memory.tune_malloc``, ``memory.tune_gc``), as the sink does."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq

import map_rules
from frames import Frame
from records import MAPPINGS
from securitylake_sink.app import STEP_RECORDS
from securitylake_sink.columnar import widen_batch
from securitylake_sink.encode.parquet import encode_parquet
from securitylake_sink.mapping.mapper import MappedBatch, Mapper
from securitylake_sink.mapping.route import builtin_rule_names
from securitylake_sink.memory import tune_gc, tune_malloc
from securitylake_sink.model import Chunk
from securitylake_sink.ocsf.schema import OcsfSchema, load_schema
from securitylake_sink.ocsf.validate import validate
from securitylake_sink.sources.forward_codec import MAX_READ_BYTES, FrameReader, decode_frame

OCSF_VERSION = "1.1.0"
TAGS_PER_SOURCE = 20
T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Records through one step, in wall and CPU seconds of this process."""

    records: int
    wall: float
    cpu: float

    def figures(self, **extra: Any) -> dict[str, Any]:
        return {
            "records": self.records,
            "seconds": round(self.wall, 3),
            "records_per_sec": round(self.records / self.wall) if self.wall else 0,
            "records_per_cpu_sec": round(self.records / self.cpu) if self.cpu else 0,
            **extra,
        }


def timed(step: Callable[[], T], records: Callable[[T], int]) -> tuple[T, Timing]:
    started, started_cpu = time.perf_counter(), time.process_time()
    result = step()
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return result, Timing(records(result), wall, cpu)


def decode(frames: Sequence[Frame]) -> list[Chunk]:
    """The stream of frames as one connection reads it: 64 KiB reads, each frame decoded."""
    stream = b"".join(f.data for f in frames)
    reader = FrameReader()
    chunks: list[Chunk] = []
    for start in range(0, len(stream), MAX_READ_BYTES):
        reader.feed(stream[start : start + MAX_READ_BYTES])
        for obj, raw in reader.frames():
            chunk = decode_frame(obj, raw, time.time_ns())
            if chunk is not None:
                chunks.append(chunk)
    return chunks


def _steps(chunks: Sequence[Chunk], spread: int) -> list[list[Chunk]]:
    """The chunks in the pipeline's steps (at most STEP_RECORDS records each), each source's
    chunks taking turns over ``spread`` tags (``pre.sshd.0`` … ``pre.sshd.19``)."""
    steps: list[list[Chunk]] = [[]]
    size = 0
    for index, chunk in enumerate(chunks):
        if size + len(chunk.entries) > STEP_RECORDS and steps[-1]:
            steps.append([])
            size = 0
        steps[-1].append(dataclasses.replace(chunk, tag=f"{chunk.tag}.{index % spread}"))
        size += len(chunk.entries)
    return steps


def _tables(batches: Iterable[MappedBatch], schema: OcsfSchema) -> list[pa.Table]:
    """One table per class in its full schema, as one flush writes one object per class."""
    by_class: dict[int, list[pa.RecordBatch]] = defaultdict(list)
    for mapped in batches:
        by_class[mapped.class_uid].append(mapped.batch)
    return [
        pa.concat_tables([widen_batch(piece, schema.arrow_schema(class_uid)) for piece in pieces])
        for class_uid, pieces in by_class.items()
    ]


def sink_settings() -> None:
    """This process's malloc and cycle collector set as in the sink (once serving)."""
    tune_malloc()
    tune_gc()


def pipeline(frames: Sequence[Frame], rule_records: int, rule_rounds: int) -> dict[str, Any]:
    """Each stage of the sink on ``frames``, then each built-in rule on its own fixtures."""
    sink_settings()
    schema = load_schema(OCSF_VERSION)
    mapper = Mapper(schema, list(MAPPINGS))
    chunks, decoding = timed(lambda: decode(frames), lambda cs: sum(len(c.entries) for c in cs))
    result, mapping = timed(lambda: mapper.map_chunks(chunks, lambda _: "ext/bench/"), lambda r: r.records)
    steps = _steps(chunks, TAGS_PER_SOURCE)  # entries decoded by the run above: this times mapping only
    spread = Mapper(schema, [(f"{tag}.*", rule) for tag, rule in MAPPINGS])
    stepped, stepping = timed(
        lambda: [spread.map_chunks(step, lambda _: "ext/bench/") for step in steps],
        lambda results: sum(r.records for r in results),
    )
    verdicts, validating = timed(
        lambda: [validate(b.batch, schema, b.class_uid) for b in result.batches],
        lambda vs: sum(len(v.bad) for v in vs),
    )
    tables = _tables(result.batches, schema)
    encoded, encoding = timed(lambda: [encode_parquet(t) for t in tables], lambda _: sum(t.num_rows for t in tables))
    rules = {}
    for rule in builtin_rule_names():
        if (map_rules.FIXTURES / f"{rule}.input.ndjson").exists():
            rate, cpu_rate, mapped, dead = map_rules.bench(rule, rule_records, rule_rounds)
            rules[rule] = {"records_per_sec": round(rate), "records_per_cpu_sec": round(cpu_rate),
                           "mapped": mapped, "dead_letters": dead}
    return {
        "decode": decoding.figures(chunks=len(chunks)),
        "map": mapping.figures(mapped=result.mapped, dead_letters=len(result.dead)),
        "map_steps": stepping.figures(
            mapped=sum(r.mapped for r in stepped), steps=len(steps), tags=len({c.tag for s in steps for c in s})
        ),
        "validate": validating.figures(failed=sum(len(v.reasons) for v in verdicts)),
        "encode": encoding.figures(objects=len(encoded), parquet_bytes=sum(len(e) for e in encoded)),
        "map_rules": rules,
    }


def _plain_decode(frames: Sequence[Frame]) -> dict[str, list[dict[str, Any]]]:
    """Records per tag, with nothing but msgpack: frame, then the packed entries."""
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for frame in frames:
        tag, packed, _options = msgpack.unpackb(frame.data, raw=False)
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(packed)
        by_tag[tag].extend(record for _time, record in unpacker)
    return by_tag


def _table(records: list[dict[str, Any]]) -> tuple[pa.Table, bool]:
    """pyarrow's inferred types; all-string columns when the records' types do not agree."""
    try:
        return pa.Table.from_pylist(records), True
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        names = sorted({key for record in records for key in record})
        columns = {n: pa.array([None if n not in r else str(r[n]) for r in records], pa.string()) for n in names}
        return pa.table(columns), False


def _write(table: pa.Table) -> int:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return int(sink.tell())


def floor(frames: Sequence[Frame]) -> dict[str, Any]:
    """msgpack decode + Arrow table of the records as they are + Parquet (zstd), per tag."""
    sink_settings()
    by_tag, decoding = timed(lambda: _plain_decode(frames), lambda d: sum(len(v) for v in d.values()))
    built, building = timed(lambda: [_table(rs) for rs in by_tag.values()], lambda ts: sum(t.num_rows for t, _ in ts))
    sizes, writing = timed(lambda: [_write(t) for t, _ in built], lambda _: building.records)
    total = Timing(decoding.records, decoding.wall + building.wall + writing.wall,
                   decoding.cpu + building.cpu + writing.cpu)
    return total.figures(
        decode=decoding.figures(),
        arrow=building.figures(inferred_tags=sum(ok for _, ok in built), string_tags=sum(not ok for _, ok in built)),
        parquet=writing.figures(parquet_bytes=sum(sizes)),
    )
