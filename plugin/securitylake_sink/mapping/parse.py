"""Parsing a rule document into the specs of ``mapping.spec``: only the shape is checked here,
and every error names the rule file, the line and the dotted path."""

from __future__ import annotations

__all__ = ["parse_rule"]

import difflib
import re
from collections.abc import Mapping
from typing import Any

from securitylake_sink.mapping.rulefile import DocPath, RuleSource
from securitylake_sink.mapping.spec import (
    DECODERS,
    SPECIAL_REFS,
    TESTS,
    TIME_FORMATS,
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
    ValueStep,
    When,
)

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TZ = re.compile(r"^(?P<sign>[+-])(?P<h>\d\d):?(?P<m>\d\d)$")


class _Parser:
    """Walks one rule document; every error names the file, line and dotted path."""

    def __init__(self, src: RuleSource) -> None:
        self.src = src

    def fail(self, at: DocPath, message: str) -> Exception:
        return self.src.error(at, message)

    def mapping(self, node: Any, at: DocPath, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(node, Mapping):
            raise self.fail(at, f"must be a mapping, got {type(node).__name__}")
        for key in node:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(allowed)}"
                raise self.fail((*at, str(key)), f"unknown key {key!r}{hint}")
        return node

    def string(self, node: Any, at: DocPath) -> str:
        if not isinstance(node, str):
            raise self.fail(at, f"must be a string, got {type(node).__name__}")
        return node

    def strings(self, node: Any, at: DocPath) -> tuple[str, ...]:
        items = node if isinstance(node, list) else [node]
        return tuple(self.string(item, (*at, i) if isinstance(node, list) else at) for i, item in enumerate(items))

    # -- values ------------------------------------------------------------------------------
    def value(self, node: Any, at: DocPath) -> Value:
        if isinstance(node, str) and node.startswith("$"):
            return self.source(node, at)  # "$auth.user" reads a capture; {const: "$x"} is the text
        if node is None or isinstance(node, str | int | float | bool):
            return Const(node, at)
        if isinstance(node, list):
            raise self.fail(at, "a list is not a value; write {from: [a, b]} to take the first present")
        if not isinstance(node, Mapping):
            raise self.fail(at, f"must be a constant or a mapping, got {type(node).__name__}")
        self.mapping(node, at, (*self.KINDS, *self.OP_KEYS))
        kinds = [k for k in self.KINDS if k in node]
        if len(kinds) != 1:
            what = "none" if not kinds else ", ".join(kinds)
            raise self.fail(at, f"needs exactly one of const, from, when, concat, items, zip, python (got {what})")
        base = self._base(kinds[0], node, at)
        ops = self.ops(node, at, kinds[0])
        return base if ops == Ops() else Apply(base, ops, at)

    def _base(self, kind: str, node: Mapping[str, Any], at: DocPath) -> Value:
        here = (*at, kind)
        if kind == "const":
            return Const(node["const"], here)
        if kind == "from":
            return self.source(node["from"], here)
        if kind == "when":
            return self.when(node, at)
        if kind == "concat":
            parts = node["concat"]
            if not isinstance(parts, list) or not parts:
                raise self.fail(here, "must be a non-empty list of values")
            sep = self.string(node.get("sep", ""), (*at, "sep"))
            # Like from: a string part is a field path or $reference; {const: ...} is literal text.
            return Concat(tuple(self.source_item(p, (*here, i)) for i, p in enumerate(parts)), sep, here)
        if kind in ("items", "zip"):
            children = self.mapping(node[kind], here, tuple(node[kind]) if isinstance(node[kind], Mapping) else ())
            return Items({str(k): self.value(v, (*here, str(k))) for k, v in children.items()}, kind == "zip", here)
        return PyFunc(self.string(node["python"], here), here)

    def source(self, node: Any, at: DocPath) -> Value:
        if isinstance(node, str):
            if node.startswith("$") and node not in SPECIAL_REFS and "." not in node:
                raise self.fail(at, f"{node!r} is not a reference: use $line, $tag, $time or $<step>.<group>")
            return Ref(node, at)
        if isinstance(node, list) and node:
            return Coalesce(tuple(self.source_item(item, (*at, i)) for i, item in enumerate(node)), at)
        raise self.fail(at, "must be a field path, a $reference, or a non-empty list of them")

    def source_item(self, node: Any, at: DocPath) -> Value:
        return self.source(node, at) if isinstance(node, str | list) else self.value(node, at)

    def when(self, node: Mapping[str, Any], at: DocPath) -> When:
        cases_node = node["when"]
        if not isinstance(cases_node, list) or not cases_node:
            raise self.fail((*at, "when"), "must be a non-empty list of {if: <condition>, then: <value>}")
        cases = []
        for i, case in enumerate(cases_node):
            here = (*at, "when", i)
            self.mapping(case, here, ("if", "then"))
            if "if" not in case or "then" not in case:
                raise self.fail(here, "needs both 'if' and 'then'")
            cases.append((self.cond(case["if"], (*here, "if")), self.value(case["then"], (*here, "then"))))
        otherwise = self.value(node["else"], (*at, "else")) if "else" in node else None
        return When(tuple(cases), otherwise, (*at, "when"))

    KINDS = ("const", "from", "when", "concat", "items", "zip", "python")
    OP_KEYS = (
        "each", "index", "after", "before", "split", "trim", "null_if", "replace", "case", "decode",
        "int_base", "scale", "div", "mod", "basename", "join", "map", "ignore_case", "map_default", "time",
        "tz", "default", "sep", "else",
    )  # fmt: skip

    def ops(self, node: Mapping[str, Any], at: DocPath, kind: str) -> Ops:
        self.mapping(node, at, (kind, *self.OP_KEYS))
        self.check_ops(node, at, kind)
        return self.build_ops(node, at)

    def check_ops(self, node: Mapping[str, Any], at: DocPath, kind: str) -> None:
        """Each transform's argument has the right shape."""
        if "sep" in node and kind != "concat":
            raise self.fail((*at, "sep"), "only applies with concat")
        if "else" in node and kind != "when":
            raise self.fail((*at, "else"), "only applies with when")
        for key, kind_of in (
            ("index", int),
            ("int_base", int),
            ("div", int),
            ("mod", int),
            ("basename", bool),
            ("ignore_case", bool),
        ):
            if key in node and (not isinstance(node[key], kind_of) or isinstance(node[key], bool) != (kind_of is bool)):
                raise self.fail((*at, key), f"must be {'true or false' if kind_of is bool else 'an integer'}")
        for key in ("each", "after", "before", "split", "trim", "join"):
            if key in node and not isinstance(node[key], str):
                raise self.fail((*at, key), "must be a string")
        self.check_values(node, at)

    def check_values(self, node: Mapping[str, Any], at: DocPath) -> None:
        get = node.get
        replace = get("replace")
        if replace is not None and not (isinstance(replace, list) and len(replace) == 2):
            raise self.fail((*at, "replace"), "must be [<regex>, <replacement>]")
        if get("case") not in (None, "lower", "upper"):
            raise self.fail((*at, "case"), "must be lower or upper")
        if get("decode") not in (None, *DECODERS):
            raise self.fail((*at, "decode"), f"must be one of {', '.join(DECODERS)}")
        scale = get("scale")
        if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool)):
            raise self.fail((*at, "scale"), "must be a number (seconds → milliseconds: scale: 1000)")
        mapping = get("map")
        if mapping is not None and not isinstance(mapping, Mapping):
            raise self.fail((*at, "map"), "must be a mapping of source value to result")
        for key in mapping or {}:
            if isinstance(key, bool) or key is None:
                raise self.fail(
                    (*at, "map"), f"key {key!r} is a YAML {type(key).__name__}: quote it ('yes', 'no', 'true', 'null')"
                )

    def build_ops(self, node: Mapping[str, Any], at: DocPath) -> Ops:
        get = node.get
        scale, mapping, replace = get("scale"), get("map"), get("replace")
        null_if = get("null_if")
        null_if = () if null_if is None else tuple(null_if) if isinstance(null_if, list) else (null_if,)
        return Ops(
            each=get("each"),
            index=get("index"),
            after=get("after"),
            before=get("before"),
            split=get("split"),
            trim=get("trim"),
            null_if=null_if,
            replace=(str(replace[0]), str(replace[1])) if replace else None,
            case=get("case"),
            decode=get("decode"),
            int_base=get("int_base"),
            scale=float(scale) if scale is not None else None,
            div=get("div"),
            mod=get("mod"),
            basename=bool(get("basename", False)),
            join=get("join"),
            map={str(k): v for k, v in mapping.items()} if mapping is not None else None,
            ignore_case=bool(get("ignore_case", False)),
            map_default=get("map_default"),
            time=self.time_formats(get("time"), (*at, "time")) if "time" in node else (),
            tz_minutes=self.tz(get("tz"), (*at, "tz")) if "tz" in node else 0,
            default=get("default"),
        )

    def time_formats(self, node: Any, at: DocPath) -> tuple[str, ...]:
        formats = self.strings(node, at)
        for i, fmt in enumerate(formats):
            if fmt not in TIME_FORMATS and "%" not in fmt:
                raise self.fail(
                    at, f"time format #{i + 1} {fmt!r} is none of {', '.join(TIME_FORMATS)} nor a strptime format"
                )
        return formats

    def tz(self, node: Any, at: DocPath) -> int:
        match = TZ.match(str(node))
        if not match:
            raise self.fail(at, f"must be an offset like +02:00 or -0500, got {node!r}")
        minutes = int(match["h"]) * 60 + int(match["m"])
        return -minutes if match["sign"] == "-" else minutes

    # -- conditions --------------------------------------------------------------------------
    def cond(self, node: Any, at: DocPath) -> Cond:
        if isinstance(node, list):
            return AllOf(tuple(self.cond(c, (*at, i)) for i, c in enumerate(node)), at)
        if not isinstance(node, Mapping):
            raise self.fail(at, "a condition must be a mapping or a list of conditions")
        if "matched" in node:
            self.mapping(node, at, ("matched",))
            return Matched(self.string(node["matched"], (*at, "matched")), at)
        for key, kind in (("all", AllOf), ("any", AnyOf)):
            if key in node:
                self.mapping(node, at, (key,))
                items = node[key]
                if not isinstance(items, list) or not items:
                    raise self.fail((*at, key), "must be a non-empty list of conditions")
                return kind(tuple(self.cond(c, (*at, key, i)) for i, c in enumerate(items)), at)
        if "not" in node:
            self.mapping(node, at, ("not",))
            return NotOf(self.cond(node["not"], (*at, "not")), at)
        return self.test(node, at)

    def test(self, node: Mapping[str, Any], at: DocPath) -> Test:
        self.mapping(node, at, ("from", "ignore_case", *TESTS))
        ops = [t for t in TESTS if t in node]
        if "from" not in node or len(ops) != 1:
            raise self.fail(at, f"a test needs 'from' and exactly one of {', '.join(TESTS)}")
        op = ops[0]
        operand = node[op]
        if op == "in" and not isinstance(operand, list):
            raise self.fail((*at, op), "must be a list")
        if op == "exists" and not isinstance(operand, bool):
            raise self.fail((*at, op), "must be true or false")
        if op in ("matches", "starts_with", "contains") and not isinstance(operand, str):
            raise self.fail((*at, op), "must be a string")
        if op in ("gt", "gte", "lt", "lte") and (not isinstance(operand, int | float) or isinstance(operand, bool)):
            raise self.fail((*at, op), "must be a number")
        return Test(self.source_item(node["from"], (*at, "from")), op, operand, bool(node.get("ignore_case")), at)

    # -- steps, events, the rule ---------------------------------------------------------------
    def step(self, node: Any, at: DocPath) -> Step:
        self.mapping(node, at, ("name", "from", "regex", "kv"))
        name = self.string(node.get("name"), (*at, "name"))
        if not NAME.match(name) or name in ("line", "tag", "time"):
            raise self.fail((*at, "name"), f"{name!r} must be an identifier other than line, tag and time")
        if "from" not in node:
            raise self.fail(at, "needs 'from': the value the step parses")
        source = self.source_item(node["from"], (*at, "from"))
        if "regex" in node and "kv" in node:
            raise self.fail(at, "needs at most one of 'regex' (named groups) or 'kv' (key=value pairs)")
        if "regex" not in node and "kv" not in node:
            return ValueStep(name, source, at)
        if "regex" in node:
            patterns = self.strings(node["regex"], (*at, "regex"))
            if not patterns:
                raise self.fail((*at, "regex"), "must give at least one pattern")
            return RegexStep(name, source, patterns, at)
        kv = self.mapping(node["kv"], (*at, "kv"), ("keys", "separator", "remove", "pattern"))
        keys = self.strings(kv.get("keys", []), (*at, "kv", "keys"))
        if not keys:
            raise self.fail((*at, "kv", "keys"), "must list the keys to extract")
        sep = self.string(kv.get("separator", " "), (*at, "kv", "separator"))
        remove = self.strings(kv.get("remove", []), (*at, "kv", "remove"))
        pattern = self.string(kv["pattern"], (*at, "kv", "pattern")) if "pattern" in kv else None
        if pattern is not None and ("{key}" not in pattern or "(?P<value>" not in pattern):
            raise self.fail((*at, "kv", "pattern"), "must contain {key} and a (?P<value>...) group")
        return KvStep(name, source, keys, sep, remove, pattern, at)

    def attributes(self, node: Any, at: DocPath) -> dict[str, Value]:
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise self.fail(at, "must map OCSF attribute paths to values")
        return {str(k): self.value(v, (*at, str(k))) for k, v in node.items()}

    def event(self, node: Any, at: DocPath, shared: Mapping[str, Value]) -> EventSpec:
        self.mapping(node, at, ("class_uid", "where", "attributes"))
        class_uid = node.get("class_uid")
        if not isinstance(class_uid, int) or isinstance(class_uid, bool):
            raise self.fail((*at, "class_uid"), f"must be an OCSF class uid (an integer), got {class_uid!r}")
        where = self.cond(node["where"], (*at, "where")) if "where" in node else None
        attributes = {**shared, **self.attributes(node.get("attributes"), (*at, "attributes"))}
        return EventSpec(class_uid, where, attributes, at)

    TOP_KEYS = (
        "name", "description", "ocsf_versions", "tags", "line", "decode", "parse", "where", "class_uid",
        "attributes", "events",
    )  # fmt: skip

    def rule(self) -> Rule:
        node = self.mapping(self.src.data, (), self.TOP_KEYS)
        name = self.string(node.get("name"), ("name",))
        if not NAME.match(name):
            raise self.fail(("name",), f"{name!r} must be an identifier (letters, digits, _)")
        versions = self.strings(node.get("ocsf_versions", []), ("ocsf_versions",))
        if not versions:
            raise self.fail(("ocsf_versions",), "must list the OCSF versions the rule supports")
        decode = node.get("decode")
        if decode not in (None, "json"):
            raise self.fail(("decode",), "must be json (a JSON object in the line field is decoded)")
        steps_node = node.get("parse", [])
        if not isinstance(steps_node, list):
            raise self.fail(("parse",), "must be a list of steps")
        steps = tuple(self.step(s, ("parse", i)) for i, s in enumerate(steps_node))
        names = [s.name for s in steps]
        for i, step_name in enumerate(names):
            if step_name in names[:i]:
                raise self.fail(("parse", i, "name"), f"step {step_name!r} is defined twice")
        where = self.cond(node["where"], ("where",)) if "where" in node else None
        return Rule(
            name=name,
            description=str(node.get("description", "")),
            versions=versions,
            tags=self.strings(node.get("tags", []), ("tags",)),
            line_fields=self.strings(node.get("line", []), ("line",)),
            decode=decode,
            steps=steps,
            where=where,
            events=self.events(node),
            source=self.src,
        )

    def events(self, node: Mapping[str, Any]) -> tuple[EventSpec, ...]:
        shared = self.attributes(node.get("attributes"), ("attributes",))
        if "events" in node:
            if "class_uid" in node:
                raise self.fail(("class_uid",), "give class_uid in each of events, not at the top")
            items = node["events"]
            if not isinstance(items, list) or not items:
                raise self.fail(("events",), "must be a non-empty list of {class_uid, where, attributes}")
            return tuple(self.event(e, ("events", i), shared) for i, e in enumerate(items))
        if "class_uid" not in node:
            raise self.fail((), "needs class_uid (one event class) or events (several)")
        top = {k: node[k] for k in ("class_uid",)}
        return (self.event(top, (), shared),)


def parse_rule(src: RuleSource) -> Rule:
    """The rule in ``src``, shape-checked; RuleError naming file, line and path otherwise."""
    return _Parser(src).rule()
