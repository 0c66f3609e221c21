"""The Forward handshake (HELO/PING/PONG): the published digest vectors, then a real loopback
ForwardServer with shared-key and user auth, as Fluent Bit and Fluentd clients speak it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from securitylake_sink.config import parse_config
from securitylake_sink.errors import ConfigError
from securitylake_sink.sources.forward import ForwardServer
from securitylake_sink.sources.handshake import (
    INVALID_PING,
    KEY_MISMATCH,
    NO_PING,
    USER_MISMATCH,
    SharedKeyHandshake,
    handshake_for,
    password_digest,
    ping_digest,
    pong_digest,
)
from tests.unit.fake_sinks import RecordingSink

TIMEOUT = 5.0
KEY = "secret"
SERVER = "server.local"
CLIENT = "client.local"

# pipeline-protocols §1.6: salt b"0123456789abcdef", nonce bytes(range(16)), key b"secret".
VECTORS = [
    (
        ping_digest,
        (b"0123456789abcdef", b"client.local", bytes(range(16)), b"secret"),
        "f3359a2258b4570b932917352fe1ca3d4d76ee40db278e4d0851b12cc66d32bd"
        "501140b9fd3fe7bda4b14a9c3408a9e59ab999d5a670939b3072925541649e91",
    ),
    (
        pong_digest,
        (b"0123456789abcdef", b"server.local", bytes(range(16)), b"secret"),
        "bd03c166ef93a16a9fa9b1e5057d7dd2505ec183afdbf7a524c782cef575b849"
        "f6204df0e3d3bc2916d8c626f4fff16dd37c9bd353f65c45880fc91a23f759fe",
    ),
    (
        password_digest,
        (b"A" * 16, b"alice", b"pw"),
        "687a78b02af9cf4840ddd2f46fec070e011c55e9839caaa5ddec5284c631ab67"
        "5f9f8092d6003cc8cbe2cc6785908fed424205b6b9d2dddb455fcd8c7c735a4a",
    ),
]


@pytest.mark.parametrize(("digest", "parts", "expected"), VECTORS, ids=["ping", "pong", "password"])
def test_published_digest_vectors(digest: Callable[..., str], parts: tuple[bytes, ...], expected: str) -> None:
    assert digest(*parts) == expected
    assert len(expected) == 128


# -- a loopback server and a hand-written client ------------------------------------------------
class Peer:
    """One client connection speaking msgpack, read one object at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.unpacker = msgpack.Unpacker(raw=False)

    async def read(self) -> Any:
        """The next object, or EOFError when the server closed the connection."""
        while True:
            for obj in self.unpacker:
                return obj
            data = await asyncio.wait_for(self.reader.read(4096), TIMEOUT)
            if not data:
                raise EOFError
            self.unpacker.feed(data)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed(self) -> bool:
        """True when the server closes the connection without sending anything more."""
        try:
            return await asyncio.wait_for(self.reader.read(4096), TIMEOUT) == b""
        except ConnectionResetError:
            return True


def ping(helo: list[Any], *, key: str = KEY, user: str = "", password: str = "", salt: bytes | None = None) -> bytes:
    """A PING for this HELO, packed as Fluent Bit does: the salt is a msgpack str of raw bytes."""
    options = helo[1]
    nonce = options["nonce"]
    auth = options["auth"] or b""
    salt = os.urandom(16) if salt is None else salt
    digest = ping_digest(salt, CLIENT.encode(), nonce, key.encode())
    user_digest = password_digest(auth, user.encode(), password.encode()) if auth else ""
    packer = msgpack.Packer()
    return b"".join(
        [
            b"\x96",  # array(6)
            packer.pack("PING"),
            packer.pack(CLIENT),
            b"\xb0" + salt,  # fixstr(16): whatever bytes the salt holds, as Fluent Bit sends it
            packer.pack(digest),
            packer.pack(user if auth else ""),
            packer.pack(user_digest),
        ]
    )


def frame(chunk_id: str, n: int = 1) -> bytes:
    """["app", [[1700000000, {"n": i}] ...], {"chunk": chunk_id}]"""
    entries = [[1_700_000_000, {"n": i}] for i in range(n)]
    packed: bytes = msgpack.packb(["app", entries, {"chunk": chunk_id}])
    return packed


@pytest.fixture
async def servers() -> AsyncIterator[list[ForwardServer]]:
    started: list[ForwardServer] = []
    yield started
    for server in started:
        await server.close()


async def serve(servers: list[ForwardServer], handshake: SharedKeyHandshake) -> tuple[ForwardServer, RecordingSink]:
    sink = RecordingSink()
    server = ForwardServer(sink, host="127.0.0.1", port=0, handshake=handshake)
    await server.start()
    servers.append(server)
    return server, sink


async def connect(server: ForwardServer) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    return Peer(reader, writer)


async def test_good_key_gets_a_pong_with_the_server_digest_and_acks(servers: list[ForwardServer]) -> None:
    # GIVEN a server that requires the shared key
    server, sink = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER))
    peer = await connect(server)
    # WHEN a client answers HELO with a PING made with the right key
    helo = await peer.read()
    assert helo[0] == "HELO"
    assert len(helo[1]["nonce"]) == 16
    assert helo[1]["auth"] == ""  # no user auth
    assert helo[1]["keepalive"] is True
    salt = os.urandom(16)
    await peer.send(ping(helo, salt=salt))
    pong = await peer.read()
    # THEN the PONG is the 5-element success Fluent Bit >= 5.0.9 checks, with the server's digest
    assert pong == ["PONG", True, "", SERVER, pong_digest(salt, SERVER.encode(), helo[1]["nonce"], KEY.encode())]
    assert len(pong[4]) == 128
    # AND the transport phase works: a chunk is stored and acked
    await peer.send(frame("c1", 3))
    assert await peer.read() == {"ack": "c1"}
    assert [len(c.entries) for c in sink.chunks] == [3]
    assert server.stats.protocol_errors == {}


async def test_frames_sent_right_behind_the_ping_are_not_lost(servers: list[ForwardServer]) -> None:
    # GIVEN a client that does not wait for the PONG before its first frame
    server, sink = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER))
    peer = await connect(server)
    helo = await peer.read()
    # WHEN the PING and two frames arrive in one segment
    await peer.send(ping(helo) + frame("c1") + frame("c2"))
    # THEN the PONG comes first, then both acks in order
    assert (await peer.read())[:2] == ["PONG", True]
    assert await peer.read() == {"ack": "c1"}
    assert await peer.read() == {"ack": "c2"}
    assert len(sink.chunks) == 2


async def test_wrong_key_gets_a_failing_pong_and_is_closed(servers: list[ForwardServer]) -> None:
    # GIVEN a server with one key and a client with another
    server, sink = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER))
    peer = await connect(server)
    helo = await peer.read()
    # WHEN the client sends its PING and, right behind it, a frame
    await peer.send(ping(helo, key="not-the-key") + frame("c1"))
    # THEN it gets a failing PONG with the reason, the connection is closed, nothing is stored
    assert await peer.read() == ["PONG", False, KEY_MISMATCH, "", ""]
    assert await peer.closed()
    assert sink.chunks == []
    assert server.stats.protocol_errors == {KEY_MISMATCH: 1}


async def test_fluent_bit_salt_of_invalid_utf8_is_hashed_as_sent(servers: list[ForwardServer]) -> None:
    # GIVEN a salt of 16 random bytes that is not UTF-8 (0xff never is), packed as a msgpack str
    server, sink = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER))
    peer = await connect(server)
    helo = await peer.read()
    salt = b"\xff" + os.urandom(15)
    with pytest.raises(UnicodeDecodeError):
        salt.decode("utf-8")
    # WHEN the PING carries it
    await peer.send(ping(helo, salt=salt))
    # THEN the digests are computed over the original bytes, both ways
    pong = await peer.read()
    assert pong[:2] == ["PONG", True]
    assert pong[4] == pong_digest(salt, SERVER.encode(), helo[1]["nonce"], KEY.encode())
    await peer.send(frame("c1"))
    assert await peer.read() == {"ack": "c1"}
    assert len(sink.chunks) == 1


USERS = {"alice": "pw", "bob": "hunter2"}


@pytest.mark.parametrize(
    ("user", "password", "ok"),
    [("alice", "pw", True), ("bob", "hunter2", True), ("alice", "wrong", False), ("mallory", "pw", False)],
)
async def test_user_auth(servers: list[ForwardServer], user: str, password: str, ok: bool) -> None:
    # GIVEN a server with users: HELO carries a 16-byte auth salt
    server, sink = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER, users=USERS))
    peer = await connect(server)
    helo = await peer.read()
    assert len(helo[1]["auth"]) == 16
    # WHEN a client signs in with the right key and these credentials
    await peer.send(ping(helo, user=user, password=password))
    pong = await peer.read()
    # THEN only a known user with the right password gets through
    if ok:
        assert pong[:3] == ["PONG", True, ""]
        await peer.send(frame("c1"))
        assert await peer.read() == {"ack": "c1"}
    else:
        assert pong == ["PONG", False, USER_MISMATCH, "", ""]
        assert await peer.closed()
        assert sink.chunks == []


@pytest.mark.parametrize(
    "bad_ping",
    [
        msgpack.packb(["PING", CLIENT, "salt", "digest"]),  # too few items
        msgpack.packb(["PONG", CLIENT, "salt", "digest", "", ""]),  # not a PING
        msgpack.packb(["PING", 1, "salt", "digest", "", ""]),  # hostname not a str
        msgpack.packb({"ping": True}),  # not an array
        b"\xc1",  # never valid msgpack
        b"\xc0" + frame("c1"),  # nil (a transport keep-alive) is no PING, and no way past it
    ],
    ids=["short", "pong", "int-hostname", "map", "garbage", "nil"],
)
async def test_malformed_ping_is_refused(servers: list[ForwardServer], bad_ping: bytes) -> None:
    server, sink = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER))
    peer = await connect(server)
    await peer.read()
    await peer.send(bad_ping)
    assert await peer.read() == ["PONG", False, INVALID_PING, "", ""]
    assert await peer.closed()
    assert sink.chunks == []
    assert server.stats.protocol_errors == {INVALID_PING: 1}


async def test_silent_peer_is_closed_after_the_timeout(servers: list[ForwardServer]) -> None:
    server, _ = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER, timeout_secs=0.2))
    peer = await connect(server)
    await peer.read()  # HELO
    assert await peer.closed()
    assert server.stats.protocol_errors == {NO_PING: 1}


async def test_peer_that_connects_and_leaves_is_no_error(servers: list[ForwardServer]) -> None:
    # GIVEN Fluentd's transport heartbeat: connect, then close without a byte
    server, _ = await serve(servers, SharedKeyHandshake(KEY, self_hostname=SERVER))
    peer = await connect(server)
    await peer.read()
    peer.writer.close()
    await peer.writer.wait_closed()
    for _ in range(100):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    # THEN nothing is counted as a protocol error
    assert server.open_connections == 0
    assert server.stats.protocol_errors == {}


# -- configuration ------------------------------------------------------------------------------
BASE = """destination: {url: "file:///tmp/lake", region: eu-west-1, sources: [{class_uid: "*", location: ext/a/}]}
spool: {path: /tmp/spool}
"""


def test_config_builds_the_handshake_and_never_shows_secrets() -> None:
    from securitylake_sink.plan import resolve_plan

    config = parse_config(
        BASE
        + """listen:
  forward:
    shared_key: "k-3xq8"
    self_hostname: sink.example
    users: [{username: alice, password: "p-7zw2"}]
"""
    )
    handshake = handshake_for(config.listen.forward)
    assert handshake is not None
    assert handshake.self_hostname == "sink.example"
    shown = json.dumps(resolve_plan(config)) + repr(config) + repr(handshake)
    assert "k-3xq8" not in shown
    assert "p-7zw2" not in shown


def test_no_shared_key_means_no_handshake_and_default_hostname() -> None:
    assert handshake_for(parse_config(BASE).listen.forward) is None
    config = parse_config(BASE + 'listen: {forward: {shared_key: "k"}}\n')
    handshake = handshake_for(config.listen.forward)
    assert handshake is not None
    assert handshake.self_hostname  # the machine's hostname


@pytest.mark.parametrize(
    ("forward", "option", "hidden"),
    [
        ('{users: [{username: a, password: "p-7zw2"}]}', "listen.forward.users", "p-7zw2"),
        ("{self_hostname: x}", "listen.forward.self_hostname", None),
        ("{shared_key: 48151623}", "listen.forward.shared_key", "48151623"),
        ('{shared_key: k, users: [{username: a, password: "p-1"}, {username: a, password: "p-2"}]}',
         "listen.forward.users", "p-1"),
    ],
)  # fmt: skip
def test_config_errors_name_the_option_and_hide_secrets(forward: str, option: str, hidden: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"listen: {{forward: {forward}}}\n")
    assert [i.option for i in caught.value.issues] == [option]
    if hidden is not None:
        assert hidden not in str(caught.value)
