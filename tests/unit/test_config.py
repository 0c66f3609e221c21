"""Tests for securitylake_sink.config: every rule names its dotted option and says the rule.

Each case reads GIVEN a config that differs from a minimal valid one in one place, WHEN it is
parsed, THEN a ConfigError names that exact option and the rule it broke.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from securitylake_sink.config import SPOOL_MAX_BYTES_CAP, Config, SpoolConfig, parse_config, split_address
from securitylake_sink.errors import ConfigError, ConfigIssue
from securitylake_sink.ocsf.schema import bundled_versions, load_schema
from securitylake_sink.plan import resolve_plan

LAKE_URL = "file:///tmp/securitylake-sink-tests/lake"
MINIMAL: dict[str, Any] = {
    "destination": {"url": LAKE_URL, "sources": [{"class_uid": 3002, "location": "ext/auth/"}]},
}
ROLE_ARN = "arn:aws:iam::123456789012:role/SynqlyAccessWriter"
ROLE = {"role_arn": ROLE_ARN, "external_id": "ext-id-0001"}
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
STATIC = {"access_key_id": ACCESS_KEY_ID, "secret_access_key": "not-a-real-secret"}
GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024
DELETE = object()  # in overrides: remove this key from MINIMAL

# A class the newest bundled OCSF version has and 1.1.0 lacks (so the check is per version).
NEWEST = bundled_versions()[-1]
LATER_ONLY_UID = min(set(load_schema(NEWEST).class_uids()) - set(load_schema("1.1.0").class_uids()))
NO_SUCH_UID = 999_999


# --- helpers -------------------------------------------------------------------------------


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: mappings merge, anything else replaces, DELETE removes."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_yaml(overrides: Mapping[str, Any] | None = None) -> str:
    """YAML text of the minimal valid config with ``overrides`` merged in."""
    return yaml.safe_dump(merged(MINIMAL, overrides or {}), sort_keys=False)


def parse(text: str, env: Mapping[str, str] | None = None) -> Config:
    """parse_config with an explicit (empty by default) environment, never os.environ."""
    return parse_config(text, env={} if env is None else env)


def issues_of(text: str, env: Mapping[str, str] | None = None) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    assert info.value.issues, "a ConfigError must carry at least one issue"
    return info.value.issues


def issue_at(option: str, text: str, env: Mapping[str, str] | None = None) -> ConfigIssue:
    """The issue naming ``option``; fails listing every issue when none does."""
    found = issues_of(text, env)
    named = [i for i in found if i.option == option]
    assert named, f"no issue names {option!r}; got {[str(i) for i in found]}"
    return named[0]


def assert_says(issue: ConfigIssue, *phrases: str) -> None:
    for phrase in phrases:
        assert phrase in issue.message, f"{issue.option}: {issue.message!r} does not say {phrase!r}"


def error_text(exc: ConfigError) -> str:
    """Everything a ConfigError can show: its str, repr and every issue."""
    return "\n".join([str(exc), repr(exc), *(f"{i.option} {i.message} {i!r}" for i in exc.issues)])


# --- positive: defaults and accepted forms -------------------------------------------------


def test_minimal_config_gets_every_documented_default() -> None:
    # GIVEN only destination.url (file://) and one source
    # WHEN parsed
    config = parse(config_yaml())
    # THEN every group not written gets its documented default
    assert config.destination.url == LAKE_URL
    assert config.destination.account_id == "external"
    assert config.destination.region is None
    assert config.listen.forward.address == "0.0.0.0:24224"
    assert config.batch.max_age_secs == 300
    assert config.ocsf.version == "1.1.0"
    assert config.auth.mode == "default_chain"
    assert config.auth.role_arn is None
    assert config.auth.role_name_prefix == "SynqlyAccess"
    assert config.mappings == ()
    assert config.dead_letter_path == config.spool.path / "dead_letter"


def test_config_is_frozen() -> None:
    # GIVEN a parsed config; WHEN an option is assigned; THEN it refuses
    config = parse(config_yaml())
    with pytest.raises(ValidationError):
        config.batch.max_age_secs = 1  # type: ignore[misc]


def test_empty_document_is_a_missing_destination() -> None:
    # GIVEN an empty file; THEN the error names destination as required
    assert_says(issue_at("destination", ""), "required")


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        pytest.param("ext/auth/", "ext/auth/", id="canonical"),
        pytest.param("ext/auth", "ext/auth/", id="missing-trailing-slash"),
        pytest.param("ext/auth/1.0/", "ext/auth/1.0/", id="with-version"),
        pytest.param("ext/auth/1.0", "ext/auth/1.0/", id="with-version-missing-slash"),
        pytest.param("s3://aws-security-data-lake-us-east-1-abc123/ext/auth/", "ext/auth/", id="s3-uri"),
        pytest.param("s3://aws-security-data-lake-us-east-1-abc123/ext/auth", "ext/auth/", id="s3-uri-no-slash"),
    ],
)
def test_source_location_is_normalised(written: str, normalised: str) -> None:
    # GIVEN a location as Security Lake prints it or as a user types it
    config = parse(config_yaml({"destination": {"sources": [{"class_uid": 3002, "location": written}]}}))
    # THEN it is stored as ext/<source>/[<version>/]
    assert config.destination.sources[0].location == normalised


def test_star_source_and_location_lookup() -> None:
    # GIVEN one explicit class and a "*" fallback
    sources = [{"class_uid": 3002, "location": "ext/auth/"}, {"class_uid": "*", "location": "ext/rest/"}]
    config = parse(config_yaml({"destination": {"sources": sources}}))
    # THEN the explicit class maps to its own location and any other class to the fallback
    assert config.destination.location_for(3002) == "ext/auth/"
    assert config.destination.location_for(4001) == "ext/rest/"


def test_class_uid_is_checked_against_the_configured_ocsf_version() -> None:
    # GIVEN a class that only a later OCSF version has, with that version configured
    text = config_yaml(
        {
            "ocsf": {"version": NEWEST},
            "destination": {"sources": [{"class_uid": LATER_ONLY_UID, "location": "ext/new/"}]},
        }
    )
    # THEN it is accepted
    assert parse(text).destination.sources[0].class_uid == LATER_ONLY_UID


@pytest.mark.parametrize("version", bundled_versions())
def test_every_bundled_ocsf_version_is_accepted(version: str) -> None:
    assert parse(config_yaml({"ocsf": {"version": version}})).ocsf.version == version


@pytest.mark.parametrize(
    ("account_id"),
    ["123456789012", "external", "external_tenant-01", "external_" + "a" * 64],
)
def test_account_id_accepted(account_id: str) -> None:
    config = parse(config_yaml({"destination": {"account_id": account_id}}))
    assert config.destination.account_id == account_id


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("1234abcd-12ab-34cd-56ef-1234567890ab", id="key-id"),
        pytest.param("mrk-1234abcd12ab34cd56ef1234567890ab", id="multi-region-key-id"),
        pytest.param("alias/securitylake", id="alias"),
        pytest.param("arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", id="key-arn"),
        pytest.param("arn:aws-us-gov:kms:us-gov-west-1:123456789012:alias/lake", id="alias-arn-gov"),
    ],
)
def test_sse_kms_key_id_accepted(key: str) -> None:
    # GIVEN a KMS key in any of the forms the KMS API takes; THEN it is kept as written
    assert parse(config_yaml({"destination": {"sse_kms_key_id": key}})).destination.sse_kms_key_id == key


@pytest.mark.parametrize(
    ("auth", "mode"),
    [
        pytest.param({}, "default_chain", id="default_chain"),
        pytest.param(STATIC, "static", id="static"),
        pytest.param({**STATIC, "session_token": "tok"}, "static", id="static-with-session-token"),
        pytest.param(ROLE, "assume_role", id="assume_role"),
        pytest.param(
            {**ROLE, "role_session_name": "sink_a+=,.@-1", "duration_seconds": 43_200},
            "assume_role",
            id="assume_role-with-session-name-and-duration",
        ),
        pytest.param(
            {**ROLE, "role_arn": "arn:aws:iam::123456789012:role/team/sinks/SynqlyAccessWriter"},
            "assume_role",
            id="assume_role-role-with-path",
        ),
        pytest.param(
            {**ROLE, "role_arn": "arn:aws-cn:iam::123456789012:role/SynqlyAccessWriter"},
            "assume_role",
            id="assume_role-aws-cn",
        ),
        pytest.param(
            {**ROLE, "role_arn": "arn:aws-us-gov:iam::123456789012:role/SynqlyAccessWriter"},
            "assume_role",
            id="assume_role-aws-us-gov",
        ),
        pytest.param({**ROLE, **STATIC}, "assume_role", id="assume_role-from-static-keys"),
        pytest.param(
            {"role_arn": "arn:aws:iam::123456789012:role/AnyName", "external_id": "ab", "role_name_prefix": ""},
            "assume_role",
            id="empty-prefix-turns-prefix-rule-off",
        ),
        pytest.param(
            {"role_arn": "arn:aws:iam::123456789012:role/LakeWriter", "external_id": "ab", "role_name_prefix": "Lake"},
            "assume_role",
            id="custom-prefix",
        ),
    ],
)
def test_auth_modes(auth: dict[str, Any], mode: str) -> None:
    # GIVEN an auth group; WHEN parsed; THEN the mode follows from which options are set
    config = parse(config_yaml({"auth": auth}))
    assert config.auth.mode == mode
    if "role_arn" in auth:
        assert config.auth.role_arn == auth["role_arn"]


@pytest.mark.parametrize(
    ("external_id"),
    [
        pytest.param("ab", id="shortest"),
        pytest.param("a" * 1224, id="longest"),
        pytest.param("AZaz09+=,.@:/-", id="every-allowed-symbol"),
    ],
)
def test_external_id_accepted(external_id: str) -> None:
    config = parse(config_yaml({"auth": {**ROLE, "external_id": external_id}}))
    assert config.auth.external_id is not None
    assert config.auth.external_id.get_secret_value() == external_id


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Az09_+=,.@-"])
def test_role_session_name_accepted(name: str) -> None:
    assert parse(config_yaml({"auth": {**ROLE, "role_session_name": name}})).auth.role_session_name == name


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        pytest.param("0.0.0.0:24224", "0.0.0.0", 24224, id="ipv4-any"),
        pytest.param("127.0.0.1:0", "127.0.0.1", 0, id="port-0"),
        pytest.param("localhost:65535", "localhost", 65535, id="hostname-top-port"),
        pytest.param("[::]:24224", "::", 24224, id="ipv6-any"),
        pytest.param("[::1]:24224", "::1", 24224, id="ipv6-loopback"),
        pytest.param(":24224", "0.0.0.0", 24224, id="empty-host-means-any"),
    ],
)
def test_forward_address_accepted(address: str, host: str, port: int) -> None:
    # GIVEN a host:port or [v6]:port; THEN it is kept as written and splits into host and port
    config = parse(config_yaml({"listen": {"forward": {"address": address}}}))
    assert config.listen.forward.address == address
    assert split_address(config.listen.forward.address) == (host, port)


@pytest.mark.parametrize(
    ("group", "option", "value"),
    [
        ("batch", "max_age_secs", 0.5),
        ("batch", "max_age_secs", 86_400),
        ("batch", "max_bytes", 1024),
        ("batch", "max_bytes", GIB),
        ("spool", "max_bytes", MIB),
        ("auth", "duration_seconds", 900),
        ("auth", "duration_seconds", 43_200),
    ],
)
def test_bounds_are_inclusive(group: str, option: str, value: float) -> None:
    # GIVEN a value exactly at a documented bound; THEN it is accepted
    extra = ROLE if group == "auth" else {}
    config = parse(config_yaml({group: {**extra, option: value}}))
    assert getattr(getattr(config, group), option) == value


@pytest.mark.parametrize("value", [1024, GIB])
def test_max_frame_bytes_bounds_are_inclusive(value: int) -> None:
    config = parse(config_yaml({"listen": {"forward": {"max_frame_bytes": value}}}))
    assert config.listen.forward.max_frame_bytes == value


@pytest.mark.parametrize("rule", ["ocsf", "base_event"])
def test_mapping_rules_accepted(rule: str) -> None:
    config = parse(config_yaml({"mappings": [{"match": "app.*", "rule": rule}]}))
    assert [(m.match, m.rule) for m in config.mappings] == [("app.*", rule)]


# --- one rule per case ---------------------------------------------------------------------

RULES = [
    # destination
    pytest.param({"destination": {"url": DELETE}}, "destination.url", ["required"], id="url-missing"),
    pytest.param({"destination": {"sources": DELETE}}, "destination.sources", ["required"], id="sources-missing"),
    pytest.param(
        {"destination": {"sources": []}}, "destination.sources", ["must list at least one"], id="sources-empty"
    ),
    pytest.param({"destination": {"url": "ftp://example.com/lake"}}, "destination.url", ["scheme"], id="url-scheme"),
    *(
        pytest.param(
            {"destination": {"sources": [{"class_uid": 3002, "location": location}]}},
            "destination.sources[0].location",
            ["must look like ext/<source>/"],
            id=f"location-{label}",
        )
        for label, location in [
            ("no-ext", "auth/"),
            ("leading-slash", "/ext/auth/"),
            ("too-deep", "ext/auth/1.0/extra/"),
            ("empty", ""),
            ("bad-first-char", "ext/-auth/"),
            ("source-too-long", "ext/" + "a" * 65 + "/"),
            ("space", "ext/au th/"),
        ]
    ),
    pytest.param(
        {"destination": {"sources": [{"class_uid": 3002, "location": "ext/a/"}, {"location": "ext/b/"}]}},
        "destination.sources[1].class_uid",
        ["required"],
        id="class_uid-missing",
    ),
    pytest.param(
        {
            "destination": {
                "sources": [{"class_uid": 3002, "location": "ext/a/"}, {"class_uid": "all", "location": "ext/b/"}]
            }
        },
        "destination.sources[1].class_uid",
        ["integer"],
        id="class_uid-not-int-or-star",
    ),
    pytest.param(
        {
            "destination": {
                "sources": [{"class_uid": 3002, "location": "ext/a/"}, {"class_uid": 3002, "location": "ext/b/"}]
            }
        },
        "destination.sources[1].class_uid",
        ["class_uid 3002", "twice"],
        id="class_uid-duplicate",
    ),
    pytest.param(
        {
            "destination": {
                "sources": [{"class_uid": "*", "location": "ext/a/"}, {"class_uid": "*", "location": "ext/b/"}]
            }
        },
        "destination.sources[1].class_uid",
        ["class_uid *", "twice"],
        id="class_uid-star-duplicate",
    ),
    pytest.param(
        {
            "ocsf": {"version": "1.1.0"},
            "destination": {
                "sources": [
                    {"class_uid": 3002, "location": "ext/a/"},
                    {"class_uid": LATER_ONLY_UID, "location": "ext/b/"},
                ]
            },
        },
        "destination.sources[1].class_uid",
        ["OCSF 1.1.0", f"no event class {LATER_ONLY_UID}"],
        id="class_uid-not-in-configured-version",
    ),
    pytest.param(
        {"destination": {"sources": [{"class_uid": NO_SUCH_UID, "location": "ext/a/"}]}},
        "destination.sources[0].class_uid",
        [f"no event class {NO_SUCH_UID}"],
        id="class_uid-in-no-version",
    ),
    *(
        pytest.param(
            {"destination": {"account_id": account_id}},
            "destination.account_id",
            ["12 digits", "'external'", "'external_<id>'"],
            id=f"account_id-{label}",
        )
        for label, account_id in [
            ("11-digits", "12345678901"),
            ("13-digits", "1234567890123"),
            ("uppercase-external", "External"),
            ("empty-suffix", "external_"),
            ("suffix-with-space", "external_a b"),
            ("suffix-too-long", "external_" + "a" * 65),
        ]
    ),
    *(
        pytest.param(
            {"destination": {"sse_kms_key_id": key}},
            "destination.sse_kms_key_id",
            ["must be a KMS key id"],
            id=f"sse_kms_key_id-{label}",
        )
        for label, key in [
            ("word", "securitylake"),
            ("short-uuid", "1234abcd-12ab-34cd-56ef"),
            ("arn-short-account", "arn:aws:kms:us-east-1:12345:key/1234abcd"),
            ("s3-arn", "arn:aws:s3:::bucket"),
            ("empty-alias", "alias/"),
        ]
    ),
    # auth
    *(
        pytest.param(
            {"auth": {**ROLE, "role_arn": arn}},
            "auth.role_arn",
            ["must look like arn:"],
            id=f"role_arn-{label}",
        )
        for label, arn in [
            ("short-account", "arn:aws:iam::12345:role/SynqlyAccessWriter"),
            ("user-not-role", "arn:aws:iam::123456789012:user/SynqlyAccessWriter"),
            ("iso-partition", "arn:aws-iso:iam::123456789012:role/SynqlyAccessWriter"),
            ("not-an-arn", "SynqlyAccessWriter"),
            ("name-too-long", "arn:aws:iam::123456789012:role/SynqlyAccess" + "x" * 60),
        ]
    ),
    pytest.param(
        {"auth": {**ROLE, "role_arn": "arn:aws:iam::123456789012:role/OtherWriter"}},
        "auth.role_arn",
        ["'OtherWriter'", "must start with 'SynqlyAccess'", "auth.role_name_prefix"],
        id="role-name-prefix",
    ),
    pytest.param(
        {"auth": {**ROLE, "role_arn": "arn:aws:iam::123456789012:role/SynqlyAccess/Writer"}},
        "auth.role_arn",
        ["'Writer'", "must start with 'SynqlyAccess'"],
        id="role-name-prefix-applies-to-name-not-path",
    ),
    pytest.param(
        {"auth": {**ROLE, "role_name_prefix": "Lake"}},
        "auth.role_arn",
        ["must start with 'Lake'"],
        id="role-name-custom-prefix",
    ),
    pytest.param(
        {"auth": {"role_arn": ROLE_ARN}},
        "auth.external_id",
        ["is required with auth.role_arn"],
        id="external_id-required-with-role",
    ),
    *(
        pytest.param(
            {"auth": {**ROLE, "external_id": external_id}},
            "auth.external_id",
            ["2 to 1224 characters"],
            id=f"external_id-{label}",
        )
        for label, external_id in [
            ("too-short", "a"),
            ("too-long", "a" * 1225),
            ("space", "ab cd"),
            ("bang", "ab!cd"),
            ("empty", ""),
        ]
    ),
    *(
        pytest.param(
            {"auth": {**ROLE, "role_session_name": name}},
            "auth.role_session_name",
            ["2 to 64 characters"],
            id=f"role_session_name-{label}",
        )
        for label, name in [("too-short", "a"), ("too-long", "a" * 65), ("space", "my session"), ("slash", "a/b")]
    ),
    pytest.param(
        {"auth": {**ROLE, "duration_seconds": 899}},
        "auth.duration_seconds",
        ["at least 900"],
        id="duration_seconds-below-900",
    ),
    pytest.param(
        {"auth": {**ROLE, "duration_seconds": 43_201}},
        "auth.duration_seconds",
        ["at most 43200"],
        id="duration_seconds-above-43200",
    ),
    pytest.param(
        {"auth": {"external_id": "ext-id-0001"}},
        "auth.external_id",
        ["only applies with auth.role_arn"],
        id="external_id-without-role",
    ),
    pytest.param(
        {"auth": {"role_session_name": "sink"}},
        "auth.role_session_name",
        ["only applies with auth.role_arn"],
        id="role_session_name-without-role",
    ),
    pytest.param(
        {"auth": {"access_key_id": ACCESS_KEY_ID}},
        "auth.secret_access_key",
        ["auth.access_key_id and auth.secret_access_key go together"],
        id="access_key_id-without-secret",
    ),
    pytest.param(
        {"auth": {"secret_access_key": "s3cr3t"}},
        "auth.access_key_id",
        ["auth.access_key_id and auth.secret_access_key go together"],
        id="secret-without-access_key_id",
    ),
    pytest.param(
        {"auth": {"session_token": "tok"}},
        "auth.session_token",
        ["only applies with auth.access_key_id"],
        id="session_token-without-keys",
    ),
    *(
        pytest.param(
            {"auth": {**STATIC, "access_key_id": key}},
            "auth.access_key_id",
            ["16 to 128 upper-case letters and digits"],
            id=f"access_key_id-{label}",
        )
        for label, key in [
            ("lowercase", ACCESS_KEY_ID.lower()),
            ("too-short", "AKIA12345678901"),
            ("too-long", "A" * 129),
            ("dash", "AKIA-IOSFODNN7EXAMPLE"),
        ]
    ),
    # listen.forward
    *(
        pytest.param(
            {"listen": {"forward": {"address": address}}},
            "listen.forward.address",
            ["host:port", "0 to 65535"],
            id=f"address-{label}",
        )
        for label, address in [
            ("no-port", "localhost"),
            ("empty-port", "localhost:"),
            ("named-port", "localhost:forward"),
            ("port-too-big", "0.0.0.0:65536"),
            ("negative-port", "0.0.0.0:-1"),
            ("ipv6-no-port", "[::]"),
            ("ipv6-port-too-big", "[::]:99999"),
        ]
    ),
    pytest.param(
        {"listen": {"forward": {"max_frame_bytes": 1023}}},
        "listen.forward.max_frame_bytes",
        ["at least 1024"],
        id="max_frame_bytes-too-small",
    ),
    pytest.param(
        {"listen": {"forward": {"max_frame_bytes": GIB + 1}}},
        "listen.forward.max_frame_bytes",
        [f"at most {GIB}"],
        id="max_frame_bytes-too-big",
    ),
    # batch, spool
    pytest.param({"batch": {"max_age_secs": 0}}, "batch.max_age_secs", ["greater than 0"], id="max_age_secs-zero"),
    pytest.param({"batch": {"max_age_secs": -5}}, "batch.max_age_secs", ["greater than 0"], id="max_age_secs-negative"),
    pytest.param(
        {"batch": {"max_age_secs": 86_401}},
        "batch.max_age_secs",
        ["at most 86400"],
        id="max_age_secs-over-a-day",
    ),
    pytest.param({"batch": {"max_bytes": 1023}}, "batch.max_bytes", ["at least 1024"], id="batch-max_bytes-small"),
    pytest.param({"batch": {"max_bytes": GIB + 1}}, "batch.max_bytes", [f"at most {GIB}"], id="batch-max_bytes-big"),
    pytest.param(
        {"spool": {"max_bytes": MIB - 1}},
        "spool.max_bytes",
        [f"at least {MIB}"],
        id="spool-max_bytes-below-1MiB",
    ),
    # delivery
    pytest.param({"delivery": {"max_attempts": 0}}, "delivery.max_attempts", ["at least 1"], id="max_attempts-zero"),
    pytest.param(
        {"delivery": {"max_attempts": "many"}}, "delivery.max_attempts", ["integer"], id="max_attempts-not-int"
    ),
    pytest.param({"delivery": {"max_age_secs": 0}}, "delivery.max_age_secs", ["greater than 0"], id="delivery-age-0"),
    # mappings
    pytest.param(
        {"mappings": [{"match": "a.*", "rule": "ocsf"}, {"match": "b.*", "rule": "cef"}]},
        "mappings[1].rule",
        ["'ocsf'", "'base_event'", "'cef'"],
        id="mappings-rule-choice",
    ),
    pytest.param(
        {"mappings": [{"match": "a.*"}]},
        "mappings[0].rule",
        ["required"],
        id="mappings-rule-missing",
    ),
    pytest.param(
        {"mappings": [{"match": "a.*", "rule": "sshd"}, {"match": "b.*", "rule": "base_event", "raw_data": False}]},
        "mappings[1].raw_data",
        ["must be true with rule base_event"],
        id="mappings-raw-data-base-event",
    ),
    pytest.param(
        {"mappings": [{"match": "a.*", "rule": "sshd", "raw_data": "sometimes"}]},
        "mappings[0].raw_data",
        ["boolean"],
        id="mappings-raw-data-not-bool",
    ),
]


@pytest.mark.parametrize(("overrides", "option", "phrases"), RULES)
def test_rule(overrides: dict[str, Any], option: str, phrases: list[str]) -> None:
    # GIVEN the minimal config broken in one place
    text = config_yaml(overrides)
    # WHEN parsed; THEN the error names the exact option and says the rule
    assert_says(issue_at(option, text), *phrases)


def test_ocsf_version_must_be_bundled_and_message_lists_them() -> None:
    # GIVEN an OCSF version that is not shipped
    issue = issue_at("ocsf.version", config_yaml({"ocsf": {"version": "9.9.9"}}))
    # THEN the message names the bad value and every bundled version
    assert_says(issue, "bundled", "'9.9.9'", *bundled_versions())


# --- unknown keys and "did you mean" -------------------------------------------------------

UNKNOWN_KEYS = [
    pytest.param({"bacth": {"max_age_secs": 5}}, "bacth", "batch", id="top"),
    pytest.param(
        {"destination": {"acount_id": "external"}}, "destination.acount_id", "destination.account_id", id="destination"
    ),
    pytest.param(
        {"destination": {"sources": [{"class_uid": 3002, "location": "ext/a/", "clas_uid": 1}]}},
        "destination.sources[0].clas_uid",
        "destination.sources[0].class_uid",
        id="sources[0]",
    ),
    pytest.param({"auth": {"externl_id": "x"}}, "auth.externl_id", "auth.external_id", id="auth"),
    pytest.param({"listen": {"forwrd": {}}}, "listen.forwrd", "listen.forward", id="listen"),
    pytest.param(
        {"listen": {"forward": {"adress": "0.0.0.0:1"}}},
        "listen.forward.adress",
        "listen.forward.address",
        id="listen.forward",
    ),
    pytest.param({"batch": {"max_age_sec": 5}}, "batch.max_age_sec", "batch.max_age_secs", id="batch"),
    pytest.param({"spool": {"max_byte": MIB}}, "spool.max_byte", "spool.max_bytes", id="spool"),
    pytest.param({"ocsf": {"verison": "1.1.0"}}, "ocsf.verison", "ocsf.version", id="ocsf"),
    pytest.param(
        {"mappings": [{"match": "a.*", "rule": "ocsf", "rulee": "x"}]},
        "mappings[0].rulee",
        "mappings[0].rule",
        id="mappings[0]",
    ),
    pytest.param(
        {"dead_letter": {"locaton": "file:///tmp/dl"}}, "dead_letter.locaton", "dead_letter.location", id="dead_letter"
    ),
]


@pytest.mark.parametrize(("overrides", "option", "suggestion"), UNKNOWN_KEYS)
def test_unknown_key_is_named_with_suggestion(overrides: dict[str, Any], option: str, suggestion: str) -> None:
    # GIVEN a misspelt option at some level
    issue = issue_at(option, config_yaml(overrides))
    # THEN it is named in full and the close known name is suggested in full
    assert_says(issue, "is not a known option", f"did you mean {suggestion}?")


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        pytest.param({"zebra": 1}, "zebra", id="top"),
        pytest.param({"batch": {"flush_when": "full"}}, "batch.flush_when", id="batch"),
    ],
)
def test_unknown_key_without_close_name_has_no_suggestion(overrides: dict[str, Any], option: str) -> None:
    issue = issue_at(option, config_yaml(overrides))
    assert_says(issue, "is not a known option")
    assert "did you mean" not in issue.message


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        pytest.param({"batch": {"interval_secs": 5}}, "batch.interval_secs", id="batch.interval_secs"),
        pytest.param(
            {"listen": {"forward": {"interface": "eth0"}}}, "listen.forward.interface", id="forward.interface"
        ),
        pytest.param({"strict": True}, "strict", id="top-strict"),
    ],
)
def test_unknown_key_named_like_a_union_tag_is_still_named(overrides: dict[str, Any], option: str) -> None:
    assert_says(issue_at(option, config_yaml(overrides)), "is not a known option")


# --- bugs in single rules (xfail until fixed) ----------------------------------------------


@pytest.mark.parametrize(
    ("auth", "destination", "option"),
    [
        pytest.param({**ROLE, "external_id": "${V}"}, {}, "auth.external_id", id="external_id"),
        pytest.param({**ROLE, "role_arn": "${V}"}, {}, "auth.role_arn", id="role_arn"),
        pytest.param({**ROLE, "role_session_name": "${V}"}, {}, "auth.role_session_name", id="role_session_name"),
        pytest.param({}, {"account_id": "${V}"}, "destination.account_id", id="account_id"),
        pytest.param({}, {"sse_kms_key_id": "${V}"}, "destination.sse_kms_key_id", id="sse_kms_key_id"),
    ],
)
def test_value_with_trailing_newline_is_rejected(
    auth: dict[str, Any], destination: dict[str, Any], option: str
) -> None:
    # GIVEN a value that is valid except for the trailing newline an env file or secret mount adds
    valid = {
        "auth.external_id": "ext-id-0001",
        "auth.role_arn": ROLE_ARN,
        "auth.role_session_name": "sink",
        "destination.account_id": "123456789012",
        "destination.sse_kms_key_id": "alias/securitylake",
    }[option]
    text = config_yaml({"auth": auth, "destination": destination})
    # THEN it is refused (or stripped), never kept with the newline
    try:
        config = parse(text, env={"V": valid + "\n"})
    except ConfigError as exc:
        assert option in {i.option for i in exc.issues}
        return
    kept = {
        "auth.external_id": config.auth.external_id.get_secret_value() if config.auth.external_id else None,
        "auth.role_arn": config.auth.role_arn,
        "auth.role_session_name": config.auth.role_session_name,
        "destination.account_id": config.destination.account_id,
        "destination.sse_kms_key_id": config.destination.sse_kms_key_id,
    }[option]
    assert kept == valid


@pytest.mark.parametrize(
    ("auth", "option"),
    [
        pytest.param({**ROLE, "role_session_name": "sesión"}, "auth.role_session_name", id="role_session_name"),
        pytest.param(
            {**ROLE, "role_arn": "arn:aws:iam::123456789012:role/SynqlyAccessÉcrire"}, "auth.role_arn", id="role-name"
        ),
    ],
)
def test_non_ascii_names_are_rejected(auth: dict[str, Any], option: str) -> None:
    issue_at(option, config_yaml({"auth": auth}))


def test_external_id_follows_the_integration_contract_not_sts() -> None:
    # STS itself allows "_" ([\\w+=,.@:/-]); the integration's contract allows only
    # A-Z a-z 0-9 + = , . @ : / -, and the sink enforces the contract.
    issue_at("auth.external_id", config_yaml({"auth": {**ROLE, "external_id": "tenant_0001"}}))


@pytest.mark.parametrize("address", ["[::1:24224", "1.2.3.4:24224:5"])
def test_malformed_forward_address_is_rejected(address: str) -> None:
    issue_at("listen.forward.address", config_yaml({"listen": {"forward": {"address": address}}}))


def test_invalid_only_source_reports_just_that_source() -> None:
    # GIVEN one source with a bad location
    text = config_yaml({"destination": {"sources": [{"class_uid": 3002, "location": "auth/"}]}})
    # THEN only that entry's location is reported
    assert {i.option for i in issues_of(text)} == {"destination.sources[0].location"}


# --- ${ENV} interpolation ------------------------------------------------------------------


def test_env_variable_is_substituted() -> None:
    # GIVEN options written as ${VAR} and those variables set
    text = config_yaml({"destination": {"url": "${LAKE_URL}"}, "batch": {"max_age_secs": "${AGE}"}})
    config = parse(text, env={"LAKE_URL": "file:///srv/lake", "AGE": "60"})
    # THEN the values are substituted before validation (so "60" becomes a number)
    assert config.destination.url == "file:///srv/lake"
    assert config.batch.max_age_secs == 60


def test_env_variable_inside_a_longer_string() -> None:
    config = parse(config_yaml({"destination": {"url": "file:///srv/${TENANT}/lake"}}), env={"TENANT": "acme"})
    assert config.destination.url == "file:///srv/acme/lake"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "file:///srv/default", id="unset-uses-default"),
        pytest.param({"LAKE_URL": "file:///srv/set"}, "file:///srv/set", id="set-wins-over-default"),
    ],
)
def test_env_variable_default(env: dict[str, str], expected: str) -> None:
    config = parse(config_yaml({"destination": {"url": "${LAKE_URL:-file:///srv/default}"}}), env=env)
    assert config.destination.url == expected


def test_env_default_applies_when_variable_is_empty() -> None:
    config = parse(config_yaml({"destination": {"url": "${LAKE_URL:-file:///srv/default}"}}), env={"LAKE_URL": ""})
    assert config.destination.url == "file:///srv/default"


def test_double_dollar_is_a_literal_dollar() -> None:
    # GIVEN $$ before something that looks like a variable, with that variable set
    config = parse(config_yaml({"spool": {"path": "/var/spool/$${HOME}/a$$b"}}), env={"HOME": "/root"})
    # THEN $$ becomes $ and nothing is substituted
    assert config.spool.path == Path("/var/spool/${HOME}/a$b")


@pytest.mark.parametrize(
    ("overrides", "option", "variable"),
    [
        pytest.param({"destination": {"url": "${LAKE_URL}"}}, "destination.url", "LAKE_URL", id="destination.url"),
        pytest.param(
            {
                "destination": {
                    "sources": [
                        {"class_uid": 3002, "location": "ext/a/"},
                        {"class_uid": 4001, "location": "ext/${SRC}/"},
                    ]
                }
            },
            "destination.sources[1].location",
            "SRC",
            id="list-item",
        ),
        pytest.param(
            {"auth": {**ROLE, "external_id": "${EXTERNAL_ID}"}},
            "auth.external_id",
            "EXTERNAL_ID",
            id="auth.external_id",
        ),
        pytest.param(
            {"mappings": [{"match": "${MATCH}", "rule": "ocsf"}]}, "mappings[0].match", "MATCH", id="mappings[0].match"
        ),
    ],
)
def test_unset_env_variable_names_the_option_where_it_is_used(
    overrides: dict[str, Any], option: str, variable: str
) -> None:
    # GIVEN ${VAR} with VAR unset and no default
    text = config_yaml(overrides)
    # THEN the error names the option where it is used, and the variable
    assert_says(issue_at(option, text, env={"UNRELATED": "x"}), f"environment variable {variable} is not set")


# --- YAML and document shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        pytest.param("destination:\n  url: file:///tmp/x\n  sources: @oops\n", "@", id="reserved-indicator"),
        pytest.param("destination:\n  url: file:///tmp/x\n\tsources: []\n", "\t", id="tab-indent"),
    ],
)
def test_invalid_yaml_names_line_and_column(text: str, bad: str) -> None:
    # GIVEN text that is not YAML at a known character
    offset = text.index(bad)
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    # WHEN parsed with an origin; THEN the error names the origin, line and column
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={}, origin="sink.yaml")
    assert "sink.yaml is not valid YAML" in str(info.value)
    assert f"line {line}, column {column}" in str(info.value)


@pytest.mark.parametrize("text", ["- destination\n- auth\n", "just words\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    # GIVEN a YAML document that is not a mapping
    kind = type(yaml.safe_load(text)).__name__
    with pytest.raises(ConfigError) as info:
        parse(text)
    # THEN the error says so and names what it got
    assert "must be a mapping of option groups" in str(info.value)
    assert f"got {kind}" in str(info.value)


# --- several errors at once ----------------------------------------------------------------


def test_several_field_errors_are_all_reported() -> None:
    # GIVEN one broken rule in each of several groups
    text = config_yaml(
        {
            "bacth": {},
            "destination": {"account_id": "nobody"},
            "listen": {"forward": {"address": "nowhere"}},
            "batch": {"max_age_secs": 0},
            "spool": {"max_bytes": 1},
            "mappings": [{"match": "x", "rule": "nope"}],
        }
    )
    # THEN every one of them is reported, each under its own option
    options = {i.option for i in issues_of(text)}
    assert options >= {
        "bacth",
        "destination.account_id",
        "listen.forward.address",
        "batch.max_age_secs",
        "spool.max_bytes",
        "mappings[0].rule",
    }


def test_several_auth_combination_errors_are_all_reported() -> None:
    # GIVEN a role with the wrong name, no external_id, and a key without its secret
    text = config_yaml({"auth": {"role_arn": "arn:aws:iam::123456789012:role/Other", "access_key_id": ACCESS_KEY_ID}})
    options = [i.option for i in issues_of(text)]
    # THEN all three are reported
    assert sorted(options) == sorted(["auth.role_arn", "auth.external_id", "auth.secret_access_key"])


def test_several_cross_option_errors_are_all_reported() -> None:
    # GIVEN a bad destination URL and a class missing from the OCSF version (both checked after fields)
    text = config_yaml(
        {"destination": {"url": "ftp://x/y", "sources": [{"class_uid": NO_SUCH_UID, "location": "ext/a/"}]}}
    )
    options = {i.option for i in issues_of(text)}
    assert options == {"destination.url", "destination.sources[0].class_uid"}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"auth": {"external_id": "ab"}, "destination": {"sources": DELETE}},
            {"auth.external_id", "destination.sources"},
            id="auth-combination-plus-missing-sources",
        ),
        pytest.param(
            {"auth": {"role_arn": ROLE_ARN}, "batch": {"max_age_secs": 0}},
            {"auth.external_id", "batch.max_age_secs"},
            id="auth-combination-plus-batch",
        ),
    ],
)
def test_auth_combination_errors_are_reported_beside_field_errors(
    overrides: dict[str, Any], expected: set[str]
) -> None:
    # GIVEN a broken auth combination and a broken field elsewhere; THEN both are reported
    assert {i.option for i in issues_of(config_yaml(overrides))} >= expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"destination": {"url": "ftp://x/y"}, "batch": {"max_age_secs": 0}},
            {"destination.url", "batch.max_age_secs"},
            id="bad-url-plus-batch",
        ),
        pytest.param(
            {"destination": {"sources": [{"class_uid": NO_SUCH_UID, "location": "ext/a/"}]}, "spool": {"max_bytes": 1}},
            {"destination.sources[0].class_uid", "spool.max_bytes"},
            id="unknown-class-plus-spool",
        ),
        pytest.param(
            {"destination": {"url": "${LAKE_URL}"}, "auth": {**ROLE, "external_id": "${EXTERNAL_ID}"}},
            {"destination.url", "auth.external_id"},
            id="two-unset-variables",
        ),
    ],
)
def test_errors_from_different_phases_are_all_reported(overrides: dict[str, Any], expected: set[str]) -> None:
    # GIVEN errors that different phases (interpolation, fields, cross-option checks) find
    # THEN all of them are reported at once
    assert {i.option for i in issues_of(config_yaml(overrides))} >= expected


# --- secrets -------------------------------------------------------------------------------

SECRET_ACCESS_KEY = "wJalrXUtnFEMIzzK7MDENGzzSecretKeyValue0042"  # noqa: S105 (a marker value to search for, not a credential)
SESSION_TOKEN = "FwoGZXIvYXdzEzzSessionTokenValue0042zzABCD"  # noqa: S105 (a marker value to search for, not a credential)
EXTERNAL_ID = "ExtIdValue-0042-zz"
SECRETS = [SECRET_ACCESS_KEY, SESSION_TOKEN, EXTERNAL_ID]
SECRET_AUTH = {
    "role_arn": ROLE_ARN,
    "external_id": EXTERNAL_ID,
    "access_key_id": ACCESS_KEY_ID,
    "secret_access_key": SECRET_ACCESS_KEY,
    "session_token": SESSION_TOKEN,
}


def assert_no_secret(text: str, secrets: list[str] = SECRETS) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret!r} leaked"


def test_secrets_are_kept_but_never_shown() -> None:
    # GIVEN a config with every secret set to a distinctive value
    config = parse(config_yaml({"auth": SECRET_AUTH}))
    auth = config.auth
    # THEN the values are available to the code that needs them
    assert auth.secret_access_key is not None
    assert auth.secret_access_key.get_secret_value() == SECRET_ACCESS_KEY
    assert auth.session_token is not None
    assert auth.session_token.get_secret_value() == SESSION_TOKEN
    assert auth.external_id is not None
    assert auth.external_id.get_secret_value() == EXTERNAL_ID
    # AND none of them appears in str, repr, a JSON dump or the resolved plan
    plan = resolve_plan(config)
    for shown in (str(config), repr(config), str(auth), repr(auth), config.model_dump_json(), json.dumps(plan)):
        assert_no_secret(shown)
    # AND the plan still says each secret is set (masked, not dropped)
    for name in ("secret_access_key", "session_token", "external_id"):
        assert plan["auth"][name], f"plan drops auth.{name} instead of masking it"
    assert ACCESS_KEY_ID not in json.dumps(plan)


@pytest.mark.parametrize(
    ("auth", "env", "option", "secret"),
    [
        pytest.param(
            {**ROLE, "external_id": EXTERNAL_ID + " !"}, {}, "auth.external_id", EXTERNAL_ID, id="external_id-bad-char"
        ),
        pytest.param(
            {**ROLE, "external_id": EXTERNAL_ID * 70}, {}, "auth.external_id", EXTERNAL_ID, id="external_id-too-long"
        ),
        pytest.param(
            {**ROLE, "external_id": 778_123_456_789}, {}, "auth.external_id", "778123456789", id="external_id-number"
        ),
        pytest.param(
            {**ROLE, "external_id": [EXTERNAL_ID]}, {}, "auth.external_id", EXTERNAL_ID, id="external_id-list"
        ),
        pytest.param(
            {**ROLE, "external_id": "${EXT}"},
            {"EXT": EXTERNAL_ID + "\t!"},
            "auth.external_id",
            EXTERNAL_ID,
            id="external_id-env",
        ),
        pytest.param({"external_id": EXTERNAL_ID}, {}, "auth.external_id", EXTERNAL_ID, id="external_id-without-role"),
        pytest.param(
            {"access_key_id": ACCESS_KEY_ID, "secret_access_key": 918_273_645_546_372_819},
            {},
            "auth.secret_access_key",
            "918273645546372819",
            id="secret-number",
        ),
        pytest.param(
            {"access_key_id": ACCESS_KEY_ID, "secret_access_key": {"value": SECRET_ACCESS_KEY}},
            {},
            "auth.secret_access_key",
            SECRET_ACCESS_KEY,
            id="secret-mapping",
        ),
        pytest.param(
            {"secret_access_key": SECRET_ACCESS_KEY}, {}, "auth.access_key_id", SECRET_ACCESS_KEY, id="secret-alone"
        ),
        pytest.param({"session_token": SESSION_TOKEN}, {}, "auth.session_token", SESSION_TOKEN, id="token-alone"),
        pytest.param(
            {**STATIC, "session_token": [SESSION_TOKEN]}, {}, "auth.session_token", SESSION_TOKEN, id="token-list"
        ),
        pytest.param(
            {**STATIC, "session_token": 4_242_424_242}, {}, "auth.session_token", "4242424242", id="token-number"
        ),
    ],
)
def test_config_errors_never_show_secret_values(
    auth: dict[str, Any], env: dict[str, str], option: str, secret: str
) -> None:
    # GIVEN a bad value (or a misplaced good value) in a secret option
    with pytest.raises(ConfigError) as info:
        parse(config_yaml({"auth": auth}), env=env)
    # THEN the error names that option but never shows the value
    assert option in {i.option for i in info.value.issues}, str(info.value)
    assert_no_secret(error_text(info.value), [secret])


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param([{"secret_access_key": SECRET_ACCESS_KEY}], id="auth-as-list"),
        pytest.param(f"secret_access_key={SECRET_ACCESS_KEY}", id="auth-as-string"),
    ],
)
def test_misshapen_auth_group_does_not_echo_secrets(auth: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config_yaml({"auth": auth}))
    assert "auth" in {i.option for i in info.value.issues}
    assert_no_secret(error_text(info.value), [SECRET_ACCESS_KEY])


def test_spool_max_bytes_defaults_to_a_tenth_of_free_disk_capped(tmp_path: Path) -> None:
    # (free space moves a little between the two looks, hence the tolerance)
    stat = os.statvfs(tmp_path)
    expected = min(SPOOL_MAX_BYTES_CAP, stat.f_bavail * stat.f_frsize // 10)
    resolved = SpoolConfig(path=tmp_path / "not" / "yet" / "made").resolved_max_bytes()
    assert abs(resolved - expected) <= expected // 100
    assert SpoolConfig(path=tmp_path, max_bytes=5 * 1024 * 1024).resolved_max_bytes() == 5 * 1024 * 1024


@pytest.mark.parametrize("location", ["gs://bucket/dead/", "https://s3.amazonaws.com/bucket/", "file://relative/dir"])
def test_dead_letter_location_must_be_local_or_s3(location: str) -> None:
    # GIVEN a dead-letter location that is neither a local directory nor s3://; THEN the option is named
    issue = issue_at("dead_letter.location", config_yaml({"dead_letter": {"location": location}}))
    assert location in issue.message


def test_dead_letter_location_file_url_is_a_directory() -> None:
    config = parse(config_yaml({"dead_letter": {"location": "file:///var/tmp/dead"}}))
    assert str(config.dead_letter_path) == "/var/tmp/dead"
    assert resolve_plan(config)["dead_letter"] == {"kind": "file", "location": "/var/tmp/dead"}


LAKE_BUCKET = "aws-security-data-lake-us-east-1-abc123"
S3_LAKE = {"destination": {"url": f"s3://{LAKE_BUCKET}/"}}


@pytest.mark.parametrize(
    ("location", "bucket", "prefix"),
    [
        ("s3://dead-letters/sink/", "dead-letters", "sink/"),
        ("s3://dead-letters/a/b", "dead-letters", "a/b/"),
        ("s3://dead-letters", "dead-letters", ""),
        (f"s3://{LAKE_BUCKET}/dead-letters/", LAKE_BUCKET, "dead-letters/"),  # same bucket, outside ext/auth/
        (f"s3://{LAKE_BUCKET}/ext/authz/", LAKE_BUCKET, "ext/authz/"),  # a sibling, not inside
    ],
)
def test_dead_letter_location_may_be_an_s3_prefix(location: str, bucket: str, prefix: str) -> None:
    # GIVEN an S3 lake and an s3:// dead-letter location outside its source locations
    config = parse(config_yaml({**S3_LAKE, "dead_letter": {"location": location}}))
    # THEN dead letters are spooled in the spool's directory and the plan names the S3 prefix
    assert config.dead_letter.is_s3
    assert config.dead_letter_path == config.spool.path / "dead_letter"
    plan = resolve_plan(config)["dead_letter"]
    assert (plan["kind"], plan["bucket"], plan["prefix"]) == ("s3", bucket, prefix)
    assert plan["location"] == f"s3://{bucket}/{prefix}"
    assert (plan["max_age_secs"], plan["max_bytes"]) == (300, 8 * MIB)


@pytest.mark.parametrize(
    ("url", "location", "how"),
    [
        (f"s3://{LAKE_BUCKET}/", f"s3://{LAKE_BUCKET}/ext/auth/", "is"),
        (f"s3://{LAKE_BUCKET}/", f"s3://{LAKE_BUCKET}/ext/auth/dead/", "is inside"),
        (f"s3://{LAKE_BUCKET}/", f"s3://{LAKE_BUCKET}/ext/", "contains"),
        (f"s3://{LAKE_BUCKET}/", f"s3://{LAKE_BUCKET}", "contains"),
        (f"s3://{LAKE_BUCKET}/lake/", f"s3://{LAKE_BUCKET}/lake/ext/auth/1/", "is inside"),
    ],
)
def test_dead_letter_location_inside_a_source_location_is_rejected(url: str, location: str, how: str) -> None:
    # GIVEN dead letters aimed at (or above) a Security Lake custom-source location of the same bucket
    text = config_yaml({"destination": {"url": url}, "dead_letter": {"location": location}})
    # THEN the option and the rule are named
    issue = issue_at("dead_letter.location", text)
    assert_says(issue, "must be outside the Security Lake source locations", f" {how} s3://{LAKE_BUCKET}/")


def test_dead_letter_location_outside_the_lake_prefix_is_accepted() -> None:
    # GIVEN a lake under lake/ and dead letters at ext/auth/ of the bucket root: not a source location
    text = config_yaml(
        {"destination": {"url": f"s3://{LAKE_BUCKET}/lake/"}, "dead_letter": {"location": f"s3://{LAKE_BUCKET}/ext/"}}
    )
    assert parse(text).dead_letter.is_s3


def test_s3_dead_letters_need_an_s3_destination() -> None:
    # GIVEN a file:// lake: there are no S3 credentials, region or endpoint to ship dead letters with
    issue = issue_at("dead_letter.location", config_yaml({"dead_letter": {"location": "s3://dead-letters/x/"}}))
    assert_says(issue, "needs an S3 destination.url")


def test_s3_dead_letter_rule_is_reported_beside_other_errors() -> None:
    # GIVEN a file:// lake with s3:// dead letters and another broken option: both are reported at once
    found = issues_of(config_yaml({"dead_letter": {"location": "s3://dead-letters/x/"}, "batch": {"max_bytes": 1}}))
    assert {"dead_letter.location", "batch.max_bytes"} <= {i.option for i in found}


@pytest.mark.parametrize(
    "location", ["s3://Dead_Letters/x/", "s3:///x/", "s3://dead-letters/a/../b/", "s3://dead-letters/x?y=1"]
)
def test_malformed_s3_dead_letter_location_is_rejected(location: str) -> None:
    issues = [i for i in issues_of(config_yaml({**S3_LAKE, "dead_letter": {"location": location}}))]
    assert [i.option for i in issues] == ["dead_letter.location"]  # reported once, naming the option


@pytest.mark.parametrize("name", ["max_age_secs", "max_bytes"])
def test_dead_letter_rotation_options_only_apply_to_s3(name: str) -> None:
    issue = issue_at(f"dead_letter.{name}", config_yaml({"dead_letter": {name: 4096}}))
    assert_says(issue, "only applies with an s3:// dead_letter.location")


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [("max_age_secs", 0, "greater than 0"), ("max_age_secs", 86_401, "at most 86400"), ("max_bytes", 10, "at least")],
)
def test_dead_letter_rotation_bounds(name: str, value: int, rule: str) -> None:
    dead_letter = {"location": "s3://dead-letters/x/", name: value}
    issue = issue_at(f"dead_letter.{name}", config_yaml({**S3_LAKE, "dead_letter": dead_letter}))
    assert_says(issue, rule)


def test_s3_dead_letter_rotation_is_configurable() -> None:
    dead_letter = {"location": "s3://dead-letters/x/", "max_age_secs": 60, "max_bytes": 1024 * 1024}
    plan = resolve_plan(parse(config_yaml({**S3_LAKE, "dead_letter": dead_letter})))["dead_letter"]
    assert (plan["max_age_secs"], plan["max_bytes"]) == (60, 1024 * 1024)
