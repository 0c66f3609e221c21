"""Forward protocol v1 decoding, no I/O: msgpack frames to ``Chunk`` values. The live server and
spool recovery share it, so a spooled ``Chunk.raw`` decodes to the same entries."""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "KIND",
    "MAX_ARRAY_LEN",
    "MAX_MAP_LEN",
    "MAX_READ_BYTES",
    "Decompressor",
    "FrameReader",
    "decode_frame",
    "decode_spooled",
    "decompress_members",
    "forward_entries",
    "new_unpacker",
    "new_zstd",
    "scan_frame",
]

import math
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol

import msgpack
import ormsgpack
import zstandard

from securitylake_sink.errors import FrameTooLarge, ProtocolError
from securitylake_sink.model import Chunk, DeferredEntries, Entry

KIND: Final = "forward"

# Fluent Bit chunks are about 2 MB and its in_forward caps frames at 6 MB (pipeline-protocols §6.5).
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
# Fluentd in_forward allows 256 MiB after decompression; decoded records take several times
# their packed size in memory, so a quarter of that.
DEFAULT_MAX_DECOMPRESSED_BYTES: Final = 64 * 1024 * 1024
# The largest read fed to a FrameReader at once: its unpacker may hold a frame plus this much.
MAX_READ_BYTES: Final = 64 * 1024
# msgpack allocates a container from its header before the items arrive, so cap the counts:
# a 2 MB Fluent Bit chunk holds well under a million entries, a record far fewer keys.
MAX_ARRAY_LEN: Final = 1_048_576
MAX_MAP_LEN: Final = 65_536

# Compressed input per decompression step. Deflate expands at most ~1032x and a zstd RLE block
# ~32768x, so one step yields at most ~8 MiB before the size cap is checked.
_GZIP_STEP: Final = 8 * 1024
_ZSTD_STEP: Final = 256

_NS_PER_SEC: Final = 1_000_000_000
_MAX_SECONDS: Final = 0xFFFFFFFF  # EventTime seconds are uint32
# Fluent Bit group start/end markers (§1.7): EventTime seconds -1/-2 as uint32, or plain ints.
_GROUP_MARKER_SECONDS: Final = frozenset({0xFFFFFFFF, 0xFFFFFFFE, -1, -2})
_EVENT_TIME_EXT: Final = 0
_TIMESTAMP_EXT: Final = -1  # msgpack's own timestamp extension
_EVENT_TIME_LEN: Final = 8  # uint32 seconds, uint32 nanoseconds, big-endian
_CODECS: Final = frozenset({"gzip", "zstd", "text"})
_KNOWN_OPTIONS: Final = frozenset({"chunk", "size", "compressed", "fluent_signal", "metadata"})
_LOGS_SIGNAL: Final = 0


def new_unpacker(max_buffer_size: int) -> msgpack.Unpacker:
    """The one msgpack configuration for Forward input (pipeline-protocols §7)."""
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",  # Fluentd sends binary entries as str32
        strict_map_key=False,
        max_buffer_size=max(max_buffer_size, 1),  # 0 would mean 4 GiB
        max_array_len=MAX_ARRAY_LEN,
        max_map_len=MAX_MAP_LEN,
        ext_hook=_ext_hook,
    )


class EventTime(int):
    """A Forward EventTime (ext type 0, §1.3) decoded to nanoseconds since the epoch."""

    __slots__ = ()


_ARRAY32 = struct.Struct(">BI")  # an array32 header: 0xDD, then the count
_EVENT_TIME_PARTS = struct.Struct(">II")  # uint32 seconds, uint32 nanoseconds
_FIXEXT8: Final = 0xD7
_EVENT_TIME_BYTES: Final = 2 + _EVENT_TIME_LEN  # 0xD7 0x00, then the 8 bytes
# An entry's empty metadata: a fixmap as msgpack writes it (0x80), or a map16/map32 header with a
# length of 0 (Fluent Bit writes a map32).
_EMPTY_MAP: Final = 0x80
_MAP16, _MAP32 = 0xDE, 0xDF
_UINT16, _UINT32 = struct.Struct(">H"), struct.Struct(">I")
_LOW32: Final = 0xFFFFFFFF


def _ext_hook(code: int, data: bytes) -> object:
    """EventTimes become ``EventTime`` as they are unpacked (once per record, so kept short);
    msgpack's timestamp (-1) becomes its ``Timestamp`` (msgpack's unpacker does that itself,
    ormsgpack hands it here); other extension values stay ExtType."""
    if code == _EVENT_TIME_EXT and len(data) == _EVENT_TIME_LEN:
        both = int.from_bytes(data)  # uint32 seconds, then uint32 nanoseconds, big-endian
        nanos = both & _LOW32
        if nanos < _NS_PER_SEC:
            return EventTime((both >> 32) * _NS_PER_SEC + nanos)
    elif code == _TIMESTAMP_EXT:
        return msgpack.Timestamp.from_bytes(data)
    return msgpack.ExtType(code, data)


def _fast_unpack(data: bytes) -> object | None:
    """The one object in ``data`` (checked whole already) decoded by ormsgpack, which caches map
    keys and builds records about twice as fast; None where it would differ from ``new_unpacker``
    (a map key that is not text, text that is not UTF-8, nesting past its limit), so the caller
    decodes with msgpack. Its length caps are not needed: every byte is in hand."""
    try:
        decoded: object = ormsgpack.unpackb(data, ext_hook=_ext_hook)
    except Exception:  # anything it refuses, msgpack decides
        return None
    return decoded


def _unpack_error(exc: Exception) -> ProtocolError:
    """Sort an exception raised while unpacking into too large (no resync) or invalid."""
    if isinstance(exc, ValueError) and "exceeds max_" in str(exc):
        return FrameTooLarge("str, bin, array or map over the cap")
    # FormatError, StackError, TypeError (unhashable map key), MemoryError on a lying header.
    return ProtocolError("frame is not valid msgpack")


class FrameReader:
    """Splits one connection's byte stream into top-level msgpack objects and their exact bytes.

    Feed at most ``MAX_READ_BYTES`` at a time (or one whole frame into a fresh reader), then
    drain ``frames()`` before feeding again. A partial frame waits for more bytes.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._unpacker = new_unpacker(max_frame_bytes + MAX_READ_BYTES)
        self._pending = bytearray()  # bytes fed since the end of the last complete frame
        self._offset = 0  # stream offset of _pending[0]

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame that has started but not ended."""
        return len(self._pending)

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            raise FrameTooLarge("frame over max_frame_bytes") from exc
        self._pending += data

    def frames(self) -> Iterator[tuple[object, bytes]]:
        """Yield each complete object with the bytes it came in; raise ProtocolError on garbage."""
        for raw in self.raw_frames():
            yield unpack_frame(raw), raw

    def raw_frames(self) -> Iterator[bytes]:
        """Yield the bytes of each complete frame without building its objects (``unpack_frame``
        does that later, so a frame waiting its turn costs its bytes only)."""
        while True:
            try:
                self._unpacker.skip()
            except msgpack.OutOfData:
                _check_header(self._pending)
                break
            except Exception as exc:  # any unpack failure is bad input
                raise _unpack_error(exc) from exc
            end = self._unpacker.tell()
            size = end - self._offset
            raw = bytes(self._pending[:size])
            del self._pending[:size]
            self._offset = end
            if size > self._max_frame_bytes:
                raise FrameTooLarge("frame over max_frame_bytes")
            yield raw
        # msgpack drops the parsed part of a partial frame from its buffer, so count it here.
        if len(self._pending) > self._max_frame_bytes:
            raise FrameTooLarge("frame over max_frame_bytes")


_CONTAINER_HEADERS: Final = {
    0xDC: (">H", MAX_ARRAY_LEN),
    0xDD: (">I", MAX_ARRAY_LEN),
    0xDE: (">H", MAX_MAP_LEN),
    0xDF: (">I", MAX_MAP_LEN),
}


def _check_header(pending: bytearray) -> None:
    """Refuse a frame whose top-level array or map header is over its cap before waiting for the
    rest (skipping, unlike unpacking, does not look at the caps)."""
    if not pending or pending[0] not in _CONTAINER_HEADERS:
        return
    form, cap = _CONTAINER_HEADERS[pending[0]]
    size = struct.calcsize(form)
    if len(pending) > size and struct.unpack_from(form, pending, 1)[0] > cap:
        raise FrameTooLarge("str, bin, array or map over the cap")


def unpack_frame(raw: bytes) -> object:
    """The object of one whole frame (as ``FrameReader.raw_frames`` yields them)."""
    unpacker = new_unpacker(len(raw))
    unpacker.feed(raw)
    try:
        return unpacker.unpack()
    except Exception as exc:  # any unpack failure is bad input
        raise _unpack_error(exc) from exc


def decode_frame(
    obj: object,
    raw: bytes,
    received_ns: int = 0,
    *,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    packed_objects: int | None = None,
) -> Chunk | None:
    """Turn one unpacked top-level object into a Chunk; ``None`` for a ``nil`` keep-alive.
    ``packed_objects``: how many objects a PackedForward payload holds, when a scan counted them."""
    if obj is None:
        return None
    if not isinstance(obj, list):
        raise ProtocolError("frame is not an array")
    if len(obj) < 2:
        raise ProtocolError("frame has fewer than 2 items")
    tag, second = obj[0], obj[1]
    if not isinstance(tag, str):
        raise ProtocolError("tag is not a str")
    mode = _mode_of(second)
    options_at = 3 if mode == "message" else 2
    if len(obj) > options_at + 1:
        raise ProtocolError("frame has too many items")
    options = _options(obj[options_at] if len(obj) > options_at else {})
    if isinstance(second, list):
        entries = forward_entries(second)
    elif isinstance(second, bytes | str):
        packed = second if isinstance(second, bytes) else second.encode("utf-8", "surrogateescape")
        payload = _decompress(packed, options.get("compressed", "text"), max_decompressed_bytes)
        entries = forward_entries(_unpack_all(payload, packed_objects))
    elif len(obj) < 3:
        raise ProtocolError("message frame has no record")
    else:
        # Fluent Bit's Message mode carries the record's metadata in the options (§1.4).
        entries = forward_entries([[second, obj[2]]], options.get("metadata"))
    return Chunk(
        kind=KIND,
        tag=tag,
        entries=entries,
        raw=bytes(raw),
        token=options.get("chunk"),
        received_ns=received_ns,
        meta=_meta(mode, options),
    )


# First bytes of msgpack types (the format's byte ranges): arrays, maps, str and bin.
_ARRAY_FIRST: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_MAP_FIRST: Final = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_RAW_FIRST: Final = frozenset(range(0xA0, 0xC0)) | {0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB}
_PAIR: Final = 0x92  # a fixarray of two: how shippers write an entry
_SECOND_FIRST: Final = _ARRAY_FIRST | _RAW_FIRST  # Forward's entries, PackedForward's payload


def scan_frame(
    raw: bytes,
    received_ns: int = 0,
    *,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
) -> Chunk | None:
    """``decode_frame(unpack_frame(raw), ...)``, checking the frame the same way but building
    only its tag, options and entry times: a Forward or PackedForward chunk's records are decoded
    when its entries are first read (``DeferredEntries``), off the event loop. Other frames (a
    keep-alive, Message mode's one record, anything malformed at the top) are decoded at once.

    What a structural check cannot see (a map key that is an array, a nested container over its
    cap) surfaces when the entries are read, as a ``ProtocolError``.
    """
    unpacker = new_unpacker(len(raw))
    unpacker.feed(raw)
    try:
        size = unpacker.read_array_header() if raw[:1] and raw[0] in _ARRAY_FIRST else 0
        if size in (2, 3):
            tag = unpacker.unpack()
            second_at = unpacker.tell()
            if isinstance(tag, str) and raw[second_at] in _SECOND_FIRST:
                limit = max_decompressed_bytes
                scan = _Scan(raw, tag, second_at, has_options=size == 3, received_ns=received_ns)
                return scan.chunk(unpacker, limit)
    except ProtocolError:
        raise
    except Exception as exc:  # any unpack failure is bad input
        raise _unpack_error(exc) from exc
    return decode_frame(unpack_frame(raw), raw, received_ns, max_decompressed_bytes=max_decompressed_bytes)


@dataclass(frozen=True, slots=True)
class _Scan:
    """A frame ``[tag, entries or packed entries, options?]`` as far as ``scan_frame`` read it."""

    raw: bytes
    tag: str
    second_at: int  # where the entries (or the packed entries) start
    has_options: bool
    received_ns: int

    def chunk(self, unpacker: msgpack.Unpacker, max_decompressed: int) -> Chunk:
        """Check the rest of the frame (``unpacker`` is at its second item) and count its entries."""
        raw = self.raw
        packed = raw[self.second_at] in _RAW_FIRST
        second = unpacker.unpack() if packed else unpacker.skip()
        options = _options(unpacker.unpack() if self.has_options else {})
        objects = None
        if packed:
            data = second if isinstance(second, bytes) else second.encode("utf-8", "surrogateescape")
            payload = _decompress(data, options.get("compressed", "text"), max_decompressed)
            count, objects = _scan_entries(payload, None)
        else:
            count, _ = _scan_entries(memoryview(raw)[self.second_at :], -1)
        decode = partial(_decode_entries, raw, self.received_ns, max_decompressed, objects)
        return Chunk(
            kind=KIND,
            tag=self.tag,
            entries=DeferredEntries(count, decode),
            raw=raw,
            token=options.get("chunk"),
            received_ns=self.received_ns,
            meta=_meta("packed_forward" if packed else "forward", options),
        )


def _decode_entries(raw: bytes, received_ns: int, max_decompressed: int, objects: int | None) -> Sequence[Entry]:
    """The entries of a scanned frame; ``objects`` is how many its packed entries hold."""
    frame = _fast_unpack(raw)
    if frame is None:
        frame = unpack_frame(raw)
    chunk = decode_frame(frame, raw, received_ns, max_decompressed_bytes=max_decompressed, packed_objects=objects)
    return chunk.entries if chunk is not None else ()


def _usual(buffer: bytes | memoryview, at: int, end: int) -> bool:
    """Whether the entry at ``at`` is ``[EventTime, map]`` or Fluent Bit's ``[[EventTime, {}],
    map]`` (a fixext8 time; the empty map in any of msgpack's three map encodings), its time a
    real one (not a group marker), read from the bytes."""
    if at + 1 >= end:
        return False
    nested = buffer[at + 1] == _PAIR
    time_at = at + 1 + nested
    record_at = time_at + _EVENT_TIME_BYTES
    if record_at + nested >= end or buffer[time_at] != _FIXEXT8 or buffer[time_at + 1] != _EVENT_TIME_EXT:
        return False
    if nested:  # past the {} that follows a nested time
        first = buffer[record_at]
        if first == _EMPTY_MAP:
            record_at += 1
        elif first == _MAP32 and record_at + 5 < end and not _UINT32.unpack_from(buffer, record_at + 1)[0]:
            record_at += 5
        elif first == _MAP16 and record_at + 3 < end and not _UINT16.unpack_from(buffer, record_at + 1)[0]:
            record_at += 3
        else:
            return False
    seconds, nanos = _EVENT_TIME_PARTS.unpack_from(buffer, time_at + 2)
    real = nanos < _NS_PER_SEC and seconds > 0 and seconds not in _GROUP_MARKER_SECONDS
    return real and buffer[record_at] in _MAP_FIRST


def _scan_entries(buffer: bytes | memoryview, size: int | None) -> tuple[int, int]:
    """Check the entries in ``buffer`` as ``forward_entries`` would: (those that are not group
    markers, all of them). An array of them (``size`` -1) or, with ``size`` None, concatenated
    ones filling the buffer (bytes that are not whole entries are refused as ``_unpack_all``
    refuses them). The usual ``[EventTime, {record}]`` has its record skipped unbuilt."""
    unpacker = new_unpacker(len(buffer))
    unpacker.feed(buffer)
    if size is not None:
        size = unpacker.read_array_header()
    tell, pair, unpack, skip = unpacker.tell, unpacker.read_array_header, unpacker.unpack, unpacker.skip
    end = len(buffer)
    count = seen = 0
    try:
        while (seen < size) if size is not None else (tell() < end):
            seen += 1
            at = tell()
            if buffer[at] == _PAIR:
                if _usual(buffer, at, end):  # checked in place: the record is skipped unbuilt
                    skip()
                    count += 1
                    continue
                pair()
                when = unpack()
                # [EventTime, {record}], or Fluent Bit's [[EventTime, {metadata}], {record}]
                stamp = when[0] if type(when) is list and len(when) == 2 and type(when[1]) is dict else when
                if type(stamp) is EventTime:
                    seconds = stamp // _NS_PER_SEC
                    if 0 < seconds <= _MAX_SECONDS and seconds not in _GROUP_MARKER_SECONDS:
                        if buffer[tell()] not in _MAP_FIRST:
                            raise ProtocolError("record is not a map")
                        skip()
                        count += 1
                        continue
                count += len(forward_entries([[when, unpack()]]))
            else:
                count += len(forward_entries([unpack()]))
    except ProtocolError:
        raise
    except Exception as exc:  # any unpack failure is bad input
        if size is not None:
            raise _unpack_error(exc) from exc
        # packed entries: running out (OutOfData, or no record after a time) means a cut entry
        cut = isinstance(exc, msgpack.OutOfData | IndexError)
        raise ProtocolError("packed entries end mid-entry" if cut else "packed entries are not valid msgpack") from exc
    return count, seen


def decode_spooled(raw: bytes, received_ns: int) -> Chunk:
    """The chunk of a frame's bytes as stored from ``Chunk.raw``: checked by ``scan_frame`` like
    the live path, so what only building the records finds surfaces where the live path's does
    (when the entries are read), not here."""
    reader = FrameReader(max(len(raw), 1))
    reader.feed(raw)
    frames = list(reader.raw_frames())
    if len(frames) != 1 or reader.pending_bytes:
        raise ProtocolError("spooled bytes are not exactly one frame")
    chunk = scan_frame(raw, received_ns)
    if chunk is None:
        raise ProtocolError("spooled frame is a keep-alive")
    return chunk


def _mode_of(second: object) -> str:
    """The event mode, told apart by the type of the frame's second element (§1.1)."""
    if isinstance(second, list):
        return "forward"
    if isinstance(second, bytes | str):
        return "packed_forward"
    if isinstance(second, int | float | msgpack.ExtType | msgpack.Timestamp) and not isinstance(second, bool):
        return "message"
    raise ProtocolError("unknown event mode")


def _options(value: object) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("options are not a map")
    signal = value.get("fluent_signal", _LOGS_SIGNAL)
    if isinstance(signal, bool) or signal != _LOGS_SIGNAL:
        # Metrics and traces arrive as a CMetrics/CTraces blob, not log entries (§1.4).
        raise ProtocolError("fluent_signal is not logs")
    if "chunk" in value and not isinstance(value["chunk"], str):
        raise ProtocolError("chunk option is not a str")
    if "compressed" in value and value["compressed"] not in _CODECS:
        raise ProtocolError("unknown compressed")
    if "metadata" in value and not isinstance(value["metadata"], dict):
        raise ProtocolError("metadata option is not a map")
    return value


def _meta(mode: str, options: Mapping[Any, Any]) -> dict[str, str]:
    """Chunk.meta: the event mode, the codec, and Fluent Bit ``add_option`` str pairs."""
    meta = {
        f"option.{key}": value
        for key, value in options.items()
        if isinstance(key, str) and isinstance(value, str) and key not in _KNOWN_OPTIONS
    }
    codec = options.get("compressed")
    if codec is not None:
        meta["compressed"] = codec
        if mode == "packed_forward" and codec != "text":
            mode = "compressed_packed_forward"
    meta["mode"] = mode
    return meta


def forward_entries(items: Iterable[object], metadata: Mapping[Any, Any] | None = None) -> tuple[Entry, ...]:
    """Decode ``[time, record]`` / ``[[time, metadata], record]`` items, skipping group markers."""
    entries: list[Entry] = []
    no_metadata = metadata or None
    for item in items:
        # The usual entries take the short way (one per record): [EventTime, {record}], and
        # Fluent Bit's [[EventTime, {metadata}], {record}] (its usual metadata is {}).
        if type(item) is list and len(item) == 2:
            when, record = item
            meta = no_metadata
            if type(when) is list and len(when) == 2 and type(when[1]) is dict:
                when, meta = when[0], when[1] or None
            if type(when) is EventTime and type(record) is dict:
                seconds = when // _NS_PER_SEC
                if 0 < seconds <= _MAX_SECONDS and seconds not in _GROUP_MARKER_SECONDS:
                    entries.append(Entry(int(when), record, meta))
                    continue
        if not isinstance(item, list) or len(item) != 2:
            raise ProtocolError("entry is not [time, record]")
        when, record = item
        entry_metadata = metadata
        if isinstance(when, list):
            if len(when) != 2:
                raise ProtocolError("entry time is not [time, metadata]")
            when, entry_metadata = when
            if not isinstance(entry_metadata, dict):
                raise ProtocolError("entry metadata is not a map")
        seconds, nanos = _split_time(when)
        if seconds in _GROUP_MARKER_SECONDS:
            continue
        if not 0 <= seconds <= _MAX_SECONDS or not 0 <= nanos < _NS_PER_SEC:
            raise ProtocolError("bad time")
        if not isinstance(record, dict):
            raise ProtocolError("record is not a map")
        # Fluentd takes a time whose whole seconds are 0 as "now": unknown, not 1970 (§1.3).
        time_ns = None if seconds == 0 else seconds * _NS_PER_SEC + nanos
        # Fluent Bit's usual {} becomes None, as in Message mode where it omits empty metadata.
        entries.append(Entry(time_ns, record, entry_metadata or None))
    return tuple(entries)


def _split_time(value: object) -> tuple[int, int]:
    """(seconds, nanoseconds) of an int, a float or an EventTime (ext type 0, §1.3)."""
    if type(value) is EventTime:
        return divmod(int(value), _NS_PER_SEC)
    if isinstance(value, bool):
        raise ProtocolError("bad time")
    if isinstance(value, int):
        return value, 0
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ProtocolError("bad time")
        whole = math.floor(value)
        # value - whole is exact in binary floating point; only the scaling rounds.
        return divmod(whole * _NS_PER_SEC + round((value - whole) * _NS_PER_SEC), _NS_PER_SEC)
    if not isinstance(value, msgpack.ExtType) or value.code != _EVENT_TIME_EXT:
        raise ProtocolError("bad time")  # msgpack's own Timestamp (ext -1) is not a Fluent time
    if len(value.data) != _EVENT_TIME_LEN:
        raise ProtocolError("bad time")
    seconds, nanos = _EVENT_TIME_PARTS.unpack(value.data)
    return int(seconds), int(nanos)


def _unpack_all(payload: bytes, objects: int | None = None) -> list[object]:
    """The concatenated Entry objects of a PackedForward payload (not wrapped in an array);
    ``objects``, when a scan counted them, lets ormsgpack decode them as one array."""
    if objects is not None:
        fast = _fast_unpack(_ARRAY32.pack(0xDD, objects) + payload)
        if isinstance(fast, list) and len(fast) == objects:
            return fast
    unpacker = new_unpacker(len(payload))
    unpacker.feed(payload)
    items: list[object] = []
    end = 0  # tell() also counts a trailing partial entry, so note where whole ones end
    try:
        for item in unpacker:
            items.append(item)
            end = unpacker.tell()
    except Exception as exc:  # any unpack failure is bad input
        raise ProtocolError("packed entries are not valid msgpack") from exc
    if end != len(payload):
        raise ProtocolError("packed entries end mid-entry")
    return items


class Decompressor(Protocol):
    """What zlib's and zstandard's streaming decompressors have in common."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, /) -> bytes: ...


def _decompress(payload: bytes, codec: str, max_bytes: int) -> bytes:
    if codec == "gzip":
        return decompress_members(payload, _new_gzip, _GZIP_STEP, max_bytes)
    if codec == "zstd":
        return decompress_members(payload, new_zstd, _ZSTD_STEP, max_bytes)
    return payload  # "text": not compressed


def _new_gzip() -> Decompressor:
    return zlib.decompressobj(wbits=31)


def new_zstd() -> Decompressor:
    decompressor: Decompressor = zstandard.ZstdDecompressor().decompressobj()
    return decompressor


def decompress_members(
    payload: bytes,
    new: Callable[[], Decompressor],
    step: int,
    max_bytes: int,
    *,
    what: str = "payload",
    over: ProtocolError | None = None,
) -> bytes:
    """Decompress concatenated gzip members or zstd frames (or one zlib stream) in bounded
    steps, up to max_bytes; ``over`` is raised past it (default: a ProtocolError)."""
    out = bytearray()
    pos = 0
    try:
        while pos < len(payload):  # one member or frame per pass
            decompressor = new()
            while not decompressor.eof:
                if pos >= len(payload):
                    raise ProtocolError(f"compressed {what} is truncated")
                piece = payload[pos : pos + step]
                pos += len(piece)
                out += decompressor.decompress(piece)
                if len(out) > max_bytes:
                    raise over or ProtocolError("decompressed size over the cap")
            pos -= len(decompressor.unused_data)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise ProtocolError(f"compressed {what} is not valid") from exc
    return bytes(out)
