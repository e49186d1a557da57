"""Dataset preparation: generate (synthetic) or check (real) the data, write folds, print a summary.

``python -m common.prepare [data=kaggle data.root=DIR]`` prints per-class counts, labels per image,
mask areas, fold sizes and the Kaggle score of an all-empty submission (the baseline every score is
reported beside).
"""
from __future__ import annotations

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from common.annotations import CLASS_IDS
from common.data_setup import load_folds, load_test, load_train
from common.dataset import SteelDataset
from common.metrics import kaggle_score
from common.rle import area


def summary_table(dataset: SteelDataset) -> pd.DataFrame:
    """Per class: images with the class, share of images, median and max mask area in pixels."""
    rows = dataset.annotations
    areas = rows["EncodedPixels"].map(area) if len(rows) else pd.Series(dtype=np.int64)
    out = []
    for c in CLASS_IDS:
        a = areas[rows["ClassId"] == c] if len(rows) else areas
        out.append({"class": c, "images": int(len(a)), "share": len(a) / len(dataset),
                    "median_area": float(a.median()) if len(a) else 0.0, "max_area": int(a.max()) if len(a) else 0})
    return pd.DataFrame(out).set_index("class")


def describe(dataset: SteelDataset, name: str) -> str:
    """Readable summary of a labelled split, with its all-empty Kaggle score."""
    labels = dataset.labels
    per_image = labels.sum(axis=1).value_counts().sort_index()
    baseline = kaggle_score(dataset.annotations.iloc[0:0], dataset.annotations, dataset.image_ids)
    lines = [f"{name}: {len(dataset)} images in {dataset.image_dir}, {len(dataset.annotations)} defect masks",
             f"  defect-free images: {int((labels.sum(axis=1) == 0).sum())} "
             f"({(labels.sum(axis=1) == 0).mean():.1%})",
             "  classes per image: " + ", ".join(f"{k}: {v}" for k, v in per_image.items()),
             summary_table(dataset).to_string(float_format=lambda v: f"{v:.3f}").replace("\n", "\n  ").join(["  ", ""]),
             f"  all-empty submission scores {baseline.overall:.5f} (per class "
             + ", ".join(f"{c}: {baseline.baseline_per_class[c]:.4f}" for c in CLASS_IDS) + ")"]
    return "\n".join(lines)


def prepare(cfg: DictConfig) -> str:
    """Make the data ready for training and return the printed summary."""
    train = load_train(cfg.data)
    folds = load_folds(cfg.data, train)
    text = [describe(train, "train"),
            f"  folds ({cfg.data.folds.path}): " + ", ".join(
                f"{k}: {v}" for k, v in folds["fold"].value_counts().sort_index().items())]
    test = load_test(cfg.data)
    text.append(describe(test, "test") if test.labelled else f"test: {len(test)} images in {test.image_dir} (unlabelled)")
    return "\n".join(text)


@hydra.main(version_base="1.3", config_path="../configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    print(prepare(cfg))


if __name__ == "__main__":
    main()
