"""Shared fixtures: the real data beside the repo (tests using it skip when absent) and a tiny temp dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.constants import IMAGE_SHAPE
from common.rle import encode

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal"
TINY_N = 16


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real Severstal annotations and images folder; skips the test when it is absent."""
    if not (REAL_DATA / "annotations" / "train_rle_partial.csv").is_file():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


def write_tiny_dataset(root: Path, n: int = TINY_N, seed: int = 0) -> Path:
    """``root/train_images/*.jpg`` (256x1600 grey noise, bright blocks for defects) + ``root/train.csv``.

    Image i has class ``1 + i % 4`` when ``i % 3 != 0`` (every class appears; a third are clean).
    """
    rng = np.random.default_rng(seed)
    images = root / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i in range(n):
        image_id = f"{i:09x}.jpg"
        gray = rng.normal(100, 8, IMAGE_SHAPE).clip(0, 255).astype(np.uint8)
        if i % 3:
            class_id = 1 + i % 4
            mask = np.zeros(IMAGE_SHAPE, np.uint8)
            x0 = int(rng.integers(0, 1400))
            mask[64:192, x0 : x0 + 40 * class_id] = 1
            gray[mask == 1] = 200
            rows.append(f"{image_id},{class_id},{encode(mask)}")
        cv2.imwrite(str(images / image_id), gray, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Root of a 16-image dataset with train_images/ and train.csv (new format)."""
    return write_tiny_dataset(tmp_path / "tiny")
