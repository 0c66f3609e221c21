"""What is worth retrying: ``classify`` sorts every delivery failure into retry, refresh or
permanent; ``backoff_delay`` (exponential, full jitter, capped) lives apart from that decision.
"""

from __future__ import annotations

__all__ = ["PERMANENT_CODES", "REFRESH_CODES", "RETRY_CODES", "Decision", "backoff_delay", "classify", "error_code"]

import random
from typing import Literal

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from securitylake_sink.errors import DeliveryError, RetriableDelivery

Decision = Literal["retry", "refresh", "permanent"]

# Error codes from the S3 and STS API references ("Error responses") and botocore's standard
# retry mode (botocore/retries/standard.py): transient or throttling, worth another try.
RETRY_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "IDPCommunicationError",
        "OperationAborted",
    }
)
# The signature's credentials have expired: get new ones, then try again.
REFRESH_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"})
# An operator has to change something (IAM, bucket, keys, config) before a retry can succeed.
PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "InvalidArgument",
        "InvalidRequest",
        "KMS.DisabledException",
        "KMS.NotFoundException",
        "KMS.KMSInvalidStateException",
        "KMSAccessDenied",
        "MalformedPolicyDocument",
        "NotSignedUp",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
        "RegionDisabledException",
        "RequestTimeTooSkewed",
        "EntityTooLarge",
        "EntityTooSmall",
        "InvalidPart",
        "InvalidPartOrder",
        "NoSuchUpload",
        "ValidationError",
    }
)
CODE_DECISIONS: dict[str, Decision] = {
    **dict.fromkeys(PERMANENT_CODES, "permanent"),
    **dict.fromkeys(RETRY_CODES, "retry"),
    **dict.fromkeys(REFRESH_CODES, "refresh"),
}
# HTTP statuses without a code we know: 408 and 429 are "come back later", 5xx server trouble.
RETRY_STATUSES = frozenset({408, 429})
# Exceptions raised before or instead of a service answer, most specific first.
EXCEPTION_DECISIONS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Decision], ...] = (
    ((NoCredentialsError, PartialCredentialsError, NoRegionError), "permanent"),
    # timeouts, refused or reset connections, DNS, proxies, TLS; instance-metadata hiccups
    ((BotoConnectionError, HTTPClientError, CredentialRetrievalError), "retry"),
    (BotoCoreError, "permanent"),  # parameter validation, unknown region or service: bug or bad config
    (OSError, "retry"),  # socket errors below botocore (TimeoutError is an OSError)
)


def error_code(exc: ClientError) -> str:
    """The service's error code ('' when the response had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def classify(exc: BaseException) -> Decision:
    """The one place that decides what a failed S3 or STS call deserves."""
    if isinstance(exc, DeliveryError):
        return "retry" if isinstance(exc, RetriableDelivery) else "permanent"
    if isinstance(exc, ClientError):
        decision = CODE_DECISIONS.get(error_code(exc))
        if decision is not None:
            return decision
        status = _status(exc)
        return "permanent" if 300 <= status < 500 and status not in RETRY_STATUSES else "retry"
    for types, decision in EXCEPTION_DECISIONS:
        if isinstance(exc, types):
            return decision
    return "permanent"  # anything else is a bug; the delivery loop still keeps the batch


def backoff_delay(
    attempt: int, *, base_secs: float = 1.0, cap_secs: float = 300.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): uniform in [0, min(cap, base·2^attempt)].

    "Full jitter" from the AWS Architecture Blog's "Exponential Backoff and Jitter".
    """
    ceiling = min(cap_secs, base_secs * 2 ** min(max(attempt, 0), 32))
    return (rng or random).uniform(0.0, ceiling)
