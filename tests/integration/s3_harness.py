"""Real parts for the S3 integration tests: a moto server process, the sink process (sinkproc.py)
fed over the Forward protocol, a loopback STS stand-in, and readers for what landed in the bucket."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import pyarrow.parquet as pq
import pytest
import yaml

from securitylake_sink.forward_client import ForwardClient
from tests.integration.sinkproc import BIN as SINK_BIN
from tests.integration.sinkproc import SinkProcess, free_port

MOTO_BIN = SINK_BIN.parent / "moto_server"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/SynqlyAccess-writer"
KEY_RE = re.compile(
    r"^(?P<prefix>(?:[^/]+/)*?)ext/auth/region=(?P<region>[a-z0-9-]+)/accountId=(?P<account>\d{12})"
    r"/eventDay=(?P<day>\d{8})/(?P<name>[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\.parquet$"
)
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def use_aws_env(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    """This process's environment (which the sink inherits): none of the caller's AWS settings,
    dummy keys for moto, and ``extra``."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {**DUMMY_ENV, **extra}.items():
        monkeypatch.setenv(name, value)


class MotoServer:
    """``moto_server`` on loopback; in-memory, so a restart forgets every bucket and object."""

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        wait_until(lambda: listening(self.port) or self._died(), 30, f"moto_server on port {self.port}")
        assert self.proc.poll() is None, f"moto_server exited with {self.proc.returncode}"
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        wait_until(lambda: not listening(self.port), 10, "moto_server to stop listening")

    def enforce_auth(self, on: bool) -> None:
        """moto checks IAM policies on every request once on (``/moto-api/reset-auth``)."""
        request = urllib.request.Request(  # noqa: S310 (a loopback http URL we built)
            f"{self.url}/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form content type would hide the body from moto
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (same)
            assert answer.status == 200


def aws_client(service: str, endpoint: str, region: str = "us-east-1", **keys: str) -> Any:
    """A boto3 client on ``endpoint``; moto's dummy keys unless ``access_key``/``secret_key``/``token``."""
    session = boto3.Session(
        aws_access_key_id=keys.get("access_key", DUMMY_ENV["AWS_ACCESS_KEY_ID"]),
        aws_secret_access_key=keys.get("secret_key", DUMMY_ENV["AWS_SECRET_ACCESS_KEY"]),
        aws_session_token=keys.get("token"),
        region_name=region,
    )
    return session.client(service, endpoint_url=endpoint)  # type: ignore[call-overload]


def s3_client(endpoint: str, region: str = "us-east-1", **keys: str) -> Any:
    return aws_client("s3", endpoint, region, **keys)


def lake_rows(client: Any, bucket: str) -> dict[str, list[str]]:
    """key → the ``message`` column of every Parquet object in the bucket."""
    out: dict[str, list[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            if item["Key"].endswith(".parquet"):
                out[item["Key"]] = pq.read_table(io.BytesIO(body)).column("message").to_pylist()
            else:
                out[item["Key"]] = []
    return out


def auth_records(run: str, count: int, start: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """OCSF Authentication events whose ``message`` identifies each one."""
    now_ns = time.time_ns()
    out = []
    for i in range(start, start + count):
        t_ns = now_ns - i * 1_000_000
        record = {
            "class_uid": 3002,
            "activity_id": 1,
            "time": t_ns // 1_000_000,
            "severity_id": 1,
            "status_id": 1,
            "message": f"{run}-{i:06d}",
            "user": {"name": "alice"},
            "src_endpoint": {"ip": "10.0.0.7"},
        }
        out.append((t_ns, record))
    return out


def sink_config(tmp: Path, url: str, **options: Any) -> Path:
    """A config file: one class (3002 → ext/auth/), a free loopback port, spool under ``tmp``."""
    destination: dict[str, Any] = {
        "url": url,
        "account_id": ACCOUNT,
        "sources": [{"class_uid": 3002, "location": "ext/auth/"}],
    }
    for name in ("region", "endpoint", "sse_kms_key_id"):
        if name in options:
            destination[name] = options.pop(name)
    config = {
        "destination": destination,
        "listen": {"forward": {"address": f"127.0.0.1:{free_port()}"}},
        "spool": {"path": str(tmp / "spool")},
        "batch": {"max_age_secs": options.pop("max_age_secs", 1)},
        **options,
    }
    path = tmp / "sink.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def send(port: int, records: list[tuple[int, dict[str, Any]]], chunk: int = 200, tag: str = "ocsf.auth") -> None:
    """Send with acks: when this returns, the sink has the records in its spool."""
    with ForwardClient("127.0.0.1", port, timeout=30) as client:
        for start in range(0, len(records), chunk):
            client.send(tag, records[start : start + chunk])


def log_line(sink: SinkProcess, text: str) -> str:
    """The first line of the sink's log that contains ``text``."""
    return next(line for line in sink.log().splitlines() if text in line)


@contextlib.contextmanager
def running(config: Path, log: Path) -> Iterator[SinkProcess]:
    """The sink on ``config`` (its environment is this process's); it never outlives the test."""
    sink = SinkProcess(config, port_of(config), log, level="info")
    try:
        yield sink
    finally:
        if sink.proc.poll() is None:
            sink.kill()


def port_of(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["listen"]["forward"]["address"].rpartition(":")[2])


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SINK_BIN), *args], capture_output=True, text=True, timeout=timeout, check=False)


STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


class StsStandIn:
    """A loopback STS that, unlike moto, enforces the External ID: AssumeRole is AccessDenied
    unless ``ExternalId`` equals ``accepted_external_id``. Its credentials work on moto's S3."""

    ACCESS_KEY = "ASIASTANDINEXAMPLE01"

    def __init__(self, accepted_external_id: str) -> None:
        self.accepted_external_id = accepted_external_id
        self.calls: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StsStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, form: dict[str, str]) -> tuple[int, str]:
        action = form.get("Action", "")
        self.calls.append(action)
        if action == "GetCallerIdentity":
            arn = f"arn:aws:iam::{ACCOUNT}:user/writer"
            result = f"<Arn>{arn}</Arn><UserId>AIDAWRITER</UserId><Account>{ACCOUNT}</Account>"
            return 200, _sts_ok(action, result)
        if action != "AssumeRole":
            return 400, _sts_error("InvalidAction", f"{action} is not supported here")
        if form.get("ExternalId") != self.accepted_external_id:
            return 403, _sts_error(
                "AccessDenied",
                f"User: arn:aws:iam::{ACCOUNT}:user/writer is not authorized to perform: sts:AssumeRole "
                f"on resource: {form.get('RoleArn')}",
            )
        expires = (datetime.now(UTC) + timedelta(seconds=int(form.get("DurationSeconds", "3600")))).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        session = form.get("RoleSessionName", "")
        result = (
            f"<Credentials><AccessKeyId>{self.ACCESS_KEY}</AccessKeyId><SecretAccessKey>standin-secret"
            f"</SecretAccessKey><SessionToken>standin-token</SessionToken><Expiration>{expires}</Expiration>"
            f"</Credentials><AssumedRoleUser><AssumedRoleId>AROASTANDIN:{session}</AssumedRoleId>"
            f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/SynqlyAccess-writer/{session}</Arn></AssumedRoleUser>"
        )
        return 200, _sts_ok(action, result)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                status, text = stand_in.answer(form)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _sts_ok(action: str, result: str) -> str:
    return (
        f'<{action}Response xmlns="{STS_NS}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>standin</RequestId></ResponseMetadata></{action}Response>"
    )


def _sts_error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>standin</RequestId></ErrorResponse>"
    )
