"""The mapping engine: time formats, value transforms, parse steps, routing by tag and fallback,
pass-through, unmapped and raw_data, the Python escape hatch, and isolation of a failing batch."""

from __future__ import annotations

import base64
import logging
import random
import re
import textwrap
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest

from securitylake_sink.mapcli import event_json
from securitylake_sink.mapping import route as route_module
from securitylake_sink.mapping.columns import Frame, UsedFields, pull_frame
from securitylake_sink.mapping.evaluate import Evaluator
from securitylake_sink.mapping.functions import register_function
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.ops import Faults
from securitylake_sink.mapping.route import tag_matcher
from securitylake_sink.mapping.spec import KvStep, Ref, RegexStep
from securitylake_sink.mapping.timeparse import parse_times
from securitylake_sink.model import Chunk, DeferredEntries, Entry
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.sources.forward_codec import scan_frame

T = 1_732_795_200_000  # 2024-11-28T12:00:00Z
SSHD_LINE = "Mar 16 11:11:11 bastion-1 sshd[1]: Accepted password for erin from 198.51.100.9 port 40100 ssh2"


def events(outcome: Any) -> dict[int, dict[str, Any]]:
    import json

    return {
        row: json.loads(event_json(event))
        for _, part in outcome.mapped
        for row, event in zip(part.rows.to_pylist(), part.batch.to_pylist(), strict=True)
    }


def rule_file(tmp_path: Path, body: str, name: str = "custom") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f'name: {name}\nocsf_versions: ["1.1.0"]\n' + textwrap.dedent(body))
    return str(path)


TIMES = [
    pytest.param(1717236000, ["epoch"], 1717236000000, id="epoch-s-by-magnitude"),
    pytest.param(1717236000123, ["epoch"], 1717236000123, id="epoch-ms-by-magnitude"),
    pytest.param(1717236000123456, ["epoch"], 1717236000123, id="epoch-us-by-magnitude"),
    pytest.param(1717236000123456789, ["epoch"], 1717236000123, id="epoch-ns-by-magnitude"),
    pytest.param(1717236000.5, ["epoch_s"], 1717236000500, id="epoch-s-float"),
    pytest.param("1717236000250", ["epoch_ms"], 1717236000250, id="epoch-ms-text"),
    pytest.param("2024-06-01T10:00:00Z", ["rfc3339"], 1717236000000, id="rfc3339-z"),
    pytest.param("2024-06-01T12:00:00.123456789+02:00", ["rfc3339"], 1717236000123, id="rfc3339-offset-ns"),
    pytest.param("2024-06-01 10:00:00 +0000", ["rfc3339"], 1717236000000, id="rfc3339-winevtlog"),
    pytest.param("2024-06-01T10:00:00.9027913Z", ["rfc3339"], 1717236000902, id="rfc3339-7-digits"),
    pytest.param("2024-06-01T10:00:00", ["rfc3339"], 1717236000000, id="rfc3339-no-zone-is-utc"),
    pytest.param("Jun  1 10:00:00", ["rfc3164"], 1717236000000, id="rfc3164-padded-day"),
    pytest.param("Dec 31 23:59:59", ["rfc3164"], 1704067199000, id="rfc3164-last-year"),
    pytest.param("01/Jun/2024:12:00:00 +0200", ["clf"], 1717236000000, id="clf"),
    pytest.param("2024/06/01 10:00:00", ["%Y/%m/%d %H:%M:%S"], 1717236000000, id="strptime"),
    pytest.param("not a time", ["rfc3164", "rfc3339", "clf"], None, id="unparseable"),
]


@pytest.mark.parametrize(("value", "formats", "expected"), TIMES)
def test_time_formats(value: Any, formats: list[str], expected: int | None) -> None:
    # GIVEN a time in some format and the record's transport time (2024-11-28)
    got = parse_times(pa.array([value]), formats, pa.array([T], pa.int64()))
    # THEN it is the right epoch ms (a December syslog time read in November is last year's)
    assert got.to_pylist() == [expected]


def test_a_fixed_zone_applies_to_zoneless_times(tmp_path: Path) -> None:
    rule = rule_file(
        tmp_path,
        """\
        class_uid: 0
        attributes:
          time: {from: t, time: rfc3164, tz: "+02:00"}
        """,
    )
    outcome = Mapper(load_schema("1.1.0"), [("*", rule)]).map_records("x", [{"t": "Jun  1 12:00:00"}], [T])
    assert events(outcome)[0]["time"] == 1717236000000


def test_value_transforms(tmp_path: Path) -> None:
    # GIVEN a rule exercising each transform; WHEN one record is mapped
    rule = rule_file(
        tmp_path,
        """\
        class_uid: 0
        attributes:
          message: {concat: [a, {const: "-"}, missing, b], sep: "|"}
          severity_id: {from: level, map: {warn: 3, error: 4}, ignore_case: true, map_default: 1}
          status_detail: {from: path, basename: true, case: upper}
          status_code: {from: kv, after: "=", before: ";"}
          raw_data: {from: hexed, decode: hex}
          count: {from: pid, int_base: 16}
          duration: {from: secs, scale: 1000}
          status_id: {from: pri, mod: 8, map: {"6": 1}, map_default: 2}
          metadata.log_level: {from: dash, null_if: ["-"], default: "none"}
          metadata.labels: {from: csv, split: ","}
          metadata.uid: {from: items, each: id, index: 1}
        """,
    )
    record = {
        "a": "x", "b": 7, "level": "WARN", "path": "C:\\Windows\\cmd.exe", "kv": "k=v;rest", "hexed": "68656C6C6F",
        "pid": "0x1a0", "secs": 2.5009, "pri": 30, "dash": "-", "csv": "a, b ,c", "items": [{"id": "p"}, {"id": "q"}],
    }  # fmt: skip
    outcome = Mapper(load_schema("1.1.0"), [("*", rule)]).map_records("x", [record], [T])
    event = events(outcome)[0]
    # THEN each attribute is transformed as declared
    assert event["message"] == "x|-|7"
    assert event["severity_id"] == 3
    assert event["status_detail"] == "CMD.EXE"
    assert event["status_code"] == "v"
    assert event["raw_data"] == "hello"
    assert event["count"] == 416
    assert event["duration"] == 2500
    assert event["status_id"] == 1
    assert event["metadata"]["log_level"] == "none"
    assert event["metadata"]["labels"] == ["a", "b", "c"]
    assert event["metadata"]["uid"] == "q"


def test_regex_steps_take_the_first_pattern_that_matches_and_kv_steps_take_quoted_and_hex(tmp_path: Path) -> None:
    rule = rule_file(
        tmp_path,
        """\
        line: [log]
        parse:
          - name: r
            from: $line
            regex: ['^(?P<word>a\\w*) (?P<n>\\d+)', '^(?P<word>\\w+) (?P<other>.*)']
          - name: kv
            from: $line
            kv: {keys: [exe, uid]}
        class_uid: 0
        attributes:
          message: {from: [$r.word]}
          status_code: $r.n
          status_detail: $r.other
          metadata.uid: {from: $kv.exe, decode: audit}
          metadata.log_name: $kv.uid
        """,
    )
    records = [{"log": 'abc 42 exe="/bin/ls" uid=0'}, {"log": "zed rest exe=2F62696E2F7368"}]
    got = events(Mapper(load_schema("1.1.0"), [("*", rule)]).map_records("x", records, [T, T]))
    assert (got[0]["message"], got[0]["status_code"], got[0].get("status_detail")) == ("abc", "42", None)
    assert (got[1]["message"], got[1].get("status_code"), got[1]["status_detail"]) == (
        "zed",
        None,
        "rest exe=2F62696E2F7368",
    )
    assert (got[0]["metadata"]["uid"], got[0]["metadata"]["log_name"], got[1]["metadata"]["uid"]) == (
        "/bin/ls",
        "0",
        "/bin/sh",
    )


def test_bytes_that_are_not_utf8_are_replaced_not_a_reason_to_dead_letter() -> None:
    # GIVEN a forward frame whose line, an unused field and a nested unused field hold bytes that
    # are not UTF-8 (Fluentd sends binary as str), next to a clean record
    line = SSHD_LINE.encode().replace(b"erin", b"er\xffin")
    packer = msgpack.Packer(unicode_errors="surrogateescape")
    record = {"log": line.decode("utf-8", "surrogateescape"), "note": "a\udcfe", "meta": {"k": "b\udcfe"}}
    raw = packer.pack(["host.a", [[int(T / 1000), record], [int(T / 1000), {"log": SSHD_LINE}]]])
    chunk = scan_frame(raw, received_ns=T * 1_000_000)
    assert chunk is not None
    # WHEN mapped
    result = Mapper(load_schema("1.1.0"), [("host.*", "sshd")]).map_chunks([chunk], lambda uid: "ext/auth/")
    # THEN both land, the odd bytes replaced; nothing is dead-lettered
    assert not result.dead
    (batch,) = [b.batch for b in result.batches]
    rows = batch.to_pylist()
    assert [r["user"]["name"] for r in rows] == ["er?in", "erin"]
    assert rows[0]["raw_data"] == SSHD_LINE.replace("erin", "er?in")
    assert sorted(rows[0]["unmapped"]) == [("meta.k", "b?"), ("note", "a?")]


def test_fields_a_rule_does_not_use_go_to_unmapped_and_the_line_to_raw_data() -> None:
    # GIVEN an sshd line with extra fields from the shipper
    record = {"log": SSHD_LINE, "kubernetes": {"pod": "p-1", "labels": {"app": "ssh"}}, "seq": 7, "ok": True}
    event = events(Mapper(load_schema("1.1.0"), [("*", "sshd")]).map_records("x", [record], [T]))[0]
    # THEN the unused fields are in unmapped with dotted keys and text values
    assert event["unmapped"] == {"kubernetes.pod": "p-1", "kubernetes.labels.app": "ssh", "seq": "7", "ok": "true"}
    assert event["raw_data"] == SSHD_LINE


def test_raw_data_false_keeps_the_parsed_fields_and_leaves_the_line_out(tmp_path: Path) -> None:
    # GIVEN sshd bound twice: as is, and with raw_data false; and a rule that maps raw_data itself
    record = {"log": SSHD_LINE, "seq": 7}
    schema = load_schema("1.1.0")
    kept = events(Mapper(schema, [("*", "sshd")]).map_records("x", [record], [T]))[0]
    left = events(Mapper(schema, [("*", "sshd", False)]).map_records("x", [record], [T]))[0]
    # THEN only raw_data differs
    assert kept["raw_data"] == SSHD_LINE
    assert "raw_data" not in left
    assert {k: v for k, v in kept.items() if k != "raw_data"} == left
    own = rule_file(
        tmp_path,
        """
        class_uid: 0
        line: [log]
        attributes:
          activity_id: 0
          severity_id: 0
          raw_data: {from: log}
        """,
    )
    mapped = events(Mapper(schema, [("*", own, False)]).map_records("x", [record], [T]))[0]
    assert mapped["raw_data"] == SSHD_LINE  # what a rule maps itself stays


@pytest.mark.parametrize(
    ("pattern", "tag", "matches"),
    [
        ("host.*", "host.sshd", True),
        ("host.*", "host", False),
        ("*", "anything.at.all", True),
        ("*.sshd", "a.b.sshd", True),
        ("kube.*.audit", "kube.x.y.audit", True),
        ("app.[ab]", "app.a", False),  # only * is special, as in Fluent Bit's Match
        ("app.[ab]", "app.[ab]", True),
        ("app.?", "app.x", False),
    ],
)
def test_tag_globs_follow_fluent_bit_match(pattern: str, tag: str, matches: bool) -> None:
    assert tag_matcher(pattern)(tag) is matches


def test_bindings_apply_in_order_and_a_declined_record_goes_on(tmp_path: Path) -> None:
    # GIVEN sshd then syslog bound to host.*, and records of both kinds plus OCSF and junk
    mapper = Mapper(load_schema("1.1.0"), [("host.*", "sshd"), ("host.*", "syslog")])
    records = [
        {"log": SSHD_LINE},
        {"log": "<13>Mar 16 11:11:12 bastion-1 cron[2]: job done"},
        {"class_uid": 3002, "activity_id": 1, "time": T, "user": {"name": "u"}, "service": {"name": "s"}},
        {"log": "no header at all"},
    ]
    outcome = mapper.map_records("host.a", records, [T] * 4)
    # THEN each record lands with the first rule that takes it, OCSF passes through, junk is dead
    by_rule = {rule: part.rows.to_pylist() for rule, part in outcome.mapped}
    assert by_rule == {"sshd": [0], "syslog": [1], "ocsf": [2]}
    assert outcome.failed == {
        3: (
            "syslog",
            "mappings: sshd, syslog do not take it, and it carries no class_uid (mappings_fallback is dead_letter)",
        )
    }
    # AND a tag no binding matches gets no rule at all
    other = mapper.map_records("web.a", [{"log": SSHD_LINE}], [T])
    assert "no rule is bound to its tag" in other.failed[0][1]


@pytest.mark.parametrize("fallback", ["dead_letter", "base_event", "drop"])
def test_fallbacks(fallback: str, caplog: pytest.LogCaptureFixture) -> None:
    mapper = Mapper(load_schema("1.1.0"), [("host.*", "sshd")], fallback)
    records = [{"log": "odd line", "n": 1}, {"log": SSHD_LINE}]
    with caplog.at_level(logging.WARNING, "securitylake_sink.mapping"):
        outcome = mapper.map_records("host.a", records, [T, T])
        mapper.map_records("host.a", records, [T, T])
    mapped = events(outcome)
    assert 1 in mapped and mapped[1]["class_uid"] == 3002
    if fallback == "dead_letter":
        assert list(outcome.failed) == [0] and not outcome.dropped
    elif fallback == "base_event":
        assert (
            mapped[0]["class_uid"] == 0 and mapped[0]["raw_data"] == "odd line" and mapped[0]["unmapped"] == {"n": "1"}
        )
    else:
        assert outcome.dropped == [0] and not outcome.failed
    assert mapper.map_chunks([], lambda uid: "ext/x/").records == 0
    if fallback == "drop":
        chunk = Chunk("forward", "host.b", [Entry(None, records[0])], b"")
        result = mapper.map_chunks([chunk, chunk], lambda uid: "ext/x/")
        mapper.map_chunks([chunk], lambda uid: "ext/x/")
        assert result.dropped == {"host.b": 2}
        assert sum("dropped" in r.getMessage() for r in caplog.records) == 1  # once per tag


def test_map_chunks_places_classes_at_locations_and_dead_letters_the_unplaced() -> None:
    # GIVEN chunks of two tags, and a location only for Authentication
    mapper = Mapper(load_schema("1.1.0"), [("host.*", "sshd"), ("web.*", "nginx_access")])
    nginx = '192.0.2.1 - - [05/Feb/2024:13:45:01 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8"'
    chunks = [
        Chunk("forward", "host.a", [Entry(T * 1_000_000, {"log": SSHD_LINE})] * 3, b"", received_ns=1),
        Chunk("forward", "web.a", [Entry(None, {"log": nginx})], b"", received_ns=T * 1_000_000),
    ]
    result = mapper.map_chunks(chunks, lambda uid: "ext/auth/" if uid == 3002 else None)
    # THEN the authentications are placed, the HTTP event is a dead letter naming the class
    assert [(b.location, b.class_uid, b.batch.num_rows) for b in result.batches] == [("ext/auth/", 3002, 3)]
    (letter,) = result.dead
    assert (letter.tag, letter.rule, letter.record) == ("web.a", "nginx_access", {"log": nginx})
    assert "no destination.sources location is configured for class 4002" in letter.reason
    assert (result.records, result.mapped) == (4, 3)


class _Record(dict[str, Any]):
    """A record that can be watched with a weak reference (a plain dict cannot)."""


def test_map_chunks_builds_and_lets_go_of_one_routing_keys_records_at_a_time() -> None:
    # GIVEN deferred chunks of two tags routed to different rules, interleaved; each chunk's
    # records are watched, and each time a chunk's records are built the records of the other
    # rule that are still alive are counted
    mapper = Mapper(load_schema("1.1.0"), [("host.*", "sshd"), ("web.*", "nginx_access")])
    nginx = '192.0.2.1 - - [05/Feb/2024:13:45:01 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8"'
    watched: dict[str, list[weakref.ref[_Record]]] = {"host": [], "web": []}
    alive_at_build: list[tuple[str, int]] = []

    def deferred(tag: str, line: str, n: int) -> Chunk:
        kind = tag.partition(".")[0]

        def build() -> list[Entry]:
            other = "web" if kind == "host" else "host"
            alive_at_build.append((kind, sum(ref() is not None for ref in watched[other])))
            records = [_Record(log=line) for _ in range(n)]
            watched[kind] += [weakref.ref(r) for r in records]
            return [Entry(T * 1_000_000, r) for r in records]

        return Chunk("forward", tag, DeferredEntries(n, build), b"", received_ns=T * 1_000_000)

    chunks = [deferred("host.a", SSHD_LINE, 50), deferred("web.a", nginx, 40), deferred("host.b", SSHD_LINE, 30)]
    # WHEN mapped in one call
    result = mapper.map_chunks(chunks, lambda uid: "ext/x/")
    # THEN every record is mapped; the second rule's records are built after the first rule's
    # are all gone, and no chunk keeps its built records
    assert (result.records, result.mapped, result.dead) == (120, 120, ())
    assert alive_at_build == [("host", 0), ("host", 0), ("web", 0)]
    assert not any(ref() for refs in watched.values() for ref in refs)
    assert not any(chunk.entries.decoded for chunk in chunks if isinstance(chunk.entries, DeferredEntries))


def test_a_chunk_whose_records_cannot_be_built_is_one_dead_letter_with_its_bytes() -> None:
    # GIVEN a frame the intake check passed (well-formed msgpack) whose record has an array as a
    # map key, next to a good chunk
    mapper = Mapper(load_schema("1.1.0"), [("host.*", "sshd")])
    raw = bytes.fromhex("92 a7 686f73742e6231 91 92 d7 00 6553f100 00000000 81 91 01 02")  # ["host.b1", ...]
    bad = scan_frame(raw, received_ns=T * 1_000_000)
    assert bad is not None and len(bad.entries) == 1
    good = Chunk("forward", "host.a", [Entry(T * 1_000_000, {"log": SSHD_LINE})], b"", received_ns=1)
    # WHEN both are mapped
    result = mapper.map_chunks([bad, good], lambda uid: "ext/auth/")
    # THEN the good one lands and the bad one is one dead letter holding the frame as received
    assert [b.batch.num_rows for b in result.batches] == [1]
    (letter,) = result.dead
    assert letter.tag == "host.b1"
    assert letter.reason.startswith("input: the records could not be decoded")
    assert base64.b64decode(letter.record["frame_base64"]) == raw
    assert result.records == 2


def test_tags_routed_alike_are_mapped_in_one_call_each_record_keeping_its_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN one rule reached through two bindings, a rule of its own, and the drop fallback
    rule = rule_file(
        tmp_path,
        """\
        line: [log]
        parse:
          - {name: w, from: $line, regex: ['^(?P<word>ok) (?P<n>\\d+)$']}
        where: {matched: w}
        class_uid: 0
        attributes:
          message: $tag
          status_code: $w.n
        """,
    )
    mapper = Mapper(load_schema("1.1.0"), [("pod.*", rule), ("node.*", rule), ("host.*", "sshd")], "drop")
    calls: list[int] = []
    real = route_module.apply_rule

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(route_module, "apply_rule", counted)
    # WHEN chunks of four tags arrive interleaved, some records declined by the rule
    chunks = [
        Chunk(
            "forward", "pod.a", [Entry(None, {"log": "ok 1"}), Entry(None, {"log": "no"})], b"", received_ns=T * 10**6
        ),
        Chunk("forward", "host.x", [Entry(None, {"log": SSHD_LINE})], b"", received_ns=T * 10**6),
        Chunk("forward", "node.b", [Entry(None, {"log": "ok 2"})], b"", received_ns=T * 10**6),
        Chunk(
            "forward", "pod.c", [Entry(None, {"log": "ok 3"}), Entry(None, {"log": "no"})], b"", received_ns=T * 10**6
        ),
    ]
    result = mapper.map_chunks(chunks, lambda uid: "ext/x/")
    # THEN the rule ran once over the records of its three tags, and sshd once
    assert sorted(calls) == [1, 5]
    # AND each event names its own tag ($tag, metadata.log_name), and drops count per tag
    rows = [r for b in result.batches if b.class_uid == 0 for r in b.batch.to_pylist()]
    assert sorted((r["message"], r["metadata"]["log_name"], r["status_code"]) for r in rows) == [
        ("node.b", "node.b", "2"),
        ("pod.a", "pod.a", "1"),
        ("pod.c", "pod.c", "3"),
    ]
    assert result.dropped == {"pod.a": 1, "pod.c": 1}
    assert (result.records, result.mapped, result.dead) == (6, 4, ())


def test_a_rule_calling_python_sees_one_tag_per_frame(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    @register_function("test_tagged")
    def tagged(frame: Frame) -> Sequence[Any]:
        seen.append((frame.tag, frame.n))
        return [frame.tag] * frame.n

    rule = rule_file(tmp_path, "class_uid: 0\nattributes:\n  message: {python: test_tagged}\n")
    mapper = Mapper(load_schema("1.1.0"), [("a.*", rule)])
    chunks = [Chunk("forward", tag, [Entry(None, {"w": 1})] * 2, b"", received_ns=T * 10**6) for tag in ("a.1", "a.2")]
    result = mapper.map_chunks(chunks, lambda uid: "ext/x/")
    assert sorted(seen) == [("a.1", 2), ("a.2", 2)]
    assert sorted(r["message"] for b in result.batches for r in b.batch.to_pylist()) == ["a.1", "a.1", "a.2", "a.2"]


def test_the_python_escape_hatch(tmp_path: Path) -> None:
    @register_function("test_reverse")
    def reverse(frame: Frame) -> Sequence[Any]:
        return [None if r.get("w") is None else str(r["w"])[::-1] for r in frame.records]

    rule = rule_file(
        tmp_path,
        """\
        class_uid: 0
        attributes:
          message: {python: test_reverse}
        """,
    )
    got = events(Mapper(load_schema("1.1.0"), [("*", rule)]).map_records("x", [{"w": "abc"}, {}], [T, T]))
    assert got[0]["message"] == "cba" and "message" not in got[1]


def test_a_batch_that_trips_the_engine_is_mapped_record_by_record(tmp_path: Path) -> None:
    # GIVEN a function that fails on one record only
    @register_function("test_fragile")
    def fragile(frame: Frame) -> Sequence[Any]:
        if any(r.get("boom") for r in frame.records):
            raise RuntimeError("boom")
        return [r.get("w") for r in frame.records]

    rule = rule_file(
        tmp_path,
        """\
        class_uid: 0
        attributes:
          message: {python: test_fragile}
        """,
    )
    records: list[Mapping[str, Any]] = [{"w": "a"}, {"boom": True}, {"w": "c"}]
    outcome = Mapper(load_schema("1.1.0"), [("*", rule)]).map_records("x", records, [T] * 3)
    # THEN the others are mapped and the one that fails is a dead letter with the error
    assert sorted(events(outcome)) == [0, 2]
    assert "internal error" in outcome.failed[1][1] and "boom" in outcome.failed[1][1]


def test_a_value_that_cannot_be_cast_dead_letters_its_record_only(tmp_path: Path) -> None:
    rule = rule_file(
        tmp_path,
        """\
        class_uid: 4001
        attributes:
          src_endpoint.ip: {from: ip}
          dst_endpoint.ip: {from: ip}
          src_endpoint.port: {from: port}
          time: {from: t}
        """,
    )
    records = [{"ip": "192.0.2.1", "port": 80}, {"ip": "192.0.2.1", "port": "eighty"}, {"ip": "x", "t": "tomorrow"}]
    outcome = Mapper(load_schema("1.1.0"), [("*", rule)]).map_records("x", records, [T] * 3)
    assert sorted(events(outcome)) == [0]
    assert outcome.failed[1][1] == "src_endpoint.port: 'eighty' is not a valid int32"
    assert outcome.failed[2][1] == "time: cannot read 'tomorrow' as a time (auto)"


def test_a_regex_step_agrees_with_first_match_semantics_row_by_row() -> None:
    """Each row takes the first pattern that matches it; groups of other patterns are null there,
    as is a group that took no part in the match; names of a pattern no row matches still exist."""
    patterns = (
        r"^(?P<verb>GET|PUT) (?P<path>/\S*)(?: (?P<code>\d+))?",
        r"^user (?P<user>\w+) from (?P<ip>[\d.]+)",
        r"^(?P<user>\w+)@(?P<host>\S+)",
        r"^never (?P<nothing>x)$",
        r"(?P<tail>\d+)$",
    )
    shapes = ["GET /a 200", "PUT /b", "user ann from 10.0.0.1", "bob@h1", "user 7", "zzz", "", "9@x 12", "x 12"]
    rng = random.Random(7)
    records: list[dict[str, Any]] = [
        {"log": rng.choice(shapes)} if rng.random() > 0.1 else {"other": 1} for _ in range(3_000)
    ]
    frame = pull_frame(records, "t", pa.array([T] * len(records), pa.int64()), UsedFields(("log",), ("log",)))
    evaluator = Evaluator(frame, {}, Faults())
    evaluator.run_step(RegexStep("r", Ref("log", ()), patterns, ()))

    names = ["verb", "path", "code", "user", "ip", "host", "nothing", "tail"]
    assert sorted(k for k in frame.captures if k.startswith("r.")) == sorted(f"r.{n}" for n in names)
    for row, record in enumerate(records):
        line = record.get("log")
        hit = next((m for p in patterns if line is not None and (m := re.search(p, line))), None)
        assert frame.matched["r"][row].as_py() is (hit is not None), (row, line)
        for name in names:
            want = (hit.groupdict().get(name) or None) if hit else None
            assert frame.captures[f"r.{name}"][row].as_py() == want, (row, line, name)


def test_a_kv_step_agrees_with_a_token_by_token_reading_row_by_row() -> None:
    """A key's value is what follows "<key>=" in the first token that starts so; a key that only
    begins another (``a`` in ``ab=1``), a token without "=", or "=" inside a value change nothing;
    an empty value is absent, though the record counts as matched."""
    keys = ("a", "ab", "uid", "msg", "none")
    tokens = ["a=1", "ab=2", "a=", "uid=0", "uid=1", "msg=x=y", "=z", "bare", "ab", "other=3", "a==", "uid=ä"]
    rng = random.Random(11)
    records: list[dict[str, Any]] = [
        {"log": " ".join(rng.choice(tokens) for _ in range(rng.randint(0, 6)))} if rng.random() > 0.1 else {}
        for _ in range(3_000)
    ]
    frame = pull_frame(records, "t", pa.array([T] * len(records), pa.int64()), UsedFields(("log",), ("log",)))
    Evaluator(frame, {}, Faults()).run_step(KvStep("kv", Ref("log", ()), keys, " ", (), None, ()))

    for row, record in enumerate(records):
        pairs = [t.split("=", 1) for t in (record["log"].split(" ") if "log" in record else []) if "=" in t]
        found = {k: next((v for key, v in pairs if key == k), None) for k in keys}
        for key in keys:
            assert frame.captures[f"kv.{key}"][row].as_py() == (found[key] or None), (row, record, key)
        assert frame.matched["kv"][row].as_py() is any(found[k] is not None for k in keys), (row, record)
