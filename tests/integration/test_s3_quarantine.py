"""A permanent rejection from a real S3 server (moto enforcing IAM): the object of the denied prefix
goes to quarantine/ while the other class is delivered (which shows the lake works for others), and
``spool retry`` delivers it once the policy is fixed, with the sink still running."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.s3_harness import (
    MotoServer,
    auth_records,
    aws_client,
    lake_rows,
    run_cli,
    running,
    s3_client,
    send,
    sink_config,
    use_aws_env,
    wait_until,
)

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    use_aws_env(monkeypatch)


def api_records(run: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    """OCSF API Activity events whose ``message`` identifies each one."""
    now_ns = time.time_ns()
    base = {"class_uid": 6003, "activity_id": 1, "time": now_ns // 1_000_000, "actor": {"user": {"name": "u"}},
            "api": {"operation": "GetObject"}, "src_endpoint": {"ip": "10.0.0.2"}}  # fmt: skip
    return [(now_ns, {**base, "message": f"{run}-{i:06d}"}) for i in range(count)]


def test_denied_prefix_is_quarantined_then_delivered_by_spool_retry(tmp_path: Path) -> None:
    # GIVEN a private moto enforcing IAM: the sink's user may put objects anywhere in the bucket
    # except under ext/denied/, which class 6003 is configured to go to
    moto = MotoServer(log=tmp_path / "moto.log").start()
    try:
        iam = aws_client("iam", moto.url)
        client = s3_client(moto.url)
        bucket = f"sl-quarantine-{int(time.time())}"
        client.create_bucket(Bucket=bucket)
        iam.create_user(UserName="writer")
        allow = {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": f"arn:aws:s3:::{bucket}/*"}
        deny = {"Effect": "Deny", "Action": ["s3:PutObject"], "Resource": f"arn:aws:s3:::{bucket}/ext/denied/*"}
        for name, statement in (("allow", allow), ("deny", deny)):
            document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            iam.put_user_policy(UserName="writer", PolicyName=name, PolicyDocument=document)
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        moto.enforce_auth(True)
        auth = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
        config = sink_config(tmp_path, f"s3://{bucket}/", endpoint=moto.url, region="us-east-1", auth=auth,
                             delivery={"max_attempts": 2})  # fmt: skip
        data = yaml.safe_load(config.read_text())
        data["destination"]["sources"].append({"class_uid": 6003, "location": "ext/denied/"})
        config.write_text(yaml.safe_dump(data))
        auth_sent, api_sent = auth_records("allowed", 150), api_records("denied", 120)

        with running(config, tmp_path / "sink.log") as sink:
            # WHEN both classes are sent
            send(sink.port, auth_sent, tag="ocsf.auth")
            send(sink.port, api_sent, tag="ocsf.api")
            # AND more of the allowed class keeps coming, so the lake is seen to store other objects
            for batch in range(60):
                if "quarantined a batch; delivery goes on with the next one" in sink.log():
                    break
                more = auth_records(f"allowed{batch}", 5)
                send(sink.port, more, tag="ocsf.auth")
                auth_sent += more
                time.sleep(1.2)  # batch.max_age_secs 1: each lot is an object of its own
            # THEN the denied object is quarantined after two counted AccessDenied answers, the
            # other class delivered all along
            sink.wait_for_log("quarantined a batch; delivery goes on with the next one", timeout=60)
            listed = run_cli("spool", "ls", "-c", str(config), "--json")
            assert listed.returncode == 0, listed.stderr
            (item,) = json.loads(listed.stdout)["quarantine"]
            reason = item["reason"]
            assert (item["kind"], reason["cause"], reason["class_uid"], reason["rows"]) == (
                "batch", "permanent_failure", 6003, 120)  # fmt: skip
            assert reason["attempts"] == 2 and "AccessDenied" in reason["last_error"]
            assert reason["key"].startswith("ext/denied/region=us-east-1/")
            assert key["SecretAccessKey"] not in listed.stdout + sink.log()
            moto.enforce_auth(False)
            wait_until(lambda: sum(len(m) for m in lake_rows(client, bucket).values()) == len(auth_sent), 30,
                       "the allowed class")  # fmt: skip
            assert not any(k.startswith("ext/denied/") for k in lake_rows(client, bucket))

            # WHEN the deny is removed and the quarantined batch is retried while the sink runs
            iam.delete_user_policy(UserName="writer", PolicyName="deny")
            moto.enforce_auth(True)
            stored = sink.log().count("stored an object")
            retried = run_cli("spool", "retry", "-c", str(config), item["id"])
            assert retried.returncode == 0, retried.stderr
            assert "back in sealed/" in retried.stdout

            # THEN the running sink finds it and stores it, and the quarantine is empty
            sink.wait_for_log("found a sealed batch put back for delivery", timeout=30)
            sink.wait_for_log("stored an object", count=stored + 1, timeout=30)
            assert sink.stop() == 0
        moto.enforce_auth(False)
        rows = lake_rows(client, bucket)
        assert Counter(m for found in rows.values() for m in found) == Counter(
            r["message"] for _, r in auth_sent + api_sent
        )
        assert json.loads(run_cli("spool", "ls", "-c", str(config), "--json").stdout)["quarantine"] == []
    finally:
        moto.stop()
