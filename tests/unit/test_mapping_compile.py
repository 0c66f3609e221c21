"""Rule compile errors are clear: each names the rule file, the line and the dotted path, and says
what is wrong (unknown attribute, wrong type, bad regex, ...); config errors name mappings[i].rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from securitylake_sink.config import parse_config
from securitylake_sink.errors import ConfigError
from securitylake_sink.mapping.route import compile_named
from securitylake_sink.mapping.rulefile import RuleError
from securitylake_sink.ocsf.schema import load_schema

GOOD = """\
name: myapp
description: a test rule
ocsf_versions: ["1.1.0"]
line: [log]
parse:
  - name: m
    from: $line
    regex: ['^login (?P<user>[^ ]+) from (?P<ip>[^ ]+)']
where: {matched: m}
class_uid: 3002
attributes:
  activity_id: 1
  user.name: $m.user
  src_endpoint.ip: $m.ip
  service.name: myapp
"""


def write_rule(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "myapp.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def compile_error(tmp_path: Path, text: str, version: str = "1.1.0") -> str:
    path = write_rule(tmp_path, text)
    with pytest.raises(RuleError) as info:
        compile_named(str(path), load_schema(version))
    return str(info.value)


def test_the_good_rule_compiles(tmp_path: Path) -> None:
    rule = compile_named(str(write_rule(tmp_path, GOOD)), load_schema("1.1.0"))
    assert (rule.name, rule.classes) == ("myapp", (3002,))


ERRORS = [
    pytest.param(
        GOOD.replace("  user.name: $m.user", "  user.nam: $m.user"),
        13,
        ["attributes.user.nam", "'user.nam' is no attribute of OCSF 1.1.0 class 3002 (Authentication)", "user.name"],
        id="unknown-attribute",
    ),
    pytest.param(
        GOOD.replace("  activity_id: 1", "  activity_id: login"),
        12,
        ["attributes.activity_id", "wrong type: 'login' is not a int32"],
        id="wrong-type",
    ),
    pytest.param(
        GOOD.replace("  activity_id: 1", "  activity_id: 7"),
        12,
        ["attributes.activity_id", "7 is not an id of activity_id", "1 Logon"],
        id="enum-out-of-range",
    ),
    pytest.param(
        GOOD.replace("regex: ['^login (?P<user>[^ ]+)", "regex: ['^login (?P<user>[^ ]+"),
        8,
        ["parse[0].regex", "bad regex"],
        id="bad-regex",
    ),
    pytest.param(
        GOOD.replace("(?P<ip>[^ ]+)']", "([^ ]+)']"),
        8,
        ["parse[0].regex", "unnamed group", "(?:...)"],
        id="unnamed-group",
    ),
    pytest.param(
        GOOD.replace("regex: ['^login (?P<user>[^ ]+) from (?P<ip>[^ ]+)']", "regex: []").replace(
            "  user.name: $m.user\n  src_endpoint.ip: $m.ip\n", ""
        ),
        8,
        ["parse[0].regex", "must give at least one pattern"],
        id="no-pattern",
    ),
    pytest.param(
        GOOD.replace("  src_endpoint.ip: $m.ip", "  src_endpoint.ip: $m.addr"),
        14,
        ["attributes.src_endpoint.ip", "parse step 'm' has no group 'addr'"],
        id="unknown-group",
    ),
    pytest.param(
        GOOD.replace("  user.name: $m.user", "  user.name: {frm: $m.user}"),
        13,
        ["attributes.user.name.frm", "unknown key 'frm'", "did you mean 'from'"],
        id="unknown-key",
    ),
    pytest.param(
        GOOD.replace("  user.name: $m.user", "  user: $m.user"),
        13,
        ["attributes.user", "user is an object: set its attributes"],
        id="object-set-whole",
    ),
    pytest.param(
        GOOD.replace("  service.name: myapp", "  service.name: {python: no_such_fn}"),
        15,
        ["attributes.service.name.python", "no Python function is registered as 'no_such_fn'"],
        id="unknown-function",
    ),
    pytest.param(
        GOOD.replace("class_uid: 3002", "class_uid: 31337"), 10, ["class_uid", "no event class 31337"], id="class"
    ),
    pytest.param(
        GOOD.replace("  src_endpoint.ip: $m.ip", "  src_endpoint.ip: {from: $m.ip, time: fortnight}"),
        14,
        ["attributes.src_endpoint.ip.time", "'fortnight' is none of"],
        id="time-format",
    ),
    pytest.param(
        GOOD.replace("where: {matched: m}", "where: {matched: n}"), 9, ["where", "no parse step 'n'"], id="step"
    ),
    pytest.param(GOOD.replace("  - name: m\n", "  - name: m\n    from: [\n"), 9, ["not valid YAML"], id="yaml"),
]


@pytest.mark.parametrize(("text", "line", "phrases"), ERRORS)
def test_errors_name_the_file_the_line_and_the_path(tmp_path: Path, text: str, line: int, phrases: list[str]) -> None:
    # GIVEN a rule file broken in one place; WHEN it is compiled
    message = compile_error(tmp_path, text)
    # THEN the error names the file and line, the dotted path, and what is wrong
    assert f"myapp.yaml:{line}" in message, message
    for phrase in phrases:
        assert phrase in message, message


def test_a_version_the_rule_does_not_declare_is_refused(tmp_path: Path) -> None:
    message = compile_error(tmp_path, GOOD, version="1.8.0")
    assert "myapp.yaml:3: ocsf_versions: rule 'myapp' supports OCSF 1.1.0, not 1.8.0" in message


def test_map_keys_that_yaml_reads_as_booleans_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace("  activity_id: 1", "  is_mfa: {from: $m.user, map: {yes: true}}\n  activity_id: 1")
    assert "key True is a YAML bool: quote it" in compile_error(tmp_path, text)


def config_yaml(tmp_path: Path, mappings: str) -> str:
    lines = [
        "destination:",
        f'  url: "file://{tmp_path / "lake"}"',
        "  region: eu-west-1",
        '  sources: [{class_uid: "*", location: "ext/test/"}]',
        f'spool: {{path: "{tmp_path / "spool"}"}}',
        "mappings:",
        *(f"  {line}" for line in mappings.splitlines()),
    ]
    return "\n".join(lines) + "\n"


def test_config_binds_built_in_rules_files_relative_to_it_and_ocsf(tmp_path: Path) -> None:
    write_rule(tmp_path, GOOD)
    text = config_yaml(tmp_path, "- {match: 'app.*', rule: myapp.yaml}\n- {rule: sshd}\n- {match: '*', rule: ocsf}")
    config_file = tmp_path / "sink.yaml"
    config_file.write_text(text)
    from securitylake_sink.config import load_config

    config = load_config(config_file)
    assert [b.rule for b in config.mappings] == [str((tmp_path / "myapp.yaml").resolve()), "sshd", "ocsf"]
    assert [b.match for b in config.mappings] == ["app.*", None, "*"]
    assert config.mappings_fallback == "dead_letter"


def test_config_errors_name_the_binding_and_the_rule_file_line(tmp_path: Path) -> None:
    # GIVEN a config binding a rule file that does not compile, and an unknown rule
    path = write_rule(tmp_path, GOOD.replace("  user.name: $m.user", "  user.nam: $m.user"))
    text = config_yaml(tmp_path, f"- {{match: 'a.*', rule: sshd}}\n- {{match: 'b.*', rule: '{path}'}}")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    # THEN the issue is at mappings[1].rule and carries the rule file's line and path
    (issue,) = info.value.issues
    assert issue.option == "mappings[1].rule"
    assert "myapp.yaml:13: attributes.user.nam" in issue.message
    with pytest.raises(ConfigError) as unknown:
        parse_config(config_yaml(tmp_path, "- {match: 'a.*', rule: nope}"))
    assert unknown.value.issues[0].option == "mappings[0].rule"
    assert "'sshd'" in unknown.value.issues[0].message


def test_mappings_fallback_accepts_only_its_three_values(tmp_path: Path) -> None:
    text = config_yaml(tmp_path, "- {rule: sshd}").replace("mappings:\n", "mappings_fallback: keep\nmappings:\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.issues[0].option == "mappings_fallback"
