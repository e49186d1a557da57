"""Training augmentation built from config: an albumentations Compose over an image and its masks.

Masks travel as uint8 ``(C, H, W)`` arrays (``SteelDataset.masks`` layout) and get the same geometric
transforms as their image. Augmentation runs between ``Preprocess.prepare`` and ``Preprocess.normalize``
(``common.preprocess``), on uint8 images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np

from common.config import ConfigError, build

__all__ = ["Augment", "build_augment"]


class Augment:
    """An albumentations Compose applied to an image and its optional (C, H, W) mask together."""

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int | None = 0) -> None:
        self.compose = A.Compose(list(transforms), seed=seed)

    def __len__(self) -> int:
        return len(self.compose.transforms)

    def set_seed(self, seed: int) -> None:
        """Re-seed the random draws (the engine calls this per epoch / per loader worker)."""
        self.compose.set_random_seed(int(seed) % (2**32))

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if mask is None:
            return self.compose(image=image)["image"], None
        out = self.compose(image=image, mask=np.ascontiguousarray(mask.transpose(1, 2, 0)))
        return out["image"], np.ascontiguousarray(out["mask"].transpose(2, 0, 1))


def build_augment(nodes: Sequence[Any] | None, key: str = "augment", seed: int | None = 0) -> Augment:
    """Build an ``Augment`` from a list of ``_target_`` nodes (e.g. ``albumentations.HorizontalFlip``)."""
    if nodes is None:
        nodes = []
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence) and not hasattr(nodes, "__iter__"):
        raise ConfigError(f"{key}: expected a list of transforms, got {nodes!r}")
    transforms = [build(node, f"{key}[{i}]") for i, node in enumerate(nodes)]
    for i, transform in enumerate(transforms):
        if not isinstance(transform, A.BasicTransform) and not isinstance(transform, A.BaseCompose):
            raise ConfigError(f"{key}[{i}]: {type(transform).__name__} is not an albumentations transform")
    return Augment(transforms, seed)
