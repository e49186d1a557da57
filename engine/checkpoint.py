"""Checkpoints that carry their own constructor config and load with ``weights_only=True``.

File format (a plain dict saved with ``torch.save``):
``{"format": 1, "stage": str, "model": {"_target_": ..., **kwargs}, "state_dict": {...},
"meta": {...}}`` where ``model`` rebuilds the network through ``common.config.build`` and ``meta``
holds plain values (epoch, metrics, preprocessing, fold, run config).

A checkpoint is data, never code: it loads with ``weights_only=True`` and its ``model._target_`` (and every
nested ``_target_``) must be one of the model factories on ``MODEL_FACTORIES``, checked before anything is
imported or called; interpolations (``${...}``) and Hydra keys other than ``_target_`` are refused, and the
result must be a torch module. A factory of your own is added with ``allow_model_factory("pkg.module.function")``.
A checkpoint is written atomically; a full disk or a read-only folder is a ``common.io.WriteError`` naming
the file.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config import build
from common.errors import ConfigError, SteelsegError
from common.io import atomic_open

FORMAT_VERSION = 1
# The project's model factories and the timm / smp ones behind them: the only callables a checkpoint may name.
MODEL_FACTORIES: set[str] = {
    "classifier.model.create_classifier",
    "segmenter.model.create_segmenter",
    "segmenter.model.create_joint",
    "timm.create_model",
    "segmentation_models_pytorch.create_model",
}

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FACTORIES",
    "CheckpointError",
    "allow_model_factory",
    "model_allowlist",
    "unwrap",
    "load_failure",
    "read_torch_file",
    "save_checkpoint",
    "load_checkpoint",
    "build_model",
    "load_model",
]


class CheckpointError(SteelsegError, ValueError):
    """A checkpoint file that is missing, unreadable, of another stage or format."""


def allow_model_factory(target: str) -> None:
    """Let checkpoints name another model factory (a dotted path to a function of your own package)."""
    if not isinstance(target, str) or target.count(".") < 1:
        raise ValueError(f"expected a dotted path such as 'mypkg.models.create', got {target!r}")
    MODEL_FACTORIES.add(target)


def model_allowlist() -> frozenset[str]:
    """The model factories a checkpoint may name."""
    return frozenset(MODEL_FACTORIES)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model behind DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(
    path: Path | str,
    model: nn.Module,
    model_config: dict,
    stage: str,
    meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model weights plus the config that rebuilds it, atomically (temp file + rename)."""
    if "_target_" not in model_config:
        raise CheckpointError(f"{path}: model config has no _target_: {model_config}")
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload = {
        "format": FORMAT_VERSION,
        "stage": stage,
        "model": dict(model_config),
        "state_dict": state,
        "meta": dict(meta or {}),
    }
    if extra:
        payload.update(extra)
    buffer = io.BytesIO()  # serialise first: a full disk is then an OSError of the write, not a torch error
    torch.save(payload, buffer)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
    return Path(path)


def load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line. torch's own message advises loading with
    ``weights_only=False``, which would run code from the file: it is never repeated."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds Python objects ({found.group(1)}), not only tensors and plain values; steelseg reads "
            "weights files as data only: save the weights (a state dict of tensors) with torch.save"
        )
    if isinstance(exc, EOFError) or "central directory" in text or "PytorchStreamReader" in text:
        return "the file is empty, cut short or damaged (not a whole PyTorch file): copy it again or retrain"
    first = next((line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line), "")
    detail = "" if isinstance(exc, pickle.UnpicklingError) else f" ({type(exc).__name__}: {first[:160]})"
    return f"not a PyTorch weights file{detail}: give the file torch.save wrote"


def read_torch_file(path: Path | str) -> Any:
    """``torch.load`` of a file as data only (``weights_only=True``, on the CPU); a file torch cannot read so is a
    CheckpointError naming it (``load_failure``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load: {load_failure(exc)}") from exc


def load_checkpoint(path: Path | str, stage: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its format and stage."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or "model" not in payload:
        raise CheckpointError(f"{path}: not a steelseg checkpoint (format {FORMAT_VERSION})")
    if stage is not None and payload.get("stage") != stage:
        raise CheckpointError(f"{path}: checkpoint of stage {payload.get('stage')!r}, expected {stage!r}")
    return payload


def build_model(payload: dict[str, Any], path: Path | str = "<checkpoint>") -> nn.Module:
    """Rebuild the network from the config stored in a checkpoint and load its weights strictly."""
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: the checkpoint's 'model' and 'state_dict' entries must be mappings")
    config = dict(payload["model"])
    # Weights come from the checkpoint, never from a hub or a local pretrained file.
    for key in (
        "pretrained",
        "encoder_weights",
        "pretrained_path",
        "weights_path",
        "checkpoint_path",
        "pretrained_cfg_overlay",
    ):
        if key in config:
            config[key] = None if key != "pretrained" else False
    try:
        model = build(config, key="model", allow=model_allowlist())
    except ConfigError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{path}: model._target_ {config['_target_']!r} gave a {type(model).__name__}, not a torch module"
        )
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model config: {exc}") from exc
    return model.eval()


def load_model(path: Path | str, stage: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Checkpoint file -> (eval-mode model on CPU, payload)."""
    payload = load_checkpoint(path, stage)
    return build_model(payload, path), payload
