"""A regex's named groups over a string column, by RE2 through ``pc.extract_regex``, in the
fewest-cost passes.

RE2 captures with its one-pass engine only when the pattern is unambiguous (each byte decides
the next step) and a match asks for at most ``ONE_PASS_GROUPS`` groups; otherwise it backtracks,
several times slower. So a one-pass pattern with more groups is faster captured in passes of a
few groups each, the others made non-capturing, which changes neither what matches nor what a
group holds. Whether a pattern is one-pass is RE2's secret; the first column of at least
``SAMPLE_ROWS`` values it meets times both ways on a sample (in its thread's CPU time, which
the sink's other threads do not skew) and the faster is kept for the process. Each pass compiles
its pattern again (Arrow compiles per call), a fixed cost that outweighs the gain on small
columns: those always take one pass. Either way the columns are the same."""

from __future__ import annotations

__all__ = ["ONE_PASS_GROUPS", "SAMPLE_ROWS", "extract", "group_names", "passes"]

import functools
import re
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

# RE2's Prog::kMaxOnePassCapture is 5 submatches, the whole match being one of them.
ONE_PASS_GROUPS = 4
# Rows a pattern's two ways are timed on (each ~5 ms at the backtracker's 2-3 µs a row), and
# the rounds of it, the fastest counting; also the fewest values a column is captured in passes
# for (on 512 the compiles made passes slower for every built-in pattern).
SAMPLE_ROWS = 2048
_ROUNDS = 3

# A named group's opening; or, skipped whole so that nothing in them is taken for one, an
# escaped character or a character class (``[]x]`` and ``[^]x]`` hold a "]", ``[[:alpha:]]`` a
# POSIX class).
_OPENING = re.compile(r"\\.|\[\^?\]?(?:\\.|\[:\w+:\]|[^\]\\])*\]|\(\?P?<(\w+)>")

# The passes chosen for each pattern measured so far.
_chosen: dict[str, tuple[str, ...]] = {}


@functools.lru_cache(maxsize=1024)
def group_names(pattern: str) -> tuple[str, ...]:
    """The names of a regex's capture groups, in the order extract_regex gives them."""
    return tuple(field.name for field in pc.extract_regex(pa.array([], pa.string()), pattern).type)


@functools.lru_cache(maxsize=1024)
def passes(pattern: str) -> tuple[str, ...]:
    """``pattern`` as one pattern per run of at most ONE_PASS_GROUPS of its groups, in order,
    the others made non-capturing; just ``pattern`` when it has no more groups than that, or
    when a rewrite would not capture exactly its run (an opening inside a character class)."""
    names = group_names(pattern)
    if len(names) <= ONE_PASS_GROUPS:
        return (pattern,)
    runs = [names[i : i + ONE_PASS_GROUPS] for i in range(0, len(names), ONE_PASS_GROUPS)]
    parts = []
    for run in runs:

        def opened(m: re.Match[str], keep: frozenset[str] = frozenset(run)) -> str:
            return m.group(0) if m.group(1) is None or m.group(1) in keep else "(?:"

        part = _OPENING.sub(opened, pattern)
        if group_names(part) != run:
            return (pattern,)
        parts.append(part)
    return tuple(parts)


def _captured(source: pa.Array, parts: tuple[str, ...]) -> list[pa.Array]:
    columns: list[pa.Array] = []
    for part in parts:
        # flatten: each group with the struct's nulls (rows not matched), as struct_field gives it
        columns.extend(pc.extract_regex(source, part).flatten())
    return columns


def _fastest(sample: pa.Array, ways: list[tuple[str, ...]], clock: Callable[[], float]) -> tuple[str, ...]:
    best: dict[tuple[str, ...], float] = {}
    for _ in range(_ROUNDS):
        for way in ways:
            started = clock()
            _captured(sample, way)
            spent = clock() - started
            best[way] = min(best.get(way, spent), spent)
    return min(ways, key=lambda way: best[way])


def extract(source: pa.Array, pattern: str, clock: Callable[[], float] = time.thread_time) -> list[pa.Array]:
    """The groups of ``pattern`` over ``source`` (a string array), one column per group in
    ``group_names`` order: extract_regex's values, null where the row does not match."""
    split = passes(pattern)
    if len(split) == 1 or len(source) - source.null_count < SAMPLE_ROWS:
        return _captured(source, (pattern,))  # (too few values to tell, or to gain from passes)
    chosen = _chosen.get(pattern)
    if chosen is None:
        sample = (pc.drop_null(source) if source.null_count else source).slice(0, SAMPLE_ROWS)
        chosen = _chosen[pattern] = _fastest(sample, [(pattern,), split], clock)
    return _captured(source, chosen)
