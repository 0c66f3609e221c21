"""The escape hatch: Python functions a rule can name (``{python: <name>}``) for the rare value
that cannot be declared. A function gets the frame (its records all have the tag ``frame.tag``)
and returns one value per record."""

from __future__ import annotations

__all__ = ["register_function", "registered_functions"]

from collections.abc import Callable, Mapping
from types import MappingProxyType

from securitylake_sink.mapping.evaluate import PythonFunction

_REGISTRY: dict[str, PythonFunction] = {}


def register_function(name: str) -> Callable[[PythonFunction], PythonFunction]:
    """Decorator: make ``fn(frame) -> list | pyarrow.Array`` available to rules as ``name``."""

    def register(fn: PythonFunction) -> PythonFunction:
        _REGISTRY[name] = fn
        return fn

    return register


def registered_functions() -> Mapping[str, PythonFunction]:
    """Every registered function, by name (a read-only view)."""
    return MappingProxyType(_REGISTRY)
