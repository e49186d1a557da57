"""Sampling weights for training sets with rare classes (classes 1 and 2 are 2-7 % of Severstal images).

Each image belongs to one group: the rarest class it shows, or 'no defect'. ``balanced_weights`` gives every
image ``1 / size(group) ** power``: power 1 draws every group about equally often, 0.5 halfway (on a log scale)
between that and plain shuffling, 0 is plain shuffling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from common.config import check_known
from common.errors import ConfigError

__all__ = ["balanced_weights", "sample_weights"]


def balanced_weights(labels: pd.DataFrame, power: float = 1.0) -> np.ndarray:
    """Per-image weight ``1 / size(group) ** power`` from a 0/1 presence table (rows images, columns classes)."""
    flags = labels.to_numpy(dtype=bool)
    counts = flags.sum(axis=0)
    rarest = np.where(flags, counts[None, :], np.iinfo(np.int64).max).argmin(axis=1)
    groups = np.where(flags.any(axis=1), rarest, -1)
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / sizes[inverse].astype(np.float64) ** float(power)


def sample_weights(labels: pd.DataFrame, node: Mapping[str, Any] | None, key: str = "sampling") -> np.ndarray | None:
    """Weights for the engine's weighted sampler from a ``sampling`` config node; None = plain shuffling.

    Node: ``{mode: balanced, power: 1.0}`` or null; power 0 is plain shuffling too (a sweep can search it).
    """
    if not node:
        return None
    node = dict(node)
    mode, power = node.get("mode", "balanced"), node.get("power", 1.0)
    check_known(node, ("mode", "power"), key)
    if mode != "balanced":
        raise ConfigError(f"{key}.mode: expected 'balanced' (or set {key}: null), got {mode!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 <= power <= 1:
        raise ConfigError(f"{key}.power: expected a number in [0, 1], got {power!r}")
    return None if power == 0 else balanced_weights(labels, float(power))
