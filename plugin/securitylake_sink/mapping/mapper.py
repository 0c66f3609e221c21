"""The mapping stage: chunks in, per (source location, class) an Arrow record batch in the class
schema out, plus dead letters and drop counts. Records of the tags routed alike are mapped
together."""

from __future__ import annotations

__all__ = ["MapResult", "MappedBatch", "Mapper"]

import base64
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from securitylake_sink.errors import ProtocolError
from securitylake_sink.mapping.basic import DeadLetter
from securitylake_sink.mapping.compiler import CompiledRule
from securitylake_sink.mapping.engine import ClassRows
from securitylake_sink.mapping.evaluate import PythonFunction
from securitylake_sink.mapping.route import FALLBACKS, OCSF, Binding, Routing, TagOutcome, compile_named, route
from securitylake_sink.model import Chunk, built
from securitylake_sink.ocsf.schema import OcsfSchema

log = logging.getLogger("securitylake_sink.mapping")
MAX_KEYS = 10_000  # tags whose routing key is remembered


@dataclass(frozen=True)
class MappedBatch:
    """Events of one class bound for one source location, in the class's Arrow schema."""

    location: str
    class_uid: int
    batch: pa.RecordBatch


@dataclass(frozen=True)
class MapResult:
    batches: tuple[MappedBatch, ...]
    dead: tuple[DeadLetter, ...]
    dropped: Mapping[str, int] = field(default_factory=dict)  # tag → records dropped
    records: int = 0

    @property
    def mapped(self) -> int:
        return sum(b.batch.num_rows for b in self.batches)


def _ref_ms(entry_time_ns: int | None, received_ns: int) -> int:
    return (entry_time_ns if entry_time_ns is not None else received_ns or time.time_ns()) // 1_000_000


# A ``mappings`` entry: its match (None: the rule's own tags), the rule, and optionally whether a
# line the rule parses is kept in raw_data (default true).
Binds = tuple[str | Sequence[str] | None, str] | tuple[str | Sequence[str] | None, str, bool]


class Mapper:
    """Maps chunks per the config's ``mappings`` (in order), then OCSF pass-through, then the fallback."""

    def __init__(
        self,
        schema: OcsfSchema,
        bindings: Sequence[Binds] = (),
        fallback: str = "dead_letter",
        *,
        functions: Mapping[str, PythonFunction] | None = None,
    ) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"mappings_fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
        self.schema = schema
        self.fallback = fallback
        compiled: dict[str, CompiledRule] = {}

        def rule(name: str) -> CompiledRule:
            if name not in compiled:
                compiled[name] = compile_named(name, schema, functions)
            return compiled[name]

        out = []
        for match, name, *raw_data in bindings:
            target = None if name == OCSF else rule(name)
            if target is not None and raw_data == [False]:
                target = replace(target, raw_line=False)
            globs = (match,) if isinstance(match, str) else tuple(match or (target.tags if target else ()))
            out.append(Binding(globs or ("*",), target))
        self.bindings = tuple(out)
        self.base_event = rule("base_event") if fallback == "base_event" else None
        self.routing = Routing(self.bindings, schema, fallback, self.base_event)
        self._drop_logged: set[str] = set()
        self._keys: dict[str, tuple[object, ...]] = {}

    def map_records(
        self, tag: str | Sequence[str], records: Sequence[Mapping[str, Any]], ref_ms: Sequence[int]
    ) -> TagOutcome:
        """Map records of one tag, or of several (``tag`` then lists each record's, and they share
        one ``Routing.key``); ``ref_ms`` is each record's transport time (epoch ms)."""
        try:
            return route(tag, records, ref_ms, self.routing)
        except Exception:  # a record that trips a rule must not stop the pipeline (invariant 6)
            shown = tag if isinstance(tag, str) else tag[0]
            log.exception("mapping a batch failed; mapping its records one by one", extra={"tag": shown})
            return self._one_by_one(tag, records, ref_ms)

    def _one_by_one(
        self, tag: str | Sequence[str], records: Sequence[Mapping[str, Any]], ref_ms: Sequence[int]
    ) -> TagOutcome:
        out = TagOutcome()
        for i, (record, ms) in enumerate(zip(records, ref_ms, strict=True)):
            try:
                one = route(tag if isinstance(tag, str) else tag[i], [record], [ms], self.routing)
            except Exception as exc:  # the reason goes to the dead letter
                out.failed[i] = ("", f"mapping: internal error on this record: {exc!r:.200}")
                continue
            index = pa.array([i], pa.int64())
            out.mapped.extend((rule, ClassRows(rows.class_uid, rows.batch, index)) for rule, rows in one.mapped)
            for why in one.failed.values():
                out.failed[i] = why
            out.dropped.extend(i for _ in one.dropped)
        return out

    def _key(self, tag: str) -> tuple[object, ...]:
        key = self._keys.get(tag)
        if key is None:
            if len(self._keys) >= MAX_KEYS:  # tags are unbounded (one per pod, per file...)
                self._keys.clear()
            key = self._keys[tag] = self.routing.key(tag)
        return key

    def map_chunks(self, chunks: Iterable[Chunk], locate: Callable[[int], str | None]) -> MapResult:
        """Map every entry; ``locate`` gives a class's source location (None: not configured).
        The records of all tags routed alike are mapped together: each call costs the same
        whatever its size, and tags are often many (one per file or pod)."""
        # Chunks are grouped before their records are built, and a group's records are built,
        # mapped and let go before the next group's: a step's records, as Python objects, are
        # the bulk of its memory, and the largest group is often a fraction of them.
        groups: dict[tuple[object, ...], list[Chunk]] = {}
        for chunk in chunks:
            groups.setdefault(self._key(chunk.tag), []).append(chunk)
        dead: list[DeadLetter] = []
        parts: dict[tuple[str, int], list[pa.RecordBatch]] = defaultdict(list)
        dropped: dict[str, int] = {}
        count = sum(self._map_group(members, locate, dead, parts, dropped) for members in groups.values())
        for tag in dropped:
            self._log_drop(tag)
        # Pieces stay apart: concatenating them would copy them (objects are sorted when written).
        batches = tuple(
            MappedBatch(location, class_uid, piece)
            for (location, class_uid), pieces in parts.items()
            for piece in pieces
        )
        return MapResult(batches, tuple(dead), dropped, count)

    def _map_group(
        self,
        chunks: Sequence[Chunk],
        locate: Callable[[int], str | None],
        dead: list[DeadLetter],
        parts: dict[tuple[str, int], list[pa.RecordBatch]],
        dropped: dict[str, int],
    ) -> int:
        """Map the chunks of one routing key, adding to ``dead``, ``parts`` and ``dropped``; the
        number of records they held. Their records live only as long as this call."""
        group, undecodable = _gather(chunks)
        dead.extend(undecodable)
        records, stamps, tags = group.records, group.stamps, group.tags
        if not records:
            return len(undecodable)
        outcome = self.map_records(tags[0] if len(group.distinct) == 1 else tags, records, group.times)
        for rule, rows in outcome.mapped:
            location = locate(rows.class_uid)
            if location is None:
                reason = f"class_uid: no destination.sources location is configured for class {rows.class_uid}"
                dead.extend(DeadLetter(tags[i], rule, reason, records[i], stamps[i]) for i in rows.rows.to_pylist())
                continue
            parts[(location, rows.class_uid)].append(rows.batch)
        for row, (rule, reason) in sorted(outcome.failed.items()):
            dead.append(DeadLetter(tags[row], rule, reason, records[row], stamps[row]))
        for row in outcome.dropped:
            dropped[tags[row]] = dropped.get(tags[row], 0) + 1
        return len(records) + len(undecodable)

    def _log_drop(self, tag: str) -> None:
        if tag not in self._drop_logged:
            self._drop_logged.add(tag)
            log.warning(
                "records no mapping rule takes are dropped (mappings_fallback: drop); logged once per tag",
                extra={"tag": tag},
            )


@dataclass
class _Group:
    """The records of the tags that share one routing key, in arrival order."""

    records: list[Mapping[str, Any]] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # transport time, epoch ms
    stamps: list[int | None] = field(default_factory=list)  # event time, ns
    tags: list[str] = field(default_factory=list)
    distinct: dict[str, None] = field(default_factory=dict)


def _gather(chunks: Iterable[Chunk]) -> tuple[_Group, list[DeadLetter]]:
    """The records of ``chunks`` as one group, built now and kept by the group only; a chunk
    whose records cannot be built is a dead letter instead."""
    group = _Group()
    undecodable = []
    for chunk in chunks:
        try:
            entries = built(chunk.entries)  # deferred entries are built here, whole or not at all
        except ProtocolError as exc:
            undecodable.append(_undecodable(chunk, exc))
            continue
        before = len(group.records)
        for entry in entries:
            group.records.append(entry.record)
            group.times.append(_ref_ms(entry.time_ns, chunk.received_ns))
            group.stamps.append(entry.time_ns)
        group.tags.extend(itertools.repeat(chunk.tag, len(group.records) - before))
        group.distinct.setdefault(chunk.tag)
    return group, undecodable


def _undecodable(chunk: Chunk, exc: ProtocolError) -> DeadLetter:
    """A chunk that passed intake's check but whose records could not be built: one dead letter
    carrying the chunk's bytes as received, so nothing is lost."""
    frame = {"frame_base64": base64.b64encode(chunk.raw).decode("ascii"), "mode": chunk.meta.get("mode", "")}
    return DeadLetter(chunk.tag, "", f"input: the records could not be decoded: {exc}", frame, None)
