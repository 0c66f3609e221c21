"""``securitylake-sink doctor``: live checks — base credentials, the role, the bucket's region and
write access to every source location and to an s3:// dead-letter location — printed one per line
with the fix. Never prints a secret.
"""

from __future__ import annotations

__all__ = ["Check", "doctor", "run_checks"]

import dataclasses
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TextIO

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from securitylake_sink.config import Config
from securitylake_sink.errors import SinkError
from securitylake_sink.lake.credentials import RoleFetcher, base_session, sts_client
from securitylake_sink.lake.layout import uuid7
from securitylake_sink.lake.retry import error_code
from securitylake_sink.lake.s3 import S3Store, lookup_region, s3_client_config
from securitylake_sink.lake.store import LocalStore
from securitylake_sink.lake.url import Destination
from securitylake_sink.plan import OPT_DEAD_LETTER, dead_letter_destination, destination_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Status = Literal["ok", "failed", "skipped"]
# Doctor answers quickly: short timeouts and two attempts, unlike the delivery path.
DOCTOR_CLIENT_CONFIG = BotoConfig(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 2})
# The marker starts with "_", which Athena and Spark skip, in case it cannot be deleted.
MARKER_PREFIX = "_securitylake-sink-doctor-"
MARKER_BODY = b"securitylake-sink doctor: write check; safe to delete\n"
NEEDS_CREDENTIALS = "not tried: needs working credentials"
DEAD_LETTER_CHECK = "write dead letters"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report."""

    status: Status
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:7} {self.name:22} {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix else text


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SinkError | ClientError) else f"{type(exc).__name__}: {exc}"


def _credentials_fix(exc: Exception) -> str:
    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    if code in ("NoCredentialsError", "PartialCredentialsError"):
        return "set auth.access_key_id and auth.secret_access_key, or configure the default chain"
    if code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"):
        return "the keys are wrong or expired; check auth.access_key_id, auth.secret_access_key, auth.session_token"
    return "check network access to STS (proxy, firewall, auth.sts_endpoint)"


def _credential_checks(config: Config, destination: Destination) -> Generator[Check, None, boto3.Session | None]:
    """Base credentials, then the role; returns the session to use for S3 (None when one failed)."""
    auth = config.auth
    base = base_session(auth, destination.region)
    sts = sts_client(base, auth, destination)
    try:
        arn = sts.get_caller_identity()["Arn"]
    except Exception as exc:
        yield Check("failed", "base credentials", _why(exc), _credentials_fix(exc))
        return None
    source = "static keys" if auth.access_key_id else "default chain"
    yield Check("ok", "base credentials", f"{arn} ({source})")
    if auth.role_arn is None:
        return base
    try:
        answer = RoleFetcher(sts, auth).assume()
    except Exception as exc:
        fix = "" if isinstance(exc, SinkError) else "check network access to STS and retry"
        yield Check("failed", "assume role", _why(exc), fix)
        return None
    with_id = " with the external ID" if auth.external_id is not None else ""
    yield Check("ok", "assume role", f"{answer['AssumedRoleUser']['Arn']}{with_id}")
    creds = answer["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=destination.region,
    )


def _region_check(session: boto3.Session, destination: Destination) -> tuple[Check, str | None]:
    if destination.access_point_arn is not None:
        return Check("ok", "bucket region", f"{destination.region} (from the access point ARN)"), destination.region
    try:
        region = lookup_region(session, destination)
    except Exception as exc:
        return Check("failed", "bucket region", _why(exc), "check destination.url and network access to S3"), None
    if destination.region is not None and destination.region != region:
        return (
            Check(
                "failed",
                "bucket region",
                f"bucket {destination.bucket} is in {region}, not {destination.region} ({destination.region_source})",
                f"set destination.region: {region} (and a URL for that region)",
            ),
            region,
        )
    return Check("ok", "bucket region", f"bucket {destination.bucket} is in {region}"), region


def _write_check(store: S3Store, client: S3Client, location: str, name: str = "", fix: str = "the location") -> Check:
    key = f"{store.destination.prefix}{location}{MARKER_PREFIX}{uuid7()}"
    name = name or f"write {location}"
    try:
        store.put(key, MARKER_BODY)
    except SinkError as exc:
        return Check("failed", name, str(exc), f"grant s3:PutObject on {fix} to the writer role")
    try:
        client.delete_object(Bucket=store.bucket, Key=key)
    except Exception as exc:
        code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        return Check("ok", name, f"wrote {key}; could not delete it ({code}): remove it by hand or leave it")
    return Check("ok", name, f"wrote and deleted {key}")


def _file_checks(config: Config, destination: Destination) -> Iterator[Check]:
    assert destination.local_path is not None
    store = LocalStore(destination.local_path)
    for source in config.destination.sources:
        key = f"{source.location}{MARKER_PREFIX}{uuid7()}"
        try:
            store.put(key, MARKER_BODY)
            (destination.local_path / key).unlink()
        except (SinkError, OSError) as exc:
            yield Check("failed", f"write {source.location}", str(exc), "make the lake directory writable")
            continue
        yield Check("ok", f"write {source.location}", f"wrote and deleted {destination.local_path / key}")


def run_checks(config: Config) -> Iterator[Check]:
    """The checks, in order, as they complete; later ones are skipped when what they need failed."""
    destination = destination_of(config)
    if destination.kind == "file":
        yield from _file_checks(config, destination)
        return
    dead_letters = dead_letter_destination(config, destination)
    session = yield from _credential_checks(config, destination)
    if session is None:
        yield Check("skipped", "bucket region", NEEDS_CREDENTIALS)
        for source in config.destination.sources:
            yield Check("skipped", f"write {source.location}", NEEDS_CREDENTIALS)
        if dead_letters is not None:
            yield Check("skipped", DEAD_LETTER_CHECK, NEEDS_CREDENTIALS)
        return
    check, region = _region_check(session, destination)
    yield check
    located = dataclasses.replace(destination, region=region or destination.region or "us-east-1")
    config_for_s3 = s3_client_config(located).merge(DOCTOR_CLIENT_CONFIG)
    client = session.client("s3", region_name=located.region, endpoint_url=located.endpoint_url, config=config_for_s3)
    store = S3Store(located, lambda _region: client, sse_kms_key_id=config.destination.sse_kms_key_id)
    for source in config.destination.sources:
        yield _write_check(store, client, source.location)
    if dead_letters is not None:
        located = dataclasses.replace(dead_letters, region=located.region)
        dead_store = S3Store(located, lambda _region: client)
        yield _write_check(dead_store, client, "", DEAD_LETTER_CHECK, f"{OPT_DEAD_LETTER} ({dead_store.describe()})")


def doctor(config: Config, out: TextIO) -> int:
    """Print every check; 0 when all passed, 1 otherwise."""
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    for check in run_checks(config):
        print(check.line(), file=out, flush=True)
        counts[check.status] += 1
    if counts["failed"] + counts["skipped"] == 0:
        print(f"all {counts['ok']} checks passed", file=out)
        return 0
    print(f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['ok']} ok", file=out)
    return 1
