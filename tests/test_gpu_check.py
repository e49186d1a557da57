"""The GPU check's CPU dry run (``--device cpu --tiny``) and the inference pieces it measures: the background
writer and the section timer."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ensemble.pipeline import drain_in_background
from ensemble.timing import Timer

ROOT = Path(__file__).resolve().parents[1]


def test_the_background_writer_handles_every_item_in_order_on_another_thread():
    seen, threads = [], set()

    def handle(item):
        seen.append(item)
        threads.add(threading.current_thread().name)

    assert drain_in_background(iter(range(500)), handle, depth=4) == 500
    assert seen == list(range(500)) and threads == {"steelseg-writer"}


def test_a_writer_error_stops_the_loop_and_reaches_the_caller():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    def handle(item):
        if item == 3:
            raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        drain_in_background(items(), handle, depth=2)
    assert len(produced) < 1000  # the producer stopped early


def test_a_producer_error_stops_the_writer_thread():
    def items():
        yield 1
        raise SystemExit(143)  # what SIGTERM becomes in infer.py

    before = threading.active_count()
    with pytest.raises(SystemExit):
        drain_in_background(items(), lambda item: None)
    assert threading.active_count() == before


def test_the_timer_charges_nested_sections_exclusively():
    timer = Timer(enabled=True)
    with timer.section("outer"):
        time.sleep(0.02)
        with timer.section("inner"):
            time.sleep(0.05)
    assert 0.045 <= timer.seconds["inner"] < 0.2
    assert 0.015 <= timer.seconds["outer"] < 0.045  # the inner 50 ms are not counted twice
    assert set(timer.per_item(2)) == {"outer", "inner"}
    off = Timer()
    with off.section("x"):
        pass
    assert dict(off.seconds) == {}


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--work",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    table = (tmp_path / "gpu_check.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    recipes = sorted(p.relative_to(ROOT / "configs" / "experiment").with_suffix("").as_posix()
                     for p in (ROOT / "configs" / "experiment").glob("*/competition*.yaml"))
    for recipe in recipes:
        assert "| ok |" in rows[f"train {recipe}, 1 epoch"] and "images/s training" in rows[f"train {recipe}, 1 epoch"]
    assert "| ok |" in rows["kill during training, then resume"]
    assert "| ok |" in rows["torchrun, 1 process"] and "| skipped |" in rows["torchrun, 2 processes"]
    assert "images/s end to end" in rows["infer.py: classifier + 3 segmenters, hflip TTA"]
    sections = rows["infer.py: time per image by section"]
    for name in ("decode", "waiting_for_data", "host_to_device", "forward", "postprocess", "rle", "write"):
        assert name in sections
    print(table)
