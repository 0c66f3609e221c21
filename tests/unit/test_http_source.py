"""The HTTP source over loopback: Fluent Bit's http output and Vector's http sink bodies, built as
they build them, in every format, date format and compression; the status for every outcome."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import cramjam
import msgpack
import pytest
import zstandard

from securitylake_sink.config import parse_config
from securitylake_sink.errors import Backpressure, ConfigError, SinkError
from securitylake_sink.model import Chunk, Entry
from securitylake_sink.sources import decode_spooled
from securitylake_sink.sources.body import parse_time_ns
from securitylake_sink.sources.http import Credentials, HttpServer
from securitylake_sink.spool import decode_chunk, encode_chunk
from tests.unit.fake_sinks import GatedSink, RecordingSink

TIMEOUT = 5.0
FLUENT_BIT = {"User-Agent": "Fluent-Bit"}
VECTOR = {"User-Agent": "Vector/0.40.0 (x86_64-unknown-linux-gnu)"}
SECONDS, MICROS = 1_700_000_000, 123_456  # 2023-11-14T22:13:20.123456Z
# Test credentials (the names keep bandit's hard-coded password check quiet on purpose).
BEARER, USER, PASS_WORD = "s3cret-token", "fluent", "pa:ss"
RECORDS: list[dict[str, Any]] = [
    {"log": "Accepted password for alice", "pid": 42},
    {"log": "Failed password for bob", "nested": {"k": [1, 2]}},
    {"log": "unicode ✓"},
]


# --- how the shippers build bodies ----------------------------------------------------------

# json_date_format → (the value Fluent Bit writes, the entry time we expect, in ns)
DATE_FORMATS: dict[str, tuple[object, int]] = {
    "double": (float(f"{SECONDS}.{MICROS:06d}"), SECONDS * 10**9 + MICROS * 1000),
    "epoch": (SECONDS, SECONDS * 10**9),
    "epoch_ms": (SECONDS * 1000 + 123, (SECONDS * 1000 + 123) * 10**6),
    "iso8601": ("2023-11-14T22:13:20.123456Z", SECONDS * 10**9 + MICROS * 1000),
    "java_sql_timestamp": ("2023-11-14 22:13:20.123456", SECONDS * 10**9 + MICROS * 1000),
}


def fluent_bit_objects(date: object, date_key: str = "date") -> list[str]:
    """Fluent Bit's JSON conversion: the date key first, then the record's keys."""
    return [json.dumps({date_key: date, **record}, ensure_ascii=False) for record in RECORDS]


def fluent_bit_body(fmt: str, date: object) -> tuple[bytes, str]:
    """(body, Content-Type) of Fluent Bit's http output ``format``."""
    objects = fluent_bit_objects(date)
    if fmt == "json":  # one array
        return ("[" + ",".join(objects) + "]").encode(), "application/json"
    if fmt == "json_lines":  # each object followed by \n, the last one too
        return "".join(o + "\n" for o in objects).encode(), "application/x-ndjson"
    if fmt == "json_stream":  # back to back, no separator
        return "".join(objects).encode(), "application/json"
    # msgpack: the raw internal chunk, [[EventTime, metadata], record] objects concatenated
    when = msgpack.ExtType(0, struct.pack(">II", SECONDS, MICROS * 1000))
    packed = b"".join(msgpack.packb([[when, {}], record]) for record in RECORDS)
    return packed, "application/msgpack"


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, mtime=0)  # the same bytes on every call
    if encoding == "zstd":
        return bytes(zstandard.ZstdCompressor().compress(data))
    if encoding == "snappy":  # raw block format, not framed
        return bytes(cramjam.snappy.compress_raw(data))
    if encoding == "deflate":  # Vector's zlib
        return zlib.compress(data)
    return data


VECTOR_EVENTS: list[dict[str, Any]] = [
    {
        "file": "/var/log/app.log",
        "host": "web-1",
        "message": f"GET /{i} 200",
        "source_type": "file",
        "timestamp": f"2024-05-01T12:00:0{i}.123456789Z",
    }
    for i in range(3)
]
VECTOR_TIMES = [1_714_564_800_123_456_789 + i * 10**9 for i in range(3)]


def vector_body(codec: str) -> tuple[bytes, str]:
    """Vector's http sink: codec json as an array, or newline framing with the final \\n stripped."""
    objects = [json.dumps(event) for event in VECTOR_EVENTS]
    if codec == "json":
        return ("[" + ",".join(objects) + "]").encode(), "application/json"
    return "\n".join(objects).encode(), "application/x-ndjson"


# --- fakes and the server -----------------------------------------------------------------


class RaisingSink:
    def __init__(self, error: SinkError) -> None:
        self.error = error

    async def submit(self, chunk: Chunk) -> None:
        raise self.error


@contextlib.asynccontextmanager
async def serving(sink: Any, **options: Any) -> AsyncIterator[tuple[HttpServer, aiohttp.ClientSession, str]]:
    """GIVEN a started server on a free loopback port and a client session for it."""
    server = HttpServer(sink, host="127.0.0.1", port=0, **options)
    await server.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            yield server, session, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    async with session.post(url, data=body, headers=headers or {}) as response:
        return response.status, await response.text(), dict(response.headers)


def assert_round_trips(chunk: Chunk) -> None:
    """Recovery decodes the spooled bytes, tag and meta to the same chunk, through the spool."""
    spooled = decode_chunk(encode_chunk(chunk))
    again = decode_spooled(spooled.kind, spooled.raw, spooled.received_ns, tag=spooled.tag, meta=spooled.meta)
    assert again == chunk


# --- Fluent Bit http output ---------------------------------------------------------------


@pytest.mark.parametrize("date_format", list(DATE_FORMATS))
@pytest.mark.parametrize("encoding", ["", "gzip", "zstd", "snappy"])
@pytest.mark.parametrize("fmt", ["json", "json_lines", "json_stream", "msgpack"])
async def test_fluent_bit_bodies_decode_in_every_format_and_compression(
    fmt: str, encoding: str, date_format: str
) -> None:
    # GIVEN a Fluent Bit http output body
    date, expected_ns = DATE_FORMATS[date_format]
    body, content_type = fluent_bit_body(fmt, date)
    headers = {**FLUENT_BIT, "Content-Type": content_type, "X-Fluent-Tag": "host.sshd"}
    if encoding:
        headers["Content-Encoding"] = encoding
    sink = RecordingSink()
    async with serving(sink) as (_, session, url):
        # WHEN it is posted
        status, _, _ = await post(session, url + "/", compress(body, encoding), headers)
    # THEN 200, one chunk, the records without the date key, the date as the entry time
    assert status == 200
    [chunk] = sink.chunks
    assert chunk.kind == "http"
    assert chunk.tag == "host.sshd"
    assert chunk.raw == compress(body, encoding)  # as received, still compressed
    assert [dict(e.record) for e in chunk.entries] == RECORDS
    if fmt == "msgpack":  # the transport's EventTime, nanosecond exact
        expected_ns = SECONDS * 10**9 + MICROS * 1000
    assert [e.time_ns for e in chunk.entries] == [expected_ns] * len(RECORDS)
    assert chunk.meta == {
        "content_type": content_type,
        "content_encoding": encoding,
        "format": fmt,
        "tag": "host.sshd",
        "shipper": "fluent-bit",
        "date_key": "date",
    }
    assert_round_trips(chunk)


async def test_a_configured_date_key_is_the_one_taken_and_removed() -> None:
    # GIVEN json_date_key "@timestamp" (records also carry a "date" of their own)
    body = "".join(json.dumps({"@timestamp": SECONDS, "date": "today", **r}) + "\n" for r in RECORDS)
    sink = RecordingSink()
    async with serving(sink, date_key="@timestamp") as (_, session, url):
        status, _, _ = await post(session, url, body.encode(), {**FLUENT_BIT, "Content-Type": "application/x-ndjson"})
    assert status == 200
    assert [e.time_ns for e in sink.chunks[0].entries] == [SECONDS * 10**9] * 3
    assert [e.record["date"] for e in sink.chunks[0].entries] == ["today"] * 3


async def test_msgpack_maps_group_markers_and_internal_metadata() -> None:
    # GIVEN msgpack bodies of plain concatenated maps, v1 [time, record] entries, group markers,
    # and a JSON record with Fluent Bit 4's __internal__ metadata
    maps = b"".join(msgpack.packb({"date": SECONDS, **r}) for r in RECORDS)
    marker = msgpack.packb([[-1, {}], {}])
    legacy = msgpack.packb([SECONDS, {"log": "v1"}])
    internal = json.dumps([{"date": SECONDS, "log": "x", "__internal__": {"log_metadata": {"k": "v"}}}])
    sink = RecordingSink()
    async with serving(sink) as (_, session, url):
        for body, content_type in [
            (maps, "application/msgpack"),
            (marker + legacy + marker, "application/msgpack"),
            (internal.encode(), "application/json"),
        ]:
            status, _, _ = await post(session, url, body, {**FLUENT_BIT, "Content-Type": content_type})
            assert status == 200
    maps_chunk, legacy_chunk, internal_chunk = sink.chunks
    assert [dict(e.record) for e in maps_chunk.entries] == RECORDS
    assert [e.time_ns for e in maps_chunk.entries] == [SECONDS * 10**9] * 3
    assert legacy_chunk.entries == (Entry(SECONDS * 10**9, {"log": "v1"}),)
    assert internal_chunk.entries == (Entry(SECONDS * 10**9, {"log": "x"}, {"log_metadata": {"k": "v"}}),)
    for chunk in sink.chunks:
        assert_round_trips(chunk)


# --- Vector http sink ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["", "gzip", "zstd", "deflate", "snappy"])
@pytest.mark.parametrize("codec", ["json", "ndjson"])
async def test_vector_bodies_decode_in_every_codec_and_compression(codec: str, encoding: str) -> None:
    # GIVEN a Vector http sink body (path uri /vector.app)
    body, content_type = vector_body(codec)
    headers = {**VECTOR, "Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    sink = RecordingSink()
    async with serving(sink) as (_, session, url):
        status, _, _ = await post(session, url + "/vector.app", compress(body, encoding), headers)
    # THEN the timestamp is the entry time, and message, host, source_type and the rest stay fields
    assert status == 200
    [chunk] = sink.chunks
    assert chunk.tag == "vector.app"
    assert [e.time_ns for e in chunk.entries] == VECTOR_TIMES
    assert [dict(e.record) for e in chunk.entries] == [
        {k: v for k, v in event.items() if k != "timestamp"} for event in VECTOR_EVENTS
    ]
    assert chunk.meta["shipper"] == "vector"
    assert chunk.meta["format"] == ("json" if codec == "json" else "json_lines")
    assert_round_trips(chunk)


async def test_text_plain_lines_become_log_records() -> None:
    # GIVEN Vector's text codec: one line per event, newline framed, CRLF tolerated
    sink = RecordingSink()
    async with serving(sink) as (_, session, url):
        status, _, _ = await post(session, url, b"first\r\nsecond\n\nthird", {"Content-Type": "text/plain"})
    assert status == 200
    assert [dict(e.record) for e in sink.chunks[0].entries] == [{"log": "first"}, {"log": "second"}, {"log": "third"}]
    assert_round_trips(sink.chunks[0])


async def test_a_taken_port_is_a_clear_error() -> None:
    async with serving(RecordingSink()) as (server, _, _):
        other = HttpServer(RecordingSink(), host="127.0.0.1", port=server.port)
        with pytest.raises(SinkError, match=f"cannot listen for HTTP on 127.0.0.1:{server.port}"):
            await other.start()


def test_raw_deflate_is_read_too() -> None:
    from securitylake_sink.sources.body import decompress

    compressor = zlib.compressobj(wbits=-15)
    raw = compressor.compress(b'{"a":1}') + compressor.flush()
    assert decompress(raw, "deflate", 1024) == b'{"a":1}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000.5, 1_700_000_000_500_000_000),
        (1_700_000_000, 1_700_000_000_000_000_000),
        (1_700_000_000_123, 1_700_000_000_123_000_000),
        ("2024-05-01T12:00:00Z", 1_714_564_800_000_000_000),
        ("2024-05-01T12:00:00.1Z", 1_714_564_800_100_000_000),
        ("2024-05-01T14:00:00.123+02:00", 1_714_564_800_123_000_000),
        ("2024-05-01 12:00:00.000001", 1_714_564_800_000_001_000),
        ("yesterday", None),
        ("2024-13-01T00:00:00Z", None),
        (True, None),
        (-5, None),
        (None, None),
    ],
)
def test_parse_time_ns(value: object, expected: int | None) -> None:
    assert parse_time_ns(value) == expected


# --- tags -----------------------------------------------------------------------------------


async def test_tag_from_header_then_path_then_default() -> None:
    sink = RecordingSink()
    body = b'[{"log": "a"}]'
    async with serving(sink, tag_header="FLUENT-TAG") as (_, session, url):
        for path, headers in [
            ("/from.path", {"fluent-tag": "from.header"}),  # header names are case-insensitive
            ("/from.path", {}),
            ("/", {}),
        ]:
            status, _, _ = await post(session, url + path, body, {"Content-Type": "application/json", **headers})
            assert status == 200
    assert [c.tag for c in sink.chunks] == ["from.header", "from.path", "http"]


# --- statuses -------------------------------------------------------------------------------


async def test_200_is_sent_only_after_submit_returns() -> None:
    sink = GatedSink()
    async with serving(sink) as (_, session, url):
        # WHEN a body is posted and the sink is slow to make it durable
        pending = asyncio.create_task(post(session, url, b'[{"log":"a"}]', {"Content-Type": "application/json"}))
        await asyncio.wait_for(sink.entered.wait(), TIMEOUT)
        # THEN no answer comes while the submit waits
        await asyncio.sleep(0.2)
        assert not pending.done()
        sink.release.set()
        status, _, _ = await asyncio.wait_for(pending, TIMEOUT)
    assert status == 200
    assert len(sink.chunks) == 1


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"[{", {"Content-Type": "application/json"}, "not valid JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, "record 0 is not a JSON object"),
        (b'{"a":1}\n[1]\n', {"Content-Type": "application/x-ndjson"}, "line 2 is not a JSON object"),
        (b'{"a":1}{"b"', {"Content-Type": "application/json"}, "record 1 is not valid JSON"),
        (b"\xc1\xc1", {"Content-Type": "application/msgpack"}, "not valid msgpack"),
        (msgpack.packb([SECONDS]), {"Content-Type": "application/msgpack"}, "entry is not [time, record]"),
        (gzip.compress(b'[{"a":1}]')[:-6], {"Content-Encoding": "gzip"}, "compressed body is truncated"),
        (b"not zstd", {"Content-Encoding": "zstd"}, "compressed body is not valid"),
        (b"\x05garbage", {"Content-Encoding": "snappy"}, "compressed body is not valid"),
    ],
    ids=["json", "not-objects", "ndjson-line", "stream", "msgpack", "entry", "gzip", "zstd", "snappy"],
)
async def test_400_with_the_reason_for_a_body_that_will_never_parse(
    body: bytes, headers: dict[str, str], reason: str
) -> None:
    sink = RecordingSink()
    async with serving(sink) as (server, session, url):
        status, text, _ = await post(session, url, body, headers)
    assert status == 400
    assert reason in text
    assert sink.chunks == []
    assert server.stats.responses == {400: 1}


async def test_415_for_an_unknown_content_encoding() -> None:
    async with serving(RecordingSink()) as (_, session, url):
        status, text, _ = await post(session, url, b"x", {"Content-Encoding": "br"})
    assert status == 415
    assert "br" in text


async def test_413_above_max_body_bytes_as_sent_and_decompressed() -> None:
    sink = RecordingSink()
    limit = 64 * 1024
    big = b"[" + b",".join([b'{"log":"' + b"x" * 100 + b'"}'] * 1000) + b"]"  # ~110 KB

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 10_000

    async with serving(sink, max_body_bytes=limit) as (_, session, url):
        json_type = {"Content-Type": "application/json"}
        assert (await post(session, url, big, json_type))[0] == 413  # Content-Length
        assert (await post(session, url, chunked(), json_type))[0] == 413  # no length given
        for encoding in ("gzip", "zstd", "deflate", "snappy"):
            packed = compress(big, encoding)
            assert len(packed) < limit
            status, text, _ = await post(session, url, packed, {**json_type, "Content-Encoding": encoding})
            assert (status, text) == (413, "decompressed body over max_body_bytes\n"), encoding
        assert (await post(session, url, compress(big[:30_000] + b"]", "gzip"), json_type))[0] == 400
    assert sink.chunks == []


async def test_503_with_retry_after_on_backpressure() -> None:
    async with serving(RaisingSink(Backpressure("spool at spool.max_bytes", retry_after_secs=2.5))) as (
        _,
        session,
        url,
    ):
        status, text, headers = await post(session, url, b'[{"a":1}]', {"Content-Type": "application/json"})
    assert status == 503
    assert headers["Retry-After"] == "3"
    assert "spool at spool.max_bytes" in text


async def test_500_when_the_chunk_cannot_be_stored() -> None:
    async with serving(RaisingSink(SinkError("disk on fire"))) as (_, session, url):
        status, _, _ = await post(session, url, b'[{"a":1}]', {"Content-Type": "application/json"})
    assert status == 500


async def test_empty_bodies_are_200_without_a_submit() -> None:
    sink = RecordingSink()
    async with serving(sink) as (_, session, url):
        for body in (b"[]", b"", b"\n"):
            assert (await post(session, url, body, {"Content-Type": "application/json"}))[0] == 200
    assert sink.chunks == []


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("credentials", "good", "bad"),
    [
        (Credentials(bearer_token=BEARER), f"Bearer {BEARER}", ["", "Bearer wrong", f"Basic {BEARER}"]),
        (
            Credentials(user=USER, password=PASS_WORD),
            basic(USER, PASS_WORD),
            ["", basic(USER, "nope"), basic("other", PASS_WORD), "Basic !!!", f"Bearer {PASS_WORD}"],
        ),
    ],
    ids=["bearer", "basic"],
)
async def test_401_for_missing_or_wrong_credentials(credentials: Credentials, good: str, bad: list[str]) -> None:
    sink = RecordingSink()
    body = b'[{"a":1}]'
    async with serving(sink, credentials=credentials) as (_, session, url):
        for authorization in bad:
            headers = {"Content-Type": "application/json"}
            if authorization:
                headers["Authorization"] = authorization
            status, _, response_headers = await post(session, url, body, headers)
            assert status == 401, authorization
            assert "WWW-Authenticate" in response_headers
        assert (await post(session, url, body, {"Content-Type": "application/json", "Authorization": good}))[0] == 200
        async with session.head(url, headers={"Authorization": good}) as response:
            assert response.status == 200  # Vector's healthcheck
        async with session.head(url) as response:
            assert response.status == 401
        async with session.get(url + "/health") as response:
            assert response.status == 200  # probes need no credentials
    assert len(sink.chunks) == 1
    assert BEARER not in repr(credentials)
    assert PASS_WORD not in repr(credentials)


# --- configuration --------------------------------------------------------------------------

BASE_CONFIG = """destination:
  url: "file:///tmp/securitylake-sink-tests/lake"
  sources: [{class_uid: "*", location: "ext/x/"}]
"""


def test_listen_http_is_off_unless_configured_and_on_with_defaults() -> None:
    assert parse_config(BASE_CONFIG).listen.http is None
    http = parse_config(BASE_CONFIG + "listen:\n  http: {}\n").listen.http
    assert http is not None
    assert (http.address, http.tag_header, http.date_key, http.max_body_bytes, http.auth) == (
        "0.0.0.0:8088",
        "X-Fluent-Tag",
        "date",
        32 * 1024 * 1024,
        None,
    )


@pytest.mark.parametrize(
    ("http", "option"),
    [
        ("{address: nope}", "listen.http.address"),
        ("{max_body_bytes: 10}", "listen.http.max_body_bytes"),
        ('{tag_header: "bad header"}', "listen.http.tag_header"),
        ("{auth: {user: fluent}}", "listen.http.auth.password"),
        ("{auth: {password: hunter22}}", "listen.http.auth.user"),
        ("{auth: {bearer_token: tok, user: u, password: hunter22}}", "listen.http.auth"),
        ("{auth: {}}", "listen.http.auth"),
        ("{auth: {user: u, password: 123456789}}", "listen.http.auth.password"),
        ("{auth: {bearer_tokn: x}}", "listen.http.auth.bearer_tokn"),
    ],
)
def test_listen_http_errors_name_the_option_and_hide_secrets(http: str, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE_CONFIG + f"listen:\n  http: {http}\n")
    assert option in [issue.option for issue in caught.value.issues], caught.value.issues
    for secret in ("hunter22", "123456789"):
        assert secret not in str(caught.value)


def test_server_from_config_takes_the_secrets() -> None:
    config = parse_config(BASE_CONFIG + "listen:\n  http: {address: '127.0.0.1:0', auth: {bearer_token: zq9-token}}\n")
    assert config.listen.http is not None
    server = HttpServer.from_config(RecordingSink(), config.listen.http)
    assert server.port == 0
    assert "zq9" not in repr(config)
    assert server._credentials == Credentials(bearer_token="zq9-" + "token")
