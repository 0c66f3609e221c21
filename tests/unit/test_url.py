"""Tests for securitylake_sink.lake.url: every destination URL form, region inference, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securitylake_sink.errors import ConfigError
from securitylake_sink.lake.url import (
    Destination,
    Partition,
    RegionSource,
    parse_destination,
    region_from_bucket_name,
)

LAKE = "aws-security-data-lake-us-east-2-a1b2c3"
VPCE = "vpce-1a2b3c4d-5e6f"
AP_ARN = "arn:aws:s3:us-west-2:123456789012:accesspoint/logs"


def s3(
    bucket: str,
    prefix: str,
    region: str | None,
    source: RegionSource,
    partition: Partition = "aws",
    *,
    path_style: bool = False,
    endpoint_url: str | None = None,
    arn: str | None = None,
) -> Destination:
    return Destination("s3", bucket, prefix, region, source, partition, path_style,
                       endpoint_url, None, arn)


def lake_dir(
    path: str, region: str, source: RegionSource, partition: Partition = "aws"
) -> Destination:
    return Destination("file", None, "", region, source, partition, False, None, Path(path))


def ok(case_id: str, url: str, want: Destination, **kwargs: Any) -> Any:
    return pytest.param(url, kwargs, want, id=case_id)


OK_CASES = [
    # virtual-hosted and path-style regional
    ok("virtual-regional", "https://bucket.s3.us-west-2.amazonaws.com",
       s3("bucket", "", "us-west-2", "url")),
    ok("virtual-regional-prefix", "https://bucket.s3.us-west-2.amazonaws.com/ext/src/",
       s3("bucket", "ext/src/", "us-west-2", "url")),
    ok("virtual-regional-prefix-no-slash", "https://bucket.s3.us-west-2.amazonaws.com/ext/src",
       s3("bucket", "ext/src/", "us-west-2", "url")),
    ok("virtual-upper-case-host", "HTTPS://Bucket.S3.US-WEST-2.AmazonAWS.com/Ext/Src/",
       s3("bucket", "Ext/Src/", "us-west-2", "url")),
    ok("path-regional", "https://s3.eu-central-1.amazonaws.com/bucket/ext/src/",
       s3("bucket", "ext/src/", "eu-central-1", "url", path_style=True)),
    ok("path-regional-trailing-slash", "https://s3.eu-central-1.amazonaws.com/bucket/",
       s3("bucket", "", "eu-central-1", "url", path_style=True)),
    ok("path-regional-double-slashes", "https://s3.eu-central-1.amazonaws.com/bucket//a//b//",
       s3("bucket", "a/b/", "eu-central-1", "url", path_style=True)),
    ok("path-upper-case-host", "https://S3.AP-SOUTHEAST-2.AMAZONAWS.COM/bucket",
       s3("bucket", "", "ap-southeast-2", "url", path_style=True)),
    ok("path-percent-encoded-prefix", "https://s3.us-west-2.amazonaws.com/bucket/my%20logs/",
       s3("bucket", "my logs/", "us-west-2", "url", path_style=True)),
    ok("http-scheme-regional", "http://bucket.s3.us-west-2.amazonaws.com/p",
       s3("bucket", "p/", "us-west-2", "url")),
    # dotted bucket names
    ok("dotted-virtual-https", "https://logs.example.com.s3.us-west-2.amazonaws.com/x/",
       s3("logs.example.com", "x/", "us-west-2", "url", path_style=True)),
    ok("dotted-s3-uri", "s3://logs.example.com/x/",
       s3("logs.example.com", "x/", None, "lookup", path_style=True)),
    # legacy forms
    ok("dash-regional-virtual", "https://bucket.s3-us-west-2.amazonaws.com/ext/",
       s3("bucket", "ext/", "us-west-2", "url")),
    ok("dash-regional-path", "https://s3-ap-northeast-1.amazonaws.com/bucket/ext/",
       s3("bucket", "ext/", "ap-northeast-1", "url", path_style=True)),
    ok("legacy-global-virtual", "https://bucket.s3.amazonaws.com/ext/",
       s3("bucket", "ext/", None, "lookup")),
    ok("legacy-global-path", "https://s3.amazonaws.com/bucket",
       s3("bucket", "", None, "lookup", path_style=True)),
    ok("legacy-global-lake-bucket", f"https://{LAKE}.s3.amazonaws.com/ext/src/",
       s3(LAKE, "ext/src/", "us-east-2", "bucket_name")),
    ok("external-1-path", "https://s3-external-1.amazonaws.com/bucket/p/",
       s3("bucket", "p/", "us-east-1", "url", path_style=True)),
    ok("external-1-virtual", "https://bucket.s3-external-1.amazonaws.com",
       s3("bucket", "", "us-east-1", "url")),
    # dual-stack, FIPS, acceleration
    ok("dualstack-virtual", "https://bucket.s3.dualstack.eu-west-1.amazonaws.com/ext/",
       s3("bucket", "ext/", "eu-west-1", "url",
          endpoint_url="https://s3.dualstack.eu-west-1.amazonaws.com")),
    ok("dualstack-path", "https://s3.dualstack.eu-west-1.amazonaws.com/bucket/ext/",
       s3("bucket", "ext/", "eu-west-1", "url", path_style=True,
          endpoint_url="https://s3.dualstack.eu-west-1.amazonaws.com")),
    ok("fips-govcloud", "https://bucket.s3-fips.us-gov-west-1.amazonaws.com",
       s3("bucket", "", "us-gov-west-1", "url", "aws-us-gov",
          endpoint_url="https://s3-fips.us-gov-west-1.amazonaws.com")),
    ok("fips-commercial", "https://bucket.s3-fips.us-east-1.amazonaws.com/ext/",
       s3("bucket", "ext/", "us-east-1", "url",
          endpoint_url="https://s3-fips.us-east-1.amazonaws.com")),
    ok("fips-dualstack", "https://bucket.s3-fips.dualstack.us-gov-east-1.amazonaws.com/p",
       s3("bucket", "p/", "us-gov-east-1", "url", "aws-us-gov",
          endpoint_url="https://s3-fips.dualstack.us-gov-east-1.amazonaws.com")),
    ok("accelerate", "https://bucket.s3-accelerate.amazonaws.com/ext/",
       s3("bucket", "ext/", None, "lookup",
          endpoint_url="https://s3-accelerate.amazonaws.com")),
    ok("accelerate-dualstack", f"https://{LAKE}.s3-accelerate.dualstack.amazonaws.com",
       s3(LAKE, "", "us-east-2", "bucket_name",
          endpoint_url="https://s3-accelerate.dualstack.amazonaws.com")),
    # access points
    ok("access-point-host", "https://logs-123456789012.s3-accesspoint.us-west-2.amazonaws.com/ext/",
       s3(AP_ARN, "ext/", "us-west-2", "url", arn=AP_ARN)),
    ok("access-point-host-govcloud",
       "https://logs-123456789012.s3-accesspoint.us-gov-west-1.amazonaws.com",
       s3("arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/logs", "", "us-gov-west-1",
          "url", "aws-us-gov",
          arn="arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/logs")),
    ok("access-point-arn", AP_ARN, s3(AP_ARN, "", "us-west-2", "url", arn=AP_ARN)),
    ok("access-point-arn-prefix", AP_ARN + "/ext/src", s3(AP_ARN, "ext/src/", "us-west-2", "url",
                                                          arn=AP_ARN)),
    ok("access-point-arn-object-prefix", AP_ARN + "/object/ext/src/",
       s3(AP_ARN, "ext/src/", "us-west-2", "url", arn=AP_ARN)),
    ok("access-point-arn-china", "arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/logs",
       s3("arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/logs", "", "cn-north-1", "url",
          "aws-cn", arn="arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/logs")),
    ok("access-point-arn-govcloud", "arn:aws-us-gov:s3:us-gov-east-1:123456789012:accesspoint/logs",
       s3("arn:aws-us-gov:s3:us-gov-east-1:123456789012:accesspoint/logs", "", "us-gov-east-1",
          "url", "aws-us-gov",
          arn="arn:aws-us-gov:s3:us-gov-east-1:123456789012:accesspoint/logs")),
    # VPC interface endpoints
    ok("vpce-path", f"https://bucket.{VPCE}.s3.us-east-1.vpce.amazonaws.com/my-bucket/ext/",
       s3("my-bucket", "ext/", "us-east-1", "url", path_style=True,
          endpoint_url=f"https://bucket.{VPCE}.s3.us-east-1.vpce.amazonaws.com")),
    ok("vpce-virtual", f"https://my-bucket.bucket.{VPCE}.s3.us-east-1.vpce.amazonaws.com/ext/",
       s3("my-bucket", "ext/", "us-east-1", "url",
          endpoint_url=f"https://bucket.{VPCE}.s3.us-east-1.vpce.amazonaws.com")),
    ok("vpce-virtual-short", f"https://my-bucket.{VPCE}.s3.eu-west-1.vpce.amazonaws.com",
       s3("my-bucket", "", "eu-west-1", "url",
          endpoint_url=f"https://bucket.{VPCE}.s3.eu-west-1.vpce.amazonaws.com")),
    # China and GovCloud
    ok("china-virtual", "https://bucket.s3.cn-north-1.amazonaws.com.cn/ext/",
       s3("bucket", "ext/", "cn-north-1", "url", "aws-cn")),
    ok("china-path", "https://s3.cn-northwest-1.amazonaws.com.cn/bucket",
       s3("bucket", "", "cn-northwest-1", "url", "aws-cn", path_style=True)),
    ok("govcloud-virtual", "https://bucket.s3.us-gov-west-1.amazonaws.com",
       s3("bucket", "", "us-gov-west-1", "url", "aws-us-gov")),
    # s3:// URIs and the bucket name
    ok("s3-uri-lake-bucket", f"s3://{LAKE}/ext/src/", s3(LAKE, "ext/src/", "us-east-2",
                                                          "bucket_name")),
    ok("s3-uri-lake-bucket-versioned", f"s3://{LAKE}/ext/src/2.0/",
       s3(LAKE, "ext/src/2.0/", "us-east-2", "bucket_name")),
    ok("s3-uri-govcloud-lake-bucket", "s3://aws-security-data-lake-us-gov-west-1-xyz9/ext/a",
       s3("aws-security-data-lake-us-gov-west-1-xyz9", "ext/a/", "us-gov-west-1",
          "bucket_name", "aws-us-gov")),
    ok("s3-uri-plain-bucket", "s3://bucket", s3("bucket", "", None, "lookup")),
    ok("s3-uri-trailing-slash", "s3://bucket/", s3("bucket", "", None, "lookup")),
    ok("s3-uri-upper-scheme", "S3://bucket/ext/", s3("bucket", "ext/", None, "lookup")),
    ok("s3-uri-whitespace", "  s3://bucket/ext  ", s3("bucket", "ext/", None, "lookup")),
    ok("s3-uri-explicit-region", "s3://bucket/ext/", s3("bucket", "ext/", "ca-central-1",
                                                          "config"), region="ca-central-1"),
    ok("explicit-region-beats-bucket-name", f"s3://{LAKE}/", s3(LAKE, "", "us-east-1", "config"),
       region="us-east-1"),
    ok("explicit-region-agrees-with-url", "https://bucket.s3.us-west-2.amazonaws.com",
       s3("bucket", "", "us-west-2", "config"), region="us-west-2"),
    ok("explicit-region-china-s3-uri", "s3://bucket", s3("bucket", "", "cn-north-1", "config",
                                                         "aws-cn"), region="cn-north-1"),
    ok("empty-region-is-unset", "s3://bucket", s3("bucket", "", None, "lookup"), region=""),
    # custom endpoints
    ok("endpoint-option", "s3://bucket/ext/src/",
       s3("bucket", "ext/src/", "us-east-1", "config", path_style=True,
          endpoint_url="http://127.0.0.1:9000"),
       region="us-east-1", endpoint="http://127.0.0.1:9000"),
    ok("endpoint-option-lake-bucket", f"s3://{LAKE}/ext/",
       s3(LAKE, "ext/", "us-east-2", "bucket_name", path_style=True,
          endpoint_url="http://localhost:5000"), endpoint="HTTP://LocalHost:5000/"),
    ok("endpoint-option-vpce", "s3://bucket/ext/",
       s3("bucket", "ext/", "us-east-1", "url", path_style=True,
          endpoint_url=f"https://bucket.{VPCE}.s3.us-east-1.vpce.amazonaws.com"),
       endpoint=f"https://bucket.{VPCE}.s3.us-east-1.vpce.amazonaws.com"),
    ok("endpoint-url-minio", "http://127.0.0.1:9000/bucket/ext/src",
       s3("bucket", "ext/src/", "us-east-1", "config", path_style=True,
          endpoint_url="http://127.0.0.1:9000"), region="us-east-1"),
    ok("endpoint-url-ipv6", "http://[::1]:9000/bucket/",
       s3("bucket", "", "eu-west-1", "config", path_style=True, endpoint_url="http://[::1]:9000"),
       region="eu-west-1"),
    ok("endpoint-url-https-host", "https://MinIO.Example.Net/logs.bucket/p/",
       s3("logs.bucket", "p/", "us-east-1", "config", path_style=True,
          endpoint_url="https://minio.example.net"), region="us-east-1"),
    ok("endpoint-url-region-from-lake-bucket", f"http://localhost:4566/{LAKE}/ext/",
       s3(LAKE, "ext/", "us-east-2", "bucket_name", path_style=True,
          endpoint_url="http://localhost:4566")),
    # file lakes
    ok("file-default-region", "file:///var/lib/lake", lake_dir("/var/lib/lake", "us-east-1",
                                                               "default")),
    ok("file-trailing-slash", "file:///var/lib/lake/", lake_dir("/var/lib/lake", "us-east-1",
                                                                "default")),
    ok("file-lake-bucket-dir", f"file:///srv/{LAKE}/", lake_dir(f"/srv/{LAKE}", "us-east-2",
                                                                "bucket_name")),
    ok("file-explicit-region", f"file:///srv/{LAKE}", lake_dir(f"/srv/{LAKE}", "eu-west-3",
                                                               "config"), region="eu-west-3"),
    ok("file-govcloud-region", "file:///lake", lake_dir("/lake", "us-gov-west-1", "config",
                                                        "aws-us-gov"), region="us-gov-west-1"),
    ok("file-percent-encoded", "file:///tmp/my%20lake", lake_dir("/tmp/my lake", "us-east-1",
                                                                 "default")),
]


def bad(case_id: str, url: str, option: str, needle: str, **kwargs: Any) -> Any:
    return pytest.param(url, kwargs, option, needle, id=case_id)


ERROR_CASES = [
    bad("empty", "", "destination.url", "empty"),
    bad("blank", "   ", "destination.url", "empty"),
    bad("ftp-scheme", "ftp://example.com/bucket", "destination.url", "'ftp'"),
    bad("no-scheme", "bucket/prefix", "destination.url", "scheme"),
    bad("website-dash", "https://bucket.s3-website-us-west-2.amazonaws.com",
        "destination.url", "website endpoint cannot take writes; use s3://bucket/"),
    bad("website-dot", "http://bucket.s3-website.eu-central-1.amazonaws.com/",
        "destination.url", "website endpoint cannot take writes"),
    bad("custom-endpoint-no-region", "http://127.0.0.1:9000/bucket/p",
        "destination.region", "custom"),
    bad("endpoint-option-no-region", "s3://bucket/p", "destination.region", "custom",
        endpoint="http://127.0.0.1:9000"),
    bad("endpoint-ftp", "s3://bucket/p", "destination.endpoint", "http", endpoint="ftp://x"),
    bad("endpoint-not-url", "s3://bucket/p", "destination.endpoint", "http",
        endpoint="127.0.0.1:9000"),
    bad("endpoint-with-path", "s3://bucket/p", "destination.endpoint", "no path",
        endpoint="http://minio:9000/bucket", region="us-east-1"),
    bad("endpoint-with-https-url", "https://bucket.s3.us-west-2.amazonaws.com",
        "destination.endpoint", "s3://", endpoint="http://minio:9000"),
    bad("endpoint-with-file-url", "file:///lake", "destination.endpoint", "file",
        endpoint="http://minio:9000"),
    bad("endpoint-names-bucket", "s3://bucket/p", "destination.endpoint", "bucket",
        endpoint="https://other.s3.us-west-2.amazonaws.com"),
    bad("region-contradicts-url", "https://bucket.s3.us-west-2.amazonaws.com",
        "destination.region", "'us-east-1' but destination.url names region 'us-west-2'",
        region="us-east-1"),
    bad("region-contradicts-arn", AP_ARN, "destination.region", "destination.url",
        region="eu-west-1"),
    bad("region-contradicts-endpoint", "s3://bucket", "destination.region",
        "destination.endpoint", region="us-east-1",
        endpoint=f"https://bucket.{VPCE}.s3.eu-west-1.vpce.amazonaws.com"),
    bad("bad-region-name", "s3://bucket", "destination.region", "not an AWS region",
        region="useast1"),
    bad("upper-case-region", "s3://bucket", "destination.region", "lowercase",
        region="US-EAST-1"),
    bad("iso-region", "s3://bucket", "destination.region", "ISO", region="us-iso-east-1"),
    bad("china-region-on-com-host", "https://bucket.s3.cn-north-1.amazonaws.com",
        "destination.url", "partition"),
    bad("commercial-region-on-cn-host", "https://bucket.s3.amazonaws.com.cn",
        "destination.region", "partition", region="us-east-1"),
    bad("arn-partition-mismatch", "arn:aws:s3:cn-north-1:123456789012:accesspoint/logs",
        "destination.url", "partition"),
    bad("arn-multi-region", "arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap",
        "destination.url", "multi-region"),
    bad("arn-not-access-point", "arn:aws:s3:::bucket", "destination.url", "access point ARN"),
    bad("arn-bad-name", "arn:aws:s3:us-west-2:123456789012:accesspoint/L", "destination.url",
        "access point name"),
    bad("bucket-upper-case", "s3://MyBucket/p", "destination.url", "lowercase"),
    bad("bucket-too-short", "s3://ab", "destination.url", "not a valid S3 bucket name"),
    bad("bucket-too-long", "s3://" + "a" * 64, "destination.url", "3-63"),
    bad("bucket-underscore", "s3://my_bucket", "destination.url", "not a valid S3 bucket"),
    bad("bucket-double-dot", "s3://my..bucket", "destination.url", "not a valid S3 bucket"),
    bad("bucket-ip-address", "s3://192.168.1.10", "destination.url", "not a valid S3 bucket"),
    bad("bucket-path-upper", "https://s3.us-west-2.amazonaws.com/MyBucket", "destination.url",
        "lowercase"),
    bad("s3-uri-no-bucket", "s3:///ext/src", "destination.url", "no bucket"),
    bad("path-style-no-bucket", "https://s3.us-west-2.amazonaws.com/", "destination.url",
        "no bucket"),
    bad("custom-no-bucket", "http://127.0.0.1:9000", "destination.url", "no bucket",
        region="us-east-1"),
    bad("query-string", "s3://bucket/ext?versionId=1", "destination.url", "query"),
    bad("fragment", "https://bucket.s3.us-west-2.amazonaws.com/ext#x", "destination.url",
        "fragment"),
    bad("empty-query", "s3://bucket/ext?", "destination.url", "query"),
    bad("dot-dot-segment", "s3://bucket/ext/../x", "destination.url", ".."),
    bad("unknown-aws-host", "https://ec2.us-east-1.amazonaws.com/bucket", "destination.url",
        "not an S3 endpoint"),
    bad("bare-aws-domain", "https://amazonaws.com/bucket", "destination.url",
        "not an S3 endpoint"),
    bad("bogus-region-label", "https://bucket.s3.moon-base-1.amazonaws.com", "destination.url",
        "not an S3 endpoint"),
    bad("accelerate-dotted-bucket", "https://a.b.c.s3-accelerate.amazonaws.com",
        "destination.url", "Transfer Acceleration"),
    bad("bad-port", "http://127.0.0.1:port/bucket", "destination.url", "well-formed"),
    bad("file-relative", "file:relative/lake", "destination.url", "relative"),
    bad("file-host-part", "file://relative/lake", "destination.url", "host part"),
    bad("file-bad-region", "file:///lake", "destination.region", "not an AWS region",
        region="mars-1"),
]


@pytest.mark.parametrize(("url", "kwargs", "want"), OK_CASES)
def test_parse_destination(url: str, kwargs: dict[str, Any], want: Destination) -> None:
    got = parse_destination(url, **kwargs)
    assert (got.bucket, got.prefix, got.region, got.region_source, got.partition,
            got.path_style) == (want.bucket, want.prefix, want.region, want.region_source,
                                want.partition, want.path_style)
    assert got == want
    assert got.prefix == "" or (got.prefix.endswith("/") and not got.prefix.startswith("/"))
    assert (got.region is None) == (got.region_source == "lookup")


@pytest.mark.parametrize(("url", "kwargs", "option", "needle"), ERROR_CASES)
def test_parse_destination_rejects(
    url: str, kwargs: dict[str, Any], option: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_destination(url, **kwargs)
    assert [issue.option for issue in caught.value.issues] == [option]
    assert needle in str(caught.value)


def test_region_contradiction_names_both_values_and_options() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_destination("https://bucket.s3.eu-west-1.amazonaws.com", region="us-east-1")
    text = str(caught.value)
    for part in ("us-east-1", "eu-west-1", "destination.region", "destination.url"):
        assert part in text


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        pytest.param("https://AKIAEXAMPLEKEY:s3cr3t%2Fvalue@bucket.s3.us-west-2.amazonaws.com/p",
                     {}, id="https-userinfo"),
        pytest.param("http://AKIAEXAMPLEKEY:s3cr3t%2Fvalue@127.0.0.1:9000/bucket", {},
                     id="custom-userinfo"),
        pytest.param("s3://AKIAEXAMPLEKEY:s3cr3t%2Fvalue@bucket/p", {}, id="s3-userinfo"),
        pytest.param("file://AKIAEXAMPLEKEY:s3cr3t%2Fvalue@/lake", {}, id="file-userinfo"),
        pytest.param("AKIAEXAMPLEKEY:s3cr3t%2Fvalue@bucket", {}, id="schemeless-userinfo"),
        pytest.param("s3://bucket/p", {"endpoint": "http://AKIAEXAMPLEKEY:s3cr3t%2Fvalue@minio"},
                     id="endpoint-userinfo"),
    ],
)
def test_credentials_never_echoed(url: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_destination(url, region="us-east-1", **kwargs)
    text = str(caught.value) + repr(caught.value.issues)
    assert "AKIAEXAMPLEKEY" not in text
    assert "s3cr3t" not in text
    assert "credentials" in text


@pytest.mark.parametrize(
    ("bucket", "region"),
    [
        (LAKE, "us-east-2"),
        ("aws-security-data-lake-us-gov-west-1-abc123", "us-gov-west-1"),
        ("aws-security-data-lake-ap-southeast-2-z9", "ap-southeast-2"),
        ("aws-security-data-lake-cn-north-1-x", "cn-north-1"),
        ("aws-security-data-lake-us-east-1", None),
        ("aws-security-data-lake-us-east-1-", None),
        ("aws-security-data-lake-us-east-1-ABC", None),
        ("my-bucket", None),
        ("x-aws-security-data-lake-us-east-1-abc", None),
    ],
)
def test_region_from_bucket_name(bucket: str, region: str | None) -> None:
    assert region_from_bucket_name(bucket) == region


def test_case_count() -> None:
    assert len(OK_CASES) + len(ERROR_CASES) >= 45
