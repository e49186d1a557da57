"""Out-of-fold (OOF) files and the one counting kernel that scores post-processing exactly from them.

Two files per training run folder (or per ensemble OOF folder), schema version ``SCHEMA_VERSION``:

* ``oof_segmenter.npz`` (``np.savez_compressed``), N images, 4 classes, B bins: ``image_ids`` (str, N),
  ``fold`` (int64, N), ``bin_edges`` (float64, B+1, ``linspace(0, 1, B+1)``), ``hist_pos`` / ``hist_neg``
  (int32, N x 4 x B): pixels whose truth is 1 / 0 and whose probability falls in bin
  ``b = min(floor(p * B), B - 1)``, ``max_prob`` (float32, N x 4) and ``version`` (int). A full OOF
  probability map of 12,568 images would need ~80 GB; the histograms need ~40 MB.
* ``oof_classifier.csv``: a ``# steelseg-oof classifier v2`` line, then ``ImageId,fold,prob_1..prob_4``
  (per-image class probabilities; written by classifiers and by joint models' image heads).

Rules whose Kaggle score is EXACT from the histograms (``pair_counts`` / ``score`` here, and the threshold
search): a pixel threshold on the grid t = k / B (a pixel is predicted when its bin is >= k; ``binarize``
is that rule on a map), a minimum total mask area, a per-(image, class) gate, a label threshold on
``max_prob``. NOT exact: thresholds between grid points, minimum component size, morphology.

The counting kernel (``histograms``, ``suffix_sums``) runs on NumPy arrays or, unchanged, on torch tensors
on any device (the segmenter's validation metric); torch is never imported by this module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.constants import CLASS_IDS, N_CLASSES
from common.errors import OOFError
from common.io import CsvError, atomic_open, atomic_write_text, read_csv
from common.metrics import ScoreReport, dice_from_counts, score_pairs

__all__ = [
    "SEGMENTER_FILE",
    "CLASSIFIER_FILE",
    "OOF_FILES",
    "SCHEMA_VERSION",
    "DEFAULT_BINS",
    "OOFError",
    "bin_index",
    "grid_bin",
    "binarize",
    "histograms",
    "image_histograms",
    "suffix_sums",
    "SegmenterOOF",
    "OOFAccumulator",
    "write_segmenter_oof",
    "read_segmenter_oof",
    "ClassifierOOF",
    "write_classifier_oof",
    "read_classifier_oof",
    "OOF",
    "find_files",
    "load_oof",
    "pair_counts",
    "score",
    "score_grid",
]

SEGMENTER_FILE = "oof_segmenter.npz"
CLASSIFIER_FILE = "oof_classifier.csv"
OOF_FILES = (SEGMENTER_FILE, CLASSIFIER_FILE)  # both files of an ensemble OOF folder (and of a joint run)
SCHEMA_VERSION = 2
DEFAULT_BINS = 100
_KEYS = ("image_ids", "fold", "bin_edges", "hist_pos", "hist_neg", "max_prob")
_CLASSIFIER_MARK = f"# steelseg-oof classifier v{SCHEMA_VERSION}"
PROB_COLUMNS = [f"prob_{c}" for c in CLASS_IDS]


# ----------------------------------------------------------------------------- the counting kernel


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def bin_index(probs: Any, bins: int = DEFAULT_BINS) -> Any:
    """Histogram bin of each probability: ``min(floor(p * bins), bins - 1)`` as int32 (NumPy or torch).

    int32 and in-place steps keep the transient memory of a (B, 4, 256, 1600) batch small.
    """
    if _is_torch(probs):
        x = probs * bins
        return x.floor_().clamp_(max=bins - 1).to(torch_int32(probs))
    probs = np.asarray(probs)
    x = probs * probs.dtype.type(bins)
    np.floor(x, out=x)
    np.minimum(x, bins - 1, out=x)
    return x.astype(np.int32)


def grid_bin(threshold: float, bins: int = DEFAULT_BINS) -> int | None:
    """The bin k with k / bins == ``threshold``, 0 < k < bins: the pixel thresholds the histograms score exactly
    (``binarize``); None for a threshold off that grid."""
    k = int(round(float(threshold) * bins))
    return k if 0 < k < bins and abs(k - float(threshold) * bins) <= 1e-6 else None


def torch_int32(x: Any) -> Any:
    """torch.int32, fetched from a tensor's module (this module never imports torch itself)."""
    return sys.modules[type(x).__module__.split(".")[0]].int32


def binarize(probs: np.ndarray, k: int, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The pixel rule the histograms score exactly: predicted where ``bin_index(p) >= k``."""
    predicted: np.ndarray = bin_index(probs, bins) >= k
    return predicted


def histograms(probs: Any, truth: Any, bins: int = DEFAULT_BINS) -> tuple[Any, Any, Any]:
    """(hist_pos, hist_neg) int32 (B, C, bins) and max_prob (B, C) of a batch of (B, C, H, W) probabilities
    and 0/1 truth; NumPy in, NumPy out, or torch in, torch out (on the input's device)."""
    if tuple(probs.shape) != tuple(truth.shape) or len(probs.shape) != 4:
        raise OOFError(f"probabilities {tuple(probs.shape)} and truth {tuple(truth.shape)} must both be (B, C, H, W)")
    b, c = probs.shape[:2]
    key = bin_index(probs, bins)  # int32; then + bins for truth pixels + 2 * bins per (image, class)
    if _is_torch(probs):
        import torch

        key += (truth > 0.5).to(torch.int32) * bins
        key += (torch.arange(b * c, device=probs.device, dtype=torch.int32) * (2 * bins)).view(b, c, 1, 1)
        counts = torch.bincount(key.flatten(), minlength=b * c * 2 * bins).view(b, c, 2, bins).to(torch.int32)
        top = probs.flatten(2).amax(-1).float()
    else:
        key += (np.asarray(truth) > 0.5).astype(np.int32) * bins
        key += (np.arange(b * c, dtype=np.int32) * (2 * bins)).reshape(b, c, 1, 1)
        counts = np.bincount(key.ravel(), minlength=b * c * 2 * bins).reshape(b, c, 2, bins).astype(np.int32)
        top = np.asarray(probs).reshape(b, c, -1).max(-1).astype(np.float32)
    return counts[:, :, 1], counts[:, :, 0], top


def image_histograms(
    probs: np.ndarray, truth: np.ndarray, bins: int = DEFAULT_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``histograms`` of one image: (4, H, W) probabilities and truth -> (4, B), (4, B), (4,)."""
    if probs.shape != truth.shape or probs.ndim != 3:
        raise OOFError(f"probabilities {probs.shape} and truth {truth.shape} must both be (classes, H, W)")
    pos, neg, top = histograms(probs[None], truth[None], bins)
    return pos[0], neg[0], top[0]


def suffix_sums(hist: np.ndarray) -> np.ndarray:
    """int64 (..., B + 1): entry k = pixels in bins >= k (entry B = 0), i.e. the pixels threshold k / B keeps."""
    tail = np.cumsum(np.asarray(hist)[..., ::-1], axis=-1, dtype=np.int64)[..., ::-1]
    return np.concatenate([tail, np.zeros((*tail.shape[:-1], 1), np.int64)], axis=-1)


# ----------------------------------------------------------------------------- segmenter file


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
        return int(self.hist_pos.shape[-1])

    def __len__(self) -> int:
        return len(self.image_ids)

    def true_area(self) -> np.ndarray:
        """Truth pixels per (image, class), (N, 4)."""
        area: np.ndarray = self.hist_pos.sum(-1, dtype=np.int64)
        return area

    def validate(self, where: str = "<oof>") -> SegmenterOOF:
        """Raise OOFError unless shapes, dtypes and counts are consistent."""
        n, b = len(self.image_ids), self.hist_pos.shape[-1] if self.hist_pos.ndim == 3 else -1
        expect = {
            "fold": (n,),
            "bin_edges": (b + 1,),
            "hist_pos": (n, N_CLASSES, b),
            "hist_neg": (n, N_CLASSES, b),
            "max_prob": (n, N_CLASSES),
        }
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
        if not np.isfinite(self.max_prob).all() or (self.max_prob < 0).any() or (self.max_prob > 1).any():
            raise OOFError(f"{where}: max_prob values outside [0, 1]")
        if len(set(self.image_ids.tolist())) != n:
            raise OOFError(f"{where}: duplicate image ids")
        return self

    @staticmethod
    def concat(parts: Sequence[SegmenterOOF]) -> SegmenterOOF:
        """Join several folds' OOF (duplicate image ids are an error)."""
        if not parts:
            raise OOFError("no OOF parts to join")
        if len({p.bins for p in parts}) > 1:
            raise OOFError(f"segmenter OOF parts use different bin counts {sorted({p.bins for p in parts})}")
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _KEYS if k != "bin_edges"}
        return SegmenterOOF(bin_edges=parts[0].bin_edges, **arrays).validate("concatenated OOF")


class OOFAccumulator:
    """Collects histograms batch by batch (NumPy or torch, any device) and builds a SegmenterOOF."""

    def __init__(self, fold: int, bins: int = DEFAULT_BINS) -> None:
        self.fold, self.bins = fold, bins
        self._ids: list[str] = []
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @staticmethod
    def _numpy(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)

    def add_batch(self, image_ids: Sequence[str], probs: Any, truth: Any) -> None:
        """Add (B, 4, H, W) probabilities and truth of the named images."""
        pos, neg, top = histograms(probs, truth, self.bins)
        self._ids.extend(image_ids)
        self._parts.append((self._numpy(pos), self._numpy(neg), self._numpy(top)))

    def add_image(self, image_id: str, probs: np.ndarray, truth: np.ndarray) -> None:
        """Add one image from its (4, H, W) probabilities and truth."""
        self.add_batch([image_id], probs[None], truth[None])

    def result(self) -> SegmenterOOF:
        """The collected images as a SegmenterOOF (validated)."""
        n, b = len(self._ids), self.bins
        pos, neg, top = (
            (np.concatenate(p) for p in zip(*self._parts))
            if self._parts
            else (
                np.zeros((0, N_CLASSES, b), np.int32),
                np.zeros((0, N_CLASSES, b), np.int32),
                np.zeros((0, N_CLASSES), np.float32),
            )
        )
        return SegmenterOOF(
            np.array(self._ids, dtype=str),
            np.full(n, self.fold, np.int64),
            np.linspace(0.0, 1.0, b + 1),
            pos.astype(np.int32),
            neg.astype(np.int32),
            top.astype(np.float32),
        ).validate(f"fold {self.fold}")


def write_segmenter_oof(path: Path | str, oof: SegmenterOOF) -> Path:
    """Write ``oof`` atomically as a compressed npz (see the module docstring for the arrays)."""
    oof.validate(str(path))
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, version=np.int64(SCHEMA_VERSION), **{k: getattr(oof, k) for k in _KEYS})
    return Path(path)


def read_segmenter_oof(path: Path | str) -> SegmenterOOF:
    """Read and check a segmenter OOF npz (schema 1, without ``version``, or 2)."""
    path = Path(path)
    if not path.is_file():
        raise OOFError(f"{path}: OOF file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data]
            if missing:
                raise OOFError(f"{path}: missing arrays {missing}")
            version = int(data["version"]) if "version" in data else 1
            arrays = {k: data[k] for k in _KEYS}
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, OOFError):
            raise
        raise OOFError(f"{path}: cannot read OOF file ({exc})") from exc
    if version > SCHEMA_VERSION:
        raise OOFError(f"{path}: OOF schema version {version} is newer than this steelseg ({SCHEMA_VERSION})")
    arrays["image_ids"] = arrays["image_ids"].astype(str)
    return SegmenterOOF(**arrays).validate(str(path))


# ----------------------------------------------------------------------------- classifier file


@dataclass(frozen=True)
class ClassifierOOF:
    """Per-image class probabilities (N, 4) of the validation images of one or more folds."""

    image_ids: np.ndarray
    fold: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


def write_classifier_oof(path: Path | str, oof: ClassifierOOF) -> Path:
    """Write ``oof_classifier.csv`` atomically (a version line, then ImageId, fold, prob_1..prob_4)."""
    probs = np.asarray(oof.probs, np.float64)
    if probs.shape != (len(oof.image_ids), N_CLASSES) or not np.isfinite(probs).all():
        raise OOFError(f"{path}: classifier probabilities must be finite, shape (N, {N_CLASSES}); got {probs.shape}")
    frame = pd.DataFrame({"ImageId": list(oof.image_ids), "fold": np.asarray(oof.fold, np.int64)})
    for k, column in enumerate(PROB_COLUMNS):
        frame[column] = probs[:, k]
    return atomic_write_text(path, _CLASSIFIER_MARK + "\n" + frame.to_csv(index=False, float_format="%.6f"))


def read_classifier_oof(path: Path | str) -> ClassifierOOF:
    """Read a classifier OOF CSV (with or without the version line); errors name the file and line."""
    try:
        table = read_csv(path, comment="#")
        table.require(["ImageId", "fold", *PROB_COLUMNS])
        table.check_widths()
    except CsvError as exc:
        raise OOFError(str(exc)) from exc
    cols = {name: table.header.index(name) for name in ["ImageId", "fold", *PROB_COLUMNS]}
    ids, folds, probs = [], [], []
    seen: dict[str, int] = {}
    for line, row in zip(table.lines, table.rows):
        image_id = row[cols["ImageId"]]
        if image_id in seen:
            raise OOFError(
                f"{table.name}, line {line}: image {image_id!r} appears twice (first at line {seen[image_id]})"
            )
        seen[image_id] = line
        try:
            values = [float(row[cols[c]]) for c in PROB_COLUMNS]
            fold = int(row[cols["fold"]])
        except ValueError as exc:
            raise OOFError(f"{table.name}, line {line}: {exc}") from exc
        if not all(0.0 <= v <= 1.0 for v in values):
            raise OOFError(f"{table.name}, line {line}: probabilities {values} outside [0, 1]")
        ids.append(image_id)
        folds.append(fold)
        probs.append(values)
    return ClassifierOOF(
        np.array(ids, dtype=str), np.array(folds, np.int64), np.array(probs, np.float64).reshape(len(ids), N_CLASSES)
    )


# ----------------------------------------------------------------------------- joined OOF


@dataclass
class OOF:
    """Segmenter histograms joined with classifier probabilities (or None) for N images, classes in order."""

    image_ids: np.ndarray
    fold: np.ndarray
    hist_pos: np.ndarray
    hist_neg: np.ndarray
    max_prob: np.ndarray
    cls_prob: np.ndarray | None = None

    @property
    def bins(self) -> int:
        return int(self.hist_pos.shape[2])

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, mask: np.ndarray) -> OOF:
        """The images where ``mask`` is True."""
        return OOF(
            self.image_ids[mask],
            self.fold[mask],
            self.hist_pos[mask],
            self.hist_neg[mask],
            self.max_prob[mask],
            None if self.cls_prob is None else self.cls_prob[mask],
        )

    def tails(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class index ``c``: (intersection, predicted area) at every threshold bin, (N, B + 1) each, and the
        true area (N,)."""
        inter = suffix_sums(self.hist_pos[:, c])
        pred = inter + suffix_sums(self.hist_neg[:, c])
        return inter, pred, inter[:, 0]

    def truth_present(self) -> np.ndarray:
        """(N, 4) 0/1: the class has at least one true pixel."""
        present: np.ndarray = (self.hist_pos.sum(-1) > 0).astype(np.int64)
        return present


def find_files(entries: Sequence[Path | str], name: str) -> list[Path]:
    """Files called ``name`` among ``entries`` (files as given, folders searched recursively);
    an entry that does not exist is an error."""
    found: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if not path.exists():
            raise OOFError(f"{path}: run folder or OOF file not found")
        if path.is_file() and path.name == name:
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.glob(f"**/{name}")))
    return found


def _check_entries(entries: Sequence[Path | str]) -> None:
    """Every entry must give OOF data: a folder holding an OOF file, or an OOF file (none is silently ignored)."""
    names = OOF_FILES
    for entry in entries:
        path = Path(entry)
        if path.is_file() and path.name not in names:
            raise OOFError(f"{path}: not an OOF file (expected {SEGMENTER_FILE} or {CLASSIFIER_FILE}, or a run folder)")
        if path.is_dir() and not any(find_files([path], name) for name in names):
            raise OOFError(
                f"{path}: no {SEGMENTER_FILE} or {CLASSIFIER_FILE} in this folder "
                f"(a training run that has not finished, or another folder?)"
            )


def load_oof(entries: Sequence[Path | str], require_classifier: bool = False) -> OOF:
    """Join every ``oof_segmenter.npz`` and ``oof_classifier.csv`` under ``entries`` by image id; an entry
    that does not exist or holds no OOF file is an error."""
    _check_entries(entries)
    seg_files = find_files(entries, SEGMENTER_FILE)
    if not seg_files:
        raise OOFError(f"no {SEGMENTER_FILE} under {[str(e) for e in entries]}")
    parts = [read_segmenter_oof(path) for path in seg_files]
    ids = np.concatenate([p.image_ids for p in parts])
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise OOFError(
            f"image {dup[0]!r} appears in several segmenter OOF files ({len(dup)} duplicates): give the "
            "folds of one segmenter run, or an ensemble OOF folder (python -m tuning.oof)"
        )
    seg = SegmenterOOF.concat(parts)
    cls_prob = None
    cls_files = find_files(entries, CLASSIFIER_FILE)
    if cls_files:
        cls = [read_classifier_oof(p) for p in cls_files]
        probs = pd.DataFrame(np.concatenate([c.probs for c in cls]), index=np.concatenate([c.image_ids for c in cls]))
        if probs.index.duplicated().any():
            raise OOFError(
                f"{[str(p) for p in cls_files]}: image {probs.index[probs.index.duplicated()][0]!r} "
                "appears in several classifier OOF files"
            )
        missing = sorted(set(ids) - set(probs.index))
        if missing:
            raise OOFError(f"{len(missing)} segmenter OOF images have no classifier OOF row, e.g. {missing[:3]}")
        cls_prob = probs.loc[ids].to_numpy(np.float64)
    elif require_classifier:
        raise OOFError(f"no {CLASSIFIER_FILE} under {[str(e) for e in entries]}")
    return OOF(ids, seg.fold, seg.hist_pos, seg.hist_neg, seg.max_prob.astype(np.float64), cls_prob)


# ----------------------------------------------------------------------------- exact scores


def _per_class(value: float | Sequence[float], name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, np.float64), (N_CLASSES,))
    if np.isnan(arr).any():
        raise OOFError(f"{name}: NaN in {value!r}")
    return arr


def pair_counts(
    oof: SegmenterOOF,
    k: int | Sequence[int],
    min_area: float | Sequence[float] = 0,
    gate: np.ndarray | None = None,
    label_threshold: float | Sequence[float] | None = None,
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
    tail_pos = suffix_sums(oof.hist_pos)
    tail_all = tail_pos + suffix_sums(oof.hist_neg)
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


def score(
    oof: SegmenterOOF,
    k: int | Sequence[int],
    min_area: float | Sequence[float] = 0,
    gate: np.ndarray | None = None,
    label_threshold: float | Sequence[float] | None = None,
) -> ScoreReport:
    """Kaggle score (with the all-empty baseline) of the OOF under the given post-processing."""
    inter, pred, true = pair_counts(oof, k, min_area, gate, label_threshold)
    return score_pairs(dice_from_counts(inter, pred, true), true == 0, len(oof))


def score_grid(oof: SegmenterOOF, min_areas: Sequence[float], gate: np.ndarray | None = None) -> np.ndarray:
    """Mean Dice per class for every threshold bin and minimum area: array (4, B, len(min_areas)).

    ``argmax`` over the last two axes per class gives the best exact (k, min_area) pair; classes are
    independent, so the best overall score is the mean of the per-class maxima. ``gate``: (N, 4) bool,
    False pairs predict nothing (e.g. a classifier veto).
    """
    tail_pos = suffix_sums(oof.hist_pos)[..., :-1]
    tail_all = tail_pos + suffix_sums(oof.hist_neg)[..., :-1]
    allowed = np.ones((len(oof), N_CLASSES, 1), bool) if gate is None else np.asarray(gate, bool)[..., None]
    true = oof.true_area()[..., None]
    out = np.empty((N_CLASSES, oof.bins, len(min_areas)))
    for j, m in enumerate(min_areas):
        keep = (tail_all >= m) & allowed
        d = dice_from_counts(np.where(keep, tail_pos, 0), np.where(keep, tail_all, 0), true)
        out[:, :, j] = d.mean(axis=0) if len(oof) else np.nan
    return out
