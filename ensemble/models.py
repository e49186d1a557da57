"""Find and load ensemble members: checkpoint files or training output folders, any number per stage."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from common.checkpoint import CheckpointError, load_model

STAGES = ("classifier", "segmenter")
CHECKPOINT_GLOB = "**/checkpoints/best.pt"


@dataclass
class Member:
    """One loaded model with its preprocessing, ensemble weight and provenance."""

    model: nn.Module
    stage: str
    path: Path
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    weight: float = 1.0
    fold: Any = None
    size: tuple[int, int] | None = None  # network input (height, width); None = the image size

    @property
    def preprocess_key(self) -> tuple:
        return self.channels, self.mean, self.std, self.size


def expand(entry: str | Path, stage: str) -> list[Path]:
    """A checkpoint file as is; a folder -> its ``**/checkpoints/best.pt`` files (sorted); else an error."""
    path = Path(entry)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob(CHECKPOINT_GLOB))
        if not found:
            raise CheckpointError(f"{path}: no {CHECKPOINT_GLOB} in this {stage} output folder")
        return found
    raise CheckpointError(f"{path}: {stage} checkpoint or output folder not found")


def _preprocess(payload: Mapping[str, Any], path: Path):
    """(channels, mean, std, size) from ``meta.preprocess`` (the training stage's Preprocess.to_meta)."""
    pre = (payload.get("meta") or {}).get("preprocess") or {}
    channels = int(pre.get("channels", 3))
    mean = tuple(float(v) for v in pre.get("mean", (0.0,) * channels))
    std = tuple(float(v) for v in pre.get("std", (1.0,) * channels))
    if channels not in (1, 3) or len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise CheckpointError(f"{path}: bad meta.preprocess {pre} (channels 1|3, mean/std of that length, std > 0)")
    size = pre.get("size")
    if size is not None and (len(size) != 2 or min(int(v) for v in size) <= 0):
        raise CheckpointError(f"{path}: bad meta.preprocess.size {size} (expected [height, width] or null)")
    return channels, mean, std, None if size is None else (int(size[0]), int(size[1]))


def load_members(entries: Iterable[str | Path | Mapping[str, Any]], stage: str,
                 channels_last: bool = True) -> list[Member]:
    """Load every checkpoint an entry names; entries are paths or ``{path: ..., weight: ...}`` mappings."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    members: list[Member] = []
    for entry in entries or []:
        weight = 1.0
        if isinstance(entry, Mapping):
            if "path" not in entry:
                raise CheckpointError(f"checkpoints.{stage}: entry {dict(entry)} has no 'path'")
            weight = float(entry.get("weight", 1.0))
            entry = entry["path"]
        for path in expand(entry, stage):
            model, payload = load_model(path, stage)
            channels, mean, std, size = _preprocess(payload, path)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            members.append(Member(model.eval(), stage, path, mean, std, channels, weight,
                                  (payload.get("meta") or {}).get("fold"), size))
    return members
