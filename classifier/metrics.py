"""Classifier metrics: per-class ROC-AUC, F1 at thresholds, accuracy of 'any defect' (numpy in, floats out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.constants import CLASS_IDS
from common.metrics import f1_per_class, roc_auc_per_class

__all__ = ["classifier_metrics", "ClassifierMetric"]


def classifier_metrics(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """``auc_<c>``, ``auc_mean`` (over defined classes), ``f1_<c>``, ``f1_mean``, ``any_acc`` for (N, 4) arrays."""
    if probs.shape != labels.shape or probs.ndim != 2 or probs.shape[1] != len(thresholds):
        raise ValueError(f"probs {probs.shape}, labels {labels.shape} and {len(thresholds)} thresholds disagree")
    labels = labels.astype(np.int64)
    predicted = (probs >= np.asarray(thresholds, dtype=probs.dtype)).astype(np.int64)
    aucs = roc_auc_per_class(probs, labels)
    f1s = f1_per_class(probs, labels, thresholds)
    out = {f"auc_{c}": a for c, a in zip(CLASS_IDS, aucs)}
    defined = [a for a in aucs if not np.isnan(a)]
    out["auc_mean"] = float(np.mean(defined)) if defined else float("nan")
    out.update({f"f1_{c}": f for c, f in zip(CLASS_IDS, f1s)})
    out["f1_mean"] = float(np.mean(f1s))
    out["any_acc"] = float(np.mean(predicted.any(axis=1) == labels.any(axis=1))) if len(labels) else float("nan")
    return out


class ClassifierMetric:
    """Engine EpochMetric: collects sigmoid probabilities and labels; computes ``classifier_metrics``."""

    def __init__(self, thresholds: Sequence[float]) -> None:
        self.thresholds = [float(t) for t in thresholds]
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """Keep the batch on the outputs' device (no copy to the CPU, no sync per batch)."""
        self.probs.append(torch.sigmoid(outputs.detach().float()))
        self.labels.append(batch["target"].detach().to(outputs.device, non_blocking=True).float())

    def state(self) -> dict[str, torch.Tensor]:
        """Everything collected, on the CPU (one copy per validation pass)."""
        n = len(self.thresholds)
        return {
            "probs": torch.cat(self.probs).cpu() if self.probs else torch.empty(0, n),
            "labels": torch.cat(self.labels).cpu() if self.labels else torch.empty(0, n),
        }

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        return classifier_metrics(state["probs"].numpy(), state["labels"].numpy(), self.thresholds)
