"""``securitylake-sink spool ls|retry|drop`` on a spool built by the real App and spool code."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from securitylake_sink import delivery as delivery_module
from securitylake_sink.cli import main
from securitylake_sink.errors import PermanentDelivery
from securitylake_sink.spool import quarantine
from securitylake_sink.spool.batchfile import SUFFIX
from securitylake_sink.spool.wal import encode_record
from tests.unit.test_quarantine import ROWS, RejectingStore, config_for, run_sink

SEGMENT = "00000000000000000001"


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spool with two quarantined batches, one damaged log segment, and one batch left sealed."""
    monkeypatch.setattr(delivery_module, "RETRY_BASE_SECS", 0.001)
    monkeypatch.setattr(delivery_module, "RETRY_MAX_SECS", 0.01)
    root = tmp_path / "spool"
    store = RejectingStore(tmp_path / "lake", PermanentDelivery("AccessDenied: denied on that prefix"))
    store.rejected = "-"  # never None: every key is rejected

    def reject_all(key: str, data: bytes) -> None:
        store.calls.append(key)
        raise PermanentDelivery("AccessDenied: denied on that prefix")

    store.put = reject_all  # type: ignore[method-assign]

    async def build(hours: range) -> list[Path]:
        """Batches left sealed by a sink whose every put was rejected (so none was counted), each
        then given one counted rejection, as delivery records it once the lake stored another object."""
        before = set((root / "sealed").glob(f"*{SUFFIX}"))
        await run_sink(config_for(tmp_path, "{max_attempts: 1000}"), store, hours, timeout=0.3)
        left = sorted(set((root / "sealed").glob(f"*{SUFFIX}")) - before)
        for path in left:
            quarantine.record_failure(path, "AccessDenied: denied on that prefix")
        return left

    for path in asyncio.run(build(range(2))):
        failures = quarantine.read_failures(path)
        quarantine.quarantine_batch(root, path, "permanent_failure", "AccessDenied: denied on that prefix", failures)
    asyncio.run(build(range(5, 6)))
    segment = root / "wal" / f"{SEGMENT}.wal"
    segment.write_bytes(encode_record(b"mapped") + b"\x00garbage" + encode_record(b"lost"))
    quarantine.quarantine_segment(root, segment, len(encode_record(b"mapped")))
    return root


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run the command line in this process: (exit code, stdout, stderr); ``answer`` is stdin."""

    def run(*args: str, answer: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def ids(root: Path, kind: str = "batch") -> list[str]:
    return sorted(i.id for i in quarantine.list_items(root) if i.kind == kind)


def test_ls_shows_sealed_quarantined_and_the_log(spool: Path, cli: Cli) -> None:
    # WHEN listing the spool as a table
    code, out, _ = cli("spool", "ls", "--spool", str(spool))
    # THEN every item is there with its state, and the reasons are shown
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"spool {spool}" and "write-ahead log" in lines[1] and "backlog" in lines[1]
    assert sum(line.lstrip().startswith("quarantine") for line in lines) == 3
    assert sum(line.lstrip().startswith("sealed") for line in lines) == 1
    assert out.count("permanent_failure, 1 attempts: AccessDenied: denied on that prefix") == 2
    assert f"quarantine  {SEGMENT}" in out and "wal segment damaged at byte 16" in out
    sealed = next(line for line in lines if line.lstrip().startswith("sealed"))
    assert "rejected" in sealed and f" {ROWS} " in sealed

    # WHEN listing it as JSON THEN it holds the same, with the full reasons
    code, out, _ = cli("spool", "ls", "--spool", str(spool), "--json")
    assert code == 0
    state = json.loads(out)
    assert state["path"] == str(spool) and state["open"] == []
    assert state["wal"]["segments"] >= 1 and state["wal"]["backlog_bytes"] == 0
    assert [s["rows"] for s in state["sealed"]] == [ROWS] and state["sealed"][0]["failures"] >= 1
    kinds = sorted(item["kind"] for item in state["quarantine"])
    assert kinds == ["batch", "batch", "wal_segment"]
    segment = next(item for item in state["quarantine"] if item["kind"] == "wal_segment")
    assert segment["id"] == SEGMENT
    assert (segment["reason"]["damaged_at"], segment["reason"]["intact_records_after_damage"]) == (16, 1)
    batch = next(item for item in state["quarantine"] if item["kind"] == "batch")
    assert batch["reason"]["rows"] == ROWS and batch["reason"]["key"].startswith("ext/unit/region=eu-west-1/")


def test_ls_takes_the_spool_path_from_the_config(spool: Path, tmp_path: Path, cli: Cli) -> None:
    config = tmp_path / "sink.yaml"
    config.write_text(
        f'destination: {{url: "file://{tmp_path / "lake"}", region: eu-west-1, account_id: external,\n'
        f'  sources: [{{class_uid: "*", location: "ext/unit/"}}]}}\nspool: {{path: "{spool}"}}\n'
    )
    code, out, _ = cli("spool", "ls", "-c", str(config), "--json")
    assert code == 0 and len(json.loads(out)["quarantine"]) == 3


def test_retry_moves_batches_back_to_sealed_and_refuses_a_segment(spool: Path, cli: Cli) -> None:
    first, second = ids(spool)
    # WHEN one batch is retried by id THEN it is back in sealed/ without its reason or failure count
    code, out, _ = cli("spool", "retry", "--spool", str(spool), first)
    assert code == 0 and f"{first}: back in sealed/" in out and "within a few seconds" in out
    assert (spool / "sealed" / f"{first}{SUFFIX}").exists()
    assert not (spool / "sealed" / f"{first}.failures").exists()
    assert not (spool / "quarantine" / f"{first}.reason.json").exists()
    assert ids(spool) == [second]

    # WHEN a damaged segment is retried by id THEN it is refused with the reason, and it stays
    code, _, err = cli("spool", "retry", "--spool", str(spool), SEGMENT)
    assert code == 1 and "damaged write-ahead-log segment" in err and "drop it" in err
    assert ids(spool, "wal_segment") == [SEGMENT]

    # WHEN everything is retried THEN the batches go back, the segment stays (and says so)
    code, out, _ = cli("spool", "retry", "--spool", str(spool), "--all")
    assert code == 0 and "1 batch(es) queued" in out and "1 damaged write-ahead-log segment(s) stay" in out
    assert ids(spool) == [] and ids(spool, "wal_segment") == [SEGMENT]
    assert len(list((spool / "sealed").glob(f"*{SUFFIX}"))) == 3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["retry", "no-such-id"], 1, "no quarantined item 'no-such-id'"),
        (["drop", "--yes", "no-such-id"], 1, "no quarantined item 'no-such-id'"),
        (["retry"], 2, "name quarantined items by ID or give --all"),
        (["drop", "--all", "x"], 2, "name quarantined items by ID or give --all"),
    ],
)
def test_bad_ids_change_nothing(spool: Path, cli: Cli, args: list[str], code: int, message: str) -> None:
    before = quarantine.list_items(spool)
    got, _, err = cli("spool", args[0], "--spool", str(spool), *args[1:])
    assert (got, message in err) == (code, True), err
    assert quarantine.list_items(spool) == before


def test_a_missing_spool_is_an_error(tmp_path: Path, cli: Cli) -> None:
    code, _, err = cli("spool", "ls", "--spool", str(tmp_path / "nowhere"))
    assert code == 1 and f"no spool at {tmp_path / 'nowhere'}" in err


def test_drop_asks_first_and_deletes_only_what_was_named(spool: Path, cli: Cli) -> None:
    first, second = ids(spool)
    # WHEN the confirmation is not given THEN nothing is deleted
    code, out, _ = cli("spool", "drop", "--spool", str(spool), first, answer="n\n")
    assert code == 1 and "[y/N]" in out and "nothing deleted" in out
    assert ids(spool) == [first, second]
    # WHEN it is THEN the item and its reason are gone, the others stay
    code, out, _ = cli("spool", "drop", "--spool", str(spool), first, answer="y\n")
    assert code == 0 and "deleted 1 quarantined item(s)" in out
    assert ids(spool) == [second]
    assert not list((spool / "quarantine").glob(f"{first}*"))
    # WHEN everything is dropped with --yes THEN no question is asked and quarantine/ is empty
    code, out, _ = cli("spool", "drop", "--spool", str(spool), "--all", "--yes")
    assert code == 0 and "[y/N]" not in out and "deleted 2 quarantined item(s)" in out
    assert list((spool / "quarantine").iterdir()) == []
    # AND the batch that was only sealed is untouched
    assert len(list((spool / "sealed").glob(f"*{SUFFIX}"))) == 1
