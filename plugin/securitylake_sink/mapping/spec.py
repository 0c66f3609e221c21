"""The rule language as typed values: the frozen specs a rule document (see ``rules/README.md``)
is parsed into by ``mapping.parse``; the OCSF schema is checked when a rule is compiled."""

from __future__ import annotations

__all__ = [
    "DECODERS",
    "SPECIAL_REFS",
    "TESTS",
    "TIME_FORMATS",
    "AllOf",
    "AnyOf",
    "Apply",
    "Coalesce",
    "Concat",
    "Cond",
    "Const",
    "EventSpec",
    "Items",
    "KvStep",
    "Matched",
    "NotOf",
    "Ops",
    "PyFunc",
    "Ref",
    "RegexStep",
    "Rule",
    "Step",
    "Test",
    "Value",
    "ValueStep",
    "When",
]

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from securitylake_sink.mapping.rulefile import DocPath, RuleSource

SPECIAL_REFS = ("$line", "$tag", "$time")
TIME_FORMATS = ("auto", "epoch", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns", "rfc3339", "rfc3164", "clf")
TESTS = ("equals", "in", "matches", "exists", "starts_with", "contains", "gt", "gte", "lt", "lte")
DECODERS = ("hex", "audit")


@dataclass(frozen=True)
class Ops:
    """Transforms applied, in this order, to a value: see ``rules/README.md``."""

    each: str | None = None
    index: int | None = None
    after: str | None = None
    before: str | None = None
    split: str | None = None
    trim: str | None = None  # "" = whitespace
    null_if: tuple[Any, ...] = ()
    replace: tuple[str, str] | None = None
    case: str | None = None
    decode: str | None = None
    int_base: int | None = None
    scale: float | None = None
    div: int | None = None
    mod: int | None = None
    basename: bool = False
    join: str | None = None
    map: Mapping[str, Any] | None = None
    ignore_case: bool = False
    map_default: Any = None
    time: tuple[str, ...] = ()
    tz_minutes: int = 0
    default: Any = None


@dataclass(frozen=True)
class Const:
    value: Any
    at: DocPath


@dataclass(frozen=True)
class Ref:
    name: str  # $line, $tag, $time, $<step>.<group>, or a record field path
    at: DocPath


@dataclass(frozen=True)
class Coalesce:
    options: tuple[Value, ...]
    at: DocPath


@dataclass(frozen=True)
class When:
    cases: tuple[tuple[Cond, Value], ...]
    otherwise: Value | None
    at: DocPath


@dataclass(frozen=True)
class Concat:
    parts: tuple[Value, ...]
    sep: str
    at: DocPath


@dataclass(frozen=True)
class Items:
    children: Mapping[str, Value]
    zip: bool  # False: one item from scalar values; True: parallel lists zipped into items
    at: DocPath


@dataclass(frozen=True)
class PyFunc:
    name: str
    at: DocPath


@dataclass(frozen=True)
class Apply:
    source: Value
    ops: Ops
    at: DocPath


Value = Const | Ref | Coalesce | When | Concat | Items | PyFunc | Apply


@dataclass(frozen=True)
class Matched:
    step: str
    at: DocPath


@dataclass(frozen=True)
class Test:
    source: Value
    op: str
    operand: Any
    ignore_case: bool
    at: DocPath


@dataclass(frozen=True)
class AllOf:
    conds: tuple[Cond, ...]
    at: DocPath


@dataclass(frozen=True)
class AnyOf:
    conds: tuple[Cond, ...]
    at: DocPath


@dataclass(frozen=True)
class NotOf:
    cond: Cond
    at: DocPath


Cond = Matched | Test | AllOf | AnyOf | NotOf


@dataclass(frozen=True)
class RegexStep:
    name: str
    source: Value
    patterns: tuple[str, ...]
    at: DocPath


@dataclass(frozen=True)
class KvStep:
    name: str
    source: Value
    keys: tuple[str, ...]
    separator: str
    remove: tuple[str, ...]
    pattern: str | None  # a regex per key ({key} replaced, group "value"), e.g. XML <Data Name=...>
    at: DocPath


@dataclass(frozen=True)
class ValueStep:
    """A named value other steps and attributes read as ``$<name>.value``."""

    name: str
    source: Value
    at: DocPath


Step = RegexStep | KvStep | ValueStep


@dataclass(frozen=True)
class EventSpec:
    class_uid: int
    where: Cond | None
    attributes: Mapping[str, Value]
    at: DocPath


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    versions: tuple[str, ...]
    tags: tuple[str, ...]
    line_fields: tuple[str, ...]
    decode: str | None
    steps: tuple[Step, ...]
    where: Cond | None
    events: tuple[EventSpec, ...]
    source: RuleSource = field(repr=False, compare=False)
