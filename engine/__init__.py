"""The one training loop of steelseg: devices, AMP, DDP via torchrun, optimisers and schedules, checkpoints,
resume, logging. It knows no stage: a stage hands it a ``StageSpec``. Imports only ``common``.

The names below are re-exported lazily (PEP 562), so ``import engine.checkpoint`` (inference) does not pull
in albumentations or the training loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "engine.augment": ("Augment", "build_augment"),
    "engine.checkpoint": (
        "CheckpointError",
        "build_model",
        "load_checkpoint",
        "load_model",
        "model_allowlist",
        "allow_model_factory",
        "save_checkpoint",
        "unwrap",
    ),
    "engine.distributed": ("DistInfo", "setup", "teardown"),
    "engine.losses": ("ImageBCE",),
    "engine.loop": ("Engine", "as_float", "fit", "predict"),
    "engine.settings": ("TrainerSettings", "val_batch_size"),
    "engine.stage": ("EpochMetric", "StageSpec"),
    "engine.state": ("BEST", "LAST", "METRICS_CSV", "FitResult", "RunContext", "seed_everything"),
    "engine.pretrained": ("PACKAGES", "WeightsPackage", "is_package_source", "load_into_timm", "provenance"),
    "engine.run": ("train",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
