"""Device choice and the small amount of torch.distributed the engine needs (torchrun / DDP).

A single process is a world of size 1: every helper here works without ``init_process_group``.
Under ``torchrun`` (``WORLD_SIZE`` > 1) ``setup`` joins the group: NCCL with one GPU per local
rank when CUDA is used, gloo on CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

from common.devices import choose_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs: its rank in the world and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 is the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``trainer.device`` by ``common.devices.choose_device``: ``auto`` / ``cuda`` -> cuda:<local_rank> when torch
    sees CUDA; ``cpu`` forces the CPU; an unavailable CUDA device is a ConfigError."""
    return torch.device(choose_device(name, torch.cuda.device_count(), "trainer.device", local_rank))


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not torch_dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def teardown() -> None:
    """Leave the process group (no-op in a single process)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch_dist.barrier()


def mean_over_ranks(total: float, count: int, info: DistInfo) -> float:
    """Global mean of per-rank sums (e.g. loss summed over samples) weighted by sample counts."""
    if info.distributed:
        t = torch.tensor([float(total), float(count)], dtype=torch.float64)
        if info.device.type == "cuda":
            t = t.to(info.device)
        torch_dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def all_or_none(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is True on any rank (e.g. a stop signal)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu")
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank, so all ranks evaluate one model."""
    if info.distributed:
        for buffer in module.buffers():
            torch_dist.broadcast(buffer.data, src=0)


def gather_rows(state: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Concatenate per-rank tensors along dim 0 (ordered by rank); every rank gets the result."""
    if not info.distributed:
        return state
    parts: list[dict[str, torch.Tensor] | None] = [None] * info.world_size
    torch_dist.all_gather_object(parts, {k: v.detach().cpu() for k, v in state.items()})
    return {k: torch.cat([p[k] for p in parts if p is not None]) for k in state}


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every item exactly once over all ranks (no padding), for evaluation."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedShardSampler(Sampler[int]):
    """Draws with replacement by per-item weights (class-balanced sampling), split over ranks.

    Each epoch draws ``ceil(num_samples / world) * world`` indices (``num_samples`` default: one per item)
    from a generator seeded by (seed, epoch), identical on every rank, and hands rank r the draws r, r + world,
    ...; like DistributedSampler it needs ``set_epoch`` before each epoch.
    """

    def __init__(self, weights: Sequence[float], info: DistInfo, seed: int = 0, num_samples: int | None = None) -> None:
        self.weights = torch.as_tensor(list(weights), dtype=torch.float64)
        if self.weights.ndim != 1 or len(self.weights) == 0 or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("sample weights must be a non-empty 1-d sequence of non-negative values, not all zero")
        self.info, self.seed, self.epoch = info, seed, 0
        total = len(self.weights) if num_samples is None else int(num_samples)
        self.per_rank = math.ceil(total / info.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.per_rank * self.info.world_size, replacement=True, generator=g)
        return iter(draws[self.info.rank :: self.info.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank
