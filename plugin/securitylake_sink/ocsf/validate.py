"""Columnar validation of OCSF event batches against the bundled schema: required attributes (also
inside present objects, profile attributes included once their object is present), enum ids and
string enum values (``http_method``), objects' ``at_least_one`` / ``just_one`` constraints (the OCSF
server's JSON schema, and so AWS's validation tool, enforces them), and class/category/type/names/
metadata.version consistent; each failing row gets its first reason."""

from __future__ import annotations

__all__ = ["Verdict", "attribute_at", "object_attributes", "object_constraints", "validate"]

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.columnar import FALSE, row_numbers, scalar_of
from securitylake_sink.ocsf.schema import OcsfSchema

Attrs = Mapping[str, Mapping[str, Any]]
ROW = pa.int64()


def object_attributes(schema: OcsfSchema, name: str) -> Attrs:
    """The resolved attributes of OCSF object ``name`` ({} when the version lacks it)."""
    objects: Mapping[str, Mapping[str, Any]] = schema._objects  # schema.py exposes no object look-up
    obj = objects.get(name)
    return obj["attributes"] if obj is not None else {}


def object_constraints(schema: OcsfSchema, name: str) -> Mapping[str, list[str]]:
    """The ``constraints`` of OCSF object ``name`` (``at_least_one`` / ``just_one`` → names)."""
    objects: Mapping[str, Mapping[str, Any]] = schema._objects
    obj = objects.get(name)
    constraints = obj.get("constraints") if obj is not None else None
    if not isinstance(constraints, Mapping):
        return {}
    return {str(k): [str(n) for n in v] for k, v in constraints.items() if isinstance(v, list)}


def attribute_at(schema: OcsfSchema, class_uid: int, path: tuple[str, ...]) -> Mapping[str, Any] | None:
    """The attribute definition at ``path`` in the class (through objects), or None."""
    attrs: Attrs = schema.class_info(class_uid).attributes
    found: Mapping[str, Any] | None = None
    for i, part in enumerate(path):
        found = attrs.get(part)
        if found is None:
            return None
        if i < len(path) - 1:
            if found.get("type") != "object_t":
                return None
            attrs = object_attributes(schema, str(found.get("object_type", "")))
    return found


def _str_keys(attr: Mapping[str, Any]) -> pa.Array | None:
    enum = attr.get("enum")
    if not isinstance(enum, Mapping) or attr.get("type") not in ("string_t", None):
        return None
    return pa.array(sorted(str(k) for k in enum), pa.string())


def _int_keys(attr: Mapping[str, Any]) -> pa.Array | None:
    enum = attr.get("enum")
    if not isinstance(enum, Mapping):
        return None
    try:
        return pa.array(sorted(int(k) for k in enum), pa.int64())
    except ValueError:
        return None


_KEYS: dict[int, tuple[Mapping[str, Any], pa.Array | None, pa.Array | None]] = {}


def _enum_keys(attr: Mapping[str, Any]) -> tuple[pa.Array | None, pa.Array | None]:
    """(int ids, string values) of ``attr``'s enum, built once per attribute."""
    cached = _KEYS.get(id(attr))
    if cached is None or cached[0] is not attr:
        cached = _KEYS[id(attr)] = (attr, _int_keys(attr), _str_keys(attr))
    return cached[1], cached[2]


@dataclass(frozen=True)
class Verdict:
    """Which rows failed and why (the first reason found per row)."""

    bad: pa.Array  # boolean, one per row
    reasons: Mapping[int, str]

    @property
    def ok(self) -> bool:
        return not self.reasons


class _Checker:
    def __init__(self, schema: OcsfSchema, n: int) -> None:
        self.schema = schema
        self.n = n
        self.fails: list[tuple[pa.Array, str, pa.Array | None]] = []

    def fail(self, rows: pa.Array, message: str, values: pa.Array | None = None) -> None:
        if len(rows):
            self.fails.append((rows, message, values))

    def walk(
        self,
        arrays: Mapping[str, pa.Array],
        attrs: Attrs,
        rows: pa.Array,
        present: pa.Array | None,
        label: str,
        *,
        full: pa.Schema | pa.StructType,
    ) -> None:
        """Check the fields of one object (or the event) on the rows where it is ``present``;
        ``full`` is its type in the class schema (``arrays`` may be a pruning of it)."""
        for name, attr in attrs.items():
            column = arrays.get(name)
            where = f"{label}.{name}" if label else name
            # An attribute cut from the Arrow schema (objects nest 3 deep) cannot be checked; one
            # pruned away is null on every row. A profile's attribute is required only with its
            # profile: its values are still checked.
            required = attr.get("requirement") == "required" and not attr.get("profile")
            if column is None:
                if required and full.get_field_index(name) >= 0:
                    missing = rows if present is None else rows.filter(present)
                    self.fail(missing, f"{where}: required attribute is missing")
                continue
            if required and column.null_count:
                missing = pc.is_null(column) if present is None else pc.and_(present, pc.is_null(column))
                self.fail(rows.filter(missing), f"{where}: required attribute is missing")
            if column.null_count == len(column):
                continue
            index = full.get_field_index(name)
            self.value(column, attr, rows, present, where, full=full.field(index).type if index >= 0 else column.type)

    def value(
        self,
        column: pa.Array,
        attr: Mapping[str, Any],
        rows: pa.Array,
        present: pa.Array | None,
        where: str,
        *,
        full: pa.DataType,
    ) -> None:
        t = column.type
        if pa.types.is_list(t):
            parents = pc.list_parent_indices(column)
            inner = None if present is None else present.take(parents)
            self.value(pc.list_flatten(column), attr, rows.take(parents), inner, f"{where}[]", full=full.value_type)
            return
        if pa.types.is_struct(t) and attr.get("type") == "object_t":
            valid = pc.is_valid(column) if column.null_count else None
            inner = valid if present is None else (present if valid is None else pc.and_(present, valid))
            # flatten merges the struct's validity into its children, as struct_field would, in one call
            given = column.flatten() if column.null_count else [column.field(i) for i in range(t.num_fields)]
            children = {t.field(i).name: given[i] for i in range(t.num_fields)}
            name = str(attr.get("object_type", ""))
            self.walk(children, object_attributes(self.schema, name), rows, inner, where, full=full)
            self.constraints(children, object_constraints(self.schema, name), rows, inner, where)
            return
        ints, strings = _enum_keys(attr)
        if ints is not None and pa.types.is_integer(t):
            message = f"{where}: {{value}} is not an id of its OCSF {self.schema.version} enum"
            self.enum(column, pc.cast(column, ROW), ints, rows, present, message)
        if strings is not None and pa.types.is_string(t):
            message = f"{where}: {{value}} is not a value of its OCSF {self.schema.version} enum"
            self.enum(column, column, strings, rows, present, message)

    def enum(  # noqa: PLR0917
        self, column: pa.Array, looked: pa.Array, keys: pa.Array, rows: pa.Array, present: pa.Array | None, message: str
    ) -> None:
        """Fail the rows (where ``present``) whose value is not among ``keys``."""
        found = pc.index_in(looked, value_set=keys)
        if found.null_count == column.null_count:  # every value is a key (the usual case)
            return
        outside = pc.and_(pc.is_valid(column), pc.is_null(found))
        if present is not None:
            outside = pc.and_(outside, present)
        if outside.true_count > 0:
            self.fail(rows.filter(outside), message, column.filter(outside))

    def constraints(
        self,
        children: Mapping[str, pa.Array],
        constraints: Mapping[str, list[str]],
        rows: pa.Array,
        present: pa.Array | None,
        where: str,
    ) -> None:
        """Check an object's ``at_least_one`` / ``just_one`` on the rows where it is ``present``."""
        for kind, names in constraints.items():
            if kind not in ("at_least_one", "just_one"):
                continue
            given = [child for name in names if (child := children.get(name)) is not None]
            if kind == "at_least_one" and any(child.null_count == 0 for child in given):
                continue  # one of them is on every row
            count: pa.Array | pa.Scalar = pa.scalar(0, ROW)
            for name in names:
                child = children.get(name)
                if child is not None:
                    count = pc.add(count, pc.cast(pc.is_valid(child), ROW))
            if isinstance(count, pa.Scalar):  # none of the names is in the Arrow schema
                count = pa.array([0] * len(rows), ROW)
            if kind == "at_least_one":
                wrong = pc.equal(count, scalar_of(0, ROW))
            else:
                wrong = pc.not_equal(count, scalar_of(1, ROW))
            if present is not None:
                wrong = pc.and_(wrong, present)
            wrong = pc.fill_null(wrong, FALSE)
            if wrong.true_count > 0:
                need = "at least one" if kind == "at_least_one" else "exactly one"
                self.fail(rows.filter(wrong), f"{where}: needs {need} of {', '.join(names)}")

    def verdict(self) -> Verdict:
        reasons: dict[int, str] = {}
        for rows, message, values in self.fails:
            shown = values.to_pylist() if values is not None else [None] * len(rows)
            for row, value in zip(rows.to_pylist(), shown, strict=True):
                reasons.setdefault(row, message.replace("{value}", repr(value)))
        bad = pc.is_in(row_numbers(self.n), value_set=pa.array(sorted(reasons), ROW))
        return Verdict(bad, reasons)


def _column(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else None


def _consistency(checker: _Checker, batch: pa.RecordBatch, class_uid: int, rows: pa.Array) -> None:
    schema = checker.schema
    info = schema.class_info(class_uid)
    get = _column

    def differs(name: str, expected: pa.Array | pa.Scalar, what: str) -> None:
        column = get(batch, name)
        if column is None:
            return
        wrong = pc.fill_null(pc.not_equal(column, expected), FALSE)
        if wrong.true_count > 0:
            checker.fail(rows.filter(wrong), f"{name}: {{value}} {what}", column.filter(wrong))

    differs("class_uid", pa.scalar(class_uid, pa.int32()), f"is not the class of this batch ({class_uid})")
    differs(
        "category_uid",
        pa.scalar(info.category_uid, pa.int32()),
        f"is not the category of class {class_uid} ({info.category_uid})",
    )
    differs("class_name", pa.scalar(info.caption), f"is not the name of class {class_uid} ({info.caption!r})")
    differs("category_name", pa.scalar(info.category_name), f"is not the name of category {info.category_uid}")
    activity = get(batch, "activity_id")
    if activity is not None:
        expected = pc.add(pa.scalar(class_uid * 100, pa.int64()), pc.cast(activity, pa.int64()))
        differs("type_uid", expected, "is not class_uid * 100 + activity_id")
        ids = pa.array(list(info.activities), pa.int64())
        captions = pa.array(list(info.activities.values()), pa.string())
        caption = pc.take(captions, pc.index_in(pc.cast(activity, pa.int64()), value_set=ids))
        names = get(batch, "activity_name")
        if names is not None:  # with activity 99 (Other) the name is the source's own
            other = pc.fill_null(pc.equal(activity, 99), FALSE)
            differs("activity_name", pc.if_else(other, names, caption), "is not the caption of activity_id")
        differs(
            "type_name",
            pc.binary_join_element_wise(pa.scalar(info.caption), caption, ": "),
            "is not '<class>: <activity>'",
        )
    metadata = get(batch, "metadata")
    if metadata is not None and metadata.type.get_field_index("version") >= 0:
        version = pc.struct_field(metadata, "version")
        wrong = pc.fill_null(pc.not_equal(version, schema.version), FALSE)
        checker.fail(
            rows.filter(wrong),
            f"metadata.version: {{value}} is not the batch's OCSF version {schema.version}",
            version.filter(wrong),
        )


def validate(batch: pa.RecordBatch, schema: OcsfSchema, class_uid: int) -> Verdict:
    """Check every row of ``batch`` (in the class's Arrow schema, or a pruning of it: a column or
    field left out is null on every row) against OCSF ``schema``."""
    n = batch.num_rows
    checker = _Checker(schema, n)
    rows = row_numbers(n)
    info = schema.class_info(class_uid)
    arrays = {f.name: batch.column(i) for i, f in enumerate(batch.schema)}
    checker.walk(arrays, info.attributes, rows, None, "", full=schema.arrow_schema(class_uid))
    _consistency(checker, batch, class_uid, rows)
    return checker.verdict()
