"""The classifier stage for the engine: ``make_stage(cfg)`` (the ``stage`` config's ``_target_``) and its OOF file."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from classifier.data import PresenceDataset
from classifier.metrics import ClassifierMetric
from classifier.model import param_groups
from common.config import ConfigError, build, real_number, to_plain
from common.constants import CLASS_IDS
from common.data_setup import fold_split
from common.oof import CLASSIFIER_FILE, ClassifierOOF, write_classifier_oof
from common.preprocess import Preprocess
from common.sampling import sample_weights
from engine.augment import build_augment
from engine.loop import predict
from engine.losses import ImageBCE
from engine.settings import val_batch_size
from engine.stage import StageSpec

__all__ = ["STAGE", "ClassifierLoss", "write_oof", "make_stage"]

STAGE = "classifier"


class ClassifierLoss(ImageBCE):
    """BCE on (B, 4) logits with one positive weight per class (``engine.losses.ImageBCE``, the joint head's too)."""


def write_oof(
    model: nn.Module, run_dir: Path, device: torch.device, *, dataset: PresenceDataset, fold: int, batch_size: int
) -> Path:
    """``oof_classifier.csv`` (``common.oof``) of the fold's validation images (sigmoid probabilities)."""
    ids, logits = predict(model, dataset, device, batch_size)
    probs = torch.sigmoid(logits).numpy()
    oof = ClassifierOOF(np.array(ids, dtype=str), np.full(len(ids), fold, np.int64), probs)
    return write_classifier_oof(Path(run_dir) / CLASSIFIER_FILE, oof)


def make_stage(cfg: DictConfig) -> StageSpec:
    """Classifier StageSpec for ``cfg.fold`` from ``cfg.classifier`` and ``cfg.data`` (checks inputs first)."""
    c = cfg.classifier
    thresholds = to_plain(c.thresholds)
    if not isinstance(thresholds, list) or len(thresholds) != len(CLASS_IDS):
        raise ConfigError(f"classifier.thresholds: need {len(CLASS_IDS)} values, got {thresholds!r}")
    thresholds = [real_number(t, "classifier.thresholds", 0.0) for t in thresholds]
    model_config = to_plain(c.model)
    loss = ClassifierLoss(c.loss.get("pos_weight"))
    model = build(model_config, "classifier.model")
    dataset, train_ids, val_ids = fold_split(cfg.data, int(cfg.fold))
    preprocess = Preprocess.from_config(c.preprocess)
    augment = build_augment(c.get("augment"), "classifier.augment", seed=int(cfg.seed))
    cache = bool(c.get("cache_images", False))
    train_set = PresenceDataset(dataset, train_ids, preprocess, augment, cache)
    val_set = PresenceDataset(dataset, val_ids, preprocess, cache=cache)
    weights = sample_weights(dataset.labels.loc[train_ids], c.get("sampling"), "classifier.sampling")
    return StageSpec(
        name=STAGE,
        model=model,
        model_config=model_config,
        train_set=train_set,
        val_set=val_set,
        loss=loss,
        new_metric=partial(ClassifierMetric, thresholds),
        monitor=str(c.monitor),
        mode=str(c.get("mode", "max")),
        meta={"preprocess": preprocess.to_meta(), "class_ids": list(CLASS_IDS), "thresholds": thresholds},
        param_groups=param_groups,
        sample_weights=weights,
        write_oof=partial(write_oof, dataset=val_set, fold=int(cfg.fold), batch_size=val_batch_size(cfg.trainer)),
        outputs=(CLASSIFIER_FILE,),
    )
