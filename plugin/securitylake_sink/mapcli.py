"""``securitylake-sink map``: records through one rule (``--rule``) or a config's mappings (``-c``,
``--tag``): OCSF events as JSON lines on stdout, dead letters on stderr; exit 0 even with dead
letters, 2 on a bad rule or config."""

from __future__ import annotations

__all__ = ["event_json", "list_rules", "read_records", "run_map"]

import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import msgpack

from securitylake_sink.config import load_config
from securitylake_sink.errors import ConfigError
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.route import builtin_rule_names, compile_named, resolve_rule
from securitylake_sink.ocsf.schema import DEFAULT_VERSION, load_schema

EXIT_OK, EXIT_CONFIG = 0, 2
BATCH_RECORDS = 10_000


def _compact(value: Any) -> Any:
    """An Arrow row as the JSON an OCSF consumer expects: no nulls, empty objects dropped,
    ``unmapped`` (a list of key/value pairs) as an object."""
    if isinstance(value, dict):
        out = {k: _compact(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v not in ({}, [])}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): v for k, v in value}
        return [_compact(v) for v in value]
    return value


def event_json(row: Mapping[str, Any]) -> str:
    """One event row (``RecordBatch.to_pylist`` item) as a compact JSON line."""
    return json.dumps(_compact(dict(row)), ensure_ascii=False, sort_keys=True, default=str)


def _safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return value


def read_records(stream: IO[bytes], *, as_msgpack: bool) -> Iterator[Mapping[str, Any]]:
    """Records from ndjson (a line that is not a JSON object is taken as ``{"log": line}``) or
    from msgpack (maps, or Fluent ``[time, map]`` entries)."""
    if as_msgpack:
        for item in msgpack.Unpacker(stream, raw=False, strict_map_key=False):
            record = item[1] if isinstance(item, list | tuple) and len(item) == 2 else item
            if isinstance(record, dict):
                yield record
        return
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        yield record if isinstance(record, dict) else {"log": line}


def list_rules(out: IO[str], version: str = DEFAULT_VERSION) -> int:
    """Print each built-in rule with the classes it produces."""
    schema = load_schema(version)
    for name in builtin_rule_names():
        rule = compile_named(name, schema)
        classes = ", ".join(f"{uid} {schema.class_info(uid).caption}" for uid in rule.classes)
        print(f"{name:18} {classes:50} {rule.description}", file=out)
    return EXIT_OK


def _mapper(rule: str | None, config_path: str | None, version: str | None) -> tuple[Mapper, str]:
    if config_path is not None:
        config = load_config(config_path)
        schema = load_schema(config.ocsf.version)
        bindings = [(b.match, b.rule, b.raw_data) for b in config.mappings]
        return Mapper(schema, bindings, config.mappings_fallback), "map"
    assert rule is not None
    try:
        name = resolve_rule(rule, Path.cwd())
    except ValueError as exc:
        raise ConfigError(str(exc), "--rule") from None
    return Mapper(load_schema(version or DEFAULT_VERSION), [("*", name)], "dead_letter"), Path(rule).stem


def run_map(
    *,
    rule: str | None,
    config_path: str | None,
    tag: str | None,
    source: str | None,
    as_msgpack: bool,
    version: str | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Map ``source`` (a file, or stdin for None or ``-``) and print events and dead letters."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        mapper, default_tag = _mapper(rule, config_path, version)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=err)
        return EXIT_CONFIG
    tag = tag or default_tag
    stream = sys.stdin.buffer if source in (None, "-") else Path(source).open("rb")  # noqa: SIM115
    try:
        batch: list[Mapping[str, Any]] = []
        for record in read_records(stream, as_msgpack=as_msgpack):
            batch.append(record)
            if len(batch) >= BATCH_RECORDS:
                _map_batch(mapper, tag, batch, out, err)
                batch = []
        if batch:
            _map_batch(mapper, tag, batch, out, err)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return EXIT_OK


def _map_batch(mapper: Mapper, tag: str, records: list[Mapping[str, Any]], out: IO[str], err: IO[str]) -> None:
    now_ms = time.time_ns() // 1_000_000
    outcome = mapper.map_records(tag, records, [now_ms] * len(records))
    events: dict[int, str] = {}
    for _, rows in outcome.mapped:
        for row, event in zip(rows.rows.to_pylist(), rows.batch.to_pylist(), strict=True):
            events[row] = event_json(event)
    for row in sorted(events):
        print(events[row], file=out)
    for row, (rule, reason) in sorted(outcome.failed.items()):
        letter = {"tag": tag, "rule": rule, "reason": reason, "record": _safe(records[row])}
        print(json.dumps(letter, ensure_ascii=False, default=str), file=err)
    if outcome.dropped:
        print(json.dumps({"tag": tag, "dropped": len(outcome.dropped)}), file=err)
