"""Rule files as data: YAML read with the line of every key, so that every rule error names the
file, the line and the dotted path (``sshd.yaml:42: attributes.user.nam: ...``)."""

from __future__ import annotations

__all__ = ["DocPath", "RuleError", "RuleSource", "dotted", "read_rule_source"]

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from securitylake_sink.errors import ConfigError

DocPath = tuple[str | int, ...]  # a position in the rule document: ("attributes", "user.name", "from")


class RuleError(ConfigError):
    """A rule file that cannot be read or compiled; the message names the file, line and path."""


def dotted(path: DocPath) -> str:
    """``("events", 0, "attributes", "time")`` → ``events[0].attributes.time``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class RuleSource:
    """A parsed rule document and where each of its keys is."""

    origin: str  # a file path, or ``builtin:<name>``
    data: Any
    lines: Mapping[DocPath, int] = field(repr=False)

    def line_of(self, path: DocPath) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def error(self, path: DocPath, message: str) -> RuleError:
        """A RuleError naming this file, the line of ``path`` and the path itself."""
        line = self.line_of(path)
        where = f"{self.origin}:{line}" if line else self.origin
        name = dotted(path)
        return RuleError(f"{where}: {name}: {message}" if name else f"{where}: {message}")


def _walk(node: yaml.Node, path: DocPath, lines: dict[DocPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            lines[(*path, name)] = key.start_mark.line + 1
            _walk(value, (*path, name), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def read_rule_source(text: str, origin: str) -> RuleSource:
    """Parse a rule document; RuleError (with the line) when it is not valid YAML."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise RuleError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    lines: dict[DocPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return RuleSource(origin, data, lines)
