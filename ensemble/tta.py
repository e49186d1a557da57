"""Test-time augmentation as invertible flips: augment the input, un-augment the prediction.

Names: ``none``, ``hflip`` (mirror left-right), ``vflip`` (mirror top-bottom), ``both`` (hflip + vflip).
Flips are their own inverse; image-level outputs (classifier logits) need no un-augmenting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import ConfigError

__all__ = ["Flip", "transforms"]

_DIMS: dict[str, tuple[int, ...]] = {"none": (), "hflip": (-1,), "vflip": (-2,), "both": (-2, -1)}


@dataclass(frozen=True)
class Flip:
    """One TTA transform over the last two (H, W) dimensions of NCHW tensors."""

    name: str
    dims: tuple[int, ...]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed input batch."""
        return torch.flip(x, self.dims) if self.dims else x

    def deaugment(self, y: torch.Tensor) -> torch.Tensor:
        """Map a dense prediction of the augmented input back onto the original pixels."""
        return torch.flip(y, self.dims) if self.dims else y


def transforms(names: list[str] | tuple[str, ...] | str) -> list[Flip]:
    """TTA transforms from config names (a list or a comma-separated string); unknown names are an error."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names) or ["none"]
    unknown = [n for n in names if n not in _DIMS]
    if unknown:
        raise ConfigError(f"tta.transforms: unknown transform(s) {unknown}; choose from {sorted(_DIMS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tta.transforms: repeated transform in {names}")
    return [Flip(n, _DIMS[n]) for n in names]
