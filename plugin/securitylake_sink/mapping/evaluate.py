"""Evaluating rule specs over a frame, column by column: parse steps (regex captures and
key=value pairs), conditions, and values cast to their OCSF column types."""

from __future__ import annotations

__all__ = ["Evaluator", "PythonFunction"]

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import FALSE, kept_where, scalar_of
from securitylake_sink.mapping.assemble import AttrPath, constant, struct_of, type_at
from securitylake_sink.mapping.capture import extract, group_names
from securitylake_sink.mapping.columns import Frame
from securitylake_sink.mapping.ops import Faults, apply_ops, as_text, cast_column, test, to_array
from securitylake_sink.mapping.spec import (
    AllOf,
    AnyOf,
    Apply,
    Coalesce,
    Concat,
    Cond,
    Const,
    Items,
    KvStep,
    Matched,
    NotOf,
    PyFunc,
    Ref,
    RegexStep,
    Step,
    Test,
    Value,
    When,
)

# A registered Python function: the frame's records → one value per record (list or array).
PythonFunction = Callable[[Frame], Any]


def _blank_to_null(values: pa.Array) -> pa.Array:
    """extract_regex gives "" for a group that took no part in the match: treat it as absent.
    For a plain string array only the validity bitmap is replaced; the text is not copied."""
    lengths = pc.binary_length(values)
    keep = pc.fill_null(pc.greater(lengths, scalar_of(0, lengths.type)), FALSE)
    if not pa.types.is_string(values.type) or values.offset or keep.offset:
        return kept_where(keep, values)
    _, offsets, data = values.buffers()
    return pa.Array.from_buffers(pa.string(), len(values), [keep.buffers()[1], offsets, data])


def _unify(arrays: list[pa.Array]) -> list[pa.Array]:
    types = {a.type for a in arrays if not pa.types.is_null(a.type)}
    if len(types) <= 1:
        target = types.pop() if types else pa.string()
        return [a if a.type == target else pc.cast(a, target) for a in arrays]
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
        kind = pa.float64() if any(pa.types.is_floating(t) for t in types) else pa.int64()
        return [pc.cast(a, kind) for a in arrays]
    return [as_text(a) for a in arrays]


def _rows_key(rows: pa.Array) -> tuple[object, ...]:
    """A boolean column as a hashable value (its bits as they are stored)."""
    return (rows.offset, len(rows), *(b.to_pybytes() if b is not None else None for b in rows.buffers()))


def _placed(parts: list[tuple[pa.Array, pa.Array]], n: int, kind: pa.DataType) -> pa.Array:
    """An ``n``-row column holding each part's values at its row numbers (disjoint), null
    elsewhere."""
    if not parts:
        return pa.nulls(n, kind)
    rows = pa.concat_arrays([r for r, _ in parts]) if len(parts) > 1 else parts[0][0]
    values = pa.concat_arrays([v for _, v in parts]) if len(parts) > 1 else parts[0][1]
    return pc.scatter(values, rows, max_index=n - 1)


def _capture_rest(
    patterns: list[str], rest: pa.Array, at: pa.Array, n: int
) -> tuple[dict[str, pa.Array], pa.Array]:
    """The groups of ``patterns`` over the rows ``rest`` (row numbers ``at`` of ``n``), each row
    taking the first pattern it matches: a cheap DFA match over the rows left, then a capture of
    the hits only. Each group as an ``n``-row column, and the rows matched."""
    parts: dict[str, list[tuple[pa.Array, pa.Array]]] = {}
    taken: list[tuple[pa.Array, pa.Array]] = []
    for pattern in patterns:
        names = group_names(pattern)
        for name in names:
            parts.setdefault(name, [])
        hit = pc.fill_null(pc.match_substring_regex(rest, pattern), FALSE)
        if hit.true_count == 0:
            continue
        found = extract(rest.filter(hit), pattern)
        rows = at.filter(hit)
        taken.append((rows, constant(True, pa.bool_(), len(rows))))
        for name, column in zip(names, found, strict=True):
            parts[name].append((rows, column))
        miss = pc.invert(hit)
        rest, at = rest.filter(miss), at.filter(miss)
    columns = {name: _placed(found_parts, n, pa.string()) for name, found_parts in parts.items()}
    return columns, pc.fill_null(_placed(taken, n, pa.bool_()), FALSE)


class Evaluator:
    """Evaluates specs over one frame; cast failures are recorded in ``faults`` per row."""

    def __init__(self, frame: Frame, functions: Mapping[str, PythonFunction], faults: Faults) -> None:
        self.frame = frame
        self.functions = functions
        self.faults = faults
        self.needed: pa.Array | None = None  # the rows a value is computed for; None: all
        # A column read for some rows only, by (column, rows): the attributes of one when branch
        # read the same columns for the same rows, and masking a list column is slow.
        self._masked: dict[tuple[int, tuple[object, ...]], tuple[pa.Array, pa.Array]] = {}

    @contextlib.contextmanager
    def only(self, rows: pa.Array) -> Iterator[None]:
        """Compute values for ``rows`` only: other rows read null, so the costly kernels skip them
        (worth it when few rows are needed, e.g. a when branch or a coalesce fallback)."""
        outer = self.needed
        rows = rows if outer is None else pc.and_(outer, rows)
        few = rows.true_count * 2 < self.frame.n
        self.needed = rows if few else outer
        try:
            yield
        finally:
            self.needed = outer

    # -- parse steps ---------------------------------------------------------------------------
    def run_step(self, step: Step) -> None:
        frame = self.frame
        source = as_text(self.value(step.source, None, step.name))
        if isinstance(step, RegexStep):
            self._regex(step, source)
        elif isinstance(step, KvStep):
            self._kv(step, source)
        else:
            frame.captures[f"{step.name}.value"] = source
            frame.matched[step.name] = pc.is_valid(source)
        frame.matched.setdefault(step.name, constant(False, pa.bool_(), frame.n))

    def _regex(self, step: RegexStep, source: pa.Array) -> None:
        # A row takes the first pattern it matches. Capturing groups costs RE2 several times what
        # matching does, on every row it is tried on, so the first pattern (the common case)
        # captures over all rows, and the others only from the rows it left (_capture_rest).
        frame = self.frame
        first, *others = step.patterns
        found = extract(source, first)
        matched = pc.is_valid(found[0])
        groups = {name: [column] for name, column in zip(group_names(first), found, strict=True)}
        if others:
            left = pc.and_not(pc.is_valid(source), matched)
            at = pc.cast(pc.indices_nonzero(left), pa.int64())
            columns, also = _capture_rest(others, source.filter(left), at, frame.n)
            for name, column in columns.items():
                groups.setdefault(name, []).extend([column] if column.null_count < frame.n else [])
            matched = pc.or_(matched, also)
        for name, parts in groups.items():
            value = pa.nulls(frame.n, pa.string()) if not parts else pc.coalesce(*parts) if len(parts) > 1 else parts[0]
            # "" means the group took no part in the row's match.
            frame.captures[f"{step.name}.{name}"] = _blank_to_null(value)
        frame.matched[step.name] = matched

    def _kv(self, step: KvStep, source: pa.Array) -> None:
        if step.pattern is not None:
            self._kv_pattern(step, step.pattern, source)
            return
        frame = self.frame
        for junk in step.remove:  # replaced by the separator, and only in the records that have it
            has = pc.fill_null(pc.match_substring(source, junk), FALSE)
            if has.true_count > 0:
                cleaned = pc.replace_substring(kept_where(has, source), junk, step.separator)
                source = pc.coalesce(cleaned, source)
        tokens = pc.split_pattern(source, step.separator)
        flat = pc.list_flatten(tokens)
        parents = pc.cast(pc.list_parent_indices(tokens), pa.int64())
        any_key = constant(False, pa.bool_(), frame.n)
        for key in step.keys:
            prefix = f"{key}="
            hit = pc.starts_with(flat, prefix)
            if hit.true_count == 0:
                frame.captures[f"{step.name}.{key}"] = pa.nulls(frame.n, pa.string())
                continue
            at = pc.indices_nonzero(hit)  # the tokens that hold the key, in order
            rows, values = parents.take(at), flat.take(at)
            if len(rows) > 1:  # a key twice in one record: the first one counts
                first = pc.not_equal(rows.slice(1), rows.slice(0, len(rows) - 1))
                if first.false_count:
                    keep = pa.concat_arrays([pa.array([True]), first])
                    rows, values = rows.filter(keep), values.filter(keep)
            values = pc.utf8_slice_codeunits(values, len(prefix))
            column = pc.scatter(values, rows, max_index=frame.n - 1)  # null in the records without it
            frame.captures[f"{step.name}.{key}"] = _blank_to_null(column)
            any_key = pc.or_(any_key, pc.is_valid(column))
        frame.matched[step.name] = any_key

    def _kv_pattern(self, step: KvStep, pattern: str, source: pa.Array) -> None:
        frame = self.frame
        any_key = constant(False, pa.bool_(), frame.n)
        for key in step.keys:
            found = pc.extract_regex(source, pattern.replace("{key}", key))
            value = _blank_to_null(pc.struct_field(found, "value"))
            frame.captures[f"{step.name}.{key}"] = value
            any_key = pc.or_(any_key, pc.is_valid(found))
        frame.matched[step.name] = any_key

    # -- conditions ----------------------------------------------------------------------------
    def cond(self, cond: Cond) -> pa.Array:
        """A boolean column, false where the condition does not hold or cannot be decided."""
        if isinstance(cond, Matched):
            return self.frame.matched[cond.step]
        if isinstance(cond, Test):
            return test(self.value(cond.source, None, "where"), cond.op, cond.operand, cond.ignore_case)
        if isinstance(cond, NotOf):
            return pc.invert(self.cond(cond.cond))
        parts = [self.cond(c) for c in cond.conds]
        combine = pc.and_ if isinstance(cond, AllOf) else pc.or_
        out = parts[0]
        for part in parts[1:]:
            out = combine(out, part)
        assert isinstance(cond, AllOf | AnyOf)
        return out

    # -- values ---------------------------------------------------------------------------------
    def ref(self, name: str) -> pa.Array:
        frame = self.frame
        if name == "$line":
            return frame.line
        if name == "$tag":
            return constant(frame.tag, pa.string(), frame.n) if frame.tags is None else frame.tags
        if name == "$time":
            return frame.ref_ms
        values = frame.captures[name[1:]] if name.startswith("$") else frame.field(name)
        if self.needed is None:
            return values
        key = (id(values), _rows_key(self.needed))
        known = self._masked.get(key)
        if known is None:  # the column is kept with its masked copy, so its id stays its own
            known = self._masked[key] = (values, kept_where(self.needed, values))
        return known[1]

    def _cast(self, values: pa.Array, target: pa.DataType | None, label: str) -> pa.Array:
        if target is None:
            return values
        out, bad = cast_column(values, target)
        self.faults.add(bad, f"{label}: {{value}} is not a valid {target}", values)
        return out

    def value(self, spec: Value, target: pa.DataType | None, label: str) -> pa.Array:
        """The column of ``spec``, cast to ``target`` when one is given."""
        if isinstance(spec, Const):
            return self._const(spec, target)
        if isinstance(spec, Ref):
            return self._cast(self.ref(spec.name), target, label)
        if isinstance(spec, Coalesce | When):
            return (
                self._coalesce(spec, target, label) if isinstance(spec, Coalesce) else self._when(spec, target, label)
            )
        if isinstance(spec, Concat | PyFunc):
            return self._cast(
                self._concat(spec, label) if isinstance(spec, Concat) else self._python(spec), target, label
            )
        if isinstance(spec, Items):
            assert target is not None and pa.types.is_list(target)
            return self._zip(spec, target, label) if spec.zip else self._one_item(spec, target, label)
        return self._apply(spec, target, label)

    def _coalesce(self, spec: Coalesce, target: pa.DataType | None, label: str) -> pa.Array:
        options = [self.value(spec.options[0], target, label)]
        missing = pc.is_null(options[0])
        for option in spec.options[1:]:
            with self.only(missing):  # a later option matters only where the earlier ones are null
                options.append(self.value(option, target, label))
            missing = pc.and_(missing, pc.is_null(options[-1]))
        options = options if target is not None else _unify(options)
        return options[0] if len(options) == 1 else pc.coalesce(*options)

    def _const(self, spec: Const, target: pa.DataType | None) -> pa.Array:
        if spec.value is None:
            return pa.nulls(self.frame.n, target or pa.null())
        return constant(spec.value, target if target is not None else pa.scalar(spec.value).type, self.frame.n)

    def _python(self, spec: PyFunc) -> pa.Array:
        produced = self.functions[spec.name](self.frame)
        return produced if isinstance(produced, pa.Array) else to_array(list(produced))

    def _concat(self, spec: Concat, label: str) -> pa.Array:
        """Present parts joined by ``sep``, absent ones skipped; null where every part is absent.
        (Arrow's own null_handling="skip" drops leading all-null rows from its result.)"""
        parts = [p for p in (as_text(self.value(p, None, label)) for p in spec.parts) if p.null_count < self.frame.n]
        if not parts:
            return pa.nulls(self.frame.n, pa.string())
        out = parts[0]
        for part in parts[1:]:
            out = pc.coalesce(pc.binary_join_element_wise(out, part, spec.sep), out, part)
        return out

    def _apply(self, spec: Apply, target: pa.DataType | None, label: str) -> pa.Array:
        ops = spec.ops
        source = self.value(spec.source, None, label)
        out = apply_ops(source, ops, self.frame.ref_ms)
        if ops.time:
            unparsed = pc.and_(pc.is_valid(source), pc.is_null(out))
            self.faults.add(unparsed, f"{label}: cannot read {{value}} as a time ({', '.join(ops.time)})", source)
        out = self._cast(out, target, label)
        if ops.default is not None:
            default = pa.scalar(ops.default, out.type) if not pa.types.is_null(out.type) else pa.scalar(ops.default)
            out = pc.fill_null(out if not pa.types.is_null(out.type) else pa.nulls(len(out), default.type), default)
        return out

    def _when(self, spec: When, target: pa.DataType | None, label: str) -> pa.Array:
        conds = [self.cond(c) for c, _ in spec.cases]
        chosen = self._chosen(conds)
        branches = [v for _, v in spec.cases]
        values: list[pa.Array] = []
        for branch, picked in zip([*branches, spec.otherwise], chosen, strict=True):
            if branch is None:
                values.append(pa.nulls(self.frame.n, target or pa.null()))
                continue
            start = len(self.faults.items)
            with self.only(picked):
                values.append(self.value(branch, target, label))
            self._restrict(start, picked)  # a branch's cast failure only counts where it was chosen
        if target is None:
            values = _unify(values)
        return pc.case_when(pc.make_struct(*conds), *values)

    def _restrict(self, start: int, mask: pa.Array) -> None:
        for i in range(start, len(self.faults.items)):
            bad, message, shown = self.faults.items[i]
            self.faults.items[i] = (pc.and_(bad, mask), message, shown)

    def _chosen(self, conds: list[pa.Array]) -> list[pa.Array]:
        taken = constant(False, pa.bool_(), self.frame.n)
        out = []
        for cond in conds:
            out.append(pc.and_(cond, pc.invert(taken)))
            taken = pc.or_(taken, cond)
        out.append(pc.invert(taken))
        return out

    def _any(self, masks: list[pa.Array]) -> pa.Array:
        out = constant(False, pa.bool_(), self.frame.n)
        for mask in masks:
            out = pc.or_(out, mask)
        return out

    def _children(self, spec: Items, item_type: pa.StructType, label: str, *, lists: bool) -> dict[AttrPath, pa.Array]:
        out: dict[AttrPath, pa.Array] = {}
        for name, child in spec.children.items():
            path = tuple(name.split("."))
            leaf = type_at(item_type, path)
            assert leaf is not None  # the compiler checked every child path
            out[path] = self.value(child, pa.list_(leaf) if lists else leaf, f"{label}.{name}")
        return out

    def _one_item(self, spec: Items, target: pa.ListType, label: str) -> pa.Array:
        item_type = target.value_type
        children = self._children(spec, item_type, label, lists=False)
        present = self._any([pc.is_valid(c) for c in children.values()])
        items = struct_of(item_type, children, self.frame.n).filter(present)
        offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(pc.cast(present, pa.int32()))])
        return pa.ListArray.from_arrays(offsets, items, mask=pc.invert(present)).cast(target)

    def _zip(self, spec: Items, target: pa.ListType, label: str) -> pa.Array:
        item_type = target.value_type
        lists = self._children(spec, item_type, label, lists=True)
        first = next(iter(lists.values()))
        lengths = pc.fill_null(pc.list_value_length(first), 0)
        flat: dict[AttrPath, pa.Array] = {}
        for path, column in lists.items():
            same = column is first or pc.all(pc.equal(pc.fill_null(pc.list_value_length(column), 0), lengths)).as_py()
            flat[path] = pc.list_flatten(column if same else _fit(column, lengths))
        total = pc.sum(lengths).as_py() or 0
        items = struct_of(item_type, flat, total)
        offsets = pc.cast(
            pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(pc.cast(lengths, pa.int64()))]), pa.int32()
        )
        return pa.ListArray.from_arrays(offsets, items, mask=pc.is_null(first)).cast(target)


def _fit(column: pa.Array, lengths: pa.Array) -> pa.Array:
    """Pad or cut each list of ``column`` to ``lengths`` (parallel lists of unequal length)."""
    rows = column.to_pylist()
    fitted = [((r or []) + [None] * n)[:n] for r, n in zip(rows, lengths.to_pylist(), strict=True)]
    return pa.array(fitted, column.type)
