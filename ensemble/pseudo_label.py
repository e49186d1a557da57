"""Pseudo-labels: the ensemble's confident predictions on unlabelled images as an extra training root (Kaggle layout).

The 1st-place recipe: an image is used only when every class is confidently present or absent at the image level
and the segmentation agrees. Here, for each image and class:

* **image level**: the class score (classifier / joint class head; the maximum segmentation probability when the
  ensemble has no class head) is ``>= image_high`` (present) or ``<= image_low`` (absent); any class in between
  drops the image;
* **agreement**: a present class has a mask after the rules ``infer.py`` applies, an absent class has none;
* **pixel level** (10th place): of the pixels outside a band of ``boundary`` pixels around the mask's edges (edges
  are uncertain by nature), at least ``min_confident`` have a probability ``<= pixel_low`` or ``>= pixel_high``.

The segmenters see every image (no gating), the masks are those ``infer.py`` would write. Kept images are copied
into ``OUT/train_images/`` with their masks in ``OUT/train.csv`` (new format, defect rows only); the thresholds,
members and counts go to ``OUT/pseudo_label.json``. ``train.py data.extra_train=[OUT]`` adds the root to the
training images of every fold, never to a validation fold:

    python -m ensemble.pseudo_label --out outputs/pseudo/demo checkpoints.runs=[outputs/train/joint/demo] \\
        thresholds=outputs/demo/thresholds.json [images=...]
    python train.py -m experiment=joint/demo fold=0,1 data.extra_train=[outputs/pseudo/demo] run_name=demo-pl
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.constants import CLASS_IDS, LONG_COLUMNS
from common.errors import ConfigError, command
from common.io import atomic_write_text, check_writable, replace_folder, temp_dir_beside
from common.rle import encode
from ensemble.settings import InferSettings

__all__ = ["Confidence", "image_scores", "confident_pixels", "select", "pseudo_label", "main"]


@dataclass(frozen=True)
class Confidence:
    """The documented thresholds (module docstring); the defaults are the 1st and 10th places' values."""

    image_low: float = 0.05
    image_high: float = 0.95
    pixel_low: float = 0.2
    pixel_high: float = 0.8
    min_confident: float = 0.995
    boundary: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.image_low < self.image_high <= 1:
            raise ConfigError(
                f"--image-low/--image-high: need 0 <= low < high <= 1, got {self.image_low}, {self.image_high}"
            )
        if not 0 <= self.pixel_low < self.pixel_high <= 1:
            raise ConfigError(
                f"--pixel-low/--pixel-high: need 0 <= low < high <= 1, got {self.pixel_low}, {self.pixel_high}"
            )
        if not 0 <= self.min_confident <= 1:
            raise ConfigError(f"--min-confident: must be in [0, 1], got {self.min_confident}")
        if self.boundary < 0:
            raise ConfigError(f"--boundary: must be >= 0 pixels, got {self.boundary}")


def image_scores(cls_prob: np.ndarray | None, max_prob: np.ndarray) -> np.ndarray:
    """(B, 4) image-level class scores: the class head's probabilities, else the maximum segmentation probability."""
    return np.asarray(max_prob if cls_prob is None else cls_prob, dtype=np.float64)


def confident_pixels(prob: np.ndarray, mask: np.ndarray, conf: Confidence) -> float:
    """Share of confident pixels (p <= pixel_low or p >= pixel_high) of one class map, outside the edge band."""
    band = np.zeros(mask.shape, bool)
    if conf.boundary and mask.any():
        kernel = np.ones((2 * conf.boundary + 1,) * 2, np.uint8)
        band = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    counted = ~band
    total = int(counted.sum())
    if not total:
        return 1.0
    sure = (prob <= conf.pixel_low) | (prob >= conf.pixel_high)
    return float((sure & counted).sum()) / total


def select(scores: np.ndarray, prob: np.ndarray, masks: np.ndarray, conf: Confidence) -> str | None:
    """None when one image (scores (4,), probabilities and masks (4, H, W)) is a confident pseudo-label, else the
    first reason it is not (``image``, ``agreement`` or ``pixels``)."""
    present = scores >= conf.image_high
    if not (present | (scores <= conf.image_low)).all():
        return "image"
    if not np.array_equal(present, masks.reshape(len(masks), -1).any(-1)):
        return "agreement"
    for c in range(len(masks)):
        if confident_pixels(prob[c], masks[c], conf) < conf.min_confident:
            return "pixels"
    return None


def _copy(source: Path, target: Path) -> None:
    """Hard link when the file system allows it (no extra space), a copy otherwise."""
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def pseudo_label(
    cfg: Mapping[str, Any], out: Path | str, conf: Confidence = Confidence(), force: bool = False
) -> dict[str, Any]:
    """Predict ``cfg.images`` with the ensemble of the infer config and write the confident ones as a training
    root in ``out``; return the summary written to ``out/pseudo_label.json``."""
    from ensemble.predict import build_predictor, set_threads
    from ensemble.run import image_set

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out: {out} is not empty; choose another folder or pass --force to replace it")
    check_writable(out, "--out", directory=True)
    settings = InferSettings.from_config({**cfg, "evaluate": False})
    dataset = image_set({**cfg, "evaluate": False})
    images = Path(str(settings.images))
    set_threads(settings.threads)
    predictor = build_predictor(cfg)
    final, out = out, temp_dir_beside(out)  # built aside: an old --out stays whole until the new one is
    try:
        summary = _write_root(predictor, dataset, settings, out, conf, images)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    replace_folder(out, final)
    return summary


def _write_root(
    predictor: Any, dataset: Any, settings: InferSettings, out: Path, conf: Confidence, images: Path
) -> dict[str, Any]:
    """Predict, select and write the training root into the empty folder ``out``; the summary."""
    from ensemble.core import resolve_batch_size

    (out / "train_images").mkdir(parents=True)
    rows: list[str] = [",".join(LONG_COLUMNS)]
    reasons = {"image": 0, "agreement": 0, "pixels": 0}
    kept_per_class = dict.fromkeys(CLASS_IDS, 0)
    kept = 0
    paths = [dataset.path(i) for i in dataset.image_ids]
    for names, result in predictor.iter_batch_results(
        paths,
        resolve_batch_size(settings.batch_size, predictor),
        settings.num_workers,
        settings.progress,
        gate=False,
    ):
        seg = result.seg_prob
        prob = seg.float().cpu().numpy() if hasattr(seg, "cpu") else np.asarray(seg)
        scores = image_scores(result.cls_prob, result.max_prob)
        for j, name in enumerate(names):
            reason = select(scores[j], prob[j], result.masks[j], conf)
            if reason:
                reasons[reason] += 1
                continue
            kept += 1
            _copy(dataset.path(name), out / "train_images" / name)
            for c, class_id in enumerate(CLASS_IDS):
                if result.masks[j, c].any():
                    rows.append(f"{name},{class_id},{encode(result.masks[j, c])}")
                    kept_per_class[class_id] += 1
    atomic_write_text(out / "train.csv", "\n".join(rows) + "\n", "--out")
    summary = {
        "images": len(paths),
        "kept": kept,
        "kept_with_class": kept_per_class,
        "dropped_by": reasons,
        "thresholds": asdict(conf),
        "source_images": str(images),
        "members": [str(m.path) for m in predictor.members],
        "rules": predictor.rules.to_dict(),
    }
    atomic_write_text(out / "pseudo_label.json", json.dumps(summary, indent=2) + "\n", "--out")
    return summary


@command
def main(argv: Sequence[str] | None = None) -> int:
    from ensemble.settings import compose_infer, override_parser, predictor_config, section, split_overrides

    parser = override_parser(
        "ensemble.pseudo_label",
        __doc__,
        "(checkpoints.runs=[...], thresholds=..., images=..., tta=..., device=...).",
    )
    parser.add_argument("overrides", nargs="*", help="infer-config overrides")
    parser.add_argument("--out", type=Path, required=True, help="the new training root (train_images/, train.csv)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    defaults = Confidence()
    for name in ("image_low", "image_high", "pixel_low", "pixel_high", "min_confident"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--boundary", type=int, default=defaults.boundary, help="edge band ignored (pixels)")
    args = parser.parse_intermixed_args(argv)
    paths, overrides = split_overrides(args.overrides)
    if paths:
        raise ConfigError(f"unexpected argument {paths[0]!r}: give infer overrides as key=value")
    conf = Confidence(
        args.image_low, args.image_high, args.pixel_low, args.pixel_high, args.min_confident, args.boundary
    )
    composed = compose_infer(overrides)
    cfg = {**predictor_config(composed), **section(composed, "data", "images", "threads", "progress")}
    summary = pseudo_label(cfg, args.out, conf, args.force)
    print(
        f"pseudo-labels: {summary['kept']} of {summary['images']} images kept -> {args.out} (with class "
        + ", ".join(f"{c}: {n}" for c, n in summary["kept_with_class"].items())
        + "; dropped by "
        + ", ".join(f"{k}: {n}" for k, n in summary["dropped_by"].items())
        + ")"
    )
    print(f"  train with: python train.py ... data.extra_train=[{args.out}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
