"""The ``trainer`` config group checked (``TrainerSettings``), and the mixed-precision choice it implies per device."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from common.config import ConfigError, check_known, real_number, whole_number

__all__ = ["TrainerSettings", "WHOLE_NUMBER_KEYS", "amp_settings", "cpu_has_bf16", "val_batch_size"]


# (key, smallest value, null allowed) of the trainer's whole-number settings
WHOLE_NUMBER_KEYS = (
    ("epochs", 1, False),
    ("batch_size", 1, False),
    ("val_batch_size", 1, True),
    ("val_every", 1, False),
    ("samples_per_epoch", 1, True),
    ("num_workers", 0, False),
    ("accumulate", 1, False),
    ("threads", 1, True),
    ("patience", 0, True),
)


@dataclass(frozen=True)
class TrainerSettings:
    """The ``trainer`` config group, checked."""

    epochs: int = 10
    batch_size: int = 16
    val_batch_size: int | None = None
    val_every: int = 1
    samples_per_epoch: int | None = None
    num_workers: int = 0
    accumulate: int = 1
    grad_clip: float | None = None
    amp: str | bool = "auto"
    amp_dtype: str = "auto"
    channels_last: bool = True
    threads: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    progress: bool = True

    @classmethod
    def from_config(cls, node: Any) -> TrainerSettings:
        """The checked settings: counts are whole numbers, sizes finite numbers, switches booleans; a bad value
        (``trainer.epochs=abc``, ``1.5``, ``-1``) is a ConfigError naming its key, never a traceback mid-run."""
        node = dict(node)
        check_known(node, [*cls.__dataclass_fields__, "early_stopping", "device"], "trainer")
        stop = dict(node.pop("early_stopping", None) or {})
        node.pop("device", None)
        values = {**node, "patience": stop.get("patience"), "min_delta": stop.get("min_delta", 0.0)}
        for key, minimum, optional in WHOLE_NUMBER_KEYS:
            where = f"trainer.early_stopping.{key}" if key == "patience" else f"trainer.{key}"
            if key in values and values[key] is None and not optional:
                raise ConfigError(f"{where}: expected a whole number >= {minimum}, got None")
            if key in values:
                values[key] = whole_number(values[key], where, minimum, note=" or null" if optional else "")
        values["grad_clip"] = real_number(values.get("grad_clip"), "trainer.grad_clip", 0.0, note=" or null")
        values["min_delta"] = real_number(values["min_delta"], "trainer.early_stopping.min_delta", 0.0, 0.0)
        for key in ("channels_last", "progress"):
            if key in values and not isinstance(values[key], bool):
                raise ConfigError(f"trainer.{key}: expected true or false, got {values[key]!r}")
        if "amp" in values and values["amp"] not in ("auto", True, False):
            raise ConfigError(f"trainer.amp: expected auto, true or false, got {values['amp']!r}")
        settings = cls(**values)
        if settings.amp_dtype not in ("auto", "float16", "bfloat16"):
            raise ConfigError(f"trainer.amp_dtype: expected auto, float16 or bfloat16, got {settings.amp_dtype!r}")
        return settings


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 kernels on this CPU (AVX-512 BW/VL/DQ, or Arm BF16); elsewhere bf16 is emulated."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def val_batch_size(trainer: Any) -> int:
    """Images per validation batch, the stages' OOF writing too: ``val_batch_size``, else ``batch_size`` (of the
    trainer config or ``TrainerSettings``)."""
    return int(getattr(trainer, "val_batch_size", None) or trainer.batch_size)


def _amp_dtype_name(amp_dtype: str, device: torch.device, bf16_cuda: Callable[[], bool]) -> str:
    """``trainer.amp_dtype`` resolved: ``auto`` is bfloat16 (no gradient scaler) on a CUDA device that has it and on
    the CPU, float16 (with the scaler) on older GPUs."""
    if amp_dtype != "auto":
        return amp_dtype
    return "bfloat16" if device.type != "cuda" or bf16_cuda() else "float16"


def amp_settings(
    settings: TrainerSettings,
    device: torch.device,
    bf16_cpu: Callable[[], bool] = cpu_has_bf16,
    bf16_cuda: Callable[[], bool] = lambda: torch.cuda.is_bf16_supported(),
) -> tuple[bool, torch.dtype]:
    """(autocast on?, dtype). On a CPU without oneDNN bf16, bf16 autocast is slower than float32: train in float32."""
    enabled = device.type == "cuda" if settings.amp == "auto" else bool(settings.amp)
    amp_dtype = _amp_dtype_name(settings.amp_dtype, device, bf16_cuda)
    if enabled and device.type != "cuda" and amp_dtype != "bfloat16":
        raise ConfigError(
            f"trainer.amp: {amp_dtype} mixed precision needs a CUDA device; on the CPU set "
            "trainer.amp_dtype=bfloat16 (autocast on CPUs with bf16 units), or trainer.amp=auto or false"
        )
    if enabled and device.type == "cpu" and not bf16_cpu():
        warnings.warn(
            "trainer.amp: this CPU has no bf16 units oneDNN can use (it needs AVX-512 or Arm BF16), so "
            "training runs in float32 instead of bfloat16 autocast; set trainer.amp=false to silence this",
            stacklevel=2,
        )
        enabled = False
    return enabled, getattr(torch, amp_dtype)
