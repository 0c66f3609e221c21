"""A frame whose records only fail when they are built: acked, kept whole as one dead letter,
through a crash and a restart, while the records around it land once. Bytes that are not UTF-8
in a tag or a record: replaced where they land, never a reason to lose the record."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from securitylake_sink.forward_client import ForwardClient
from tests.integration.sinkproc import SinkProcess, free_port, read_lake, write_config

SSHD_LINE = "sshd[42]: Accepted password for alice from 192.0.2.7 port 50022 ssh2"


def _letters(spool: Path) -> list[dict[str, object]]:
    return [json.loads(line) for p in sorted((spool / "dead_letter").glob("*.ndjson")) for line in p.open()]


def test_an_array_map_key_is_acked_and_lands_whole_as_one_dead_letter(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, extra="mappings: [{match: 'host.*', rule: sshd}]\n")
    now = time.time_ns()
    # GIVEN a chunk whose record has an array as a map key (msgpack allows it; Python cannot build
    # it), between two good chunks, all acked
    sink = SinkProcess(config, port, tmp_path / "sink.log")
    with ForwardClient("127.0.0.1", port, timeout=10) as client:
        client.send("host.a", [(now, {"log": SSHD_LINE + " first"})])
        client.send("host.b", [(now, {(1, 2): "x", "log": SSHD_LINE})])  # type: ignore[dict-item]
        client.send("host.c", [(now, {"log": SSHD_LINE + " last"})])
    # WHEN the sink is killed right away (whatever it had mapped), then started again and stopped
    sink.kill()
    again = SinkProcess(config, port, tmp_path / "sink2.log")
    assert again.stop() == 0, again.log()
    # THEN the good records are in the lake once each
    rows = read_lake(tmp_path / "lake").to_pylist()
    assert sorted(r["raw_data"] for r in rows) == sorted([SSHD_LINE + " first", SSHD_LINE + " last"])
    # AND the bad chunk is one dead letter that carries the frame as it was received, with the reason
    (letter,) = _letters(tmp_path / "spool")
    assert letter["tag"] == "host.b"
    assert str(letter["reason"]).startswith("input: the records could not be decoded")
    frame = base64.b64decode(letter["record"]["frame_base64"])  # type: ignore[index]
    assert frame.startswith(b"\x93\xa6host.b") and SSHD_LINE.encode() in frame


def test_bytes_that_are_not_utf8_in_tag_and_records_are_replaced_where_they_land(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, extra="mappings: [{match: 'host.*', rule: sshd}]\n")
    now = time.time_ns()
    # GIVEN a tag and records holding bytes that are not UTF-8 (Fluentd sends binary as str): an
    # sshd line and an unused field, and a record no rule takes
    odd = b"\xff".decode("utf-8", "surrogateescape")
    with SinkProcess(config, port, tmp_path / "sink.log") as sink:
        with ForwardClient("127.0.0.1", port, timeout=10) as client:
            line = SSHD_LINE.replace("alice", f"al{odd}ice")
            client.send(f"host.{odd}", [(now, {"log": line, "note": f"n{odd}"}), (now, {"other": f"x{odd}"})])
        # WHEN the sink stops
        assert sink.stop() == 0, sink.log()
    # THEN the sshd record is in the lake with the byte replaced, and the other is a dead letter
    (row,) = read_lake(tmp_path / "lake").to_pylist()
    assert row["user"]["name"] == "al?ice"
    assert dict(row["unmapped"])["note"] == "n?"
    (letter,) = _letters(tmp_path / "spool")
    assert (letter["tag"], letter["record"]) == ("host.\ufffd", {"other": "x\ufffd"})
    assert "Traceback" not in sink.log()
