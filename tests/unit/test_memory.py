"""Process memory settings: the collector leaves start-up's objects alone once serving."""

from __future__ import annotations

import subprocess
import sys


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
