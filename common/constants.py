"""The Severstal format in numbers and names: class ids, image shape, CSV column names."""

from __future__ import annotations

CLASS_IDS: tuple[int, ...] = (1, 2, 3, 4)
N_CLASSES: int = len(CLASS_IDS)
IMAGE_SHAPE: tuple[int, int] = (256, 1600)  # (height, width) of every Severstal image
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})

# Long form of annotations and predictions: one row per (image, class) that has a defect.
LONG_COLUMNS: list[str] = ["ImageId", "ClassId", "EncodedPixels"]
NEW_FORMAT, OLD_FORMAT = "new", "old"
# Column order of submissions as Kaggle writes them.
SUBMISSION_HEADERS: dict[str, list[str]] = {
    NEW_FORMAT: ["ImageId", "EncodedPixels", "ClassId"],
    OLD_FORMAT: ["ImageId_ClassId", "EncodedPixels"],
}

__all__ = [
    "CLASS_IDS",
    "N_CLASSES",
    "IMAGE_SHAPE",
    "IMAGE_SUFFIXES",
    "LONG_COLUMNS",
    "NEW_FORMAT",
    "OLD_FORMAT",
    "SUBMISSION_HEADERS",
]
