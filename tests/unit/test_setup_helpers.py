"""``iam-policy`` and ``sources``: policies in IAM's grammar that grant exactly the configured
locations, and shell commands that register the custom sources without ever printing the
External ID."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from securitylake_sink.cli import main
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.setup_helpers import (
    CRAWLER_ROLE_PLACEHOLDER,
    EXTERNAL_ID_PLACEHOLDER,
    event_class_name,
)

EXIT_OK, EXIT_CONFIG = 0, 2
BUCKET = "aws-security-data-lake-eu-west-1-0a1b2c3d"
ROLE_ARN = "arn:aws:iam::111122223333:role/SynqlyAccess-writer"
EXTERNAL_ID = "UnitExtIdValue-0042"  # a marker to search for in every output
BASE_PRINCIPAL = "arn:aws:iam::444455556666:role/sink-base"
SOURCES: list[dict[str, Any]] = [
    {"class_uid": 3002, "location": "ext/sshd/"},
    {"class_uid": 6003, "location": "ext/cloudtrail/2.1/"},
    {"class_uid": 4002, "location": "ext/nginx/"},
    {"class_uid": "*", "location": "ext/other/"},
]
POLICY_KEYS = {"Sid", "Effect", "Action", "Resource", "Principal", "Condition"}
ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z*]+$")
ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):[a-z0-9-]+:[a-z0-9-]*:(\d{12}|\*)?:.+$")


def write_config(tmp_path: Path, url: str = f"s3://{BUCKET}/", **groups: Any) -> Path:
    destination = {"url": url, "sources": SOURCES, **groups.pop("destination", {})}
    auth = groups.pop("auth", {"role_arn": ROLE_ARN, "external_id": EXTERNAL_ID})
    path = tmp_path / "sink.yaml"
    path.write_text(yaml.safe_dump({"destination": destination, "auth": auth, **groups}), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert EXTERNAL_ID not in out + err, "the External ID was printed"
    return code, out, err


def check_policy_grammar(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """IAM's policy grammar, as far as these documents use it; the statements."""
    assert set(policy) == {"Version", "Statement"}
    assert policy["Version"] == "2012-10-17"
    statements = policy["Statement"]
    assert isinstance(statements, list) and statements
    for statement in statements:
        assert set(statement) <= POLICY_KEYS, set(statement) - POLICY_KEYS
        assert statement["Effect"] in ("Allow", "Deny")
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert actions and all(ACTION.match(a) for a in actions), actions
        assert ("Resource" in statement) != ("Principal" in statement), "a resource or a trust policy"
        if "Resource" in statement:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert resources and all(ARN.match(r) for r in resources), resources
        for operator, conditions in statement.get("Condition", {}).items():
            assert re.fullmatch(r"(ForAnyValue:|ForAllValues:)?[A-Za-z]+", operator)
            assert isinstance(conditions, dict) and conditions
            assert all(isinstance(v, str | list) for v in conditions.values())
    return list(statements)


def labelled_documents(out: str) -> dict[str, dict[str, Any]]:
    """The text output: '# <label>' lines, each followed by one JSON document."""
    documents: dict[str, dict[str, Any]] = {}
    label, lines = "", list[str]()
    for line in [*out.splitlines(), "# end"]:
        if line.startswith("# "):
            if label:
                documents[label] = json.loads("\n".join(lines))
            label, lines = line[2:], []
        else:
            lines.append(line)
    return documents


def resources_of(policy: dict[str, Any], action: str) -> list[str]:
    found: list[str] = []
    for statement in policy["Statement"]:
        if statement["Action"] == action:
            value = statement["Resource"]
            found.extend(value if isinstance(value, list) else [value])
    return found


def test_iam_policy_grants_exactly_the_configured_locations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, err = run(capsys, "iam-policy", "-c", config)
    assert code == EXIT_OK
    documents = labelled_documents(out)
    assert list(documents) == [
        f"Permissions policy of {ROLE_ARN}",
        f"Trust policy of {ROLE_ARN} (principal arn:aws:iam::111122223333:root)",
    ]
    permissions, trust = documents.values()
    statements = check_policy_grammar(permissions)
    assert [s["Action"] for s in statements] == ["s3:PutObject"]  # nothing but writes
    assert resources_of(permissions, "s3:PutObject") == [
        f"arn:aws:s3:::{BUCKET}/{source['location']}*" for source in SOURCES
    ]
    for resource in resources_of(permissions, "s3:PutObject"):
        bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
        assert bucket == BUCKET and key.startswith("ext/") and "*" not in bucket + key[:-1]
    # the trust policy: the base principal may assume the role only with the External ID
    (statement,) = check_policy_grammar(trust)
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": EXTERNAL_ID_PLACEHOLDER}}
    assert "no --principal was given" in err


def test_iam_policy_json_with_principal_prefix_and_kms_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    config = write_config(tmp_path, f"s3://{BUCKET}/lake/", destination={"sse_kms_key_id": key})
    code, out, _ = run(capsys, "iam-policy", "-c", config, "--principal", BASE_PRINCIPAL, "--json")
    assert code == EXIT_OK
    document = json.loads(out)
    assert set(document) == {"role_arn", "principal", "permissions_policy", "trust_policy", "notes"}
    permissions, trust = document["permissions_policy"], document["trust_policy"]
    check_policy_grammar(permissions)
    check_policy_grammar(trust)
    assert resources_of(permissions, "s3:PutObject") == [
        f"arn:aws:s3:::{BUCKET}/lake/{source['location']}*" for source in SOURCES
    ]
    assert resources_of(permissions, "kms:GenerateDataKey") == [key]
    assert trust["Statement"][0]["Principal"] == {"AWS": BASE_PRINCIPAL}
    assert document["principal"] == BASE_PRINCIPAL


@pytest.mark.parametrize(
    ("key", "resource", "condition"),
    [
        ("alias/lake", "arn:aws:kms:eu-west-1:111122223333:key/*", {"kms:ResourceAliases": "alias/lake"}),
        (
            "arn:aws:kms:eu-west-1:999988887777:alias/lake",
            "arn:aws:kms:eu-west-1:999988887777:key/*",
            {"kms:ResourceAliases": "alias/lake"},
        ),
        (
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            None,
        ),
    ],
)
def test_kms_key_forms_become_arns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, resource: str, condition: dict[str, str] | None
) -> None:
    config = write_config(tmp_path, destination={"sse_kms_key_id": key})
    code, out, _ = run(capsys, "iam-policy", "-c", config, "--json")
    assert code == EXIT_OK
    (statement,) = [s for s in json.loads(out)["permissions_policy"]["Statement"] if s["Action"].startswith("kms:")]
    assert statement["Resource"] == resource
    assert statement.get("Condition") == (None if condition is None else {"ForAnyValue:StringEquals": condition})


def test_iam_policy_partitions_and_access_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    china = write_config(tmp_path, "s3://aws-security-data-lake-cn-north-1-0a1b2c3d/", auth={})
    code, out, _ = run(capsys, "iam-policy", "-c", china, "--json")
    assert code == EXIT_OK
    document = json.loads(out)
    assert document["trust_policy"] is None and "no role_arn" in " ".join(document["notes"])
    assert all(
        r.startswith("arn:aws-cn:s3:::aws-security-data-lake-cn-north-1-0a1b2c3d/ext/")
        for r in resources_of(document["permissions_policy"], "s3:PutObject")
    )
    point = "arn:aws:s3:eu-west-1:111122223333:accesspoint/lake-writer"
    (tmp_path / "ap").mkdir()
    config = write_config(tmp_path / "ap", point)
    code, out, _ = run(capsys, "iam-policy", "-c", config, "--json")
    assert resources_of(json.loads(out)["permissions_policy"], "s3:PutObject")[0] == f"{point}/object/ext/sshd/*"


@pytest.mark.parametrize(
    ("url", "location", "resource"),
    [
        (f"s3://{BUCKET}/", "s3://dead-letters/sink-1/", "arn:aws:s3:::dead-letters/sink-1/*"),
        (f"s3://{BUCKET}/", f"s3://{BUCKET}/dead/", f"arn:aws:s3:::{BUCKET}/dead/*"),
        (
            "s3://aws-security-data-lake-cn-north-1-0a1b2c3d/",
            "s3://dead-letters",
            "arn:aws-cn:s3:::dead-letters/*",
        ),
    ],
)
def test_iam_policy_grants_the_s3_dead_letter_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, location: str, resource: str
) -> None:
    # GIVEN dead letters shipped to an S3 prefix outside the source locations
    config = write_config(tmp_path, url, dead_letter={"location": location})
    code, out, _ = run(capsys, "iam-policy", "-c", config, "--json")
    assert code == EXIT_OK
    permissions = json.loads(out)["permissions_policy"]
    statements = check_policy_grammar(permissions)
    # THEN one more PutObject statement grants exactly that prefix, beside the source locations
    (dead,) = [s for s in statements if s["Sid"] == "WriteTheDeadLetters"]
    assert dead == {"Sid": "WriteTheDeadLetters", "Effect": "Allow", "Action": "s3:PutObject", "Resource": resource}
    assert len(resources_of(permissions, "s3:PutObject")) == len(SOURCES) + 1


def test_iam_policy_has_no_dead_letter_statement_for_local_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, dead_letter={"location": "/var/tmp/dead"})
    code, out, _ = run(capsys, "iam-policy", "-c", config, "--json")
    assert code == EXIT_OK
    assert [s["Sid"] for s in json.loads(out)["permissions_policy"]["Statement"]] == ["WriteTheCustomSourceLocations"]


def test_iam_policy_for_a_file_lake_grants_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"file://{tmp_path}/lake", auth={})
    code, out, err = run(capsys, "iam-policy", "-c", config)
    assert code == EXIT_OK
    assert "nothing to grant" in out and "{" not in out
    assert "local file:// lake" in err
    code, out, _ = run(capsys, "iam-policy", "-c", config, "--json")
    assert json.loads(out)["permissions_policy"] is None and json.loads(out)["trust_policy"] is None


@pytest.mark.parametrize("principal", ["not-an-arn", "arn:aws:s3:::bucket", "12345"])
def test_a_malformed_principal_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], principal: str
) -> None:
    code, out, err = run(capsys, "iam-policy", "-c", write_config(tmp_path), "--principal", principal)
    assert code == EXIT_CONFIG and out == ""
    assert err.startswith("error: --principal: ")


def command_lines(out: str) -> list[list[str]]:
    """Every command of the sources output as shell words (comments and blank lines skipped)."""
    return [shlex.split(line) for line in out.splitlines() if line.strip() and not line.startswith("#")]


def option(words: list[str], name: str) -> list[str]:
    """The values after ``name`` up to the next option."""
    start = words.index(name) + 1
    end = next((i for i in range(start, len(words)) if words[i].startswith("--")), len(words))
    return words[start:end]


def test_sources_commands_parse_as_shell_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, err = run(capsys, "sources", "-c", config)
    assert code == EXIT_OK
    commands = command_lines(out)
    assert len(commands) == 3  # the '*' location registers nothing
    expected = [
        ("sshd", None, ["AUTHENTICATION"]),
        ("cloudtrail", "2.1", ["API_ACTIVITY"]),
        ("nginx", None, ["HTTP_ACTIVITY"]),
    ]
    for words, (name, version, classes) in zip(commands, expected, strict=True):
        assert words[:3] == ["aws", "securitylake", "create-custom-log-source"]
        assert option(words, "--source-name") == [name]
        assert ("--source-version" in words) == (version is not None)
        if version:
            assert option(words, "--source-version") == [version]
        assert option(words, "--event-classes") == classes
        assert option(words, "--region") == ["eu-west-1"]
        (text,) = option(words, "--configuration")
        configuration = json.loads(text)
        assert configuration == {
            "crawlerConfiguration": {"roleArn": CRAWLER_ROLE_PLACEHOLDER},
            "providerIdentity": {"externalId": EXTERNAL_ID_PLACEHOLDER, "principal": "111122223333"},
        }
    assert "'*' location ext/other/ is left out" in err


def test_sources_json_principal_and_crawler_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crawler = "arn:aws:iam::111122223333:role/service-role/AmazonSecurityLake-Glue"
    config = write_config(tmp_path)
    code, out, _ = run(
        capsys, "sources", "-c", config, "--principal", BASE_PRINCIPAL, "--crawler-role-arn", crawler, "--json"
    )
    assert code == EXIT_OK
    sources = json.loads(out)["sources"]
    assert [s["source_name"] for s in sources] == ["sshd", "cloudtrail", "nginx"]
    for source in sources:
        assert source["configuration"]["crawlerConfiguration"] == {"roleArn": crawler}
        assert source["configuration"]["providerIdentity"]["principal"] == "444455556666"
        words = shlex.split(source["command"])
        assert json.loads(option(words, "--configuration")[0]) == source["configuration"]
    code, _, err = run(capsys, "sources", "-c", config, "--crawler-role-arn", "nope")
    assert code == EXIT_CONFIG and "--crawler-role-arn" in err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sources_script_expands_the_placeholders_in_a_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the printed script and a stand-in `aws` that prints its arguments
    code, out, _ = run(capsys, "sources", "-c", write_config(tmp_path))
    assert code == EXIT_OK
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n", encoding="utf-8")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "EXTERNAL_ID": "shell-ext-id",
        "CRAWLER_ROLE_ARN": "arn:aws:iam::111122223333:role/crawler",
    }
    # WHEN bash runs it, THEN the shell put the environment's values into the JSON
    done = subprocess.run(["bash", "-c", out], capture_output=True, text=True, env=env, check=True, timeout=30)
    for line in done.stdout.splitlines():
        argv = json.loads(line)
        identity = json.loads(argv[argv.index("--configuration") + 1])
        assert identity["providerIdentity"]["externalId"] == "shell-ext-id"
        assert identity["crawlerConfiguration"]["roleArn"] == "arn:aws:iam::111122223333:role/crawler"


def test_sources_for_a_file_lake_and_class_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sources", "-c", write_config(tmp_path, f"file://{tmp_path}/lake", auth={}))
    assert code == EXIT_OK and "nothing to register" in out and not command_lines(out)
    (tmp_path / "zero").mkdir()
    config = write_config(
        tmp_path / "zero",
        auth={},
        destination={
            "sources": [
                {"class_uid": 0, "location": "ext/base/"},
                {"class_uid": 3002, "location": "ext/a_long_source_name_over_20/"},
            ]
        },
    )
    code, out, err = run(capsys, "sources", "-c", config)
    assert code == EXIT_OK
    (words,) = command_lines(out)
    assert option(words, "--source-name") == ["a_long_source_name_over_20"]
    assert "Base Event" in err and "longer than 20 characters" in err
    assert json.loads(option(words, "--configuration")[0])["providerIdentity"]["principal"] == "${PROVIDER_ACCOUNT_ID}"


@pytest.mark.parametrize(
    ("class_uid", "name"),
    [
        (3002, "AUTHENTICATION"),
        (6003, "API_ACTIVITY"),
        (4002, "HTTP_ACTIVITY"),
        (1007, "PROCESS_ACTIVITY"),
        (2004, "DETECTION_FINDING"),
        (4001, "NETWORK_ACTIVITY"),
        (4003, "DNS_ACTIVITY"),
        (1001, "FILE_ACTIVITY"),
        (3001, "ACCOUNT_CHANGE"),
        (1002, "KERNEL_EXTENSION"),
        (3003, "AUTHORIZATION"),
        (3004, "ENTITY_MANAGEMENT_AUDIT"),
        (5001, "INVENTORY_INFO"),
        (5002, "CONFIG_STATE"),
    ],
)
def test_event_class_names_as_security_lake_spells_them(class_uid: int, name: str) -> None:
    schema = load_schema("1.1.0")
    assert event_class_name(class_uid, schema.class_info(class_uid).caption) == name
