"""Tests for securitylake_sink.lake.retry: the classify table and the backoff bounds."""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from securitylake_sink.errors import PermanentDelivery, RetriableDelivery
from securitylake_sink.lake.retry import (
    PERMANENT_CODES,
    REFRESH_CODES,
    RETRY_CODES,
    backoff_delay,
    classify,
)


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


CODE_CASES = [
    # throttling, timeouts, server trouble
    ("SlowDown", 503, "retry"),
    ("Throttling", 400, "retry"),
    ("ThrottlingException", 400, "retry"),
    ("RequestTimeout", 400, "retry"),
    ("InternalError", 500, "retry"),
    ("ServiceUnavailable", 503, "retry"),
    ("TooManyRequestsException", 429, "retry"),
    ("", 500, "retry"),  # a bare 5xx (HEAD responses carry no code)
    ("", 502, "retry"),
    ("", 429, "retry"),
    ("", 408, "retry"),
    ("SomethingNew", 503, "retry"),  # unknown code, server side
    ("SomethingNew", 0, "retry"),  # no status at all: nothing says it is permanent
    # expired credentials: refresh, then retry
    ("ExpiredToken", 400, "refresh"),
    ("ExpiredTokenException", 400, "refresh"),
    ("RequestExpired", 400, "refresh"),
    # an operator has to act
    ("AccessDenied", 403, "permanent"),
    ("NoSuchBucket", 404, "permanent"),
    ("InvalidAccessKeyId", 403, "permanent"),
    ("SignatureDoesNotMatch", 403, "permanent"),
    ("AccountProblem", 403, "permanent"),
    ("AllAccessDisabled", 403, "permanent"),
    ("InvalidClientTokenId", 403, "permanent"),
    ("KMS.NotFoundException", 400, "permanent"),
    ("PermanentRedirect", 301, "permanent"),
    ("AuthorizationHeaderMalformed", 400, "permanent"),
    ("", 403, "permanent"),
    ("", 404, "permanent"),
    ("", 301, "permanent"),
    ("SomethingNew", 400, "permanent"),
]


@pytest.mark.parametrize(
    ("code", "status", "want"), CODE_CASES, ids=[f"{c or 'no-code'}-{s}" for c, s, _ in CODE_CASES]
)
def test_classify_client_errors(code: str, status: int, want: str) -> None:
    assert classify(client_error(code, status)) == want


EXCEPTION_CASES = [
    (ConnectTimeoutError(endpoint_url="https://s3"), "retry"),
    (ReadTimeoutError(endpoint_url="https://s3"), "retry"),
    (EndpointConnectionError(endpoint_url="https://s3"), "retry"),
    (ConnectionClosedError(endpoint_url="https://s3"), "retry"),
    (SSLError(endpoint_url="https://s3", error="handshake"), "retry"),
    (CredentialRetrievalError(provider="imds", error_msg="timeout"), "retry"),
    (TimeoutError(), "retry"),
    (ConnectionResetError(), "retry"),
    (NoCredentialsError(), "permanent"),
    (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "permanent"),
    (NoRegionError(), "permanent"),
    (ParamValidationError(report="bad"), "permanent"),
    (RetriableDelivery("x"), "retry"),
    (PermanentDelivery("x"), "permanent"),
    (ValueError("a bug"), "permanent"),
]


@pytest.mark.parametrize(("exc", "want"), EXCEPTION_CASES, ids=[type(e).__name__ for e, _ in EXCEPTION_CASES])
def test_classify_exceptions(exc: BaseException, want: str) -> None:
    assert classify(exc) == want


def test_code_sets_do_not_overlap() -> None:
    assert not (RETRY_CODES & REFRESH_CODES or RETRY_CODES & PERMANENT_CODES or REFRESH_CODES & PERMANENT_CODES)


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 8, 9, 20, 10_000])
def test_backoff_stays_within_full_jitter_bounds(attempt: int) -> None:
    # GIVEN base 1 s and cap 300 s, WHEN drawing many delays, THEN each is in [0, min(cap, base * 2^attempt)]
    rng = random.Random(attempt)
    ceiling = min(300.0, 2.0 ** min(attempt, 32))
    delays = [backoff_delay(attempt, base_secs=1.0, cap_secs=300.0, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.8 * ceiling  # full jitter spreads over the whole range
    assert min(delays) < 0.2 * ceiling


def test_backoff_grows_until_the_cap() -> None:
    rng = random.Random(1)
    means = [sum(backoff_delay(a, base_secs=0.5, cap_secs=10.0, rng=rng) for _ in range(400)) / 400 for a in range(8)]
    assert means[0] < means[2] < means[4]
    assert all(m <= 10.0 for m in means)
