"""Where objects are stored: the ``ObjectStore`` protocol, its local (``file://``) implementation,
``store_for`` choosing it or the S3 store (lake/s3.py), and ``resolve_region``. The AWS SDK is
loaded only for an S3 destination: a ``file://`` lake runs without it (about 9 MB less resident).

A put either stores the whole object at its key or raises a ``DeliveryError``; putting the same
key again replaces the object, which is what makes retries and crash replays safe.
"""

from __future__ import annotations

__all__ = ["LocalStore", "ObjectStore", "resolve_region", "store_for"]

import contextlib
import dataclasses
import errno
import logging
import os
import uuid
from pathlib import Path
from typing import Protocol

from securitylake_sink.config import AuthConfig, Config
from securitylake_sink.errors import PermanentDelivery, RetriableDelivery
from securitylake_sink.lake.url import Destination
from securitylake_sink.spool.wal import fsync_dir

log = logging.getLogger("securitylake_sink.lake.store")

# Errors that an operator has to fix; anything else (ENOSPC, EIO, …) may heal by itself.
PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


class ObjectStore(Protocol):
    """Stores whole objects by key."""

    def describe(self) -> str: ...

    def put(self, key: str, data: bytes) -> None: ...


class LocalStore:
    """A directory laid out exactly like the Security Lake bucket; writes are atomic and durable."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"file://{self.root}"

    def put(self, key: str, data: bytes) -> None:
        target = self.root / key
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(target)
            fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # e.g. ENOTDIR: the lake path runs through a file
                tmp.unlink(missing_ok=True)
            kind = PermanentDelivery if exc.errno in PERMANENT_ERRNOS else RetriableDelivery
            raise kind(f"cannot write {target}: {exc.strerror or exc}") from exc


def store_for(destination: Destination, config: Config, *, lake: bool = True) -> ObjectStore:
    """The store for a parsed destination (its region resolved); S3 takes credentials from ``config``
    (``lake=False`` for a store that is not the lake, e.g. s3:// dead letters)."""
    if destination.kind == "file":
        assert destination.local_path is not None
        return LocalStore(destination.local_path)
    from securitylake_sink.lake.s3 import S3Store  # noqa: PLC0415 (the AWS SDK, for S3 only)

    return S3Store.for_config(destination, config, lake=lake)


def resolve_region(destination: Destination, auth: AuthConfig) -> Destination:
    """The destination with its region filled in by a lookup at start-up (no-op when it has one)."""
    if destination.region is not None or destination.kind != "s3":
        return destination
    from securitylake_sink.lake.credentials import session_for  # noqa: PLC0415 (the AWS SDK, for S3 only)
    from securitylake_sink.lake.s3 import lookup_region  # noqa: PLC0415

    region = lookup_region(session_for(auth, destination), destination)
    log.info("looked up the bucket's region", extra={"bucket": destination.bucket, "region": region})
    return dataclasses.replace(destination, region=region)
