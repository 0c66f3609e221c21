"""Process memory settings: the collector leaves start-up's objects alone once serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_tune_gc_freezes_what_exists_and_collects_the_young_generation_less_often() -> None:
    # GIVEN a fresh interpreter that has built some objects (as start-up does), WHEN tune_gc runs
    code = (
        "import gc\n"
        "from securitylake_sink.memory import GC_YOUNG_THRESHOLD, tune_gc\n"
        "kept = [{'n': i} for i in range(10_000)]\n"
        "before = len(gc.get_objects())\n"
        "tune_gc()\n"
        "print(gc.get_freeze_count() >= before, gc.get_threshold()[0] == GC_YOUNG_THRESHOLD,\n"
        "      len(gc.get_objects()) < 100)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    # THEN every object that existed is frozen (out of the collector's walks), none is left to walk,
    # and the youngest generation waits for GC_YOUNG_THRESHOLD allocations
    assert out.split() == ["True", "True", "True"]


def _sdk_loaded_after_start(tmp_path: Path, url: str) -> bool:
    """Whether an App built (not listening) on a lake at ``url`` has loaded the AWS SDK."""
    config = tmp_path / "sink.yaml"
    config.write_text(
        f'destination: {{url: "{url}", region: eu-west-1, account_id: "111122223333",\n'
        '  sources: [{class_uid: "*", location: ext/unit/}]}\n'
        f'spool: {{path: "{tmp_path / "spool"}"}}\n'
    )
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from securitylake_sink.app import App\n"
        "from securitylake_sink.config import parse_config\n"
        f"App(parse_config(Path({str(config)!r}).read_text()), listen=False)\n"
        "print('boto3' in sys.modules or 'botocore.session' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()[-1] == "True"


def test_a_file_lake_never_loads_the_aws_sdk(tmp_path: Path) -> None:
    # GIVEN an App on a file:// lake, and one on an S3 bucket (its region given, so no lookup)
    # THEN only the S3 one has loaded boto3 (about 9 MB resident that a local run does without)
    assert _sdk_loaded_after_start(tmp_path, f"file://{tmp_path / 'lake'}") is False
    assert _sdk_loaded_after_start(tmp_path, "s3://aws-security-data-lake-eu-west-1-abc/ext/unit/") is True


def test_give_back_returns_the_free_pages_inside_the_heap() -> None:
    # GIVEN a fresh interpreter whose heap holds 64 MB of 1,000-byte blocks (malloc, not Python's
    # small-object allocator), of which all but one in 64 are freed: the live ones pin every page
    # range, so glibc keeps the freed memory resident
    code = (
        "from securitylake_sink.memory import give_back, tune_malloc\n"
        "def rss():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(status.split('VmRSS:')[1].split()[0]) // 1024\n"
        "tune_malloc()\n"
        "blocks = [bytearray(1000) for _ in range(64_000)]\n"
        "kept = blocks[::64]\n"
        "del blocks\n"
        "before = rss()\n"
        "give_back()\n"
        "print(before - rss())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    # WHEN give_back runs, THEN most of the freed 63 MB leaves the process's resident memory
    assert int(out) > 45
