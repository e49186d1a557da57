"""Reducers over ensemble members (models x TTA): fed one probability array at a time, so memory
does not grow with the number of members. Default: weighted mean of probabilities.

Torch tensors (the PyTorch predictor) and NumPy arrays (the ONNX runtime) alike, through ``scoring.arrays``.
"""

from __future__ import annotations

from typing import Any

from common.errors import ConfigError
from scoring.arrays import copy, namespace, take

__all__ = ["Reducer", "MeanReducer", "GeometricReducer", "MaxReducer", "REDUCERS", "make_reducer"]

_EPS = 1e-6


class Reducer:
    """Accumulate weighted member probabilities; ``result()`` gives the combined probabilities."""

    def __init__(self) -> None:
        self.acc: Any = None
        self.total = 0.0
        self.count = 0

    def add(self, prob: Any, weight: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"ensemble member weight must be >= 0, got {weight}")
        value = self._map(prob) * weight if self._weighted else self._map(prob)
        self.acc = copy(value) if self.acc is None else self._combine(self.acc, value)
        self.total += weight
        self.count += 1

    def select(self, index: Any) -> None:
        """Keep only the batch items ``index`` (dim 0) of what was added so far (gated-off images)."""
        if self.acc is not None:
            self.acc = take(self.acc, index)

    def result(self) -> Any:
        if self.acc is None:
            raise ValueError("reducer got no ensemble member")
        if self._weighted and self.total <= 0:
            raise ValueError("ensemble member weights sum to 0")
        return self._finish(self.acc)

    _weighted = True

    def _map(self, prob: Any) -> Any:
        return prob

    def _combine(self, acc: Any, value: Any) -> Any:
        acc += value
        return acc

    def _finish(self, acc: Any) -> Any:
        return acc / self.total


class MeanReducer(Reducer):
    """Weighted arithmetic mean of probabilities (the default)."""


class GeometricReducer(Reducer):
    """Weighted geometric mean of probabilities (a soft AND: one confident 'no' pulls it down)."""

    def _map(self, prob: Any) -> Any:
        xp = namespace(prob)
        return xp.log(xp.clip(prob, _EPS, None))

    def _finish(self, acc: Any) -> Any:
        return namespace(acc).exp(acc / self.total)


class MaxReducer(Reducer):
    """Element-wise maximum (a soft OR; weights are ignored)."""

    _weighted = False

    def _combine(self, acc: Any, value: Any) -> Any:
        return namespace(acc).maximum(acc, value, out=acc)

    def _finish(self, acc: Any) -> Any:
        return acc


REDUCERS: dict[str, type[Reducer]] = {"mean": MeanReducer, "geometric": GeometricReducer, "max": MaxReducer}


def make_reducer(name: str) -> Reducer:
    """A fresh reducer by config name (``ensemble.reducer``)."""
    if name not in REDUCERS:
        raise ConfigError(f"ensemble.reducer: unknown reducer {name!r}; choose from {sorted(REDUCERS)}")
    return REDUCERS[name]()
