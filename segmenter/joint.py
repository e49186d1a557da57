"""The joint stage: one two-headed network (``segmenter.model.create_joint``) trained with a pixel loss on its
masks plus an image loss on its class logits (the 4th-place recipe), for the engine.

Image targets come from the mask targets (a class is present in an item when any of its pixels is), so the
segmenter's data, crops and augmentation serve unchanged. The stage writes both OOF files: the class head's
probabilities (``oof_classifier.csv``) and the mask histograms (``oof_segmenter.npz``), from one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from common.config import build, real_number
from common.constants import CLASS_IDS
from common.metrics import roc_auc_per_class
from common.oof import (
    OOF_FILES,
    score_grid,
)
from engine.losses import ImageBCE
from engine.stage import StageSpec
from segmenter.metrics import AREA_GRID, SegmenterMetric, as_oof
from segmenter.stage import build_loss, init_weights, mask_settings, mask_stage_spec, write_mask_oof

__all__ = ["STAGE", "GATE_THRESHOLDS", "image_targets", "JointLoss", "JointMetric", "make_stage"]

STAGE = "joint"
GATE_THRESHOLDS = (0.3, 0.5, 0.7)  # class-head vetoes tried by the ``kaggle_best_gated`` validation metric


def image_targets(masks: torch.Tensor) -> torch.Tensor:
    """(B, 4) 0/1 presence of each class in (B, 4, H, W) mask targets."""
    return (masks.flatten(2).amax(-1) > 0.5).to(masks.dtype)


class JointLoss(nn.Module):
    """The pixel loss on the masks + ``image_weight`` x BCE (with per-class ``pos_weight``, a buffer that moves
    with the model) on the class logits."""

    def __init__(self, pixel: nn.Module, image_weight: float = 0.5, pos_weight: Sequence[float] | None = None) -> None:
        super().__init__()
        image_weight = real_number(image_weight, "joint.image_loss.weight", 0.0)
        self.pixel, self.image_weight = pixel, image_weight
        self.image = ImageBCE(pos_weight, "joint.image_loss.pos_weight")

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        mask_logits, label_logits = outputs
        return self.pixel(mask_logits, masks) + self.image_weight * self.image(label_logits, image_targets(masks))


class JointMetric(SegmenterMetric):
    """The segmenter's histogram metrics plus the class head's ROC-AUC and ``kaggle_best_gated``: the best
    exact grid score per class when the class head may also veto the pair (no veto, or p >= 0.3 / 0.5 / 0.7)."""

    def __init__(self, threshold: float | Sequence[float], min_area: float | Sequence[float], bins: int) -> None:
        super().__init__(threshold, min_area, bins, "joint.validation")
        self._probs: list[torch.Tensor] = []

    def update(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Mapping[str, Any]) -> None:
        super().update(outputs[0], batch)
        self._probs.append(torch.sigmoid(outputs[1].float()).cpu())

    def state(self) -> dict[str, torch.Tensor]:
        probs = torch.cat(self._probs) if self._probs else torch.zeros(0, len(CLASS_IDS))
        return {**super().state(), "cls_prob": probs}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        out = super().compute(state)
        oof = as_oof(state["hist_pos"].numpy(), state["hist_neg"].numpy(), state["max_prob"].numpy())
        probs, present = state["cls_prob"].numpy(), (oof.true_area() > 0).astype(np.int64)
        aucs = roc_auc_per_class(probs, present)
        out.update({f"auc_{c}": a for c, a in zip(CLASS_IDS, aucs)})
        defined = [a for a in aucs if not np.isnan(a)]
        out["auc_mean"] = float(np.mean(defined)) if defined else float("nan")
        grids = [score_grid(oof, AREA_GRID)] + [score_grid(oof, AREA_GRID, probs >= t) for t in GATE_THRESHOLDS]
        best = np.max([g.reshape(len(CLASS_IDS), -1).max(axis=1) for g in grids], axis=0)
        out["kaggle_best_gated"] = float(best.mean())
        return out


def make_stage(cfg: DictConfig) -> StageSpec:
    """Joint StageSpec for ``cfg.fold`` from ``cfg.joint`` (the segmenter's keys plus the image head's) and
    ``cfg.data``; bad settings stop here, before any data is read."""
    j = cfg.joint
    settings = mask_settings(j, STAGE, JointMetric)
    model_config = settings[0]
    image_loss = j.get("image_loss") or {}
    loss = JointLoss(build_loss(j.loss, "joint.loss"), image_loss.get("weight", 0.5), image_loss.get("pos_weight"))
    model = build(model_config, "joint.model")
    if j.get("init_from"):
        init_weights(model, model_config, str(j.init_from), STAGE)
    return mask_stage_spec(cfg, j, STAGE, model, loss, settings, write_mask_oof, OOF_FILES)
