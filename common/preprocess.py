"""Network input preparation shared by training and inference (and the torch-free runtime).

One ``Preprocess`` per model, stored in its checkpoint as ``meta["preprocess"]`` (``to_meta``) and rebuilt
from there (``from_meta``), so inference feeds a model exactly what it was trained on. Both paths call
the same two steps, in the data loader:

1. ``prepare(rgb)``: uint8 RGB (H, W, 3) as decoded from the file -> uint8 (h, w, channels) at the network
   input size (grey conversion, area-interpolated resize). Training augments after this step.
2. ``normalize(image)``: uint8 (h, w, c) -> float32 (c, h, w), ``(x / 255 - mean) / std``.

NumPy and OpenCV only: no torch, so an ONNX runtime can use it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from common.config import check_known
from common.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Channels, resize and normalisation of network inputs (``size`` is (height, width); None keeps 256x1600)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess.channels: must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"preprocess.mean/std: need {self.channels} values each, got {self.mean}, {self.std}")
        if any(not np.isfinite(v) for v in (*self.mean, *self.std)) or any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess.mean/std: finite values with std > 0, got {self.mean}, {self.std}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ConfigError(f"preprocess.size: expected [height, width] > 0 or null, got {self.size}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> Preprocess:
        """From a config/dict with keys mean, std, channels, size (all optional)."""
        node = dict(node or {})
        check_known(node, ("channels", "mean", "std", "size"), "preprocess")
        size = node.get("size")
        try:
            return cls(
                mean=tuple(float(v) for v in node.get("mean", IMAGENET_MEAN)),
                std=tuple(float(v) for v in node.get("std", IMAGENET_STD)),
                channels=int(node.get("channels", 3)),
                size=None if size is None else (int(size[0]), int(size[1])),
            )
        except (TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"preprocess: bad values {node} ({exc})") from exc

    from_meta = from_config

    def to_meta(self) -> dict[str, Any]:
        """Plain dict for checkpoint meta: ``{channels, mean, std, size}``."""
        return {
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "size": None if self.size is None else list(self.size),
        }

    @property
    def key(self) -> tuple[int, tuple[float, ...], tuple[float, ...], tuple[int, int] | None]:
        """Models with equal keys take the same input tensor (inference prepares it once)."""
        return self.channels, self.mean, self.std, self.size

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) -> uint8 (h, w, channels) at the network input size."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {rgb.dtype} {rgb.shape}")
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None] if self.channels == 1 else rgb
        if self.size is not None and image.shape[:2] != tuple(self.size):
            height, width = self.size
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            if image.ndim == 2:
                image = image[:, :, None]
        return image

    def prepare_mask(self, mask: np.ndarray) -> np.ndarray:
        """uint8 (C, H, W) class masks at the network input size (nearest neighbour)."""
        if self.size is None or mask.shape[1:] == tuple(self.size):
            return mask
        height, width = self.size
        return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in mask])

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """uint8 (h, w, c) or (h, w) -> float32 (c, h, w): ``(x / 255 - mean) / std``."""
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] != self.channels:
            raise ValueError(f"image has {image.shape[2]} channels, preprocess expects {self.channels}")
        x = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Both steps: uint8 RGB (H, W, 3) -> float32 network input (channels, h, w)."""
        return self.normalize(self.prepare(rgb))
