"""AWS credentials from ``auth``: an assumed role (ExternalId, refreshed before expiry), static keys
or the SDK's default chain; ``session_for`` turns them into a boto3 Session. Secrets never leave.
"""

from __future__ import annotations

__all__ = [
    "PARTITION_HOME_REGION",
    "ROLE_SESSION_PREFIX",
    "RoleCredentials",
    "RoleFetcher",
    "assume_role_error",
    "base_session",
    "default_session_name",
    "refresh_windows",
    "session_for",
    "sts_client",
]

import functools
import logging
import os
import re
import socket
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import CredentialProvider, CredentialResolver, DeferredRefreshableCredentials
from botocore.exceptions import ClientError

from securitylake_sink.config import AuthConfig
from securitylake_sink.errors import PermanentDelivery, SinkError
from securitylake_sink.lake.retry import classify, error_code
from securitylake_sink.lake.url import Destination
from securitylake_sink.telemetry import set_credential_expiry

if TYPE_CHECKING:
    from mypy_boto3_sts import STSClient

log = logging.getLogger("securitylake_sink.lake.credentials")

ROLE_SESSION_PREFIX = "securitylake-sink"
# STS RoleSessionName: 2-64 characters of [\w+=,.@-] (AssumeRole API reference).
SESSION_NAME_MAX = 64
SESSION_NAME_BAD_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)
# Where botocore talks to STS when the destination has no region yet (looked up at start-up).
PARTITION_HOME_REGION = {"aws": "us-east-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}
# botocore refreshes 15 minutes (advisory) and 10 minutes (mandatory) before expiry; with the
# 900-second minimum session that would call AssumeRole before every request, so scale them.
ADVISORY_REFRESH_SECS, MANDATORY_REFRESH_SECS = 15 * 60, 10 * 60
# STS calls are small: a short timeout and botocore's standard retries (3 attempts).
STS_CLIENT_CONFIG = BotoConfig(connect_timeout=5, read_timeout=15, retries={"mode": "standard", "max_attempts": 3})
ROLE_METHOD = "securitylake-sink-assume-role"


def default_session_name(hostname: str | None = None, pid: int | None = None) -> str:
    """``securitylake-sink-<hostname>-<pid>``, hostname trimmed so the name fits STS's rule."""
    host = SESSION_NAME_BAD_CHARS.sub("-", hostname if hostname is not None else socket.gethostname()) or "host"
    tail = f"-{pid if pid is not None else os.getpid()}"
    room = SESSION_NAME_MAX - len(ROLE_SESSION_PREFIX) - 1 - len(tail)
    return f"{ROLE_SESSION_PREFIX}-{host[:room].strip('-.') or 'host'}{tail}"[:SESSION_NAME_MAX]


def refresh_windows(duration_secs: int) -> tuple[int, int]:
    """(advisory, mandatory) seconds before expiry at which role credentials are refreshed."""
    return min(ADVISORY_REFRESH_SECS, duration_secs // 3), min(MANDATORY_REFRESH_SECS, duration_secs // 6)


@functools.cache
def _warn_static() -> None:
    log.warning("auth uses static access keys: supported, but an IAM role is recommended for production")


def base_session(auth: AuthConfig, region: str | None) -> boto3.Session:
    """The credentials the sink starts from: the static keys when given, else the default chain."""
    if auth.access_key_id is not None and auth.secret_access_key is not None:
        return boto3.Session(
            aws_access_key_id=auth.access_key_id,
            aws_secret_access_key=auth.secret_access_key.get_secret_value(),
            aws_session_token=auth.session_token.get_secret_value() if auth.session_token else None,
            region_name=region,
        )
    return boto3.Session(region_name=region)


def sts_client(base: boto3.Session, auth: AuthConfig, destination: Destination) -> STSClient:
    """STS on the destination's regional endpoint; ``auth.sts_endpoint`` overrides it, and so do the
    SDK's ``AWS_ENDPOINT_URL_STS`` / ``AWS_ENDPOINT_URL`` (botocore reads them when we pass none)."""
    region = destination.region or PARTITION_HOME_REGION[destination.partition]
    return base.client("sts", region_name=region, endpoint_url=auth.sts_endpoint or None, config=STS_CLIENT_CONFIG)


def assume_role_error(exc: ClientError, auth: AuthConfig) -> SinkError:
    """A PermanentDelivery that says what usually causes an AssumeRole failure, with no secret in it."""
    code = error_code(exc)
    said = str(exc.response.get("Error", {}).get("Message", ""))
    if auth.external_id is not None:  # AWS never echoes it; a stand-in or proxy might
        said = said.replace(auth.external_id.get_secret_value(), "********")
    role = auth.role_arn
    if code == "AccessDenied":
        return PermanentDelivery(
            f"STS refused AssumeRole on {role} (AccessDenied: {said}). Usually one of: the role's trust policy "
            "does not name these base credentials as its principal; auth.external_id does not match the "
            "trust policy's sts:ExternalId condition; auth.role_arn names the wrong account or role name; "
            "or the base credentials lack sts:AssumeRole on the role"
        )
    if code == "ValidationError" and "DurationSeconds" in said and "chaining" in said:
        return PermanentDelivery(
            f"auth.duration_seconds ({auth.duration_seconds}) is above the 3600 seconds STS allows when the "
            "base credentials are themselves an assumed role (role chaining); set auth.duration_seconds: 3600"
        )
    if code == "ValidationError" and "DurationSeconds" in said:
        return PermanentDelivery(
            f"auth.duration_seconds ({auth.duration_seconds}) is longer than the maximum session duration "
            f"of {role}; lower auth.duration_seconds or raise the role's MaxSessionDuration"
        )
    if code == "RegionDisabledException":
        return PermanentDelivery(
            f"STS is not activated in this region for the account ({said}); activate it in IAM "
            "account settings or set auth.sts_endpoint to an active region's endpoint"
        )
    if code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"):
        return PermanentDelivery(
            f"STS rejected the base credentials before AssumeRole on {role} ({code}: {said}); "
            "check auth.access_key_id / auth.secret_access_key or the default credential chain"
        )
    return PermanentDelivery(f"AssumeRole on {role} failed ({code or 'error'}: {said})")


class RoleFetcher:
    """Calls AssumeRole; the result is what botocore's refreshable credentials expect."""

    def __init__(self, sts: STSClient, auth: AuthConfig) -> None:
        assert auth.role_arn is not None
        self.sts = sts
        self.auth = auth
        self.role_arn = auth.role_arn
        self.session_name = auth.role_session_name or default_session_name()

    def assume(self) -> dict[str, Any]:
        """The AssumeRole response's Credentials and AssumedRoleUser; raises a clear SinkError."""
        params: dict[str, Any] = {
            "RoleArn": self.role_arn,
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.auth.duration_seconds,
        }
        if self.auth.external_id is not None:
            params["ExternalId"] = self.auth.external_id.get_secret_value()
        try:
            response = self.sts.assume_role(**params)
        except ClientError as exc:
            if classify(exc) != "permanent":
                raise  # throttled or 5xx after botocore's own retries: the caller retries later
            raise assume_role_error(exc, self.auth) from None
        log.info(
            "assumed the writer role",
            extra={
                "role_arn": self.role_arn,
                "session": self.session_name,
                "expires": response["Credentials"]["Expiration"],
            },
        )
        return dict(response)

    def __call__(self) -> dict[str, str]:
        creds = self.assume()["Credentials"]
        set_credential_expiry(creds["Expiration"].timestamp())
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }


class RoleCredentials(DeferredRefreshableCredentials):
    """Assumed-role credentials, fetched on first use and refreshed ahead of expiry (botocore blocks
    every request once inside the mandatory window, so nothing is signed with expired keys)."""

    def __init__(self, fetcher: RoleFetcher, duration_secs: int) -> None:
        super().__init__(refresh_using=fetcher, method=ROLE_METHOD)
        self._advisory_refresh_timeout, self._mandatory_refresh_timeout = refresh_windows(duration_secs)


class _FixedProvider(CredentialProvider):
    """Hands botocore one credentials object (the public way to plug in our own)."""

    METHOD = ROLE_METHOD
    CANONICAL_NAME = "custom-securitylake-sink"

    def __init__(self, credentials: RoleCredentials) -> None:
        super().__init__()
        self.credentials = credentials

    def load(self) -> RoleCredentials:
        return self.credentials


class _QuietFailedRefresh(logging.Filter):
    """botocore logs a traceback for each failed refresh. A mandatory one raises to our caller,
    which reports it in its own words, as does any refresh that failed with our SinkError."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, SinkError) or record.args == ("mandatory",))


logging.getLogger("botocore.credentials").addFilter(_QuietFailedRefresh())


def session_for(auth: AuthConfig, destination: Destination) -> boto3.Session:
    """A boto3 Session with the credentials ``auth`` asks for, in the destination's region."""
    if auth.mode == "static":
        _warn_static()
    if auth.mode != "assume_role":
        return base_session(auth, destination.region)
    base = base_session(auth, destination.region)
    fetcher = RoleFetcher(sts_client(base, auth, destination), auth)
    core = botocore.session.Session()
    core.register_component(
        "credential_provider", CredentialResolver([_FixedProvider(RoleCredentials(fetcher, auth.duration_seconds))])
    )
    return boto3.Session(botocore_session=core, region_name=destination.region)
