"""Image pre-processing shared by both stages and by inference, and augmentation built from config.

Pipeline of one sample: ``Preprocess.resize`` (network input size) -> ``Augment`` (training only)
-> ``Preprocess.to_tensor`` (RGB uint8 -> float in [0, 1] -> ``(x - mean) / std``, CHW).
``Preprocess`` is stored in checkpoint meta as ``meta["preprocess"]`` (``Preprocess.to_meta``), so
inference rebuilds exactly the input the model was trained on with ``Preprocess.from_meta``.

Masks travel as uint8 ``(C, H, W)`` arrays (``SteelDataset.masks`` layout); they are resized with
nearest-neighbour and get the same geometric augmentation as their image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from common.config import ConfigError, build

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize + normalisation of network inputs (``size`` is (height, width); None keeps 256x1600)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess.channels: must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"preprocess.mean/std: need {self.channels} values each, got {self.mean}, {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess.std: values must be > 0, got {self.std}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ConfigError(f"preprocess.size: expected [height, width] > 0 or null, got {self.size}")

    @classmethod
    def from_config(cls, node: Any) -> "Preprocess":
        """From a config/dict with keys mean, std, channels, size (all optional)."""
        node = dict(node or {})
        size = node.get("size")
        return cls(mean=tuple(float(v) for v in node.get("mean", IMAGENET_MEAN)),
                   std=tuple(float(v) for v in node.get("std", IMAGENET_STD)),
                   channels=int(node.get("channels", 3)),
                   size=None if size is None else (int(size[0]), int(size[1])))

    from_meta = from_config

    def to_meta(self) -> dict[str, Any]:
        """Plain dict for checkpoint meta: ``{channels, mean, std, size}``."""
        return {"channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "size": None if self.size is None else list(self.size)}

    def resize(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (area interpolation) and optional (C, H, W) mask (nearest) at the network input size."""
        if self.size is None or image.shape[:2] == tuple(self.size):
            return image, mask
        height, width = self.size
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in mask])
        return image, mask

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HxWxC (or HxW) -> normalised float32 CxHxW tensor."""
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != self.channels:
            raise ValueError(f"image has {image.shape[2]} channels, preprocess expects {self.channels}")
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return x.sub_(mean).div_(std)

    def batch_to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize and normalise raw uint8 images into one (B, C, H, W) batch (inference helper)."""
        return torch.stack([self.to_tensor(self.resize(image)[0]) for image in images])


class Augment:
    """An albumentations Compose applied to an image and its optional (C, H, W) mask together."""

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int | None = 0) -> None:
        self.compose = A.Compose(list(transforms), seed=seed)

    def __len__(self) -> int:
        return len(self.compose.transforms)

    def set_seed(self, seed: int) -> None:
        """Re-seed the random draws (the engine calls this per epoch / per loader worker)."""
        self.compose.set_random_seed(int(seed) % (2 ** 32))

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
