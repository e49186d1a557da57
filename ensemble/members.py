"""Find and load ensemble members: checkpoint files or training output folders, any number per kind.

Kinds: ``classifier`` (image-level class logits), ``segmenter`` (per-pixel class logits) and ``joint`` (one
two-headed network giving both, as ``(mask_logits, label_logits)``). Each member carries the
``Preprocess`` its checkpoint was trained with (``meta.preprocess``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import ConfigError
from common.preprocess import Preprocess
from engine.checkpoint import CheckpointError, load_model
from ensemble.core import KINDS, MemberInfo

__all__ = ["KINDS", "CHECKPOINT_GLOB", "Member", "expand", "entry_files", "load_members", "expand_runs", "discover"]

CHECKPOINT_GLOB = "**/checkpoints/best.pt"


@dataclass
class Member(MemberInfo):
    """One loaded torch model with its preprocessing, ensemble weight and provenance (``path``: the checkpoint)."""

    model: nn.Module = field(kw_only=True)


def expand(entry: str | Path, kind: str) -> list[Path]:
    """A checkpoint file as is; a folder -> its ``**/checkpoints/best.pt`` files (sorted); else an error."""
    path = Path(entry)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob(CHECKPOINT_GLOB))
        if not found:
            raise CheckpointError(f"{path}: no {CHECKPOINT_GLOB} in this {kind} output folder (checkpoints.{kind})")
        return found
    raise CheckpointError(f"{path}: {kind} checkpoint or output folder not found (checkpoints.{kind})")


def entry_files(entry: str | Path | Mapping[str, Any], kind: str) -> tuple[list[Path], float]:
    """(checkpoint files, ensemble weight) of one ``checkpoints.<kind>`` entry: a path or ``{path:, weight:}``."""
    if not isinstance(entry, Mapping):
        return expand(entry, kind), 1.0
    if "path" not in entry:
        raise CheckpointError(f"checkpoints.{kind}: entry {dict(entry)} has no 'path'")
    weight = float(entry.get("weight", 1.0))
    if not weight >= 0:
        raise CheckpointError(f"checkpoints.{kind}: weight {entry.get('weight')!r} must be >= 0")
    return expand(entry["path"], kind), weight


def load_members(
    entries: Iterable[str | Path | Mapping[str, Any]] | None, kind: str, channels_last: bool = True
) -> list[Member]:
    """Load every checkpoint an entry names; entries are paths or ``{path: ..., weight: ...}`` mappings."""
    if kind not in KINDS:
        raise ValueError(f"unknown member kind {kind!r}")
    members: list[Member] = []
    for entry in entries or []:
        paths, weight = entry_files(entry, kind)
        for path in paths:
            model, payload = load_model(path, kind)
            meta = payload.get("meta") or {}
            try:
                preprocess = Preprocess.from_meta(meta.get("preprocess"))
            except ConfigError as exc:
                raise CheckpointError(f"{path}: bad meta.preprocess: {exc}") from exc
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            members.append(Member(kind, path, preprocess, weight, meta.get("fold"), model=model.eval()))
    return members


def expand_runs(patterns: Iterable[str | Path], key: str = "checkpoints.runs") -> list[Path]:
    """Training folders from paths or glob patterns (``outputs/train/*/demo``); a pattern matching nothing is an
    error naming ``key``."""
    import glob

    out: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            raise CheckpointError(
                f"{key}: {text!r} matches no training folder or checkpoint (train first, or set "
                f"{key}=[...] / checkpoints.classifier|segmenter|joint=[...])"
            )
        out.extend(Path(m) for m in matches)
    return out


def discover(runs: Iterable[str | Path]) -> dict[str, list[Path]]:
    """Checkpoints (``**/checkpoints/best.pt``) under training folders, grouped by the kind each file records."""
    from engine.checkpoint import load_checkpoint

    found: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    for run in runs:
        for path in expand(run, "run"):
            stage = load_checkpoint(path).get("stage")
            if stage not in found:
                raise CheckpointError(f"{path}: checkpoint of unknown kind {stage!r} (expected one of {list(KINDS)})")
            found[stage].append(path)
    return found
