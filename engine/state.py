"""A run folder and its state: file names, start-up checks, seeds and RNG states, and resuming from ``last.pt``.

Run folder (``RunContext.run_dir``, the Hydra output dir): ``checkpoints/best.pt`` (best by monitor),
``checkpoints/last.pt`` (latest epoch; also carries the resume state under ``train_state``, in the same
atomic write), ``metrics.csv`` (one row per epoch: losses, metrics, learning rates, ``time_s``, and the training
phase's ``train_time_s``, ``train_images_per_s`` and, on CUDA, ``gpu_peak_gib``), ``tensorboard/`` event
files, and the OOF file.
Resume: when ``last.pt`` exists and ``resume`` is on, model, optimiser, scheduler, AMP scaler, epoch,
early-stopping state, history and torch/numpy/python RNG states are restored and training continues
with the next epoch. Data order and augmentation are re-derived from (seed, epoch, rank) at every epoch,
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from common.config import ConfigError
from common.errors import SteelsegError
from common.io import check_outputs
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.distributed import DistInfo

__all__ = [
    "BEST",
    "LAST",
    "METRICS_CSV",
    "TENSORBOARD_DIR",
    "RUN_DIR_KEY",
    "RESUME_FREE_KEYS",
    "RunContext",
    "FitResult",
    "check_run_folder",
    "seed_everything",
    "derive_seed",
    "seed_worker",
    "rng_state",
    "set_rng_state",
    "config_differences",
    "read_resume_state",
]


BEST, LAST = "checkpoints/best.pt", "checkpoints/last.pt"
METRICS_CSV, TENSORBOARD_DIR = "metrics.csv", "tensorboard"
RUN_DIR_KEY = "run folder (hydra.run.dir)"
# Keys of the run config that may change between a run and its resumption.
RESUME_FREE_KEYS = ("resume", "trainer.progress", "trainer.num_workers", "trainer.device", "trainer.threads")


@dataclass(frozen=True)
class RunContext:
    """Where and as what this run executes."""

    run_dir: Path
    fold: int
    seed: int
    info: DistInfo
    config: dict[str, Any] = field(default_factory=dict)
    resume: bool = True


@dataclass
class FitResult:
    """What a finished fit leaves behind."""

    run_dir: Path
    best_path: Path
    last_path: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_done: int
    stopped_early: bool
    oof_path: Path | None
    monitor: str = ""


def check_run_folder(run_dir: Path | str, outputs: Sequence[str] = ()) -> Path:
    """Fail at start-up, not after an epoch, when the run folder or a file the run writes in it cannot be written
    (``checkpoints/last.pt`` a directory, ``tensorboard`` a file, a read-only folder...); ``outputs``: the stage's."""
    return check_outputs(run_dir, RUN_DIR_KEY, files=(BEST, LAST, METRICS_CSV, *outputs), folders=(TENSORBOARD_DIR,))


# ---------------------------------------------------------------- seeding and RNG state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) once at start-up."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "set_seed"):
        info.dataset.set_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as values ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- resume


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], free: Sequence[str] = RESUME_FREE_KEYS
) -> list[str]:
    """Dotted keys whose values differ between two run configs (ignoring keys allowed to change)."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(
        k for k in set(a) | set(b) if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in free)
    )


def read_resume_state(ctx: RunContext, stage: str) -> dict[str, Any] | None:
    """The ``train_state`` of ``last.pt`` when this run should continue, else None."""
    path = ctx.run_dir / LAST
    if not ctx.resume or not path.is_file():
        return None
    try:
        payload = load_checkpoint(path, stage)
    except CheckpointError as exc:  # a damaged or foreign last.pt: say how to start over
        raise CheckpointError(f"{exc}; to start this run over, delete {path} or set resume=false") from exc
    state = payload.get("train_state")
    if not isinstance(state, dict):
        raise SteelsegError(f"{path}: checkpoint has no resume state; start over with resume=false")
    diff = config_differences(state.get("config", {}), ctx.config)
    if diff:
        raise ConfigError(
            f"{path}: this run folder was trained with another config (keys {diff[:8]}); "
            f"run with the original settings, another output folder, or resume=false to start over"
        )
    state["model_state"] = payload["state_dict"]
    return state
