"""Segmenter validation: the Kaggle score at the configured pixel threshold and minimum areas, from histograms.

Each validation image is reduced to per-class probability histograms over its positive and negative pixels
(``common.oof``), so the score, the all-empty baseline and the best score over the threshold/min-area
grid come from the same exact counts as the out-of-fold file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.config import ConfigError, real_number
from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.oof import DEFAULT_BINS, SegmenterOOF, grid_bin, histograms, score, score_grid

__all__ = [
    "AREA_GRID",
    "to_full_size",
    "truth_of",
    "threshold_bin",
    "per_class",
    "as_oof",
    "oof_metrics",
    "SegmenterMetric",
]

# Minimum-area grid for the "best reachable" score reported beside the configured one.
AREA_GRID = (0, 100, 300, 600, 1000, 2000, 3000, 5000)


def to_full_size(probs: torch.Tensor, size: Sequence[int] = IMAGE_SHAPE) -> torch.Tensor:
    """(B, C, h, w) probabilities of a network run below the image size, resized (bilinear) to ``size``: the one
    rule by which validation, OOF and inference score a lower-resolution model at 256x1600."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)


def truth_of(batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    """The full-size truth masks of a batch (``truth`` when the items carry it, else ``target``)."""
    return batch.get("truth", batch["target"]).to(device)


def threshold_bin(
    threshold: float | Sequence[float], bins: int = DEFAULT_BINS, key: str = "segmenter.validation.threshold"
) -> list[int]:
    """Per-class threshold bins k with k / bins == threshold (thresholds must lie on the histogram grid)."""
    values = (
        list(threshold)
        if isinstance(threshold, Sequence) and not isinstance(threshold, str)
        else [threshold] * len(CLASS_IDS)
    )
    if len(values) != len(CLASS_IDS):
        raise ConfigError(f"{key}: need 1 or {len(CLASS_IDS)} values, got {values}")
    out = []
    for t in values:
        k = grid_bin(real_number(t, key), bins)
        if k is None:
            raise ConfigError(f"{key}: {t} is not a multiple of 1/{bins} strictly between 0 and 1")
        out.append(k)
    return out


def per_class(value: float | Sequence[float], key: str) -> list[float]:
    """A scalar or a 4-list of finite numbers >= 0 from config as a 4-list."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * len(CLASS_IDS)
    if len(values) != len(CLASS_IDS):
        raise ConfigError(f"{key}: need 1 or {len(CLASS_IDS)} non-negative values, got {values}")
    return [real_number(v, key, 0.0) for v in values]


def as_oof(
    hist_pos: np.ndarray,
    hist_neg: np.ndarray,
    max_prob: np.ndarray,
    image_ids: Sequence[str] | None = None,
    fold: int = -1,
) -> SegmenterOOF:
    """Wrap histogram arrays as a SegmenterOOF (placeholder ids when none are given)."""
    n, bins = hist_pos.shape[0], hist_pos.shape[-1]
    ids = np.array(list(image_ids) if image_ids is not None else [str(i) for i in range(n)], dtype=str)
    return SegmenterOOF(
        ids,
        np.full(n, fold, np.int64),
        np.linspace(0.0, 1.0, bins + 1),
        hist_pos.astype(np.int32),
        hist_neg.astype(np.int32),
        max_prob.astype(np.float32),
    )


def oof_metrics(oof: SegmenterOOF, k: Sequence[int], min_area: Sequence[float]) -> dict[str, float]:
    """Kaggle score at (k, min_area) per class and overall, the all-empty baseline, and the best grid score."""
    report = score(oof, k, min_area)
    grid = score_grid(oof, AREA_GRID)
    best = grid.reshape(len(CLASS_IDS), -1).max(axis=1)
    out = {
        "kaggle": report.overall,
        "kaggle_baseline": report.baseline,
        "kaggle_gain": report.overall - report.baseline,
        "kaggle_best_grid": float(best.mean()),
    }
    for c in CLASS_IDS:
        out[f"kaggle_{c}"] = report.per_class[c]
    return out


class SegmenterMetric:
    """Engine ``EpochMetric``: accumulates per-image histograms, computes ``oof_metrics``."""

    def __init__(
        self,
        threshold: float | Sequence[float],
        min_area: float | Sequence[float],
        bins: int = DEFAULT_BINS,
        key: str = "segmenter.validation",
    ) -> None:
        self.bins = bins
        self.k = threshold_bin(threshold, bins, f"{key}.threshold")
        self.min_area = per_class(min_area, f"{key}.min_area")
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """Histograms computed and kept on the outputs' device (no copy to the CPU, no sync per batch); a network
        run below the image size is scored on its upsampled probabilities against the full-size truth."""
        truth = truth_of(batch, outputs.device)
        probs = to_full_size(torch.sigmoid(outputs.float()), truth.shape[-2:])
        self._parts.append(histograms(probs, truth, self.bins))

    def state(self) -> dict[str, torch.Tensor]:
        """Everything collected, on the CPU (one copy per validation pass)."""
        if not self._parts:
            return {
                "hist_pos": torch.zeros(0, len(CLASS_IDS), self.bins, dtype=torch.int32),
                "hist_neg": torch.zeros(0, len(CLASS_IDS), self.bins, dtype=torch.int32),
                "max_prob": torch.zeros(0, len(CLASS_IDS)),
            }
        pos, neg, top = (torch.cat(parts).cpu() for parts in zip(*self._parts))
        return {"hist_pos": pos, "hist_neg": neg, "max_prob": top}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        oof = as_oof(state["hist_pos"].numpy(), state["hist_neg"].numpy(), state["max_prob"].numpy())
        return oof_metrics(oof, self.k, self.min_area)
