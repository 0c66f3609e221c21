"""Compiling a rule against one OCSF version, once: every attribute path resolved to its fixed
Arrow column type, constants, enum ids, references, functions and regexes checked. Every error
names the rule file, the line and the dotted path."""

from __future__ import annotations

__all__ = ["Attr", "CompiledEvent", "CompiledRule", "Sibling", "compile_rule"]

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from securitylake_sink.errors import SchemaError
from securitylake_sink.mapping.assemble import AttrPath, type_at
from securitylake_sink.mapping.columns import UsedFields
from securitylake_sink.mapping.evaluate import PythonFunction
from securitylake_sink.mapping.rulefile import DocPath, RuleError
from securitylake_sink.mapping.spec import (
    AllOf,
    AnyOf,
    Apply,
    Coalesce,
    Concat,
    Cond,
    Const,
    EventSpec,
    Items,
    KvStep,
    Matched,
    NotOf,
    Ops,
    PyFunc,
    Ref,
    RegexStep,
    Rule,
    Step,
    Test,
    Value,
    When,
)
from securitylake_sink.ocsf.schema import ClassInfo, OcsfSchema
from securitylake_sink.ocsf.validate import attribute_at

GROUP = re.compile(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>")
ALWAYS_IDS = (("activity_id",), ("severity_id",))


@dataclass(frozen=True)
class Attr:
    """One attribute a rule sets: its path, value spec, column type and label for errors."""

    path: AttrPath
    spec: Value
    type: pa.DataType
    label: str


@dataclass(frozen=True)
class Sibling:
    """An enum id and the caption column OCSF pairs with it (``activity_id`` → ``activity_name``)."""

    id_path: AttrPath
    name_path: AttrPath
    ids: pa.Array = field(repr=False)
    captions: pa.Array = field(repr=False)


@dataclass(frozen=True)
class CompiledEvent:
    class_uid: int
    info: ClassInfo
    schema: pa.Schema = field(repr=False)
    where: Cond | None
    attrs: tuple[Attr, ...]
    unmapped: tuple[tuple[str, Value], ...]
    siblings: tuple[Sibling, ...]
    profiles: tuple[str, ...]  # OCSF profiles whose attributes the rule sets (metadata.profiles)


@dataclass(frozen=True)
class CompiledRule:
    name: str
    origin: str
    description: str
    versions: tuple[str, ...]
    ocsf_version: str
    tags: tuple[str, ...]
    decode_json: bool
    raw_line: bool
    steps: tuple[Step, ...]
    where: Cond | None
    events: tuple[CompiledEvent, ...]
    used: UsedFields
    functions: Mapping[str, PythonFunction] = field(repr=False)
    calls_python: bool = False  # names a registered Python function (it sees the frame's tag)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(e.class_uid for e in self.events))


def _int_enum(attr: Mapping[str, Any] | None) -> dict[int, str] | None:
    enum = attr.get("enum") if attr else None
    if not isinstance(enum, Mapping):
        return None
    try:
        return {int(k): str(v.get("caption", "")) for k, v in enum.items()}
    except ValueError:
        return None


class _Compiler:
    def __init__(self, rule: Rule, schema: OcsfSchema, functions: Mapping[str, PythonFunction]) -> None:
        self.rule = rule
        self.schema = schema
        self.functions = functions
        self.groups: dict[str, set[str]] = {}
        self.fields: dict[str, None] = {}
        self.calls_python = False

    def fail(self, at: DocPath, message: str) -> RuleError:
        return self.rule.source.error(at, message)

    def _regex(self, pattern: str, at: DocPath, *, named: bool) -> set[str]:
        names = set(GROUP.findall(pattern))
        if named and not names:
            raise self.fail(at, f"regex {pattern!r} has no named group; write (?P<name>...)")
        try:
            if named:
                pc.extract_regex(pa.array([], pa.string()), pattern)
            else:
                pc.match_substring_regex(pa.array([], pa.string()), pattern)
        except pa.ArrowInvalid as exc:
            text = str(exc)
            if "unnamed groups" in text:
                text = "it has an unnamed group; write (?:...) for a group that captures nothing"
            raise self.fail(at, f"bad regex {pattern!r}: {text}") from None
        return names

    # -- references, values, conditions -----------------------------------------------------
    def ref(self, ref: Ref) -> None:
        name = ref.name
        if name in ("$line", "$tag", "$time"):
            return
        if name.startswith("$"):
            step, _, group = name[1:].partition(".")
            if step not in self.groups:
                known = ", ".join(self.groups) or "none defined before this point"
                raise self.fail(ref.at, f"{name!r} refers to no parse step {step!r} (steps: {known})")
            if group not in self.groups[step]:
                close = difflib.get_close_matches(group, sorted(self.groups[step]), n=1)
                hint = f" (did you mean ${step}.{close[0]}?)" if close else ""
                raise self.fail(ref.at, f"parse step {step!r} has no group {group!r}{hint}")
            return
        self.fields[name] = None

    def scalar(
        self, value: Any, target: pa.DataType | None, enum: Mapping[int, str] | None, at: DocPath, label: str
    ) -> None:
        if value is None or target is None:
            return
        if pa.types.is_list(target) or pa.types.is_struct(target):
            raise self.fail(at, f"{label} is a {target}; a constant cannot fill it")
        try:
            pa.scalar(value, target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
            raise self.fail(at, f"wrong type: {value!r} is not a {target} (the type of {label})") from None
        if enum is not None and isinstance(value, int) and value not in enum:
            ids = ", ".join(f"{k} {v}" for k, v in sorted(enum.items()))
            raise self.fail(at, f"{value} is not an id of {label} in OCSF {self.schema.version} ({ids})")

    def value(self, spec: Value, target: pa.DataType | None, label: str, enum: Mapping[int, str] | None = None) -> None:
        is_list_of_objects = target is not None and pa.types.is_list(target) and pa.types.is_struct(target.value_type)
        if is_list_of_objects and not isinstance(spec, Items | Const):
            raise self.fail(spec.at, f"{label} is a list of objects: give its fields with items: or zip:")
        if target is not None and pa.types.is_struct(target):
            raise self.fail(spec.at, f"{label} is an object: set its attributes ({label}.<name>) instead")
        if isinstance(spec, Const):
            self.scalar(spec.value, target, enum, spec.at, label)
        elif isinstance(spec, Ref):
            self.ref(spec)
        elif isinstance(spec, Coalesce | When | Concat):
            self.branches(spec, target, label, enum)
        elif isinstance(spec, Items):
            self.items(spec, target, label)
        elif isinstance(spec, PyFunc):
            self.calls_python = True
            if spec.name not in self.functions:
                known = ", ".join(sorted(self.functions)) or "none"
                raise self.fail(spec.at, f"no Python function is registered as {spec.name!r} (registered: {known})")
        else:
            self.apply(spec, target, label, enum)

    def branches(
        self, spec: Coalesce | When | Concat, target: pa.DataType | None, label: str, enum: Mapping[int, str] | None
    ) -> None:
        """The values a coalesce, a when or a concat is made of."""
        if isinstance(spec, Coalesce):
            for option in spec.options:
                self.value(option, target, label, enum)
        elif isinstance(spec, When):
            for cond, branch in spec.cases:
                self.cond(cond)
                self.value(branch, target, label, enum)
            if spec.otherwise is not None:
                self.value(spec.otherwise, target, label, enum)
        else:
            for part in spec.parts:
                self.value(part, None, label)

    def items(self, spec: Items, target: pa.DataType | None, label: str) -> None:
        if target is None or not pa.types.is_list(target) or not pa.types.is_struct(target.value_type):
            raise self.fail(spec.at, f"items: and zip: fill a list of objects; {label} is a {target}")
        for name, child in spec.children.items():
            leaf = type_at(target.value_type, tuple(name.split(".")))
            if leaf is None:
                names = [f.name for f in target.value_type]
                close = difflib.get_close_matches(name.split(".")[0], names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail((*spec.at, name), f"unknown attribute {label}[].{name}{hint}")
            self.value(child, pa.list_(leaf) if spec.zip else leaf, f"{label}[].{name}")

    def apply(self, spec: Apply, target: pa.DataType | None, label: str, enum: Mapping[int, str] | None) -> None:
        ops = spec.ops
        self.value(spec.source, None, label)
        if ops.replace:
            try:
                pc.replace_substring_regex(pa.array([], pa.string()), ops.replace[0], ops.replace[1])
            except pa.ArrowInvalid as exc:
                raise self.fail((*spec.at, "replace"), f"bad regex {ops.replace[0]!r}: {exc}") from None
        if ops.map is not None:
            kinds = {type(v) for v in ops.map.values() if v is not None}
            if len(kinds) > 1:
                raise self.fail((*spec.at, "map"), "results of a map must all be of one type")
            for key, result in ops.map.items():
                self.scalar(result, target, enum, (*spec.at, "map", key), label)
            self.scalar(ops.map_default, target, enum, (*spec.at, "map_default"), label)
        if ops.time and target is not None and not pa.types.is_integer(target) and not pa.types.is_timestamp(target):
            raise self.fail((*spec.at, "time"), f"a time gives epoch milliseconds; {label} is a {target}")
        self.scalar(ops.default, target, enum, (*spec.at, "default"), label)

    def cond(self, cond: Cond) -> None:
        if isinstance(cond, Matched):
            if cond.step not in self.groups:
                raise self.fail(cond.at, f"no parse step {cond.step!r} (steps: {', '.join(self.groups) or 'none'})")
        elif isinstance(cond, Test):
            self.value(cond.source, None, "where")
            if cond.op == "matches":
                self._regex(str(cond.operand), (*cond.at, "matches"), named=False)
        elif isinstance(cond, NotOf):
            self.cond(cond.cond)
        else:
            assert isinstance(cond, AllOf | AnyOf)
            for part in cond.conds:
                self.cond(part)

    # -- steps and events ------------------------------------------------------------------
    def step(self, step: Step) -> None:
        self.value(step.source, None, f"parse {step.name}")
        if isinstance(step, RegexStep):
            names: set[str] = set()
            for i, pattern in enumerate(step.patterns):
                names |= self._regex(
                    pattern, (*step.at, "regex", i) if len(step.patterns) > 1 else (*step.at, "regex"), named=True
                )
            self.groups[step.name] = names
        elif isinstance(step, KvStep):
            if step.pattern is not None:
                self._regex(step.pattern.replace("{key}", step.keys[0]), (*step.at, "kv", "pattern"), named=True)
            self.groups[step.name] = set(step.keys)
        else:
            self.groups[step.name] = {"value"}

    def event(self, event: EventSpec) -> CompiledEvent:
        schema = self.schema
        try:
            info = schema.class_info(event.class_uid)
        except SchemaError as exc:
            raise self.fail((*event.at, "class_uid"), str(exc)) from None
        arrow = schema.arrow_schema(event.class_uid)
        attrs: list[Attr] = []
        unmapped: list[tuple[str, Value]] = []
        where = event.where
        if where is not None:
            self.cond(where)
        for name, spec in event.attributes.items():
            if isinstance(spec, Const) and spec.value is None:
                continue  # "attr: null" unsets a shared attribute (the class may not even have it)
            if name.startswith("unmapped."):
                self.value(spec, pa.string(), name)
                unmapped.append((name.removeprefix("unmapped."), spec))
                continue
            attrs.append(self.attribute(event, info, arrow, name, spec))
        assigned = {a.path for a in attrs}
        siblings = self.siblings(event.class_uid, [*assigned, *ALWAYS_IDS])
        profiles = sorted(
            {
                str(p)
                for path in assigned
                if (p := (attribute_at(self.schema, event.class_uid, path[:1]) or {}).get("profile"))
            }
        )
        return CompiledEvent(
            event.class_uid, info, arrow, where, tuple(attrs), tuple(unmapped), siblings, tuple(profiles)
        )

    def attribute(self, event: EventSpec, info: ClassInfo, arrow: pa.Schema, name: str, spec: Value) -> Attr:
        path = tuple(name.split("."))
        target = type_at(arrow, path)
        if target is None or pa.types.is_map(target):
            parent = type_at(arrow, path[:-1]) if len(path) > 1 else arrow
            names = (
                [f.name for f in parent]
                if isinstance(parent, pa.Schema) or (parent is not None and pa.types.is_struct(parent))
                else []
            )
            close = difflib.get_close_matches(path[-1], names, n=1)
            hint = f" (did you mean {'.'.join((*path[:-1], close[0]))!r}?)" if close else ""
            what = "is the map of unmapped fields: write unmapped.<key>" if target is not None else "is no attribute"
            raise self.fail(
                spec.at, f"{name!r} {what} of OCSF {self.schema.version} class {event.class_uid} ({info.caption}){hint}"
            )
        definition = attribute_at(self.schema, event.class_uid, path)
        if (
            definition is not None
            and definition.get("type") == "timestamp_t"
            and not (isinstance(spec, Apply) and spec.ops.time)
        ):
            spec = (
                Apply(spec, Ops(time=("auto",)), spec.at)
                if not isinstance(spec, Apply)
                else replace(spec, ops=replace(spec.ops, time=("auto",)))
            )
        self.value(spec, target, name, _int_enum(definition))
        return Attr(path, spec, target, name)

    def siblings(self, class_uid: int, paths: list[AttrPath]) -> tuple[Sibling, ...]:
        out: dict[AttrPath, Sibling] = {}
        for path in paths:
            definition = attribute_at(self.schema, class_uid, path)
            enum = _int_enum(definition)
            sibling = definition.get("sibling") if definition else None
            if enum is None or not sibling:
                continue
            name_path = (*path[:-1], str(sibling))
            if type_at(self.schema.arrow_schema(class_uid), name_path) is None:
                continue
            ids = pa.array(list(enum), pa.int64())
            out[path] = Sibling(path, name_path, ids, pa.array(list(enum.values()), pa.string()))
        return tuple(out.values())

    def compile(self) -> CompiledRule:
        rule, schema = self.rule, self.schema
        if schema.version not in rule.versions:
            raise self.fail(
                ("ocsf_versions",),
                f"rule {rule.name!r} supports OCSF {', '.join(rule.versions)}, not {schema.version} (ocsf.version)",
            )
        for step in rule.steps:
            self.step(step)
        if rule.where is not None:
            self.cond(rule.where)
        events = tuple(self.event(e) for e in rule.events)
        return CompiledRule(
            name=rule.name,
            origin=rule.source.origin,
            description=rule.description,
            versions=rule.versions,
            ocsf_version=schema.version,
            tags=rule.tags,
            decode_json=rule.decode == "json",
            raw_line=bool(rule.line_fields),
            steps=rule.steps,
            where=rule.where,
            events=events,
            used=UsedFields(tuple(self.fields), rule.line_fields),
            functions=dict(self.functions),
            calls_python=self.calls_python,
        )


def compile_rule(rule: Rule, schema: OcsfSchema, functions: Mapping[str, PythonFunction] | None = None) -> CompiledRule:
    """``rule`` compiled for ``schema``'s OCSF version; RuleError (file, line, path) otherwise."""
    return _Compiler(rule, schema, functions or {}).compile()
