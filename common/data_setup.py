"""Turn the ``data`` config node into a checked dataset and its folds, and describe them.

The node (``configs/data/*.yaml``; a DictConfig or a plain dict) names the root, the train CSV, the test
folder, the folds file and, for generated data, ``generate``: a ``_target_`` node called once before
the root is read (the synthetic generator's ``ensure_dataset``), so this module knows no generator.
A data node read from a file (a checkpoint's ``meta.config.data``) is data, never code: ``check_data_node``
allows only the generators on ``DATA_GENERATORS`` (checked before any import or call).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.annotations import read_annotations
from common.config import build, check_allowed, required_whole_number, whole_number
from common.constants import CLASS_IDS
from common.dataset import SteelDataset, dataset_from
from common.errors import DatasetError
from common.folds import check_folds, make_folds, read_folds, split_ids, write_folds
from common.io import check_writable
from common.metrics import kaggle_score
from common.rle import area

__all__ = [
    "DATA_GENERATORS",
    "check_data_node",
    "prepare_root",
    "load_train",
    "fold_split",
    "load_test",
    "load_folds",
    "summary_table",
    "describe",
    "summarize",
]

DataNode = Mapping[str, Any]
DATA_GENERATORS = frozenset({"synthetic.ensure_dataset"})  # the only targets a data node read from a file may name


def check_data_node(data: DataNode, where: str) -> DataNode:
    """Raise ConfigError (naming ``where``) unless every ``_target_`` in a data node read from a file is on
    ``DATA_GENERATORS`` and it holds no interpolation or other Hydra key; return the node."""
    check_allowed(data, DATA_GENERATORS, where)
    return data


def prepare_root(data: DataNode) -> Path:
    """The dataset root, made first by ``data.generate`` when the node has one."""
    if data.get("generate"):
        build(data["generate"], "data.generate")
    return Path(str(data["root"]))


def load_train(data: DataNode) -> SteelDataset:
    """The labelled training split, checked against its annotations."""
    root = prepare_root(data)
    csv = data.get("train_csv") or root / "train.csv"
    return dataset_from(root / "train_images", read_annotations(csv), str(data.get("check_images", "header")))


def fold_split(data: DataNode, fold: int) -> tuple[SteelDataset, list[str], list[str]]:
    """(dataset, training ids, validation ids) of one fold: the one rule every stage trains by.

    The folds split the train root; every image of the extra training roots (``data.extra_train``: Kaggle-layout
    folders, e.g. from ``python -m ensemble.pseudo_label``) joins the training ids of every fold and never a
    validation fold, so validation scores stay on real labels.
    """
    dataset = load_train(data)
    train_ids, val_ids = split_ids(load_folds(data, dataset), int(fold))
    for index, root in enumerate(data.get("extra_train") or []):
        root = Path(str(root))
        key = f"data.extra_train[{index}]"
        if not (root / "train_images").is_dir() or not (root / "train.csv").is_file():
            raise DatasetError(f"{key}: {root} is not a training root (needs train_images/ and train.csv)")
        extra = dataset_from(
            root / "train_images", read_annotations(root / "train.csv"), str(data.get("check_images", "header"))
        )
        dataset = dataset.joined(extra)
        train_ids = train_ids + list(extra.image_ids)
    return dataset, train_ids, val_ids


def load_test(data: DataNode) -> SteelDataset:
    """The test split; labelled when ``data.test_truth_csv`` names an existing file."""
    prepare_root(data)
    truth = data.get("test_truth_csv")
    annotations = read_annotations(truth) if truth and Path(str(truth)).is_file() else None
    return dataset_from(Path(str(data["test_dir"])), annotations, str(data.get("check_images", "header")))


def load_folds(data: DataNode, dataset: SteelDataset) -> pd.DataFrame:
    """Folds for the dataset: read from ``data.folds.path`` or made (and written) when absent; checked."""
    folds_cfg = data["folds"]
    path = Path(str(folds_cfg["path"]))
    if path.is_file():
        folds = read_folds(path, dataset.image_ids)
    else:
        check_writable(path, "data.folds.path")  # e.g. a read-only data root: say which setting to change
        folds = make_folds(
            dataset.labels,
            required_whole_number(folds_cfg["n_splits"], "data.folds.n_splits", 2),
            whole_number(folds_cfg["seed"], "data.folds.seed"),
        )
        write_folds(folds, path, key="data.folds.path")
    check_folds(folds, dataset.labels, f"{path} (data.folds.path)")
    return folds


def summary_table(dataset: SteelDataset) -> pd.DataFrame:
    """Per class: images with the class, share of images, median and max mask area in pixels."""
    rows = dataset.annotations
    areas: pd.Series[int] = rows["EncodedPixels"].map(area) if len(rows) else pd.Series(dtype=np.int64)
    out = []
    for c in CLASS_IDS:
        a = areas[rows["ClassId"] == c] if len(rows) else areas
        out.append(
            {
                "class": c,
                "images": int(len(a)),
                "share": len(a) / len(dataset),
                "median_area": float(a.median()) if len(a) else 0.0,
                "max_area": int(a.max()) if len(a) else 0,
            }
        )
    return pd.DataFrame(out).set_index("class")


def describe(dataset: SteelDataset, name: str) -> str:
    """Readable summary of a labelled split, with its all-empty Kaggle score."""
    labels = dataset.labels
    per_image = labels.sum(axis=1).value_counts().sort_index()
    baseline = kaggle_score(dataset.annotations.iloc[0:0], dataset.annotations, dataset.image_ids)
    lines = [
        f"{name}: {len(dataset)} images in {dataset.image_dir}, {len(dataset.annotations)} defect masks",
        f"  defect-free images: {int((labels.sum(axis=1) == 0).sum())} ({(labels.sum(axis=1) == 0).mean():.1%})",
        "  classes per image: " + ", ".join(f"{k}: {v}" for k, v in per_image.items()),
        summary_table(dataset).to_string(float_format=lambda v: f"{v:.3f}").replace("\n", "\n  ").join(["  ", ""]),
        f"  all-empty submission scores {baseline.overall:.5f} (per class "
        + ", ".join(f"{c}: {baseline.baseline_per_class[c]:.4f}" for c in CLASS_IDS)
        + ")",
    ]
    return "\n".join(lines)


def summarize(data: DataNode) -> str:
    """Make the data ready for training (generate, check, folds) and return a readable summary."""
    train = load_train(data)
    folds = load_folds(data, train)
    per_fold = check_folds(folds, train.labels)
    text = [
        describe(train, "train"),
        f"  folds ({data['folds']['path']}): "
        + ", ".join(f"{k}: {v}" for k, v in folds["fold"].value_counts().sort_index().items()),
        "  positives per fold and class:\n    " + per_fold.to_string().replace("\n", "\n    "),
    ]
    test = load_test(data)
    text.append(
        describe(test, "test") if test.labelled else f"test: {len(test)} images in {test.image_dir} (unlabelled)"
    )
    return "\n".join(text)
