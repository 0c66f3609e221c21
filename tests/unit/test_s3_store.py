"""Tests for securitylake_sink.lake.s3 with botocore's Stubber (the exact S3 calls, multipart,
errors sorted into RetriableDelivery / PermanentDelivery, refresh, region correction, lookup) and
a loopback S3 that insists on its region (the redirect botocore follows by itself)."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber

from securitylake_sink.config import parse_config
from securitylake_sink.errors import PermanentDelivery, RetriableDelivery, SinkError
from securitylake_sink.lake.s3 import (
    MAX_PARTS,
    MIN_PART_BYTES,
    S3Store,
    bucket_region_of,
    lookup_region,
    part_size_for,
)
from securitylake_sink.lake.store import store_for
from securitylake_sink.lake.url import parse_destination

BUCKET = "aws-security-data-lake-us-east-1-abc123"
KEY = "ext/auth/region=us-east-1/accountId=123456789012/eventDay=20260101/0190f0a4-aaaa-7bbb-8ccc-0123456789ab.parquet"
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MiB = 1024 * 1024


SESSION = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 (dummy)


def s3_client(region: str = "us-east-1") -> Any:
    return SESSION.client("s3", region_name=region)


class Clients:
    """A client factory handing out stubbed clients in order, recording the regions asked for."""

    def __init__(self, count: int = 1) -> None:
        self.clients = [s3_client() for _ in range(count)]
        self.stubbers = [Stubber(c) for c in self.clients]
        self.regions: list[str] = []

    def __call__(self, region: str) -> Any:
        self.regions.append(region)
        return self.clients[len(self.regions) - 1]

    def __enter__(self) -> Clients:
        for stubber in self.stubbers:
            stubber.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        for stubber in self.stubbers:
            stubber.deactivate()

    def done(self) -> None:
        for stubber in self.stubbers:
            stubber.assert_no_pending_responses()


@pytest.fixture
def clients() -> Iterator[Clients]:
    with Clients() as made:
        yield made


def store(make: Clients, **kwargs: Any) -> S3Store:
    return S3Store(parse_destination(f"s3://{BUCKET}/"), make, **kwargs)


def test_put_is_one_put_object_with_a_checksum(clients: Clients) -> None:
    # GIVEN a store without SSE settings, WHEN it puts an object, THEN one PutObject with CRC32 and no SSE header
    clients.stubbers[0].add_response(
        "put_object", {"ETag": '"e"'}, {"Bucket": BUCKET, "Key": KEY, "Body": b"PAR1data", "ChecksumAlgorithm": "CRC32"}
    )
    store(clients).put(KEY, b"PAR1data")
    clients.done()
    assert clients.regions == ["us-east-1"]


def test_put_with_sse_kms_and_sha256(clients: Clients) -> None:
    expected = {
        "Bucket": BUCKET,
        "Key": KEY,
        "Body": b"x",
        "ChecksumAlgorithm": "SHA256",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": KMS,
    }
    clients.stubbers[0].add_response("put_object", {}, expected)
    store(clients, sse_kms_key_id=KMS, checksum_algorithm="SHA256").put(KEY, b"x")
    clients.done()


def test_multipart_above_the_threshold(clients: Clients) -> None:
    # GIVEN a 12 MiB object, an 8 MiB threshold and 5 MiB parts, THEN create, 3 parts, complete with their checksums
    data = bytes(range(256)) * (12 * MiB // 256)
    stub = clients.stubbers[0]
    base = {"Bucket": BUCKET, "Key": KEY}
    stub.add_response(
        "create_multipart_upload",
        {"UploadId": "u1"},
        {**base, "ChecksumAlgorithm": "CRC32", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS},
    )
    for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
        stub.add_response(
            "upload_part",
            {"ETag": f'"e{number}"', "ChecksumCRC32": f"c{number}"},
            {
                **base,
                "UploadId": "u1",
                "PartNumber": number,
                "Body": data[start : start + 5 * MiB],
                "ChecksumAlgorithm": "CRC32",
            },
        )
    parts = [{"PartNumber": n, "ETag": f'"e{n}"', "ChecksumCRC32": f"c{n}"} for n in (1, 2, 3)]
    stub.add_response("complete_multipart_upload", {}, {**base, "UploadId": "u1", "MultipartUpload": {"Parts": parts}})
    store(clients, sse_kms_key_id=KMS, multipart_threshold=8 * MiB, part_bytes=5 * MiB).put(KEY, data)
    clients.done()


def test_failed_multipart_is_aborted_and_retriable(clients: Clients) -> None:
    data = b"\0" * (11 * MiB)
    stub = clients.stubbers[0]
    base = {"Bucket": BUCKET, "Key": KEY}
    stub.add_response("create_multipart_upload", {"UploadId": "u2"}, {**base, "ChecksumAlgorithm": "CRC32"})
    stub.add_response("upload_part", {"ETag": '"e1"', "ChecksumCRC32": "c1"})
    stub.add_client_error("upload_part", "InternalError", "We encountered an internal error", 500)
    stub.add_response("abort_multipart_upload", {}, {**base, "UploadId": "u2"})
    with pytest.raises(RetriableDelivery, match="InternalError"):
        store(clients, multipart_threshold=8 * MiB, part_bytes=5 * MiB).put(KEY, data)
    clients.done()


def test_abort_denied_is_logged_and_the_first_error_wins(clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    stub = clients.stubbers[0]
    stub.add_response("create_multipart_upload", {"UploadId": "u3"})
    stub.add_client_error("upload_part", "AccessDenied", "Access Denied", 403)
    stub.add_client_error("abort_multipart_upload", "AccessDenied", "Access Denied", 403)
    with pytest.raises(PermanentDelivery, match="s3:PutObject"):
        store(clients, multipart_threshold=8 * MiB, part_bytes=5 * MiB).put(KEY, b"\0" * (9 * MiB))
    assert any("could not abort" in r.getMessage() for r in caplog.records)
    clients.done()


ERROR_CASES = [
    ("NoSuchBucket", 404, PermanentDelivery, "does not exist"),
    ("AccessDenied", 403, PermanentDelivery, "s3:PutObject on " + BUCKET + r"/ext/auth/\*"),
    ("InvalidAccessKeyId", 403, PermanentDelivery, "auth.access_key_id"),
    ("SignatureDoesNotMatch", 403, PermanentDelivery, "secret access key"),
    ("AccountProblem", 403, PermanentDelivery, "account"),
    ("SlowDown", 503, RetriableDelivery, "SlowDown"),
    ("RequestTimeout", 400, RetriableDelivery, "RequestTimeout"),
    ("", 500, RetriableDelivery, "500"),
]


@pytest.mark.parametrize(
    ("code", "status", "kind", "text"), ERROR_CASES, ids=[f"{c}-{s}" for c, s, _, _ in ERROR_CASES]
)
def test_errors_become_delivery_errors(
    clients: Clients, code: str, status: int, kind: type[Exception], text: str
) -> None:
    clients.stubbers[0].add_client_error("put_object", code, "said by S3", status)
    with pytest.raises(kind, match=text) as caught:
        store(clients).put(KEY, b"x")
    assert "testing" not in str(caught.value)  # no credentials in the message


def test_expired_token_gets_new_credentials_once() -> None:
    # GIVEN the first client's credentials have expired, THEN the store makes a new client and puts again
    with Clients(2) as made:
        made.stubbers[0].add_client_error("put_object", "ExpiredToken", "The provided token has expired.", 400)
        made.stubbers[1].add_response("put_object", {})
        store(made).put(KEY, b"x")
        made.done()
    assert made.regions == ["us-east-1", "us-east-1"]


def test_expired_token_twice_is_permanent() -> None:
    with Clients(2) as made:
        made.stubbers[0].add_client_error("put_object", "ExpiredToken", "expired", 400)
        made.stubbers[1].add_client_error("put_object", "ExpiredToken", "expired", 400)
        with pytest.raises(PermanentDelivery, match="session_token"):
            store(made).put(KEY, b"x")


@pytest.mark.parametrize(
    ("code", "status", "meta", "error_meta"),
    [
        ("PermanentRedirect", 301, {"HTTPHeaders": {"x-amz-bucket-region": "eu-west-1"}}, None),
        ("AuthorizationHeaderMalformed", 400, None, {"Region": "eu-west-1"}),
        ("", 301, {"HTTPHeaders": {"x-amz-bucket-region": "eu-west-1"}}, None),
    ],
    ids=["permanent-redirect", "authorization-header-malformed", "bare-301"],
)
def test_wrong_region_is_corrected_once_and_logged(
    caplog: pytest.LogCaptureFixture,
    code: str,
    status: int,
    meta: dict[str, Any] | None,
    error_meta: dict[str, str] | None,
) -> None:
    with Clients(2) as made:
        made.stubbers[0].add_client_error(
            "put_object", code, "wrong region", status, response_meta=meta, service_error_meta=error_meta
        )
        made.stubbers[1].add_response("put_object", {})
        s3store = store(made)
        with caplog.at_level(logging.WARNING):
            s3store.put(KEY, b"x")
        made.done()
    assert made.regions == ["us-east-1", "eu-west-1"]
    assert s3store.region == "eu-west-1"
    record = next(r for r in caplog.records if "another region" in r.getMessage())
    assert record.__dict__["bucket_region"] == "eu-west-1"


def test_a_second_redirect_is_not_followed() -> None:
    meta = {"HTTPHeaders": {"x-amz-bucket-region": "eu-west-1"}}
    meta2 = {"HTTPHeaders": {"x-amz-bucket-region": "ap-south-1"}}
    with Clients(2) as made:
        made.stubbers[0].add_client_error("put_object", "PermanentRedirect", "r", 301, response_meta=meta)
        made.stubbers[1].add_client_error("put_object", "PermanentRedirect", "r", 301, response_meta=meta2)
        with pytest.raises(PermanentDelivery, match="PermanentRedirect"):
            store(made).put(KEY, b"x")


def test_connection_errors_are_retriable() -> None:
    # GIVEN an endpoint where nothing listens (and no botocore retries, to keep the test quick)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = BotoConfig(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2)

    def unreachable(region: str) -> Any:
        return SESSION.client("s3", region_name=region, endpoint_url=f"http://127.0.0.1:{port}", config=config)

    with pytest.raises(RetriableDelivery, match="Could not connect to the endpoint URL"):
        S3Store(parse_destination(f"s3://{BUCKET}/"), unreachable).put(KEY, b"x")


def test_part_size_keeps_within_s3_limits() -> None:
    assert part_size_for(300 * MiB) == 64 * MiB
    assert part_size_for(300 * MiB, 1) == MIN_PART_BYTES
    size = 5 * 1024**4
    assert -(-size // part_size_for(size)) <= MAX_PARTS


def test_bucket_region_of_ignores_other_errors() -> None:
    assert bucket_region_of(ValueError()) is None


def test_describe_and_store_for() -> None:
    config = parse_config(
        f"destination: {{url: 's3://{BUCKET}/lake/', sse_kms_key_id: 'alias/lake',"
        " sources: [{class_uid: 3002, location: ext/auth/}]}"
    )
    built = store_for(parse_destination(f"s3://{BUCKET}/lake/"), config)
    assert isinstance(built, S3Store)
    assert built.describe() == f"s3://{BUCKET}/lake/ (us-east-1)"
    assert built.sse_kms_key_id == "alias/lake"


class FakeSession:
    """Hands out one stubbed client, as boto3.Session.client would."""

    def __init__(self, client: Any) -> None:
        self.made = client

    def client(self, *_: Any, **__: Any) -> Any:
        return self.made


@pytest.mark.parametrize("status", [200, 403, 301])
def test_lookup_region_reads_the_header_on_any_answer(clients: Clients, status: int) -> None:
    meta = {"HTTPHeaders": {"x-amz-bucket-region": "ap-southeast-2"}}
    if status == 200:
        clients.stubbers[0].add_response("head_bucket", {"ResponseMetadata": meta}, {"Bucket": "plain-bucket"})
    else:
        clients.stubbers[0].add_client_error("head_bucket", str(status), "", status, response_meta=meta)
    region = lookup_region(FakeSession(clients.clients[0]), parse_destination("s3://plain-bucket/"))  # type: ignore[arg-type]
    assert region == "ap-southeast-2"


def test_lookup_region_of_a_missing_bucket(clients: Clients) -> None:
    clients.stubbers[0].add_client_error("head_bucket", "404", "Not Found", 404)
    with pytest.raises(SinkError, match="bucket plain-bucket does not exist"):
        lookup_region(FakeSession(clients.clients[0]), parse_destination("s3://plain-bucket/"))  # type: ignore[arg-type]


class RegionalS3:
    """A loopback S3 in ``eu-west-1`` that answers requests signed for another region the way S3
    does (``301 PermanentRedirect`` + ``x-amz-bucket-region``, or ``400 AuthorizationHeaderMalformed``)."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.signed_for: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, region: str) -> tuple[int, dict[str, str], bytes]:
        self.signed_for.append(region)
        if region == "eu-west-1":
            return 200, {"ETag": '"e"'}, b""
        if self.answer == "redirect":
            body = b"<Error><Code>PermanentRedirect</Code><Message>Use the right endpoint.</Message></Error>"
            return 301, {"x-amz-bucket-region": "eu-west-1"}, body
        body = (
            b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; "
            b"the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>"
        )
        return 400, {}, body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        s3 = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" at once

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                scope = re.search(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/s3/", self.headers.get("Authorization", ""))
                status, headers, body = s3.reply(scope.group(1) if scope else "")
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.mark.parametrize("answer", ["redirect", "malformed"])
def test_a_region_that_botocore_redirects_is_kept_and_logged(answer: str, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a bucket in eu-west-1 and a store configured for us-east-1
    s3 = RegionalS3(answer)
    made: list[str] = []

    def make(region: str) -> Any:
        made.append(region)
        return SESSION.client("s3", region_name=region, endpoint_url=s3.url)

    try:
        s3store = S3Store(parse_destination(f"s3://{BUCKET}/", region="us-east-1", endpoint=s3.url), make)
        # WHEN two objects are put
        with caplog.at_level(logging.WARNING):
            s3store.put(KEY, b"x")
            s3store.put(KEY, b"y")
    finally:
        s3.close()
    # THEN the first is redirected once, the client is rebuilt for eu-west-1, the second goes straight there
    assert s3.signed_for == ["us-east-1", "eu-west-1", "eu-west-1"]
    assert made == ["us-east-1", "eu-west-1"]
    assert [r.__dict__.get("bucket_region") for r in caplog.records if "another region" in r.getMessage()] == [
        "eu-west-1"
    ]
