"""``securitylake-sink check-config`` end to end: the installed console script in a subprocess.

GIVEN a config file on disk, WHEN the real console script checks it, THEN the exit code,
stdout (plan, optionally JSON) and stderr (errors, warnings) say what the docs promise,
no secret is printed, and nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from securitylake_sink.ocsf.schema import bundled_versions, load_schema

EXIT_OK, EXIT_CONFIG = 0, 2
SCRIPT = shutil.which("securitylake-sink", path=str(Path(sys.executable).parent))
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, any connection is refused

LAKE_BUCKET = "aws-security-data-lake-eu-west-1-a1b2c3d4"
ROLE_ARN = "arn:aws:iam::123456789012:role/SynqlyAccessWriter"
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMIzzCliSecretKeyValue0042"  # noqa: S105 (a marker value to search for, not a credential)
SESSION_TOKEN = "FwoGZXIvYXdzEzzCliSessionToken0042"  # noqa: S105 (a marker value to search for, not a credential)
EXTERNAL_ID = "CliExtIdValue-0042"
SECRETS = (SECRET_ACCESS_KEY, SESSION_TOKEN, EXTERNAL_ID)
SOURCES = [{"class_uid": 3002, "location": "ext/auth/"}, {"class_uid": 4001, "location": "ext/net/1.0/"}]


def config(url: str, **groups: Any) -> dict[str, Any]:
    """A config mapping: destination.url plus the two SOURCES, and any other groups."""
    destination = {"url": url, "sources": SOURCES, **groups.pop("destination", {})}
    return {"destination": destination, **groups}


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "sink.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def hermetic_env(**extra: str) -> dict[str, str]:
    """The test's environment without AWS settings that could change what check-config infers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    return env


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT is not None, f"securitylake-sink is not installed next to {sys.executable}"
    return subprocess.run(
        [SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=hermetic_env() if env is None else env,
        check=False,
    )


def check_json(path: Path, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Run ``check-config --json``; the plan (stdout must be exactly one JSON object) and stderr."""
    result = run("check-config", "-c", path, "--json", env=env)
    assert result.returncode == EXIT_OK, result.stderr
    plan = json.loads(result.stdout)
    assert isinstance(plan, dict)
    return plan, result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: ")]


def warning_lines(stderr: str) -> list[str]:
    return [line.removeprefix("warning: ") for line in stderr.splitlines() if line.startswith("warning: ")]


# --- valid configs -------------------------------------------------------------------------


def test_console_script_is_installed() -> None:
    assert SCRIPT is not None
    assert Path(SCRIPT).parent == Path(sys.executable).parent


def test_valid_config_exits_0_and_prints_the_plan(tmp_path: Path) -> None:
    # GIVEN a valid config for a Security Lake bucket
    path = write(tmp_path, config(f"s3://{LAKE_BUCKET}/"))
    # WHEN checked without --json
    result = run("check-config", "-c", path)
    # THEN it exits 0, says the file is valid and shows where each class goes
    assert result.returncode == EXIT_OK, result.stderr
    assert f"config {path} is valid" in result.stdout
    assert LAKE_BUCKET in result.stdout
    assert "eu-west-1" in result.stdout
    for source in SOURCES:
        assert f"class {source['class_uid']}" in result.stdout
        assert str(source["location"]) in result.stdout
    assert result.stderr == ""


def test_plan_shows_the_spool_limit_as_set_or_as_its_default(tmp_path: Path) -> None:
    # GIVEN one config without spool.max_bytes and one with it and the dedup and shutdown keys
    default = write(tmp_path, config(f"s3://{LAKE_BUCKET}/"), "default.yaml")
    limited = write(
        tmp_path,
        config(
            f"s3://{LAKE_BUCKET}/",
            spool={"max_bytes": 2 * 1024 * 1024, "dedup_tokens": 50, "dedup_secs": 60},
            shutdown={"timeout_secs": 5},
        ),
        "limited.yaml",
    )
    # WHEN each is checked
    shown_default = run("check-config", "-c", default)
    shown_limited = run("check-config", "-c", limited)
    plan = json.loads(run("check-config", "-c", limited, "--json").stdout)
    # THEN the limit is "10% of free disk" unless set, and the plan carries the dedup window
    assert shown_default.returncode == shown_limited.returncode == EXIT_OK, shown_limited.stderr
    assert "spool limit  10% of free disk" in shown_default.stdout
    assert "spool limit  2097152 bytes" in shown_limited.stdout
    assert plan["spool"] | {"path": None} == {
        "path": None, "max_bytes": 2097152, "dedup_tokens": 50, "dedup_secs": 60.0
    }


@pytest.mark.parametrize(
    ("data", "options"),
    [
        pytest.param(config("file:///tmp/lake", spool={"dedup_tokens": -1}), ["spool.dedup_tokens"], id="tokens"),
        pytest.param(config("file:///tmp/lake", spool={"dedup_secs": -1}), ["spool.dedup_secs"], id="secs"),
        pytest.param(config("file:///tmp/lake", shutdown={"timeout_secs": 0}), ["shutdown.timeout_secs"], id="stop"),
    ],
)
def test_bad_dedup_and_shutdown_options_are_named(tmp_path: Path, data: dict[str, Any], options: list[str]) -> None:
    result = run("check-config", "-c", write(tmp_path, data))
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    errors = error_lines(result.stderr)
    for option in options:
        assert any(line.startswith(f"{option}: ") for line in errors), f"{option} not in {errors}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "file://{tmp}/lake",
            {"kind": "file", "bucket": None, "region": "us-east-1", "region_source": "default", "partition": "aws"},
            id="file",
        ),
        pytest.param(
            "file://{tmp}/aws-security-data-lake-ap-southeast-2-abc123",
            {
                "kind": "file",
                "bucket": None,
                "region": "ap-southeast-2",
                "region_source": "bucket_name",
                "partition": "aws",
            },
            id="file-named-like-a-lake-bucket",
        ),
        pytest.param(
            f"s3://{LAKE_BUCKET}/",
            {
                "kind": "s3",
                "bucket": LAKE_BUCKET,
                "region": "eu-west-1",
                "region_source": "bucket_name",
                "partition": "aws",
            },
            id="s3-security-lake-bucket",
        ),
        pytest.param(
            "s3://aws-security-data-lake-us-gov-west-1-abc123/",
            {
                "kind": "s3",
                "bucket": "aws-security-data-lake-us-gov-west-1-abc123",
                "region": "us-gov-west-1",
                "region_source": "bucket_name",
                "partition": "aws-us-gov",
            },
            id="s3-govcloud-lake-bucket",
        ),
        pytest.param(
            "https://my-lake-bucket.s3.eu-central-1.amazonaws.com/logs/",
            {
                "kind": "s3",
                "bucket": "my-lake-bucket",
                "region": "eu-central-1",
                "region_source": "url",
                "partition": "aws",
            },
            id="https-regional",
        ),
        pytest.param(
            "https://my-lake-bucket.s3.amazonaws.com/logs/",
            {"kind": "s3", "bucket": "my-lake-bucket", "region": None, "region_source": "lookup", "partition": "aws"},
            id="https-legacy-global",
        ),
    ],
)
def test_json_plan_resolves_the_destination(tmp_path: Path, url: str, expected: dict[str, Any]) -> None:
    # GIVEN a destination URL in one of its forms
    path = write(tmp_path, config(url.format(tmp=tmp_path)))
    # WHEN checked with --json
    plan, _ = check_json(path)
    # THEN the destination is resolved without network I/O
    destination = plan["destination"]
    assert {key: destination[key] for key in expected} == expected
    assert destination["url"] == url.format(tmp=tmp_path)
    if expected["kind"] == "file":
        assert destination["path"] == url.format(tmp=tmp_path).removeprefix("file://")


def test_json_plan_lists_sources_with_class_names(tmp_path: Path) -> None:
    # GIVEN explicit classes (one location typed without its trailing slash) and a "*" fallback
    sources = [*SOURCES, {"class_uid": 1001, "location": "ext/files"}, {"class_uid": "*", "location": "ext/rest/"}]
    version = bundled_versions()[-1]
    path = write(
        tmp_path, config(f"file://{tmp_path}/lake", destination={"sources": sources}, ocsf={"version": version})
    )
    # WHEN checked with --json
    plan, _ = check_json(path)
    # THEN each source keeps its order, has a normalised location and, unless "*", its class name
    schema = load_schema(version)
    listed = plan["destination"]["sources"]
    assert [s["class_uid"] for s in listed] == [s["class_uid"] for s in sources]
    assert [s["location"] for s in listed] == [str(s["location"]).rstrip("/") + "/" for s in sources]
    for entry in listed:
        if entry["class_uid"] == "*":
            assert "class_name" not in entry
        else:
            assert entry["class_name"] == schema.class_info(entry["class_uid"]).caption
    assert plan["ocsf"]["version"] == version


@pytest.mark.parametrize(
    ("auth", "mode"),
    [
        pytest.param({}, "default_chain", id="default_chain"),
        pytest.param(
            {"access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY, "session_token": SESSION_TOKEN},
            "static",
            id="static",
        ),
        pytest.param(
            {
                "role_arn": ROLE_ARN,
                "external_id": EXTERNAL_ID,
                "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": SECRET_ACCESS_KEY,
                "session_token": SESSION_TOKEN,
            },
            "assume_role",
            id="assume_role",
        ),
    ],
)
def test_json_plan_shows_auth_mode_and_masks_secrets(tmp_path: Path, auth: dict[str, str], mode: str) -> None:
    # GIVEN an auth group with secrets set to distinctive values
    path = write(tmp_path, config(f"s3://{LAKE_BUCKET}/", auth=auth))
    # WHEN checked, with and without --json
    plan, stderr = check_json(path)
    human = run("check-config", "-c", path)
    # THEN the mode is resolved, each secret that is set is shown as set but masked
    assert plan["auth"]["mode"] == mode
    for name in ("secret_access_key", "session_token", "external_id"):
        if name in auth:
            assert plan["auth"][name], f"auth.{name} is set but the plan shows {plan['auth'][name]!r}"
        else:
            assert plan["auth"][name] is None
    # AND no secret value (nor the full access key id) appears on stdout or stderr
    shown = json.dumps(plan) + stderr + human.stdout + human.stderr
    for secret in (*SECRETS, ACCESS_KEY_ID):
        assert secret not in shown


# --- bad configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "options"),
    [
        pytest.param(
            config("file:///tmp/lake", batch={"max_age_sec": 60}),
            ["batch.max_age_sec"],
            id="unknown-option",
        ),
        pytest.param(config("ftp://example.com/lake"), ["destination.url"], id="bad-url"),
        pytest.param(
            config("file:///tmp/lake", destination={"sources": [{"class_uid": 999_999, "location": "ext/x/"}]}),
            ["destination.sources[0].class_uid"],
            id="class-not-in-ocsf",
        ),
        pytest.param(
            config(
                "file:///tmp/lake",
                batch={"max_age_secs": 0},
                listen={"forward": {"address": "nowhere"}},
                spool={"max_bytes": 1},
            ),
            ["batch.max_age_secs", "listen.forward.address", "spool.max_bytes"],
            id="three-errors",
        ),
        pytest.param(
            config(f"s3://{LAKE_BUCKET}/", auth={"role_arn": ROLE_ARN, "external_id": EXTERNAL_ID + " !"}),
            ["auth.external_id"],
            id="bad-external-id",
        ),
    ],
)
def test_bad_config_exits_2_naming_each_option(tmp_path: Path, data: dict[str, Any], options: list[str]) -> None:
    # GIVEN a config that breaks one or more rules
    path = write(tmp_path, data)
    # WHEN checked (with --json too: errors never go to stdout)
    for args in (("check-config", "-c", path), ("check-config", "-c", path, "--json")):
        result = run(*args)
        # THEN it exits 2, prints nothing on stdout, and one error line per broken rule names its option
        assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
        assert result.stdout == ""
        errors = error_lines(result.stderr)
        for option in options:
            assert any(line.startswith(f"{option}: ") for line in errors), f"{option} not in {errors}"
        assert "Traceback" not in result.stderr
        for secret in SECRETS:
            assert secret not in result.stderr


def test_invalid_yaml_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    # GIVEN a file whose third line is not YAML
    path = write(tmp_path, "destination:\n  url: file:///tmp/lake\n  sources: @oops\n")
    result = run("check-config", "-c", path)
    # THEN exit 2 and the error names the file and where
    assert result.returncode == EXIT_CONFIG
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"{path} is not valid YAML at line 3, column ")


def test_missing_file_exits_2(tmp_path: Path) -> None:
    # GIVEN a path with no file
    path = tmp_path / "absent.yaml"
    result = run("check-config", "-c", path)
    # THEN exit 2 and the error names the path
    assert result.returncode == EXIT_CONFIG
    (line,) = error_lines(result.stderr)
    assert f"cannot read config file {path}" in line
    assert result.stdout == ""


def test_directory_instead_of_file_exits_2(tmp_path: Path) -> None:
    result = run("check-config", "-c", tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert f"cannot read config file {tmp_path}" in result.stderr


def test_non_utf8_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("destination:\n  url: file:///tmp/café\n".encode("latin-1"))
    result = run("check-config", "-c", path)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


# --- warnings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        pytest.param(
            config(
                f"s3://{LAKE_BUCKET}/", destination={"sources": [*SOURCES, {"class_uid": "*", "location": "ext/all/"}]}
            ),
            ["destination.sources", "'*'"],
            id="star-source-on-s3",
        ),
        pytest.param(
            config(f"s3://{LAKE_BUCKET}/", batch={"max_age_secs": 60}), ["batch.max_age_secs"], id="short-batch"
        ),
        pytest.param(
            config(
                f"s3://{LAKE_BUCKET}/", auth={"access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY}
            ),
            ["static access keys"],
            id="static-keys",
        ),
    ],
)
def test_warnings_go_to_stderr_and_exit_stays_0(tmp_path: Path, data: dict[str, Any], mentions: list[str]) -> None:
    # GIVEN an s3 config that is allowed but unwise
    path = write(tmp_path, data)
    # WHEN checked, with and without --json
    plan, stderr = check_json(path)
    human = run("check-config", "-c", path)
    # THEN exit stays 0, the warning is on stderr (and in the JSON plan), and stdout stays clean
    assert human.returncode == EXIT_OK
    for out in (stderr, human.stderr):
        (warning,) = warning_lines(out)
        for mention in mentions:
            assert mention in warning
    assert plan["warnings"] == warning_lines(stderr)
    assert warning_lines(human.stdout) == []
    assert human.stdout.startswith(f"config {path} is valid")


def test_file_lake_has_no_s3_warnings(tmp_path: Path) -> None:
    # GIVEN the same unwise settings on a local file:// lake
    data = config(
        f"file://{tmp_path}/lake",
        destination={"sources": [*SOURCES, {"class_uid": "*", "location": "ext/all/"}]},
        batch={"max_age_secs": 5},
    )
    plan, stderr = check_json(write(tmp_path, data))
    # THEN there is nothing to warn about
    assert plan["warnings"] == []
    assert stderr == ""


# --- no network I/O ------------------------------------------------------------------------

NETWORK_CONFIG = config(
    "https://my-lake-bucket.s3.amazonaws.com/logs/",  # region needs a lookup at start-up, not here
    auth={"role_arn": ROLE_ARN, "external_id": EXTERNAL_ID, "sts_endpoint": DEAD},
)


def test_check_config_succeeds_with_every_endpoint_dead(tmp_path: Path) -> None:
    # GIVEN every AWS endpoint and proxy pointing at a port where nothing listens
    env = hermetic_env(
        AWS_ENDPOINT_URL=DEAD,
        AWS_ENDPOINT_URL_S3=DEAD,
        AWS_ENDPOINT_URL_STS=DEAD,
        AWS_EC2_METADATA_SERVICE_ENDPOINT=DEAD,
        HTTPS_PROXY=DEAD,
        HTTP_PROXY=DEAD,
        https_proxy=DEAD,
        http_proxy=DEAD,
    )
    path = write(tmp_path, NETWORK_CONFIG)
    # WHEN checked
    started = time.monotonic()
    plan, _ = check_json(path, env=env)
    elapsed = time.monotonic() - started
    # THEN it still succeeds, quickly, leaving the region to be looked up at start-up
    assert plan["destination"]["region_source"] == "lookup"
    assert plan["auth"]["mode"] == "assume_role"
    assert elapsed < 15, f"check-config took {elapsed:.1f}s"


GUARD = """\
import runpy, sys

NETWORK_EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.bind", "socket.sendto"}


def refuse(event, args):
    if event in NETWORK_EVENTS:
        raise RuntimeError(f"network I/O: {event} {args!r}")


sys.addaudithook(refuse)
script, *sys.argv = sys.argv[1:]
sys.argv.insert(0, script)
runpy.run_path(script, run_name="__main__")
"""


def run_guarded(tmp_path: Path, script: Path | str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a Python script under an audit hook that raises on any socket use."""
    guard = tmp_path / "no_network.py"
    guard.write_text(GUARD, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(guard), str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=hermetic_env(),
        check=False,
    )


def test_network_guard_catches_socket_use(tmp_path: Path) -> None:
    # GIVEN a script that resolves a name; WHEN run under the guard; THEN the guard stops it
    probe = tmp_path / "probe.py"
    probe.write_text("import socket\nsocket.getaddrinfo('localhost', 9)\n", encoding="utf-8")
    result = run_guarded(tmp_path, probe)
    assert result.returncode != 0
    assert "network I/O: socket.getaddrinfo" in result.stderr


def test_check_config_opens_no_socket(tmp_path: Path) -> None:
    # GIVEN the console script run under a guard that fails on any socket use
    assert SCRIPT is not None
    path = write(tmp_path, NETWORK_CONFIG)
    # WHEN it checks a config that needs a region lookup and an AssumeRole at run time
    result = run_guarded(tmp_path, SCRIPT, "check-config", "-c", path, "--json")
    # THEN it succeeds without opening or resolving anything
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["destination"]["region_source"] == "lookup"
