"""Records already in OCSF: Arrow converts them as they are when it can, and the result is the
same as casting each record with conform_event (the way every other record goes)."""

from __future__ import annotations

from typing import Any

import pytest

from securitylake_sink.mapping import passthrough
from securitylake_sink.mapping.engine import Outcome
from securitylake_sink.ocsf.schema import load_schema

SCHEMA = load_schema("1.1.0")
T = 1_732_795_200_000


def _auth(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "class_uid": 3002,
        "activity_id": 1,
        "time": T + i,
        "user": {"name": f"user{i}", "type_id": 1},
        "src_endpoint": {"ip": f"192.0.2.{i % 250}", "port": 1024 + i},
        "metadata": {"product": {"name": "idp", "vendor_name": "example"}, "uid": str(i)},
        "observables": [{"name": "user.name", "type_id": 4, "value": f"user{i}"}],
        **extra,
    }


CASES = {
    "plain": [_auth(i) for i in range(20)],
    "unmapped given as flat strings": [_auth(i, unmapped={"a": "1", "b": "x"}) for i in range(5)],
    "an unknown key": [_auth(0), _auth(1, vendor_field={"deep": [1, 2]}), _auth(2)],
    "a nested time in seconds": [_auth(0, metadata={"logged_time": 1_732_795_200, "product": {"name": "p"}})],
    "a time as text": [_auth(0, time="2024-11-28T12:00:00Z"), _auth(1)],
    "an id as text": [_auth(0, status_id="2"), _auth(1)],
    "a value that cannot be cast": [_auth(0, status_id="two"), _auth(1), _auth(2, activity_id=True)],
    "an object where text belongs": [_auth(0, message={"k": "v"}), _auth(1)],
    "undecodable bytes in text": [_auth(0, message="bad \udcff byte"), _auth(1)],
    "a bare object where a list belongs": [_auth(0, observables={"name": "x", "type_id": 4})],
    "unmapped with nested values": [_auth(0, unmapped={"a": {"b": 1}})],
    "a missing required attribute": [{k: v for k, v in _auth(0).items() if k != "user"}, _auth(1)],
}


def _result(outcome: Outcome) -> tuple[list[tuple[int, list[int], list[dict[str, Any]]]], dict[int, str]]:
    mapped = [(rows.class_uid, rows.rows.to_pylist(), rows.batch.to_pylist()) for rows in outcome.mapped]
    return mapped, dict(outcome.failed)


@pytest.mark.parametrize("records", CASES.values(), ids=CASES.keys())
def test_arrow_conversion_gives_what_casting_each_record_gives(
    records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN OCSF records, WHEN they are mapped with Arrow's conversion where it applies
    fast = _result(passthrough.map_ocsf(records, [T] * len(records), SCHEMA))
    # AND with every record cast by conform_event
    monkeypatch.setattr(passthrough, "_narrow", lambda events, schema: None)
    slow = _result(passthrough.map_ocsf(records, [T] * len(records), SCHEMA))
    # THEN both give the same rows, the same events and the same dead letters
    assert fast == slow
    mapped, failed = fast
    assert sum(len(rows) for _, rows, _ in mapped) + len(failed) == len(records)


def test_plain_records_take_arrows_conversion() -> None:
    events = [passthrough._event(r, T, SCHEMA)[1] for r in CASES["plain"]]
    assert passthrough._narrow(events, SCHEMA.arrow_schema(3002)) is not None


@pytest.mark.parametrize(
    "case", ["an unknown key", "a nested time in seconds", "an id as text", "undecodable bytes in text"]
)
def test_records_arrow_cannot_take_as_they_are_are_cast_one_by_one(case: str) -> None:
    events = [passthrough._event(r, T, SCHEMA)[1] for r in CASES[case]]
    assert passthrough._narrow(events, SCHEMA.arrow_schema(3002)) is None
