"""Request bodies and replayed files to entries, no I/O: bounded decompression, format detection,
JSON and msgpack records, and event times. The HTTP source, replay and spool recovery share it,
so a spooled ``Chunk.raw`` with its ``meta`` decodes to the same entries as the live path."""

from __future__ import annotations

__all__ = [
    "ENCODINGS",
    "FORMATS",
    "MAX_SPOOLED_BYTES",
    "decode_chunk",
    "decode_entries",
    "decode_item",
    "decode_spooled",
    "decompress",
    "detect_format",
    "parse_time_ns",
    "shipper_of",
]

import calendar
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import cramjam

from securitylake_sink.errors import FrameTooLarge, ProtocolError
from securitylake_sink.model import Chunk, Entry
from securitylake_sink.sources.forward_codec import (
    Decompressor,
    decompress_members,
    forward_entries,
    new_unpacker,
    new_zstd,
)

# Content-Encoding values shippers send (pipeline-protocols §3, §4.1); "" and identity: none.
ENCODINGS: Final = frozenset({"", "identity", "gzip", "x-gzip", "zstd", "deflate", "snappy"})
# Fluent Bit's http `format`s, plus Vector's JSON array (= json) and NDJSON (= json_lines), and
# replay's plain text lines.
FORMATS: Final = frozenset({"json", "json_lines", "json_stream", "msgpack", "lines"})
# What recovery accepts: the live path already capped the body by the config of its day.
MAX_SPOOLED_BYTES: Final = 1024 * 1024 * 1024

_MSGPACK_TYPES: Final = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
_NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonlines", "application/x-jsonlines"}
)
# Compressed input per decompression step: gzip/deflate expand at most ~1032x, a zstd RLE block
# ~32768x, so one step yields at most ~8 MiB past the cap before it is checked.
_ZLIB_STEP: Final = 8 * 1024
_ZSTD_STEP: Final = 256
_NS_PER_SEC: Final = 1_000_000_000
# An integer date above this is epoch milliseconds (1973 in ms), below it seconds (year 5138).
_MS_THRESHOLD: Final = 100_000_000_000
_VECTOR_TIME_KEY: Final = "timestamp"
_FLUENT_BIT_INTERNAL: Final = "__internal__"  # group attributes and metadata, Fluent Bit >= 4.0.2
# Fluent Bit's iso8601 and java_sql_timestamp, and RFC 3339 with 0 to 9 fractional digits.
_DATETIME: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)
_WHITESPACE: Final = re.compile(r"[ \t\r\n]*")
_BYTES_WHITESPACE: Final = re.compile(rb"[ \t\r\n]*")


def shipper_of(user_agent: str) -> str:
    """``fluent-bit``, ``vector`` or ``other``: which keys may carry the event time."""
    if user_agent.startswith("Fluent-Bit"):
        return "fluent-bit"
    if user_agent.startswith("Vector/"):
        return "vector"
    return "other"


def parse_time_ns(value: object) -> int | None:
    """Nanoseconds since the epoch from a Fluent Bit ``json_date_format`` value or RFC 3339 text.

    double (seconds, microsecond precision), epoch (int seconds), epoch_ms (int milliseconds,
    told apart by size), iso8601, java_sql_timestamp (UTC without a zone), RFC 3339 with any
    offset. ``None`` when the value is none of these.
    """
    if isinstance(value, str):
        return _parse_datetime(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_time(value)
    return None


def _number_time(value: float) -> int | None:
    if not math.isfinite(value) or value < 0:
        return None
    if isinstance(value, int):
        return value * 1_000_000 if value >= _MS_THRESHOLD else value * _NS_PER_SEC
    if value >= _MS_THRESHOLD:
        return round(value * 1000) * 1000
    # A double holds about a microsecond at today's epoch; Fluent Bit prints six digits.
    return round(value * 1_000_000) * 1000


def _parse_datetime(text: str) -> int | None:
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, off_h, off_m = match.group(7), match.group(9), match.group(10), match.group(11)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if sign is not None:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    if seconds < 0:
        return None
    return seconds * _NS_PER_SEC + int((fraction or "").ljust(9, "0"))


def detect_format(content_type: str, payload: bytes) -> str:
    """The body format from its Content-Type, else from its first byte."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _MSGPACK_TYPES:
        return "msgpack"
    if media in _NDJSON_TYPES:
        return "json_lines"
    if media == "text/plain":  # Vector's text codec: one line, one {"log": line} record
        return "lines"
    start = _BYTES_WHITESPACE.match(payload).end()  # type: ignore[union-attr]  # matches b""
    first = payload[start : start + 1]
    is_json = media == "application/json" or media.endswith("+json")
    if first == b"[":
        return "json"
    if first == b"{" or is_json:
        return "json_stream"  # also reads NDJSON and Fluent Bit's json_stream
    return "msgpack"


def decompress(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body after its Content-Encoding, at most ``max_bytes`` (else FrameTooLarge)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        payload = raw
    elif encoding in ("gzip", "x-gzip"):
        payload = _members(raw, lambda: zlib.decompressobj(wbits=31), _ZLIB_STEP, max_bytes)
    elif encoding == "deflate":
        # Vector's zlib is RFC 1950 (what HTTP calls deflate); some clients send raw RFC 1951.
        wbits = 15 if len(raw) >= 2 and (raw[0] & 0x0F) == 8 and int.from_bytes(raw[:2]) % 31 == 0 else -15
        payload = _members(raw, lambda: zlib.decompressobj(wbits=wbits), _ZLIB_STEP, max_bytes)
    elif encoding == "zstd":
        payload = _members(raw, new_zstd, _ZSTD_STEP, max_bytes)
    elif encoding == "snappy":
        payload = _snappy(raw, max_bytes)
    else:
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")
    if len(payload) > max_bytes:
        raise FrameTooLarge("body over max_body_bytes")
    return payload


def _members(raw: bytes, new: Callable[[], Decompressor], step: int, max_bytes: int) -> bytes:
    too_large = FrameTooLarge("decompressed body over max_body_bytes")
    return decompress_members(raw, new, step, max_bytes, what="body", over=too_large)


def _snappy(raw: bytes, max_bytes: int) -> bytes:
    """Snappy's raw block format (not framed), whose varint prefix is the decompressed size."""
    size = shift = 0
    for i, byte in enumerate(raw[:5]):
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if i == 4:
            raise ProtocolError("snappy body has a bad length prefix")
    else:
        raise ProtocolError("snappy body is truncated")
    if size > max_bytes:
        raise FrameTooLarge("decompressed body over max_body_bytes")
    try:
        return bytes(cramjam.snappy.decompress_raw(raw))
    except cramjam.DecompressionError as exc:
        raise ProtocolError(f"compressed body is not valid: {exc}") from exc


def decode_chunk(
    kind: str, raw: bytes, received_ns: int, *, tag: str, meta: Mapping[str, str], max_bytes: int
) -> Chunk:
    """Decompress ``raw`` per ``meta["content_encoding"]``, decode its ``meta["format"]``.

    When ``meta`` has no format yet it is detected and the returned chunk's meta says which.
    """
    payload = decompress(raw, meta.get("content_encoding", ""), max_bytes)
    fmt = meta.get("format") or detect_format(meta.get("content_type", ""), payload)
    entries = decode_entries(payload, fmt, meta.get("shipper", "other"), meta.get("date_key", "date"))
    return Chunk(kind=kind, tag=tag, entries=entries, raw=raw, received_ns=received_ns, meta={**meta, "format": fmt})


def decode_spooled(kind: str, raw: bytes, received_ns: int, tag: str, meta: Mapping[str, str]) -> Chunk:
    """Recovery: the same chunk the live path built from these bytes and meta."""
    return decode_chunk(kind, raw, received_ns, tag=tag, meta=meta, max_bytes=MAX_SPOOLED_BYTES)


def decode_entries(payload: bytes, fmt: str, shipper: str = "other", date_key: str = "date") -> tuple[Entry, ...]:
    """The entries of a decompressed body; ProtocolError says why a body will never parse."""
    keys = _time_keys(shipper, date_key)
    if fmt == "msgpack":
        return tuple(_msgpack_entries(payload, keys))
    if fmt == "lines":
        return tuple(e for line in payload.decode("utf-8", "replace").split("\n") for e in _line(line))
    text = payload.decode("utf-8", "replace")  # a bad byte costs one character, not the chunk
    records: Iterable[dict[str, Any]]
    if fmt == "json":
        records = _json_array(text)
    elif fmt == "json_lines":
        records = _json_lines(text)
    elif fmt == "json_stream":
        records = _json_stream(text)
    else:
        raise ProtocolError(f"unknown body format {fmt!r}")
    return tuple(_entry(record, keys) for record in records)


def decode_item(raw: bytes, fmt: str, shipper: str = "other", date_key: str = "date") -> tuple[Entry, ...]:
    """The entries of one line (``lines``, ``json_lines``) or one msgpack object, for replay.

    Items joined (lines by ``\\n``) decode with ``decode_entries`` to the same entries. Blank
    lines and group markers give none; ProtocolError gives the bare reason.
    """
    keys = _time_keys(shipper, date_key)
    if fmt == "msgpack":
        unpacker = new_unpacker(len(raw))
        unpacker.feed(raw)
        try:
            item = unpacker.unpack()
        except Exception as exc:  # any unpack failure is bad input
            raise ProtocolError("not valid msgpack") from exc
        if unpacker.tell() != len(raw):
            raise ProtocolError("more than one msgpack object")
        return tuple(_msgpack_item(item, keys))
    text = raw.decode("utf-8", "replace")
    if fmt == "lines":
        return _line(text)
    if fmt == "json_lines":
        return (_entry(_json_object(text), keys),) if text.strip() else ()
    raise ProtocolError(f"format {fmt!r} has no items")


def _line(text: str) -> tuple[Entry, ...]:
    """A text line as ``{"log": line}`` (its CR of a CRLF end dropped); none for an empty line."""
    text = text.removesuffix("\r")
    return (Entry(None, {"log": text}),) if text else ()


def _json_object(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ProtocolError("not a JSON object")
    return record


def _json_array(text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ProtocolError("JSON body is not an array of objects")
    for i, record in enumerate(value):
        if not isinstance(record, dict):
            raise ProtocolError(f"record {i} is not a JSON object")
    return value


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield _json_object(line)
        except ProtocolError as exc:
            raise ProtocolError(f"line {number} is {exc}") from None


def _json_stream(text: str) -> Iterator[dict[str, Any]]:
    """Objects back to back, with or without whitespace between them (json_stream, NDJSON)."""
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]  # matches the empty string
    index = 0
    while pos < len(text):
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"record {index} is not valid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise ProtocolError(f"record {index} is not a JSON object")
        yield record
        index += 1
        pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]


def _msgpack_entries(payload: bytes, keys: tuple[str, ...]) -> Iterator[Entry]:
    """Fluent Bit's raw chunk (``[[time, metadata], record]`` / ``[time, record]``) or maps."""
    unpacker = new_unpacker(len(payload))
    unpacker.feed(payload)
    end = 0
    index = 0
    try:
        for item in unpacker:
            yield from _msgpack_item(item, keys)
            end = unpacker.tell()
            index += 1
    except ProtocolError as exc:
        raise ProtocolError(f"record {index}: {exc}") from None
    except Exception as exc:  # any unpack failure is bad input
        raise ProtocolError(f"record {index} is not valid msgpack") from exc
    if end != len(payload):
        raise ProtocolError(f"record {index} ends mid-record")


def _msgpack_item(item: object, keys: tuple[str, ...]) -> Iterator[Entry]:
    if isinstance(item, dict):
        yield _entry(item, keys)
    else:
        yield from forward_entries([item])  # group markers yield nothing


def _time_keys(shipper: str, date_key: str) -> tuple[str, ...]:
    """The record keys that may hold the event time, first match wins."""
    if shipper == "fluent-bit":
        return (date_key,)
    if shipper == "vector":
        return (_VECTOR_TIME_KEY,)
    return (date_key, _VECTOR_TIME_KEY)


def _entry(record: dict[Any, Any], keys: tuple[str, ...]) -> Entry:
    """One record: its time key (Fluent Bit's date, Vector's timestamp) becomes the entry time.

    Fluent Bit >= 4.0.2 moves group attributes and metadata into ``__internal__``; that map
    becomes the entry's metadata, as in the Forward protocol.
    """
    time_ns = None
    for key in keys:
        if key in record:
            time_ns = parse_time_ns(record[key])
            if time_ns is not None:
                del record[key]
                break
    metadata = None
    if keys != (_VECTOR_TIME_KEY,) and isinstance(record.get(_FLUENT_BIT_INTERNAL), dict):
        metadata = record.pop(_FLUENT_BIT_INTERNAL) or None
    return Entry(time_ns, record, metadata)
