"""The Forward protocol v1 TCP server: frames in, ``{"ack": token}`` out only after the sink
made the chunk durable, in frame order; bad input closes that one connection, never the server.
While the sink is full (``Backpressure``) a connection holds its frame and stops reading."""

from __future__ import annotations

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_SECS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PORT",
    "ChunkSink",
    "ForwardServer",
    "ForwardStats",
    "Handshake",
    "decode_frame",
    "decode_spooled",
]

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgpack

from securitylake_sink.errors import Backpressure, FrameTooLarge, ProtocolError, SinkError
from securitylake_sink.model import Chunk
from securitylake_sink.sources.forward_codec import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_READ_BYTES,
    FrameReader,
    decode_frame,
    decode_spooled,
    scan_frame,
)

log = logging.getLogger("securitylake_sink.sources.forward")

DEFAULT_PORT: Final = 24224  # the Forward protocol's registered port
# Fluent Bit drops its own idle keepalive sockets after 30 s; this only reaps dead peers.
DEFAULT_IDLE_TIMEOUT_SECS: Final = 300.0
DEFAULT_MAX_CONNECTIONS: Final = 1024
# How long closing one socket may wait for buffered bytes to leave before it is aborted.
CLOSE_WAIT_SECS: Final = 1.0
# How often a connection holding a frame on a full sink tries it again (at most).
BACKPRESSURE_POLL_SECS: Final = 0.2
# Frame bytes read and waiting to be durable, over all connections: this bounds intake's memory
# however many shippers send at once.
INTAKE_BUDGET_BYTES: Final = 16 * 1024 * 1024


class ChunkSink(Protocol):
    """Where checked chunks go: the spool."""

    async def submit(self, chunk: Chunk) -> None:
        """Return once the chunk is durable; raise SinkError when it cannot be stored."""


class Handshake(Protocol):
    """The seam for shared-key and user auth (HELO/PING/PONG, pipeline-protocols §1.6).

    Runs on each new connection before the transport phase. It returns the bytes it read past
    the PING (at most ``MAX_READ_BYTES``; they are the start of the transport phase) or raises
    ``ProtocolError`` after sending a failed PONG (``handshake.SharedKeyHandshake``). Without
    one, every connection starts in the transport phase.
    """

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> bytes: ...


@dataclass(slots=True)
class ForwardStats:
    """Running counts for the metrics catalogue; ``protocol_errors`` is keyed by reason."""

    connections: int = 0
    connections_refused: int = 0
    frames: int = 0
    keepalives: int = 0
    chunks: int = 0
    records: int = 0
    acks: int = 0
    submit_failures: int = 0
    backpressure_waits: int = 0  # frames held because the sink was full
    protocol_errors: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class _Connection:
    peer: str
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    busy: bool = False  # between decoding a frame and draining its ack


class ForwardServer:
    """Serves the Forward protocol on one TCP port (optionally TLS) for a ChunkSink."""

    def __init__(
        self,
        sink: ChunkSink,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout_secs: float = DEFAULT_IDLE_TIMEOUT_SECS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        ssl: ssl.SSLContext | None = None,
        handshake: Handshake | None = None,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port`` shares the port with other processes (SO_REUSEPORT: ``run --workers``)."""
        self._sink = sink
        self._host = host
        self._port = port
        self._max_frame_bytes = max_frame_bytes
        self._idle_timeout_secs = idle_timeout_secs
        self._max_connections = max_connections
        self._ssl = ssl
        self._handshake = handshake
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._budget = IntakeBudget(INTAKE_BUDGET_BYTES)
        self.stats = ForwardStats()

    async def start(self) -> None:
        """Bind and start accepting; port 0 picks a free port (see ``port``)."""
        if self._server is not None:
            raise RuntimeError("the forward server is already started")
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, ssl=self._ssl, reuse_port=self._reuse_port or None
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("Listening for Forward connections.", extra={"host": self._host, "port": self.port})

    @property
    def port(self) -> int:
        """The bound port once started, else the configured one."""
        return self._port

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def stop_accepting(self) -> None:
        """Close the listening socket; open connections keep being served."""
        if self._server is not None:
            self._server.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, let in-flight submits finish and ack, then close every connection.

        A frame not yet submitted is dropped without an ack, so its shipper sends it again.
        """
        await self.stop_accepting()
        self._closing = True
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()  # waiting for bytes: nothing in flight
        tasks = {conn.task for conn in self._connections if conn.task is not None}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()  # the submit did not finish in time: no ack, the shipper resends
            if late:
                await asyncio.wait(late, timeout=CLOSE_WAIT_SECS)
        if self._server is not None:
            # Python 3.12+ also waits here for connections to finish closing.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_WAIT_SECS)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Start serving a new connection in a task of our own, so close() can cancel it."""
        # (asyncio's own task for a coroutine callback reports its cancellation as an error
        # on Python 3.11, so the callback is a plain function.)
        peer = _peer_name(writer)
        if self._closing or len(self._connections) >= self._max_connections:
            self.stats.connections_refused += 1
            log.warning(
                "Refused a connection: the server is full or closing.",
                extra={"peer": peer, "max_connections": self._max_connections},
            )
            writer.close()
            return
        conn = _Connection(peer, writer)
        self._connections.add(conn)
        self.stats.connections += 1
        conn.task = asyncio.create_task(self._serve(conn, reader), name=f"forward {peer}")

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """One connection from accept to close; only cancellation leaves this method."""
        peer, writer = conn.peer, conn.writer
        try:
            await self._transport(conn, reader)
        except FrameTooLarge as exc:
            self._count_error(exc)
            log.warning(
                "Closed a connection: frame too large.",
                extra={"peer": peer, "reason": str(exc), "max_frame_bytes": self._max_frame_bytes},
            )
        except ProtocolError as exc:
            self._count_error(exc)
            log.warning("Closed a connection: protocol error.", extra={"peer": peer, "reason": str(exc)})
        except SinkError as exc:
            self.stats.submit_failures += 1
            log.error(
                "Closed a connection without ack: the chunk could not be stored.",
                extra={"peer": peer, "reason": str(exc)},
            )
        except TimeoutError:
            log.info(
                "Closed a connection idle for idle_timeout_secs.",
                extra={"peer": peer, "idle_timeout_secs": self._idle_timeout_secs},
            )
        except OSError as exc:
            log.info("Connection lost.", extra={"peer": peer, "reason": str(exc)})
        except Exception:
            log.exception("Closed a connection after an unexpected error.", extra={"peer": peer})
        finally:
            self._connections.discard(conn)
            log.debug("Connection closed.", extra={"peer": peer})
            await _close(writer)

    async def _transport(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Read frames in order until EOF, an error, or shutdown."""
        data = b""
        if self._handshake is not None:
            data = await self._handshake(reader, conn.writer, conn.peer)
        frames = FrameReader(self._max_frame_bytes)
        while True:
            if data:
                frames.feed(data)
                # Every frame of one read is submitted at once, so one fsync serves them all;
                # acks still go out in order, each after its own chunk is durable.
                started = []
                for raw in frames.raw_frames():
                    await self._budget.acquire(len(raw))  # before the frame's objects are built
                    started.append(self._start(conn, raw))
                for chunk, stored in started:
                    await self._finish(conn, chunk, stored)
                    if self._closing:
                        return  # frames after this one were never acked: the shipper resends
            data = await asyncio.wait_for(reader.read(MAX_READ_BYTES), self._idle_timeout_secs)
            if not data:
                if frames.pending_bytes:
                    log.info(
                        "Peer closed mid-frame; nothing of that frame was stored.",
                        extra={"peer": conn.peer, "pending_bytes": frames.pending_bytes},
                    )
                return

    def _start(self, conn: _Connection, raw: bytes) -> tuple[Chunk | None, asyncio.Future[None] | None]:
        """Check one frame and start storing its chunk (ordered with the frames before it); the
        records are decoded later, by the pipeline. The frame's share of the intake budget is
        given back once the chunk is durable (or failed)."""
        try:
            chunk = scan_frame(raw, time.time_ns())
        except BaseException:
            self._budget.release(len(raw))
            raise
        if chunk is None or not chunk.entries:  # a keepalive, or only group markers (still acked)
            self._budget.release(len(raw))
            if chunk is None:
                self.stats.keepalives += 1
                return None, None
            self.stats.frames += 1
            return chunk, None
        self.stats.frames += 1
        stored = asyncio.ensure_future(self._submit_held(chunk))
        stored.add_done_callback(lambda _: self._budget.release(len(raw)))
        return chunk, stored

    async def _submit_held(self, chunk: Chunk) -> None:
        """Submit, holding the chunk while the sink is full: never dropped, never acked early.

        The connection reads no more frames meanwhile, so TCP pushes back on the shipper.
        """
        waited = False
        while True:
            try:
                await self._sink.submit(chunk)
                return
            except Backpressure as exc:
                if not waited:
                    waited = True
                    self.stats.backpressure_waits += 1
                await asyncio.sleep(min(BACKPRESSURE_POLL_SECS, exc.retry_after_secs))

    async def _finish(self, conn: _Connection, chunk: Chunk | None, stored: asyncio.Future[None] | None) -> None:
        """Wait until a chunk is durable, then ack it when the shipper asked for an ack."""
        if chunk is None:
            return
        conn.busy = True
        try:
            if stored is not None:
                await stored
                self.stats.chunks += 1
                self.stats.records += len(chunk.entries)
            if chunk.token is not None:
                # One write of the whole map: Fluent Bit parses the ack from a single read.
                # surrogateescape echoes the token byte for byte (Fluentd's ends in "\n").
                ack = msgpack.packb({"ack": chunk.token}, unicode_errors="surrogateescape")
                conn.writer.write(ack)
                await asyncio.wait_for(conn.writer.drain(), self._idle_timeout_secs)
                self.stats.acks += 1
        finally:
            conn.busy = False

    def _count_error(self, exc: ProtocolError) -> None:
        reason = str(exc)
        self.stats.protocol_errors[reason] = self.stats.protocol_errors.get(reason, 0) + 1


class IntakeBudget:
    """Frame bytes decoded and not yet durable, across connections. A connection waits (reading
    nothing more, so TCP pushes back) while the budget is spent; one frame is always let in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._released = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.held and self.held + size > self.limit:
            self._released.clear()
            await self._released.wait()
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size
        self._released.set()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection, waiting a little for buffered bytes, then abort."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_SECS)
    except (OSError, TimeoutError):
        writer.transport.abort()
