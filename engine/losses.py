"""Losses more than one stage trains with (the stages' own pixel losses stay with them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.config import ConfigError, real_number
from common.constants import CLASS_IDS

__all__ = ["ImageBCE"]


class ImageBCE(nn.Module):
    """BCE on (B, 4) image-level class logits with one positive weight per class (a buffer, so ``.to(device)``
    moves it): the classifier's loss and the joint model's class-head loss. ``key`` names the setting."""

    def __init__(self, pos_weight: Sequence[float] | None = None, key: str = "classifier.loss.pos_weight") -> None:
        super().__init__()
        if pos_weight is not None and (isinstance(pos_weight, str) or len(pos_weight) != len(CLASS_IDS)):
            shown = pos_weight if isinstance(pos_weight, str) else list(pos_weight)
            raise ConfigError(f"{key}: need {len(CLASS_IDS)} values, got {shown!r}")
        self.register_buffer(
            "pos_weight", None if pos_weight is None else torch.tensor([real_number(w, key, 0.0) for w in pos_weight])
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=self.pos_weight
        )
