"""A dataset root in Kaggle layout: image folders plus annotations, checked against each other.

Layout: ``ROOT/train_images/``, ``ROOT/test_images/``, ``ROOT/train.csv`` (either format).
Images present in the folder but absent from the CSV are defect-free and kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from common.annotations import Annotations, check_image_id, labels_table, read_annotations
from common.constants import CLASS_IDS, IMAGE_SHAPE, IMAGE_SUFFIXES, LONG_COLUMNS
from common.errors import ConfigError, DatasetError, ImageError
from common.images import check_complete, read_bytes, read_image, read_size
from common.rle import decode

__all__ = [
    "SteelDataset",
    "class_masks",
    "mask_stack",
    "rles_by_image",
    "list_images",
    "check_image_files",
    "dataset_from",
    "load_split",
]

DEFAULT_CSV = {"train": "train.csv", "test": None}


def rles_by_image(rows: pd.DataFrame) -> dict[str, dict[int, str]]:
    """ImageId -> {class id: RLE} of long-form rows (columns ImageId, ClassId, EncodedPixels)."""
    index: dict[str, dict[int, str]] = {}
    for image_id, class_id, rle in rows[LONG_COLUMNS].itertuples(index=False):
        if isinstance(rle, str) and rle.strip():
            index.setdefault(image_id, {})[int(class_id)] = rle
    return index


def class_masks(rles: dict[int, str], shape: tuple[int, int] = IMAGE_SHAPE) -> dict[int, np.ndarray]:
    """{class id: 0/1 uint8 mask} of one image's non-empty RLEs."""
    return {int(c): decode(rle, shape) for c, rle in sorted(rles.items()) if isinstance(rle, str) and rle.strip()}


def mask_stack(rles: dict[int, str], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """uint8 array (4, H, W): one 0/1 mask per class of CLASS_IDS (zeros where the image has none)."""
    out = np.zeros((len(CLASS_IDS), *shape), np.uint8)
    for class_id, mask in class_masks(rles, shape).items():
        out[CLASS_IDS.index(class_id)] = mask
    return out


@dataclass(frozen=True)
class SteelDataset:
    """Images of one split with their (possibly empty) long-form annotations."""

    image_dir: Path
    image_ids: tuple[str, ...]
    annotations: pd.DataFrame
    labelled: bool
    source: str = ""
    elsewhere: Mapping[str, Path] = field(default_factory=dict)  # images of extra roots: id -> file

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, image_id: str) -> Path:
        """File of one image."""
        return self.elsewhere[image_id] if image_id in self.elsewhere else self.image_dir / image_id

    def image(self, image_id: str, channels: int = 3) -> np.ndarray:
        """uint8 image (HxWx3 RGB or HxW), read by content."""
        return read_image(self.path(image_id), channels)

    @cached_property
    def _rle_index(self) -> dict[str, dict[int, str]]:
        return rles_by_image(self.annotations)

    def rles(self, image_id: str) -> dict[int, str]:
        """Class id -> RLE for the defects of one image (empty dict when clean)."""
        return dict(self._rle_index.get(image_id, {}))

    def masks(self, image_id: str) -> np.ndarray:
        """uint8 array (4, 256, 1600): one 0/1 mask per class."""
        return mask_stack(self._rle_index.get(image_id, {}))

    @cached_property
    def labels(self) -> pd.DataFrame:
        """0/1 presence per image (rows) and class (columns 1..4), defect-free images included."""
        return labels_table(self.annotations, self.image_ids)

    def subset(self, image_ids: list[str] | tuple[str, ...]) -> SteelDataset:
        """The same dataset restricted to some images (e.g. one fold)."""
        missing = set(image_ids) - set(self.image_ids)
        if missing:
            raise DatasetError(f"{self.source}: unknown image ids {sorted(missing)[:5]}")
        rows = self.annotations[self.annotations["ImageId"].isin(set(image_ids))].reset_index(drop=True)
        elsewhere = {i: self.elsewhere[i] for i in image_ids if i in self.elsewhere}
        return SteelDataset(self.image_dir, tuple(image_ids), rows, self.labelled, self.source, elsewhere)

    def joined(self, other: SteelDataset) -> SteelDataset:
        """This dataset plus the images of another labelled root (e.g. pseudo-labels); a shared ImageId is an
        error naming both roots, never a silent overwrite."""
        if not (self.labelled and other.labelled):
            raise DatasetError(f"{other.source or other.image_dir}: an added training root needs annotations")
        shared = sorted(set(self.image_ids) & set(other.image_ids))
        if shared:
            raise DatasetError(
                f"{other.source}: ImageId {shared[0]!r} (and {len(shared) - 1} more) is also in "
                f"{self.source}; an added training root must hold other images"
            )
        elsewhere = {**self.elsewhere, **{i: other.path(i) for i in other.image_ids}}
        rows = pd.concat([self.annotations, other.annotations], ignore_index=True)
        return SteelDataset(self.image_dir, self.image_ids + other.image_ids, rows, True, self.source, elsewhere)


def list_images(image_dir: Path | str) -> list[str]:
    """Sorted image file names in a folder (jpg/jpeg/png by name; content is checked on read).

    An entry with an image name that is not a readable file (a dangling symlink, a folder) is an error
    naming it, never skipped: a prediction or a submission check would otherwise miss that image.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image folder not found")
    names = []
    for entry in image_dir.iterdir():
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        check_image_id(entry.name, str(image_dir))  # a name no CSV row can hold is refused, not written quoted
        if not entry.is_file():
            what = "a symlink to a missing file" if entry.is_symlink() and not entry.exists() else "not a regular file"
            raise ImageError(f"{entry}: {what}; fix or remove it (every image in {image_dir} is used)")
        names.append(entry.name)
    return sorted(names)


def check_image_files(image_dir: Path, image_ids: list[str] | tuple[str, ...], full: bool = False) -> None:
    """Raise ImageError for the first unreadable, truncated, non-JPEG/PNG or wrong-size image: by decoding when
    ``full``, else by the header and the file's structure (a truncated file is found here, not in an epoch)."""
    for image_id in image_ids:
        path = image_dir / image_id
        if full:
            read_image(path)
            continue
        check_complete(read_bytes(path), path)
        size = read_size(path)
        if size != IMAGE_SHAPE:
            raise ImageError(f"{path}: image is {size[0]}x{size[1]}, expected {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")


def dataset_from(image_dir: Path | str, annotations: Annotations | None, check: str = "header") -> SteelDataset:
    """Join an image folder with annotations; rows naming missing images are an error, never dropped."""
    image_dir = Path(image_dir)
    on_disk = list_images(image_dir)
    if not on_disk:
        raise DatasetError(f"{image_dir}: no images (.jpg/.jpeg/.png) in the folder")
    present = set(on_disk)
    if annotations is None:
        rows = pd.DataFrame(columns=LONG_COLUMNS).astype({"ClassId": np.int64})
        source = str(image_dir)
    else:
        for image_id in annotations.image_ids:
            if image_id not in present:
                line = next((ln for (iid, _), ln in annotations.line_of.items() if iid == image_id), None)
                where = f", line {line}" if line else ""
                raise DatasetError(f"{annotations.path}{where}: image {image_id!r} is not in {image_dir}")
        rows, source = annotations.rows, annotations.path
    if check not in ("none", "header", "full"):
        raise ConfigError(f"data.check_images: must be 'none', 'header' or 'full', got {check!r}")
    if check != "none":
        check_image_files(image_dir, on_disk, full=check == "full")
    return SteelDataset(image_dir, tuple(on_disk), rows, annotations is not None, source)


def load_split(
    root: Path | str, split: str = "train", csv: Path | str | None = None, check: str = "header"
) -> SteelDataset:
    """Load ``ROOT/{split}_images`` with ``csv`` (default ``ROOT/train.csv`` for train, none for test)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    default = DEFAULT_CSV.get(split)
    if csv is None and default:
        csv = root / default
    annotations = read_annotations(csv) if csv is not None else None
    return dataset_from(root / f"{split}_images", annotations, check)
