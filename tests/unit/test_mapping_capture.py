"""Regex captures in passes: how a pattern is split, that the passes capture what one pass does
(for the built-in rules' fixtures too), and how the faster way is chosen."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from securitylake_sink.mapping import capture
from securitylake_sink.mapping.capture import ONE_PASS_GROUPS, extract, group_names, passes

from .test_mapping_rules import FIXTURES, SOURCE_RULES, differences, map_fixture, read_ndjson

RULES = Path(capture.__file__).parent / "rules"
ACCESS = (
    r'^(?P<client>[^ ]+) [^ ]+ (?P<user>[^ ]+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?: "(?P<referrer>[^"]*)" "(?P<agent>[^"]*)")?(?: (?P<extra>x))?'
)
LINES = [
    '198.51.100.7 - - [05/Feb/2024:13:45:01 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8.5.0"',
    '203.0.113.9 - bob [05/Feb/2024:13:45:02 +0000] "POST /login HTTP/1.1" 401 -',  # no referrer, agent
    "not an access line",
    None,
    '192.0.2.1 - - [05/Feb/2024:13:45:03 +0000] "" 400 0 "-" "-" x',
]


def one_pass(source: pa.Array, pattern: str) -> list[pa.Array]:
    found = pc.extract_regex(source, pattern)
    return [pc.struct_field(found, [i]) for i in range(found.type.num_fields)]


@pytest.fixture
def fresh_choices(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, ...]]:
    chosen: dict[str, tuple[str, ...]] = {}
    monkeypatch.setattr(capture, "_chosen", chosen)
    return chosen


def clock_of(single: float, split: float) -> Callable[[], float]:
    """A clock under which one pass takes ``single`` and the split ``split`` (they are timed in
    that order, twice each per round)."""
    ticks = itertools.accumulate(itertools.cycle([0.0, single, 0.0, split]))
    return lambda: next(ticks)


@pytest.mark.parametrize(
    ("pattern", "runs"),
    [
        (r"^(?P<a>x)(?P<b>y)", [("a", "b")]),
        (ACCESS, [("client", "user", "time", "request"), ("status", "bytes", "referrer", "agent"), ("extra",)]),
        # an escaped paren and openings inside character classes are text, not groups
        (
            r"^(?P<a>x)(?P<b>[(?P<z>])(?P<c>\()(?P<d>[]a(?P<y>])(?P<e>[[:alpha:](?P<w>])\(?P<v>",
            [("a", "b", "c", "d"), ("e",)],
        ),
        (r"^(?<a>1)(?<b>2)(?P<c>3)(?<d>4)(?<e>5)", [("a", "b", "c", "d"), ("e",)]),
    ],
)
def test_a_pattern_is_split_into_runs_of_at_most_four_groups(pattern: str, runs: list[tuple[str, ...]]) -> None:
    # WHEN a pattern is split
    split = passes(pattern)
    # THEN each pass captures the next run of its groups, and the runs make up all of them
    assert [group_names(p) for p in split] == runs
    assert all(len(run) <= ONE_PASS_GROUPS for run in runs)
    assert sum(runs, ()) == group_names(pattern)
    # AND each pass differs from the pattern only where a group stopped capturing
    for part in split:
        assert part.replace("(?:", "(").count("(") == pattern.replace("(?:", "(").count("(")


def test_the_passes_capture_what_one_pass_does_row_for_row() -> None:
    # GIVEN lines that match fully, match without the optional groups, do not match, or are null
    source = pa.array(LINES * 3, pa.string())
    # WHEN captured in passes
    columns = [c for part in passes(ACCESS) for c in one_pass(source, part)]
    # THEN every group's column equals extract_regex's in one pass, nulls and empty groups included
    assert len(passes(ACCESS)) == 3
    assert [c.to_pylist() for c in columns] == [c.to_pylist() for c in one_pass(source, ACCESS)]
    assert columns[0].to_pylist()[:4] == ["198.51.100.7", "203.0.113.9", None, None]
    assert columns[6].to_pylist()[:2] == ["-", ""]  # referrer; "" where the group took no part


def test_the_faster_way_is_chosen_once_per_pattern(fresh_choices: dict[str, tuple[str, ...]]) -> None:
    # GIVEN enough rows to time a sample on
    source = pa.array(LINES * capture.SAMPLE_ROWS, pa.string())
    expected = [c.to_pylist() for c in one_pass(source, ACCESS)]
    # WHEN the split is the faster under the clock
    got = extract(source, ACCESS, clock=clock_of(single=10.0, split=1.0))
    # THEN it is kept for the pattern, and the columns are extract_regex's
    assert fresh_choices == {ACCESS: passes(ACCESS)}
    assert [c.to_pylist() for c in got] == expected
    # AND a later call does not time again (a clock that would choose otherwise is not asked)
    extract(source, ACCESS, clock=clock_of(single=1.0, split=10.0))
    assert fresh_choices == {ACCESS: passes(ACCESS)}


def test_one_pass_is_kept_when_the_split_is_slower(fresh_choices: dict[str, tuple[str, ...]]) -> None:
    source = pa.array(LINES * capture.SAMPLE_ROWS, pa.string())
    got = extract(source, ACCESS, clock=clock_of(single=1.0, split=10.0))
    assert fresh_choices == {ACCESS: (ACCESS,)}
    assert [c.to_pylist() for c in got] == [c.to_pylist() for c in one_pass(source, ACCESS)]


def test_too_few_values_to_time_are_captured_in_one_pass_and_decide_nothing(
    fresh_choices: dict[str, tuple[str, ...]],
) -> None:
    # GIVEN fewer non-null values than a sample needs (nulls do not count)
    source = pa.array(["x"] + [None] * capture.SAMPLE_ROWS * 2 + LINES, pa.string())

    def no_clock() -> float:
        raise AssertionError("nothing should be timed")

    # WHEN captured; THEN the columns are right and no choice is made for later columns
    got = extract(source, ACCESS, clock=no_clock)
    assert [c.to_pylist() for c in got] == [c.to_pylist() for c in one_pass(source, ACCESS)]
    assert fresh_choices == {}


def test_a_column_too_small_to_gain_takes_one_pass_whatever_was_chosen(
    fresh_choices: dict[str, tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the split chosen for a pattern on a large column
    extract(pa.array(LINES * capture.SAMPLE_ROWS, pa.string()), ACCESS, clock=clock_of(single=10.0, split=1.0))
    assert fresh_choices == {ACCESS: passes(ACCESS)}
    ways: list[tuple[str, ...]] = []
    captured = capture._captured
    monkeypatch.setattr(capture, "_captured", lambda source, way: ways.append(way) or captured(source, way))
    # WHEN a column of fewer values than a sample comes; THEN it is captured in one pass
    small = pa.array(LINES * 10, pa.string())
    assert [c.to_pylist() for c in extract(small, ACCESS)] == [c.to_pylist() for c in one_pass(small, ACCESS)]
    assert ways == [(ACCESS,)]
    # AND a large one in the passes chosen
    extract(pa.array(LINES * capture.SAMPLE_ROWS, pa.string()), ACCESS)
    assert ways[-1] == passes(ACCESS)


def split_patterns(rule: str) -> set[str]:
    """The patterns of the rule's parse steps that have more than ONE_PASS_GROUPS groups."""
    spec = yaml.safe_load((RULES / f"{rule}.yaml").read_text(encoding="utf-8"))
    steps = spec.get("parse") or []
    return {p for step in steps for p in step.get("regex") or [] if len(group_names(p)) > ONE_PASS_GROUPS}


@pytest.mark.parametrize("rule", SOURCE_RULES)
def test_built_in_rules_map_their_fixtures_alike_with_every_pattern_split(
    rule: str, fresh_choices: dict[str, tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN every pattern of more than four groups captured in passes, whatever the clock says
    monkeypatch.setattr(capture, "SAMPLE_ROWS", 1)
    monkeypatch.setattr(capture, "_fastest", lambda sample, ways, clock: ways[-1])
    # WHEN the rule's fixtures are mapped
    expected = read_ndjson(FIXTURES / f"{rule}.expected.ndjson")
    actual = map_fixture(rule)
    # THEN they are the expected events, field by field
    assert len(actual) == len(expected)
    pairs = enumerate(zip(expected, actual, strict=True))
    problems = [f"record {i}: {d}" for i, (e, a) in pairs for d in differences(e, a)]
    assert not problems, "\n".join(problems)
    # AND the rule's patterns with more groups than one pass takes were split for it
    assert set(fresh_choices) <= split_patterns(rule)
    assert bool(fresh_choices) == bool(split_patterns(rule))
    assert all(len(way) > 1 for way in fresh_choices.values())
