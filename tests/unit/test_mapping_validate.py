"""Validation against the bundled schema: every event the built-in rules produce from their
fixtures validates; broken events are caught with a reason naming the attribute, per row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from securitylake_sink.columnar import is_pruning, prune_batch
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.passthrough import map_ocsf
from securitylake_sink.mapping.route import builtin_rule_names
from securitylake_sink.ocsf.conform import conform_event
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.ocsf.validate import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mapping"
T = 1_732_795_200_000


def _auth(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "class_uid": 3002,
        "category_uid": 3,
        "class_name": "Authentication",
        "category_name": "Identity & Access Management",
        "activity_id": 1,
        "activity_name": "Logon",
        "type_uid": 300201,
        "type_name": "Authentication: Logon",
        "severity_id": 1,
        "time": T,
        "user": {"name": "alice"},
        "service": {"name": "sshd"},
        "metadata": {"version": "1.1.0", "product": {"name": "p", "vendor_name": "v"}},
    }
    event.update(changes)
    return event


def _batch(*events: dict[str, Any], class_uid: int = 3002) -> pa.RecordBatch:
    schema = load_schema("1.1.0").arrow_schema(class_uid)
    return pa.RecordBatch.from_pylist([conform_event(e, schema) for e in events], schema=schema)


@pytest.mark.parametrize("version", ["1.1.0", "1.8.0"])
@pytest.mark.parametrize("rule", [r for r in builtin_rule_names() if (FIXTURES / f"{r}.input.ndjson").exists()])
def test_every_event_from_every_fixture_validates(rule: str, version: str) -> None:
    # GIVEN a rule's fixtures mapped for an OCSF version
    records = [json.loads(line) for line in (FIXTURES / f"{rule}.input.ndjson").read_text().splitlines()]
    schema = load_schema(version)
    outcome = Mapper(schema, [("*", rule)]).map_records("t", records, [T] * len(records))
    # WHEN every produced batch is validated again on its own
    assert outcome.mapped
    for _, rows in outcome.mapped:
        verdict = validate(rows.batch, schema, rows.class_uid)
        # THEN no row has a problem, and the batch is in a pruning of the class's fixed schema
        assert verdict.ok, verdict.reasons
        assert is_pruning(rows.batch.schema, schema.arrow_schema(rows.class_uid))
    # AND what failed, failed for declining, or is a record the fixture expects to be dead-lettered
    # as invalid (a Process Activity record that names no device: auditd, sudo)
    expected = [json.loads(line) for line in (FIXTURES / f"{rule}.expected.ndjson").read_text().splitlines()]
    invalid = {row: reason for row, (_, reason) in outcome.failed.items() if not reason.startswith("mappings:")}
    assert invalid == {
        row: line["dead_letter"]
        for row, line in enumerate(expected)
        if "dead_letter" in line and not line["dead_letter"].startswith("mappings:")
    }


def test_a_valid_event_passes() -> None:
    assert validate(_batch(_auth()), load_schema("1.1.0"), 3002).ok


CASES = [
    pytest.param(_auth(user=None), "user: required attribute is missing", id="required-top-level"),
    pytest.param(_auth(severity_id=7), "severity_id: 7 is not an id", id="enum-out-of-range"),
    pytest.param(_auth(type_uid=300202), "type_uid: 300202 is not class_uid * 100 + activity_id", id="type_uid"),
    pytest.param(_auth(category_uid=4), "category_uid: 4 is not", id="category_uid"),
    pytest.param(_auth(class_name="Auth"), "class_name: 'Auth' is not the name of class 3002", id="class_name"),
    pytest.param(_auth(activity_name="Logoff"), "activity_name: 'Logoff' is not the caption", id="activity_name"),
    pytest.param(_auth(type_name="x"), "type_name: 'x'", id="type_name"),
    pytest.param(
        _auth(metadata={"version": "1.2.0", "product": {"name": "p", "vendor_name": "v"}}),
        "metadata.version: '1.2.0' is not the batch's OCSF version 1.1.0",
        id="metadata.version",
    ),
    pytest.param(
        _auth(metadata={"version": "1.1.0", "product": {"name": "p"}}),
        "metadata.product.vendor_name: required attribute is missing",
        id="required-nested",
    ),
    pytest.param(_auth(auth_protocol_id=12), "auth_protocol_id: 12 is not an id", id="enum-nested-top"),
    pytest.param(_auth(user={"name": "a", "type_id": 5}), "user.type_id: 5 is not an id", id="enum-inside-object"),
    # a profile's object (device: host) is checked once present: its required type_id
    pytest.param(
        _auth(device={"hostname": "h"}),
        "device.type_id: required attribute is missing",
        id="required-in-profile-object",
    ),
    # objects' at_least_one constraints
    pytest.param(
        _auth(device={"type_id": 0}),
        "device: needs at least one of ip, uid, name, hostname, instance_uid, interface_uid, interface_name",
        id="at-least-one-device",
    ),
    pytest.param(_auth(user={"type_id": 0}), "user: needs at least one of account, name, uid", id="at-least-one-user"),
    pytest.param(
        _auth(logon_process={"name": "User32"}),
        "logon_process: needs at least one of pid, uid",
        id="at-least-one-process",
    ),
    pytest.param(
        _auth(src_endpoint={"domain": "AWS Internal"}),
        "src_endpoint: needs at least one of ip, uid",
        id="at-least-one-ep",
    ),
]

GOOD = [
    pytest.param(_auth(device={"hostname": "h", "type_id": 0}), id="device"),
    pytest.param(_auth(user={"uid": "1000", "type_id": 0}), id="user"),
    pytest.param(_auth(logon_process={"name": "sshd", "pid": 7}), id="process"),
    pytest.param(_auth(src_endpoint={"svc_name": "AWS Internal"}), id="src_endpoint"),
]


@pytest.mark.parametrize("event", GOOD)
def test_objects_meeting_their_constraints_pass(event: dict[str, Any]) -> None:
    assert validate(_batch(event), load_schema("1.1.0"), 3002).ok


@pytest.mark.parametrize("pruned", [False, True], ids=["full", "pruned"])
@pytest.mark.parametrize(("event", "reason"), CASES)
def test_a_broken_row_is_caught_with_its_reason_and_only_that_row(
    event: dict[str, Any], reason: str, pruned: bool
) -> None:
    # GIVEN a good event, a broken one and another good one, in the class schema or pruned to
    # the columns that hold a value (as the mapper hands batches on)
    batch = _batch(_auth(), event, _auth())
    verdict = validate(prune_batch(batch) if pruned else batch, load_schema("1.1.0"), 3002)
    # THEN only the broken row fails, and its reason names the attribute
    assert verdict.bad.to_pylist() == [False, True, False]
    assert reason in verdict.reasons[1]


def test_a_required_attribute_pruned_away_on_every_row_fails_every_row() -> None:
    # GIVEN two events without a user: pruned, the batch has no user column at all
    batch = prune_batch(_batch(_auth(user=None), _auth(user=None)))
    assert "user" not in batch.schema.names
    # WHEN validated; THEN both rows miss the required attribute
    verdict = validate(batch, load_schema("1.1.0"), 3002)
    assert verdict.bad.to_pylist() == [True, True]
    assert all("user: required attribute is missing" in why for why in verdict.reasons.values())


def test_other_with_its_own_activity_name_is_valid() -> None:
    event = _auth(activity_id=99, activity_name="Passkey", type_uid=300299, type_name="Authentication: Other")
    assert validate(_batch(event), load_schema("1.1.0"), 3002).ok


def test_required_attributes_of_objects_in_lists_are_checked() -> None:
    # GIVEN a DNS answer without its required rdata
    event = {
        "class_uid": 4003, "activity_id": 2, "type_uid": 400302, "category_uid": 4, "severity_id": 1, "time": T,
        "src_endpoint": {"ip": "192.0.2.1"}, "answers": [{"rdata": "x"}, {"ttl": 5}],
        "metadata": {"version": "1.1.0", "product": {"name": "p", "vendor_name": "v"}},
    }  # fmt: skip
    verdict = validate(_batch(event, class_uid=4003), load_schema("1.1.0"), 4003)
    assert "answers[].rdata: required attribute is missing" in verdict.reasons[0]


def test_ocsf_records_are_derived_validated_and_never_written_half_valid() -> None:
    # GIVEN OCSF records: one complete, one missing a required object, one with a bad type_uid
    records = [
        {"class_uid": 3002, "activity_id": 1, "time": T, "user": {"name": "a"}, "service": {"name": "s"}},
        {"class_uid": 6003, "activity_id": 2, "time": T, "api": {"operation": "Get"}},
        {"class_uid": 3002, "activity_id": 1, "type_uid": 300205, "user": {"name": "b"}},
        {"class_uid": "not a number"},
    ]
    outcome = map_ocsf(records, [T] * len(records), load_schema("1.1.0"))
    # THEN the first is mapped with its derived fields, and each other one fails with its reason
    (mapped,) = outcome.mapped
    row = mapped.batch.to_pylist()[0]
    assert (row["type_uid"], row["category_uid"], row["class_name"], row["metadata"]["version"]) == (
        300201,
        3,
        "Authentication",
        "1.1.0",
    )
    assert mapped.rows.to_pylist() == [0]
    assert "actor: required attribute is missing" in outcome.failed[1]
    assert "type_uid: 300205 does not match" in outcome.failed[2]
    assert "class_uid: expected an integer" in outcome.failed[3]


def _http(method: str, version: str = "1.1.0") -> dict[str, Any]:
    return {
        "class_uid": 4002, "category_uid": 4, "activity_id": 99, "activity_name": method, "type_uid": 400299,
        "severity_id": 1, "time": T, "http_request": {"http_method": method, "url": {"path": "/"}},
        "src_endpoint": {"ip": "192.0.2.1"}, "dst_endpoint": {"ip": "192.0.2.2"}, "http_response": {"code": 200},
        "metadata": {"version": version, "product": {"name": "p", "vendor_name": "v"}},
    }  # fmt: skip


def test_string_enums_are_checked_per_version() -> None:
    # GIVEN HTTP requests with a method in 1.1.0's enum and two outside it
    schema = load_schema("1.1.0")
    batch = pa.RecordBatch.from_pylist(
        [conform_event(_http(m), schema.arrow_schema(4002)) for m in ["GET", "PROPFIND", "PATCH"]],
        schema=schema.arrow_schema(4002),
    )
    verdict = validate(batch, schema, 4002)
    # THEN only the methods outside the enum fail, naming the attribute
    assert verdict.bad.to_pylist() == [False, True, True]
    assert verdict.reasons[1] == "http_request.http_method: 'PROPFIND' is not a value of its OCSF 1.1.0 enum"
    # AND PATCH, in 1.8.0's enum, passes there
    schema8 = load_schema("1.8.0")
    batch8 = pa.RecordBatch.from_pylist(
        [conform_event(_http("PATCH", "1.8.0"), schema8.arrow_schema(4002))], schema=schema8.arrow_schema(4002)
    )
    assert validate(batch8, schema8, 4002).ok


def test_constraints_of_objects_in_lists_are_checked() -> None:
    # GIVEN API activities whose resource has a name, and one with neither name nor uid
    def api(resource: dict[str, Any]) -> dict[str, Any]:
        return {
            "class_uid": 6003, "category_uid": 6, "activity_id": 2, "type_uid": 600302, "severity_id": 1,
            "time": T, "api": {"operation": "list"}, "actor": {"user": {"name": "a"}},
            "src_endpoint": {"ip": "192.0.2.1"}, "resources": [resource],
            "metadata": {"version": "1.1.0", "product": {"name": "p", "vendor_name": "v"}},
        }  # fmt: skip

    schema = load_schema("1.1.0")
    events = [api({"name": "web", "type": "pods"}), api({"type": "nodes", "version": "v1"})]
    batch = pa.RecordBatch.from_pylist(
        [conform_event(e, schema.arrow_schema(6003)) for e in events], schema=schema.arrow_schema(6003)
    )
    verdict = validate(batch, schema, 6003)
    assert verdict.bad.to_pylist() == [False, True]
    assert verdict.reasons[1] == "resources[]: needs at least one of name, uid"


def test_just_one_constraints_are_checked() -> None:
    # GIVEN 1.8.0 findings whose vulnerability names exactly one of advisory/cve/cwe, and two
    schema = load_schema("1.8.0")
    finding = {
        "class_uid": 2002, "category_uid": 2, "activity_id": 1, "type_uid": 200201, "severity_id": 1, "time": T,
        "finding_info": {"uid": "f", "title": "t"},
        "metadata": {"version": "1.8.0", "product": {"name": "p", "vendor_name": "v"}},
    }  # fmt: skip
    one = {**finding, "vulnerabilities": [{"cve": {"uid": "CVE-2024-1"}}]}
    two = {**finding, "vulnerabilities": [{"cve": {"uid": "CVE-2024-1"}, "cwe": {"uid": "CWE-79"}}]}
    arrow = schema.arrow_schema(2002)
    verdict = validate(
        pa.RecordBatch.from_pylist([conform_event(e, arrow) for e in (one, two)], schema=arrow), schema, 2002
    )
    assert verdict.bad.to_pylist() == [False, True]
    assert verdict.reasons[1] == "vulnerabilities[]: needs exactly one of advisory, cve, cwe"


def test_a_record_breaking_a_constraint_is_dead_lettered_with_the_rule_and_the_path(tmp_path: Path) -> None:
    # GIVEN a rule that writes the method as it comes and a device with no identifying attribute
    rule = tmp_path / "web.yaml"
    rule.write_text(
        'name: web\nocsf_versions: ["1.1.0"]\nclass_uid: 4002\nattributes:\n'
        "  activity_id: 99\n  http_request.http_method: {from: m}\n  http_request.url.path: /\n"
        "  device.type_id: 0\n  device.hostname: {from: host}\n"
        "  src_endpoint.ip: 192.0.2.1\n  dst_endpoint.ip: 192.0.2.2\n  http_response.code: 200\n"
    )
    records = [{"m": "GET", "host": "h"}, {"m": "PROPFIND", "host": "h"}, {"m": "GET"}]
    outcome = Mapper(load_schema("1.1.0"), [("*", str(rule))]).map_records("t", records, [T] * 3)
    # THEN the good record is mapped, and each bad one is dead-lettered with the rule and the path
    assert [rows.rows.to_pylist() for _, rows in outcome.mapped] == [[0]]
    assert outcome.failed[1] == ("web", "http_request.http_method: 'PROPFIND' is not a value of its OCSF 1.1.0 enum")
    assert outcome.failed[2][0] == "web"
    assert outcome.failed[2][1].startswith("device: needs at least one of ip, uid, name, hostname")
