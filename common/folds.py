"""Multilabel-stratified K folds over the four class flags and 'no defect' (iterative-stratification)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from common.errors import DatasetError
from common.io import atomic_write_text


def make_folds(labels: pd.DataFrame, n_splits: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each image of a presence table (index ImageId, columns 1..4) a fold in [0, n_splits)."""
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    if len(labels) < n_splits:
        raise DatasetError(f"cannot make {n_splits} folds from {len(labels)} images")
    flags = labels.to_numpy(dtype=np.int64)
    targets = np.concatenate([flags, (flags.sum(axis=1) == 0)[:, None].astype(np.int64)], axis=1)
    folds = np.full(len(labels), -1, np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), targets)):
        folds[val_idx] = fold
    return pd.DataFrame({"ImageId": labels.index.to_numpy(), "fold": folds})


def write_folds(folds: pd.DataFrame, path: Path | str) -> Path:
    """Write the ImageId,fold CSV atomically."""
    return atomic_write_text(path, folds.to_csv(index=False))


def read_folds(path: Path | str, image_ids: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a folds CSV; when ``image_ids`` is given every image must have exactly one fold."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: folds file not found")
    folds = pd.read_csv(path, dtype={"ImageId": str})
    if list(folds.columns) != ["ImageId", "fold"]:
        raise DatasetError(f"{path}: expected header 'ImageId,fold', got {list(folds.columns)}")
    dup = folds["ImageId"].duplicated()
    if dup.any():
        raise DatasetError(f"{path}, line {int(np.argmax(dup.to_numpy())) + 2}: duplicate ImageId")
    if image_ids is not None:
        missing = sorted(set(image_ids) - set(folds["ImageId"]))
        if missing:
            raise DatasetError(f"{path}: {len(missing)} images have no fold, e.g. {missing[:3]}")
    return folds


def split_ids(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) for one fold."""
    n = int(folds["fold"].max()) + 1
    if not 0 <= fold < n:
        raise DatasetError(f"fold {fold} is out of range: the folds file has folds 0..{n - 1}")
    is_val = folds["fold"].to_numpy() == fold
    ids = folds["ImageId"].to_numpy()
    return ids[~is_val].tolist(), ids[is_val].tolist()
