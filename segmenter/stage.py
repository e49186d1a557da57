"""The segmenter stage for the engine: ``make_stage(cfg)`` (the ``stage`` config's ``_target_``) and its OOF file."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from common.config import ConfigError, build, to_plain, whole_number
from common.constants import CLASS_IDS
from common.data_setup import fold_split
from common.oof import (
    CLASSIFIER_FILE,
    SEGMENTER_FILE,
    ClassifierOOF,
    OOFAccumulator,
    write_classifier_oof,
    write_segmenter_oof,
)
from common.preprocess import Preprocess
from common.sampling import sample_weights
from engine.checkpoint import load_checkpoint, unwrap
from engine.settings import val_batch_size
from engine.stage import StageSpec
from segmenter.data import SegmentationDataset, build_train_augment, check_crop, select_training_ids
from segmenter.metrics import SegmenterMetric, to_full_size, truth_of
from segmenter.model import param_groups

__all__ = [
    "STAGE",
    "write_mask_oof",
    "build_loss",
    "init_weights",
    "sample_weights",
    "mask_settings",
    "mask_meta",
    "mask_stage_spec",
    "make_stage",
]

STAGE = "segmenter"


@torch.no_grad()
def write_mask_oof(
    model: nn.Module,
    run_dir: Path,
    device: torch.device,
    *,
    dataset: SegmentationDataset,
    fold: int,
    batch_size: int,
    bins: int,
) -> Path:
    """The OOF files of a mask stage's validation images, streamed batch by batch in one pass: ``oof_segmenter.npz``
    (mask histograms, see ``common.oof``) and, for a model that also returns class logits (the joint model),
    ``oof_classifier.csv``."""
    model.eval()
    acc = OOFAccumulator(fold, bins)
    ids: list[str] = []
    probs: list[np.ndarray] = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(batch["image"].to(device))
        mask_logits, label_logits = out if isinstance(out, tuple) else (out, None)
        truth = truth_of(batch, device)
        acc.add_batch(batch["image_id"], to_full_size(torch.sigmoid(mask_logits.float()), truth.shape[-2:]), truth)
        if label_logits is not None:
            ids.extend(batch["image_id"])
            probs.append(torch.sigmoid(label_logits.float()).cpu().numpy())
    if ids:
        rows = ClassifierOOF(np.array(ids, dtype=str), np.full(len(ids), fold, np.int64), np.concatenate(probs))
        write_classifier_oof(Path(run_dir) / CLASSIFIER_FILE, rows)
    return write_segmenter_oof(Path(run_dir) / SEGMENTER_FILE, acc.result())


def build_loss(node: DictConfig, key: str = "segmenter.loss") -> nn.Module:
    """The configured loss (a CombinedLoss node, or any loss module ``(logits, target) -> scalar``)."""
    loss = build(node, key)
    if not isinstance(loss, nn.Module):
        raise ConfigError(f"{key}: {node._target_} did not build a torch module")
    return loss


def init_weights(model: nn.Module, model_config: dict, path: str, stage: str = STAGE) -> None:
    """Start from the weights of an earlier checkpoint (second training phase) built from the same config."""
    payload = load_checkpoint(path, stage)
    ignore = ("encoder_weights", "pretrained_path")
    old = {k: v for k, v in payload["model"].items() if k not in ignore}
    new = {k: v for k, v in model_config.items() if k not in ignore}
    if old != new:
        raise ConfigError(f"{stage}.init_from: {path} holds another model ({old}), this run builds {new}")
    unwrap(model).load_state_dict(payload["state_dict"], strict=True)


def fold_sets(
    cfg: DictConfig, node: DictConfig, stage: str, preprocess: Preprocess, crop: tuple[int, int] | None
) -> tuple[pd.DataFrame, list[str], SegmentationDataset, SegmentationDataset]:
    """(labels, training ids, training set, validation set) of ``cfg.fold``: one rule for the segmenter and joint
    stages (``node`` is their config node: clean_ratio, augment, crop_mode, cache_images)."""
    dataset, train_ids, val_ids = fold_split(cfg.data, int(cfg.fold))
    train_ids = select_training_ids(dataset.labels, train_ids, node.get("clean_ratio"), int(cfg.seed), stage)
    augment = build_train_augment(
        crop, node.get("augment"), int(cfg.seed), str(node.get("crop_mode", "random")), key=f"{stage}.augment"
    )
    cache = bool(node.get("cache_images", False))
    train_set = SegmentationDataset(dataset, train_ids, preprocess, augment, cache, stage)
    val_set = SegmentationDataset(
        dataset, val_ids, preprocess, cache=cache, stage=stage, full_truth=preprocess.size is not None
    )
    return dataset.labels, train_ids, train_set, val_set


def mask_settings(
    node: DictConfig, stage: str, metric: type
) -> tuple[dict, Preprocess, tuple[int, int] | None, int, partial]:
    """(model config, preprocessing, crop, histogram bins, metric factory) of a mask stage's config ``node``
    (segmenter, joint), checked before any data is read."""
    preprocess = Preprocess.from_config(node.preprocess)
    crop = check_crop(node.get("crop"), f"{stage}.crop", preprocess.size)
    bins = whole_number(node.validation.bins, f"{stage}.validation.bins", 2)
    new_metric = partial(metric, node.validation.threshold, node.validation.min_area, bins)
    new_metric()  # checks threshold / min_area
    return to_plain(node.model), preprocess, crop, bins, new_metric


def mask_meta(
    preprocess: Preprocess, validation: DictConfig, crop: tuple[int, int] | None, init_from: str | None
) -> dict[str, Any]:
    """Checkpoint meta of a stage that predicts masks (segmenter, joint): preprocessing, validation rule, crop."""
    return {
        "preprocess": preprocess.to_meta(),
        "class_ids": list(CLASS_IDS),
        "threshold": to_plain(validation.threshold),
        "min_area": to_plain(validation.min_area),
        "crop": None if crop is None else list(crop),
        "init_from": init_from,
    }


def mask_stage_spec(
    cfg: DictConfig,
    node: DictConfig,
    stage: str,
    model: nn.Module,
    loss: nn.Module,
    settings: tuple,
    write_oof: Any,
    outputs: tuple[str, ...],
) -> StageSpec:
    """The StageSpec of a mask stage (segmenter, joint) on ``cfg.fold``: its data, sampling, checkpoint meta and
    OOF writer; ``settings`` is its ``mask_settings``."""
    model_config, preprocess, crop, bins, metric = settings
    labels, train_ids, train_set, val_set = fold_sets(cfg, node, stage, preprocess, crop)
    return StageSpec(
        name=stage,
        model=model,
        model_config=model_config,
        train_set=train_set,
        val_set=val_set,
        loss=loss,
        new_metric=metric,
        param_groups=param_groups,
        monitor=str(node.monitor),
        mode=str(node.get("mode", "max")),
        sample_weights=sample_weights(labels.loc[train_ids], node.get("sampling"), f"{stage}.sampling"),
        meta=mask_meta(preprocess, node.validation, crop, node.get("init_from")),
        write_oof=partial(
            write_oof, dataset=val_set, fold=int(cfg.fold), batch_size=val_batch_size(cfg.trainer), bins=bins
        ),
        outputs=outputs,
    )


def make_stage(cfg: DictConfig) -> StageSpec:
    """Segmenter StageSpec for ``cfg.fold`` from ``cfg.segmenter`` and ``cfg.data``; bad settings stop here."""
    s = cfg.segmenter
    settings = mask_settings(s, STAGE, SegmenterMetric)
    model_config = settings[0]
    loss = build_loss(s.loss)
    model = build(model_config, "segmenter.model")
    if s.get("init_from"):
        init_weights(model, model_config, str(s.init_from))
    return mask_stage_spec(cfg, s, STAGE, model, loss, settings, write_mask_oof, (SEGMENTER_FILE,))
