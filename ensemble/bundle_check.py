"""Bundle values that load but would fail or lie at the first request, refused when the bundle is loaded.

A member weight of 1e308 overflows the weighted sum (every probability NaN, every answer "no defect"), all-zero
weights divide by zero on every request, and a ``preprocess.size`` other than the ONNX graph's input fails on
every request. Torch-free: the ONNX runtime calls it (``ensemble.onnx_runtime.load_bundle``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.errors import SteelsegError

__all__ = ["MIN_WEIGHT", "MAX_WEIGHT", "BundleValueError", "member_weight", "check_members"]

MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6  # relative weights; beyond these float32 sums underflow or overflow


class BundleValueError(SteelsegError, ValueError):
    """A bundle value that loads but cannot work; the message names the bundle file and the key."""


def member_weight(value: Any, where: str) -> float:
    """A member weight: 0 (the member is off) or a finite number in [MIN_WEIGHT, MAX_WEIGHT]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BundleValueError(f"{where}: weight {value!r} must be a finite number")
    if value != 0 and not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise BundleValueError(
            f"{where}: weight {value!r} must be 0 or between {MIN_WEIGHT:g} and {MAX_WEIGHT:g} "
            "(weights are relative: scale them all)"
        )
    return float(value)


def _static(dims: Sequence[Any]) -> list[int | None]:
    """ONNX dims with symbolic ones (``'batch'``) as None."""
    return [d if isinstance(d, int) else None for d in dims]


def _graph_problem(member: Any) -> str | None:
    """What is wrong between a member's preprocess and its ONNX graph's input/outputs, or None."""
    size = tuple(member.preprocess.size or IMAGE_SHAPE)
    expected = [None, member.preprocess.channels, *size]
    got = _static(member.session.get_inputs()[0].shape)
    if len(got) != 4 or any(g is not None and g != e for g, e in zip(got, expected)):
        return (
            f"preprocess (channels {member.preprocess.channels}, size {list(size)}) does not match the ONNX graph "
            f"input {member.session.get_inputs()[0].shape}; re-export the bundle"
        )
    for output in member.session.get_outputs():
        dims = _static(output.shape)
        wanted = [None, len(CLASS_IDS), *IMAGE_SHAPE] if output.name == "masks" else [None, len(CLASS_IDS)]
        if len(dims) != len(wanted) or any(d is not None and d != w for d, w in zip(dims, wanted)):
            return f"ONNX output {output.name!r} has shape {output.shape}, the runtime needs {['batch', *wanted[1:]]}"
    return None


def check_members(members: Sequence[Any], where: str) -> None:
    """Refuse members whose graphs do not take their preprocess's input, and heads whose weights sum to 0."""
    for i, member in enumerate(members):
        problem = _graph_problem(member)
        if problem:
            raise BundleValueError(f"{where}: members[{i}] ({member.name}): {problem}")
    for head, kinds in (("masks", ("segmenter", "joint")), ("labels", ("classifier", "joint"))):
        chosen = [m for m in members if m.kind in kinds]
        if chosen and not sum(m.weight for m in chosen) > 0:
            raise BundleValueError(
                f"{where}: members[].weight: the {head} members {[m.name for m in chosen]} all "
                "have weight 0; give at least one a weight > 0"
            )
