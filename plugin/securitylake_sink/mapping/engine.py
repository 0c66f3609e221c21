"""Applying a compiled rule to a batch of records: one pull pass into columns, the parse steps,
then per event class the attribute columns, the derived OCSF fields, the class's struct arrays
and validation. Every record comes out mapped, failed (with a reason) or declined."""

from __future__ import annotations

__all__ = ["PRODUCT", "ClassRows", "Outcome", "apply_rule", "map_event"]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink import __version__
from securitylake_sink.columnar import scalar_of
from securitylake_sink.mapping.assemble import AttrPath, assemble, constant
from securitylake_sink.mapping.columns import Frame, merge_unmapped, pull_frame
from securitylake_sink.mapping.compiler import CompiledEvent, CompiledRule
from securitylake_sink.mapping.evaluate import Evaluator
from securitylake_sink.mapping.ops import Faults
from securitylake_sink.mapping.spec import Const
from securitylake_sink.ocsf.schema import OcsfSchema
from securitylake_sink.ocsf.validate import validate

PRODUCT = {"name": "securitylake-sink", "vendor_name": "securitylake-sink", "version": __version__}


@dataclass(frozen=True)
class ClassRows:
    """Events of one class, in a pruning of the class's Arrow schema (the columns and struct
    fields left out are null on every row; ``columnar.widen_batch`` restores them), and the input
    rows they came from."""

    class_uid: int
    batch: pa.RecordBatch
    rows: pa.Array  # int64 indices into the records given to apply_rule


@dataclass
class Outcome:
    mapped: list[ClassRows] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # row → reason
    declined: list[int] = field(default_factory=list)


def _derive(
    values: dict[AttrPath, pa.Array], event: CompiledEvent, frame: Frame, rule: CompiledRule
) -> None:
    """Fill what OCSF derives: ids, names, type, captions, time, metadata, raw_data."""
    n, info = frame.n, event.info
    int32 = pa.int32()

    def fixed(path: AttrPath, value: Any, t: pa.DataType) -> None:
        values[path] = constant(value, t, n)

    fixed(("class_uid",), event.class_uid, int32)
    fixed(("category_uid",), info.category_uid, int32)
    fixed(("class_name",), info.caption, pa.string())
    fixed(("category_name",), info.category_name, pa.string())
    activity = pc.fill_null(values.get(("activity_id",), pa.nulls(n, int32)), scalar_of(0, int32))
    values[("activity_id",)] = activity
    values[("severity_id",)] = pc.fill_null(values.get(("severity_id",), pa.nulls(n, int32)), scalar_of(0, int32))
    values[("type_uid",)] = pc.add(pa.scalar(event.class_uid * 100, pa.int64()), pc.cast(activity, pa.int64()))
    for sibling in event.siblings:
        ids = values.get(sibling.id_path)
        if ids is None:
            continue
        caption = pc.take(sibling.captions, pc.index_in(pc.cast(ids, pa.int64()), value_set=sibling.ids))
        given = values.get(sibling.name_path)
        values[sibling.name_path] = caption if given is None else pc.coalesce(given, caption)
        if sibling.id_path == ("activity_id",):
            values[("type_name",)] = pc.binary_join_element_wise(pa.scalar(info.caption), caption, ": ")
    values[("time",)] = pc.coalesce(values[("time",)], frame.ref_ms) if ("time",) in values else frame.ref_ms
    fixed(("metadata", "version"), rule.ocsf_version, pa.string())
    if not any(p[:2] == ("metadata", "product") for p in values):
        for key, text in PRODUCT.items():
            fixed(("metadata", "product", key), text, pa.string())
    if event.profiles and ("metadata", "profiles") not in values:
        fixed(("metadata", "profiles"), list(event.profiles), pa.list_(pa.string()))
    if ("metadata", "log_name") not in values:
        if frame.tags is None:
            fixed(("metadata", "log_name"), frame.tag, pa.string())
        else:
            values[("metadata", "log_name")] = frame.tags
    if rule.raw_line and ("raw_data",) not in values:
        values[("raw_data",)] = frame.line


def map_event(event: CompiledEvent, frame: Frame, rule: CompiledRule) -> tuple[dict[AttrPath, pa.Array], Faults]:
    """The columns of one class's events for every row of ``frame``, and the rows that failed
    to cast."""
    faults = Faults()
    evaluator = Evaluator(frame, rule.functions, faults)
    values: dict[AttrPath, pa.Array] = {}
    for attr in event.attrs:
        if isinstance(attr.spec, Const):
            values[attr.path] = constant(attr.spec.value, attr.type, frame.n)
        else:
            values[attr.path] = evaluator.value(attr.spec, attr.type, attr.label)
    _derive(values, event, frame, rule)
    extras = [(key, evaluator.value(spec, pa.string(), f"unmapped.{key}")) for key, spec in event.unmapped]
    values[("unmapped",)] = merge_unmapped(frame.unmapped, extras)
    return values, faults


def _check(
    batch: pa.RecordBatch, faults: Faults, schema: OcsfSchema, class_uid: int
) -> tuple[pa.Array, dict[int, str]]:
    verdict = validate(batch, schema, class_uid)
    reasons = faults.reasons()
    for row, reason in verdict.reasons.items():
        reasons.setdefault(row, reason)
    bad = pc.or_(faults.mask(batch.num_rows), verdict.bad)
    return bad, reasons


def _map_rows(
    outcome: Outcome, event: CompiledEvent, rule: CompiledRule, *, schema: OcsfSchema, frame: Frame, takes: pa.Array
) -> None:
    """Map the rows ``takes`` marks to ``event``'s class, into ``outcome``."""
    rows = pc.cast(pc.indices_nonzero(takes), pa.int64())
    # With most rows taken, evaluating every row and keeping the taken ones beats taking every
    # pulled and captured column first.
    whole = len(rows) * 2 >= frame.n
    sub = frame if whole else frame.take(rows)
    values, faults = map_event(event, sub, rule)
    checked = assemble(event.schema, values, sub.n)
    bad, reasons = _check(checked, faults, schema, event.class_uid)
    for row, reason in reasons.items():
        if not whole:
            outcome.failed[rows[row].as_py()] = reason
        elif takes[row].as_py():
            outcome.failed[row] = reason
    # The good rows, in the records' order: objects are sorted by time when they are written, once
    # for all the batches they gather (sorting here would copy every batch on the pipeline thread).
    if not reasons and (not whole or len(rows) == frame.n):  # every row of the batch is good
        outcome.mapped.append(ClassRows(event.class_uid, checked, rows))
        return
    kept = pc.indices_nonzero(pc.and_(takes, pc.invert(bad)) if whole else pc.invert(bad))
    if len(kept):
        source_rows = kept if whole else rows.take(kept)
        outcome.mapped.append(ClassRows(event.class_uid, checked.take(kept), pc.cast(source_rows, pa.int64())))


def apply_rule(
    rule: CompiledRule,
    schema: OcsfSchema,
    records: Sequence[Mapping[str, Any]],
    tag: str | Sequence[str],
    ref_ms: pa.Array,
) -> Outcome:
    """Map ``records`` with ``rule``; ``tag`` is their tag (or each record's), ``ref_ms`` each
    record's transport time."""
    outcome = Outcome()
    n = len(records)
    if n == 0:
        return outcome
    frame = pull_frame(records, tag, ref_ms, rule.used, decode_json=rule.decode_json)
    steps = Evaluator(frame, rule.functions, Faults())
    for step in rule.steps:
        steps.run_step(step)
    wanted = steps.cond(rule.where) if rule.where is not None else constant(True, pa.bool_(), n)
    left = wanted
    for event in rule.events:
        takes = left if event.where is None else pc.and_(left, steps.cond(event.where))
        if takes.true_count == 0:
            continue
        left = pc.and_(left, pc.invert(takes))
        _map_rows(outcome, event, rule, schema=schema, frame=frame, takes=takes)
    declined = pc.or_(pc.invert(wanted), left)  # outside the rule's where, or taken by no event
    outcome.declined = pc.indices_nonzero(declined).to_pylist()
    return outcome
