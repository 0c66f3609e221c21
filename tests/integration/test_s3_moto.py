"""The sink process delivering to S3 through a real HTTP server (moto), never a patched boto3:
key layout and rows, path-style URLs, region lookup, role-signed uploads, failures that keep the
data in the spool (missing bucket, server restart, External ID mismatch), and ``doctor``.

CI starts ``moto_server`` on 127.0.0.1:$MOTO_PORT (default 5055); run by hand, the fixture below
starts one on a free port for the session. Tests that restart moto or turn on its IAM checks
start their own private server, so they never disturb the shared one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.s3_harness import (
    ACCOUNT,
    KEY_RE,
    ROLE_ARN,
    MotoServer,
    StsStandIn,
    auth_records,
    aws_client,
    lake_rows,
    listening,
    log_line,
    run_cli,
    running,
    s3_client,
    send,
    sink_config,
    use_aws_env,
    wait_until,
)

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared moto server: CI's on $MOTO_PORT, else one of our own for this session."""
    port = int(os.environ.get("MOTO_PORT", "5055"))
    if listening(port):
        yield f"http://127.0.0.1:{port}"
        return
    server = MotoServer(log=tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server.url
    finally:
        server.stop()


def new_bucket(client: object, region: str = "us-east-1", *, create: bool = True) -> str:
    name = f"sl-test-{uuid.uuid4().hex[:12]}"
    if create:
        config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        client.create_bucket(Bucket=name, **config)  # type: ignore[attr-defined]
    return name


def messages(rows: dict[str, list[str]]) -> Counter[str]:
    return Counter(m for found in rows.values() for m in found)


def assert_security_lake_keys(rows: dict[str, list[str]], region: str, prefix: str = "") -> None:
    for key in rows:
        match = KEY_RE.match(key)
        assert match, f"{key} is not a Security Lake key"
        assert (match["prefix"], match["region"], match["account"]) == (prefix, region, ACCOUNT)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy keys and none of the caller's AWS settings, for this process and the sinks it starts."""
    use_aws_env(monkeypatch)


def test_s3_uri_with_endpoint_delivers_every_row(tmp_path: Path, moto_url: str) -> None:
    # GIVEN s3://<bucket>/ with destination.endpoint, WHEN records are sent and the sink is stopped
    client = s3_client(moto_url)
    bucket = new_bucket(client)
    config = sink_config(tmp_path, f"s3://{bucket}/", endpoint=moto_url, region="us-east-1", max_age_secs=300)
    sent = auth_records("uri", 1500)
    with running(config, tmp_path / "sink.log") as sink:
        send(sink.port, sent)
        assert sink.stop() == 0
    # THEN every row is in Parquet objects at Security Lake keys, exactly once
    rows = lake_rows(client, bucket)
    assert rows
    assert_security_lake_keys(rows, "us-east-1")
    assert messages(rows) == Counter(r["message"] for _, r in sent)
    assert "Traceback" not in sink.log()


def test_http_path_style_url_with_a_prefix(tmp_path: Path, moto_url: str) -> None:
    client = s3_client(moto_url)
    bucket = new_bucket(client)
    config = sink_config(tmp_path, f"{moto_url}/{bucket}/lake/", region="eu-central-1")
    sent = auth_records("path", 300)
    with running(config, tmp_path / "sink.log") as sink:
        send(sink.port, sent)
        assert sink.stop() == 0
    rows = lake_rows(client, bucket)
    assert_security_lake_keys(rows, "eu-central-1", prefix="lake/")
    assert messages(rows) == Counter(r["message"] for _, r in sent)


def test_region_is_looked_up_when_nothing_names_it(
    tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN s3://<bucket>/ with no region anywhere, and the SDK pointed at moto by AWS_ENDPOINT_URL
    client = s3_client(moto_url)
    bucket = new_bucket(client, "eu-west-2")
    config = sink_config(tmp_path, f"s3://{bucket}/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    assert "(looked up at start-up)" in run_cli("check-config", "-c", str(config)).stdout
    with running(config, tmp_path / "sink.log") as sink:
        send(sink.port, auth_records("lookup", 50))
        assert sink.stop() == 0
    # THEN HeadBucket's x-amz-bucket-region decides the region in the keys
    assert "looked up the bucket's region" in sink.log()
    rows = lake_rows(client, bucket)
    assert rows
    assert_security_lake_keys(rows, "eu-west-2")


def test_uploads_are_signed_with_the_assumed_role(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a private moto that enforces IAM: the base user may only assume the role, the role may
    # only PutObject under ext/ — so an object lands only if S3 saw the assumed-role credentials
    moto = MotoServer(log=tmp_path / "moto.log").start()
    try:
        iam = aws_client("iam", moto.url)
        bucket = new_bucket(s3_client(moto.url))
        allow = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": "*"}],
        }
        iam.create_user(UserName="writer")
        iam.put_user_policy(UserName="writer", PolicyName="assume", PolicyDocument=json.dumps(allow))
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/writer"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam.create_role(RoleName="SynqlyAccess-writer", AssumeRolePolicyDocument=json.dumps(trust))
        put = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": f"arn:aws:s3:::{bucket}/ext/*"}],
        }
        iam.put_role_policy(RoleName="SynqlyAccess-writer", PolicyName="put", PolicyDocument=json.dumps(put))
        moto.enforce_auth(True)
        user_s3 = s3_client(moto.url, access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])
        with pytest.raises(Exception, match="AccessDenied"):  # the base keys alone cannot write
            user_s3.put_object(Bucket=bucket, Key="ext/auth/probe", Body=b"x")
        config = sink_config(
            tmp_path,
            f"s3://{bucket}/",
            endpoint=moto.url,
            region="us-east-1",
            auth={
                "role_arn": ROLE_ARN,
                "external_id": "lake-ext-id-7",
                "access_key_id": key["AccessKeyId"],
                "secret_access_key": key["SecretAccessKey"],
                "sts_endpoint": moto.url,
                "duration_seconds": 900,
            },
        )
        sent = auth_records("role", 200)
        # WHEN the sink runs with the role
        # the default chain would find nothing useful: the sink must use the configured base keys
        use_aws_env(monkeypatch, AWS_ACCESS_KEY_ID="nobody", AWS_SECRET_ACCESS_KEY="nobody")  # noqa: S106
        with running(config, tmp_path / "sink.log") as sink:
            send(sink.port, sent)
            assert sink.stop() == 0
        # THEN the objects are there, and the log shows the role was assumed, without secrets
        moto.enforce_auth(False)
        rows = lake_rows(s3_client(moto.url), bucket)
        assert messages(rows) == Counter(r["message"] for _, r in sent)
        assert "assumed the writer role" in sink.log()
        for secret in (key["SecretAccessKey"], "lake-ext-id-7"):
            assert secret not in sink.log()
    finally:
        moto.stop()


def test_missing_bucket_keeps_the_data_until_the_bucket_exists(tmp_path: Path, moto_url: str) -> None:
    # GIVEN a bucket that does not exist yet
    client = s3_client(moto_url)
    bucket = new_bucket(client, create=False)
    config = sink_config(tmp_path, f"s3://{bucket}/", endpoint=moto_url, region="us-east-1")
    sent = auth_records("late", 400)
    with running(config, tmp_path / "sink.log") as sink:
        send(sink.port, sent)
        # WHEN delivery fails with NoSuchBucket, THEN it is logged as permanent and the batch stays spooled
        sink.wait_for_log("could not store an object", timeout=30)
        line = log_line(sink, "could not store an object")
        assert "NoSuchBucket" in line and "permanent=True" in line
        assert list((tmp_path / "spool" / "sealed").glob("*.batch"))
        # WHEN the bucket appears, THEN delivery resumes without a restart
        client.create_bucket(Bucket=bucket)
        sink.wait_for_log("stored an object", timeout=30)
        assert sink.stop() == 0
    assert messages(lake_rows(client, bucket)) == Counter(r["message"] for _, r in sent)
    assert not list((tmp_path / "spool" / "sealed").glob("*.batch"))


def test_s3_restart_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    # moto keeps state in memory, so a restart forgets the bucket: we read what landed before the
    # stop, recreate the bucket after the restart, and check both halves add up to what was sent.
    moto = MotoServer(log=tmp_path / "moto.log").start()
    try:
        client = s3_client(moto.url)
        bucket = new_bucket(client)
        config = sink_config(tmp_path, f"s3://{bucket}/", endpoint=moto.url, region="us-east-1")
        first, second = auth_records("before", 300), auth_records("after", 300, start=300)
        with running(config, tmp_path / "sink.log") as sink:
            send(sink.port, first)
            wait_until(lambda: sum(messages(lake_rows(client, bucket)).values()) == 300, 30, "the first half")
            before = lake_rows(client, bucket)
            # WHEN S3 goes away mid-run, records keep being accepted (spooled) and deliveries fail
            moto.stop()
            send(sink.port, second)
            sink.wait_for_log("could not store an object", timeout=45)
            assert "permanent=False" in log_line(sink, "could not store an object")
            # WHEN S3 comes back (empty), THEN the spooled batches are delivered without a restart
            moto.start()
            client.create_bucket(Bucket=bucket)
            assert sink.stop() == 0
        after = lake_rows(client, bucket)
    finally:
        moto.stop()
    assert not set(before) & set(after)
    assert messages(before) + messages(after) == Counter(r["message"] for _, r in first + second)
    assert max((messages(before) + messages(after)).values()) == 1


def test_external_id_mismatch_is_explained_and_the_data_kept(tmp_path: Path, moto_url: str) -> None:
    # GIVEN an STS that accepts another External ID than the configured one
    client = s3_client(moto_url)
    bucket = new_bucket(client)
    configured = "ext-id-configured-4711"
    with StsStandIn(accepted_external_id="ext-id-in-trust-policy") as sts:
        auth = {"role_arn": ROLE_ARN, "external_id": configured, "sts_endpoint": sts.url}
        config = sink_config(tmp_path, f"s3://{bucket}/", endpoint=moto_url, region="us-east-1", auth=auth)
        sent = auth_records("extid", 120)
        with running(config, tmp_path / "sink.log") as sink:
            send(sink.port, sent)
            # THEN the log says what usually causes it, and shows no secret
            sink.wait_for_log("could not store an object", timeout=30)
            line = log_line(sink, "could not store an object")
            for cause in ("AccessDenied", "trust policy", "auth.external_id", "permanent=True"):
                assert cause in line
            assert not list(client.list_objects_v2(Bucket=bucket).get("Contents", []))
            # WHEN the trust policy is fixed, THEN the spooled data is delivered without a restart
            sts.accepted_external_id = configured
            sink.wait_for_log("stored an object", timeout=30)
            assert sink.stop() == 0
        assert configured not in sink.log() and "testing" not in sink.log()
        assert "Traceback" not in sink.log()
    assert messages(lake_rows(client, bucket)) == Counter(r["message"] for _, r in sent)


def test_doctor(tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = s3_client(moto_url)
    bucket = new_bucket(client)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_url)
    # GIVEN a working setup, THEN every check passes and the markers are gone afterwards
    good = sink_config(tmp_path, f"s3://{bucket}/", endpoint=moto_url, region="us-east-1")
    done = run_cli("doctor", "-c", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["ok", "ok", "ok"]
    assert "arn:aws:sts::" in lines[0] or "arn:aws:iam::" in lines[0]
    assert "is in us-east-1" in lines[1] and "wrote and deleted ext/auth/_securitylake-sink-doctor-" in lines[2]
    assert not client.list_objects_v2(Bucket=bucket).get("Contents")
    # GIVEN a region that is not the bucket's, THEN the region check fails and says which one it is
    (tmp_path / "wrong").mkdir()
    wrong = sink_config(tmp_path / "wrong", f"s3://{bucket}/", endpoint=moto_url, region="eu-west-3")
    done = run_cli("doctor", "-c", str(wrong))
    assert done.returncode == 1
    assert "failed  bucket region" in done.stdout and "set destination.region: us-east-1" in done.stdout
    # GIVEN an External ID the trust policy does not accept, THEN the role check fails without the secret
    with StsStandIn(accepted_external_id="other-ext-id") as sts:
        (tmp_path / "role").mkdir()
        auth = {"role_arn": ROLE_ARN, "external_id": "ext-id-9876", "sts_endpoint": sts.url}
        role = sink_config(tmp_path / "role", f"s3://{bucket}/", endpoint=moto_url, region="us-east-1", auth=auth)
        done = run_cli("doctor", "-c", str(role))
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("ok      base credentials  ")
    assert done.stdout.splitlines()[1].startswith("failed  assume role")
    assert "trust policy" in done.stdout and "ext-id-9876" not in done.stdout + done.stderr
    assert "skipped" in done.stdout
    # GIVEN a broken config, THEN exit 2
    (tmp_path / "bad.yaml").write_text("destination: {url: 's3://x'}\n", encoding="utf-8")
    assert run_cli("doctor", "-c", str(tmp_path / "bad.yaml")).returncode == 2
