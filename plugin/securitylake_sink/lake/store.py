"""Where objects are stored: the ``ObjectStore`` protocol, its local (``file://``) implementation,
and ``store_for`` choosing it or the S3 store (lake/s3.py).

A put either stores the whole object at its key or raises a ``DeliveryError``; putting the same
key again replaces the object, which is what makes retries and crash replays safe.
"""

from __future__ import annotations

__all__ = ["LocalStore", "ObjectStore", "store_for"]

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Protocol

from securitylake_sink.config import Config
from securitylake_sink.errors import PermanentDelivery, RetriableDelivery
from securitylake_sink.lake.s3 import S3Store
from securitylake_sink.lake.url import Destination
from securitylake_sink.spool.wal import fsync_dir

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


def store_for(destination: Destination, config: Config) -> ObjectStore:
    """The store for a parsed destination (its region resolved); S3 takes credentials from ``config``."""
    if destination.kind == "file":
        assert destination.local_path is not None
        return LocalStore(destination.local_path)
    return S3Store.for_config(destination, config)
