"""Compact out-of-fold output of the segmenter: per (image, class) probability histograms.

A full OOF probability map of 12,568 images would need ~80 GB; instead, for every (image, class) we keep
``hist_pos[b]`` / ``hist_neg[b]``: the number of pixels whose truth is 1 / 0 and whose predicted
probability falls in bin ``b = min(floor(p * B), B - 1)``, plus the maximum probability ``max_prob``.

File ``oof_segmenter.npz`` (``np.savez_compressed``), N images, 4 classes, B bins:
``image_ids`` (str, N), ``fold`` (int64, N), ``bin_edges`` (float64, B+1, ``linspace(0, 1, B+1)``),
``hist_pos`` / ``hist_neg`` (int32, N x 4 x B), ``max_prob`` (float32, N x 4).

Post-processing rules whose Kaggle score is EXACT from these histograms (``pair_counts`` / ``score``):
  * pixel threshold on the grid t = k / B: a pixel is predicted when its bin index is >= k
    (``binarize`` is that rule on a probability map; it equals ``p >= k/B`` up to float rounding);
  * minimum total mask area per class: the whole (image, class) mask is dropped when fewer than
    ``min_area`` pixels pass the threshold;
  * a per-(image, class) gate (e.g. the classifier's decision): gated-off pairs predict nothing;
  * a "label threshold" on the maximum probability: the pair predicts nothing when ``max_prob < label_t``.
NOT exact (needs the maps): thresholds between grid points, minimum connected-component size,
morphology, and anything that mixes these histograms with other models' probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common.errors import SteelsegError
from common.io import atomic_open
from common.metrics import ScoreReport, dice_from_counts, score_pairs

N_CLASSES = 4
DEFAULT_BINS = 100
OOF_FILENAME = "oof_segmenter.npz"
_KEYS = ("image_ids", "fold", "bin_edges", "hist_pos", "hist_neg", "max_prob")


class OOFError(SteelsegError, ValueError):
    """An OOF file that is missing, malformed or inconsistent; the message names the file and the array."""


def bin_index(probs: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Histogram bin of each probability: ``min(floor(p * bins), bins - 1)`` (p in [0, 1])."""
    probs = np.asarray(probs)
    return np.minimum(np.floor(probs * probs.dtype.type(bins)), bins - 1).astype(np.int64)


def binarize(probs: np.ndarray, k: int, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The pixel rule the histograms score exactly: predicted where ``bin_index(p) >= k``."""
    return bin_index(probs, bins) >= k


def image_histograms(probs: np.ndarray, truth: np.ndarray, bins: int = DEFAULT_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hist_pos, hist_neg, max_prob) of one image from probabilities and 0/1 truth, both (4, H, W)."""
    if probs.shape != truth.shape or probs.ndim != 3:
        raise OOFError(f"probabilities {probs.shape} and truth {truth.shape} must both be (classes, H, W)")
    c = probs.shape[0]
    key = bin_index(probs, bins) + bins * (truth != 0) + (2 * bins) * np.arange(c)[:, None, None]
    counts = np.bincount(key.ravel(), minlength=2 * bins * c).reshape(c, 2, bins).astype(np.int32)
    return counts[:, 1], counts[:, 0], probs.reshape(c, -1).max(axis=1).astype(np.float32)


@dataclass(frozen=True)
class SegmenterOOF:
    """Histograms of one or more folds; arrays as in the module docstring."""

    image_ids: np.ndarray
    fold: np.ndarray
    bin_edges: np.ndarray
    hist_pos: np.ndarray
    hist_neg: np.ndarray
    max_prob: np.ndarray

    @property
    def bins(self) -> int:
        return self.hist_pos.shape[-1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def true_area(self) -> np.ndarray:
        """Truth pixels per (image, class), (N, 4)."""
        return self.hist_pos.sum(-1, dtype=np.int64)

    def validate(self, where: str = "<oof>") -> "SegmenterOOF":
        """Raise OOFError unless shapes, dtypes and counts are consistent."""
        n, b = len(self.image_ids), self.hist_pos.shape[-1] if self.hist_pos.ndim == 3 else -1
        expect = {"fold": (n,), "bin_edges": (b + 1,), "hist_pos": (n, N_CLASSES, b),
                  "hist_neg": (n, N_CLASSES, b), "max_prob": (n, N_CLASSES)}
        for key, shape in expect.items():
            if getattr(self, key).shape != shape:
                raise OOFError(f"{where}: {key} has shape {getattr(self, key).shape}, expected {shape}")
        if not np.allclose(self.bin_edges, np.linspace(0.0, 1.0, b + 1)):
            raise OOFError(f"{where}: bin_edges are not linspace(0, 1, {b + 1})")
        if (self.hist_pos < 0).any() or (self.hist_neg < 0).any():
            raise OOFError(f"{where}: negative histogram counts")
        totals = self.hist_pos.sum(-1, dtype=np.int64) + self.hist_neg.sum(-1, dtype=np.int64)
        if n and (totals != totals.flat[0]).any():
            raise OOFError(f"{where}: images have different pixel totals (hist_pos + hist_neg)")
        if len(set(self.image_ids.tolist())) != n:
            raise OOFError(f"{where}: duplicate image ids")
        return self

    @staticmethod
    def concat(parts: Sequence["SegmenterOOF"]) -> "SegmenterOOF":
        """Join several folds' OOF (duplicate image ids are an error)."""
        if not parts:
            raise OOFError("no OOF parts to join")
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _KEYS if k != "bin_edges"}
        return SegmenterOOF(bin_edges=parts[0].bin_edges, **arrays).validate("concatenated OOF")


class OOFAccumulator:
    """Collects histograms image by image (e.g. during validation) and builds a SegmenterOOF."""

    def __init__(self, fold: int, bins: int = DEFAULT_BINS) -> None:
        self.fold, self.bins = fold, bins
        self._ids: list[str] = []
        self._pos: list[np.ndarray] = []
        self._neg: list[np.ndarray] = []
        self._max: list[np.ndarray] = []

    def add(self, image_id: str, hist_pos: np.ndarray, hist_neg: np.ndarray, max_prob: np.ndarray) -> None:
        """Add one image's (4, B) histograms and (4,) max probabilities."""
        self._ids.append(image_id)
        self._pos.append(np.asarray(hist_pos, np.int32))
        self._neg.append(np.asarray(hist_neg, np.int32))
        self._max.append(np.asarray(max_prob, np.float32))

    def add_image(self, image_id: str, probs: np.ndarray, truth: np.ndarray) -> None:
        """Add one image from its (4, H, W) probabilities and truth."""
        self.add(image_id, *image_histograms(probs, truth, self.bins))

    def result(self) -> SegmenterOOF:
        """The collected images as a SegmenterOOF (validated)."""
        n, b = len(self._ids), self.bins
        return SegmenterOOF(
            image_ids=np.array(self._ids, dtype=str),
            fold=np.full(n, self.fold, np.int64),
            bin_edges=np.linspace(0.0, 1.0, b + 1),
            hist_pos=np.stack(self._pos) if n else np.zeros((0, N_CLASSES, b), np.int32),
            hist_neg=np.stack(self._neg) if n else np.zeros((0, N_CLASSES, b), np.int32),
            max_prob=np.stack(self._max) if n else np.zeros((0, N_CLASSES), np.float32),
        ).validate(f"fold {self.fold}")


def write_oof(path: Path | str, oof: SegmenterOOF) -> Path:
    """Write ``oof`` atomically as a compressed npz (see the module docstring for the arrays)."""
    oof.validate(str(path))
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **{k: getattr(oof, k) for k in _KEYS})
    return Path(path)


def read_oof(path: Path | str) -> SegmenterOOF:
    """Read and check an OOF npz written by ``write_oof``."""
    path = Path(path)
    if not path.is_file():
        raise OOFError(f"{path}: OOF file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data]
            if missing:
                raise OOFError(f"{path}: missing arrays {missing}")
            arrays = {k: data[k] for k in _KEYS}
    except (OSError, ValueError) as exc:
        if isinstance(exc, OOFError):
            raise
        raise OOFError(f"{path}: cannot read OOF file ({exc})") from exc
    arrays["image_ids"] = arrays["image_ids"].astype(str)
    return SegmenterOOF(**arrays).validate(str(path))


def _per_class(value: float | Sequence[float], name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, np.float64), (N_CLASSES,))
    if np.isnan(arr).any():
        raise OOFError(f"{name}: NaN in {value!r}")
    return arr


def pair_counts(oof: SegmenterOOF, k: int | Sequence[int], min_area: float | Sequence[float] = 0,
                gate: np.ndarray | None = None, label_threshold: float | Sequence[float] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, predicted area, true area), each (N, 4), after the exact post-processing rules.

    ``k``: threshold bin per class (scalar or 4), t = k / B; ``min_area``: drop a pair's mask when its area is
    below it; ``gate``: (N, 4) bool, False predicts nothing; ``label_threshold``: drop when max_prob < it.
    """
    b = oof.bins
    ks = np.broadcast_to(np.asarray(k, np.int64), (N_CLASSES,))
    if (ks < 0).any() or (ks >= b).any():
        raise OOFError(f"threshold bin {k!r} outside 0..{b - 1}")
    cls = np.arange(N_CLASSES)
    tail_pos = np.cumsum(oof.hist_pos[..., ::-1], axis=-1, dtype=np.int64)[..., ::-1]  # pixels in bins >= k
    tail_all = tail_pos + np.cumsum(oof.hist_neg[..., ::-1], axis=-1, dtype=np.int64)[..., ::-1]
    inter, pred = tail_pos[:, cls, ks], tail_all[:, cls, ks]
    keep = pred >= _per_class(min_area, "min_area")
    if gate is not None:
        gate = np.asarray(gate, bool)
        if gate.shape != pred.shape:
            raise OOFError(f"gate has shape {gate.shape}, expected {pred.shape}")
        keep &= gate
    if label_threshold is not None:
        keep &= oof.max_prob >= _per_class(label_threshold, "label_threshold")
    return np.where(keep, inter, 0), np.where(keep, pred, 0), oof.true_area()


def score(oof: SegmenterOOF, k: int | Sequence[int], min_area: float | Sequence[float] = 0,
          gate: np.ndarray | None = None, label_threshold: float | Sequence[float] | None = None) -> ScoreReport:
    """Kaggle score (with the all-empty baseline) of the OOF under the given post-processing."""
    inter, pred, true = pair_counts(oof, k, min_area, gate, label_threshold)
    return score_pairs(dice_from_counts(inter, pred, true), true == 0, len(oof))


def score_grid(oof: SegmenterOOF, min_areas: Sequence[float]) -> np.ndarray:
    """Mean Dice per class for every threshold bin and minimum area: array (4, B, len(min_areas)).

    ``argmax`` over the last two axes per class gives the best exact (k, min_area) pair; classes are
    independent, so the best overall score is the mean of the per-class maxima.
    """
    tail_pos = np.cumsum(oof.hist_pos[..., ::-1], axis=-1, dtype=np.int64)[..., ::-1]
    tail_all = tail_pos + np.cumsum(oof.hist_neg[..., ::-1], axis=-1, dtype=np.int64)[..., ::-1]
    true = oof.true_area()[..., None]
    out = np.empty((N_CLASSES, oof.bins, len(min_areas)))
    for j, m in enumerate(min_areas):
        keep = tail_all >= m
        d = dice_from_counts(np.where(keep, tail_pos, 0), np.where(keep, tail_all, 0), true)
        out[:, :, j] = d.mean(axis=0) if len(oof) else np.nan
    return out
