"""The one rule for a ``device`` setting (inference, the ensemble OOF, training, the GPU check), torch-free.

``auto`` is the first CUDA device when torch sees one, else the CPU; ``cpu``, ``cuda`` and ``cuda:<index>`` are
taken as asked. A CUDA device that torch cannot see is a user error naming the key, never a quiet CPU run.
"""

from __future__ import annotations

import re
from typing import Any

from common.errors import ConfigError

__all__ = ["DEVICE_CHOICES", "choose_device"]

DEVICE_CHOICES = "cpu, cuda, cuda:<index> or auto"


def choose_device(name: Any, cuda_count: int, key: str = "device", local_rank: int | None = None) -> str:
    """The torch device name ``key`` asks for, given the CUDA devices torch sees (``torch.cuda.device_count()``);
    ``local_rank`` (torchrun) picks the index of a bare ``cuda`` / ``auto``."""
    text = str(name).strip()
    if text == "auto":
        text = "cuda" if cuda_count > 0 else "cpu"
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"{key}: expected {DEVICE_CHOICES}, got {name!r}")
    if cuda_count <= 0:
        raise ConfigError(f"{key}: {text!r} requested but torch sees no CUDA device; set {key}=cpu or {key}=auto")
    index = int(match.group(1)) if match.group(1) is not None else local_rank
    if index is None:
        return "cuda"
    if index >= cuda_count:
        asked = text if match.group(1) is not None else f"cuda (local rank {index})"
        raise ConfigError(
            f"{key}: {asked} requested but torch sees {cuda_count} CUDA device(s), cuda:0 to cuda:{cuda_count - 1}"
        )
    return f"cuda:{index}"
