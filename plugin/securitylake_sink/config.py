"""The typed, frozen configuration: parse (YAML, ``${ENV}``), validate (every error names its
dotted option and the rule it broke), and the resolved plan that ``check-config`` prints.

Defaults and service limits are named constants here, with their source beside them.
"""

from __future__ import annotations

__all__ = [
    "MAX_WORKERS",
    "AuthConfig",
    "BatchConfig",
    "Config",
    "DeadLetterConfig",
    "DeliveryConfig",
    "DestinationConfig",
    "ForwardListen",
    "ForwardTls",
    "ForwardUser",
    "HttpAuth",
    "HttpListen",
    "ListenConfig",
    "LoggingConfig",
    "MetricsListen",
    "SourceLocation",
    "load_config",
    "parse_config",
]

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from securitylake_sink.errors import ConfigError, ConfigIssue

# Security Lake: objects no more often than every 5 minutes, no later than 1 day (user guide,
# "Custom source best practices"). Below 5 minutes is allowed for local lakes and tests.
DEFAULT_MAX_AGE_SECS = 300
MAX_MAX_AGE_SECS = 86_400
# Arrow bytes held per open batch before it is flushed; Parquet is several times smaller.
DEFAULT_BATCH_MAX_BYTES = 32 * 1024 * 1024
MAX_BATCH_MAX_BYTES = 1024 * 1024 * 1024
# Fluent Bit chunks are about 2 MB; in_forward itself caps at 6 MB (pipeline-protocols §6.5).
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_FORWARD_ADDRESS = "0.0.0.0:24224"
# Loopback by default (nothing outside the host or pod sees it); kubelet probes and a Prometheus
# in another pod need 0.0.0.0:2021. Fluent Bit's own HTTP server has 2020, the sink the next port.
DEFAULT_METRICS_ADDRESS = "127.0.0.1:2021"
DEFAULT_HTTP_ADDRESS = "0.0.0.0:8088"
# Fluent Bit's http chunks are about 2 MB, Vector's http sink batches up to 10 MB
# (batch.max_bytes); the cap holds for the body as received and after decompression.
DEFAULT_HTTP_MAX_BODY_BYTES = 32 * 1024 * 1024
# Fluent Bit's header_tag has no default; pipeline-protocols §3 sets it to this name.
DEFAULT_HTTP_TAG_HEADER = "X-Fluent-Tag"
DEFAULT_HTTP_DATE_KEY = "date"  # Fluent Bit's json_date_key default
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}\Z")  # an RFC 9110 token
DEFAULT_SPOOL_PATH = "/var/lib/securitylake-sink/spool"
# s3:// dead letters: a local file is shipped once it is this old or this big (ours: S3 takes
# many small objects well, and an operator sees dead letters within the lake's own cadence).
DEFAULT_DEAD_LETTER_MAX_AGE_SECS = 300
DEFAULT_DEAD_LETTER_MAX_BYTES = 8 * 1024 * 1024
MAX_DEAD_LETTER_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_DEDUP_TOKENS = 10_000  # recent chunk tokens remembered for resend deduplication
DEFAULT_DEDUP_SECS = 3600.0  # and for how long
# spool.max_bytes unset: this share of the spool file system's free space at start-up, capped.
SPOOL_FREE_SHARE = 0.10
SPOOL_MAX_BYTES_CAP = 64 * 1024**3
DEFAULT_SHUTDOWN_TIMEOUT_SECS = 30.0
# An object rejected permanently (access denied, no such bucket, KMS key disabled) this many times,
# or for this long since its first rejection, is moved to <spool.path>/quarantine/. With the
# delivery backoff (capped at 300 s) ten rejections take several minutes: enough for a policy
# being rolled out, short enough that one bad object does not hold the rest back for long.
DEFAULT_DELIVERY_MAX_ATTEMPTS = 10
DEFAULT_DELIVERY_MAX_AGE_SECS = 86_400.0
# run --workers: worker processes sharing the listening ports (SO_REUSEPORT); each is one core of
# mapping at most, and each worker's metrics port is the configured one plus its index.
MAX_WORKERS = 64
DEFAULT_OCSF_VERSION = "1.1.0"
# The integration contract: the writer role's name starts with this prefix (configurable).
DEFAULT_ROLE_NAME_PREFIX = "SynqlyAccess"
# STS AssumeRole: 900 s up to the role's maximum session, never above 12 hours.
MIN_DURATION_SECS, MAX_DURATION_SECS, DEFAULT_DURATION_SECS = 900, 43_200, 3600
ACCOUNT_ID = re.compile(r"^([0-9]{12}|external|external_[A-Za-z0-9_-]{1,64})\Z")
LOCATION = re.compile(r"^ext/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,31}/)?\Z")
ROLE_ARN = re.compile(
    r"^arn:(?P<partition>aws|aws-cn|aws-us-gov):iam::(?P<account>[0-9]{12}):role/"
    r"(?P<path>(?:[\x21-\x7e]+/)*)(?P<name>[A-Za-z0-9_+=,.@-]{1,64})\Z"
)
# The integration's contract (not STS's wider \w set): A-Z a-z 0-9 + = , . @ : / -
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9+=,.@:/-]{2,1224}\Z")
SESSION_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}\Z")
# KMS key id forms (KMS API reference, "KeyId"): key id, mrk- id, alias/<name>, key or alias ARN.
KMS_KEY = re.compile(
    r"^(?:arn:aws(?:-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:(?:key/[A-Za-z0-9-]{1,64}|alias/[\w/+=,.@-]{1,250})"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|alias/[\w/+=,.@-]{1,250})\Z"
)
UNION_TAGS = {"int", "str", "float", "bool", "none"}  # pydantic's names for the members of a union
ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MASK = "********"


class _RulesBroken(ValueError):
    """Raised inside a model validator so pydantic reports it beside every other error."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("; ".join(str(i) for i in issues))
        self.issues = issues


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceLocation(_Model):
    """Where the objects of one OCSF class go: a Security Lake custom-source location."""

    class_uid: int | Literal["*"]
    location: str

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        if "://" in value:  # Security Lake prints provider.location as s3://<bucket>/ext/<src>/
            value = value.split("://", 1)[1].partition("/")[2]
        if value and not value.endswith("/"):
            value += "/"
        if not LOCATION.match(value):
            raise ValueError(f"must look like ext/<source>/ or ext/<source>/<version>/, got {value!r}")
        return value


class DestinationConfig(_Model):
    url: str
    region: str | None = None
    endpoint: str | None = None
    account_id: str = "external"
    sources: tuple[SourceLocation, ...]
    sse_kms_key_id: str | None = None  # S3: SSE-KMS with this key; default: the bucket's encryption

    @field_validator("sse_kms_key_id")
    @classmethod
    def _kms_key(cls, value: str | None) -> str | None:
        if value is not None and not KMS_KEY.match(value):
            raise ValueError(
                "must be a KMS key id, mrk- id, alias/<name>, or a key or alias ARN "
                "(arn:aws:kms:<region>:<account>:key/<id>)"
            )
        return value

    @field_validator("account_id")
    @classmethod
    def _account(cls, value: str) -> str:
        if not ACCOUNT_ID.match(value):
            raise ValueError(f"must be 12 digits, 'external' or 'external_<id>', got {value!r}")
        return value

    @field_validator("sources")
    @classmethod
    def _unique(cls, value: tuple[SourceLocation, ...]) -> tuple[SourceLocation, ...]:
        if not value:
            raise ValueError("must list at least one {class_uid, location} entry")
        seen: set[int | str] = set()
        for i, source in enumerate(value):
            if source.class_uid in seen:
                option = f"destination.sources[{i}].class_uid"
                raise _RulesBroken([ConfigIssue(option, f"class_uid {source.class_uid} is listed twice")])
            seen.add(source.class_uid)
        return value

    def location_for(self, class_uid: int) -> str | None:
        """The configured location of a class, the ``*`` entry's otherwise, or None."""
        fallback = None
        for source in self.sources:
            if source.class_uid == class_uid:
                return source.location
            if source.class_uid == "*":
                fallback = source.location
        return fallback


class AuthConfig(_Model):
    role_arn: str | None = None
    external_id: SecretStr | None = None
    role_session_name: str | None = None
    duration_seconds: int = Field(DEFAULT_DURATION_SECS, ge=MIN_DURATION_SECS, le=MAX_DURATION_SECS)
    role_name_prefix: str = DEFAULT_ROLE_NAME_PREFIX
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    sts_endpoint: str | None = None

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not EXTERNAL_ID.match(value.get_secret_value()):
            raise ValueError("must be 2 to 1224 characters of A-Z a-z 0-9 + = , . @ : / -")
        return value

    @field_validator("role_session_name")
    @classmethod
    def _session_name(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_NAME.match(value):
            raise ValueError(f"must be 2 to 64 characters of A-Z a-z 0-9 _ + = , . @ -, got {value!r}")
        return value

    @field_validator("access_key_id")
    @classmethod
    def _access_key(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z0-9]{16,128}", value):
            raise ValueError("must be 16 to 128 upper-case letters and digits (like AKIA...)")
        return value

    @model_validator(mode="after")
    def _combination(self) -> AuthConfig:
        issues: list[ConfigIssue] = []
        if self.role_arn is not None:
            match = ROLE_ARN.match(self.role_arn)
            if not match:
                issues.append(
                    ConfigIssue(
                        "auth.role_arn",
                        "must look like arn:<aws|aws-cn|aws-us-gov>:iam::<12 digits>:role/[<path>/]<name>",
                    )
                )
            elif self.role_name_prefix and not match["name"].startswith(self.role_name_prefix):
                issues.append(
                    ConfigIssue(
                        "auth.role_arn",
                        f"the role name {match['name']!r} must start with {self.role_name_prefix!r} "
                        "(auth.role_name_prefix)",
                    )
                )
            if self.external_id is None:
                issues.append(
                    ConfigIssue(
                        "auth.external_id", "is required with auth.role_arn (it must match the role's trust policy)"
                    )
                )
        else:
            for name in ("external_id", "role_session_name"):
                if getattr(self, name) is not None:
                    issues.append(ConfigIssue(f"auth.{name}", "only applies with auth.role_arn"))
        if (self.access_key_id is None) != (self.secret_access_key is None):
            missing = "secret_access_key" if self.secret_access_key is None else "access_key_id"
            issues.append(ConfigIssue(f"auth.{missing}", "auth.access_key_id and auth.secret_access_key go together"))
        if self.session_token is not None and self.access_key_id is None:
            issues.append(
                ConfigIssue("auth.session_token", "only applies with auth.access_key_id and auth.secret_access_key")
            )
        if issues:
            raise _RulesBroken(issues)
        return self

    @property
    def mode(self) -> Literal["assume_role", "static", "default_chain"]:
        if self.role_arn:
            return "assume_role"
        return "static" if self.access_key_id else "default_chain"


class ForwardUser(_Model):
    """One user of the handshake's user auth (Fluent Bit's ``username`` and ``password``)."""

    username: str = Field(min_length=1)
    password: SecretStr

    @field_serializer("password")
    def _masked(self, value: SecretStr) -> str:
        return MASK


class ForwardTls(_Model):
    """TLS on the Forward port; with ``ca_file`` every client must present a certificate it signed."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None

    @field_validator("cert_file", "key_file", "ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None:  # a local read, no network I/O: check-config may do it
            try:
                with value.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        return value

    @model_validator(mode="after")
    def _loads(self) -> ForwardTls:
        from securitylake_sink.sources.tls import server_context  # noqa: PLC0415 (sources import this module)

        try:
            server_context(self.cert_file, self.key_file, self.ca_file)
        except ConfigError as exc:  # names the file that does not load
            raise _RulesBroken(list(exc.issues)) from None
        return self

    @field_serializer("cert_file", "key_file", "ca_file")
    def _text(self, value: Path | None) -> str | None:
        return None if value is None else str(value)


class ForwardListen(_Model):
    address: str = DEFAULT_FORWARD_ADDRESS
    max_frame_bytes: int = Field(DEFAULT_MAX_FRAME_BYTES, ge=1024, le=1024 * 1024 * 1024)
    # Turns on the HELO/PING/PONG handshake; "" pairs with Fluent Bit's empty_shared_key.
    shared_key: SecretStr | None = None
    self_hostname: str | None = Field(None, min_length=1)  # the PONG's hostname; default: this machine's
    users: tuple[ForwardUser, ...] = ()
    tls: ForwardTls | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_address(value)
        return value

    @field_serializer("shared_key")
    def _masked(self, value: SecretStr | None) -> str | None:
        return None if value is None else MASK

    @model_validator(mode="after")
    def _handshake(self) -> ForwardListen:
        issues: list[ConfigIssue] = []
        if self.shared_key is None:
            for name in ("users", "self_hostname"):
                if getattr(self, name):
                    issues.append(ConfigIssue(f"listen.forward.{name}", "only applies with listen.forward.shared_key"))
        names = [user.username for user in self.users]
        for name in sorted({n for n in names if names.count(n) > 1}):
            issues.append(ConfigIssue("listen.forward.users", f"username {name!r} is listed twice"))
        if issues:
            raise _RulesBroken(issues)
        return self


class MetricsListen(_Model):
    """The HTTP server for ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``."""

    enabled: bool = True
    address: str = DEFAULT_METRICS_ADDRESS

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_address(value)
        return value


class LoggingConfig(_Model):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class HttpAuth(_Model):
    """``listen.http.auth``: a bearer token, or a basic user and password."""

    bearer_token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> HttpAuth:
        issues: list[ConfigIssue] = []
        if self.bearer_token is not None and (self.user is not None or self.password is not None):
            issues.append(ConfigIssue("listen.http.auth", "set bearer_token, or user and password, not both"))
        elif self.bearer_token is None and self.user is None and self.password is None:
            issues.append(ConfigIssue("listen.http.auth", "set bearer_token, or user and password"))
        elif self.bearer_token is None and (self.user is None) != (self.password is None):
            missing = "password" if self.password is None else "user"
            issues.append(ConfigIssue(f"listen.http.auth.{missing}", "user and password go together"))
        if self.bearer_token is not None and not self.bearer_token.get_secret_value().strip():
            issues.append(ConfigIssue("listen.http.auth.bearer_token", "must not be empty"))
        if self.user is not None and (not self.user or ":" in self.user):
            issues.append(ConfigIssue("listen.http.auth.user", "must be non-empty and without ':' (basic auth)"))
        if issues:
            raise _RulesBroken(issues)
        return self


class HttpListen(_Model):
    """``listen.http``: absent = off; present (``http: {}`` for the defaults) = on."""

    address: str = DEFAULT_HTTP_ADDRESS
    tag_header: str = DEFAULT_HTTP_TAG_HEADER  # else the tag is the URL path: POST /<tag>
    date_key: str = Field(DEFAULT_HTTP_DATE_KEY, min_length=1)  # Fluent Bit's json_date_key
    max_body_bytes: int = Field(DEFAULT_HTTP_MAX_BODY_BYTES, ge=1024, le=1024 * 1024 * 1024)
    auth: HttpAuth | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_address(value)
        return value

    @field_validator("tag_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not HEADER_NAME.match(value):
            raise ValueError(f"must be an HTTP header name (letters, digits, -), got {value!r}")
        return value


class ListenConfig(_Model):
    forward: ForwardListen = ForwardListen()
    metrics: MetricsListen = MetricsListen()
    http: HttpListen | None = None  # off unless configured


class BatchConfig(_Model):
    max_age_secs: float = Field(DEFAULT_MAX_AGE_SECS, gt=0, le=MAX_MAX_AGE_SECS)
    max_bytes: int = Field(DEFAULT_BATCH_MAX_BYTES, ge=1024, le=MAX_BATCH_MAX_BYTES)


class SpoolConfig(_Model):
    path: Path = Path(DEFAULT_SPOOL_PATH)
    max_bytes: int | None = Field(None, ge=1024 * 1024)  # None: 10% of free disk at start-up, capped
    dedup_tokens: int = Field(DEFAULT_DEDUP_TOKENS, ge=0)  # 0 turns resend deduplication off
    dedup_secs: float = Field(DEFAULT_DEDUP_SECS, ge=0)

    def resolved_max_bytes(self) -> int:
        """``max_bytes``, or 10% of the free space where the spool lives (capped), computed now."""
        if self.max_bytes is not None:
            return self.max_bytes
        probe = self.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            stat = os.statvfs(probe)
        except OSError:
            return SPOOL_MAX_BYTES_CAP
        return min(SPOOL_MAX_BYTES_CAP, int(stat.f_bavail * stat.f_frsize * SPOOL_FREE_SHARE))


class DeliveryConfig(_Model):
    """When an object that keeps failing permanently is set aside; transient failures retry forever."""

    max_attempts: int = Field(DEFAULT_DELIVERY_MAX_ATTEMPTS, ge=1)
    max_age_secs: float = Field(DEFAULT_DELIVERY_MAX_AGE_SECS, gt=0)


class ShutdownConfig(_Model):
    timeout_secs: float = Field(DEFAULT_SHUTDOWN_TIMEOUT_SECS, gt=0)  # bounds the flush on SIGTERM


class OcsfConfig(_Model):
    version: str = DEFAULT_OCSF_VERSION

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        from securitylake_sink.ocsf.schema import bundled_versions  # noqa: PLC0415 (heavy import)

        if value not in bundled_versions():
            raise ValueError(f"must be one of the bundled versions {', '.join(bundled_versions())}, got {value!r}")
        return value


class MappingBinding(_Model):
    match: str | None = None  # Fluent Bit Match glob (only * is special); default: the rule's own tags
    rule: str  # ocsf, a built-in rule (securitylake-sink map --list), or a rule file (.yaml)
    # false: a line the rule parses is not also kept whole in raw_data (often half the object's
    # bytes); a raw_data the rule maps itself stays.
    raw_data: bool = True

    @field_validator("rule")
    @classmethod
    def _rule(cls, value: str, info: ValidationInfo) -> str:
        from securitylake_sink.mapping.route import resolve_rule  # noqa: PLC0415 (heavy import)

        base = (info.context or {}).get("config_dir")
        return resolve_rule(value, base if isinstance(base, Path) else None)

    @field_validator("raw_data")
    @classmethod
    def _raw_data(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and info.data.get("rule") == "base_event":
            raise ValueError("must be true with rule base_event: raw_data is where it keeps the line")
        return value


class DeadLetterConfig(_Model):
    """Where dead letters go: a local directory, or an S3 prefix they are shipped to from the spool."""

    # file:// directory or a local path (default <spool.path>/dead_letter), or s3://<bucket>/<prefix>/
    location: str | None = None
    # s3:// only: a local dead-letter file is closed and shipped at this age or size, whichever first.
    max_age_secs: float = Field(DEFAULT_DEAD_LETTER_MAX_AGE_SECS, gt=0, le=MAX_MAX_AGE_SECS)
    max_bytes: int = Field(DEFAULT_DEAD_LETTER_MAX_BYTES, ge=1024, le=MAX_DEAD_LETTER_MAX_BYTES)

    @field_validator("location")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme == "s3":
            from securitylake_sink.lake.url import parse_s3_location  # noqa: PLC0415 (lake imports this module)

            try:
                parse_s3_location(value, "dead_letter.location")
            except ConfigError as exc:
                raise _RulesBroken(list(exc.issues)) from None
            return value
        if scheme and scheme != "file":
            raise ValueError(
                f"must be a file:// directory, a local path or s3://<bucket>/<prefix>/, not {scheme}://, got {value!r}"
            )
        if scheme and not value.removeprefix("file://").startswith("/"):
            raise ValueError(f"a file:// location must be an absolute path, got {value!r}")
        return value

    @model_validator(mode="after")
    def _s3_only(self) -> DeadLetterConfig:
        if not self.is_s3:
            issues = [
                ConfigIssue(f"dead_letter.{name}", "only applies with an s3:// dead_letter.location")
                for name in ("max_age_secs", "max_bytes")
                if name in self.model_fields_set
            ]
            if issues:
                raise _RulesBroken(issues)
        return self

    @property
    def is_s3(self) -> bool:
        return self.location is not None and self.location.startswith("s3://")


class Config(_Model):
    """The whole validated configuration; build the running parts from it, never from dicts."""

    destination: DestinationConfig
    auth: AuthConfig = AuthConfig()
    listen: ListenConfig = ListenConfig()
    batch: BatchConfig = BatchConfig()
    spool: SpoolConfig = SpoolConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    ocsf: OcsfConfig = OcsfConfig()
    mappings: tuple[MappingBinding, ...] = ()
    # Records no mapping takes: dead letters (default), Base Events (class 0; no Security Lake
    # custom source takes them) or dropped (counted, logged once per tag).
    mappings_fallback: Literal["dead_letter", "base_event", "drop"] = "dead_letter"
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    logging: LoggingConfig = LoggingConfig()
    # Worker processes of ``run`` (``run --workers`` overrides it); 1 serves in the one process.
    workers: int = Field(1, ge=1, le=MAX_WORKERS)

    @property
    def dead_letter_path(self) -> Path:
        """The local dead-letter directory; with an s3:// location, the spool's, which ships from it."""
        loc = self.dead_letter.location
        if loc is None or self.dead_letter.is_s3:
            return self.spool.path / "dead_letter"
        return Path(loc.removeprefix("file://"))


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); raises ValueError naming the rule."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port with a port from 0 to 65535, got {value!r}")
    if host.startswith("[") or host.endswith("]") or ":" in host:
        try:
            if not (host.startswith("[") and host.endswith("]")):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"must be host:port, with an IPv6 host in brackets ([::]:24224), got {value!r}") from None
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def interpolate(
    value: Any, path: str = "", env: Mapping[str, str] | None = None, issues: list[ConfigIssue] | None = None
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` (default also when VAR is empty, as in a shell) in
    every string scalar; ``$$`` is a literal ``$``. Unset variables are added to ``issues``
    (or raised at once when no list is given)."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), env, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", env, issues) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if default is not None and not env.get(name):
            return default
        if name in env:
            return env[name]
        issue = ConfigIssue(path, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
        if issues is None:
            raise ConfigError(issue)
        issues.append(issue)
        return ""

    return ENV_REF.sub(substitute, value)


def _issues(error: ValidationError, data: Any) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for err in error.errors():
        loc = [
            p
            for p in err["loc"]
            if not (isinstance(p, str) and (p in UNION_TAGS or p.startswith(("function-", "literal["))))
        ]
        option = ""
        for part in loc:
            option += f"[{part}]" if isinstance(part, int) else (f".{part}" if option else str(part))
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _RulesBroken | ConfigError):
            issues.extend(ctx_error.issues)
            continue
        if err["type"] == "extra_forbidden":
            issues.append(ConfigIssue(option, "is not a known option" + _suggest(option, data)))
            continue
        message = str(ctx_error) if ctx_error is not None else _rule_text(err["msg"])
        given = err["input"]
        secret = "auth" in option.split(".") or option.endswith(("shared_key", "password"))
        if err["type"] != "value_error" and not secret and isinstance(given, int | float | str):
            message += f", got {given!r}"
        if err["type"] == "string_type" and isinstance(given, int | float):
            message += " (quote it: YAML reads bare digits as a number)"
        issues.append(ConfigIssue(option, message))
    return issues


def _rule_text(message: str) -> str:
    """pydantic's wording → ours: 'Input should be at most 5' → 'must be at most 5'."""
    message = message.removeprefix("Value error, ")
    if message == "Field required":
        return "is required"
    for prefix in ("Input should be ", "Value should be "):
        if message.startswith(prefix):
            return "must be " + message.removeprefix(prefix).replace("less than or equal to", "at most").replace(
                "greater than or equal to", "at least"
            )
    return message


def _suggest(option: str, data: Any) -> str:
    head, _, name = option.rpartition(".")
    model: Any = Config
    for part in head.split(".") if head else []:
        field = model.model_fields.get(re.sub(r"\[\d+\]$", "", part))
        model = getattr(field, "annotation", None) if field else None
        if isinstance(model, type) and issubclass(model, BaseModel):
            continue
        args = getattr(model, "__args__", ())
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    close = difflib.get_close_matches(name, list(model.model_fields), n=1)
    return f" (did you mean {head + '.' if head else ''}{close[0]}?)" if close else ""


def parse_config(text: str, *, env: Mapping[str, str] | None = None, origin: str = "<config>") -> Config:
    """YAML text → a validated Config, or ConfigError listing every broken rule."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{origin} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of option groups, got {type(data).__name__}")
    issues: list[ConfigIssue] = []
    data = interpolate(data, env=env, issues=issues)
    try:
        config_dir = Path(origin).parent if origin != "<config>" else None  # rule files are relative to it
        config = Config.model_validate(data, context={"config_dir": config_dir})
    except ValidationError as exc:
        raise ConfigError(issues + _issues(exc, data) + _cross_issues(data)) from None
    if issues:
        raise ConfigError(issues)
    from securitylake_sink.plan import check  # noqa: PLC0415 (plan imports this module)

    check(config)
    return config


def _cross_issues(data: dict[str, Any]) -> list[ConfigIssue]:
    """The cross-option rules, checked on the raw data when other options already failed."""
    from securitylake_sink.ocsf.schema import bundled_versions  # noqa: PLC0415
    from securitylake_sink.plan import cross_issues  # noqa: PLC0415

    def text(group: Any, key: str) -> str | None:
        value = group.get(key) if isinstance(group, dict) else None
        return value if isinstance(value, str) else None

    dest = data.get("destination")
    version = text(data.get("ocsf"), "version") or DEFAULT_OCSF_VERSION
    sources = dest.get("sources") if isinstance(dest, dict) else None
    uids = [(i, s.get("class_uid")) for i, s in enumerate(sources or []) if isinstance(s, dict)]
    return cross_issues(
        text(dest, "url"),
        text(dest, "region"),
        text(dest, "endpoint"),
        version if version in bundled_versions() else DEFAULT_OCSF_VERSION,
        uids if isinstance(sources, list) else [],
        dead_letter=text(data.get("dead_letter"), "location"),
    )


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; an unreadable file is a ConfigError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, env=env, origin=str(path))
