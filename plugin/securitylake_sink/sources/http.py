"""The HTTP source for Fluent Bit's ``http`` output and Vector's ``http`` sink: one request body
becomes one chunk, and 200 is answered only after the sink made it durable. Statuses follow what
the shippers retry (pipeline-protocols §3, §4.1, §6): 400/401/413/415 are final, 500/503 retried.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_PORT",
    "DEFAULT_TAG",
    "KIND",
    "Credentials",
    "HttpServer",
    "HttpStats",
]

import asyncio
import base64
import binascii
import functools
import hmac
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from securitylake_sink.config import (
    DEFAULT_HTTP_DATE_KEY,
    DEFAULT_HTTP_MAX_BODY_BYTES,
    DEFAULT_HTTP_TAG_HEADER,
    split_address,
)
from securitylake_sink.errors import Backpressure, FrameTooLarge, ProtocolError, SinkError
from securitylake_sink.sources.body import ENCODINGS, decode_chunk, shipper_of
from securitylake_sink.sources.forward import ChunkSink

if TYPE_CHECKING:
    from securitylake_sink.config import HttpListen
    from securitylake_sink.model import Chunk

log = logging.getLogger("securitylake_sink.sources.http")

KIND: Final = "http"
DEFAULT_PORT: Final = 8088
DEFAULT_TAG: Final = "http"  # when neither the tag header nor the URL path names one
MAX_TAG_CHARS: Final = 1024
# Requests decoding or waiting for the spool at once; past this the sink answers 503 (retried).
DEFAULT_MAX_CONCURRENT_REQUESTS: Final = 64
BUSY_RETRY_AFTER_SECS: Final = 1
# Bodies above this are decoded on a worker thread so other connections keep being served.
INLINE_DECODE_BYTES: Final = 64 * 1024
# How long close() lets in-flight requests finish (and answer) before they are cancelled.
SHUTDOWN_TIMEOUT_SECS: Final = 10.0
REALM: Final = "securitylake-sink"
HEALTH_PATH: Final = "/health"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request must present: a bearer token, or a basic user and password."""

    bearer_token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def challenge(self) -> str:
        return f'Bearer realm="{REALM}"' if self.bearer_token is not None else f'Basic realm="{REALM}", charset="UTF-8"'

    def accepts(self, authorization: str) -> bool:
        """Compare in constant time; the answer never depends on how much of a secret matched."""
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if self.bearer_token is not None:
            return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), self.bearer_token.encode())
        if scheme.lower() != "basic" or self.user is None or self.password is None:
            return False
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and user_ok and password_ok


@dataclass(slots=True)
class HttpStats:
    """Running counts for the metrics catalogue; ``responses`` is keyed by status code."""

    requests: int = 0
    chunks: int = 0
    records: int = 0
    responses: dict[int, int] = field(default_factory=dict)


class HttpServer:
    """Serves ``POST``/``PUT /<tag>`` on one TCP port for a ChunkSink; ``HEAD`` and ``GET /health``
    answer 200 for health checks (Vector's ``healthcheck.uri``, Kubernetes probes)."""

    def __init__(
        self,
        sink: ChunkSink,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        tag_header: str = DEFAULT_HTTP_TAG_HEADER,
        date_key: str = DEFAULT_HTTP_DATE_KEY,
        max_body_bytes: int = DEFAULT_HTTP_MAX_BODY_BYTES,
        credentials: Credentials | None = None,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port`` shares the port with other processes (SO_REUSEPORT: ``run --workers``)."""
        self._sink = sink
        self._host = host
        self._port = port
        self._tag_header = tag_header
        self._date_key = date_key
        self._max_body_bytes = max_body_bytes
        self._credentials = credentials
        self._max_concurrent = max_concurrent_requests
        self._reuse_port = reuse_port
        self._inflight = 0
        self._runner: web.AppRunner | None = None
        self.stats = HttpStats()

    @classmethod
    def from_config(cls, sink: ChunkSink, listen: HttpListen, *, reuse_port: bool = False) -> HttpServer:
        """The server ``listen.http`` describes."""
        host, port = split_address(listen.address)
        auth = listen.auth
        credentials = None
        if auth is not None:
            credentials = Credentials(
                bearer_token=auth.bearer_token.get_secret_value() if auth.bearer_token else None,
                user=auth.user,
                password=auth.password.get_secret_value() if auth.password else None,
            )
        return cls(
            sink,
            host=host,
            port=port,
            tag_header=listen.tag_header,
            date_key=listen.date_key,
            max_body_bytes=listen.max_body_bytes,
            credentials=credentials,
            reuse_port=reuse_port,
        )

    async def start(self) -> None:
        """Bind and start serving; port 0 picks a free port (see ``port``)."""
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already started")
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_get(HEALTH_PATH, self._health, allow_head=False)
        app.router.add_route(hdrs.METH_POST, "/{path:.*}", self._ingest)
        app.router.add_route(hdrs.METH_PUT, "/{path:.*}", self._ingest)
        app.router.add_route(hdrs.METH_HEAD, "/{path:.*}", self._head)
        # auto_decompress off: the spool keeps the body as received, its encoding in the meta.
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, auto_decompress=False, shutdown_timeout=SHUTDOWN_TIMEOUT_SECS
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_port=self._reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SinkError(f"cannot listen for HTTP on {self._host}:{self._port}: {exc.strerror or exc}") from exc
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("Listening for HTTP requests.", extra={"host": self._host, "port": self._port})

    @property
    def port(self) -> int:
        """The bound port once started, else the configured one."""
        return self._port

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish and answer, then close every connection.

        A request still waiting for the spool after the shutdown timeout gets no answer, so its
        shipper sends it again.
        """
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers --------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _head(self, request: web.Request) -> web.Response:
        return self._denied(request) or web.Response()

    async def _ingest(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        response = self._denied(request)
        if response is None:
            if self._inflight >= self._max_concurrent:
                response = self._busy(request, BUSY_RETRY_AFTER_SECS, "too many requests in flight")
            else:
                self._inflight += 1
                try:
                    response = await self._receive(request)
                finally:
                    self._inflight -= 1
        self.stats.responses[response.status] = self.stats.responses.get(response.status, 0) + 1
        return response

    def _denied(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries the configured credentials."""
        if self._credentials is None or self._credentials.accepts(request.headers.get(hdrs.AUTHORIZATION, "")):
            return None
        log.warning("Refused a request with missing or wrong credentials.", extra={"peer": request.remote})
        return web.Response(
            status=401,
            text="missing or wrong credentials\n",
            headers={hdrs.WWW_AUTHENTICATE: self._credentials.challenge()},
        )

    async def _receive(self, request: web.Request) -> web.Response:
        """Read, decode and store one body; the status says whether the shipper should retry."""
        try:
            chunk = await self._read(request)
        except _Rejected as exc:
            log.warning(
                "Rejected a request: it will never be stored.",
                extra={"peer": request.remote, "status": exc.status, "reason": exc.reason},
            )
            return web.Response(status=exc.status, text=exc.reason + "\n")
        if chunk.entries:
            response = await self._store(request, chunk)
            if response is not None:
                return response
        self.stats.chunks += 1
        self.stats.records += len(chunk.entries)
        return web.Response()

    async def _read(self, request: web.Request) -> Chunk:
        """The request's chunk; ``_Rejected`` with the final 4xx when it will never be stored."""
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        if encoding not in ENCODINGS:
            raise _Rejected(415, f"unsupported Content-Encoding {encoding!r}")
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise _Rejected(413, "body over max_body_bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Rejected(413, "body over max_body_bytes") from None
        tag = (request.headers.get(self._tag_header) or request.match_info["path"]).strip().strip("/") or DEFAULT_TAG
        if len(tag) > MAX_TAG_CHARS:
            raise _Rejected(400, f"tag longer than {MAX_TAG_CHARS} characters")
        meta = {
            "content_type": request.headers.get(hdrs.CONTENT_TYPE, ""),
            "content_encoding": encoding,
            "tag": tag,
            "shipper": shipper_of(request.headers.get(hdrs.USER_AGENT, "")),
            "date_key": self._date_key,
        }
        decode = functools.partial(
            decode_chunk, KIND, raw, time.time_ns(), tag=tag, meta=meta, max_bytes=self._max_body_bytes
        )
        try:
            return await asyncio.to_thread(decode) if len(raw) > INLINE_DECODE_BYTES else decode()
        except FrameTooLarge as exc:
            raise _Rejected(413, str(exc)) from None
        except ProtocolError as exc:
            raise _Rejected(400, str(exc)) from None

    async def _store(self, request: web.Request, chunk: Chunk) -> web.Response | None:
        """None once the chunk is durable, else the retriable status to answer."""
        try:
            await self._sink.submit(chunk)
        except Backpressure as exc:
            return self._busy(request, exc.retry_after_secs, str(exc))
        except SinkError as exc:
            log.error(
                "Answered 500: the chunk could not be stored.",
                extra={"peer": request.remote, "tag": chunk.tag, "reason": str(exc)},
            )
            return web.Response(status=500, text=f"could not store the request: {exc}\n")
        return None

    def _busy(self, request: web.Request, retry_after_secs: float, reason: str) -> web.Response:
        retry_after = max(1, math.ceil(retry_after_secs))
        log.warning(
            "Answered 503: the sink is busy, the shipper retries.",
            extra={"peer": request.remote, "retry_after_secs": retry_after, "reason": reason},
        )
        return web.Response(
            status=503, text=f"busy: {reason}; retry later\n", headers={hdrs.RETRY_AFTER: str(retry_after)}
        )


class _Rejected(Exception):
    """A request that will never be stored: its final 4xx status and the reason for the body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
