"""Multilabel-stratified K folds over the four class flags and 'no defect' (iterative-stratification)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import ConfigError, DatasetError
from common.io import CsvError, atomic_write_text, read_csv

__all__ = ["make_folds", "check_folds", "write_folds", "read_folds", "split_ids"]


def make_folds(labels: pd.DataFrame, n_splits: int = 5, seed: int | None = 42) -> pd.DataFrame:
    """Assign each image of a presence table (index ImageId, columns 1..4) a fold in [0, n_splits) (seed None:
    an unseeded split)."""
    if n_splits < 2:
        raise ConfigError(f"data.folds.n_splits: must be >= 2, got {n_splits}")
    if len(labels) < n_splits:
        raise DatasetError(f"cannot make {n_splits} folds from {len(labels)} images")
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    flags = labels.to_numpy(dtype=np.int64)
    targets = np.concatenate([flags, (flags.sum(axis=1) == 0)[:, None].astype(np.int64)], axis=1)
    folds = np.full(len(labels), -1, np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), targets)):
        folds[val_idx] = fold
    return pd.DataFrame({"ImageId": labels.index.to_numpy(), "fold": folds})


def check_folds(folds: pd.DataFrame, labels: pd.DataFrame, where: str = "folds") -> pd.DataFrame:
    """Positives per (fold, class); raise DatasetError when a fold has none of a class that has at least
    one positive per fold overall (rare classes must be in every validation fold to be scored)."""
    table = labels.loc[folds["ImageId"].to_numpy()].groupby(folds["fold"].to_numpy()).sum()
    table.index.name = "fold"
    total = table.sum(axis=0)
    n_folds = len(table)
    for class_id in table.columns:
        empty = table.index[table[class_id] == 0].tolist()
        if empty and total[class_id] >= n_folds:
            raise DatasetError(
                f"{where}: fold(s) {empty} hold no image of class {class_id} although "
                f"{int(total[class_id])} exist; delete the folds file to remake it"
            )
    return table


def write_folds(folds: pd.DataFrame, path: Path | str, key: str | None = None) -> Path:
    """Write the ImageId,fold CSV atomically (``key``: the setting that named the file, for errors)."""
    return atomic_write_text(path, folds.to_csv(index=False), key=key)


def read_folds(path: Path | str, image_ids: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a folds CSV; when ``image_ids`` is given every image must have exactly one fold."""
    path = Path(path)
    try:
        table = read_csv(path)
        table.check_widths()
    except CsvError as exc:
        raise DatasetError(f"{exc} (data.folds.path)") from exc
    if table.header != ["ImageId", "fold"]:
        raise DatasetError(f"{path}: expected header 'ImageId,fold', got {table.header}")
    seen: dict[str, int] = {}
    for line, (image_id, fold) in zip(table.lines, table.rows):
        if image_id in seen:
            raise DatasetError(f"{path}, line {line}: duplicate ImageId {image_id!r} (first at line {seen[image_id]})")
        if not fold.strip().isdigit():
            raise DatasetError(f"{path}, line {line}: fold {fold!r} is not a non-negative integer")
        seen[image_id] = line
    folds = pd.DataFrame(
        {"ImageId": [r[0] for r in table.rows], "fold": np.array([int(r[1]) for r in table.rows], np.int64)}
    )
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
