"""The Kaggle score: mean Dice over every (image, class) pair; an empty prediction on an empty truth is 1.

``python -m common.metrics SUBMISSION --truth TRAIN_CSV --images DIR`` prints overall and per-class scores
beside the all-empty baseline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from common.annotations import read_annotations
from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.dataset import list_images
from common.errors import SteelsegError, command
from common.rle import decode, is_empty

__all__ = [
    "dice",
    "dice_rle",
    "gap_closed",
    "dice_from_counts",
    "ScoreReport",
    "pair_table",
    "pair_dice",
    "score_pairs",
    "kaggle_score",
    "bootstrap_gap_interval",
    "paired_difference",
    "with_interval",
    "roc_auc_per_class",
    "f1_per_class",
    "main",
]

BOOTSTRAP_DRAWS = 2000


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    p, t = pred != 0, truth != 0
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def dice_rle(pred: object, truth: object, shape: tuple[int, int] = IMAGE_SHAPE) -> float:
    """Dice of two RLE strings, decoding only when both are non-empty."""
    pe, te = is_empty(pred), is_empty(truth)
    if pe and te:
        return 1.0
    if pe or te:
        return 0.0
    return dice(decode(pred, shape), decode(truth, shape))


def gap_closed(score: float, baseline: float) -> float:
    """Share of the gap between the all-empty score (``baseline``) and a perfect 1.0 that ``score`` closes."""
    return (score - baseline) / (1 - baseline) if baseline < 1 else float("nan")


def _image_means(rows: np.ndarray) -> np.ndarray:
    """(n_images, 4) per-pair values -> (n_images,) per-image means; a score is the mean of these."""
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2 or len(rows) < 2:
        raise ValueError(f"expected per-pair values of at least 2 images as (n_images, 4), got shape {rows.shape}")
    means: np.ndarray = rows.mean(axis=1)
    return means


def _resampled_means(columns: np.ndarray, draws: int, seed: int, chunk: int = 250) -> np.ndarray:
    """Means of (n_images, k) per-image columns over ``draws`` resamples of the images (with replacement):
    (draws, k)."""
    rng = np.random.default_rng(seed)
    n, out = len(columns), []
    for start in range(0, draws, chunk):
        picks = rng.integers(0, n, (min(chunk, draws - start), n))
        out.append(columns[picks].mean(axis=1))
    return np.concatenate(out)


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` share of bootstrap samples: (low, high)."""
    tail = 50.0 * (1.0 - level)
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100.0 - tail))


def bootstrap_gap_interval(
    pair_dice: np.ndarray, truth_empty: np.ndarray, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the gap closed when the scored images are resampled with replacement: how far a
    score on this few images can move by the luck of which images were drawn (score and all-empty move together)."""
    columns = np.stack([_image_means(pair_dice), _image_means(truth_empty)], axis=1)
    means = _resampled_means(columns, draws, seed)
    clean = means[:, 1] >= 1.0  # a resample of defect-free images only has no gap to close
    if clean.all():
        return float("nan"), float("nan")
    gaps = (means[~clean, 0] - means[~clean, 1]) / (1.0 - means[~clean, 1])
    return _percentile_interval(gaps, level)


def paired_difference(
    dice_a: np.ndarray, dice_b: np.ndarray, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float, float]:
    """Score difference a - b on the same images and its paired bootstrap interval (the images are resampled
    together): (difference, low, high). An interval that holds 0 means this test cannot tell a from b."""
    diff = _image_means(dice_a) - _image_means(dice_b)
    low, high = _percentile_interval(_resampled_means(diff[:, None], draws, seed)[:, 0], level)
    return float(diff.mean()), low, high


def dice_from_counts(intersection: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
    """Vectorised Dice from pixel counts; pairs with both areas 0 score 1."""
    intersection, pred_area, true_area = (np.asarray(a, np.float64) for a in (intersection, pred_area, true_area))
    denom = pred_area + true_area
    out = np.ones(np.broadcast(intersection, denom).shape)
    np.divide(2.0 * intersection, denom, out=out, where=denom > 0)
    return out


@dataclass(frozen=True)
class ScoreReport:
    """Kaggle score overall and per class, with the all-empty baseline on the same pairs."""

    overall: float
    per_class: dict[int, float]
    baseline: float
    baseline_per_class: dict[int, float]
    n_images: int
    gap_interval: tuple[float, float] | None = None  # 95% bootstrap interval over images (``with_interval``)

    def format(self) -> str:
        """Human-readable table."""
        lines = [
            f"Kaggle score over {self.n_images} images x {len(CLASS_IDS)} classes",
            f"  {'':8s} {'score':>8s} {'all-empty':>10s} {'gain':>8s}",
        ]
        rows = [(f"class {c}", self.per_class[c], self.baseline_per_class[c]) for c in CLASS_IDS]
        rows.append(("overall", self.overall, self.baseline))
        for name, s, b in rows:
            lines.append(f"  {name:8s} {s:8.5f} {b:10.5f} {s - b:+8.5f}")
        lines.append(
            f"  gap closed: {self.gap_closed:.1%} of the gap between all-empty ({self.baseline:.5f}) and a perfect 1.0"
        )
        if self.gap_interval is not None:
            low, high = self.gap_interval
            lines.append(
                f"  95% interval of the gap closed, images resampled ({self.n_images} images): {low:.1%} to {high:.1%}"
            )
        return "\n".join(lines)

    @property
    def gap_closed(self) -> float:
        """Share of the gap between the all-empty score and 1.0 that the score closes."""
        return gap_closed(self.overall, self.baseline)

    def to_dict(self) -> dict[str, float]:
        """Flat dict for CSV/JSON logs."""
        out = {
            "score": self.overall,
            "baseline": self.baseline,
            "gap_closed": self.gap_closed,
            "n_images": self.n_images,
        }
        if self.gap_interval is not None:
            out["gap_closed_low"], out["gap_closed_high"] = self.gap_interval
        for c in CLASS_IDS:
            out[f"score_{c}"] = self.per_class[c]
            out[f"baseline_{c}"] = self.baseline_per_class[c]
        return out


def pair_table(rows: pd.DataFrame, image_ids: list[str] | tuple[str, ...]) -> pd.Series:
    """RLE (or '') per (ImageId, ClassId) over every image x class; rows for other images are an error."""
    index = pd.MultiIndex.from_product([list(image_ids), list(CLASS_IDS)], names=["ImageId", "ClassId"])
    series = pd.Series("", index=index, dtype=object)
    if len(rows):
        keys = pd.MultiIndex.from_arrays([rows["ImageId"].to_numpy(), rows["ClassId"].astype(np.int64).to_numpy()])
        unknown = ~keys.isin(index)
        if unknown.any():
            raise SteelsegError(f"rows for images outside the scored set, e.g. {keys[unknown][0]}")
        series.loc[keys] = rows["EncodedPixels"].fillna("").to_numpy()
    return series


def score_pairs(pair_dice: np.ndarray, truth_empty: np.ndarray, n_images: int) -> ScoreReport:
    """Build a report from per-pair Dice values laid out as (n_images, 4)."""
    pair_dice = pair_dice.reshape(n_images, len(CLASS_IDS))
    truth_empty = truth_empty.reshape(n_images, len(CLASS_IDS)).astype(np.float64)
    if n_images == 0:
        raise SteelsegError("no images to score")
    return ScoreReport(
        overall=float(pair_dice.mean()),
        per_class={c: float(pair_dice[:, i].mean()) for i, c in enumerate(CLASS_IDS)},
        baseline=float(truth_empty.mean()),
        baseline_per_class={c: float(truth_empty[:, i].mean()) for i, c in enumerate(CLASS_IDS)},
        n_images=n_images,
    )


def pair_dice(
    pred: pd.DataFrame, truth: pd.DataFrame, image_ids: list[str] | tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(Dice, truth-empty flags), each (n_images, 4), of long-form predictions against long-form truth."""
    truth = truth[truth["ImageId"].isin(set(image_ids))]
    p, t = pair_table(pred, image_ids), pair_table(truth, image_ids)
    values = np.fromiter((dice_rle(a, b) for a, b in zip(p.to_numpy(), t.to_numpy())), np.float64, count=len(p))
    shape = (len(image_ids), len(CLASS_IDS))
    return values.reshape(shape), (t == "").to_numpy().reshape(shape)


def with_interval(report: ScoreReport, pair_dice: np.ndarray, truth_empty: np.ndarray) -> ScoreReport:
    """``report`` with its gap-closed bootstrap interval filled in (left out below 2 images: nothing to resample)."""
    if report.n_images < 2:
        return report
    return replace(report, gap_interval=bootstrap_gap_interval(pair_dice, truth_empty))


def kaggle_score(pred: pd.DataFrame, truth: pd.DataFrame, image_ids: list[str] | tuple[str, ...]) -> ScoreReport:
    """Score long-form predictions against long-form truth over every image x class."""
    values, empty = pair_dice(pred, truth, image_ids)
    return score_pairs(values, empty, len(image_ids))


def roc_auc_per_class(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """ROC-AUC of each column of (N, C) scores against 0/1 labels; NaN where a column holds one label only."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(np.int64)
    return [
        float(roc_auc_score(labels[:, k], probs[:, k])) if 0 < labels[:, k].sum() < len(labels) else float("nan")
        for k in range(labels.shape[1])
    ]


def f1_per_class(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> list[float]:
    """F1 of each column at its threshold (``prob >= threshold`` is a positive)."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels).astype(np.int64)
    predicted = np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)
    return [float(f1_score(labels[:, k], predicted[:, k], zero_division=0.0)) for k in range(labels.shape[1])]


@command
def main(argv: list[str] | None = None) -> int:
    """CLI: score a submission file against a truth CSV over the images of a folder (and, with ``--versus``, the
    paired difference from another submission on the same images)."""
    parser = argparse.ArgumentParser(prog="python -m common.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("submission", type=Path, help="submission CSV (either Kaggle format)")
    parser.add_argument("--truth", type=Path, required=True, help="ground-truth CSV (either format)")
    parser.add_argument("--images", type=Path, required=True, help="folder of the scored images")
    parser.add_argument("--versus", type=Path, help="another submission: the difference and its paired interval")
    args = parser.parse_args(argv)
    image_ids = list_images(args.images)
    truth = read_annotations(args.truth)

    def scored(path: Path) -> tuple[np.ndarray, np.ndarray]:
        sub = read_annotations(path)
        missing = sorted(set(image_ids) - set(sub.image_ids))
        if missing:
            raise SteelsegError(f"{path}: {len(missing)} images of {args.images} have no row, e.g. {missing[:3]}")
        return pair_dice(sub.rows, truth.rows, image_ids)

    values, empty = scored(args.submission)
    report = with_interval(score_pairs(values, empty, len(image_ids)), values, empty)
    other = scored(args.versus)[0] if args.versus else None
    print(report.format())
    if other is not None:
        diff, low, high = paired_difference(values, other)
        print(
            f"versus {args.versus}: {diff:+.4f} (95% paired interval over images: {low:+.4f} to {high:+.4f}; "
            f"{'holds 0: no difference this test can see' if low <= 0 <= high else 'excludes 0'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
