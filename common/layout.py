"""Find the parts of a data root: Kaggle layout or the annotations/ + images/ layout of the real data.

Kaggle layout: ``train_images/``, ``test_images/``, ``train.csv`` and optionally ``test_truth.csv``
(synthetic roots) and ``sample_submission.csv``.
Split layout (``../shared/data/severstal``): ``images/train``, ``images/test``,
``annotations/train_rle_partial.csv`` (masks), ``annotations/train_rle_partial_image_ids.csv`` (every
image those masks cover, clean ones included), ``annotations/image_labels.csv`` (per-image classes and
areas of a wider set) and ``annotations/predictions/*.csv`` (submissions).
Every part may be given explicitly instead; a part that is named but missing is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.errors import DatasetError
from common.io import CsvError, read_csv

__all__ = ["ID_COLUMNS", "DataRoot", "find_root", "with_overrides", "read_id_list"]

ID_COLUMNS = ("ImageId", "image_id")


@dataclass(frozen=True)
class DataRoot:
    """Paths of the parts of one data root; None where the part is absent."""

    root: Path
    layout: str
    train_images: Path | None = None
    test_images: Path | None = None
    train_csv: Path | None = None
    train_ids_csv: Path | None = None
    labels_csv: Path | None = None
    test_truth_csv: Path | None = None
    submissions: tuple[Path, ...] = ()


def _existing(path: Path, kind: str = "file") -> Path | None:
    ok = path.is_file() if kind == "file" else path.is_dir()
    return path if ok else None


def find_root(root: Path | str) -> DataRoot:
    """Detect the layout of ``root`` and return the parts found there."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found")
    if (root / "train_images").is_dir() or (root / "train.csv").is_file():
        return DataRoot(
            root,
            "kaggle",
            _existing(root / "train_images", "dir"),
            _existing(root / "test_images", "dir"),
            _existing(root / "train.csv"),
            None,
            None,
            _existing(root / "test_truth.csv"),
        )
    ann, img = root / "annotations", root / "images"
    if ann.is_dir() or img.is_dir():
        preds = tuple(sorted((ann / "predictions").glob("*.csv"))) if (ann / "predictions").is_dir() else ()
        return DataRoot(
            root,
            "split",
            _existing(img / "train", "dir"),
            _existing(img / "test", "dir"),
            _existing(ann / "train_rle_partial.csv"),
            _existing(ann / "train_rle_partial_image_ids.csv"),
            _existing(ann / "image_labels.csv"),
            None,
            preds,
        )
    return DataRoot(root, "custom")


def with_overrides(data: DataRoot, **parts: Path | str | None) -> DataRoot:
    """Replace parts given explicitly (None leaves a part as found); named files must exist."""
    changes: dict[str, Any] = {}  # DataRoot field name -> Path
    for key, value in parts.items():
        if value is None:
            continue
        path = Path(value)
        if key.endswith("images") and not path.is_dir():
            raise DatasetError(f"{path}: image folder not found (--{key.replace('_', '-')})")
        if not key.endswith("images") and not path.is_file():
            raise DatasetError(f"{path}: file not found (--{key.replace('_', '-')})")
        changes[key] = path
    return replace(data, **changes)


def read_id_list(path: Path | str) -> list[str]:
    """Image ids from a one-column CSV (header ImageId or image_id); duplicates are an error."""
    try:
        table = read_csv(path)
        table.check_widths()
    except CsvError as exc:
        raise DatasetError(str(exc)) from exc
    column = next((c for c in ID_COLUMNS if c in table.header), None)
    if column is None:
        raise DatasetError(f"{path}: no id column (expected one of {list(ID_COLUMNS)}, got {table.header})")
    k = table.header.index(column)
    seen: dict[str, int] = {}
    for line, row in zip(table.lines, table.rows):
        image_id = row[k].strip()
        if not image_id:
            raise DatasetError(f"{path}, line {line}: empty image id")
        if image_id in seen:
            raise DatasetError(f"{path}, line {line}: duplicate image id {image_id!r} (first at line {seen[image_id]})")
        seen[image_id] = line
    return list(seen)
