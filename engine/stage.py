"""The stage interface: everything a stage (classifier, segmenter, joint) hands to the training loop.

What a stage writes (the loop, devices, DDP, AMP, checkpoints, resume and logging are ``engine.loop``'s):

* ``StageSpec.model`` is an ``nn.Module`` built from ``model_config`` (a plain dict with ``_target_``)
  through ``common.config.build``; the config is stored in every checkpoint so that
  ``engine.checkpoint.load_model`` rebuilds the network from the file alone.
* ``train_set`` / ``val_set`` are torch Datasets whose items are dicts
  ``{"image": float tensor (C, H, W), "target": tensor, "image_id": str}``; the default collate makes
  batches of them. A dataset may define ``set_seed(seed: int)``: the engine calls it at each epoch
  (and in each loader worker) so augmentation draws are a function of (seed, epoch, rank).
* ``loss(outputs, targets) -> scalar tensor``; ``outputs = model(batch["image"])``. A loss that is an
  ``nn.Module`` is moved to the engine's device with the model (its buffers, e.g. ``pos_weight``, follow).
* ``new_metric()`` returns a fresh ``EpochMetric`` per validation pass: ``update(outputs, batch)``
  per batch, ``state()`` -> dict of per-sample tensors concatenated over ranks along dim 0, then
  ``compute(state)`` -> ``{name: float}`` on every rank. ``monitor`` names the metric that picks
  the best checkpoint and drives early stopping; ``mode`` is ``"max"`` or ``"min"``.
* ``param_groups(model) -> {"backbone": [...], "head": [...]}`` names groups that get their own
  learning rate (``optimizer.lr.<name>``); without it every parameter is in group ``"head"``.
* ``sample_weights``: one weight per training item for class-balanced sampling (None: shuffle).
* ``meta``: plain values added to checkpoint meta, at least ``preprocess`` (``Preprocess.to_meta()``)
  and ``class_ids``.
* ``write_oof(model, run_dir, device) -> Path``: called once on rank 0 after training with the best
  weights loaded (eval mode, on ``device``); writes the stage's out-of-fold file(s), named in ``outputs`` (file
  names in the run folder), which are checked with the engine's own files at start-up (``check_run_folder``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from common.config import ConfigError
from engine.pretrained import check_normalisation, provenance, source_of

__all__ = ["EpochMetric", "OofWriter", "StageSpec"]


class EpochMetric(Protocol):
    """Validation metric accumulated over batches and reduced over ranks."""

    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]: ...


OofWriter = Callable[[nn.Module, Path, torch.device], Path]


@dataclass
class StageSpec:
    """Everything a stage hands to the engine (see the module docstring)."""

    name: str
    model: nn.Module
    model_config: dict[str, Any]
    train_set: Dataset
    val_set: Dataset
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    new_metric: Callable[[], EpochMetric]
    monitor: str
    mode: str = "max"
    meta: dict[str, Any] = field(default_factory=dict)
    param_groups: Callable[[nn.Module], dict[str, list[nn.Parameter]]] | None = None
    sample_weights: Sequence[float] | None = None
    write_oof: OofWriter | None = None
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"{self.name}.mode: expected 'max' or 'min', got {self.mode!r}")
        if "_target_" not in self.model_config:
            raise ConfigError(f"{self.name}.model: constructor config has no _target_")
        source = source_of(self.model_config)
        if source:  # pretrained features need the inputs normalised as they were trained; record the source
            preprocess = self.meta.get("preprocess") or {}
            check_normalisation(
                source, preprocess.get("mean", ()), preprocess.get("std", ()), f"{self.name}.preprocess"
            )
            self.meta = {**self.meta, "weights": provenance(source, f"{self.name}.model")}
        if self.sample_weights is not None and len(self.sample_weights) != len(self.train_set):
            raise ValueError(
                f"{self.name}: {len(self.sample_weights)} sample weights for {len(self.train_set)} training items"
            )
