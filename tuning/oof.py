"""Ensemble out-of-fold predictions made the way ``infer.py`` predicts, for the threshold search and the CV report.

For every fold k, the members trained without fold k (their checkpoints' ``meta.fold``) predict fold k's
validation images through ``ensemble.predict.build_predictor``: the same preprocessing, TTA, reducer and member mix
(classifiers, segmenters, joint models) as inference, without gating (the search decides that). The result is
the two OOF files of ``common.oof`` in one folder, so thresholds are tuned on what inference will produce:

    python -m tuning.oof outputs/train/joint/demo [RUN ...] --out outputs/oof/demo [tta=flips ...]
    python -m tuning.threshold_search outputs/oof/demo --out thresholds.json

All runs must share one folds file (their checkpoints' ``config.data.folds.path``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data_setup import check_data_node, load_folds, load_train
from common.errors import OOFError, command
from common.io import check_outputs
from common.oof import (
    CLASSIFIER_FILE,
    DEFAULT_BINS,
    OOF_FILES,
    SEGMENTER_FILE,
    ClassifierOOF,
    OOFAccumulator,
    SegmenterOOF,
    write_classifier_oof,
    write_segmenter_oof,
)
from engine.checkpoint import load_checkpoint
from ensemble.core import resolve_batch_size
from ensemble.members import Member, discover, load_members
from ensemble.predict import build_predictor, set_threads
from ensemble.settings import (
    InferSettings,
    compose_infer,
    override_parser,
    predictor_config,
    section,
    split_overrides,
)
from scoring.rules import Rules

__all__ = ["fold_members", "data_config", "ensemble_oof", "main"]


def fold_members(runs: Sequence[str | Path], channels_last: bool = True) -> dict[int, dict[str, list[Member]]]:
    """fold -> kind -> members, from every ``best.pt`` under the runs; a checkpoint without a fold is an error."""
    out: dict[int, dict[str, list[Member]]] = {}
    for kind, paths in discover(runs).items():
        for member in load_members(paths, kind, channels_last):
            if member.fold is None:
                raise OOFError(f"{member.path}: checkpoint has no meta.fold; ensemble OOF needs cross-validation runs")
            out.setdefault(int(member.fold), {k: [] for k in ("classifier", "segmenter", "joint")})[kind].append(member)
    if not out:
        raise OOFError(f"no checkpoints under {[str(r) for r in runs]}")
    return out


def data_config(members: Sequence[Member]) -> Mapping[str, Any]:
    """The ``data`` config the members were trained with; all must share one folds file."""
    configs = {}
    for member in members:
        data = (load_checkpoint(member.path).get("meta") or {}).get("config", {}).get("data")
        if not isinstance(data, Mapping):
            raise OOFError(f"{member.path}: checkpoint meta holds no data config (config.data)")
        check_data_node(data, f"{member.path}: meta.config.data")  # a file names no code to run
        configs[str(member.path)] = data
    folds = {str(d["folds"]["path"]) for d in configs.values()}
    if len(folds) != 1:
        raise OOFError(
            f"the runs use different folds files {sorted(folds)}: their out-of-fold images differ; "
            "train every member with the same data.folds settings"
        )
    return next(iter(configs.values()))


@torch.no_grad()
def ensemble_oof(
    runs: Sequence[str | Path], out: Path | str, cfg: Mapping[str, Any], bins: int = DEFAULT_BINS, progress: bool = True
) -> dict[str, Any]:
    """Write ``oof_segmenter.npz`` and ``oof_classifier.csv`` (when any member gives class probabilities) of the
    ensemble into ``out``; ``cfg`` is the infer config's ``predictor_config`` (its checkpoints and rules unused)."""
    started = time.perf_counter()
    settings = InferSettings.from_config(cfg)
    by_fold = fold_members(runs, settings.channels_last)
    data = data_config([m for kinds in by_fold.values() for ms in kinds.values() for m in ms])
    dataset = load_train(data)
    folds = load_folds(data, dataset)
    fold_of = dict(zip(folds["ImageId"], folds["fold"]))
    missing = sorted(set(folds["fold"]) - set(by_fold))
    if missing:
        raise OOFError(
            f"no members for fold(s) {missing} of {data['folds']['path']}: train every fold first "
            "(the ensemble OOF covers every training image)"
        )
    seg_parts, ids, probs, fold_ids = [], [], [], []
    for fold, kinds in sorted(by_fold.items()):
        if not (kinds["segmenter"] or kinds["joint"]):
            raise OOFError(f"fold {fold}: no segmenter or joint member")
        predictor = build_predictor(cfg, kinds, Rules(gating="none", bins=bins))
        val_ids = [i for i in dataset.image_ids if fold_of[i] == fold]
        acc = OOFAccumulator(fold, bins)
        loader = predictor.loader(
            [dataset.path(i) for i in val_ids],
            resolve_batch_size(settings.batch_size, predictor),
            settings.num_workers,
        )
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, total=len(loader), unit="batch", desc=f"OOF fold {fold}", dynamic_ncols=True)
        for batch in loader:
            names = [val_ids[i] for i in batch["index"].tolist()]
            cls_prob, seg, _ = predictor.probabilities(batch["inputs"], gate=False)
            truth = torch.from_numpy(np.stack([dataset.masks(i) for i in names])).to(seg.device)
            acc.add_batch(names, seg, truth)
            if cls_prob is not None:
                ids.extend(names)
                probs.append(cls_prob)
                fold_ids.extend([fold] * len(names))
        seg_parts.append(acc.result())
    out = Path(out)
    seg = SegmenterOOF.concat(seg_parts)
    write_segmenter_oof(out / SEGMENTER_FILE, seg)
    if probs:
        if len(ids) != len(seg):
            raise OOFError("some folds have class probabilities (classifier or joint members) and others none")
        write_classifier_oof(
            out / CLASSIFIER_FILE, ClassifierOOF(np.array(ids, dtype=str), np.array(fold_ids), np.concatenate(probs))
        )
    members = {k: sum(len(v[k]) for v in by_fold.values()) for k in ("classifier", "segmenter", "joint")}
    return {
        "images": len(seg),
        "folds": len(by_fold),
        "members": members,
        "seconds": time.perf_counter() - started,
        "out": str(out),
        "classifier": bool(probs),
    }


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = override_parser("tuning.oof", __doc__, "(tta=..., ensemble.reducer=..., device=...).")
    parser.add_argument("runs", nargs="+", help="training output folders (cross-validation runs); then overrides")
    parser.add_argument("--out", type=Path, required=True, help="folder for oof_segmenter.npz and oof_classifier.csv")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="probability histogram bins (default 100)")
    args = parser.parse_intermixed_args(argv)
    runs, overrides = split_overrides(args.runs)
    if not runs:
        raise OOFError("give at least one training output folder")
    check_outputs(args.out, "--out", files=OOF_FILES)  # fail before the prediction, not after it
    cfg = compose_infer(overrides)
    settings = InferSettings.from_config(section(cfg, "threads", "progress"))
    plain = predictor_config(cfg)
    set_threads(settings.threads)
    summary = ensemble_oof(runs, args.out, plain, args.bins, settings.progress)
    print(
        f"ensemble OOF: {summary['images']} images over {summary['folds']} folds, members {summary['members']}, "
        f"TTA {list(plain['tta']['segmenter'])}, {summary['seconds']:.0f} s -> {summary['out']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
