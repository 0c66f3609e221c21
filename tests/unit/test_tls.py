"""TLS on the Forward port: certificates made at test time (trustme), a TLS client gets its ack,
``ca_file`` makes client certificates mandatory, and bad files are config errors naming the option."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import trustme

from securitylake_sink.config import Config, parse_config
from securitylake_sink.errors import ConfigError
from securitylake_sink.plan import resolve_plan
from securitylake_sink.sources.forward import ForwardServer
from securitylake_sink.sources.handshake import SharedKeyHandshake, ping_digest
from securitylake_sink.sources.tls import context_for
from tests.unit.fake_sinks import RecordingSink

TIMEOUT = 5.0
# ["app", [[1700000000, {"msg": "hi"}]], {"chunk": "tls-1"}]
FRAME: bytes = msgpack.packb(["app", [[1_700_000_000, {"msg": "hi"}]], {"chunk": "tls-1"}])
ACK = {"ack": "tls-1"}


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    client: trustme.LeafCert  # issued by ca
    stranger: trustme.LeafCert  # issued by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp / "server.key"))
    return Pki(
        ca,
        tmp / "ca.pem",
        tmp / "server.pem",
        tmp / "server.key",
        ca.issue_cert("client.local"),
        trustme.CA().issue_cert("client.local"),
    )


def config(tls: str, forward: str = "") -> Config:
    return parse_config(
        'destination: {url: "file:///tmp/lake", region: eu-west-1, sources: [{class_uid: "*", location: ext/a/}]}\n'
        f"listen: {{forward: {{tls: {tls}{forward}}}}}\n"
    )


@pytest.fixture
async def servers() -> AsyncIterator[list[ForwardServer]]:
    started: list[ForwardServer] = []
    yield started
    for server in started:
        await server.close()


async def serve(servers: list[ForwardServer], cfg: Config, handshake: SharedKeyHandshake | None = None) -> tuple[
    ForwardServer, RecordingSink
]:
    sink = RecordingSink()
    server = ForwardServer(
        sink, host="127.0.0.1", port=0, ssl=context_for(cfg.listen.forward.tls), handshake=handshake
    )
    await server.start()
    servers.append(server)
    return server, sink


def client_context(pki: Pki, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


async def exchange(port: int, context: ssl.SSLContext | None, data: bytes) -> object:
    """Send bytes, return the first msgpack object the server answers (EOFError if none)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None),
        TIMEOUT,
    )
    try:
        writer.write(data)
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), TIMEOUT)
            if not chunk:
                raise EOFError
            unpacker.feed(chunk)
            for obj in unpacker:
                return obj
    finally:
        writer.close()


def tls_option(pki: Pki, *, ca: bool = False) -> str:
    text = f'{{cert_file: "{pki.cert_file}", key_file: "{pki.key_file}"'
    return text + (f', ca_file: "{pki.ca_file}"}}' if ca else "}")


async def test_tls_client_sends_a_frame_and_gets_the_ack(servers: list[ForwardServer], pki: Pki) -> None:
    # GIVEN a TLS Forward port without client certificates
    server, sink = await serve(servers, config(tls_option(pki)))
    # WHEN a client that trusts the CA sends a chunk
    reply = await exchange(server.port, client_context(pki), FRAME)
    # THEN it is stored and acked over TLS
    assert reply == ACK
    assert [c.entries[0].record for c in sink.chunks] == [{"msg": "hi"}]


async def test_plain_tcp_to_the_tls_port_stores_nothing(servers: list[ForwardServer], pki: Pki) -> None:
    server, sink = await serve(servers, config(tls_option(pki)))
    with pytest.raises((EOFError, ConnectionResetError)):
        await exchange(server.port, None, FRAME)
    assert sink.chunks == []


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
async def test_with_ca_file_a_client_without_a_good_certificate_is_refused(
    servers: list[ForwardServer], pki: Pki, who: str
) -> None:
    # GIVEN a port whose ca_file makes client certificates mandatory
    server, sink = await serve(servers, config(tls_option(pki, ca=True)))
    server_context = context_for(config(tls_option(pki, ca=True)).listen.forward.tls)
    assert server_context is not None and server_context.verify_mode == ssl.CERT_REQUIRED
    context = client_context(pki, None if who == "no certificate" else pki.stranger)
    # WHEN the client connects and sends a chunk; THEN the TLS session fails and nothing is stored
    with pytest.raises((ssl.SSLError, EOFError, ConnectionResetError)):
        await exchange(server.port, context, FRAME)
    assert sink.chunks == []


async def test_with_ca_file_a_client_certificate_from_the_ca_is_accepted(
    servers: list[ForwardServer], pki: Pki
) -> None:
    server, sink = await serve(servers, config(tls_option(pki, ca=True)))
    assert await exchange(server.port, client_context(pki, pki.client), FRAME) == ACK
    assert len(sink.chunks) == 1


async def test_tls_and_shared_key_together(servers: list[ForwardServer], pki: Pki) -> None:
    # GIVEN TLS plus the handshake (Fluent Bit's "Secure Forward" with Shared_Key)
    server, sink = await serve(servers, config(tls_option(pki)), SharedKeyHandshake("k", self_hostname="sink"))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=client_context(pki), server_hostname="localhost"
    )
    unpacker = msgpack.Unpacker(raw=False)

    async def read() -> object:
        while True:
            for obj in unpacker:
                return obj
            unpacker.feed(await asyncio.wait_for(reader.read(4096), TIMEOUT))

    # WHEN the client runs the handshake inside TLS, then sends a chunk
    helo = await read()
    assert isinstance(helo, list)
    salt = os.urandom(16)
    digest = ping_digest(salt, b"c", helo[1]["nonce"], b"k")
    writer.write(msgpack.packb(["PING", "c", salt, digest, "", ""], use_bin_type=True) + FRAME)
    # THEN the PONG and the ack come back
    pong = await read()
    assert isinstance(pong, list) and pong[:2] == ["PONG", True]
    assert await read() == ACK
    writer.close()
    assert len(sink.chunks) == 1


# -- configuration ------------------------------------------------------------------------------
def test_tls_paths_show_in_the_plan(pki: Pki) -> None:
    plan = json.loads(json.dumps(resolve_plan(config(tls_option(pki, ca=True)))))
    assert plan["listen"]["forward"]["tls"] == {
        "cert_file": str(pki.cert_file),
        "key_file": str(pki.key_file),
        "ca_file": str(pki.ca_file),
    }


@pytest.mark.parametrize(
    ("case", "option", "words"),
    [
        ("missing cert", "listen.forward.tls.cert_file", "No such file"),
        ("key is a directory", "listen.forward.tls.key_file", "cannot read"),
        ("cert is not PEM", "listen.forward.tls.cert_file", "not a PEM certificate"),
        ("key of another cert", "listen.forward.tls.key_file", "matching"),
        ("ca is not PEM", "listen.forward.tls.ca_file", "not a PEM file of CA certificates"),
        ("missing key", "listen.forward.tls.key_file", "No such file"),
    ],
)
def test_bad_tls_files_are_config_errors_naming_the_option(
    pki: Pki, tmp_path: Path, case: str, option: str, words: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other_key = tmp_path / "other.key"
    pki.client.private_key_pem.write_to_path(str(other_key))
    cert, key, ca = pki.cert_file, pki.key_file, pki.ca_file
    cert, key, ca = {
        "missing cert": (tmp_path / "nope.pem", key, ca),
        "key is a directory": (cert, tmp_path, ca),
        "cert is not PEM": (garbage, key, ca),
        "key of another cert": (cert, other_key, ca),
        "ca is not PEM": (cert, key, garbage),
        "missing key": (cert, tmp_path / "nope.key", ca),
    }[case]
    with pytest.raises(ConfigError) as caught:
        config(f'{{cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}"}}')
    assert [i.option for i in caught.value.issues] == [option]
    assert words in caught.value.issues[0].message
