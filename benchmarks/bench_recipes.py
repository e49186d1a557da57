"""Recipe candidates at a fixed training-time budget: training images/s and the out-of-fold score each reaches.

For each candidate (a name and ``train.py`` overrides) the script runs the project's own commands:
a one-epoch probe measures training images/s, the epoch count is set so that training takes about
``--minutes`` per fold, then ``train.py -m fold=0,1``, ``python -m tuning.oof`` (inference TTA) and
``python -m tuning.threshold_search``; it prints one table row per candidate (class-head AUC and Dice on
positive pairs per class included: the rare classes' figures):

    python benchmarks/bench_recipes.py --minutes 3 --data data.synthetic.n_train=400 \\
        --candidate "r18=experiment=joint/demo joint.model.encoder_name=tu-resnet18" \\
        --candidate "eff=experiment=joint/demo joint.model.encoder_name=tu-efficientnet_b0"

A candidate made of two stages (a separate classifier and segmenter) is given as ``name=OVERRIDES + OVERRIDES``;
the budget is then split between them. Wall-clock figures depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.constants import CLASS_IDS  # noqa: E402
from common.metrics import roc_auc_per_class  # noqa: E402
from common.oof import load_oof  # noqa: E402

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "PYTHONUNBUFFERED": "1",
}


def run(args: list[str], log: Path) -> float:
    """Run a project command (output appended to ``log``); return its wall time; stop on failure."""
    started = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}), see {log}: {' '.join(args)}")
    return time.perf_counter() - started


def stage_of(overrides: list[str]) -> str:
    """The stage a set of overrides trains (from its experiment name, e.g. joint/demo -> joint)."""
    for item in overrides:
        if item.startswith("experiment="):
            return item.split("=", 1)[1].split("/")[0]
        if item.startswith("stage="):
            return item.split("=", 1)[1]
    raise SystemExit(f"cannot tell the stage of {overrides}: give experiment=<stage>/<recipe>")


def metrics_of(run_dir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in sorted(run_dir.glob("fold*/metrics.csv"))], ignore_index=True)


def train_stage(
    name: str, overrides: list[str], common: list[str], minutes: float, n_images: int, out: Path, log: Path
) -> dict:
    """Probe the speed, then train both folds for about ``minutes`` each; return the stage's figures."""
    stage = stage_of(overrides)
    probe = f"bench-{name}-probe"
    for old in (probe, f"bench-{name}"):  # a fresh run, never a resumed one
        shutil.rmtree(REPO / "outputs/train" / stage / old, ignore_errors=True)
    run(
        ["train.py", *overrides, *common, "fold=0", "trainer.epochs=1", f"run_name={probe}", "trainer.progress=false"],
        log,
    )
    ips = float(metrics_of(REPO / "outputs/train" / stage / probe)["train_images_per_s"].iloc[-1])
    epochs = max(1, math.floor(minutes * 60 * ips / max(n_images, 1)))
    run_name = f"bench-{name}"
    seconds = run(
        [
            "train.py",
            "-m",
            *overrides,
            *common,
            "fold=0,1",
            f"trainer.epochs={epochs}",
            f"run_name={run_name}",
            "trainer.progress=false",
        ],
        log,
    )
    history = metrics_of(REPO / "outputs/train" / stage / run_name)
    return {
        "stage": stage,
        "run": REPO / "outputs/train" / stage / run_name,
        "epochs": epochs,
        "images_per_s": float(history["train_images_per_s"].median()),
        "train_s": seconds,
    }


def positive_dice(oof_dir: Path, thresholds: Path) -> list[float]:
    """Per class: mean Dice on the positive pairs of the ensemble OOF under the tuned rules of ``thresholds``
    (the rare classes' figure that the mean over all pairs hides), via the CV report's pair table."""
    from analysis.report import pair_table
    from tuning.threshold_search import default_rules

    rules = default_rules([f"thresholds={thresholds}"])
    return pair_table(load_oof([oof_dir]), rules)["Dice on positive pairs"].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", required=True, help="NAME=OVERRIDES [+ OVERRIDES]")
    parser.add_argument("--data", nargs="*", default=[], help="data overrides shared by every candidate")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per fold (default 3)")
    parser.add_argument("--tta", default="tta=hflip", help="TTA override for the ensemble OOF (default tta=hflip)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs/bench_recipes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["data.folds.n_splits=2", *args.data]
    summary = subprocess.run(
        [sys.executable, "prepare.py", *common], cwd=REPO, env=ENV, capture_output=True, text=True, check=True
    ).stdout
    n_train = int(summary.split("train: ", 1)[1].split(" images", 1)[0])
    rows = []
    for spec in args.candidate:
        name, _, rest = spec.partition("=")
        parts = [p.split() for p in rest.split(" + ")]
        log = args.out / f"{name}.log"
        log.write_text("")
        stages = [
            train_stage(
                f"{name}-{i}" if len(parts) > 1 else name,
                overrides,
                common,
                args.minutes / len(parts),
                n_train // 2,
                args.out,
                log,
            )
            for i, overrides in enumerate(parts)
        ]
        oof_dir = args.out / f"{name}-oof"
        oof_s = run(
            ["-m", "tuning.oof", *[str(s["run"]) for s in stages], "--out", str(oof_dir), args.tta, "progress=false"],
            log,
        )
        thresholds = args.out / f"{name}-thresholds.json"
        run(["-m", "tuning.threshold_search", str(oof_dir), "--out", str(thresholds)], log)
        scores = json.loads(thresholds.read_text())["scores"]
        oof = load_oof([oof_dir])
        aucs = roc_auc_per_class(oof.cls_prob, oof.truth_present()) if oof.cls_prob is not None else [np.nan] * 4
        gap = 1 - scores["baseline"]
        rows.append(
            {
                "candidate": name,
                "stages": "+".join(s["stage"] for s in stages),
                "train img/s": "+".join(f"{s['images_per_s']:.1f}" for s in stages),
                "epochs": "+".join(str(s["epochs"]) for s in stages),
                "train min": round(sum(s["train_s"] for s in stages) / 60, 1),
                "oof min": round(oof_s / 60, 1),
                "all-empty": scores["baseline"],
                "default": scores["default"],
                "tuned": scores["tuned"],
                "other folds": scores.get("cross_validated", np.nan),
                "gap closed (other folds)": (scores.get("cross_validated", np.nan) - scores["baseline"]) / gap,
                **{f"AUC {c}": a for c, a in zip(CLASS_IDS, aucs)},
                **{f"Dice+ {c}": d for c, d in zip(CLASS_IDS, positive_dice(oof_dir, thresholds))},
                "switched off": ",".join(str(c) for c in scores.get("classes_off", [])) or "-",
            }
        )
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "table.csv", index=False)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
