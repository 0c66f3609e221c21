"""The S3 object store: one checksummed PutObject per object (multipart only above a threshold),
optional SSE-KMS, the bucket's region looked up or corrected from S3's answer, and every failure
sorted into RetriableDelivery or PermanentDelivery for the delivery loop, which keeps the spool.
"""

from __future__ import annotations

__all__ = [
    "CHECKSUM_ALGORITHM",
    "DEFAULT_PART_BYTES",
    "MAX_OBJECT_BYTES",
    "MAX_PARTS",
    "MAX_SINGLE_PUT_BYTES",
    "MIN_PART_BYTES",
    "MULTIPART_THRESHOLD_BYTES",
    "ClientFactory",
    "S3Store",
    "bucket_region_of",
    "client_factory",
    "lookup_region",
    "part_size_for",
    "s3_client_config",
]

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from securitylake_sink.config import AuthConfig, Config
from securitylake_sink.errors import DeliveryError, PermanentDelivery, RetriableDelivery, SinkError
from securitylake_sink.lake.credentials import PARTITION_HOME_REGION, session_for
from securitylake_sink.lake.retry import backoff_delay, classify, error_code
from securitylake_sink.lake.url import Destination

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("securitylake_sink.lake.s3")

# Amazon S3 limits (user guide, "Amazon S3 multipart upload limits"): 5 GiB per PutObject,
# 5 TiB per object, parts of 5 MiB (all but the last) to 5 GiB, at most 10,000 parts.
MAX_SINGLE_PUT_BYTES = 5 * 1024**3
MAX_OBJECT_BYTES = 5 * 1024**4
MIN_PART_BYTES = 5 * 1024**2
MAX_PARTS = 10_000
# Ours: Security Lake prefers one PutObject per object; multipart only for objects above this.
MULTIPART_THRESHOLD_BYTES = 256 * 1024**2
DEFAULT_PART_BYTES = 64 * 1024**2
ChecksumAlgorithm = Literal["CRC32", "SHA256"]
CHECKSUM_ALGORITHM: ChecksumAlgorithm = "CRC32"  # S3 verifies it and stores it with the object
# A small in-put budget: botocore's standard mode, 3 attempts in all. The delivery loop in app.py
# is what persists (with backoff, the batch staying in the spool).
PUT_MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_SECS, READ_TIMEOUT_SECS = 10, 120
LOOKUP_ATTEMPTS, LOOKUP_BACKOFF_CAP_SECS = 3, 5.0  # start-up HeadBucket: fail fast, clearly
# A wrong region shows up as these (S3 error responses; botocore's S3RegionRedirector).
WRONG_REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
REGION_HEADER = "x-amz-bucket-region"

ClientFactory = Callable[[str], "S3Client"]


def s3_client_config(destination: Destination) -> BotoConfig:
    return BotoConfig(
        connect_timeout=CONNECT_TIMEOUT_SECS,
        read_timeout=READ_TIMEOUT_SECS,
        retries={"mode": "standard", "max_attempts": PUT_MAX_ATTEMPTS},
        s3={"addressing_style": "path" if destination.path_style else "auto"},
        tcp_keepalive=True,
    )


def client_factory(auth: AuthConfig, destination: Destination) -> ClientFactory:
    """region → a new S3 client with new credentials (called again to refresh or re-home)."""

    def make(region: str) -> S3Client:
        session = session_for(auth, destination)
        return session.client(
            "s3", region_name=region, endpoint_url=destination.endpoint_url, config=s3_client_config(destination)
        )

    return make


def part_size_for(size: int, preferred: int = DEFAULT_PART_BYTES) -> int:
    """A part size at least ``preferred`` (and 5 MiB) that needs no more than 10,000 parts."""
    return max(preferred, MIN_PART_BYTES, math.ceil(size / MAX_PARTS))


def bucket_region_of(exc: BaseException) -> str | None:
    """The bucket's real region when S3 answered "wrong region" (301, PermanentRedirect, …)."""
    return _wrong_region(exc.response) if isinstance(exc, ClientError) else None


def _wrong_region(parsed: Mapping[str, Any]) -> str | None:
    meta = parsed.get("ResponseMetadata", {})
    code = parsed.get("Error", {}).get("Code")
    if code not in WRONG_REGION_CODES and meta.get("HTTPStatusCode") != 301:
        return None
    region = meta.get("HTTPHeaders", {}).get(REGION_HEADER) or parsed.get("Error", {}).get("Region")
    return str(region) if region else None


def _hint(code: str, bucket: str, key: str, kms: bool) -> str:
    hints = {
        "AccessDenied": f"the writer needs s3:PutObject on {bucket}/{key.partition('region=')[0]}*"
        + (" and kms:GenerateDataKey on destination.sse_kms_key_id" if kms else ""),
        "NoSuchBucket": f"bucket {bucket} does not exist; check destination.url (Security Lake creates it "
        "when the lake is enabled in the region)",
        "InvalidAccessKeyId": "the access key is not known to AWS; check auth.access_key_id or the credential chain",
        "SignatureDoesNotMatch": "the secret access key does not match the access key id",
        "AccountProblem": "the AWS account has a problem (billing or suspension); see the AWS console",
        "ExpiredToken": "credentials are still expired after getting new ones; renew auth.session_token "
        "(static temporary keys cannot be refreshed) or check the host clock",
        "RequestTimeTooSkewed": "the host clock is off by more than 15 minutes; fix NTP",
        "NoCredentialsError": "no AWS credentials found; set auth.role_arn or auth.access_key_id, or "
        "configure the default chain (environment, profile, instance or container role)",
    }
    return hints.get(code, "")


class S3Store:
    """Puts whole objects into one bucket; thread-compatible (the deliver thread owns it)."""

    def __init__(
        self,
        destination: Destination,
        make_client: ClientFactory,
        *,
        sse_kms_key_id: str | None = None,
        checksum_algorithm: ChecksumAlgorithm = CHECKSUM_ALGORITHM,
        multipart_threshold: int = MULTIPART_THRESHOLD_BYTES,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        if destination.bucket is None or destination.region is None:
            raise SinkError("an S3 store needs the destination's bucket and region")
        if not MIN_PART_BYTES <= part_bytes <= MAX_SINGLE_PUT_BYTES:
            raise SinkError(f"part_bytes must be between {MIN_PART_BYTES} and {MAX_SINGLE_PUT_BYTES}")
        self.destination = destination
        self.bucket: str = destination.bucket
        self.region: str = destination.region
        self.make_client = make_client
        self.sse_kms_key_id = sse_kms_key_id
        self.checksum_algorithm = checksum_algorithm
        self.multipart_threshold = min(multipart_threshold, MAX_SINGLE_PUT_BYTES)
        self.part_bytes = part_bytes
        self._client: S3Client | None = None
        self._bucket_region: str | None = None  # what S3 said when asked in the wrong region

    @classmethod
    def for_config(cls, destination: Destination, config: Config, *, lake: bool = True) -> S3Store:
        """The store the sink runs with; its client is made now (no network I/O yet), so that
        credential warnings and client errors come at start-up. ``lake=False`` (dead letters): the
        bucket's own encryption, not ``destination.sse_kms_key_id``."""
        kms = config.destination.sse_kms_key_id if lake else None
        store = cls(destination, client_factory(config.auth, destination), sse_kms_key_id=kms)
        _ = store.client
        return store

    @property
    def client(self) -> S3Client:
        if self._client is None:
            self._client = self.make_client(self.region)
            # botocore follows a wrong-region answer by itself (S3RegionRedirectorv2) without a word;
            # watch the same answers so the region is corrected for good and logged.
            self._client.meta.events.register("needs-retry.s3", self._notice_wrong_region)
        return self._client

    def _notice_wrong_region(self, response: tuple[Any, Mapping[str, Any]] | None = None, **_: Any) -> None:
        if response is not None:
            self._bucket_region = _wrong_region(response[1]) or self._bucket_region

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.destination.prefix} ({self.region})"

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` or raise RetriableDelivery / PermanentDelivery."""
        if len(data) > MAX_OBJECT_BYTES:
            raise PermanentDelivery(f"object {key} has {len(data)} bytes, above S3's 5 TiB limit")
        refreshed = rehomed = False
        while True:
            try:
                if len(data) > self.multipart_threshold:
                    self._put_multipart(key, data)
                else:
                    self._put_single(key, data)
            except DeliveryError:
                raise
            except Exception as exc:  # botocore, urllib3 and socket errors all end here
                region = bucket_region_of(exc) or self._bucket_region
                if region and not rehomed and region != self.region:
                    self._rehome(region)
                    rehomed = True
                    continue
                decision = classify(exc)
                if decision == "refresh" and not refreshed:
                    log.info("the credentials expired; getting new ones", extra={"key": key})
                    self._client = None  # a new client from a new session: new credentials
                    refreshed = True
                    continue
                raise self._delivery_error(exc, key, decision) from exc
            if self._bucket_region and self._bucket_region != self.region:
                self._rehome(self._bucket_region)  # botocore found the way; keep it from now on
            return

    def _rehome(self, region: str) -> None:
        log.warning(
            "the bucket is in another region; using that region from now on",
            extra={
                "bucket": self.bucket,
                "configured_region": self.region,
                "bucket_region": region,
                "fix": f"set destination.region (or the URL's region) to {region}",
            },
        )
        self.region = region
        self._client = None
        self._bucket_region = None

    def _delivery_error(self, exc: Exception, key: str, decision: str) -> DeliveryError:
        if isinstance(exc, ClientError):
            code = error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            said = exc.response.get("Error", {}).get("Message") or "no message"
            what = f"{code}, HTTP {status}: {said}" if code else f"HTTP {status}: {said}"
        else:
            code, what = type(exc).__name__, str(exc)
        hint = _hint(code, self.bucket, key, self.sse_kms_key_id is not None)
        text = f"storing s3://{self.bucket}/{key} failed ({what})" + (f"; {hint}" if hint else "")
        return PermanentDelivery(text) if decision != "retry" else RetriableDelivery(text)

    def _extra(self) -> dict[str, Any]:
        if self.sse_kms_key_id is None:
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key_id}

    def _put_single(self, key: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm=self.checksum_algorithm, **self._extra()
        )

    def _put_multipart(self, key: str, data: bytes) -> None:
        client = self.client
        part = part_size_for(len(data), self.part_bytes)
        upload_id = client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm=self.checksum_algorithm, **self._extra()
        )["UploadId"]
        field = f"Checksum{self.checksum_algorithm}"
        try:
            parts: list[Any] = []
            for number, start in enumerate(range(0, len(data), part), start=1):
                answer = client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[start : start + part],
                    ChecksumAlgorithm=self.checksum_algorithm,
                )
                done: dict[str, Any] = {"PartNumber": number, "ETag": answer["ETag"]}
                if answer.get(field):  # S3 wants each part's checksum back when the upload has one
                    done[field] = answer.get(field)
                parts.append(done)
            client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort(client, key, upload_id)
            raise

    def _abort(self, client: S3Client, key: str, upload_id: str) -> None:
        try:
            client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # s3:AbortMultipartUpload is a separate permission, often missing
            log.warning(
                "could not abort a failed multipart upload; a lifecycle rule for incomplete uploads removes it",
                extra={"key": key, "reason": error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__},
            )


def _region_headers(client: S3Client, bucket: str) -> dict[str, str]:
    """HeadBucket's response headers; an error answer counts when it carries the region header."""
    try:
        return dict(client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"])
    except ClientError as exc:
        headers = dict(exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
        if headers.get(REGION_HEADER):
            return headers
        raise


def lookup_region(session: boto3.Session, destination: Destination) -> str:
    """The bucket's region from HeadBucket's ``x-amz-bucket-region`` (sent even on 403 and 301)."""
    bucket = destination.bucket
    if bucket is None:
        raise SinkError("a file:// lake has no bucket region to look up")
    client = session.client(
        "s3",
        region_name=destination.region or PARTITION_HOME_REGION[destination.partition],
        endpoint_url=destination.endpoint_url,
        config=s3_client_config(destination),
    )
    for attempt in range(1, LOOKUP_ATTEMPTS + 1):
        try:
            headers = _region_headers(client, bucket)
        except DeliveryError:
            raise  # the role could not be assumed: that message is the one to show
        except Exception as exc:
            if classify(exc) == "retry" and attempt < LOOKUP_ATTEMPTS:
                time.sleep(backoff_delay(attempt, cap_secs=LOOKUP_BACKOFF_CAP_SECS))
                continue
            meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc, ClientError) else {}
            missing = meta.get("HTTPStatusCode") == 404
            why = f"bucket {bucket} does not exist" if missing else str(exc)
            raise SinkError(
                f"cannot look up the region of the bucket: {why}; check destination.url or set destination.region"
            ) from None
        region = headers.get(REGION_HEADER)
        if region:
            return region
        break
    raise SinkError(f"S3 did not say which region bucket {bucket} is in; set destination.region")
