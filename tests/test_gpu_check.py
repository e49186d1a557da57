"""The GPU check's CPU dry run (``--device cpu --tiny``) and the inference pieces it measures: the background
writer and the section timer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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
    ticks = iter([0.0, 2.0, 7.0, 8.0])  # outer starts, inner starts, inner ends, outer ends
    timer = Timer(enabled=True, clock=lambda: next(ticks))
    with timer.section("outer"):
        with timer.section("inner"):
            pass
    assert dict(timer.seconds) == {"inner": 5.0, "outer": 3.0}  # the inner 5 s are not counted twice
    assert timer.per_item(2) == {"inner": 2500.0, "outer": 1500.0}
    synced = []
    timer = Timer(enabled=True, sync=lambda: synced.append(threading.current_thread().name))
    with timer.section("main"):
        pass

    def write():
        with timer.section("writer"):
            pass

    worker = threading.Thread(target=write, name="writer")
    worker.start()
    worker.join()
    assert synced == ["MainThread", "MainThread"]  # the writer thread never waits for the device
    off = Timer(clock=lambda: pytest.fail("a disabled timer reads no clock"))
    with off.section("x"):
        pass
    assert dict(off.seconds) == {}


def test_gpu_check_without_cuda_names_the_dry_run(tmp_path):
    """On a machine without CUDA, ``--device cuda`` (the default) is one line that says how to dry-run instead."""
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a CUDA device")
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--work", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --device cuda: torch sees no CUDA device here; for a CPU dry run give --device cpu --tiny"
    ]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--work", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    table = (tmp_path / "gpu_check.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    recipes = sorted(
        p.relative_to(ROOT / "configs" / "experiment").with_suffix("").as_posix()
        for p in (ROOT / "configs" / "experiment").glob("*/competition*.yaml")
    )
    for recipe in recipes:
        assert "| ok |" in rows[f"train {recipe}, 1 epoch"] and "images/s training" in rows[f"train {recipe}, 1 epoch"]
    assert "| ok |" in rows["kill during training, then resume"]
    assert "| ok |" in rows["torchrun, 1 process"] and "| skipped |" in rows["torchrun, 2 processes"]
    assert "images/s end to end" in rows["infer.py: classifier + 3 segmenters, hflip TTA"]
    sections = rows["infer.py: time per image by section"]
    for name in ("decode_in_workers", "waiting_for_data", "host_to_device", "forward", "postprocess", "rle", "write"):
        assert name in sections
    amp = rows["AMP parity: masks under autocast vs float32"]
    assert "| ok |" in amp and "bfloat16 vs float32" in amp and "verdict max |dp| <= 0.02" in amp and "min Dice" in amp
    print(table)


@pytest.mark.parametrize("search", sorted(p.stem for p in (ROOT / "configs" / "hparams_search").glob("*.yaml")))
def test_the_cluster_launcher_and_the_optuna_searches_compose(search):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    stage = search  # one search per stage, named after it
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", f"hparams_search={search}", f"stage={stage}", "fold=0"],
            return_hydra_config=True,
        )
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert hydra["launcher"]["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert hydra["launcher"]["gpus_per_node"] == 1 and hydra["launcher"]["max_num_timeout"] > 0
    assert hydra["sweeper"]["_target_"].endswith("optuna_sweeper.OptunaSweeper")
    assert hydra["sweeper"]["direction"] == "maximize" and hydra["sweep"]["subdir"] == "trial${hydra.job.num}"
    for key in hydra["sweeper"]["params"]:  # every searched knob exists in the stage's config
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, key
    assert cfg.resume is False
