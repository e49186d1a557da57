"""The segmenter stage for the engine: ``make_stage(cfg)`` (the ``stage`` config's ``_target_``) and its OOF file."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from common.config import ConfigError, build, to_plain, whole_number
from common.constants import CLASS_IDS
from common.data_setup import fold_split
from common.oof import SEGMENTER_FILE, OOFAccumulator, write_segmenter_oof
from common.preprocess import Preprocess
from common.sampling import sample_weights
from engine.checkpoint import load_checkpoint, unwrap
from engine.stage import StageSpec
from segmenter.data import SegmentationDataset, build_train_augment, check_crop, select_training_ids
from segmenter.metrics import SegmenterMetric, to_full_size, truth_of
from segmenter.model import param_groups

__all__ = ["STAGE", "write_segmenter_oof_file", "build_loss", "init_weights", "sample_weights", "make_stage"]

STAGE = "segmenter"


@torch.no_grad()
def write_segmenter_oof_file(model: nn.Module, run_dir: Path, device: torch.device, *, dataset: SegmentationDataset,
                             fold: int, batch_size: int, bins: int) -> Path:
    """``oof_segmenter.npz`` (see ``common.oof``) of the fold's validation images, streamed batch by batch."""
    model.eval()
    acc = OOFAccumulator(fold, bins)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        truth = truth_of(batch, device)
        probs = to_full_size(torch.sigmoid(model(batch["image"].to(device)).float()), truth.shape[-2:])
        acc.add_batch(batch["image_id"], probs, truth)
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


def fold_sets(cfg: DictConfig, node: DictConfig, stage: str, preprocess: Preprocess,
              crop: tuple[int, int] | None) -> tuple[pd.DataFrame, list[str], SegmentationDataset, SegmentationDataset]:
    """(labels, training ids, training set, validation set) of ``cfg.fold``: one rule for the segmenter and joint
    stages (``node`` is their config node: clean_ratio, augment, crop_mode, cache_images)."""
    dataset, train_ids, val_ids = fold_split(cfg.data, int(cfg.fold))
    train_ids = select_training_ids(dataset.labels, train_ids, node.get("clean_ratio"), int(cfg.seed), stage)
    augment = build_train_augment(crop, node.get("augment"), int(cfg.seed), str(node.get("crop_mode", "random")),
                                  key=f"{stage}.augment")
    cache = bool(node.get("cache_images", False))
    train_set = SegmentationDataset(dataset, train_ids, preprocess, augment, cache, stage)
    val_set = SegmentationDataset(dataset, val_ids, preprocess, cache=cache, stage=stage,
                                  full_truth=preprocess.size is not None)
    return dataset.labels, train_ids, train_set, val_set


def make_stage(cfg: DictConfig) -> StageSpec:
    """Segmenter StageSpec for ``cfg.fold`` from ``cfg.segmenter`` and ``cfg.data``; bad settings stop here."""
    s = cfg.segmenter
    model_config = to_plain(s.model)
    preprocess = Preprocess.from_config(s.preprocess)
    crop = check_crop(s.get("crop"), "segmenter.crop", preprocess.size)
    validation = s.validation
    bins = whole_number(validation.bins, "segmenter.validation.bins", 2)
    metric = partial(SegmenterMetric, validation.threshold, validation.min_area, bins)
    metric()  # checks threshold / min_area before any data is read
    loss = build_loss(s.loss)
    model = build(model_config, "segmenter.model")
    if s.get("init_from"):
        init_weights(model, model_config, str(s.init_from))

    labels, train_ids, train_set, val_set = fold_sets(cfg, s, STAGE, preprocess, crop)
    val_bs = int(cfg.trainer.get("val_batch_size") or cfg.trainer.batch_size)
    return StageSpec(
        name=STAGE, model=model, model_config=model_config, train_set=train_set, val_set=val_set,
        loss=loss, new_metric=metric, param_groups=param_groups, monitor=str(s.monitor), mode=str(s.get("mode", "max")),
        sample_weights=sample_weights(labels.loc[train_ids], s.get("sampling"), "segmenter.sampling"),
        meta={"preprocess": preprocess.to_meta(), "class_ids": list(CLASS_IDS),
              "threshold": to_plain(validation.threshold), "min_area": to_plain(validation.min_area),
              "crop": None if crop is None else list(crop),
              "init_from": s.get("init_from")},
        write_oof=partial(write_segmenter_oof_file, dataset=val_set, fold=int(cfg.fold), batch_size=val_bs,
                          bins=bins),
        outputs=(SEGMENTER_FILE,))

