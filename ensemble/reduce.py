"""Reducers over ensemble members (models x TTA): fed one probability tensor at a time, so memory
does not grow with the number of members. Default: weighted mean of probabilities."""
from __future__ import annotations

import torch

from common.errors import ConfigError

__all__ = ["Reducer", "MeanReducer", "GeometricReducer", "MaxReducer", "REDUCERS", "make_reducer"]

_EPS = 1e-6


class Reducer:
    """Accumulate weighted member probabilities; ``result()`` gives the combined probabilities."""

    def __init__(self) -> None:
        self.acc: torch.Tensor | None = None
        self.total = 0.0
        self.count = 0

    def add(self, prob: torch.Tensor, weight: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"ensemble member weight must be >= 0, got {weight}")
        value = self._map(prob) * weight if self._weighted else self._map(prob)
        self.acc = value.clone() if self.acc is None else self._combine(self.acc, value)
        self.total += weight
        self.count += 1

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch items ``index`` (dim 0) of what was added so far (gated-off images)."""
        if self.acc is not None:
            self.acc = self.acc[index]

    def result(self) -> torch.Tensor:
        if self.acc is None:
            raise ValueError("reducer got no ensemble member")
        if self._weighted and self.total <= 0:
            raise ValueError("ensemble member weights sum to 0")
        return self._finish(self.acc)

    _weighted = True

    def _map(self, prob: torch.Tensor) -> torch.Tensor:
        return prob

    def _combine(self, acc: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return acc.add_(value)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        return acc / self.total


class MeanReducer(Reducer):
    """Weighted arithmetic mean of probabilities (the default)."""


class GeometricReducer(Reducer):
    """Weighted geometric mean of probabilities (a soft AND: one confident 'no' pulls it down)."""

    def _map(self, prob: torch.Tensor) -> torch.Tensor:
        return prob.clamp_min(_EPS).log()

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        return (acc / self.total).exp()


class MaxReducer(Reducer):
    """Element-wise maximum (a soft OR; weights are ignored)."""

    _weighted = False

    def _combine(self, acc: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.maximum(acc, value, out=acc)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        return acc


REDUCERS: dict[str, type[Reducer]] = {"mean": MeanReducer, "geometric": GeometricReducer, "max": MaxReducer}


def make_reducer(name: str) -> Reducer:
    """A fresh reducer by config name (``ensemble.reducer``)."""
    if name not in REDUCERS:
        raise ConfigError(f"ensemble.reducer: unknown reducer {name!r}; choose from {sorted(REDUCERS)}")
    return REDUCERS[name]()
