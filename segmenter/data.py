"""Segmenter view of a SteelDataset: image tensors with 4-channel masks, random crops for training.

Images are first prepared at the network input size (``preprocess.size``, e.g. [64, 416]: a quarter of
256x1600; None keeps the full size) and masks resized with them (nearest neighbour). Training items are then
random crops (``crop: [height, width]`` in network-input pixels, multiples of 32) taken by albumentations
together with the mask, and the configured augmentations; validation items are whole images whose items also
carry the full-size ``truth`` masks, against which the upsampled predictions are scored (as inference does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from common.config import ConfigError, real_number, whole_number
from common.constants import IMAGE_SHAPE
from common.dataset import SteelDataset
from common.preprocess import Preprocess
from engine.augment import Augment, build_augment

__all__ = ["check_crop", "select_training_ids", "CROP_MODES", "build_train_augment", "SegmentationDataset"]


def check_crop(
    crop: Sequence[int] | None, key: str = "segmenter.crop", size: Sequence[int] | None = None
) -> tuple[int, int] | None:
    """(height, width) of the training crop, checked against the network input size (``size``, default the
    full image) and the encoder stride; None = whole images."""
    if crop is None:
        return None
    if isinstance(crop, str) or len(crop) != 2:
        raise ConfigError(f"{key}: expected [height, width], got {crop!r}")
    height, width = (whole_number(v, key, 1, note=" in [height, width]") for v in crop)
    full = tuple(size) if size is not None else IMAGE_SHAPE
    if height > full[0] or width > full[1] or height <= 0 or width <= 0:
        raise ConfigError(
            f"{key}: crop {height}x{width} does not fit the {full[0]}x{full[1]} network input "
            "(the crop is in network-input pixels, after preprocess.size)"
        )
    if height % 32 or width % 32:
        raise ConfigError(f"{key}: crop {height}x{width} must be multiples of 32 for the encoder")
    return height, width


def select_training_ids(
    labels: pd.DataFrame, image_ids: Sequence[str], clean_ratio: float | None, seed: int, stage: str = "segmenter"
) -> list[str]:
    """Training images: all (``clean_ratio`` None), or every defect image plus ``clean_ratio`` clean ones per
    defect one.

    ``clean_ratio=0`` trains on defect images only. The clean images are a fixed random draw (seeded); asking
    for more than the fold has is an error, so nothing changes silently.
    """
    ids = list(image_ids)
    if clean_ratio is None:
        return ids
    clean_ratio = real_number(clean_ratio, f"{stage}.clean_ratio", 0.0, note=" or null")
    has_defect = labels.loc[ids].to_numpy().any(axis=1)
    defect = [i for i, d in zip(ids, has_defect) if d]
    clean = [i for i, d in zip(ids, has_defect) if not d]
    n_clean = int(round(clean_ratio * len(defect)))
    if n_clean > len(clean):
        raise ConfigError(
            f"{stage}.clean_ratio={clean_ratio}: needs {n_clean} clean images for {len(defect)} "
            f"defect ones, the fold has {len(clean)}; lower it or use null for all images"
        )
    if not defect:
        raise ConfigError(f"{stage}.clean_ratio: the training fold has no defect images")
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(len(clean), size=n_clean, replace=False).tolist()) if n_clean else set()
    chosen = set(defect) | {clean[i] for i in picked}
    return [i for i in ids if i in chosen]


CROP_MODES = {"random": "albumentations.RandomCrop", "defect": "albumentations.CropNonEmptyMaskIfExists"}


def build_train_augment(
    crop: tuple[int, int] | None,
    nodes: Sequence[Any] | None,
    seed: int,
    crop_mode: str = "random",
    key: str = "segmenter.augment",
) -> Augment:
    """Crop (when set) followed by the configured albumentations, applied to image and mask together.

    ``crop_mode``: ``random`` (uniform position) or ``defect`` (a crop that contains defect pixels whenever
    the image has any, albumentations' CropNonEmptyMaskIfExists; faster learning on small data).
    """
    if crop_mode not in CROP_MODES:
        stage = key.split(".")[0]
        raise ConfigError(f"{stage}.crop_mode: expected one of {sorted(CROP_MODES)}, got {crop_mode!r}")
    crop_node = [] if crop is None else [{"_target_": CROP_MODES[crop_mode], "height": crop[0], "width": crop[1]}]
    return build_augment(crop_node + list(nodes or []), key, seed=seed)


class SegmentationDataset(Dataset):
    """Items ``{"image": float (3, h, w), "target": float (4, h, w) 0/1, "image_id": str}`` at the network input
    size, plus ``"truth"``: uint8 (4, 256, 1600) full-size masks when ``full_truth`` (validation).

    ``cache`` keeps each decoded, prepared uint8 image and its masks at the network input size in memory (per
    loader worker): for small datasets, where decoding would dominate an epoch.
    """

    def __init__(
        self,
        dataset: SteelDataset,
        image_ids: Sequence[str],
        preprocess: Preprocess,
        augment: Augment | None = None,
        cache: bool = False,
        stage: str = "segmenter",
        full_truth: bool = False,
    ) -> None:
        if preprocess.size is not None and any(v % 32 for v in preprocess.size):
            raise ConfigError(
                f"{stage}.preprocess.size: {list(preprocess.size)} must be multiples of 32 for the "
                "encoder (e.g. [64, 416] or [128, 800])"
            )
        if not dataset.labelled:
            raise ConfigError(f"{dataset.source}: the segmenter needs annotated images")
        self.dataset, self.image_ids = dataset, list(image_ids)
        self.preprocess, self.augment, self.full_truth = preprocess, augment, full_truth
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_seed(self, seed: int) -> None:
        """Re-seed augmentation draws (called by the engine per epoch and loader worker)."""
        if self.augment is not None:
            self.augment.set_seed(seed)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Augmented uint8 image (h, w, 3) and mask (4, h, w) at the network input size, before normalisation,
        and the full-size masks (4, 256, 1600) of the image (None for cached training items)."""
        image_id = self.image_ids[index]
        cached = self.cache.get(image_id) if self.cache is not None else None
        full = self.dataset.masks(image_id) if cached is None or self.full_truth else None
        if cached is None:
            cached = self.preprocess.prepare(self.dataset.image(image_id)), self.preprocess.prepare_mask(full)
            if self.cache is not None:
                self.cache[image_id] = cached
        image, mask = cached
        if self.augment is not None:
            image, mask = self.augment(image, mask)
        return image, mask, full

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, full = self.sample(index)
        item = {
            "image": torch.from_numpy(self.preprocess.normalize(image)),
            "target": torch.from_numpy(mask.astype(np.float32)),
            "image_id": self.image_ids[index],
        }
        if self.full_truth:
            item["truth"] = torch.from_numpy(full)
        return item
