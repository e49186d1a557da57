"""Every recipe under ``configs/experiment/`` trains with ``debug=smoke`` through ``python train.py`` (one tiny
epoch, 2 folds, CPU), then the threshold search and ``python infer.py`` run on what the recipes wrote.

Recipes are discovered (``configs/experiment/**/*.yaml``), so a new one is covered without touching this file.
Slow (a few minutes on 2 cores): ``make test-recipes`` runs it, and ``.ci/run`` calls that target.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from common.oof import CLASSIFIER_FILE, SEGMENTER_FILE
from common.submission import validate
from engine.checkpoint import load_checkpoint
from ensemble.members import discover
from tuning.threshold_search import main as threshold_search

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_DIR = ROOT / "configs" / "experiment"
EXPERIMENTS = sorted(p.relative_to(EXPERIMENT_DIR).with_suffix("").as_posix() for p in EXPERIMENT_DIR.rglob("*.yaml"))
FOLDS = (0, 1)
# OOF files each kind of checkpoint must leave (a joint model writes both).
OOF_FILES = {"classifier": [CLASSIFIER_FILE], "segmenter": [SEGMENTER_FILE], "joint": [SEGMENTER_FILE, CLASSIFIER_FILE]}

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        NO_ALBUMENTATIONS_UPDATE="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def run(args: list[str], timeout: float = 3600) -> tuple[str, float]:
    """(output, seconds) of a command run in the repository root; a failure shows the command's output.
    The timeout only guards against a hang: on a loaded shared machine one recipe took 514 s of wall time."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{output[-4000:]}"
    return output, seconds


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipes")


_TRAINED: dict[str, tuple[Path, float]] = {}


def train_recipe(work: Path, experiment: str) -> Path:
    """Train both folds of a recipe with debug=smoke once per session; the run folder."""
    if experiment not in _TRAINED:
        out = work / "runs" / experiment
        # as make demo / make quality launch them: the folds side by side (Hydra's joblib launcher), 1 thread each
        _, seconds = run(
            [
                sys.executable,
                "train.py",
                "-m",
                f"experiment={experiment}",
                "debug=smoke",
                "fold=" + ",".join(map(str, FOLDS)),
                f"paths.data_dir={work / 'data'}",
                f"hydra.sweep.dir={out}",
                "trainer.progress=false",
                "hydra/launcher=joblib",
                f"hydra.launcher.n_jobs={len(FOLDS)}",
                "trainer.threads=1",
            ]
        )
        _TRAINED[experiment] = (out, seconds)
    return _TRAINED[experiment][0]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipe_trains_a_smoke_epoch(work: Path, experiment: str):
    out = train_recipe(work, experiment)
    for fold in FOLDS:
        run_dir = out / f"fold{fold}"
        payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        assert payload["meta"]["fold"] == fold and payload["meta"]["epoch"] == 0
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [0]
        for name in OOF_FILES[payload["stage"]]:
            assert (run_dir / name).is_file(), f"{experiment}: fold {fold} wrote no {name}"
    print(
        f"{experiment}: 2 folds with debug=smoke in {_TRAINED[experiment][1]:.0f} s (one python train.py -m, "
        "folds side by side)"
    )


def test_threshold_search_and_infer_on_every_recipe(work: Path, capsys):
    found = discover([train_recipe(work, e) for e in EXPERIMENTS])
    labels = found["classifier"] + found["joint"]
    masks = found["segmenter"] + found["joint"]
    assert masks, "no recipe gives masks: nothing to search or infer"
    # One search per segmenting recipe, gated by the first recipe that gives class probabilities.
    gate_run = [labels[0].parents[2]] if labels else []
    thresholds = []
    for i, seg_run in enumerate(sorted({p.parents[2] for p in masks})):
        path = work / f"thresholds{i}.json"
        runs = gate_run + ([seg_run] if seg_run not in gate_run else [])
        assert threshold_search([*map(str, runs), "--out", str(path), "debug=smoke"]) == 0, capsys.readouterr().err
        assert path.is_file()
        thresholds.append(path)
    # infer.py ensembles every checkpoint of every recipe (each kind under its own key) with the first thresholds.
    out = work / "infer"
    keys = [f"checkpoints.{kind}=[{','.join(str(p) for p in paths)}]" for kind, paths in found.items()]
    output, seconds = run(
        [
            sys.executable,
            "infer.py",
            "debug=smoke",
            *keys,
            f"thresholds={thresholds[0]}",
            "evaluate=true",
            "tta=hflip",
            f"paths.data_dir={work / 'data'}",
            f"hydra.run.dir={out}",
            f"output={out / 'submission.csv'}",
            "progress=false",
        ]
    )
    assert "overall" in output and "all-empty" in output, output[-2000:]
    test_images = sorted((work / "data").glob("synthetic/*/test_images"))
    assert len(test_images) == 1
    ids = sorted(p.name for p in test_images[0].iterdir())
    assert validate(out / "submission.csv", ids) == []
    print(f"infer.py on {len(ids)} images with {sum(map(len, found.values()))} checkpoints: {seconds:.0f} s")
