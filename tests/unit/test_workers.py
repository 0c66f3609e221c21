"""Tests for securitylake_sink.workers and the ``--workers`` flag: each worker's config, the rules a
worker count keeps (errors name ``workers`` or ``--workers``), and which spools are orphans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from securitylake_sink.cli import main
from securitylake_sink.config import Config, parse_config
from securitylake_sink.errors import ConfigError
from securitylake_sink.spool.wal import encode_record
from securitylake_sink.workers import holds_data, orphan_config, orphan_spools, worker_config, worker_issues

MIB = 1024 * 1024


def _config(spool: Path, extra: str = "", *, max_bytes: int | None = None) -> Config:
    limit = "" if max_bytes is None else f", max_bytes: {max_bytes}"
    return parse_config(
        f"""destination:
  url: "file:///tmp/securitylake-sink-tests/lake"
  sources: [{{class_uid: 3002, location: "ext/auth/"}}]
spool: {{path: "{spool}"{limit}}}
{extra}"""
    )


def _write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""destination:
  url: "file://{tmp_path / "lake"}"
  sources: [{{class_uid: 3002, location: "ext/auth/"}}]
spool: {{path: "{tmp_path / "spool"}"}}
{extra}"""
    )
    return path


# --- each worker's config --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "index", "share", "expected"),
    [
        # GIVEN the defaults: worker 1 gets worker-1/, metrics port 2022, dead letters in its spool
        (
            "",
            1,
            None,
            {"spool": "worker-1", "max_bytes": None, "metrics": "127.0.0.1:2022", "dead": "worker-1/dead_letter"},
        ),
        # a spool limit share; a metrics port on IPv6; worker 0 keeps the configured port
        (
            "listen: {metrics: {address: '[::1]:9100'}}\n",
            0,
            64 * MIB,
            {"spool": "worker-0", "max_bytes": 64 * MIB, "metrics": "[::1]:9100", "dead": "worker-0/dead_letter"},
        ),
        # metrics port 0 stays 0 (each worker picks a free one)
        ("listen: {metrics: {address: '127.0.0.1:0'}}\n", 3, None, {"metrics": "127.0.0.1:0"}),
        # a configured dead letter location gets a directory per worker
        ("dead_letter: {location: 'file:///var/dl/'}\n", 2, None, {"dead": "/var/dl/worker-2"}),
    ],
)
def test_worker_config(tmp_path: Path, extra: str, index: int, share: int | None, expected: dict[str, Any]) -> None:
    # WHEN worker ``index``'s config is derived
    config = _config(tmp_path / "spool", extra)
    worker = worker_config(config, index, spool_max_bytes=share)

    # THEN only its spool, spool share, metrics address and dead letters differ
    if "spool" in expected:
        assert worker.spool.path == tmp_path / "spool" / expected["spool"]
    if "max_bytes" in expected:
        assert worker.spool.max_bytes == expected["max_bytes"]
    if "metrics" in expected:
        assert worker.listen.metrics.address == expected["metrics"]
    if "dead" in expected:
        dead = expected["dead"]
        assert worker.dead_letter_path == (Path(dead) if dead.startswith("/") else tmp_path / "spool" / dead)
    assert worker.listen.forward == config.listen.forward
    assert worker.destination == config.destination


# --- the rules a worker count keeps ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "workers", "option", "rule"),
    [
        ("", 0, "workers", "must be between 1 and 64, got 0"),
        ("", 65, "workers", "must be between 1 and 64, got 65"),
        ("listen: {forward: {address: '0.0.0.0:0'}}\n", 2, "listen.forward.address", "port 0 picks a different port"),
        ("listen: {http: {address: '0.0.0.0:0'}}\n", 2, "listen.http.address", "port 0 picks a different port"),
        ("listen: {metrics: {address: '127.0.0.1:65535'}}\n", 2, "listen.metrics.address", "passes 65535"),
        ("", 4, "spool.max_bytes", "3145728 over workers 4 leaves 786432 bytes each, below the minimum 1048576"),
    ],
)
def test_worker_count_rules_name_the_option(tmp_path: Path, extra: str, workers: int, option: str, rule: str) -> None:
    # GIVEN a config with a 3 MiB spool limit
    config = _config(tmp_path / "spool", extra, max_bytes=3 * MIB)
    # WHEN it is checked for ``workers`` worker processes
    issues = worker_issues(config, workers)
    # THEN one issue names the option and the rule
    assert [i.option for i in issues] == [option]
    assert rule in issues[0].message


def test_one_worker_keeps_every_single_process_setting(tmp_path: Path) -> None:
    # GIVEN port 0 listeners, which a single process may use
    config = _config(tmp_path / "spool", "listen: {forward: {address: '127.0.0.1:0'}}\n")
    # THEN one worker breaks no rule
    assert worker_issues(config, 1) == []


@pytest.mark.parametrize(("value", "rule"), [(0, "must be at least 1, got 0"), (65, "must be at most 64, got 65")])
def test_workers_option_out_of_range_is_named(tmp_path: Path, value: int, rule: str) -> None:
    # WHEN the config's workers is out of range THEN the error names ``workers`` and the rule
    with pytest.raises(ConfigError) as err:
        _config(tmp_path / "spool", f"workers: {value}\n")
    assert [str(i) for i in err.value.issues] == [f"workers: {rule}"]


@pytest.mark.parametrize("value", ["0", "65", "-1"])
def test_workers_flag_out_of_range_exits_2_naming_the_flag(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a valid config file WHEN run and check-config get --workers out of range
    path = _write_config(tmp_path)
    for command in ("run", "check-config"):
        # THEN each exits 2 before anything starts, naming --workers and its rule
        assert main([command, "-c", str(path), "--workers", value]) == 2
        assert capsys.readouterr().err == f"error: --workers: must be between 1 and 64, got {value}\n"
    assert not (tmp_path / "spool").exists()


def test_workers_flag_wins_over_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN workers: 4 in the config
    path = _write_config(tmp_path, "workers: 4\nlisten: {forward: {address: '0.0.0.0:24224'}}\n")
    # WHEN check-config gets --workers 2
    assert main(["check-config", "-c", str(path), "--json", "--workers", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # THEN the plan has 2 workers, each with its spool directory and metrics port
    assert plan["workers"]["count"] == 2
    assert [(w["spool"], w["metrics"]) for w in plan["workers"]["workers"]] == [
        (str(tmp_path / "spool" / "worker-0"), "127.0.0.1:2021"),
        (str(tmp_path / "spool" / "worker-1"), "127.0.0.1:2022"),
    ]


def test_check_config_prints_workers_spools_and_orphans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a spool left with data in worker-3 by an earlier run with more workers
    path = _write_config(tmp_path, "workers: 2\n")
    _leave_log_record(tmp_path / "spool" / "worker-3")
    # WHEN check-config prints the plan
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    # THEN it shows the worker count, each worker's spool and metrics port, and the orphan
    assert "workers      2 processes sharing the listening ports" in out
    assert f"worker 0   spool {tmp_path / 'spool' / 'worker-0'}, metrics 127.0.0.1:2021" in out
    assert f"worker 1   spool {tmp_path / 'spool' / 'worker-1'}, metrics 127.0.0.1:2022" in out
    assert f"orphan spool {tmp_path / 'spool' / 'worker-3'} (left by an earlier run" in out


def test_check_config_shows_no_workers_for_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(_write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "workers" not in out
    assert "orphan" not in out


# --- orphan spools ---------------------------------------------------------------------------


def _leave_log_record(spool: Path, checkpoint: tuple[int, int] | None = None) -> None:
    """A spool whose log segment 1 holds one record, with the checkpoint given (none: absent)."""
    (spool / "wal").mkdir(parents=True)
    (spool / "wal" / f"{1:020d}.wal").write_bytes(encode_record(b"x" * 10))
    if checkpoint is not None:
        (spool / "checkpoint").write_text(json.dumps({"segment": checkpoint[0], "offset": checkpoint[1]}))


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("missing", False),
        ("empty log", False),
        ("record, no checkpoint", True),
        ("record past the checkpoint", True),
        ("record mapped", False),
        ("open batch", True),
        ("sealed batch", True),
        ("dead letters only", False),
    ],
)
def test_holds_data(tmp_path: Path, layout: str, expected: bool) -> None:
    # GIVEN a spool directory in one state
    spool = tmp_path / "spool"
    record_end = len(encode_record(b"x" * 10))
    if layout == "empty log":
        (spool / "wal").mkdir(parents=True)
        (spool / "wal" / f"{1:020d}.wal").touch()
    elif layout == "record, no checkpoint":
        _leave_log_record(spool)
    elif layout == "record past the checkpoint":
        _leave_log_record(spool, (1, 0))
    elif layout == "record mapped":
        _leave_log_record(spool, (1, record_end))
    elif layout in ("open batch", "sealed batch"):
        (spool / layout.split(maxsplit=1)[0]).mkdir(parents=True)
        (spool / layout.split(maxsplit=1)[0] / "01a2.batch").write_bytes(b"b")
    elif layout == "dead letters only":
        (spool / "dead_letter").mkdir(parents=True)
        (spool / "dead_letter" / "20261128.ndjson").write_text("{}\n")
    # THEN holds_data says whether anything in it still waits for the lake
    assert holds_data(spool) is expected


def test_orphan_spools_by_worker_count(tmp_path: Path) -> None:
    # GIVEN data in <spool.path> itself, worker-0, worker-1 and worker-5; worker-2 drained; other names
    base = tmp_path / "spool"
    for name in ("worker-0", "worker-1", "worker-5"):
        _leave_log_record(base / name)
    _leave_log_record(base / "worker-2", (1, len(encode_record(b"x" * 10))))
    (base / "worker-x").mkdir()
    (base / "wal" / f"{1:020d}.wal").parent.mkdir(parents=True)
    (base / "wal" / f"{1:020d}.wal").write_bytes(encode_record(b"y"))
    config = _config(base)

    # THEN one process owns <spool.path>: every worker spool with data is an orphan
    assert orphan_spools(config, 1) == [base / "worker-0", base / "worker-1", base / "worker-5"]
    # AND two workers own worker-0 and worker-1: <spool.path> and worker-5 are orphans
    assert orphan_spools(config, 2) == [base, base / "worker-5"]
    # AND six workers: only <spool.path>
    assert orphan_spools(config, 6) == [base]
    # AND an orphan is drained with its own spool and dead letters, the base with the config's
    assert orphan_config(config, base) == config
    assert orphan_config(config, base / "worker-5").spool.path == base / "worker-5"
    assert orphan_config(config, base / "worker-5").dead_letter_path == base / "worker-5" / "dead_letter"


def test_an_s3_dead_letter_prefix_is_shared_by_the_workers(tmp_path: Path) -> None:
    # GIVEN dead letters shipped to an S3 prefix
    config = parse_config(
        f"""destination:
  url: "s3://aws-security-data-lake-eu-west-1-abc/"
  sources: [{{class_uid: 3002, location: "ext/auth/"}}]
spool: {{path: "{tmp_path / "spool"}"}}
dead_letter: {{location: "s3://dead-letters-example/sink/"}}
"""
    )
    # WHEN worker 1's config is derived
    worker = worker_config(config, 1)
    # THEN it keeps them under its own spool and ships them to the same prefix (names are unique)
    assert worker.dead_letter.location == "s3://dead-letters-example/sink/"
    assert worker.dead_letter_path == tmp_path / "spool" / "worker-1" / "dead_letter"
