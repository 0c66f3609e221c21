"""Tests for securitylake_sink.lake.credentials: session names, the static-keys warning, STS
endpoints, refresh before expiry, and AssumeRole errors that explain themselves without secrets."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.stub import Stubber
from pydantic import SecretStr

from securitylake_sink import telemetry
from securitylake_sink.config import SESSION_NAME, AuthConfig
from securitylake_sink.errors import PermanentDelivery
from securitylake_sink.lake import credentials
from securitylake_sink.lake.credentials import (
    RoleCredentials,
    RoleFetcher,
    default_session_name,
    refresh_windows,
    session_for,
    sts_client,
)
from securitylake_sink.lake.url import parse_destination

ROLE = "arn:aws:iam::123456789012:role/SynqlyAccess-writer"
EXTERNAL_ID = "ext-id-that-must-stay-secret"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # noqa: S105 (AWS's documented example key)
DEST = parse_destination("s3://aws-security-data-lake-eu-west-1-abc123/")


def role_auth(**extra: Any) -> AuthConfig:
    return AuthConfig(
        role_arn=ROLE,
        external_id=SecretStr(EXTERNAL_ID),
        access_key_id=ACCESS_KEY,
        secret_access_key=SecretStr(SECRET_KEY),
        **extra,
    )


@pytest.mark.parametrize(
    ("hostname", "pid"),
    [
        (None, None),
        ("ip-10-0-4-17.eu-west-1.compute.internal", 4242),
        ("x" * 200, 4194304),
        ("my host/ü:1", 7),
        ("", 1),
        ("-", 99),
    ],
    ids=["this-host", "ec2-name", "very-long", "odd-characters", "empty", "only-a-dash"],
)
def test_default_session_name_obeys_the_sts_rule(hostname: str | None, pid: int | None) -> None:
    name = default_session_name(hostname, pid)
    assert SESSION_NAME.match(name), name
    assert name.startswith("securitylake-sink-")
    if pid is not None:
        assert name.endswith(f"-{pid}")


def test_default_session_name_is_readable() -> None:
    assert default_session_name("web-1", 812) == "securitylake-sink-web-1-812"


def test_static_keys_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN static keys, WHEN sessions are made several times, THEN one warning in all
    credentials._warn_static.cache_clear()
    auth = AuthConfig(access_key_id=ACCESS_KEY, secret_access_key=SecretStr(SECRET_KEY))
    with caplog.at_level(logging.WARNING, logger="securitylake_sink"):
        for _ in range(3):
            session = session_for(auth, DEST)
    warnings = [r for r in caplog.records if "static access keys" in r.getMessage()]
    assert len(warnings) == 1
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text
    assert session.get_credentials().access_key == ACCESS_KEY  # type: ignore[union-attr]


def test_role_and_default_chain_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    credentials._warn_static.cache_clear()
    with caplog.at_level(logging.WARNING, logger="securitylake_sink"):
        session_for(role_auth(), DEST)
        session_for(AuthConfig(), DEST)
    assert "static access keys" not in caplog.text


def test_role_session_has_deferred_refreshable_credentials() -> None:
    # GIVEN a role, WHEN the session is made, THEN no STS call yet and credentials that refresh themselves
    session = session_for(role_auth(duration_seconds=900), DEST)
    creds = session.get_credentials()
    assert isinstance(creds, RoleCredentials)
    assert session.region_name == "eu-west-1"


@pytest.mark.parametrize(
    ("auth_endpoint", "env", "destination", "want"),
    [
        (None, {}, "s3://aws-security-data-lake-eu-west-1-abc123/", "https://sts.eu-west-1.amazonaws.com"),
        (None, {}, "https://bkt.s3.cn-north-1.amazonaws.com.cn/", "https://sts.cn-north-1.amazonaws.com.cn"),
        (None, {}, "https://bkt.s3.us-gov-west-1.amazonaws.com/", "https://sts.us-gov-west-1.amazonaws.com"),
        (None, {}, "s3://plain-bucket/", "https://sts.us-east-1.amazonaws.com"),  # region looked up later
        ("http://127.0.0.1:9999", {}, "s3://plain-bucket/", "http://127.0.0.1:9999"),
        (None, {"AWS_ENDPOINT_URL_STS": "http://127.0.0.1:7001"}, "s3://plain-bucket/", "http://127.0.0.1:7001"),
        (None, {"AWS_ENDPOINT_URL": "http://127.0.0.1:7002"}, "s3://plain-bucket/", "http://127.0.0.1:7002"),
    ],
    ids=["regional", "china", "govcloud", "lookup", "auth-sts-endpoint", "env-sts", "env-all"],
)
def test_sts_endpoint(
    monkeypatch: pytest.MonkeyPatch, auth_endpoint: str | None, env: dict[str, str], destination: str, want: str
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_STS_REGIONAL_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    auth = role_auth(sts_endpoint=auth_endpoint)
    dest = parse_destination(destination)
    client = sts_client(credentials.base_session(auth, dest.region), auth, dest)
    assert client.meta.endpoint_url == want


def stubbed_fetcher(auth: AuthConfig) -> tuple[RoleFetcher, Stubber]:
    base = credentials.base_session(auth, "eu-west-1")
    client = sts_client(base, auth, DEST)
    return RoleFetcher(client, auth), Stubber(client)


def assume_params(auth: AuthConfig, fetcher: RoleFetcher) -> dict[str, Any]:
    return {
        "RoleArn": ROLE,
        "RoleSessionName": fetcher.session_name,
        "ExternalId": EXTERNAL_ID,
        "DurationSeconds": auth.duration_seconds,
    }


def test_access_denied_names_the_likely_causes_without_secrets() -> None:
    auth = role_auth()
    fetcher, stub = stubbed_fetcher(auth)
    stub.add_client_error(
        "assume_role",
        "AccessDenied",
        f"User: arn:aws:iam::123456789012:user/writer is not authorized to perform: sts:AssumeRole on "
        f"resource: {ROLE} (external id {EXTERNAL_ID})",  # a proxy that echoes it must not leak it
        403,
        expected_params=assume_params(auth, fetcher),
    )
    with stub, pytest.raises(PermanentDelivery) as caught:
        fetcher()
    message = str(caught.value)
    for cause in ("trust policy", "principal", "auth.external_id", "sts:ExternalId", "role name", ROLE):
        assert cause in message
    for secret in (EXTERNAL_ID, SECRET_KEY, ACCESS_KEY):
        assert secret not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_duration_above_the_role_maximum_says_so() -> None:
    auth = role_auth(duration_seconds=43_200)
    fetcher, stub = stubbed_fetcher(auth)
    stub.add_client_error(
        "assume_role",
        "ValidationError",
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        400,
    )
    with stub, pytest.raises(PermanentDelivery, match=r"auth.duration_seconds \(43200\).*MaxSessionDuration"):
        fetcher()


def test_duration_above_the_role_chaining_limit_says_so() -> None:
    auth = role_auth(duration_seconds=7200)
    fetcher, stub = stubbed_fetcher(auth)
    stub.add_client_error(
        "assume_role",
        "ValidationError",
        "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
        400,
    )
    with stub, pytest.raises(PermanentDelivery, match=r"role chaining\); set auth.duration_seconds: 3600"):
        fetcher()


def test_throttled_assume_role_is_left_to_retry() -> None:
    fetcher, stub = stubbed_fetcher(role_auth())
    stub.add_client_error("assume_role", "Throttling", "Rate exceeded", 400)
    with stub, pytest.raises(Exception, match="Throttling") as caught:
        fetcher()
    assert not isinstance(caught.value, PermanentDelivery)


def test_assume_role_sends_session_name_and_duration() -> None:
    auth = role_auth(role_session_name="pipeline-7", duration_seconds=1800)
    fetcher, stub = stubbed_fetcher(auth)
    expires = datetime.now(UTC) + timedelta(minutes=30)
    stub.add_response(
        "assume_role",
        {
            "Credentials": {
                "AccessKeyId": "ASIAEXAMPLEASSUMED01",
                "SecretAccessKey": "s" * 40,
                "SessionToken": "t" * 40,
                "Expiration": expires,
            },
            "AssumedRoleUser": {"AssumedRoleId": "AROAX:pipeline-7", "Arn": "arn:aws:sts::123456789012:assumed-role/x"},
        },
        {**assume_params(auth, fetcher), "RoleSessionName": "pipeline-7", "DurationSeconds": 1800},
    )
    with stub:
        got = fetcher()
    assert got["access_key"] == "ASIAEXAMPLEASSUMED01"
    # AND the metrics' credential expiry gauge now shows when these credentials expire
    assert telemetry.credential_expiry() == pytest.approx(expires.timestamp())
    assert got["expiry_time"] == expires.isoformat()


@pytest.mark.parametrize(("duration", "want"), [(900, (300, 150)), (3600, (900, 600)), (43_200, (900, 600))])
def test_refresh_windows_scale_with_short_sessions(duration: int, want: tuple[int, int]) -> None:
    assert refresh_windows(duration) == want


class CountingFetcher:
    """Returns credentials expiring after the given seconds, one set per call."""

    def __init__(self, *lifetimes: int) -> None:
        self.lifetimes = list(lifetimes)
        self.calls = 0

    def __call__(self) -> dict[str, str]:
        self.calls += 1
        expires = datetime.now(UTC) + timedelta(seconds=self.lifetimes.pop(0))
        key = f"ASIAKEY{self.calls}"
        return {"access_key": key, "secret_key": "s", "token": "t", "expiry_time": expires.isoformat()}


def test_credentials_refresh_before_they_expire() -> None:
    # GIVEN 900-second sessions (mandatory refresh 150 s before expiry)
    fetcher = CountingFetcher(3600, 3600)
    creds = RoleCredentials(fetcher, 900)  # type: ignore[arg-type]
    assert fetcher.calls == 0  # deferred: nothing until first use
    # WHEN credentials are used, THEN fresh ones are reused, and near-expiry ones are replaced first
    assert creds.get_frozen_credentials().access_key == "ASIAKEY1"
    assert creds.get_frozen_credentials().access_key == "ASIAKEY1"
    assert fetcher.calls == 1
    creds._expiry_time = datetime.now(UTC) + timedelta(seconds=60)  # time passes: 60 s left
    assert creds.get_frozen_credentials().access_key == "ASIAKEY2"  # refreshed, never the stale key


def test_a_failed_first_fetch_raises_our_error_without_botocore_noise(caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> dict[str, str]:
        raise PermanentDelivery("STS refused AssumeRole")

    creds = RoleCredentials(refuse, 3600)  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentDelivery, match="refused"):
        creds.get_frozen_credentials()
    assert "Refreshing temporary credentials failed" not in caplog.text
