"""Test-time augmentation as invertible flips: augment the input, un-augment the prediction.

Names: ``none``, ``hflip`` (mirror left-right), ``vflip`` (mirror top-bottom), ``both`` (hflip + vflip).
Flips are their own inverse; image-level outputs (classifier logits) need no un-augmenting. Works on torch
tensors and NumPy arrays alike (``scoring.arrays``), so the ONNX runtime uses it unchanged.

``augment_all`` / ``split_outputs`` put every flip of a batch into ONE forward pass (the flipped copies
concatenated on the batch axis) and take the outputs apart again: one large batch keeps a GPU busier than
several small passes, and the probabilities are those of separate passes (``tests/test_ensemble_units.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError
from scoring.arrays import is_torch

__all__ = ["Flip", "TTA_NAMES", "transforms", "augment_all", "split_outputs"]

_DIMS: dict[str, tuple[int, ...]] = {"none": (), "hflip": (-1,), "vflip": (-2,), "both": (-2, -1)}
TTA_NAMES = tuple(_DIMS)


def _flip(x: Any, dims: tuple[int, ...]) -> Any:
    if not dims:
        return x
    if is_torch(x):
        import torch

        return torch.flip(x, dims)
    import numpy as np

    return np.flip(x, dims)


@dataclass(frozen=True)
class Flip:
    """One TTA transform over the last two (H, W) dimensions of NCHW tensors or arrays."""

    name: str
    dims: tuple[int, ...]

    def augment(self, x: Any) -> Any:
        """The transformed input batch."""
        return _flip(x, self.dims)

    def deaugment(self, y: Any) -> Any:
        """Map a dense prediction of the augmented input back onto the original pixels."""
        return _flip(y, self.dims)


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


def augment_all(flips: list[Flip], x: Any) -> Any:
    """Every flip of the batch ``x`` (B, ...) concatenated on the batch axis (len(flips) * B, ...), in order."""
    if len(flips) == 1:
        return flips[0].augment(x)
    parts = [flip.augment(x) for flip in flips]
    if is_torch(x):
        import torch

        return torch.cat(parts)
    import numpy as np

    return np.concatenate(parts)


def split_outputs(y: Any, parts: int) -> list[Any]:
    """The outputs of ``augment_all``'s batch (a tensor/array, or a tuple of them for two heads) -> one per flip."""
    if isinstance(y, (tuple, list)):
        return [tuple(head) for head in zip(*(split_outputs(head, parts) for head in y))]
    if len(y) % parts:
        raise ValueError(f"a batch of {len(y)} outputs does not split into {parts} flips")
    size = len(y) // parts
    return [y[i * size : (i + 1) * size] for i in range(parts)]
