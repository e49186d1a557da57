"""The classifier's view of a dataset: image -> 4-dim presence vector, plus class-balanced weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from common.dataset import SteelDataset
from common.preprocess import Preprocess
from engine.augment import Augment

__all__ = ["PresenceDataset"]


class PresenceDataset(Dataset):
    """Items ``{"image": (C, H, W) float, "target": (4,) float 0/1, "image_id": str}`` in ``image_ids`` order.

    ``cache`` keeps the decoded, prepared uint8 images in memory (per loader worker): for small
    datasets and reduced input sizes, where JPEG decoding would dominate an epoch.
    """

    def __init__(
        self,
        source: SteelDataset,
        image_ids: Sequence[str],
        preprocess: Preprocess,
        augment: Augment | None = None,
        cache: bool = False,
    ) -> None:
        self.source, self.image_ids = source, list(image_ids)
        self.preprocess, self.augment = preprocess, augment
        self.cache: dict[str, np.ndarray] | None = {} if cache else None
        self.targets = np.array(source.labels.loc[self.image_ids], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_seed(self, seed: int) -> None:
        """Re-seed the augmentation (called by the engine per epoch and loader worker)."""
        if self.augment is not None:
            self.augment.set_seed(seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        image = self.cache.get(image_id) if self.cache is not None else None
        if image is None:
            image = self.preprocess.prepare(self.source.image(image_id))
            if self.cache is not None:
                self.cache[image_id] = image
        if self.augment is not None:
            image, _ = self.augment(image)
        return {
            "image": torch.from_numpy(self.preprocess.normalize(image)),
            "target": torch.from_numpy(self.targets[index]),
            "image_id": image_id,
        }
