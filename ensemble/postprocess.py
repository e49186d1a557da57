"""Probabilities -> binary masks, in the order the threshold search models:

gating and label threshold (``ensemble.gating.pair_rules``), pixel threshold on the bin grid
(``common.oof.bin_index``: the very rule the OOF histograms count), optional overlap resolution, removal of
components smaller than ``min_component``, then the total ``min_area`` test.

``postprocess`` takes a NumPy batch or a torch batch on any device: thresholding and overlap resolution run
where the probabilities are (the GPU, in GPU inference) and only 1-byte masks travel to the CPU for the
connected components. No module-level torch import (the ONNX runtime uses this file).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from common.oof import bin_index
from ensemble.arrays import is_torch as _is_torch
from ensemble.gating import PairRules, pair_rules
from ensemble.rules import Rules

__all__ = ["remove_small_components", "threshold_masks", "finish_masks", "max_probability", "postprocess"]


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_size`` pixels from a 0/1 uint8 mask."""
    if min_size <= 1 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # background
    if keep[1:count].all():
        return mask
    return keep[labels].astype(np.uint8)


def threshold_masks(prob: Any, pairs: PairRules, bins: int, resolve_overlap: bool = False) -> np.ndarray:
    """(B, 4, H, W) probabilities -> uint8 0/1 masks (NumPy, on the CPU) after pixel threshold, keep flags and
    (optionally) overlap resolution: a pixel claimed by several classes goes to the most probable one."""
    if _is_torch(prob):
        import torch

        k = torch.as_tensor(pairs.k, device=prob.device)[:, :, None, None]
        keep = torch.as_tensor(pairs.keep, device=prob.device)[:, :, None, None]
        masks = (bin_index(prob, bins) >= k) & keep
        if resolve_overlap:
            winner = torch.where(masks, prob, torch.full_like(prob, -1.0)).argmax(dim=1, keepdim=True)
            crowded = masks.sum(dim=1, keepdim=True) > 1
            own = torch.arange(prob.shape[1], device=prob.device).view(1, -1, 1, 1) == winner
            masks &= ~crowded | own
        return masks.to(torch.uint8).cpu().numpy()
    prob = np.asarray(prob)
    masks = (bin_index(prob, bins) >= pairs.k[:, :, None, None]) & pairs.keep[:, :, None, None]
    if resolve_overlap:
        winner = np.where(masks, prob, -1.0).argmax(axis=1)[:, None]
        crowded = masks.sum(axis=1, keepdims=True) > 1
        masks &= ~crowded | (np.arange(prob.shape[1]).reshape(1, -1, 1, 1) == winner)
    return masks.astype(np.uint8)


def finish_masks(masks: np.ndarray, min_area: np.ndarray, rules: Rules) -> np.ndarray:
    """One image's (4, H, W) masks: remove small components, then drop masks below their min area (in place)."""
    for i in range(masks.shape[0]):
        if not masks[i].any():
            continue
        masks[i] = remove_small_components(masks[i], rules.min_component[i])
        if int(np.count_nonzero(masks[i])) < min_area[i]:
            masks[i] = 0
    return masks


def max_probability(prob: Any) -> np.ndarray:
    """(B, 4) per-class maximum of (B, 4, H, W) probabilities (NumPy or torch), as NumPy on the CPU."""
    if _is_torch(prob):
        return prob.flatten(2).amax(-1).float().cpu().numpy()
    return np.asarray(prob).reshape(*prob.shape[:2], -1).max(-1)


def postprocess(prob: Any, cls_prob: np.ndarray | None, rules: Rules, max_prob: np.ndarray | None = None
                ) -> np.ndarray:
    """(B, 4, H, W) ensemble probabilities (NumPy or torch) and (B, 4) classifier probabilities (or None)
    -> uint8 0/1 masks (B, 4, H, W) on the CPU. ``max_prob``: ``max_probability(prob)`` when already known."""
    max_prob = max_probability(prob) if max_prob is None else max_prob
    pairs = pair_rules(rules, max_prob, cls_prob)
    masks = threshold_masks(prob, pairs, rules.bins, rules.resolve_overlap)
    for j in range(len(masks)):
        finish_masks(masks[j], pairs.min_area[j], rules)
    return masks
