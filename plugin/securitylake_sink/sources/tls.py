"""TLS for the Forward port (pipeline-protocols §1.8): the server ``SSLContext`` built from local
PEM files; a bad file is a ``ConfigError`` naming its ``listen.forward.tls.*`` option."""

from __future__ import annotations

__all__ = ["OPTION", "context_for", "server_context"]

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Final

from securitylake_sink.errors import ConfigError

if TYPE_CHECKING:
    from securitylake_sink.config import ForwardTls

OPTION: Final = "listen.forward.tls"
# Fluent Bit and Fluentd both speak TLS 1.2 and 1.3; older versions are broken.
MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2


def _no_password() -> bytes:
    """Refuse encrypted keys instead of prompting on the terminal for a password."""
    raise ValueError("encrypted private keys are not supported")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def server_context(cert_file: Path, key_file: Path, ca_file: Path | None = None) -> ssl.SSLContext:
    """A TLS server context; with ``ca_file`` every client must present a certificate it signed.

    Reads local files only (no network I/O), so ``check-config`` may call it.
    """
    try:  # a certificate file is also a valid list of trusted certificates: parse it alone first
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{cert_file} is not a PEM certificate ({_reason(exc)})", f"{OPTION}.cert_file") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_TLS_VERSION
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{key_file} is not an unencrypted PEM private key matching {OPTION}.cert_file ({_reason(exc)})",
            f"{OPTION}.key_file",
        ) from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{ca_file} is not a PEM file of CA certificates ({_reason(exc)})", f"{OPTION}.ca_file"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def context_for(tls: ForwardTls | None) -> ssl.SSLContext | None:
    """The context ``listen.forward.tls`` asks for; None for plain TCP."""
    if tls is None:
        return None
    return server_context(tls.cert_file, tls.key_file, tls.ca_file)
