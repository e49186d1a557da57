"""Segmentation losses: smp.losses / torch terms combined with weights from config.

Example config (the 1st-place recipe, 0.75 BCE + 0.25 Dice with per-class positive weights)::

    _target_: segmenter.losses.CombinedLoss
    terms:
      bce: {weight: 0.75, loss: {_target_: segmenter.losses.ClassBCE, pos_weight: [2.0, 2.0, 1.0, 1.5]}}
      dice: {weight: 0.25, loss: {_target_: segmentation_models_pytorch.losses.DiceLoss, mode: multilabel}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss
from torch import nn

from common.errors import SteelsegError

__all__ = ["LossConfigError", "ClassBCE", "CombinedLoss"]


class LossConfigError(SteelsegError, ValueError):
    """A loss config without terms, with a negative weight or a term that is not a module."""


class ClassBCE(SoftBCEWithLogitsLoss):
    """BCE on (B, C, H, W) logits with one positive weight per class (list from config)."""

    def __init__(self, pos_weight: Sequence[float] | None = None, smooth_factor: float | None = None) -> None:
        weight = None if pos_weight is None else torch.tensor(list(pos_weight), dtype=torch.float32).view(-1, 1, 1)
        super().__init__(pos_weight=weight, smooth_factor=smooth_factor)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if self.pos_weight is not None and y_pred.shape[1] != self.pos_weight.shape[0]:
            raise LossConfigError(
                f"ClassBCE: {self.pos_weight.shape[0]} pos_weight values for {y_pred.shape[1]} classes"
            )
        return super().forward(y_pred, y_true)


class CombinedLoss(nn.Module):
    """Weighted sum of loss terms ``{name: {loss: module, weight: float}}``; zero-weight terms are skipped."""

    def __init__(self, terms: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        if not terms:
            raise LossConfigError("segmenter.loss.terms: no loss terms")
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, term in terms.items():
            loss, weight = term.get("loss"), float(term.get("weight", 1.0))
            if not isinstance(loss, nn.Module):
                raise LossConfigError(f"segmenter.loss.terms.{name}.loss: expected a loss module, got {loss!r}")
            if weight < 0:
                raise LossConfigError(f"segmenter.loss.terms.{name}.weight: negative weight {weight}")
            if weight > 0:
                self.terms[name], self.weights[name] = loss, weight
        if not self.terms:
            raise LossConfigError("segmenter.loss.terms: every weight is zero")

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each (unweighted) term, for logging."""
        return {name: loss(logits, target) for name, loss in self.terms.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = self.components(logits, target)
        return sum(self.weights[name] * value for name, value in parts.items())
