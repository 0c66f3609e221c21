"""Destination URLs: parse every S3 and file:// form into a Destination and infer its region.

Pure: no network I/O. ``region_source == "lookup"`` leaves HeadBucket at start-up to the caller.
"""

from __future__ import annotations

__all__ = [
    "Destination",
    "Partition",
    "RegionSource",
    "parse_destination",
    "parse_s3_location",
    "region_from_bucket_name",
]

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import SplitResult, unquote, urlsplit

from securitylake_sink.errors import ConfigError, ConfigIssue

RegionSource = Literal["config", "url", "bucket_name", "lookup", "default"]
Partition = Literal["aws", "aws-cn", "aws-us-gov"]

OPT_URL = "destination.url"
OPT_REGION = "destination.region"
OPT_ENDPOINT = "destination.endpoint"
DEFAULT_FILE_REGION = "us-east-1"

REGION = r"[a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d+"
REGION_RE = re.compile(rf"^{REGION}$")
LAKE_BUCKET_RE = re.compile(rf"^aws-security-data-lake-({REGION})-[a-z0-9]+$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
IPV4_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
ACCESS_POINT_NAME = r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]"
ACCESS_POINT_NAME_RE = re.compile(rf"^{ACCESS_POINT_NAME}$")
ACCESS_POINT_ARN_RE = re.compile(  # an empty region is a multi-region access point
    rf"^arn:(?P<partition>aws|aws-cn|aws-us-gov):s3:(?P<region>{REGION}|):(?P<account>\d{{12}})"
    r":accesspoint[/:](?P<name>[^/]+)(?P<rest>/.*)?$"
)
# AWS domains, longest first; the host minus its domain is the "stem" matched below.
AWS_DOMAINS: tuple[tuple[str, tuple[Partition, ...]], ...] = (
    (".amazonaws.com.cn", ("aws-cn",)),
    (".amazonaws.com", ("aws", "aws-us-gov")),
)
_BUCKET = r"(?:(?P<bucket>.+)\.)?"  # optional virtual-hosted bucket label(s) before the service
WEBSITE_HINT_RE = re.compile(r"(?:^|\.)s3-website[.-]")
WEBSITE_HOST_RE = re.compile(rf"^{_BUCKET}s3-website[.-](?P<region>{REGION})$")
ACCESS_POINT_HOST_RE = re.compile(
    rf"^(?P<name>{ACCESS_POINT_NAME})-(?P<account>\d{{12}})\.s3-accesspoint\.(?P<region>{REGION})$"
)
# The interface endpoint's DNS name is "bucket.vpce-…": a literal "bucket" label, then
# optionally the real bucket in front of it (virtual-hosted) or in the path (path-style).
VPCE_HOST_RE = re.compile(
    rf"^(?:(?P<bucket>.+?)\.)??(?:bucket\.)?"
    rf"(?P<endpoint>vpce-[a-z0-9-]+\.s3\.(?P<region>{REGION})\.vpce)$"
)
SPECIAL_REGIONAL_HOST_RE = re.compile(
    rf"^{_BUCKET}(?P<endpoint>(?:s3(?:-fips)?\.dualstack|s3-fips)\.(?P<region>{REGION}))$"
)
REGIONAL_HOST_RE = re.compile(rf"^{_BUCKET}s3\.(?P<region>{REGION})$")
DASH_REGIONAL_HOST_RE = re.compile(rf"^{_BUCKET}s3-(?P<region>{REGION})$")
EXTERNAL_HOST_RE = re.compile(rf"^{_BUCKET}s3-external-1$")
GLOBAL_HOST_RE = re.compile(rf"^{_BUCKET}s3$")
ACCELERATE_HOST_RE = re.compile(rf"^{_BUCKET}(?P<endpoint>s3-accelerate(?:\.dualstack)?)$")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where objects go. For access points ``bucket`` holds the access point ARN (what boto3
    takes as ``Bucket=``) and ``access_point_arn`` the same ARN."""

    kind: Literal["file", "s3"]
    bucket: str | None  # None for file lakes; the access point ARN for access points
    prefix: str  # key prefix inside the bucket: "" or "x/y/" (never a leading "/")
    region: str | None  # None only when region_source == "lookup" (HeadBucket at start-up)
    region_source: RegionSource
    partition: Partition
    path_style: bool  # path-style URL, custom endpoint, or dotted bucket over https
    endpoint_url: str | None  # None: boto3's standard endpoint for the region
    local_path: Path | None  # file lakes: the absolute directory
    access_point_arn: str | None = None


@dataclass(frozen=True, slots=True)
class _HostForm:
    """One family of AWS S3 host names and what it implies."""

    pattern: re.Pattern[str]
    endpoint_prefix: str | None = None  # not None: endpoint_url is needed, host = prefix+endpoint
    region: str | None = None  # fixed region of the form (s3-external-1)
    accelerate: bool = False


HOST_FORMS: tuple[_HostForm, ...] = (
    _HostForm(VPCE_HOST_RE, endpoint_prefix="bucket."),
    _HostForm(SPECIAL_REGIONAL_HOST_RE, endpoint_prefix=""),
    _HostForm(REGIONAL_HOST_RE),
    _HostForm(DASH_REGIONAL_HOST_RE),
    _HostForm(EXTERNAL_HOST_RE, region="us-east-1"),
    _HostForm(GLOBAL_HOST_RE),
    _HostForm(ACCELERATE_HOST_RE, endpoint_prefix="", accelerate=True),
)


@dataclass(frozen=True, slots=True)
class _Host:
    """What an AWS host name says: bucket (virtual-hosted), region, endpoint to hand to boto3."""

    bucket: str | None
    region: str | None
    partitions: tuple[Partition, ...]  # the partitions the host allows; () for custom endpoints
    endpoint_url: str | None
    accelerate: bool = False
    access_point_arn: str | None = None


def region_from_bucket_name(bucket: str) -> str | None:
    """The region in a Security Lake bucket name (aws-security-data-lake-<region>-<uid>)."""
    match = LAKE_BUCKET_RE.match(bucket)
    return match.group(1) if match else None


def parse_destination(url: str, *, region: str | None = None, endpoint: str | None = None) -> Destination:
    """Parse ``destination.url`` (with ``destination.region`` / ``destination.endpoint``)."""
    explicit = _check_region(region)
    endpoint = endpoint.strip() if endpoint else None
    text = url.strip()
    if not text:
        raise _url_error(
            "is empty; set it to s3://<bucket>/<prefix>, an https:// S3 URL or file:///<absolute directory>"
        )
    if text[:4].lower() == "arn:":
        _reject_endpoint(endpoint, "an access point ARN already names its endpoint")
        return _from_arn(text, explicit)
    parts = _split(text, OPT_URL)
    if parts.scheme == "s3":
        return _from_s3_uri(parts, explicit, endpoint)
    if parts.scheme in ("http", "https"):
        _reject_endpoint(
            endpoint, "the http(s) URL already names the endpoint; write destination.url as s3://<bucket>/<prefix>"
        )
        return _from_http(parts, explicit)
    if parts.scheme == "file":
        _reject_endpoint(endpoint, "it does not apply to a file:// lake; remove it")
        return _from_file(parts, explicit)
    if "@" in text:
        raise _url_error(
            "contains credentials (user:password@) or is not a URL; remove them "
            "and configure AWS credentials through the role or key settings"
        )
    shown = f" {parts.scheme!r}" if parts.scheme else ""
    raise _url_error(
        f"has an unsupported scheme{shown}; use s3://<bucket>/<prefix>, "
        "https://<S3 endpoint>/…, http(s)://<custom endpoint>/<bucket> or file:///<dir>"
    )


def _url_error(message: str, option: str = OPT_URL) -> ConfigError:
    return ConfigError(ConfigIssue(option, message))


def _check_region(region: str | None) -> str | None:
    if region is None or not region.strip():
        return None
    region = region.strip()
    if not REGION_RE.match(region):
        raise _url_error(
            f"{region!r} is not an AWS region name; write it like us-east-1, eu-west-2 or us-gov-west-1 (lowercase)",
            OPT_REGION,
        )
    return region


def _reject_endpoint(endpoint: str | None, why: str) -> None:
    if endpoint:
        raise _url_error(f"is set but {why}", OPT_ENDPOINT)


def _split(text: str, option: str) -> SplitResult:
    """urlsplit that rejects credentials, queries, fragments and bad ports (never echoing them)."""
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        raise _url_error("is not a well-formed URL (check the host, port and brackets)", option) from None
    if "@" in parts.netloc:
        raise _url_error(
            "contains credentials (user:password@ before the host); remove them "
            "and configure AWS credentials through the role or key settings",
            option,
        )
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise _url_error(
            "has a query string or fragment (? or #); remove it, a destination is scheme://host/bucket/prefix only",
            option,
        )
    return parts


def _segments(path: str, *, decode: bool, option: str = OPT_URL) -> list[str]:
    """Non-empty path segments ("a//b/" → ["a", "b"]); "." and ".." are refused."""
    segments = [unquote(s) if decode else s for s in path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise _url_error("has a '.' or '..' path segment; write the key prefix literally", option)
    return segments


def _prefix(segments: list[str]) -> str:
    return "/".join(segments) + "/" if segments else ""


def _check_bucket(bucket: str, option: str = OPT_URL) -> None:
    if BUCKET_RE.match(bucket) and ".." not in bucket and not IPV4_RE.match(bucket):
        return
    hint = " (bucket names are lowercase)" if bucket.lower() != bucket else ""
    raise _url_error(
        f"names bucket {bucket[:70]!r}, which is not a valid S3 bucket name{hint}: "
        "use 3-63 lowercase letters, digits, dots and hyphens, starting and "
        "ending with a letter or digit",
        option,
    )


def parse_s3_location(url: str, option: str) -> tuple[str, str]:
    """``s3://<bucket>/<prefix>`` → (bucket, prefix '' or 'a/b/'); a ConfigError names ``option``."""
    parts = _split(url.strip(), option)
    if parts.scheme != "s3" or not parts.netloc:
        raise _url_error(f"must be s3://<bucket>/<prefix>, got {url!r}", option)
    _check_bucket(parts.netloc, option)
    return parts.netloc, _prefix(_segments(parts.path, decode=False, option=option))


def _partition_of(region: str, option: str) -> Partition:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if re.match(r"^[a-z]{2}-iso", region):
        raise _url_error(
            f"region {region!r} is in an ISO partition, which this sink does not "
            "support; use a region in aws, aws-cn or aws-us-gov",
            option,
        )
    return "aws"


def _resolve_region(
    explicit: str | None, url_region: str | None, url_option: str, bucket: str
) -> tuple[str | None, RegionSource]:
    if explicit is not None:
        if url_region is not None and url_region != explicit:
            raise _url_error(
                f"is {explicit!r} but {url_option} names region {url_region!r}; remove "
                f"{OPT_REGION} or make {OPT_REGION} and {url_option} agree",
                OPT_REGION,
            )
        return explicit, "config"
    if url_region is not None:
        return url_region, "url"
    named = region_from_bucket_name(bucket)
    if named is not None:
        return named, "bucket_name"
    return None, "lookup"


def _s3_destination(
    *,
    bucket: str,
    prefix: str,
    explicit: str | None,
    host: _Host | None,
    url_option: str = OPT_URL,
    path_style: bool = False,
) -> Destination:
    """Common tail of every S3 form: validate, resolve region and partition, addressing."""
    arn = host.access_point_arn if host else None
    endpoint_url = host.endpoint_url if host else None
    if arn is None:
        _check_bucket(bucket)
    region, source = _resolve_region(explicit, host.region if host else None, url_option, bucket)
    if region is None and host is not None and not host.partitions:  # custom endpoint
        raise _url_error(
            f"is required with a custom (non-AWS) endpoint such as {endpoint_url}: "
            "set it to the region the server signs with (MinIO and moto accept "
            "us-east-1)",
            OPT_REGION,
        )
    option = OPT_REGION if source == "config" else url_option
    allowed = host.partitions if host else ()
    partition: Partition = allowed[0] if allowed else "aws"
    if region is not None:
        partition = _partition_of(region, option)
        if allowed and partition not in allowed:
            raise _url_error(
                f"region {region!r} is in partition {partition} but {url_option} "
                f"is in partition {' or '.join(allowed)}; make them agree",
                option,
            )
    if "." in bucket and arn is None:
        if host is not None and host.accelerate:
            raise _url_error(
                f"bucket {bucket!r} has dots, which Transfer Acceleration does not support; use the regional endpoint"
            )
        if not (endpoint_url or "").startswith("http://"):
            path_style = True  # *.s3 TLS certificates do not cover dotted bucket names
    return Destination("s3", bucket, prefix, region, source, partition, path_style, endpoint_url, None, arn)


def _from_s3_uri(parts: SplitResult, explicit: str | None, endpoint: str | None) -> Destination:
    if not parts.netloc:
        raise _url_error("names no bucket; write s3://<bucket>/<prefix>")
    prefix = _prefix(_segments(parts.path, decode=False))
    if not endpoint:
        return _s3_destination(bucket=parts.netloc, prefix=prefix, explicit=explicit, host=None)
    host = _parse_endpoint(endpoint)
    return _s3_destination(
        bucket=parts.netloc,
        prefix=prefix,
        explicit=explicit,
        host=host,
        url_option=OPT_ENDPOINT,
        path_style=not host.accelerate,
    )


def _parse_endpoint(endpoint: str) -> _Host:
    """``destination.endpoint``: scheme://host[:port]; an AWS host also yields its region."""
    parts = _split(endpoint, OPT_ENDPOINT)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _url_error("must be an http:// or https:// URL such as http://127.0.0.1:9000", OPT_ENDPOINT)
    if parts.path.strip("/"):
        raise _url_error(
            "must be scheme://host[:port] with no path; put the bucket and prefix in destination.url", OPT_ENDPOINT
        )
    endpoint_url = f"{parts.scheme}://{parts.netloc.lower()}"
    aws = _aws_domain(parts.hostname)
    if aws is None:
        return _Host(None, None, (), endpoint_url)
    host = _classify(*aws, parts.scheme, OPT_ENDPOINT)
    if host.bucket is not None or host.access_point_arn is not None:
        raise _url_error(
            "names a bucket or access point in its host; give only the service "
            "endpoint here and the bucket in destination.url",
            OPT_ENDPOINT,
        )
    return _Host(None, host.region, host.partitions, endpoint_url, host.accelerate)


def _aws_domain(host: str) -> tuple[str, str, tuple[Partition, ...]] | None:
    """(stem, domain, partitions) when ``host`` is under an AWS domain, else None."""
    for domain, partitions in AWS_DOMAINS:
        if ("." + host).endswith(domain):
            return host[: max(len(host) - len(domain), 0)], domain, partitions
    return None


def _classify(stem: str, domain: str, partitions: tuple[Partition, ...], scheme: str, option: str) -> _Host:
    """Read an AWS S3 host name (minus its domain) against the known forms."""
    shown = (stem + domain).lstrip(".")
    if WEBSITE_HINT_RE.search(stem):
        site = WEBSITE_HOST_RE.match(stem)
        bucket = site["bucket"] if site and site["bucket"] else "<bucket>"
        region = site["region"] if site else "<region>"
        raise _url_error(
            f"host {shown!r} is an S3 static-website endpoint, and a website endpoint "
            f"cannot take writes; use s3://{bucket}/<prefix> (or the REST endpoint "
            f"https://{bucket}.s3.{region}{domain}) instead",
            option,
        )
    point = ACCESS_POINT_HOST_RE.match(stem)
    if point:
        part = _partition_of(point["region"], option)
        arn = f"arn:{part}:s3:{point['region']}:{point['account']}:accesspoint/{point['name']}"
        return _Host(arn, point["region"], partitions, None, access_point_arn=arn)
    for form in HOST_FORMS:
        match = form.pattern.match(stem)
        if match is None:
            continue
        groups = match.groupdict()
        endpoint_url = None
        if form.endpoint_prefix is not None:
            endpoint_url = f"{scheme}://{form.endpoint_prefix}{groups['endpoint']}{domain}"
        return _Host(
            groups.get("bucket"), groups.get("region") or form.region, partitions, endpoint_url, form.accelerate
        )
    raise _url_error(
        f"host {shown!r} is not an S3 endpoint this sink knows; use s3://<bucket>/"
        "<prefix> or https://<bucket>.s3.<region>.amazonaws.com",
        option,
    )


def _from_http(parts: SplitResult, explicit: str | None) -> Destination:
    hostname = parts.hostname
    if not hostname:
        raise _url_error("names no host; write https://<bucket>.s3.<region>.amazonaws.com/<prefix>")
    segments = _segments(parts.path, decode=True)
    aws = _aws_domain(hostname)
    if aws is None:  # custom endpoint (MinIO, moto, …): always path-style
        host = _Host(None, None, (), f"{parts.scheme}://{parts.netloc.lower()}")
    else:
        host = _classify(*aws, parts.scheme, OPT_URL)
    if host.bucket is not None:
        return _s3_destination(bucket=host.bucket, prefix=_prefix(segments), explicit=explicit, host=host)
    if not segments:
        raise _url_error(f"names no bucket; add it to the path: {parts.scheme}://{hostname}/<bucket>/<prefix>")
    return _s3_destination(
        bucket=segments[0], prefix=_prefix(segments[1:]), explicit=explicit, host=host, path_style=not host.accelerate
    )


def _from_arn(text: str, explicit: str | None) -> Destination:
    match = ACCESS_POINT_ARN_RE.match(text)
    if match is None:
        raise _url_error(
            "is not an S3 access point ARN; expected "
            "arn:<partition>:s3:<region>:<account>:accesspoint/<name>[/<prefix>]"
        )
    region, name = match["region"], match["name"]
    if not region:
        raise _url_error(
            "names a multi-region access point, which this sink does not support; "
            "use a regional access point or the bucket"
        )
    if not ACCESS_POINT_NAME_RE.match(name):
        raise _url_error(f"access point name {name!r} is not valid (3-50 lowercase letters, digits and hyphens)")
    segments = _segments(match["rest"] or "", decode=False)
    if segments[:1] == ["object"]:  # arn:…:accesspoint/<name>/object/<key prefix>
        segments = segments[1:]
    partition = cast(Partition, match["partition"])
    arn = f"arn:{partition}:s3:{region}:{match['account']}:accesspoint/{name}"
    host = _Host(arn, region, (partition,), None, access_point_arn=arn)
    return _s3_destination(bucket=arn, prefix=_prefix(segments), explicit=explicit, host=host)


def _from_file(parts: SplitResult, explicit: str | None) -> Destination:
    if parts.netloc:
        raise _url_error(
            f"file URL has a host part ({parts.netloc!r}); a file lake needs an "
            "absolute directory written file:///<dir> (three slashes)"
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise _url_error("file URL has a relative path; write an absolute directory as file:///<dir>")
    _segments(path, decode=False)
    local = Path(path)
    region: str | None = explicit
    source: RegionSource = "config"
    if region is None:
        region = region_from_bucket_name(local.name)
        source = "bucket_name"
    if region is None:
        region, source = DEFAULT_FILE_REGION, "default"
    partition = _partition_of(region, OPT_REGION if source == "config" else OPT_URL)
    return Destination("file", None, "", region, source, partition, False, None, local)
