"""Forward protocol v1 decoding: every mode, time form and error from hand-written bytes."""

from __future__ import annotations

import gzip
import struct
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from securitylake_sink.errors import FrameTooLarge, ProtocolError
from securitylake_sink.model import Chunk, DeferredEntries, Entry
from securitylake_sink.sources.forward_codec import (
    FrameReader,
    _fast_unpack,
    _usual,
    decode_frame,
    decode_spooled,
    scan_frame,
    unpack_frame,
)

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
T0_NS = T0 * 1_000_000_000
FLUENT_BIT_CHUNK_ID = "p8n9gmxTQVC8/nh2wlKKeQ=="
FLUENTD_CHUNK_ID = "JZ9GXhgY4x5QOqv1OWJ5Zw==\n"  # Ruby Base64.encode64 ends in a newline


def frame(text: str) -> bytes:
    """Hex bytes with spaces, newlines and ``#`` comments."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


def decode(raw: bytes, **kwargs: Any) -> Chunk | None:
    """GIVEN the bytes of exactly one frame, WHEN split and decoded like the server does."""
    reader = FrameReader()
    reader.feed(raw)
    frames = list(reader.frames())
    assert len(frames) == 1
    assert reader.pending_bytes == 0
    obj, frame_raw = frames[0]
    assert frame_raw == raw
    return decode_frame(obj, frame_raw, 42, **kwargs)


def decoded(raw: bytes) -> Chunk:
    chunk = decode(raw)
    assert chunk is not None
    return chunk


# Entry bytes reused below, as Fluent Bit and Fluentd pack them.
ENTRY_1 = """
    92                                  # array(2)
    d7 00 6553f100 075bcd15             #   EventTime(1700000000 s, 123456789 ns)
    81 a3 6d7367 a2 6869                #   {"msg": "hi"}
"""  # 19 bytes
ENTRY_2 = """
    92                                  # array(2)
    ce 6553f101                         #   1700000001
    81 a3 6d7367 a2 796f                #   {"msg": "yo"}
"""  # 14 bytes
RECORD_HI = {"msg": "hi"}
RECORD_YO = {"msg": "yo"}
ENTRIES_1_2 = (Entry(T0_NS + 123_456_789, RECORD_HI), Entry(T0_NS + 1_000_000_000, RECORD_YO))

# ["app", 1700000000, {"msg": "hi"}]  (fluent-logger)
MESSAGE_3 = frame("""
    93                                  # array(3)
    a3 617070                           # "app"
    ce 6553f100                         # 1700000000
    81 a3 6d7367 a2 6869                # {"msg": "hi"}
""")

# ["app", EventTime(1700000000, 123456789), {"msg": "hi"},
#  {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "metadata": {"k": "v"}}]  (Fluent Bit, dynamic tag)
MESSAGE_4 = frame("""
    94                                  # array(4)
    a3 617070                           # "app"
    d7 00 6553f100 075bcd15             # EventTime(1700000000, 123456789)
    81 a3 6d7367 a2 6869                # {"msg": "hi"}
    82                                  # map(2)
    a5 6368756e6b                       #   "chunk"
    b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d   # "p8n9gmxTQVC8/nh2wlKKeQ=="
    a8 6d65746164617461                 #   "metadata"
    81 a1 6b a1 76                      #   {"k": "v"}
""")

# ["app.log", [[EventTime(1700000000, 123456789), {"msg": "hi"}]],
#  {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "size": 1}]  (pipeline-protocols §1.2)
FORWARD_OPTIONS = frame(
    """
    93                                  # array(3)
    a7 6170702e6c6f67                   # "app.log"
    91                                  # array(1) of entries
"""
    + ENTRY_1
    + """
    82                                  # map(2)
    a5 6368756e6b                       #   "chunk"
    b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d   # "p8n9gmxTQVC8/nh2wlKKeQ=="
    a4 73697a65 01                      #   "size": 1
"""
)

# ["app", bin(<<ENTRY_1>><<ENTRY_2>>), {"size": 2}]
PACKED_BIN = frame(
    """
    93                                  # array(3)
    a3 617070                           # "app"
    c4 21                               # bin8, 33 bytes of concatenated entries
"""
    + ENTRY_1
    + ENTRY_2
    + """
    81 a4 73697a65 02                   # {"size": 2}
"""
)

# ["app", str32(<<ENTRY_1>><<ENTRY_2>>), {"size": 2, "compressed": "text",
#  "chunk": "JZ9GXhgY4x5QOqv1OWJ5Zw==\n"}]  (Fluentd out_forward: binary entries as str32,
#  not valid UTF-8 because of the d7 00 in EventTime)
PACKED_STR32 = frame(
    """
    93                                  # array(3)
    a3 617070                           # "app"
    db 00000021                         # str32, 33 bytes
"""
    + ENTRY_1
    + ENTRY_2
    + """
    83                                  # map(3)
    a4 73697a65 02                      #   "size": 2
    aa 636f6d70726573736564 a4 74657874 #   "compressed": "text"
    a5 6368756e6b                       #   "chunk"
    b9 4a5a394758686759347835514f7176314f574a355a773d3d0a # "JZ9GXhgY4x5QOqv1OWJ5Zw==\\n"
"""
)

# gzip members (mtime 0) of ENTRY_1 and of ENTRY_2
GZIP_ENTRY_1 = """
    1f8b 08 00 00000000 02 03           # gzip header: deflate, mtime 0
    9b749d2135f823037bf459d1c6c5b9c5e98b323201 # deflate(ENTRY_1)
    590af796 13000000                   # crc32, size 19
"""
GZIP_ENTRY_2 = """
    1f8b 08 00 00000000 02 03           # gzip header: deflate, mtime 0
    9b742e35f82363e3e2dce2f4 4595f900   # deflate(ENTRY_2)
    dfb77a37 0e000000                   # crc32, size 14
"""
# ["app", bin(gzip(ENTRY_1) + gzip(ENTRY_2)), {"compressed": "gzip", "size": 2}]
GZIP_TWO_MEMBERS = frame(
    """
    93                                  # array(3)
    a3 617070                           # "app"
    c4 49                               # bin8, 73 bytes: two concatenated gzip members
"""
    + GZIP_ENTRY_1
    + GZIP_ENTRY_2
    + """
    82                                  # map(2)
    aa 636f6d70726573736564 a4 677a6970 #   "compressed": "gzip"
    a4 73697a65 02                      #   "size": 2
"""
)

# ["app", bin(zstd(<<ENTRY_1>><<ENTRY_2>>)), {"compressed": "zstd"}]
ZSTD = frame(
    """
    93                                  # array(3)
    a3 617070                           # "app"
    c4 2a                               # bin8, 42 bytes
    28b52ffd 20 21                      #   zstd magic, frame header, content size 33
    090100                              #   last raw block of 33 bytes
"""
    + ENTRY_1
    + ENTRY_2
    + """
    81 aa 636f6d70726573736564 a4 7a737464 # {"compressed": "zstd"}
"""
)


def forward_one(time_hex: str) -> bytes:
    """["t", [[<time>, {"msg": "hi"}]]]"""
    return frame(f"92 a1 74 91 92 {time_hex} 81 a3 6d7367 a2 6869")


# --- modes ----------------------------------------------------------------------------------


def test_message_mode_3_items() -> None:
    chunk = decoded(MESSAGE_3)
    assert chunk == Chunk(
        kind="forward",
        tag="app",
        entries=(Entry(T0_NS, RECORD_HI),),
        raw=MESSAGE_3,
        token=None,
        received_ns=42,
        meta={"mode": "message"},
    )


def test_message_mode_4_items_takes_metadata_and_token_from_options() -> None:
    chunk = decoded(MESSAGE_4)
    assert chunk.entries == (Entry(T0_NS + 123_456_789, RECORD_HI, {"k": "v"}),)
    assert chunk.token == FLUENT_BIT_CHUNK_ID
    assert chunk.meta == {"mode": "message"}


def test_forward_mode_with_options() -> None:
    chunk = decoded(FORWARD_OPTIONS)
    assert chunk.tag == "app.log"
    assert chunk.entries == (Entry(T0_NS + 123_456_789, RECORD_HI),)
    assert chunk.token == FLUENT_BIT_CHUNK_ID
    assert chunk.meta == {"mode": "forward"}


def test_packed_forward_bin() -> None:
    chunk = decoded(PACKED_BIN)
    assert chunk.entries == ENTRIES_1_2
    assert chunk.token is None
    assert chunk.meta == {"mode": "packed_forward"}


def test_packed_forward_str32_as_fluentd_sends_it() -> None:
    chunk = decoded(PACKED_STR32)
    assert chunk.entries == ENTRIES_1_2
    assert chunk.token == FLUENTD_CHUNK_ID
    assert chunk.meta == {"mode": "packed_forward", "compressed": "text"}


def test_compressed_packed_forward_two_gzip_members() -> None:
    chunk = decoded(GZIP_TWO_MEMBERS)
    assert chunk.entries == ENTRIES_1_2
    assert chunk.meta == {"mode": "compressed_packed_forward", "compressed": "gzip"}


def test_compressed_packed_forward_zstd() -> None:
    chunk = decoded(ZSTD)
    assert chunk.entries == ENTRIES_1_2
    assert chunk.meta == {"mode": "compressed_packed_forward", "compressed": "zstd"}


def test_nil_is_a_keepalive() -> None:
    assert decode(frame("c0")) is None  # nil


def test_add_option_pairs_land_in_meta() -> None:
    # ["t", [], {"size": 0, "env": "prod"}]
    chunk = decoded(frame("93 a1 74 90 82 a4 73697a65 00 a3 656e76 a4 70726f64"))
    assert chunk.entries == ()
    assert chunk.meta == {"mode": "forward", "option.env": "prod"}


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_hex", "expected_ns"),
    [
        ("ce 6553f100", T0_NS),  # int 1700000000
        ("cb 41d954fc40100000", T0_NS + 250_000_000),  # float 1700000000.25
        ("d7 00 6553f100 075bcd15", T0_NS + 123_456_789),  # EventTime as fixext8
        ("c7 08 00 6553f100 075bcd15", T0_NS + 123_456_789),  # EventTime as ext8
        ("00", None),  # int 0: unknown, not 1970
        ("cb 0000000000000000", None),  # float 0.0
        ("d7 00 00000000 00000000", None),  # EventTime(0, 0)
    ],
    ids=["int", "float", "fixext8", "ext8", "zero", "zero-float", "zero-eventtime"],
)
def test_time_forms(time_hex: str, expected_ns: int | None) -> None:
    assert decoded(forward_one(time_hex)).entries == (Entry(expected_ns, RECORD_HI),)


def test_fluent_bit_metadata_form() -> None:
    # ["t", [[[EventTime(1700000000, 0), {}], {"msg": "hi"}],
    #        [[EventTime(1700000000, 0), {"k": "v"}], {"msg": "yo"}]]]
    chunk = decoded(
        frame("""
        92 a1 74 92
        92 92 d7 00 6553f100 00000000 80 81 a3 6d7367 a2 6869
        92 92 d7 00 6553f100 00000000 81 a1 6b a1 76 81 a3 6d7367 a2 796f
    """)
    )
    assert chunk.entries == (Entry(T0_NS, RECORD_HI), Entry(T0_NS, RECORD_YO, {"k": "v"}))


def test_group_markers_are_skipped() -> None:
    # ["t", [[[EventTime(0xFFFFFFFF, 0), {"resource": 1}], {"attr": 1}],   group start
    #        [[EventTime(1700000000, 0), {}], {"msg": "hi"}],
    #        [[EventTime(0xFFFFFFFE, 0), {}], {}],                          group end
    #        [-1, {}], [-2, {}]]]                                           integer markers
    chunk = decoded(
        frame("""
        92 a1 74 95
        92 92 d7 00 ffffffff 00000000 81 a8 7265736f75726365 01 81 a4 61747472 01
        92 92 d7 00 6553f100 00000000 80 81 a3 6d7367 a2 6869
        92 92 d7 00 fffffffe 00000000 80 80
        92 ff 80
        92 fe 80
    """)
    )
    assert chunk.entries == (Entry(T0_NS, RECORD_HI),)


def test_only_markers_leave_no_entries() -> None:
    # ["t", [[-1, {}], [-2, {}]], {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ=="}]
    chunk = decoded(
        frame("""
        93 a1 74 92 92 ff 80 92 fe 80
        81 a5 6368756e6b b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d
    """)
    )
    assert chunk.entries == ()
    assert chunk.token == FLUENT_BIT_CHUNK_ID


# --- errors ---------------------------------------------------------------------------------


PROTOCOL_ERRORS = pytest.mark.parametrize(
    ("hex_text", "reason"),
    [
        ("81 a1 61 01", "frame is not an array"),  # {"a": 1}
        ("91 a1 74", "frame has fewer than 2 items"),  # ["t"]
        ("92 01 90", "tag is not a str"),  # [1, []]
        ("92 a1 74 c3", "unknown event mode"),  # ["t", true]
        ("92 a1 74 80", "unknown event mode"),  # ["t", {}]
        ("93 a1 74 90 01", "options are not a map"),  # ["t", [], 1]
        ("94 a1 74 90 80 01", "frame has too many items"),  # ["t", [], {}, 1]
        ("92 a1 74 01", "message frame has no record"),  # ["t", 1]
        ("93 a1 74 01 a1 78", "record is not a map"),  # ["t", 1, "x"]
        ("94 a1 74 01 80 81 a8 6d65746164617461 01", "metadata option is not a map"),
        ("92 a1 74 91 91 01", "entry is not [time, record]"),  # ["t", [[1]]]
        ("92 a1 74 91 01", "entry is not [time, record]"),  # ["t", [1]]
        ("92 a1 74 91 92 01 a1 78", "record is not a map"),  # ["t", [[1, "x"]]]
        ("92 a1 74 91 92 91 01 80", "entry time is not [time, metadata]"),  # ["t", [[[1], {}]]]
        ("92 a1 74 91 92 92 01 01 80", "entry metadata is not a map"),  # ["t", [[[1, 1], {}]]]
        ("92 a1 74 91 92 a1 78 80", "bad time"),  # ["t", [["x", {}]]]
        ("92 a1 74 91 92 c3 80", "bad time"),  # ["t", [[true, {}]]]
        ("92 a1 74 91 92 fb 80", "bad time"),  # ["t", [[-5, {}]]]
        ("92 a1 74 91 92 cf 0000000100000000 80", "bad time"),  # 2**32 seconds
        ("92 a1 74 91 92 cb bff0000000000000 80", "bad time"),  # -1.0
        ("92 a1 74 91 92 d7 01 6553f100 00000000 80", "bad time"),  # ext type 1
        ("92 a1 74 91 92 d6 00 6553f100 80", "bad time"),  # ext type 0 with 4 bytes
        ("92 a1 74 91 92 d6 ff 6553f100 80", "bad time"),  # msgpack Timestamp (ext -1)
        ("92 a1 74 91 92 d7 00 6553f100 3b9aca00 80", "bad time"),  # 10**9 ns
        ("93 a1 74 c4 00 81 aa 636f6d70726573736564 a3 6c7a34", "unknown compressed"),  # lz4
        ("93 a1 74 c4 00 81 ad 666c75656e745f7369676e616c 01", "fluent_signal is not logs"),
        ("93 a1 74 90 81 ad 666c75656e745f7369676e616c 02", "fluent_signal is not logs"),
        ("93 a1 74 90 81 a5 6368756e6b 01", "chunk option is not a str"),  # {"chunk": 1}
        ("93 a1 74 c4 02 92 01 80", "packed entries end mid-entry"),  # bin [1 (cut)
        ("93 a1 74 c4 01 c1 80", "packed entries are not valid msgpack"),  # bin 0xc1
        (  # {"compressed": "gzip"} over 3 bytes that are not gzip
            "93 a1 74 c4 03 000102 81 aa 636f6d70726573736564 a4 677a6970",
            "compressed payload is not valid",
        ),
        (  # the first 20 bytes of GZIP_ENTRY_1
            "93 a1 74 c4 14 1f8b0800000000000203 9b749d2135f823037bf4 81 aa 636f6d70726573736564 a4 677a6970",
            "compressed payload is truncated",
        ),
        ("93 a1 74 c4 03 92 c0 80 80", "bad time"),  # packed [[nil, {}]]
        ("93 a1 74 c4 0c 92 d7 00 6553f100 00000000 01 80", "record is not a map"),  # packed [[EventTime, 1]]
        ("92 a1 74 91 92 d7 00 6553f100 00000000 90", "record is not a map"),  # [[EventTime, []]]
        ("92 a1 74 92 92 01 80 dc 0000", "entry is not [time, record]"),  # a second entry as array16 []
    ],
)


@PROTOCOL_ERRORS
def test_protocol_errors(hex_text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(frame(hex_text))
    assert str(caught.value) == reason
    assert not isinstance(caught.value, FrameTooLarge)


@PROTOCOL_ERRORS
def test_the_scan_refuses_what_decoding_refuses(hex_text: str, reason: str) -> None:
    """The server's check (records left unbuilt) gives the same reason, before any ack."""
    with pytest.raises(ProtocolError) as caught:
        scan_frame(frame(hex_text))
    assert str(caught.value) == reason


def test_decompressed_size_over_the_cap() -> None:
    with pytest.raises(ProtocolError, match="decompressed size over the cap"):
        decode(GZIP_TWO_MEMBERS, max_decompressed_bytes=20)  # 33 bytes inflated


# --- frame splitting ------------------------------------------------------------------------


def test_frame_split_byte_by_byte_waits_for_the_end() -> None:
    reader = FrameReader()
    for byte in PACKED_STR32[:-1]:
        reader.feed(bytes([byte]))
        assert list(reader.frames()) == []
    reader.feed(PACKED_STR32[-1:])
    [(obj, raw)] = list(reader.frames())
    assert raw == PACKED_STR32
    assert reader.pending_bytes == 0
    assert decode_frame(obj, raw) is not None


def test_back_to_back_frames_keep_their_own_bytes() -> None:
    reader = FrameReader()
    reader.feed(MESSAGE_3 + b"\xc0" + FORWARD_OPTIONS + PACKED_BIN[:5])
    raws = [raw for _, raw in reader.frames()]
    assert raws == [MESSAGE_3, b"\xc0", FORWARD_OPTIONS]
    assert reader.pending_bytes == 5


def test_whole_frame_over_the_cap() -> None:
    reader = FrameReader(max_frame_bytes=len(MESSAGE_3) - 1)
    reader.feed(MESSAGE_3)
    with pytest.raises(FrameTooLarge):
        list(reader.frames())


def test_partial_frame_over_the_cap_is_refused_before_it_ends() -> None:
    reader = FrameReader(max_frame_bytes=64)
    reader.feed(frame("92 a1 74 db 00100000"))  # ["t", str32 of 1 MiB ...
    assert list(reader.frames()) == []
    reader.feed(b"a" * 64)
    with pytest.raises(FrameTooLarge):
        list(reader.frames())


def test_container_header_over_the_cap() -> None:
    reader = FrameReader()
    reader.feed(frame("dd 01000000"))  # array32 of 2**24 items
    with pytest.raises(FrameTooLarge):
        list(reader.frames())


def test_garbage_is_a_protocol_error_not_too_large() -> None:
    reader = FrameReader()
    reader.feed(frame("c1"))  # never used in msgpack
    with pytest.raises(ProtocolError) as caught:
        list(reader.frames())
    assert not isinstance(caught.value, FrameTooLarge)


# --- spool recovery -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [MESSAGE_3, MESSAGE_4, FORWARD_OPTIONS, PACKED_BIN, PACKED_STR32, GZIP_TWO_MEMBERS, ZSTD],
    ids=["message3", "message4", "forward", "packed-bin", "packed-str32", "gzip", "zstd"],
)
def test_decode_spooled_matches_the_live_path(raw: bytes) -> None:
    assert decode_spooled(raw, 42) == decoded(raw)


@pytest.mark.parametrize(
    "raw", [MESSAGE_3 + b"\xc0", MESSAGE_3[:-1], b"\xc0", b""], ids=["extra", "cut", "nil", "empty"]
)
def test_decode_spooled_wants_exactly_one_frame(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_spooled(raw, 42)


# --- round trip -----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    # extension values: msgpack's timestamp, and a type of no meaning here
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
    | st.builds(msgpack.ExtType, st.just(5), st.binary(min_size=1, max_size=8))
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# keys are text, now and then a number (decoded by msgpack, which takes any key)
_records = st.dictionaries(st.text(max_size=12) | st.integers(-5, 5), _values, max_size=6)


@st.composite
def _times(draw: st.DrawFn) -> tuple[object, int]:
    """A wire time and the nanoseconds it stands for."""
    seconds = draw(st.integers(min_value=1, max_value=0xFFFFFFFD))
    form = draw(st.sampled_from(["int", "float", "eventtime", "eventtime+metadata"]))
    if form == "int":
        return seconds, seconds * 1_000_000_000
    if form == "float":
        ticks = draw(st.integers(min_value=0, max_value=511))  # 1/512 s is exact in binary
        return seconds + ticks / 512, seconds * 1_000_000_000 + ticks * 1_953_125
    nanos = draw(st.integers(min_value=0, max_value=999_999_999))
    stamp = msgpack.ExtType(0, struct.pack(">II", seconds, nanos))
    if form == "eventtime+metadata":  # Fluent Bit 2.1+: [[EventTime, {metadata}], {record}]
        return [stamp, draw(st.sampled_from([{}, {"otlp": {"k": 1}}]))], seconds * 1_000_000_000 + nanos
    return stamp, seconds * 1_000_000_000 + nanos


def _pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj)
    return packed


def _pack_wide(obj: object) -> bytes:
    """msgpack as Fluent Bit writes it: every map with a map32 header (the length is filled in
    after the pairs are written), even an entry's empty metadata (``df 00000000``)."""
    if isinstance(obj, dict):
        pairs = b"".join(_pack_wide(k) + _pack_wide(v) for k, v in obj.items())
        return b"\xdf" + struct.pack(">I", len(obj)) + pairs
    if isinstance(obj, list):
        head = bytes([0x90 | len(obj)]) if len(obj) < 16 else b"\xdc" + struct.pack(">H", len(obj))
        return head + b"".join(map(_pack_wide, obj))
    return _pack(obj)


def _pack_frame(mode: str, tag: str, entries: list[tuple[object, dict[str, Any]]]) -> bytes:
    packed = b"".join(_pack([when, record]) for when, record in entries)
    if mode == "fluent-bit":  # Forward mode, each map a map32, and the options Fluent Bit sends
        head = b"\x93" + _pack(tag) + b"\xdd" + struct.pack(">I", len(entries))
        return head + b"".join(_pack_wide([when, record]) for when, record in entries) + _pack({"size": len(entries)})
    if mode == "forward":
        return _pack([tag, [[when, record] for when, record in entries]])
    if mode == "packed-bin":
        return _pack([tag, packed, {"size": len(entries)}])
    if mode == "packed-str32":  # Fluentd: the entries as str32, whatever their bytes
        head = _pack(tag)
        return b"\x93" + head + b"\xdb" + struct.pack(">I", len(packed)) + packed + b"\x80"
    if mode == "gzip":
        return _pack([tag, gzip.compress(packed), {"compressed": "gzip"}])
    return _pack([tag, zstandard.ZstdCompressor().compress(packed), {"compressed": "zstd"}])


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["message", "forward", "fluent-bit", "packed-bin", "packed-str32", "gzip", "zstd"]),
    tag=st.text(min_size=1, max_size=20),
    entries=st.lists(st.tuples(_times(), _records), min_size=1, max_size=5),
)
def test_round_trip_in_every_mode(
    mode: str, tag: str, entries: list[tuple[tuple[object, int], dict[str, Any]]]
) -> None:
    if mode == "message":
        (when, _), record = entries[0]
        entries = entries[:1]
        raw = _pack([tag, when[0] if isinstance(when, list) else when, record])  # no metadata form here
    else:
        raw = _pack_frame(mode, tag, [(when, record) for (when, _), record in entries])
    chunk = decode_spooled(raw, 7)
    assert chunk.tag == tag
    assert chunk.raw == raw
    assert [(e.time_ns, e.record) for e in chunk.entries] == [(ns, record) for (_, ns), record in entries]


# --- the server's scan: records decoded later -----------------------------------------------


def _outcome(run: Any) -> tuple[str, object]:
    try:
        return "ok", run()
    except ProtocolError as exc:
        return "error", str(exc)


def _comparable(outcome: tuple[str, object]) -> tuple[object, ...]:
    """An outcome with its chunk's entries as text: a float that a changed byte made NaN equals
    itself there, and nowhere else."""
    kind, value = outcome
    if not isinstance(value, Chunk):
        return (kind, value)
    entries = repr(tuple(value.entries))
    return (kind, value.kind, value.tag, entries, value.raw, value.token, value.received_ns, value.meta)


def _eager(raw: bytes) -> Chunk | None:
    return decode_frame(unpack_frame(raw), raw, 7)


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(["message", "forward", "fluent-bit", "packed-bin", "packed-str32", "gzip", "zstd"]),
    tag=st.text(min_size=1, max_size=8),
    entries=st.lists(st.tuples(_times(), _records), min_size=1, max_size=4),
    marker=st.booleans(),
    cut=st.integers(min_value=0, max_value=400),
    byte=st.integers(min_value=0, max_value=255),
    mutate=st.booleans(),
)
def test_scan_agrees_with_decoding(  # noqa: PLR0917 (hypothesis draws each argument)
    mode: str,
    tag: str,
    entries: list[tuple[tuple[object, int], dict[str, Any]]],
    marker: bool,
    cut: int,
    byte: int,
    mutate: bool,
) -> None:
    """Any one whole frame, well formed or with a byte changed: the scan accepts exactly what
    decoding accepts, and its deferred entries are the decoded ones. The one allowed difference:
    what only building the records can find (an array as a map key) is raised when they are read."""
    pairs: list[tuple[object, Any]] = [(when, record) for (when, _), record in entries]
    if marker:  # a Fluent Bit group marker first (bare, or with metadata): skipped, not counted
        start = msgpack.ExtType(0, struct.pack(">II", 0xFFFFFFFF, 0))
        pairs.insert(0, ([start, {}] if cut % 2 else start, {}))
    raw = _pack([tag, pairs[0][0], pairs[0][1]]) if mode == "message" else _pack_frame(mode, tag, pairs)
    if mutate:
        at = cut % len(raw)
        raw = raw[:at] + bytes([byte]) + raw[at + 1 :]
        reader = FrameReader()
        reader.feed(raw)
        try:
            whole = [frame_raw for _, frame_raw in reader.frames()]
        except ProtocolError:
            return  # the server closes the connection before either runs
        if whole != [raw] or reader.pending_bytes:
            return  # not one whole frame: the server never hands it over like this
    eager = _outcome(lambda: _eager(raw))
    scanned = _outcome(lambda: scan_frame(raw, 7))
    if eager[0] == "ok":
        assert _comparable(scanned) == _comparable(eager)
        chunk = scanned[1]
        if chunk is not None:
            assert isinstance(chunk, Chunk)
            assert len(chunk.entries) == len(tuple(chunk.entries))
        return
    assert eager[0] == "error"
    if scanned[0] == "error":
        return
    chunk = scanned[1]
    assert isinstance(chunk, Chunk) and isinstance(chunk.entries, DeferredEntries)
    with pytest.raises(ProtocolError):
        list(chunk.entries)


@pytest.mark.parametrize(
    ("metadata_hex", "usual"),
    [
        ("80", True),  # {} as msgpack writes it
        ("de 0000", True),  # {} as map16
        ("df 00000000", True),  # {} as map32: Fluent Bit's
        ("df 00000001 a1 6b a1 76", False),  # {"k": "v"}: metadata to keep, the long way
        ("de 0001 a1 6b a1 76", False),
        ("c0", False),  # nil is not metadata: refused the long way
    ],
)
def test_the_scan_reads_an_entry_with_empty_metadata_in_place(metadata_hex: str, usual: bool) -> None:
    """[[EventTime, {}], {record}] is checked from its bytes and its record skipped unbuilt,
    whichever map header the empty metadata has; anything else is unpacked and checked."""
    entry = frame(f"92 92 d7 00 6553f100 00000000 {metadata_hex} df 00000001 a3 6d7367 a2 6869")
    assert _usual(entry, 0, len(entry)) is usual
    assert _usual(entry[:12], 0, 12) is False  # cut short: never read past the end
    raw = frame("93 a1 74 91") + entry + _pack({"size": 1})
    outcome = _outcome(lambda: scan_frame(raw, 7))
    assert _comparable(outcome) == _comparable(_outcome(lambda: _eager(raw)))
    if usual:
        chunk = outcome[1]
        assert isinstance(chunk, Chunk) and isinstance(chunk.entries, DeferredEntries)
        assert chunk.entries == (Entry(T0_NS, RECORD_HI),)


def test_scan_defers_the_records_and_counts_without_markers() -> None:
    raw = _pack_frame(
        "forward",
        "t",
        [(msgpack.ExtType(0, struct.pack(">II", 0xFFFFFFFF, 0)), {}), (T0, RECORD_HI), (T0 + 1, RECORD_YO)],
    )
    chunk = scan_frame(raw, 7)
    assert chunk is not None
    assert isinstance(chunk.entries, DeferredEntries)
    assert len(chunk.entries) == 2
    assert not chunk.entries.decoded  # counted, not built
    assert [e.record for e in chunk.entries] == [RECORD_HI, RECORD_YO]
    assert chunk.entries.decoded


def test_a_spooled_frame_whose_records_cannot_be_built_is_read_back_like_the_live_one() -> None:
    """Read back from the log (a restart, a backlog past the cache), such a frame must not stop the
    pipeline: its entries raise when read, which the mapper turns into a dead letter."""
    raw = frame("92 a1 74 91 92 d7 00 6553f100 00000000 81 91 01 02")  # ["t", [[EventTime, {[1]: 2}]]]
    live = scan_frame(raw, 7)
    spooled = decode_spooled(raw, 7)
    assert live is not None and (spooled.tag, spooled.token, spooled.meta) == (live.tag, live.token, live.meta)
    assert len(spooled.entries) == 1
    with pytest.raises(ProtocolError):
        list(spooled.entries)


@pytest.mark.parametrize(
    "hex_text",
    [
        "92 a1 74 91 92 d7 00 6553f100 00000000 81 91 01 02",  # ["t", [[EventTime, {[1]: 2}]]]
        "92 a1 74 91 92 92 d7 00 6553f100 00000000 80 81 91 01 02",  # [[[EventTime, {}], {[1]: 2}]]
    ],
    ids=["eventtime", "eventtime-with-metadata"],
)
def test_scan_leaves_an_array_map_key_to_the_reader(hex_text: str) -> None:
    """{[1]: 2} is well-formed msgpack that Python cannot build: the check passes (it skips the
    record unbuilt, also in Fluent Bit's form with metadata), reading fails."""
    raw = frame(hex_text)
    with pytest.raises(ProtocolError):
        _eager(raw)
    chunk = scan_frame(raw)
    assert chunk is not None and len(chunk.entries) == 1
    with pytest.raises(ProtocolError):
        list(chunk.entries)


def test_records_are_built_by_the_fast_decoder_unless_it_would_differ() -> None:
    # GIVEN a packed frame of usual records, and the same with one value that is not UTF-8 text
    # (Fluentd sends binary entries as str) and one with a number as a map key
    usual = _pack_frame("packed-bin", "app", [(msgpack.ExtType(0, struct.pack(">II", T0, 5)), {"log": "a", "n": 1})])
    entry = frame("92 d7 00 6553f100 00000005  81 a1 61 a2 fffe")  # [EventTime, {"a": <ff fe>}]
    odd_text = b"\x93" + _pack("app") + b"\x91" + entry + b"\x80"  # Forward mode: [tag, [entry], {}]
    odd_key = _pack_frame("forward", "app", [(T0, {1: "a"})])
    # THEN ormsgpack builds the usual one, and declines the others (msgpack builds them)
    assert _fast_unpack(usual) == unpack_frame(usual)
    assert _fast_unpack(odd_text) is None
    assert _fast_unpack(odd_key) is None
    # AND whichever builds them, the entries are what msgpack makes of the bytes
    for raw in (usual, odd_text, odd_key):
        assert list(scan_frame(raw, 7).entries) == list(_eager(raw).entries)  # type: ignore[union-attr]
    assert next(iter(scan_frame(odd_text, 7).entries)).record == {"a": "\udcff\udcfe"}
