"""The Forward handshake (pipeline-protocols §1.6): HELO, PING, PONG with a shared key and optional
users. A connection that fails it gets ``["PONG", false, reason, "", ""]`` and is closed; secrets
and digests never reach logs or errors."""

from __future__ import annotations

__all__ = [
    "DEFAULT_TIMEOUT_SECS",
    "SharedKeyHandshake",
    "handshake_for",
    "password_digest",
    "ping_digest",
    "pong_digest",
]

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, NoReturn

import msgpack

from securitylake_sink.errors import ProtocolError
from securitylake_sink.sources.forward_codec import MAX_READ_BYTES, new_unpacker

if TYPE_CHECKING:
    from securitylake_sink.config import ForwardListen

log = logging.getLogger("securitylake_sink.sources.handshake")

# Fluent Bit sends its PING right after reading HELO; a peer silent this long is not a shipper.
DEFAULT_TIMEOUT_SECS: Final = 30.0
# A PING is six short strings (Fluent Bit's is about 300 bytes); anything larger is not a PING.
MAX_PING_BYTES: Final = 8 * 1024
NONCE_BYTES: Final = 16  # Fluentd and Fluent Bit both use 16 random bytes
PING_ITEMS: Final = 6  # ["PING", hostname, salt, digest, username, password digest]

# Failure reasons, as Fluentd words them; they also label the protocol-error metric.
INVALID_PING: Final = "invalid ping message"
KEY_MISMATCH: Final = "shared_key mismatch"
USER_MISMATCH: Final = "username/password mismatch"
NO_PING: Final = "no PING before the handshake timeout"
CLOSED_MID_PING: Final = "peer closed the connection mid-PING"


def _sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def ping_digest(salt: bytes, client_hostname: bytes, nonce: bytes, shared_key: bytes) -> str:
    """The client's PING digest: sha512(salt + client hostname + nonce + key), lowercase hex."""
    return _sha512_hex(salt, client_hostname, nonce, shared_key)


def pong_digest(salt: bytes, server_hostname: bytes, nonce: bytes, shared_key: bytes) -> str:
    """The server's PONG digest: the PING's salt with the server's own hostname."""
    return _sha512_hex(salt, server_hostname, nonce, shared_key)


def password_digest(auth_salt: bytes, username: bytes, password: bytes) -> str:
    """sha512(HELO auth salt + username + password), lowercase hex."""
    return _sha512_hex(auth_salt, username, password)


def _raw(value: object) -> bytes | None:
    """A str or bin field as the bytes the peer sent (surrogateescape undoes invalid UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def _ping_fields(ping: object) -> tuple[bytes, bytes, bytes, bytes, bytes] | None:
    """(hostname, salt, digest, username, password digest) as raw bytes, or None if malformed."""
    if not isinstance(ping, list) or len(ping) != PING_ITEMS or ping[0] != "PING":
        return None
    hostname, salt, digest, username, user_digest = (_raw(value) for value in ping[1:])
    if hostname is None or salt is None or digest is None or username is None or user_digest is None:
        return None
    return hostname, salt, digest, username, user_digest


def _same(expected: str, given: bytes) -> bool:
    return hmac.compare_digest(expected.encode("ascii"), given)


class SharedKeyHandshake:
    """The ``Handshake`` seam of ``ForwardServer``: shared-key auth, and user auth when ``users``
    maps usernames to passwords."""

    def __init__(
        self,
        shared_key: str,
        *,
        self_hostname: str | None = None,
        users: Mapping[str, str] | None = None,
        timeout_secs: float = DEFAULT_TIMEOUT_SECS,
    ) -> None:
        self._key = shared_key.encode("utf-8")
        self._hostname = self_hostname or socket.gethostname()
        self._users = {name.encode("utf-8"): pw.encode("utf-8") for name, pw in (users or {}).items()}
        self._timeout_secs = timeout_secs

    def __repr__(self) -> str:  # never the key or the passwords
        return f"SharedKeyHandshake(self_hostname={self._hostname!r}, users={len(self._users)})"

    @property
    def self_hostname(self) -> str:
        return self._hostname

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> bytes:
        """HELO, read the PING, answer PONG; return the bytes read past the PING."""
        nonce = os.urandom(NONCE_BYTES)
        auth_salt = os.urandom(NONCE_BYTES) if self._users else b""
        # One write: Fluent Bit parses HELO from a single read. bin nonce/salt; "" means no user auth.
        helo = ["HELO", {"nonce": nonce, "auth": auth_salt or "", "keepalive": True}]
        writer.write(msgpack.packb(helo, use_bin_type=True))
        await writer.drain()
        read = await self._read_ping(reader, writer)
        if read is None:  # closed before sending a byte (a TCP heartbeat): nothing to authenticate
            return b""  # the transport phase reads the same end of stream and closes quietly
        ping, rest = read
        fields = _ping_fields(ping)
        if fields is None:
            await self._refuse(writer, INVALID_PING)
        hostname, salt, digest, username, user_digest = fields
        if not _same(ping_digest(salt, hostname, nonce, self._key), digest):
            await self._refuse(writer, KEY_MISMATCH)
        if self._users and not self._user_ok(auth_salt, username, user_digest):
            await self._refuse(writer, USER_MISMATCH)
        name = self._hostname.encode("utf-8")
        pong = ["PONG", True, "", self._hostname, pong_digest(salt, name, nonce, self._key)]
        writer.write(msgpack.packb(pong, use_bin_type=True))
        await writer.drain()
        log.debug(
            "Forward handshake done.",
            extra={
                "peer": peer,
                "client_hostname": hostname.decode("utf-8", "replace"),
                "username": username.decode("utf-8", "replace") if self._users else None,
            },
        )
        return rest

    async def _read_ping(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[object, bytes] | None:
        """The first msgpack object and the bytes after it; None on EOF before any byte."""
        unpacker = new_unpacker(MAX_PING_BYTES + MAX_READ_BYTES)
        received = bytearray()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(MAX_READ_BYTES), self._timeout_secs)
            except TimeoutError:
                raise ProtocolError(NO_PING) from None
            if not data:
                if received:
                    raise ProtocolError(CLOSED_MID_PING)
                return None
            received += data
            unpacker.feed(data)
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                if len(received) > MAX_PING_BYTES:
                    await self._refuse(writer, INVALID_PING)
                continue
            except Exception:  # any unpack failure is bad input
                await self._refuse(writer, INVALID_PING)
            end = unpacker.tell()
            if end > MAX_PING_BYTES:
                await self._refuse(writer, INVALID_PING)
            return obj, bytes(received[end:])  # at most one read's worth: the start of transport

    def _user_ok(self, auth_salt: bytes, username: bytes, given: bytes) -> bool:
        password = self._users.get(username)
        # An unknown user costs the same digest as a known one, so timing does not tell them apart.
        expected = password_digest(auth_salt, username, password if password is not None else os.urandom(16))
        return _same(expected, given) and password is not None

    async def _refuse(self, writer: asyncio.StreamWriter, reason: str) -> NoReturn:
        """Send the failing PONG, then raise: the server closes the connection."""
        writer.write(msgpack.packb(["PONG", False, reason, "", ""], use_bin_type=True))
        with contextlib.suppress(OSError, TimeoutError):  # a peer already gone is refused all the same
            await asyncio.wait_for(writer.drain(), self._timeout_secs)
        raise ProtocolError(reason)


def handshake_for(listen: ForwardListen) -> SharedKeyHandshake | None:
    """The handshake ``listen.forward`` asks for; None when no ``shared_key`` is set."""
    if listen.shared_key is None:
        return None
    return SharedKeyHandshake(
        listen.shared_key.get_secret_value(),
        self_hostname=listen.self_hostname,
        users={user.username: user.password.get_secret_value() for user in listen.users},
    )
