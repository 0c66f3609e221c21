"""Property: a kv parse step gives, for each key, what a plain reading of the line gives: the text
after ``key=`` in the first token that starts so, absent when there is none or it is empty."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from securitylake_sink.mapping.columns import Frame
from securitylake_sink.mapping.evaluate import Evaluator
from securitylake_sink.mapping.ops import Faults
from securitylake_sink.mapping.spec import KvStep, Ref

KEYS = ("a", "bb", "type", "msg")
T = 1_732_795_200_000


def reference(line: str | None, separator: str, key: str) -> str | None:
    if line is None:
        return None
    for token in line.split(separator):
        if token.startswith(f"{key}="):
            return token[len(key) + 1 :] or None
    return None


words = st.sampled_from([*KEYS, "zz", "", "a=", "=a"])
token = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", words, st.text(alphabet="ab=x\u00e9", max_size=4)),
    st.text(alphabet="ab=x", max_size=4),
)
lines = st.lists(st.one_of(st.none(), st.lists(token, max_size=8)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(rows=lines, separator=st.sampled_from([" ", ", "]), keys=st.lists(st.sampled_from(KEYS), min_size=1))
def test_kv_step_agrees_with_a_plain_reading(rows: list[list[str] | None], separator: str, keys: list[str]) -> None:
    # GIVEN lines of key=value tokens (keys repeated, missing, empty, with extra "=" in values)
    text = [None if tokens is None else separator.join(tokens) for tokens in rows]
    n = len(text)
    frame = Frame(
        n=n,
        tag="t",
        records=[{} for _ in text],
        ref_ms=pa.array([T] * n, pa.int64()),
        line=pa.array(text, pa.string()),
        unmapped=pa.nulls(n, pa.map_(pa.string(), pa.string())),
    )
    # WHEN the kv step runs (a key listed twice is one key)
    step = KvStep("kv", Ref("$line", ()), tuple(keys), separator, (), None, ())
    Evaluator(frame, {}, Faults()).run_step(step)
    # THEN each key's column is the plain reading, and the step matched where any key was found
    for key in set(keys):
        assert frame.captures[f"kv.{key}"].to_pylist() == [reference(line, separator, key) for line in text], key
    found = [any(reference(line, separator, key) is not None or _has(line, separator, key) for key in keys)
             for line in text]  # fmt: skip
    assert frame.matched["kv"].to_pylist() == found


def _has(line: str | None, separator: str, key: str) -> bool:
    """Whether the line has a ``key=`` token at all (an empty value still counts as found)."""
    return line is not None and any(token.startswith(f"{key}=") for token in line.split(separator))
