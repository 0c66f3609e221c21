"""The real ``securitylake-sink run`` process for integration tests: start, wait, stop, kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

BIN = Path(sys.executable).parent / "securitylake-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth_records(ids: Iterable[int], now_ns: int) -> list[tuple[int, dict[str, Any]]]:
    """(time, record) pairs: OCSF Authentication events whose ``metadata.uid`` is the id."""
    return [
        (
            now_ns,
            {
                "class_uid": 3002,
                "activity_id": 1,
                "time": now_ns // 1_000_000,
                "severity_id": 1,
                "user": {"name": "x"},
                "metadata": {"uid": str(i)},
            },
        )
        for i in ids
    ]


def write_config(
    tmp: Path,
    port: int,
    *,
    extra: str = "",
    sources: str | None = None,
    listen: str = "",
    spool: Path | None = None,
    name: str = "config.yaml",
) -> Path:
    """A file-lake config ``tmp/name`` (lake in tmp/lake/, spool in tmp/spool/ unless ``spool``)
    listening on ``port``; ``listen`` adds lines to the listen group."""
    sources = sources or '    - {class_uid: "*", location: "ext/test/"}\n'
    path = tmp / name
    path.write_text(
        f"""destination:
  url: "file://{tmp / "lake"}"
  region: eu-west-1
  account_id: "111122223333"
  sources:
{sources}listen:
  forward: {{address: "127.0.0.1:{port}"}}
{listen}spool: {{path: "{spool or tmp / "spool"}"}}
{extra}"""
    )
    return path


class SinkProcess:
    """One sink process; ``stop`` sends SIGTERM and waits, ``kill`` sends SIGKILL.

    ``args`` go after ``run`` (``--workers 2``); ``serving`` is the log line that says it serves;
    ``new_session`` starts it in a session (and process group) of its own, for ``os.killpg``.
    """

    started: ClassVar[list[SinkProcess]] = []  # every one started; the conftest kills what a test left

    def __init__(
        self,
        config: Path,
        port: int,
        log: Path,
        *,
        level: str = "debug",
        args: Sequence[str] = (),
        serving: str = "securitylake-sink is serving",
        new_session: bool = False,
    ) -> None:
        self.config, self.port, self.log_path = config, port, log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN), "run", "-c", str(config), "--log-level", level, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=new_session,
        )
        SinkProcess.started.append(self)
        try:
            self.wait_for_log(serving)
        except AssertionError:
            self.kill()
            raise

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``text`` appears ``count`` times in the sink's log."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                if not self._log.closed and self.proc.poll() is None:
                    self.kill()
                raise AssertionError(f"{text!r} did not appear {count} times: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> SinkProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        """A test that fails before ``stop`` leaves no sink running."""
        if self.proc.poll() is None:
            self.kill()


def read_lake(lake: Path) -> pa.Table:
    """Every object in a local lake as one table, with its key as ``_key``."""
    tables = []
    for path in sorted(lake.rglob("*.parquet")):
        table = pq.read_table(path)
        tables.append(table.append_column("_key", pa.array([str(path.relative_to(lake))] * table.num_rows)))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
