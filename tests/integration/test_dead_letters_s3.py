"""Dead letters shipped to an s3:// ``dead_letter.location``: the sink process against a real moto
server (its own, so it can be stopped and started), records no rule maps, an S3 outage, a crash
before shipping, ``check-config`` and ``doctor``."""

from __future__ import annotations

import gzip
import json
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.s3_harness import (
    MotoServer,
    auth_records,
    lake_rows,
    log_line,
    run_cli,
    running,
    s3_client,
    send,
    sink_config,
    use_aws_env,
    wait_until,
)
from tests.integration.sinkproc import free_port

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180)]

LAKE, DEAD = "sl-lake-dl", "sl-other-dead"
DEAD_KEY = re.compile(
    r"^dead/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.ndjson\.gz$"
)
RAW_TAG = "app.raw"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    use_aws_env(monkeypatch)


@pytest.fixture
def moto(tmp_path: Path) -> Any:
    server = MotoServer(log=tmp_path / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


def raw_records(run: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    """Records no rule maps (no mappings configured, no class_uid): each is a dead letter."""
    now = time.time_ns()
    return [(now, {"message": f"{run}-{i:04d}", "host": "web-1"}) for i in range(count)]


def dead_config(tmp: Path, url: str, **dead_letter: Any) -> tuple[Path, int]:
    """A config with an s3 lake on moto, dead letters to s3://DEAD/dead/, metrics on a free port."""
    path = sink_config(
        tmp,
        f"s3://{LAKE}/",
        endpoint=url,
        region="us-east-1",
        dead_letter={"location": f"s3://{DEAD}/dead/", **dead_letter},
    )
    data = yaml.safe_load(path.read_text())
    metrics = free_port()
    data["listen"]["metrics"] = {"address": f"127.0.0.1:{metrics}"}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, metrics


def dead_lines(client: Any) -> dict[str, list[dict[str, Any]]]:
    """key → the dead-letter lines of every object in the dead-letter bucket."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in client.list_objects_v2(Bucket=DEAD).get("Contents", []):
        body = gzip.decompress(client.get_object(Bucket=DEAD, Key=item["Key"])["Body"].read())
        out[item["Key"]] = [json.loads(line) for line in body.splitlines()]
    return out


def dead_messages(found: dict[str, list[dict[str, Any]]]) -> Counter[str]:
    return Counter(line["record"]["message"] for lines in found.values() for line in lines)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def local_files(tmp: Path) -> list[Path]:
    return sorted((tmp / "spool" / "dead_letter").glob("*.ndjson"))


def test_dead_letters_reach_another_bucket_and_survive_an_s3_outage(tmp_path: Path, moto: MotoServer) -> None:
    client = s3_client(moto.url)
    for bucket in (LAKE, DEAD):
        client.create_bucket(Bucket=bucket)
    config, metrics = dead_config(tmp_path, moto.url, max_age_secs=1)
    mapped, first, second = auth_records("lake", 40), raw_records("first", 30), raw_records("second", 20)
    with running(config, tmp_path / "sink.log") as sink:
        # WHEN records no rule maps arrive beside mapped ones
        send(sink.port, mapped)
        send(sink.port, first, tag=RAW_TAG)
        # THEN they appear as gzip ndjson objects under the dead-letter prefix, with their tag, rule and reason
        wait_until(lambda: sum(dead_messages(dead_lines(client)).values()) == 30, 60, "the first dead letters")
        wait_until(lambda: sum(len(m) for m in lake_rows(client, LAKE).values()) == 40, 60, "the lake objects")
        before = dead_lines(client)
        wait_until(lambda: not local_files(tmp_path), 30, "the shipped files to be deleted")
        # WHEN S3 goes away, more dead letters are kept in the spool and the shipping is retried
        moto.stop()
        send(sink.port, second, tag=RAW_TAG)
        sink.wait_for_log("could not ship dead letters", timeout=60)
        assert "permanent=False" in log_line(sink, "could not ship dead letters")
        assert local_files(tmp_path)
        # WHEN S3 comes back (empty: moto keeps nothing), THEN the kept files are shipped without a restart
        moto.start()
        for bucket in (LAKE, DEAD):
            client.create_bucket(Bucket=bucket)
        wait_until(lambda: sum(dead_messages(dead_lines(client)).values()) == 20, 90, "the second dead letters")
        wait_until(lambda: not local_files(tmp_path), 30, "the shipped files to be deleted")
        assert metric(metrics, "securitylake_sink_dead_letter_objects_total") >= 2
        assert metric(metrics, "securitylake_sink_dead_letter_failures_total") >= 1
        assert sink.stop() == 0
    after = dead_lines(client)
    # THEN every dead letter is in exactly one object, nothing is lost, and no local file is left
    assert not set(before) & set(after)
    assert dead_messages(before) + dead_messages(after) == Counter(r["message"] for _, r in first + second)
    for key, lines in {**before, **after}.items():
        assert DEAD_KEY.match(key), key
        for line in lines:
            assert line["tag"] == RAW_TAG and line["record"]["host"] == "web-1"
            assert "rule" in line and "carries no class_uid" in line["reason"]
    assert not local_files(tmp_path)
    assert not client.list_objects_v2(Bucket=LAKE, Prefix="dead/").get("Contents")
    assert "Traceback" not in sink.log()


def test_dead_letters_left_by_a_crash_are_shipped_once_at_the_next_start(tmp_path: Path, moto: MotoServer) -> None:
    client = s3_client(moto.url)
    for bucket in (LAKE, DEAD):
        client.create_bucket(Bucket=bucket)
    # GIVEN files that would ship only after an hour, and a sink killed before that
    config, metrics = dead_config(tmp_path, moto.url, max_age_secs=3600)
    sent = raw_records("crash", 25)
    with running(config, tmp_path / "sink.log") as sink:
        send(sink.port, sent, chunk=5, tag=RAW_TAG)
        # counted once the step's checkpoint is written: lines past the checkpoint would be cut
        # back at the restart and mapped again into a file that ships only at its age
        dead = "securitylake_sink_records_dead_lettered_total"
        wait_until(lambda: metric(metrics, dead) == 25, 30, "the spooled lines")
        assert sum(len(p.read_bytes().splitlines()) for p in local_files(tmp_path)) == 25
        sink.kill()
    assert not dead_lines(client)
    # WHEN the sink starts again, THEN what the spool kept is shipped once, and the local files go
    with running(config, tmp_path / "sink2.log") as sink:
        wait_until(lambda: sum(dead_messages(dead_lines(client)).values()) >= 25, 60, "the kept dead letters")
        wait_until(lambda: not local_files(tmp_path), 30, "the shipped files to be deleted")
        assert sink.stop() == 0
    assert dead_messages(dead_lines(client)) == Counter(r["message"] for _, r in sent)


def test_check_config_and_doctor_show_the_dead_letter_prefix(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3_client(moto.url)
    client.create_bucket(Bucket=LAKE)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.url)
    config, _ = dead_config(tmp_path, moto.url)
    shown = run_cli("check-config", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert f"dead letters s3://{DEAD}/dead/ (from {tmp_path / 'spool' / 'dead_letter'}" in shown.stdout
    # GIVEN a dead-letter bucket that does not exist, THEN doctor's write check fails and names the option
    done = run_cli("doctor", "-c", str(config))
    assert done.returncode == 1
    line = next(line for line in done.stdout.splitlines() if "write dead letters" in line)
    assert line.startswith("failed") and "NoSuchBucket" in line and "dead_letter.location" in line
    # GIVEN the bucket, THEN every check passes and the marker is gone again
    client.create_bucket(Bucket=DEAD)
    done = run_cli("doctor", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok      write dead letters     wrote and deleted dead/_securitylake-sink-doctor-" in done.stdout
    assert not client.list_objects_v2(Bucket=DEAD).get("Contents")
