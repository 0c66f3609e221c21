"""``securitylake-sink map``, the Base Event and missing-location warnings of check-config, and the
columnar hand-over to the batcher (split by event hour into slices)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import msgpack
import pyarrow as pa
import pytest

from securitylake_sink.batch import Batcher, LakeTarget
from securitylake_sink.cli import main
from securitylake_sink.config import parse_config
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.model import Chunk, Entry
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.plan import warnings_for
from securitylake_sink.spool.wal import WalPosition

SSHD = "Mar 16 11:11:11 bastion-1 sshd[1]: Accepted password for erin from 198.51.100.9 port 40100 ssh2"
H = 3_600_000


def test_map_a_rule_over_a_file_prints_events_and_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN ndjson with an sshd line, a raw (non-JSON) sshd line and a line sshd does not take
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps({"log": SSHD}) + "\n" + SSHD + "\n" + json.dumps({"log": "kernel: hello"}) + "\n")
    # WHEN mapped with --rule
    code = main(["map", "--rule", "sshd", str(source)])
    out, err = capsys.readouterr()
    # THEN two events on stdout, one dead letter with its reason on stderr, exit 0
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["class_uid"] for e in events] == [3002, 3002]
    assert events[0]["user"] == {"name": "erin"} and events[0]["metadata"]["version"] == "1.1.0"
    (letter,) = [json.loads(line) for line in err.splitlines()]
    assert letter["record"] == {"log": "kernel: hello"} and letter["rule"] == "sshd"
    assert letter["reason"].startswith("mappings: sshd does not take it")


def test_map_reads_msgpack_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = msgpack.packb([1700000000, {"log": SSHD}]) + msgpack.packb({"log": SSHD})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["map", "--rule", "sshd", "--msgpack"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_map_with_a_config_and_tag_uses_its_mappings_and_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sink.yaml"
    config.write_text(
        f"""destination:
  url: "file://{tmp_path}/lake"
  region: eu-west-1
  sources: [{{class_uid: "*", location: "ext/x/"}}]
spool: {{path: "{tmp_path}/spool"}}
ocsf: {{version: "1.8.0"}}
mappings: [{{match: "host.*", rule: sshd}}]
mappings_fallback: base_event
"""
    )
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps({"log": SSHD}) + "\n" + json.dumps({"log": "odd"}) + "\n")
    assert main(["map", "-c", str(config), "--tag", "host.a", str(source)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["class_uid"], e["metadata"]["version"]) for e in events] == [(3002, "1.8.0"), (0, "1.8.0")]


def test_map_exits_2_on_a_bad_rule_or_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_rule = tmp_path / "bad.yaml"
    bad_rule.write_text('name: bad\nocsf_versions: ["1.1.0"]\nclass_uid: 3002\nattributes: {user.nam: x}\n')
    assert main(["map", "--rule", str(bad_rule)]) == 2
    assert "bad.yaml:4: attributes.user.nam" in capsys.readouterr().err
    assert main(["map", "--rule", "no_such_rule"]) == 2
    assert main(["map", "-c", str(tmp_path / "missing.yaml"), "--tag", "t"]) == 2
    assert main(["map", "-c", str(tmp_path / "missing.yaml")]) == 2  # -c needs --tag


def test_map_list_names_every_built_in_rule_and_its_classes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["map", "--list"]) == 0
    out = capsys.readouterr().out
    for name, classes in [
        ("sshd", "3002 Authentication"),
        ("suricata_eve", "2004 Detection Finding"),
        ("syslog", "0 Base Event"),
    ]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert classes in line


def config(url: str, extra: str, sources: str = '[{class_uid: "*", location: "ext/x/"}]') -> str:
    return f"""destination: {{url: "{url}", region: eu-west-1, sources: {sources}}}
auth: {{role_arn: "arn:aws:iam::111122223333:role/SynqlyAccess-x", external_id: "abc123"}}
batch: {{max_age_secs: 300}}
spool: {{path: "/tmp/spool-test"}}
{extra}"""


S3 = "s3://aws-security-data-lake-eu-west-1-abc123/ext/x/"


@pytest.mark.parametrize(
    ("url", "extra", "warned"),
    [
        (S3, "mappings_fallback: base_event", True),
        (S3, "mappings: [{match: 'h.*', rule: syslog}]", True),
        (S3, "mappings: [{match: 'h.*', rule: sshd}]", False),
        ("file:///tmp/lake", "mappings_fallback: base_event", False),
    ],
)
def test_check_config_warns_when_base_events_would_go_to_security_lake(url: str, extra: str, warned: bool) -> None:
    warnings = warnings_for(parse_config(config(url, extra)))
    assert any("Base Events (class 0)" in w for w in warnings) is warned


def test_check_config_warns_about_a_class_without_a_location() -> None:
    text = config(
        "file:///tmp/lake", "mappings: [{match: 'h.*', rule: cloudtrail}]", '[{class_uid: 6003, location: "ext/api/"}]'
    )
    warnings = warnings_for(parse_config(text))
    assert any("mappings[0].rule cloudtrail maps to class 3002 (Authentication)" in w for w in warnings)


def test_the_batcher_cuts_a_mapped_batch_by_event_hour(tmp_path: Path) -> None:
    # GIVEN OCSF records over three event hours out of order, mapped into one batch
    schema = load_schema("1.1.0")
    base = 1_732_795_200_000
    entries = [
        Entry(None, {"class_uid": 0, "activity_id": 0, "time": base + offset, "message": str(i)})
        for i, offset in enumerate([2 * H + 5, 10, H, 20, 2 * H, H + 7])
    ]
    result = Mapper(schema).map_chunks([Chunk("forward", "t", entries, b"")], lambda uid: "ext/x/")
    (mapped,) = result.batches
    assert mapped.batch.column("time").to_pylist() == [base + o for o in [2 * H + 5, 10, H, 20, 2 * H, H + 7]]
    # WHEN the batcher takes it
    batcher = Batcher(schema, LakeTarget("", "eu-west-1", "external"), tmp_path, max_age_secs=300, max_bytes=1 << 30)
    batcher.add(result.batches, WalPosition(0, 10))
    # THEN each hour has its own batch file with its rows
    hours = {key[2]: batch.rows for key, batch in batcher.open.items()}
    first = base // H
    assert hours == {first: 2, first + 1: 2, first + 2: 2}
    batcher.sync()
    table = next(b for k, b in batcher.open.items() if k[2] == first + 1).read_table(schema.arrow_schema(0))
    assert isinstance(table, pa.Table) and sorted(table.column("message").to_pylist()) == ["2", "5"]
