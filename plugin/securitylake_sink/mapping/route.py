"""Finding rules and routing records to them: built-in rule names and rule files, Fluent Bit
``Match`` globs, the order of ``mappings``, OCSF pass-through, and ``mappings_fallback``."""

from __future__ import annotations

__all__ = [
    "FALLBACKS",
    "OCSF",
    "Binding",
    "Routing",
    "TagOutcome",
    "builtin_rule_names",
    "compile_named",
    "load_rule",
    "resolve_rule",
    "route",
    "tag_matcher",
]

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from securitylake_sink.mapping.compiler import CompiledRule, compile_rule
from securitylake_sink.mapping.engine import ClassRows, Outcome, apply_rule
from securitylake_sink.mapping.evaluate import PythonFunction
from securitylake_sink.mapping.functions import registered_functions
from securitylake_sink.mapping.parse import parse_rule
from securitylake_sink.mapping.passthrough import map_ocsf
from securitylake_sink.mapping.rulefile import RuleError, read_rule_source
from securitylake_sink.mapping.spec import Rule
from securitylake_sink.ocsf.schema import OcsfSchema

OCSF = "ocsf"  # the pass-through for records that carry class_uid; not a rule file
FALLBACKS = ("dead_letter", "base_event", "drop")
_RULES_DIR = "rules"


@functools.cache
def builtin_rule_names() -> tuple[str, ...]:
    """Names of the rule files shipped in the package, sorted."""
    folder = resources.files("securitylake_sink.mapping").joinpath(_RULES_DIR)
    return tuple(sorted(e.name.removesuffix(".yaml") for e in folder.iterdir() if e.name.endswith(".yaml")))


def resolve_rule(value: str, base_dir: Path | None = None) -> str:
    """A built-in name (or ``ocsf``) as is, a rule file as its absolute path; ValueError otherwise."""
    if value == OCSF or value in builtin_rule_names():
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return str(path.resolve())
    names = ", ".join(repr(n) for n in (OCSF, *builtin_rule_names()))
    raise ValueError(f"unknown rule {value!r}: neither a built-in rule ({names}) nor a .yaml rule file at {path}")


def load_rule(name_or_path: str) -> Rule:
    """The parsed rule named (built-in) or at a path; RuleError when it cannot be read or parsed."""
    if name_or_path in builtin_rule_names():
        res = resources.files("securitylake_sink.mapping").joinpath(_RULES_DIR, f"{name_or_path}.yaml")
        source = read_rule_source(res.read_text(encoding="utf-8"), f"{name_or_path}.yaml (built-in)")
    else:
        try:
            text = Path(name_or_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"cannot read rule file {name_or_path}: {exc.strerror}") from None
        source = read_rule_source(text, name_or_path)
    return parse_rule(source)


def compile_named(
    name_or_path: str, schema: OcsfSchema, functions: Mapping[str, PythonFunction] | None = None
) -> CompiledRule:
    """Load and compile a rule for ``schema``'s version (registered Python functions available)."""
    return compile_rule(load_rule(name_or_path), schema, registered_functions() if functions is None else functions)


def tag_matcher(pattern: str) -> Callable[[str], bool]:
    """Fluent Bit ``Match`` semantics: ``*`` matches any run of characters, nothing else is special."""
    regex = re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")
    return lambda tag: regex.match(tag) is not None


@dataclass(frozen=True)
class Binding:
    """One entry of ``mappings``: the tags it applies to and the rule (or ``ocsf``)."""

    globs: tuple[str, ...]
    rule: CompiledRule | None  # None: the ocsf pass-through
    matchers: tuple[Callable[[str], bool], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matchers", tuple(tag_matcher(g) for g in self.globs))

    @property
    def name(self) -> str:
        return self.rule.name if self.rule is not None else OCSF

    def matches(self, tag: str) -> bool:
        return any(m(tag) for m in self.matchers)


@dataclass
class TagOutcome:
    """What became of the records of one tag: rows are indices into the records given."""

    mapped: list[tuple[str, ClassRows]] = field(default_factory=list)  # (rule name, rows)
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # row → (rule name, reason)
    dropped: list[int] = field(default_factory=list)


def _collect(out: TagOutcome, name: str, got: Outcome, rows: Sequence[int]) -> list[int]:
    """Add a rule's outcome on ``rows`` to ``out``; the rows it declined."""
    index = pa.array(rows, pa.int64())
    for part in got.mapped:
        out.mapped.append((name, ClassRows(part.class_uid, part.batch, index.take(part.rows))))
    for row, reason in got.failed.items():
        out.failed[rows[row]] = (name, reason)
    return [rows[i] for i in got.declined]


@dataclass(frozen=True)
class Routing:
    """What decides where a record goes: the bindings in order, then pass-through, then the fallback."""

    bindings: tuple[Binding, ...]
    schema: OcsfSchema
    fallback: str
    base_event: CompiledRule | None

    def key(self, tag: str) -> tuple[object, ...]:
        """What ``route`` does with ``tag``'s records: tags with equal keys are routed alike, so
        their records can be mapped together. A rule that calls Python functions (which see the
        frame's tag) keeps its tags apart."""
        rules = [b.rule for b in self.bindings if b.matches(tag)]
        if self.base_event is not None:
            rules.append(self.base_event)
        separate = any(rule is not None and rule.calls_python for rule in rules)
        return (*(id(rule) for rule in rules), tag) if separate else tuple(id(rule) for rule in rules)


@dataclass(frozen=True)
class _TagBatch:
    tag: str | Sequence[str]
    records: Sequence[Mapping[str, Any]]
    ref_ms: Sequence[int]
    schema: OcsfSchema


def route(
    tag: str | Sequence[str], records: Sequence[Mapping[str, Any]], ref_ms: Sequence[int], routing: Routing
) -> TagOutcome:
    """Every record ends mapped, failed or dropped, exactly once. ``tag`` is the records' tag, or
    each record's (tags of one ``Routing.key``)."""
    out = TagOutcome()
    if not records:
        return out
    first = tag if isinstance(tag, str) else tag[0]
    batch = _TagBatch(tag, records, ref_ms, routing.schema)
    left = list(range(len(records)))
    tried: list[str] = []
    for binding in routing.bindings:
        if not left or not binding.matches(first):
            continue
        tried.append(binding.name)
        left = _step(out, binding.rule, binding.name, batch, left)
    carrying = [i for i in left if "class_uid" in records[i]]
    if carrying and OCSF not in tried:
        left = [i for i in left if "class_uid" not in records[i]] + _step(out, None, OCSF, batch, carrying)
    if not left:
        return out
    base_event = routing.base_event
    if routing.fallback == "drop":
        out.dropped.extend(left)
    elif routing.fallback == "base_event" and base_event is not None:
        for row in _step(out, base_event, base_event.name, batch, left):
            out.failed[row] = (base_event.name, "the base_event rule did not take the record")
    else:
        does = "does" if len(tried) == 1 else "do"
        why = f"{', '.join(tried)} {does} not take it" if tried else "no rule is bound to its tag"
        reason = f"mappings: {why}, and it carries no class_uid (mappings_fallback is dead_letter)"
        for row in left:
            out.failed[row] = (tried[-1] if tried else "", reason)
    return out


def _step(out: TagOutcome, rule: CompiledRule | None, name: str, batch: _TagBatch, rows: list[int]) -> list[int]:
    """Run one rule (None: the OCSF pass-through) over ``rows``; the rows it declined."""
    picked = [batch.records[i] for i in rows]
    times = [batch.ref_ms[i] for i in rows]
    if rule is None:
        carrying = [i for i, r in enumerate(picked) if "class_uid" in r]
        got = map_ocsf([picked[i] for i in carrying], [times[i] for i in carrying], batch.schema)
        declined = [rows[i] for i, r in enumerate(picked) if "class_uid" not in r]
        return _collect(out, name, got, [rows[i] for i in carrying]) + declined
    tags = batch.tag if isinstance(batch.tag, str) else [batch.tag[i] for i in rows]
    got = apply_rule(rule, batch.schema, picked, tags, pa.array(times, pa.int64()))
    return _collect(out, name, got, rows)
