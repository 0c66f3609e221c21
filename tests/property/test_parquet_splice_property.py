"""Property: whatever a class table holds (objects present on all, some or no rows, lists and
maps null, empty or full, in one chunk or several), the spliced Parquet is the very bytes
pyarrow writes for the whole table."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securitylake_sink.columnar import widen_batch
from securitylake_sink.encode.parquet import encode_parquet
from securitylake_sink.ocsf.schema import load_schema

SCHEMA = load_schema("1.1.0")
CLASSES = sorted(SCHEMA.class_uids())
T = 1_732_795_200_000


def _pruned(draw: st.DrawFn, t: pa.DataType, depth: int) -> pa.DataType:
    """A pruning of ``t``: a few fields of each struct, down to a few levels."""
    if pa.types.is_struct(t):
        if depth > 3:
            return t if t.num_fields <= 3 else pa.struct([t.field(0)])
        picked = draw(st.lists(st.integers(0, t.num_fields - 1), min_size=1, max_size=3, unique=True))
        fields = [t.field(i) for i in sorted(picked)]
        return pa.struct([pa.field(f.name, _pruned(draw, f.type, depth + 1), f.nullable) for f in fields])
    if pa.types.is_list(t):
        return pa.list_(pa.field("item", _pruned(draw, t.value_type, depth + 1), t.value_field.nullable))
    return t


def _scalars(t: pa.DataType) -> st.SearchStrategy[Any]:
    if pa.types.is_map(t):
        return st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_integer(t) or pa.types.is_timestamp(t):
        return st.integers(0, 2**31 - 1)
    if pa.types.is_floating(t):
        return st.floats(allow_nan=False, width=32)
    return st.text(max_size=4)


def _value(draw: st.DrawFn, t: pa.DataType, null_weight: int) -> Any:
    if draw(st.integers(0, 9)) < null_weight:
        return None
    if pa.types.is_struct(t):
        return {f.name: _value(draw, f.type, null_weight) for f in t}
    if pa.types.is_list(t):
        return [_value(draw, t.value_type, null_weight) for _ in range(draw(st.integers(0, 2)))]
    return draw(_scalars(t))


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    full = SCHEMA.arrow_schema(draw(st.sampled_from(CLASSES)))
    top = [f for f in full if f.name != "time"]
    picked = draw(st.lists(st.integers(0, len(top) - 1), max_size=6, unique=True))
    fields = [full.field("time")] + [
        pa.field(top[i].name, _pruned(draw, top[i].type, 0), top[i].nullable) for i in sorted(picked)
    ]
    rows = draw(st.integers(1, 12))
    null_weight = draw(st.integers(0, 6))  # 0: objects on every row; 6: mostly absent
    records = [
        {"time": T + draw(st.integers(0, 10_000)), **{f.name: _value(draw, f.type, null_weight) for f in fields[1:]}}
        for _ in range(rows)
    ]
    table = pa.Table.from_pylist(records, schema=pa.schema(fields))
    cut = draw(st.integers(0, rows))
    if 0 < cut < rows:  # two chunks
        table = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    return widen_batch(table, full).replace_schema_metadata(full.metadata)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(table=tables())
def test_spliced_parquet_is_pyarrows_byte_for_byte(table: pa.Table) -> None:
    assert encode_parquet(table) == encode_parquet(table, splice_nulls=False)
