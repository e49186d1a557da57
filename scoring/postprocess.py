"""Probabilities -> binary masks, in the order the threshold search models:

gating and label threshold (``scoring.gating.pair_rules``), pixel threshold on the bin grid
(``common.oof.bin_index``: the very rule the OOF histograms count), optional overlap resolution, removal of
components smaller than ``min_component``, then the total ``min_area`` test.

``postprocess`` takes a NumPy batch or a torch batch on any device: thresholding and overlap resolution run
where the probabilities are (the GPU, in GPU inference) and only 1-byte masks travel to the CPU for the
connected components. No module-level torch import (the ONNX runtime uses this file).

Speed (``benchmarks/bench_postprocess.py``): the bin rule ``bin_index(p) >= k`` is one comparison ``p >= cut``
with ``cut`` the smallest value of the probabilities' dtype in bin k or above (``bin_cut``), so no bin array
is built; only the (image, class) pairs that the rules keep and whose maximum probability reaches the cut are
thresholded at all (on the GPU only those travel to the CPU); components are labelled only for masks that can
still reach their minimum area.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from common.oof import bin_index
from scoring.arrays import is_torch as _is_torch
from scoring.gating import PairRules, pair_rules
from scoring.rules import Rules

__all__ = ["remove_small_components", "bin_cut", "threshold_masks", "finish_mask", "max_probability", "postprocess"]

# Probability dtypes whose bin cut is computed exactly (NumPy dtype names; torch dtypes map by name).
_CUT_DTYPES = ("float16", "float32", "float64")


def _dtype_name(prob: Any) -> str:
    return str(prob.dtype).removeprefix("torch.")


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_size`` pixels from a 0/1 uint8 mask.

    Each component has one outer border (``cv2.findContours``, RETR_CCOMP top level), which bounds its pixel
    count from below (its width, height, and a quarter of the border's length: a border visits a pixel at most
    four times) and from above (its bounding box). Only a component the bounds cannot decide, or one to remove,
    is labelled exactly, inside its bounding box; so large defects cost one border trace.
    """
    if min_size <= 1 or not mask.any():
        return mask
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = mask
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent != -1:  # a hole's border
            continue
        x, y, w, h = cv2.boundingRect(contour)
        if max(w, h, -(-len(contour) // 4)) >= min_size:
            continue
        box = (slice(y, y + h), slice(x, x + w))
        _, labels = cv2.connectedComponents(mask[box], connectivity=8)
        own = labels == labels[contour[0, 0, 1] - y, contour[0, 0, 0] - x]
        if w * h < min_size or np.count_nonzero(own) < min_size:
            if out is mask:
                out = mask.copy()
            out[box][own] = 0
    return out


@lru_cache(maxsize=4096)
def bin_cut(k: int, bins: int, dtype: str = "float32") -> float | None:
    """The smallest ``dtype`` value p with ``bin_index(p, bins) >= k`` (None: no probability reaches bin k).

    ``p * bins`` rounded in ``dtype`` grows with p, so ``p >= bin_cut(k)`` is exactly ``bin_index(p) >= k`` for
    every p of that dtype (NaN fails both), with one comparison and no bin array.
    """
    if k >= bins:
        return None
    kind = np.dtype(dtype).type
    scale, target = kind(bins), kind(k)
    cut = kind(k) / scale
    while np.nextafter(cut, kind(-np.inf)) * scale >= target:
        cut = np.nextafter(cut, kind(-np.inf))
    while cut * scale < target:
        cut = np.nextafter(cut, kind(np.inf))
    return float(cut)


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
        on_cpu: np.ndarray = masks.to(torch.uint8).cpu().numpy()
        return on_cpu
    prob = np.asarray(prob)
    masks = (bin_index(prob, bins) >= pairs.k[:, :, None, None]) & pairs.keep[:, :, None, None]
    if resolve_overlap:
        winner = np.where(masks, prob, -1.0).argmax(axis=1)[:, None]
        crowded = masks.sum(axis=1, keepdims=True) > 1
        masks &= ~crowded | (np.arange(prob.shape[1]).reshape(1, -1, 1, 1) == winner)
    binary: np.ndarray = masks.astype(np.uint8)
    return binary


def finish_mask(mask: np.ndarray, min_component: int, min_area: float) -> None:
    """One (H, W) mask in place: remove components under ``min_component`` pixels, then clear it when under
    ``min_area`` pixels in all (a mask already under it skips the component labelling)."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        return
    if area >= min_area and min_component > 1:
        mask[...] = remove_small_components(mask, min_component)
        area = int(np.count_nonzero(mask))
    if area < min_area:
        mask[...] = 0


def _cuts(pairs: PairRules, bins: int, dtype: str) -> np.ndarray:
    """(N, 4) threshold per pair in the probabilities' dtype; +inf where no probability can pass."""
    return np.array([[np.inf if (c := bin_cut(int(k), bins, dtype)) is None else c for k in row] for row in pairs.k])


def _threshold_pairs(prob: Any, cuts: np.ndarray, active: np.ndarray, masks: np.ndarray) -> None:
    """Write ``prob >= cut`` of the active (image, class) pairs into ``masks`` (B, 4, H, W) uint8 zeros."""
    index = np.flatnonzero(active)
    if not index.size:
        return
    flat = masks.reshape(-1, *masks.shape[2:])
    if _is_torch(prob):
        import torch

        where = torch.as_tensor(index, device=prob.device)
        picked = prob.reshape(-1, *prob.shape[2:]).index_select(0, where)
        cut = torch.as_tensor(cuts.ravel()[index], dtype=prob.dtype, device=prob.device)
        flat[index] = (picked >= cut[:, None, None]).to(torch.uint8).cpu().numpy()
        return
    source = np.asarray(prob).reshape(flat.shape)
    for i in index:
        np.greater_equal(source[i], source.dtype.type(cuts.flat[i]), out=flat[i].view(np.bool_))


def max_probability(prob: Any) -> np.ndarray:
    """(B, 4) per-class maximum of (B, 4, H, W) probabilities (NumPy or torch), as NumPy on the CPU."""
    maximum: np.ndarray
    if _is_torch(prob):
        maximum = prob.flatten(2).amax(-1).float().cpu().numpy()
    else:
        maximum = np.asarray(prob).reshape(*prob.shape[:2], -1).max(-1)
    return maximum


def postprocess(prob: Any, cls_prob: np.ndarray | None, rules: Rules, max_prob: np.ndarray | None = None) -> np.ndarray:
    """(B, 4, H, W) ensemble probabilities (NumPy or torch) and (B, 4) classifier probabilities (or None)
    -> uint8 0/1 masks (B, 4, H, W) on the CPU. ``max_prob``: ``max_probability(prob)`` when already known."""
    max_prob = max_probability(prob) if max_prob is None else max_prob
    pairs = pair_rules(rules, max_prob, cls_prob)
    dtype = _dtype_name(prob)
    if rules.resolve_overlap or dtype not in _CUT_DTYPES:  # every class of an image at once
        masks = threshold_masks(prob, pairs, rules.bins, rules.resolve_overlap)
        todo = masks.reshape(*masks.shape[:2], -1).any(-1)
    else:
        cuts = _cuts(pairs, rules.bins, dtype)
        todo = pairs.keep & np.isfinite(cuts)
        if dtype != "float64" or not _is_torch(prob):  # max_prob is exact: skip pairs no pixel of which passes
            todo &= ~(max_prob < cuts)
        masks = np.zeros(tuple(prob.shape), np.uint8)
        _threshold_pairs(prob, cuts, todo, masks)
    for j, c in zip(*np.nonzero(todo)):  # the other pairs are empty
        finish_mask(masks[j, c], rules.min_component[c], pairs.min_area[j, c])
    return masks
