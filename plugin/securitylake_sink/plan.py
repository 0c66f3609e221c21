"""Rules that span option groups, and the resolved plan that ``check-config`` prints.

Nothing here does network I/O; secrets are masked before anything leaves this module.
"""

from __future__ import annotations

__all__ = [
    "OPT_DEAD_LETTER",
    "check",
    "cross_issues",
    "dead_letter_destination",
    "destination_of",
    "resolve_plan",
    "warnings_for",
]

import dataclasses
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from securitylake_sink.config import MASK, Config
from securitylake_sink.errors import ConfigError, ConfigIssue, SchemaError
from securitylake_sink.lake.url import Destination, parse_destination, parse_s3_location
from securitylake_sink.ocsf.schema import load_schema

OPT_DEAD_LETTER = "dead_letter.location"


def destination_of(config: Config) -> Destination:
    """The parsed destination URL with its region inferred (no network I/O)."""
    dest = config.destination
    return parse_destination(dest.url, region=dest.region, endpoint=dest.endpoint)


def dead_letter_destination(config: Config, lake: Destination) -> Destination | None:
    """Where s3:// dead letters go: the lake's S3 settings (region, endpoint, addressing, and so
    credentials) with the dead-letter bucket and prefix; None for local dead letters."""
    location = config.dead_letter.location
    if location is None or not config.dead_letter.is_s3 or lake.kind != "s3":
        return None
    bucket, prefix = parse_s3_location(location, OPT_DEAD_LETTER)
    path_style = lake.path_style or ("." in bucket and not (lake.endpoint_url or "").startswith("http://"))
    return dataclasses.replace(lake, bucket=bucket, prefix=prefix, path_style=path_style, access_point_arn=None)


def _dead_letter_issues(
    dead_letter: str | None, lake: Destination | None, locations: Sequence[str]
) -> list[ConfigIssue]:
    """An s3:// dead-letter location needs an S3 lake, and must not overlap a source location."""
    if dead_letter is None or not dead_letter.startswith("s3://"):
        return []
    try:
        bucket, prefix = parse_s3_location(dead_letter, OPT_DEAD_LETTER)
    except ConfigError:
        return []  # DeadLetterConfig reports a malformed location itself
    if lake is None:
        return []  # destination.url is broken: that issue is reported already
    if lake.kind != "s3":
        return [
            ConfigIssue(
                OPT_DEAD_LETTER,
                "an s3:// location needs an S3 destination.url: dead letters are shipped with the "
                "destination's credentials, region and endpoint; use a file:// directory with a file:// lake",
            )
        ]
    issues: list[ConfigIssue] = []
    for location in dict.fromkeys(locations):
        full = lake.prefix + location
        if bucket != lake.bucket or not (prefix.startswith(full) or full.startswith(prefix)):
            continue
        how = "is" if prefix == full else ("is inside" if prefix.startswith(full) else "contains")
        issues.append(
            ConfigIssue(
                OPT_DEAD_LETTER,
                f"must be outside the Security Lake source locations: s3://{bucket}/{prefix} {how} "
                f"s3://{bucket}/{full} (destination.sources), where Security Lake reads only Parquet",
            )
        )
    return issues


def cross_issues(
    url: str | None,
    region: str | None,
    endpoint: str | None,
    version: str,
    class_uids: list[tuple[int, Any]],
    *,
    dead_letter: str | None = None,
    locations: Sequence[str] = (),
) -> list[ConfigIssue]:
    """The rules that span options: the destination URL with its region and endpoint, each
    ``(index, class_uid)`` of ``destination.sources`` against the OCSF version, and an s3://
    ``dead_letter`` location against the destination and its source ``locations``."""
    issues: list[ConfigIssue] = []
    lake: Destination | None = None
    if url is not None:
        try:
            lake = parse_destination(url, region=region, endpoint=endpoint)
        except ConfigError as exc:
            issues.extend(exc.issues)
    issues.extend(_dead_letter_issues(dead_letter, lake, locations))
    schema = load_schema(version)
    for i, class_uid in class_uids:
        if class_uid == "*" or isinstance(class_uid, bool) or not isinstance(class_uid, int):
            continue
        try:
            schema.class_info(class_uid)
        except SchemaError:
            issues.append(
                ConfigIssue(
                    f"destination.sources[{i}].class_uid", f"OCSF {schema.version} has no event class {class_uid}"
                )
            )
    return issues


def _bound_classes(config: Config) -> tuple[list[tuple[str, int]], list[ConfigIssue]]:
    """(who, class_uid) for every class the mapping rules produce, and the rules that do not
    compile for ``ocsf.version`` (each issue names ``mappings[i].rule``)."""
    from securitylake_sink.mapping.route import OCSF, compile_named  # noqa: PLC0415 (heavy import)

    schema = load_schema(config.ocsf.version)
    classes: list[tuple[str, int]] = []
    issues: list[ConfigIssue] = []
    for i, binding in enumerate(config.mappings):
        if binding.rule == OCSF:
            continue
        try:
            rule = compile_named(binding.rule, schema)
        except ConfigError as exc:
            issues.append(ConfigIssue(f"mappings[{i}].rule", str(exc)))
            continue
        classes.extend((f"mappings[{i}].rule {rule.name}", uid) for uid in rule.classes)
    if config.mappings_fallback == "base_event":
        classes.append(("mappings_fallback: base_event", 0))
    return classes, issues


def check(config: Config) -> None:
    """Raise ConfigError for every cross-option rule the config breaks."""
    dest = config.destination
    uids = [(i, s.class_uid) for i, s in enumerate(dest.sources)]
    issues = cross_issues(
        dest.url,
        dest.region,
        dest.endpoint,
        config.ocsf.version,
        uids,
        dead_letter=config.dead_letter.location,
        locations=[s.location for s in dest.sources],
    )
    issues.extend(_bound_classes(config)[1])
    if issues:
        raise ConfigError(issues)


def _mapping_warnings(config: Config, to_security_lake: bool) -> list[str]:
    out: list[str] = []
    schema = load_schema(config.ocsf.version)
    for who, class_uid in _bound_classes(config)[0]:
        caption = schema.class_info(class_uid).caption
        if class_uid == 0 and to_security_lake:
            out.append(
                f"{who} makes Base Events (class 0) for a Security Lake bucket: Security Lake registers "
                "no custom source of class 0 and AWS's OCSF validation tool rejects it; Base Events "
                "suit a local lake or another OCSF consumer (mappings_fallback: dead_letter is the default)"
            )
        if config.destination.location_for(class_uid) is None:
            out.append(
                f"{who} maps to class {class_uid} ({caption}) but destination.sources has no location "
                "for it: those events go to the dead letters"
            )
    return list(dict.fromkeys(out))


def warnings_for(config: Config) -> list[str]:
    """Things that are allowed but that a user of a real lake should hear about."""
    out: list[str] = []
    dest = destination_of(config)
    if dest.kind == "s3":
        if config.batch.max_age_secs < 300:
            out.append(
                "batch.max_age_secs below 300 writes objects more often than Security Lake's "
                "5-minute cadence; queries over many small objects are slower"
            )
        if any(s.class_uid == "*" for s in config.destination.sources):
            out.append(
                "destination.sources has a '*' location: Security Lake registers one OCSF class "
                "per custom source, so give each class its own location"
            )
        if config.auth.mode == "static":
            out.append("auth uses static access keys: supported, but an IAM role is recommended")
    out.extend(_mapping_warnings(config, dest.kind == "s3"))
    return out


def _mask(value: str | SecretStr | None, keep: int = 0) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if keep and len(text) > 2 * keep + 4:
        return f"{text[:keep]}{MASK}{text[-keep:]}"
    return MASK


def resolve_plan(config: Config) -> dict[str, Any]:
    """The resolved plan as plain JSON-ready data, with every secret masked."""
    dest = destination_of(config)
    auth = config.auth
    schema = load_schema(config.ocsf.version)
    sources = []
    for source in config.destination.sources:
        entry: dict[str, Any] = {"class_uid": source.class_uid, "location": source.location}
        if source.class_uid != "*":
            entry["class_name"] = schema.class_info(source.class_uid).caption
        sources.append(entry)
    return {
        "destination": {
            "kind": dest.kind,
            "url": config.destination.url,
            "bucket": dest.bucket,
            "prefix": dest.prefix,
            "path": str(dest.local_path) if dest.local_path else None,
            "region": dest.region,
            "region_source": dest.region_source,
            "partition": dest.partition,
            "path_style": dest.path_style,
            "endpoint": dest.endpoint_url,
            "account_id": config.destination.account_id,
            "sources": sources,
        },
        "auth": {
            "mode": auth.mode,
            "role_arn": auth.role_arn,
            "external_id": _mask(auth.external_id),
            "role_session_name": auth.role_session_name,
            "duration_seconds": auth.duration_seconds,
            "role_name_prefix": auth.role_name_prefix,
            "access_key_id": _mask(auth.access_key_id, keep=4),
            "secret_access_key": _mask(auth.secret_access_key),
            "session_token": _mask(auth.session_token),
            "sts_endpoint": auth.sts_endpoint,
        },
        "listen": {"forward": config.listen.forward.model_dump()},
        "batch": config.batch.model_dump(),
        "spool": {
            "path": str(config.spool.path),
            "max_bytes": config.spool.max_bytes,
            "dedup_tokens": config.spool.dedup_tokens,
            "dedup_secs": config.spool.dedup_secs,
        },
        "delivery": config.delivery.model_dump(),
        "ocsf": {"version": config.ocsf.version},
        "mappings": [m.model_dump() for m in config.mappings],
        "mappings_fallback": config.mappings_fallback,
        "dead_letter": _dead_letter_plan(config, dest),
        "workers": _workers_plan(config),
        "warnings": warnings_for(config),
    }


def _dead_letter_plan(config: Config, lake: Destination) -> dict[str, Any]:
    """Where dead letters go: a local directory, or an S3 prefix shipped to from the spool's."""
    target = dead_letter_destination(config, lake)
    if target is None:
        return {"kind": "file", "location": str(config.dead_letter_path)}
    return {
        "kind": "s3",
        "location": f"s3://{target.bucket}/{target.prefix}",
        "bucket": target.bucket,
        "prefix": target.prefix,
        "spool_directory": str(config.dead_letter_path),
        "max_age_secs": config.dead_letter.max_age_secs,
        "max_bytes": config.dead_letter.max_bytes,
    }


def _workers_plan(config: Config) -> dict[str, Any]:
    """The worker count, each worker's spool, metrics address and dead letters, and the spools
    an earlier run left that a start would drain (a look at ``spool.path``, no lock taken)."""
    from securitylake_sink.workers import orphan_spools, worker_config  # noqa: PLC0415

    count = config.workers
    workers = []
    if count > 1:
        for index in range(count):
            worker = worker_config(config, index)
            metrics = worker.listen.metrics
            workers.append(
                {
                    "index": index,
                    "spool": str(worker.spool.path),
                    "spool_max_bytes": None if config.spool.max_bytes is None else config.spool.max_bytes // count,
                    "metrics": metrics.address if metrics.enabled else None,
                    "dead_letter": str(worker.dead_letter_path),
                }
            )
    return {"count": count, "workers": workers, "orphan_spools": [str(p) for p in orphan_spools(config, count)]}
