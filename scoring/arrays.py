"""NumPy-or-torch dispatch for the ensemble steps both runtimes share (TTA flips, reducers, post-processing).

The PyTorch predictor hands these steps tensors (on the GPU in GPU inference), the ONNX runtime hands them
NumPy arrays; each step asks ``namespace(x)`` for the module whose functions it calls. No module-level torch
import: torch is looked up only for an object that is already a tensor.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["is_torch", "namespace", "copy", "to_numpy", "take"]


def is_torch(x: Any) -> bool:
    """True for a torch tensor (checked by type, without importing torch)."""
    return type(x).__module__.startswith("torch")


def namespace(x: Any) -> ModuleType:
    """``torch`` for a tensor, ``numpy`` for anything else."""
    if is_torch(x):
        return importlib.import_module("torch")
    return np


def copy(x: Any) -> Any:
    """A new array/tensor with the values of ``x`` (a view of an input must not be accumulated into)."""
    return x.clone() if is_torch(x) else np.array(x, copy=True)


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array on the CPU."""
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def take(x: Any, index: np.ndarray) -> Any:
    """Rows ``index`` (dim 0) of ``x``, on the device ``x`` lives on."""
    if is_torch(x):
        import torch

        return x[torch.as_tensor(index, device=x.device)]
    return x[index]
