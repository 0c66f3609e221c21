"""The built-in rules against their fixtures: each input record mapped and compared field by field
with the expected OCSF event (or dead letter) in tests/fixtures/mapping/<rule>.expected.ndjson.
After changing a rule, run tests/fixtures/mapping/regenerate.py and review the diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from securitylake_sink.mapcli import event_json
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.route import builtin_rule_names, compile_named
from securitylake_sink.ocsf.schema import load_schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mapping"
TRANSPORT_MS = 1_732_795_200_000  # 2024-11-28T12:00:00Z, as regenerate.py uses
SOURCE_RULES = [r for r in builtin_rule_names() if r != "base_event"]
REQUIRED_CLASSES = {
    "sshd": {3002},
    "sudo": {1007},
    "nginx_access": {4002},
    "apache_access": {4002},
    "auditd": {1007, 3002},
    "k8s_audit": {6003},
    "cloudtrail": {6003, 3002},
    "coredns": {4003},
    "zeek_conn": {4001},
    "zeek_dns": {4003},
    "suricata_eve": {2004, 4001, 4003, 4002},
    "windows_security": {3002, 1007},
    "syslog": {0},
}


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every dotted path where two JSON values differ, with both sides."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual)):
            out += differences(expected.get(key), actual.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{path}[{i}]")
        ]
    return [] if expected == actual else [f"{path}: expected {expected!r:.120}, got {actual!r:.120}"]


def map_fixture(rule: str, version: str = "1.1.0") -> list[dict[str, Any]]:
    """One result per input record: the event as JSON, or {"dead_letter": reason}."""
    records = read_ndjson(FIXTURES / f"{rule}.input.ndjson")
    mapper = Mapper(load_schema(version), [("*", rule)])
    outcome = mapper.map_records(f"test.{rule}", records, [TRANSPORT_MS] * len(records))
    results: dict[int, dict[str, Any]] = {row: {"dead_letter": reason} for row, (_, reason) in outcome.failed.items()}
    for _, rows in outcome.mapped:
        for row, event in zip(rows.rows.to_pylist(), rows.batch.to_pylist(), strict=True):
            assert row not in results, f"record {row} came out twice"
            results[row] = json.loads(event_json(event))
    assert sorted(results) == list(range(len(records))), "every record must come out exactly once"
    return [results[i] for i in range(len(records))]


@pytest.mark.parametrize("rule", SOURCE_RULES)
def test_fixtures_map_to_the_expected_events_field_by_field(rule: str) -> None:
    # GIVEN the rule's fixture records and the events they must become
    expected = read_ndjson(FIXTURES / f"{rule}.expected.ndjson")
    # WHEN they are mapped at a fixed transport time
    actual = map_fixture(rule)
    # THEN every record matches its expected event (or dead letter) attribute by attribute
    assert len(actual) == len(expected)
    problems = [
        f"record {i}: {d}" for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rule", SOURCE_RULES)
def test_every_rule_has_at_least_five_realistic_mapped_fixtures_per_class(rule: str) -> None:
    # GIVEN the expected events of a rule's fixtures
    expected = read_ndjson(FIXTURES / f"{rule}.expected.ndjson")
    events = [e for e in expected if "dead_letter" not in e]
    # THEN at least five map, and together they cover every class the rule is documented to produce
    assert len(events) >= 5
    assert {e["class_uid"] for e in events} >= REQUIRED_CLASSES[rule]
    assert any("dead_letter" in e for e in expected), "an edge case the rule declines is part of the fixtures"


@pytest.mark.parametrize("rule", SOURCE_RULES)
def test_rule_produces_its_documented_classes(rule: str) -> None:
    compiled = compile_named(rule, load_schema("1.1.0"))
    assert set(compiled.classes) == REQUIRED_CLASSES[rule]
    assert compiled.description


@pytest.mark.parametrize("rule", builtin_rule_names())
def test_rules_compile_and_map_alike_for_every_version_they_declare(rule: str) -> None:
    # GIVEN a rule and each OCSF version it declares
    compiled = compile_named(rule, load_schema("1.1.0"))
    assert "1.1.0" in compiled.versions
    fixtures = FIXTURES / f"{rule}.input.ndjson"
    baseline = map_fixture(rule) if fixtures.exists() else []
    for version in compiled.versions:
        # WHEN compiled and run for that version; THEN the same records map, with that version
        compile_named(rule, load_schema(version))
        if fixtures.exists():
            results = map_fixture(rule, version)
            assert ["dead_letter" in r for r in results] == ["dead_letter" in r for r in baseline]
            assert {r["metadata"]["version"] for r in results if "metadata" in r} <= {version}


def test_fluent_bit_parser_fields_and_raw_lines_map_alike() -> None:
    # GIVEN the same sshd login as a raw line and as Fluent Bit's syslog-rfc3164 parser fields
    line = {
        "log": "<38>Mar 16 11:11:11 bastion-1 sshd[23001]: Accepted password for erin from 198.51.100.9 port 40100 ssh2"
    }
    parsed = {
        "pri": "38",
        "time": "Mar 16 11:11:11",
        "host": "bastion-1",
        "ident": "sshd",
        "pid": "23001",
        "message": "Accepted password for erin from 198.51.100.9 port 40100 ssh2",
    }
    outcome = Mapper(load_schema("1.1.0"), [("*", "sshd")]).map_records("t", [line, parsed], [TRANSPORT_MS] * 2)
    rows = {
        row: event
        for _, part in outcome.mapped
        for row, event in zip(part.rows.to_pylist(), part.batch.to_pylist(), strict=True)
    }
    # THEN both become the same event apart from raw_data and unmapped
    first, second = (json.loads(event_json(rows[i])) for i in (0, 1))
    for event in (first, second):
        event.pop("raw_data", None)
        event.pop("unmapped", None)
    assert first == second
