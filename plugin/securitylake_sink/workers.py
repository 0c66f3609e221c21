"""The layout of ``run --workers N``: each worker's config (its spool, spool share, metrics port and
dead letters), the rules a worker count must keep, and the spools an earlier run left behind.

Worker ``i`` of ``N`` owns ``<spool.path>/worker-<i>/`` (a whole spool: lock, wal, batches and, by
default, dead letters), ``spool.max_bytes // N`` of the spool limit and the metrics port plus ``i``.
With one worker the sink runs in one process on ``<spool.path>`` itself, as it always has. A spool
that holds data no worker of this run owns (``<spool.path>`` itself under N > 1 workers, or
``worker-<j>`` with j >= N) is an orphan: a worker drains it into the lake before serving.
"""

from __future__ import annotations

__all__ = [
    "WORKER_DIR_PREFIX",
    "check_reuse_port",
    "holds_data",
    "orphan_config",
    "orphan_spools",
    "worker_config",
    "worker_issues",
    "worker_spool_path",
]

import json
import re
import socket
from pathlib import Path
from typing import Final

from securitylake_sink.config import MAX_WORKERS, Config, split_address
from securitylake_sink.errors import ConfigIssue
from securitylake_sink.spool.batchfile import SUFFIX

WORKER_DIR_PREFIX: Final = "worker-"
_WORKER_DIR = re.compile(r"^worker-(\d{1,6})\Z")
MIN_SPOOL_SHARE_BYTES: Final = 1024 * 1024  # spool.max_bytes' own minimum, per worker
MAX_PORT: Final = 65535


def worker_spool_path(base: Path, index: int) -> Path:
    """The spool directory of worker ``index`` under ``spool.path``."""
    return base / f"{WORKER_DIR_PREFIX}{index}"


def _join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def worker_config(config: Config, index: int, *, spool_max_bytes: int | None = None) -> Config:
    """The config worker ``index`` runs: its own spool directory, spool share, metrics port and
    dead letter directory (``dead_letter.location/worker-<i>`` when a local location is set)."""
    base = config.spool.path
    spool = config.spool.model_copy(
        update={
            "path": worker_spool_path(base, index),
            "max_bytes": config.spool.max_bytes if spool_max_bytes is None else spool_max_bytes,
        }
    )
    host, port = split_address(config.listen.metrics.address)
    metrics = config.listen.metrics.model_copy(update={"address": _join_address(host, port + index if port else 0)})
    listen = config.listen.model_copy(update={"metrics": metrics})
    dead_letter = config.dead_letter
    # s3:// dead letters are kept under each worker's own spool and shipped under uuid7 names:
    # the prefix is shared.
    if dead_letter.location is not None and not dead_letter.is_s3:
        location = f"{dead_letter.location.rstrip('/')}/{WORKER_DIR_PREFIX}{index}"
        dead_letter = dead_letter.model_copy(update={"location": location})
    return config.model_copy(update={"spool": spool, "listen": listen, "dead_letter": dead_letter})


def worker_issues(config: Config, workers: int, option: str = "workers") -> list[ConfigIssue]:
    """The rules ``workers`` worker processes break with this config; ``option`` names where the
    count came from (``workers`` or ``--workers``)."""
    if not 1 <= workers <= MAX_WORKERS:
        return [ConfigIssue(option, f"must be between 1 and {MAX_WORKERS}, got {workers}")]
    if workers == 1:
        return []
    issues: list[ConfigIssue] = []
    listeners = [("listen.forward.address", config.listen.forward.address)]
    if config.listen.http is not None:
        listeners.append(("listen.http.address", config.listen.http.address))
    for name, address in listeners:
        if split_address(address)[1] == 0:
            issues.append(
                ConfigIssue(name, f"port 0 picks a different port in each worker; give a fixed port with {option} > 1")
            )
    if config.listen.metrics.enabled:
        port = split_address(config.listen.metrics.address)[1]
        if port and port + workers - 1 > MAX_PORT:
            issues.append(
                ConfigIssue(
                    "listen.metrics.address",
                    f"worker i serves metrics on port {port} + i; with {option} {workers} that passes {MAX_PORT}",
                )
            )
    limit = config.spool.max_bytes
    if limit is not None and limit // workers < MIN_SPOOL_SHARE_BYTES:
        issues.append(
            ConfigIssue(
                "spool.max_bytes",
                f"is split evenly over the workers: {limit} over {option} {workers} leaves "
                f"{limit // workers} bytes each, below the minimum {MIN_SPOOL_SHARE_BYTES}",
            )
        )
    return issues


def check_reuse_port(option: str = "workers") -> ConfigIssue | None:
    """An issue when this platform cannot share a listening port between processes."""
    if hasattr(socket, "SO_REUSEPORT"):
        return None
    return ConfigIssue(option, "more than one worker needs SO_REUSEPORT (Linux), which this platform lacks")


def holds_data(path: Path) -> bool:
    """Whether the spool at ``path`` holds batches or log bytes past its checkpoint (no lock taken)."""
    for sub in ("open", "sealed"):
        if any((path / sub).glob(f"*{SUFFIX}")):
            return True
    segments = sorted((int(p.stem), p.stat().st_size) for p in (path / "wal").glob("*.wal") if p.stem.isdigit())
    if not segments:
        return False
    try:
        saved = json.loads((path / "checkpoint").read_text())
        checkpoint = (int(saved["segment"]), int(saved["offset"]))
    except FileNotFoundError:
        checkpoint = (0, 0)
    except (ValueError, KeyError, TypeError):
        return True  # the spool's own recovery reports the damage
    return any(size > 0 and (segment, size) > checkpoint for segment, size in segments)


def orphan_spools(config: Config, workers: int) -> list[Path]:
    """Spools under ``spool.path`` that hold data and that no worker of this run owns."""
    base = config.spool.path
    candidates = [base] if workers > 1 else []
    try:
        entries = sorted(base.iterdir()) if base.is_dir() else []
    except OSError:
        entries = []
    indexed = []
    for entry in entries:
        match = _WORKER_DIR.match(entry.name)
        if match and entry.is_dir() and (workers == 1 or int(match[1]) >= workers):
            indexed.append((int(match[1]), entry))
    candidates.extend(path for _, path in sorted(indexed))
    return [path for path in candidates if holds_data(path)]


def orphan_config(config: Config, path: Path) -> Config:
    """The config that drains the orphan spool at ``path``: its own dead letters, no listeners."""
    match = _WORKER_DIR.match(path.name)
    if path == config.spool.path or match is None:
        return config
    return worker_config(config, int(match[1]))
