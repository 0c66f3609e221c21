"""Fluent Bit's own ``forward`` output against the real sink, with Shared_Key and TLS; skipped
when no ``fluent-bit`` binary is on PATH."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.integration.sinkproc import SinkProcess, free_port, read_lake, write_config

FLUENT_BIT = shutil.which("fluent-bit")
pytestmark = pytest.mark.skipif(FLUENT_BIT is None, reason="no fluent-bit binary on PATH")

KEY = "interop-shared-key"
SAMPLES = 5
RECORD = '{"class_uid": 3002, "activity_id": 1, "severity_id": 1, "user": {"name": "alice"}}'


def _fluent_bit_conf(tmp: Path, port: int, ca_file: Path) -> Path:
    path = tmp / "fluent-bit.conf"
    path.write_text(
        f"""[SERVICE]
    Flush        1
    Grace        2
    Log_Level    info

[INPUT]
    Name         dummy
    Tag          auth
    Dummy        {RECORD}
    Rate         10
    Samples      {SAMPLES}

[OUTPUT]
    Name                  forward
    Match                 *
    Host                  127.0.0.1
    Port                  {port}
    Shared_Key            {KEY}
    Self_Hostname         fluent-bit.test
    Require_ack_response  On
    Retry_Limit           no_limits
    tls                   On
    tls.verify            On
    tls.vhost             localhost
    tls.ca_file           {ca_file}
"""
    )
    return path


def test_fluent_bit_with_shared_key_and_tls(tmp_path: Path) -> None:
    # GIVEN a sink that requires TLS and the shared key
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    server.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    config = write_config(tmp_path, port, extra="batch: {max_age_secs: 1}\n")
    forward = f'  forward: {{address: "127.0.0.1:{port}"}}\n'
    text = config.read_text()
    assert forward in text
    config.write_text(
        text.replace(
            forward,
            f'  forward:\n    address: "127.0.0.1:{port}"\n    shared_key: "{KEY}"\n'
            f'    tls: {{cert_file: "{cert_file}", key_file: "{key_file}"}}\n'
            '  metrics: {enabled: false}\n',
        )
    )
    sink = SinkProcess(config, port, tmp_path / "sink.log")
    # WHEN Fluent Bit sends its dummy records through the forward output
    assert FLUENT_BIT is not None
    with (tmp_path / "fluent-bit.log").open("wb") as out:
        shipper = subprocess.Popen(
            [FLUENT_BIT, "-c", str(_fluent_bit_conf(tmp_path, port, ca_file))], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 40
        while read_lake(tmp_path / "lake").num_rows < SAMPLES:
            assert time.monotonic() < deadline, (tmp_path / "fluent-bit.log").read_text()[-3000:] + sink.log()[-3000:]
            assert shipper.poll() is None, (tmp_path / "fluent-bit.log").read_text()[-3000:]
            time.sleep(0.3)
    finally:
        shipper.terminate()
        shipper.wait(20)
        code = sink.stop()
    # THEN every record landed once, the handshake passed, and the sink shut down cleanly
    assert read_lake(tmp_path / "lake").num_rows == SAMPLES
    assert "protocol error" not in sink.log()
    assert code == 0
