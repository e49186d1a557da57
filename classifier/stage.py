"""The classifier stage for the engine: ``make_stage(cfg)`` (the ``stage`` config's ``_target_``) and its OOF file."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from classifier.data import PresenceDataset, balanced_weights
from classifier.metrics import ClassifierMetric
from classifier.model import param_groups
from common.annotations import CLASS_IDS
from common.augment import Preprocess, build_augment
from common.config import ConfigError, build, to_plain
from common.data_setup import load_folds, load_train
from common.engine import StageSpec, predict
from common.folds import split_ids
from common.io import atomic_write_text

STAGE = "classifier"
OOF_FILE = "oof_classifier.csv"


def bce_loss(pos_weight: list[float] | None) -> nn.Module:
    """BCE on logits with one positive weight per class."""
    if pos_weight is not None and len(pos_weight) != len(CLASS_IDS):
        raise ConfigError(f"classifier.loss.pos_weight: need {len(CLASS_IDS)} values, got {list(pos_weight)}")
    weight = None if pos_weight is None else torch.tensor([float(w) for w in pos_weight])
    return nn.BCEWithLogitsLoss(pos_weight=weight)


class _Loss(nn.Module):
    """Moves the BCE pos_weight to the logits' device on first use."""

    def __init__(self, inner: nn.BCEWithLogitsLoss) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.inner.pos_weight is not None and self.inner.pos_weight.device != logits.device:
            self.inner.to(logits.device)
        return self.inner(logits.float(), targets.float())


def write_oof(model: nn.Module, run_dir: Path, device: torch.device, *, dataset: PresenceDataset, fold: int,
              batch_size: int) -> Path:
    """``oof_classifier.csv``: ImageId, fold, prob_1..prob_4 (sigmoid) for the fold's validation images."""
    ids, logits = predict(model, dataset, device, batch_size)
    probs = torch.sigmoid(logits).numpy()
    frame = pd.DataFrame({"ImageId": ids, "fold": fold})
    for k, class_id in enumerate(CLASS_IDS):
        frame[f"prob_{class_id}"] = probs[:, k]
    return atomic_write_text(run_dir / OOF_FILE, frame.to_csv(index=False, float_format="%.6f"))


def make_stage(cfg: DictConfig) -> StageSpec:
    """Classifier StageSpec for ``cfg.fold`` from ``cfg.classifier`` and ``cfg.data`` (checks inputs first)."""
    c = cfg.classifier
    thresholds = list(c.thresholds)
    if len(thresholds) != len(CLASS_IDS):
        raise ConfigError(f"classifier.thresholds: need {len(CLASS_IDS)} values, got {thresholds}")
    model_config = to_plain(c.model)
    model = build(model_config, "classifier.model")
    dataset = load_train(cfg.data)
    train_ids, val_ids = split_ids(load_folds(cfg.data, dataset), int(cfg.fold))
    preprocess = Preprocess.from_config(c.preprocess)
    augment = build_augment(c.get("augment"), "classifier.augment", seed=int(cfg.seed))
    cache = bool(c.get("cache_images", False))
    train_set = PresenceDataset(dataset, train_ids, preprocess, augment, cache)
    val_set = PresenceDataset(dataset, val_ids, preprocess, cache=cache)
    weights = balanced_weights(dataset.labels.loc[train_ids]) if c.get("balanced_sampling") else None
    return StageSpec(
        name=STAGE, model=model, model_config=model_config, train_set=train_set, val_set=val_set,
        loss=_Loss(bce_loss(c.loss.get("pos_weight"))), new_metric=partial(ClassifierMetric, thresholds),
        monitor=str(c.monitor), mode=str(c.get("mode", "max")),
        meta={"preprocess": preprocess.to_meta(), "class_ids": list(CLASS_IDS), "thresholds": thresholds},
        param_groups=param_groups, sample_weights=weights,
        write_oof=partial(write_oof, dataset=val_set, fold=int(cfg.fold),
                          batch_size=int(cfg.trainer.get("val_batch_size") or cfg.trainer.batch_size)))
