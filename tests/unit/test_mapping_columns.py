"""Pulling record fields into columns: the level-by-level walk reads what the per-record getter
reads, whatever the values on the way are."""

from __future__ import annotations

from collections import UserDict
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from securitylake_sink.mapping.columns import UsedFields, getter, pull_frame
from securitylake_sink.mapping.ops import text_of, to_array

PATHS = ("a", "a.b", "a.b.c", "a.x", "z.b", 'a["b.c"]', "a.b.c.d")

_leaves = st.none() | st.integers() | st.text(max_size=3) | st.lists(st.integers(), max_size=2)
_values: st.SearchStrategy[Any] = st.recursive(
    _leaves,
    lambda inner: st.dictionaries(st.sampled_from(["a", "b", "c", "d", "x", "b.c"]), inner, max_size=3),
    max_leaves=8,
)
_records = st.dictionaries(st.sampled_from(["a", "z", "q"]), _values, max_size=3)


@settings(max_examples=200, deadline=None)
@given(records=st.lists(_records, min_size=1, max_size=6))
def test_pulled_columns_equal_the_getter_on_each_record(records: list[dict[str, Any]]) -> None:
    frame = pull_frame(records, "t", pa.array([0] * len(records), pa.int64()), UsedFields(PATHS, ()))
    for path in PATHS:
        assert list(frame.pulled[path]) == [getter(path)(r) for r in records], path


def test_a_mapping_that_is_not_a_dict_is_walked_and_a_literal_dotted_key_wins() -> None:
    records: list[dict[str, Any]] = [
        {"a": UserDict({"b": UserDict({"c": 1})})},  # a Mapping, not a dict
        {"a": {"b": "text"}},  # a leaf where an object would be: nothing below it
        {"a.b": "literal", "a": {"b": {"c": 3}}},  # a key with a dot in it is read first
        {"a": [{"b": 4}]},  # a list on the way: nothing
    ]
    frame = pull_frame(records, "t", pa.array([0] * 4, pa.int64()), UsedFields(("a.b.c", "a.b"), ()))
    assert list(frame.pulled["a.b.c"]) == [1, None, 3, None]
    assert frame.pulled["a.b"][2] == "literal"


_items = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=4)
_odd = _items | st.binary(max_size=3) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)


@settings(max_examples=200, deadline=None)
@given(lists=st.lists(st.none() | st.lists(_odd, max_size=4), min_size=1, max_size=6), extra=_odd)
def test_lists_of_mixed_items_become_lists_of_their_texts(lists: list[list[Any] | None], extra: Any) -> None:
    # GIVEN lists whose items Arrow cannot hold as one type (a string and a number at least)
    values: list[list[Any] | None] = [*lists, ["s", 1, extra, "\udcff"]]
    # WHEN pulled into a column
    column = to_array(values)
    # THEN each item is its text (as unmapped holds it), each missing list stays missing
    expected = [None if v is None else [None if x is None else text_of(x) for x in v] for v in values]
    assert column.type == pa.list_(pa.string())
    assert column.to_pylist() == expected


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_odd, min_size=1, max_size=8))
def test_scalars_of_mixed_types_become_their_texts(values: list[Any]) -> None:
    mixed = [*values, "s", 1, b"\xff", "\udcff"]
    column = to_array(mixed)
    assert column.type == pa.string()
    assert column.to_pylist() == [None if v is None else text_of(v) for v in mixed]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.none() | st.binary(max_size=4), min_size=1, max_size=8))
def test_bytes_become_their_texts(values: list[bytes | None]) -> None:
    column = to_array([*values, b"\xff"])
    assert column.type == pa.string()
    assert column.to_pylist() == [None if v is None else text_of(v) for v in [*values, b"\xff"]]
