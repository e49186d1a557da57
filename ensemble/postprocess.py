"""Probabilities -> binary masks: gating by the classifier, then per-class threshold, components, area.

Pure numpy/OpenCV on one image at a time (4, H, W); the order matches what the threshold search models:
label threshold on the (gated) maximum probability, pixel threshold, optional overlap resolution,
removal of components smaller than ``min_component``, then the total ``min_area`` test.
"""
from __future__ import annotations

import cv2
import numpy as np

from ensemble.rules import Rules


def segment_needed(cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray | None:
    """Bool (B,): images the segmenters must see; None = all (no classifier or a non-skipping mode)."""
    if cls_prob is None or rules.gating not in ("image", "veto"):
        return None
    if rules.gating == "image":
        return cls_prob.max(axis=1) >= rules.image_threshold
    return (cls_prob >= np.asarray(rules.classifier_threshold)).any(axis=1)


def gate(seg_prob: np.ndarray, cls_prob: np.ndarray | None, rules: Rules) -> tuple[np.ndarray, np.ndarray]:
    """Apply the classifier to (B, 4, H, W) probabilities in place; return them and min areas (B, 4)."""
    batch = seg_prob.shape[0]
    min_area = np.broadcast_to(np.asarray(rules.min_area, np.float64), (batch, len(rules.min_area))).copy()
    if not rules.needs_classifier:
        return seg_prob, min_area
    if cls_prob is None:
        raise ValueError(f"gating mode {rules.gating!r} needs classifier probabilities")
    below = cls_prob < np.asarray(rules.classifier_threshold)
    if rules.gating == "image":
        seg_prob[cls_prob.max(axis=1) < rules.image_threshold] = 0
    elif rules.gating == "veto":
        seg_prob[below] = 0
    elif rules.gating == "soft":
        seg_prob *= cls_prob[:, :, None, None].astype(seg_prob.dtype)
    elif rules.gating == "scale":
        min_area[below] *= rules.area_scale
    return seg_prob, min_area


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


def to_masks(prob: np.ndarray, rules: Rules, min_area: np.ndarray | None = None) -> np.ndarray:
    """One image's gated probabilities (4, H, W) -> uint8 0/1 masks (4, H, W)."""
    min_area = np.asarray(rules.min_area if min_area is None else min_area)
    masks = (prob >= np.asarray(rules.pixel_threshold, prob.dtype)[:, None, None]).view(np.uint8)
    masks = masks.copy()
    for i, label in enumerate(rules.label_threshold):
        if label > 0 and prob[i].max() < label:
            masks[i] = 0
    if rules.resolve_overlap:
        crowded = masks.sum(axis=0) > 1
        if crowded.any():
            winner = np.where(masks.astype(bool), prob, -1.0).argmax(axis=0)
            for i in range(masks.shape[0]):
                masks[i][crowded & (winner != i)] = 0
    for i in range(masks.shape[0]):
        masks[i] = remove_small_components(masks[i], rules.min_component[i])
        if int(masks[i].sum()) < min_area[i]:
            masks[i] = 0
    return masks
