"""The Forward server over loopback TCP: acks after durable submits, bad input closes one connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from securitylake_sink.errors import Backpressure, SinkError
from securitylake_sink.model import Chunk
from securitylake_sink.sources import forward
from securitylake_sink.sources.forward import ForwardServer, decode_spooled
from tests.unit.fake_sinks import GatedSink, RecordingSink

TIMEOUT = 5.0


def frame(text: str) -> bytes:
    """Hex bytes with spaces, newlines and ``#`` comments."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# ["app.log", [[EventTime(1700000000, 123456789), {"msg": "hi"}]],
#  {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "size": 1}]  (Fluent Bit, require_ack_response)
FLUENT_BIT_FRAME = frame("""
    93 a7 6170702e6c6f67                # ["app.log",
    91 92 d7 00 6553f100 075bcd15       #  [[EventTime(1700000000, 123456789),
    81 a3 6d7367 a2 6869                #    {"msg": "hi"}]],
    82 a5 6368756e6b                     #  {"chunk":
    b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d   # "p8n9gmxTQVC8/nh2wlKKeQ==",
    a4 73697a65 01                      #   "size": 1}]
""")
# {"ack": "p8n9gmxTQVC8/nh2wlKKeQ=="}
FLUENT_BIT_ACK = frame("81 a3 61636b b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d")

# ["app", str32(<<[1700000001, {"msg": "yo"}]>>),
#  {"size": 1, "compressed": "text", "chunk": "JZ9GXhgY4x5QOqv1OWJ5Zw==\n"}]  (Fluentd)
FLUENTD_FRAME = frame("""
    93 a3 617070                        # ["app",
    db 0000000e                         #  str32 of 14 bytes:
    92 ce 6553f101 81 a3 6d7367 a2 796f #    [1700000001, {"msg": "yo"}],
    83 a4 73697a65 01                   #  {"size": 1,
    aa 636f6d70726573736564 a4 74657874 #   "compressed": "text",
    a5 6368756e6b                       #   "chunk":
    b9 4a5a394758686759347835514f7176314f574a355a773d3d0a # "JZ9GXhgY4x5QOqv1OWJ5Zw==\\n"}]
""")
# {"ack": "JZ9GXhgY4x5QOqv1OWJ5Zw==\n"}
FLUENTD_ACK = frame("81 a3 61636b b9 4a5a394758686759347835514f7176314f574a355a773d3d0a")

# ["app", 1700000000, {"msg": "hi"}]  (fluent-logger: no options, so no ack)
MESSAGE_FRAME = frame("93 a3 617070 ce 6553f100 81 a3 6d7367 a2 6869")

# ["t", [[-1, {}], [-2, {}]], {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ=="}]  (group markers only)
MARKERS_ONLY_FRAME = frame("""
    93 a1 74 92 92 ff 80 92 fe 80
    81 a5 6368756e6b b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d
""")


def with_chunk_id(chunk_id: str) -> bytes:
    """["t", [[1700000000, {"n": 1}]], {"chunk": chunk_id}]"""
    packed: bytes = msgpack.packb(["t", [[1_700_000_000, {"n": 1}]], {"chunk": chunk_id}])
    return packed


class FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    async def submit(self, chunk: Chunk) -> None:
        self.calls += 1
        raise SinkError("the spool is full")


@contextlib.asynccontextmanager
async def serving(sink: Any, **options: Any) -> AsyncIterator[ForwardServer]:
    """GIVEN a started server on a free loopback port; no error may reach the loop's handler."""
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    server = ForwardServer(sink, host="127.0.0.1", port=0, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close(timeout=1.0)
        loop.set_exception_handler(previous)
    assert loop_errors == []


async def connect(server: ForwardServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def read_some(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(1024), TIMEOUT)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes; a reset counts as a close."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        return b""


async def wait_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.01)


async def close_client(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# --- acks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ack"),
    [(FLUENT_BIT_FRAME, FLUENT_BIT_ACK), (FLUENTD_FRAME, FLUENTD_ACK)],
    ids=["fluent-bit", "fluentd-newline"],
)
async def test_ack_echoes_the_chunk_id_byte_for_byte(data: bytes, ack: bytes) -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, data)
        assert await read_some(reader) == ack
        assert len(sink.chunks) == 1
        assert sink.chunks[0].raw == data
        assert server.stats.acks == 1
        assert server.stats.records == 1
        await close_client(writer)


async def test_no_ack_without_a_chunk_option() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, MESSAGE_FRAME + FLUENT_BIT_FRAME)
        assert await read_some(reader) == FLUENT_BIT_ACK  # nothing came before it
        assert [chunk.tag for chunk in sink.chunks] == ["app", "app.log"]
        await close_client(writer)


async def test_ack_is_sent_only_after_submit_returns() -> None:
    sink = GatedSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, FLUENT_BIT_FRAME)
        await asyncio.wait_for(sink.entered.wait(), TIMEOUT)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1024), 0.2)
        sink.release.set()
        assert await read_some(reader) == FLUENT_BIT_ACK
        assert len(sink.chunks) == 1
        await close_client(writer)


async def test_failed_submit_closes_without_ack(caplog: pytest.LogCaptureFixture) -> None:
    sink = FailingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, FLUENT_BIT_FRAME)
        assert await read_to_eof(reader) == b""
        assert sink.calls == 1
        assert server.stats.submit_failures == 1
        assert server.stats.acks == 0
        await close_client(writer)
    assert any(r.levelno == logging.ERROR and getattr(r, "reason", None) == "the spool is full" for r in caplog.records)


async def test_keepalive_and_marker_only_frames_are_acked_without_submit() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, b"\xc0" + MARKERS_ONLY_FRAME)  # nil, then markers with a chunk id
        assert await read_some(reader) == FLUENT_BIT_ACK
        assert sink.chunks == []
        assert server.stats.keepalives == 1
        await close_client(writer)


async def test_back_to_back_frames_are_acked_in_order() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, with_chunk_id("first") + with_chunk_id("second") + FLUENTD_FRAME)
        expected = (
            frame("81 a3 61636b a5 6669727374")  # {"ack": "first"}
            + frame("81 a3 61636b a6 7365636f6e64")  # {"ack": "second"}
            + FLUENTD_ACK
        )
        assert await asyncio.wait_for(reader.readexactly(len(expected)), TIMEOUT) == expected
        assert [c.token for c in sink.chunks] == ["first", "second", "JZ9GXhgY4x5QOqv1OWJ5Zw==\n"]
        await close_client(writer)


# --- framing --------------------------------------------------------------------------------


async def test_frame_split_byte_by_byte_waits_for_the_last_byte() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        for byte in FLUENT_BIT_FRAME[:-1]:
            await send(writer, bytes([byte]))
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        assert sink.chunks == []
        await send(writer, FLUENT_BIT_FRAME[-1:])
        assert await read_some(reader) == FLUENT_BIT_ACK
        assert [chunk.raw for chunk in sink.chunks] == [FLUENT_BIT_FRAME]
        await close_client(writer)


async def test_eof_mid_frame_submits_nothing() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        _, writer = await connect(server)
        await wait_until(lambda: server.open_connections == 1)
        await send(writer, FLUENT_BIT_FRAME[:-3])
        writer.write_eof()
        await wait_until(lambda: server.open_connections == 0)
        assert sink.chunks == []
        assert server.stats.frames == 0
        await close_client(writer)


@pytest.mark.parametrize("data", [FLUENT_BIT_FRAME, FLUENTD_FRAME, MESSAGE_FRAME])
async def test_live_chunk_decodes_again_from_its_raw_bytes(data: bytes) -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, data + FLUENT_BIT_FRAME)  # the second frame's ack marks the first done
        assert await read_some(reader)
        live = sink.chunks[0]
        assert live.raw == data
        assert live.received_ns > 0
        assert decode_spooled(live.raw, live.received_ns) == live
        await close_client(writer)


# --- bad input ------------------------------------------------------------------------------


async def test_oversized_frame_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    sink = RecordingSink()
    big = msgpack.packb(["t", 1_700_000_000, {"log": "x" * 2000}])
    async with serving(sink, max_frame_bytes=1024) as server:
        reader, writer = await connect(server)
        await send(writer, big)
        assert await read_to_eof(reader) == b""
        assert sink.chunks == []
        assert server.stats.protocol_errors == {"frame over max_frame_bytes": 1}
        await close_client(writer)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        getattr(r, "reason", None) == "frame over max_frame_bytes" and getattr(r, "peer", None)
        for r in warnings
    )


async def test_garbage_closes_that_connection_only() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        good_reader, good_writer = await connect(server)
        bad_reader, bad_writer = await connect(server)
        await send(bad_writer, b"\xc1\x00\x00")  # 0xc1 is never used in msgpack
        assert await read_to_eof(bad_reader) == b""
        await send(good_writer, FLUENT_BIT_FRAME)
        assert await read_some(good_reader) == FLUENT_BIT_ACK
        late_reader, late_writer = await connect(server)
        await send(late_writer, FLUENTD_FRAME)
        assert await read_some(late_reader) == FLUENTD_ACK
        assert server.stats.protocol_errors == {"frame is not valid msgpack": 1}
        for writer in (good_writer, bad_writer, late_writer):
            await close_client(writer)


async def test_protocol_error_closes_without_ack() -> None:
    sink = RecordingSink()
    # ["t", [[1700000000, {}]], {"chunk": "p8n9gmxTQVC8/nh2wlKKeQ==", "fluent_signal": 1}]
    metrics = frame("""
        93 a1 74 91 92 ce 6553f100 80
        82 a5 6368756e6b b8 70386e39676d7854515643382f6e6832776c4b4b65513d3d
           ad 666c75656e745f7369676e616c 01
    """)
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, metrics)
        assert await read_to_eof(reader) == b""
        assert sink.chunks == []
        assert server.stats.protocol_errors == {"fluent_signal is not logs": 1}
        await close_client(writer)


# --- connections and shutdown ---------------------------------------------------------------


async def test_idle_connection_is_closed() -> None:
    async with serving(RecordingSink(), idle_timeout_secs=0.1) as server:
        reader, writer = await connect(server)
        assert await read_to_eof(reader) == b""
        await close_client(writer)


async def test_connections_over_the_limit_are_refused() -> None:
    sink = RecordingSink()
    async with serving(sink, max_connections=1) as server:
        reader, writer = await connect(server)
        await wait_until(lambda: server.open_connections == 1)
        extra_reader, extra_writer = await connect(server)
        assert await read_to_eof(extra_reader) == b""
        assert server.stats.connections_refused == 1
        await send(writer, FLUENT_BIT_FRAME)
        assert await read_some(reader) == FLUENT_BIT_ACK
        for each in (writer, extra_writer):
            await close_client(each)


async def test_stop_accepting_keeps_serving_open_connections() -> None:
    sink = RecordingSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await wait_until(lambda: server.open_connections == 1)
        await server.stop_accepting()
        with pytest.raises(OSError):
            await connect(server)
        await send(writer, FLUENT_BIT_FRAME)
        assert await read_some(reader) == FLUENT_BIT_ACK
        await close_client(writer)


async def test_close_lets_in_flight_submits_ack_and_closes_idle_connections() -> None:
    sink = GatedSink()
    async with serving(sink) as server:
        busy_reader, busy_writer = await connect(server)
        idle_reader, idle_writer = await connect(server)
        await send(busy_writer, FLUENT_BIT_FRAME)
        await asyncio.wait_for(sink.entered.wait(), TIMEOUT)
        await wait_until(lambda: server.open_connections == 2)

        closing = asyncio.create_task(server.close(timeout=TIMEOUT))
        assert await read_to_eof(idle_reader) == b""
        assert not closing.done()
        sink.release.set()
        assert await read_to_eof(busy_reader) == FLUENT_BIT_ACK
        await asyncio.wait_for(closing, TIMEOUT)
        assert server.open_connections == 0
        for each in (busy_writer, idle_writer):
            await close_client(each)


async def test_close_gives_up_on_a_stuck_submit_without_ack() -> None:
    sink = GatedSink()  # never released
    async with serving(sink) as server:
        reader, writer = await connect(server)
        await send(writer, FLUENT_BIT_FRAME)
        await asyncio.wait_for(sink.entered.wait(), TIMEOUT)
        await server.close(timeout=0.1)
        assert await read_to_eof(reader) == b""
        assert sink.chunks == []
        await close_client(writer)


# --- backpressure ---------------------------------------------------------------------------


class FullSink(RecordingSink):
    """Refuses with ``Backpressure`` until ``room`` is set, like a spool at its disk limit."""

    def __init__(self) -> None:
        super().__init__()
        self.room = False
        self.refusals = 0

    async def submit(self, chunk: Chunk) -> None:
        if not self.room:
            self.refusals += 1
            raise Backpressure("the spool is full", retry_after_secs=0.05)
        self.chunks.append(chunk)


async def test_a_full_sink_holds_the_frame_and_keeps_the_connection_open() -> None:
    # GIVEN a sink that is full
    sink = FullSink()
    async with serving(sink) as server:
        reader, writer = await connect(server)
        # WHEN a frame arrives
        await send(writer, FLUENT_BIT_FRAME)
        await wait_until(lambda: sink.refusals >= 3)
        # THEN it is neither acked nor dropped, and the connection stays open
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1024), 0.3)
        assert server.open_connections == 1 and sink.chunks == []
        assert server.stats.backpressure_waits == 1
        # AND once the sink drains the held frame is stored and acked
        sink.room = True
        assert await read_some(reader) == FLUENT_BIT_ACK
        assert len(sink.chunks) == 1 and server.stats.submit_failures == 0
        await close_client(writer)


# --- intake budget ------------------------------------------------------------------------------


class CountingGatedSink(GatedSink):
    """A gated sink that counts the submits waiting on the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def submit(self, chunk: Chunk) -> None:
        self.waiting += 1
        try:
            await super().submit(chunk)
        finally:
            self.waiting -= 1


async def test_a_spent_intake_budget_holds_frames_until_chunks_are_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a budget that lets one frame in at a time, and a sink that holds submits
    monkeypatch.setattr(forward, "INTAKE_BUDGET_BYTES", 1)
    sink = CountingGatedSink()
    async with serving(sink) as server:
        # WHEN four shippers each send a chunk
        clients = [await connect(server) for _ in range(4)]
        for i, (_, writer) in enumerate(clients):
            await send(writer, with_chunk_id(f"c{i}"))
        await wait_until(lambda: sink.waiting == 1)
        await asyncio.sleep(0.2)
        # THEN only one is decoded and being stored; the others wait unread
        assert sink.waiting == 1
        # WHEN the store completes
        sink.release.set()
        # THEN every chunk is stored and acked, none twice
        for i, (reader, _) in enumerate(clients):
            assert msgpack.unpackb(await read_some(reader)) == {"ack": f"c{i}"}
        for _, writer in clients:
            await close_client(writer)
    assert sorted(c.token or "" for c in sink.chunks) == ["c0", "c1", "c2", "c3"]
