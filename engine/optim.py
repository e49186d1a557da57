"""Optimiser with one learning rate per named parameter group, and per-step LR schedules.

Config (group ``optimizer``)::

    lr: {backbone: 3.0e-4, head: 1.0e-3}       # one entry per group the stage names
    optim: {_target_: torch.optim.AdamW, _partial_: true, weight_decay: 1.0e-2}

Schedules (group ``scheduler``) are ``_partial_`` nodes called as ``factory(optimizer, total_steps)``
and stepped once per optimiser step; ``cosine_with_warmup``, ``one_cycle`` and ``constant`` are here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from common.config import ConfigError, build, call, real_number


def learning_rate(value: Any, key: str) -> float:
    """A finite learning rate > 0 (a negative one trains uphill with exit 0; text is a typo), or an error naming key."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number such as 1e-3, got {value!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{key}: a learning rate must be a finite number > 0, got {value!r}")
    return lr


def build_optimizer(groups: Mapping[str, list[nn.Parameter]], node: Any, key: str = "optimizer") -> Optimizer:
    """The configured optimiser over the named parameter groups, each with its own ``lr``."""
    lrs = dict(node.get("lr") or {})
    missing = [name for name, params in groups.items() if params and name not in lrs]
    if missing:
        raise ConfigError(f"{key}.lr: no learning rate for parameter group(s) {missing}; have {sorted(lrs)}")
    param_groups = [
        {"params": params, "lr": learning_rate(lrs[name], f"{key}.lr.{name}"), "name": name}
        for name, params in groups.items()
        if params
    ]
    if not param_groups:
        raise ConfigError(f"{key}: the model has no trainable parameters")
    factory = build(node.get("optim"), f"{key}.optim")
    return call(factory, f"{key}.optim", param_groups)


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup: float = 0.05, min_lr_ratio: float = 0.01
) -> LRScheduler:
    """Linear warm-up over ``warmup`` (fraction of all steps, or a step count if >= 1), then cosine to
    ``min_lr_ratio``."""
    warmup = real_number(warmup, "scheduler.warmup", 0.0)
    min_lr_ratio = real_number(min_lr_ratio, "scheduler.min_lr_ratio", 0.0)
    warmup_steps = int(warmup) if warmup >= 1 else int(round(warmup * total_steps))
    warmup_steps = min(max(warmup_steps, 0), max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> LRScheduler:
    """torch OneCycleLR peaking at each group's configured lr."""
    pct_start = real_number(pct_start, "scheduler.pct_start", 0.0)
    div_factor = real_number(div_factor, "scheduler.div_factor", 1.0)  # a divisor of the peak
    final_div_factor = real_number(final_div_factor, "scheduler.final_div_factor", 1.0)
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=max(total_steps, 1),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def constant(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """No schedule: the configured learning rates throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)


def build_scheduler(node: Any, optimizer: Optimizer, total_steps: int, key: str = "scheduler") -> LRScheduler:
    """Call the configured ``_partial_`` schedule factory with the optimiser and the run's step count."""
    factory = build(node, key)
    if not callable(factory):
        raise ConfigError(f"{key}: expected a _partial_ schedule factory, got {type(factory).__name__}")
    return call(factory, key, optimizer, total_steps=total_steps)


def current_lrs(optimizer: Optimizer) -> dict[str, float]:
    """Learning rate of each named parameter group (for logging)."""
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


__all__ = [
    "learning_rate",
    "build_optimizer",
    "build_scheduler",
    "cosine_with_warmup",
    "one_cycle",
    "constant",
    "current_lrs",
]
