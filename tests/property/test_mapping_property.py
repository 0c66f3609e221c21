"""Property: whatever records arrive, every one ends up exactly once: mapped, dead-lettered, or
dropped when the fallback is drop. Never two of those, never none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securitylake_sink.columnar import is_pruning
from securitylake_sink.mapping.mapper import Mapper
from securitylake_sink.mapping.route import builtin_rule_names
from securitylake_sink.ocsf.schema import load_schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mapping"
T = 1_732_795_200_000
SCHEMA = load_schema("1.1.0")
RULES = [r for r in builtin_rule_names() if r != "base_event"]
MAPPERS = {
    fallback: Mapper(SCHEMA, [("*", rule) for rule in RULES], fallback)
    for fallback in ("dead_letter", "base_event", "drop")
}
REAL = [
    json.loads(line)
    for path in sorted(FIXTURES.glob("*.input.ndjson"))
    for line in path.read_text(encoding="utf-8").splitlines()
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    # bytes that are not UTF-8, as the forward decoder keeps them (surrogate escapes)
    st.binary(max_size=10).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["\ud800", "a\udbffb", "\udfff"]),  # lone surrogates, as JSON "\ud800" decodes
    st.binary(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(
    ["log", "message", "class_uid", "time", "ts", "eventName", "eventSource", "verb", "auditID", "event_type",
     "EventID", "StringInserts", "id.orig_h", "conn_state", "query", "ident", "host", "user", "remote", "code", "x"]
)  # fmt: skip
lines = st.sampled_from(
    [
        "Mar 16 11:11:11 bastion-1 sshd[1]: Accepted password for erin from 198.51.100.9 port 40100 ssh2",
        "Mar 16 11:11:11 bastion-1 sshd[1]: Failed password for root from not-an-ip port 99999999999 ssh2",
        '192.0.2.1 - - [05/Feb/2024:13:45:01 +0000] "GET / HTTP/1.1" 999 5 "-" "curl/8"',
        '192.0.2.1 - - [32/Foo/2024:99:99:99 +0000] "GET / HTTP/1.1" 200 - "-" "-"',
        "type=SYSCALL msg=audit(1.2:3): arch=c000003e syscall=59 success=yes pid=x exe=ZZ",
        '[INFO] 10.0.0.1:1 - 1 "A IN a. udp 1 false 1" NOERROR qr 1 1.0s',
        "<999>Foo 99 99:99:99 host app[1]: x",
        "Mar 16 11:11:11 bastion-1 sshd[1]: Accepted password for er\udcffin from 198.51.100.9 port 1 ssh2",
        "",
    ]
)
records = st.one_of(
    st.dictionaries(keys, values, max_size=6),
    st.builds(lambda line, extra: {"log": line, **extra}, lines, st.dictionaries(keys, values, max_size=2)),
    st.builds(lambda base, extra: {**base, **extra}, st.sampled_from(REAL), st.dictionaries(keys, values, max_size=2)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records, min_size=1, max_size=25), fallback=st.sampled_from(sorted(MAPPERS)))
def test_every_record_ends_up_exactly_once(batch: list[dict[str, Any]], fallback: str) -> None:
    # GIVEN random records, well-formed or not, under every built-in rule and a fallback
    outcome = MAPPERS[fallback].map_records("any.tag", batch, [T] * len(batch))
    # WHEN they are mapped; THEN each index is in exactly one of mapped, failed, dropped
    seen: list[int] = [row for _, part in outcome.mapped for row in part.rows.to_pylist()]
    seen += list(outcome.failed) + list(outcome.dropped)
    assert sorted(seen) == list(range(len(batch)))
    if fallback != "drop":
        assert not outcome.dropped
    # AND no record tripped the engine itself (those would be dead letters saying "internal error")
    assert not [why for _, why in outcome.failed.values() if "internal error" in why]
    # AND every mapped batch is in its class's fixed schema, every row with a time, its rows in
    # the records' order
    for _, part in outcome.mapped:
        assert is_pruning(part.batch.schema, SCHEMA.arrow_schema(part.class_uid))
        assert None not in part.batch.column("time").to_pylist()
        rows = part.rows.to_pylist()
        assert rows == sorted(rows) and len(rows) == part.batch.num_rows
