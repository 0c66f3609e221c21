"""The record-level value the mapping stage hands on besides events: a dead letter, i.e. a record
no rule could map, with its tag, the rule that tried and the reason."""

from __future__ import annotations

__all__ = ["DeadLetter"]

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be mapped, with the rule that tried and why it failed."""

    tag: str
    rule: str
    reason: str
    record: Mapping[str, Any]
    time_ns: int | None
