"""The one training loop of steelseg. A stage (classifier, segmenter) plugs in through ``StageSpec``.

Stage interface (all a stage writes; the loop, devices, DDP, AMP, checkpoints, resume, logging are here):

* ``StageSpec.model`` is an ``nn.Module`` built from ``model_config`` (a plain dict with ``_target_``)
  through ``common.config.build``; the config is stored in every checkpoint so that
  ``engine.checkpoint.load_model`` rebuilds the network from the file alone.
* ``train_set`` / ``val_set`` are torch Datasets whose items are dicts
  ``{"image": float tensor (C, H, W), "target": tensor, "image_id": str}``; the default collate makes
  batches of them. A dataset may define ``set_seed(seed: int)``: the engine calls it at each epoch
  (and in each loader worker) so augmentation draws are a function of (seed, epoch, rank).
* ``loss(outputs, targets) -> scalar tensor``; ``outputs = model(batch["image"])``. A loss that is an
  ``nn.Module`` is moved to the engine's device with the model (its buffers, e.g. ``pos_weight``, follow).
* ``new_metric()`` returns a fresh ``EpochMetric`` per validation pass: ``update(outputs, batch)``
  per batch, ``state()`` -> dict of per-sample tensors concatenated over ranks along dim 0, then
  ``compute(state)`` -> ``{name: float}`` on every rank. ``monitor`` names the metric that picks
  the best checkpoint and drives early stopping; ``mode`` is ``"max"`` or ``"min"``.
* ``param_groups(model) -> {"backbone": [...], "head": [...]}`` names groups that get their own
  learning rate (``optimizer.lr.<name>``); without it every parameter is in group ``"head"``.
* ``sample_weights``: one weight per training item for class-balanced sampling (None: shuffle).
* ``meta``: plain values added to checkpoint meta, at least ``preprocess`` (``Preprocess.to_meta()``)
  and ``class_ids``.
* ``write_oof(model, run_dir, device) -> Path``: called once on rank 0 after training with the best
  weights loaded (eval mode, on ``device``); writes the stage's out-of-fold file(s), named in ``outputs`` (file
  names in the run folder), which are checked with the engine's own files at start-up (``check_run_folder``).

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

import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from tqdm.auto import tqdm

from common.config import ConfigError, real_number, whole_number
from common.errors import SteelsegError
from common.io import atomic_write_text, check_outputs
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, unwrap
from engine.distributed import (DistInfo, ShardSampler, WeightedShardSampler, all_or_none, barrier,
                                broadcast_buffers, gather_rows, mean_over_ranks)
from engine.optim import build_optimizer, build_scheduler, current_lrs
from engine.pretrained import check_normalisation, provenance, source_of

BEST, LAST = "checkpoints/best.pt", "checkpoints/last.pt"
METRICS_CSV, TENSORBOARD_DIR = "metrics.csv", "tensorboard"
RUN_DIR_KEY = "run folder (hydra.run.dir)"
# Keys of the run config that may change between a run and its resumption.
RESUME_FREE_KEYS = ("resume", "trainer.progress", "trainer.num_workers", "trainer.device", "trainer.threads")


class EpochMetric(Protocol):
    """Validation metric accumulated over batches and reduced over ranks."""

    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]: ...


OofWriter = Callable[[nn.Module, Path, torch.device], Path]


@dataclass
class StageSpec:
    """Everything a stage hands to the engine (see the module docstring)."""

    name: str
    model: nn.Module
    model_config: dict[str, Any]
    train_set: Dataset
    val_set: Dataset
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    new_metric: Callable[[], EpochMetric]
    monitor: str
    mode: str = "max"
    meta: dict[str, Any] = field(default_factory=dict)
    param_groups: Callable[[nn.Module], dict[str, list[nn.Parameter]]] | None = None
    sample_weights: Sequence[float] | None = None
    write_oof: OofWriter | None = None
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"{self.name}.mode: expected 'max' or 'min', got {self.mode!r}")
        if "_target_" not in self.model_config:
            raise ConfigError(f"{self.name}.model: constructor config has no _target_")
        source = source_of(self.model_config)
        if source:  # pretrained features need the inputs normalised as they were trained; record the source
            preprocess = self.meta.get("preprocess") or {}
            check_normalisation(source, preprocess.get("mean", ()), preprocess.get("std", ()),
                                f"{self.name}.preprocess")
            self.meta = {**self.meta, "weights": provenance(source, f"{self.name}.model")}
        if self.sample_weights is not None and len(self.sample_weights) != len(self.train_set):
            raise ValueError(f"{self.name}: {len(self.sample_weights)} sample weights for "
                             f"{len(self.train_set)} training items")


# (key, smallest value, null allowed) of the trainer's whole-number settings
WHOLE_NUMBER_KEYS = (("epochs", 1, False), ("batch_size", 1, False), ("val_batch_size", 1, True), ("val_every", 1, False),
                     ("samples_per_epoch", 1, True), ("num_workers", 0, False), ("accumulate", 1, False),
                     ("threads", 1, True), ("patience", 0, True))


@dataclass(frozen=True)
class TrainerSettings:
    """The ``trainer`` config group, checked."""

    epochs: int = 10
    batch_size: int = 16
    val_batch_size: int | None = None
    val_every: int = 1
    samples_per_epoch: int | None = None
    num_workers: int = 0
    accumulate: int = 1
    grad_clip: float | None = None
    amp: str | bool = "auto"
    amp_dtype: str = "auto"
    channels_last: bool = True
    threads: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    progress: bool = True

    @classmethod
    def from_config(cls, node: Any) -> "TrainerSettings":
        """The checked settings: counts are whole numbers, sizes finite numbers, switches booleans; a bad value
        (``trainer.epochs=abc``, ``1.5``, ``-1``) is a ConfigError naming its key, never a traceback mid-run."""
        node = dict(node)
        stop = dict(node.pop("early_stopping", None) or {})
        node.pop("device", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"trainer: unknown key(s) {unknown}; known: {sorted(known | {'early_stopping', 'device'})}")
        values = {**node, "patience": stop.get("patience"), "min_delta": stop.get("min_delta", 0.0)}
        for key, minimum, optional in WHOLE_NUMBER_KEYS:
            where = f"trainer.early_stopping.{key}" if key == "patience" else f"trainer.{key}"
            if key in values and values[key] is None and not optional:
                raise ConfigError(f"{where}: expected a whole number >= {minimum}, got None")
            if key in values:
                values[key] = whole_number(values[key], where, minimum, note=" or null" if optional else "")
        values["grad_clip"] = real_number(values.get("grad_clip"), "trainer.grad_clip", 0.0, note=" or null")
        values["min_delta"] = real_number(values["min_delta"], "trainer.early_stopping.min_delta", 0.0, 0.0)
        for key in ("channels_last", "progress"):
            if key in values and not isinstance(values[key], bool):
                raise ConfigError(f"trainer.{key}: expected true or false, got {values[key]!r}")
        if "amp" in values and values["amp"] not in ("auto", True, False):
            raise ConfigError(f"trainer.amp: expected auto, true or false, got {values['amp']!r}")
        settings = cls(**values)
        if settings.amp_dtype not in ("auto", "float16", "bfloat16"):
            raise ConfigError(f"trainer.amp_dtype: expected auto, float16 or bfloat16, got {settings.amp_dtype!r}")
        return settings


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
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def derive_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2 ** 31


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "set_seed"):
        info.dataset.set_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as values ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "internal": list(internal), "gauss": gauss}}
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


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       free: Sequence[str] = RESUME_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two run configs (ignoring keys allowed to change)."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in free))


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
        raise ConfigError(f"{path}: this run folder was trained with another config (keys {diff[:8]}); "
                          f"run with the original settings, another output folder, or resume=false to start over")
    state["model_state"] = payload["state_dict"]
    return state


# ---------------------------------------------------------------- loops


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 kernels on this CPU (AVX-512 BW/VL/DQ, or Arm BF16); elsewhere bf16 is emulated."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def val_batch_size(trainer: Any) -> int:
    """Images per validation batch, the stages' OOF writing too: ``val_batch_size``, else ``batch_size`` (of the
    trainer config or ``TrainerSettings``)."""
    return int(getattr(trainer, "val_batch_size", None) or trainer.batch_size)


def _amp_dtype_name(amp_dtype: str, device: torch.device, bf16_cuda: Callable[[], bool]) -> str:
    """``trainer.amp_dtype`` resolved: ``auto`` is bfloat16 (no gradient scaler) on a CUDA device that has it and on
    the CPU, float16 (with the scaler) on older GPUs."""
    if amp_dtype != "auto":
        return amp_dtype
    return "bfloat16" if device.type != "cuda" or bf16_cuda() else "float16"


def _amp_settings(settings: TrainerSettings, device: torch.device,
                  bf16_cpu: Callable[[], bool] = cpu_has_bf16,
                  bf16_cuda: Callable[[], bool] = lambda: torch.cuda.is_bf16_supported()) -> tuple[bool, torch.dtype]:
    """(autocast on?, dtype). On a CPU without oneDNN bf16, bf16 autocast is slower than float32: train in float32."""
    enabled = device.type == "cuda" if settings.amp == "auto" else bool(settings.amp)
    amp_dtype = _amp_dtype_name(settings.amp_dtype, device, bf16_cuda)
    if enabled and device.type != "cuda" and amp_dtype != "bfloat16":
        raise ConfigError(f"trainer.amp: {amp_dtype} mixed precision needs a CUDA device; on the CPU set "
                          "trainer.amp_dtype=bfloat16 (autocast on CPUs with bf16 units), or trainer.amp=auto or false")
    if enabled and device.type == "cpu" and not bf16_cpu():
        warnings.warn("trainer.amp: this CPU has no bf16 units oneDNN can use (it needs AVX-512 or Arm BF16), so "
                      "training runs in float32 instead of bfloat16 autocast; set trainer.amp=false to silence this",
                      stacklevel=2)
        enabled = False
    return enabled, getattr(torch, amp_dtype)


def _loader_options(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader settings that keep a GPU fed: pinned memory on CUDA; with workers, workers kept across epochs
    (no re-spawn per epoch) and 4 batches read ahead per worker."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def as_float(outputs: Any) -> Any:
    """Model outputs in float32: a tensor, or a tuple/list of tensors (a two-headed model's (masks, labels))."""
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(o.float() for o in outputs)
    return outputs.float()


def _inputs(batch: Mapping[str, Any], device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["image"].to(device, non_blocking=True)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["target"].to(device, non_blocking=True)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 16,
            num_workers: int = 0, amp: bool = False) -> tuple[list[str], torch.Tensor]:
    """(image ids, raw outputs on CPU in float32) of a model over a dataset, in dataset order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    ids: list[str] = []
    outputs: list[torch.Tensor] = []
    for batch in loader:
        with torch.autocast(device.type, enabled=amp):
            out = model(batch["image"].to(device))
        ids.extend(batch["image_id"])
        outputs.append(out.float().cpu())
    return ids, torch.cat(outputs) if outputs else torch.empty(0)


class Engine:
    """Trains one StageSpec in one run folder; ``fit()`` resumes, trains, checkpoints, writes OOF."""

    def __init__(self, spec: StageSpec, settings: TrainerSettings, optimizer_cfg: Any, scheduler_cfg: Any,
                 ctx: RunContext) -> None:
        self.spec, self.settings, self.ctx = spec, settings, ctx
        check_run_folder(ctx.run_dir, spec.outputs)
        self.info = ctx.info
        self.device = ctx.info.device
        self.amp, self.amp_dtype = _amp_settings(settings, self.device)
        self.channels_last = settings.channels_last  # CUDA and CPU alike (1.4x faster training on 2 CPU cores)
        if settings.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(int(settings.threads))

        model = spec.model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if isinstance(spec.loss, nn.Module):  # loss buffers (pos_weight, ...) follow the model
            spec.loss.to(self.device)
        groups = spec.param_groups(model) if spec.param_groups else {"head": list(model.parameters())}
        groups = {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
        self.optimizer = build_optimizer(groups, optimizer_cfg)
        self.train_loader, self.sampler, self.generator = self._train_loader()
        self.val_loader = DataLoader(spec.val_set, batch_size=val_batch_size(settings), sampler=ShardSampler(len(spec.val_set), self.info),
                                     **_loader_options(settings.num_workers, self.device))
        if len(self.train_loader) == 0:
            raise ConfigError(f"{spec.name}: the training set of fold {ctx.fold} is empty")
        self.steps_per_epoch = math.ceil(len(self.train_loader) / settings.accumulate)
        self.scheduler = build_scheduler(scheduler_cfg, self.optimizer, settings.epochs * self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.model = model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        self.history: list[dict[str, float]] = []
        self.best_value: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.start_epoch = 0
        self.finished = False

    # -- data

    def _train_loader(self) -> tuple[DataLoader, Any, torch.Generator]:
        spec, s, info = self.spec, self.settings, self.info
        if spec.sample_weights is not None or s.samples_per_epoch:
            # A fixed number of draws per epoch makes the training length independent of the dataset's size.
            weights = spec.sample_weights if spec.sample_weights is not None else [1.0] * len(spec.train_set)
            sampler: Any = WeightedShardSampler(weights, info, self.ctx.seed, s.samples_per_epoch)
        else:
            sampler = DistributedSampler(spec.train_set, num_replicas=info.world_size, rank=info.rank,
                                         shuffle=True, seed=self.ctx.seed, drop_last=False)
        generator = torch.Generator()
        # A last batch of one item breaks BatchNorm in train mode: drop it (only then).
        per_rank = len(sampler)
        lone_last = per_rank > s.batch_size and per_rank % s.batch_size == 1
        loader = DataLoader(spec.train_set, batch_size=s.batch_size, sampler=sampler, worker_init_fn=_seed_worker,
                            generator=generator, drop_last=lone_last, **_loader_options(s.num_workers, self.device))
        return loader, sampler, generator

    def _start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        seed = derive_seed(self.ctx.seed, epoch, self.info.rank)
        self.generator.manual_seed(seed)
        if self.settings.num_workers == 0 and hasattr(self.spec.train_set, "set_seed"):
            self.spec.train_set.set_seed(seed)

    # -- state

    def _restore(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.history = [dict(row) for row in state["history"]]
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs, self.finished = state["bad_epochs"], state["finished"]
        self.start_epoch = state["epoch"] + 1

    def _train_state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": self.history,
                "best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "finished": self.finished, "config": self.ctx.config}

    def _meta(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {**self.spec.meta, "stage": self.spec.name, "fold": self.ctx.fold, "epoch": epoch,
                "metrics": metrics, "monitor": self.spec.monitor, "mode": self.spec.mode, "seed": self.ctx.seed,
                "config": self.ctx.config}

    # -- loops

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        """(mean training loss over all ranks, images trained on over all ranks) of one epoch."""
        s, model = self.settings, self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, count, n = 0.0, 0, len(self.train_loader)
        bar = tqdm(self.train_loader, desc=f"{self.spec.name} fold {self.ctx.fold} epoch {epoch}", leave=False,
                   disable=not (s.progress and self.info.is_main), dynamic_ncols=True)
        for i, batch in enumerate(bar):
            images, targets = _inputs(batch, self.device, self.channels_last)
            step_now = (i + 1) % s.accumulate == 0 or i + 1 == n
            sync = nullcontext() if step_now or not self.info.distributed else self.model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    loss = self.spec.loss(model(images), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.spec.name}: loss is {loss.item()} at epoch {epoch}, batch {i}; "
                                             f"lower optimizer.lr or set trainer.grad_clip")
                self.scaler.scale(loss / s.accumulate).backward()
            if step_now:
                if s.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            total += loss.item() * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{total / count:.4f}")
        return mean_over_ranks(total, count, self.info), count * self.info.world_size

    def _speed(self, seconds: float, images: int) -> dict[str, float]:
        """Training-phase figures of an epoch for metrics.csv: wall seconds, images/s over all ranks and, on
        CUDA, the peak memory this rank allocated (GiB)."""
        out = {"train_time_s": seconds, "train_images_per_s": images / seconds if seconds > 0 else float("nan")}
        if self.device.type == "cuda":
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        return out

    @torch.no_grad()
    def validate(self) -> tuple[float, dict[str, float]]:
        """(validation loss, stage metrics) of the current weights over the whole validation set."""
        model = unwrap(self.model)
        broadcast_buffers(model, self.info)
        model.eval()
        metric = self.spec.new_metric()
        total, count = 0.0, 0
        for batch in self.val_loader:
            images, targets = _inputs(batch, self.device, self.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                outputs = model(images)
                loss = self.spec.loss(outputs, targets)
            metric.update(as_float(outputs), batch)
            total += loss.item() * len(images)
            count += len(images)
        metrics = metric.compute(gather_rows(metric.state(), self.info))
        if self.spec.monitor not in metrics:
            raise ConfigError(f"{self.spec.name}.monitor: {self.spec.monitor!r} is not among the metrics "
                              f"{sorted(metrics)}")
        return mean_over_ranks(total, count, self.info), metrics

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        delta = self.settings.min_delta
        return value > self.best_value + delta if self.spec.mode == "max" else value < self.best_value - delta

    def _write_logs(self, writer: Any, row: dict[str, float]) -> None:
        atomic_write_text(self.ctx.run_dir / METRICS_CSV, pd.DataFrame(self.history).to_csv(index=False))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(key, value, int(row["epoch"]))
        writer.flush()

    def fit(self) -> FitResult:
        """Train (or continue) to the configured epochs or early stop, then write the OOF file."""
        state = read_resume_state(self.ctx, self.spec.name)
        if state is not None:
            self._restore(state)
            if self.info.is_main:
                print(f"[{self.spec.name}] resuming {self.ctx.run_dir} at epoch {self.start_epoch}"
                      + (" (already finished)" if self.finished else ""), flush=True)
        run_dir, s, info = self.ctx.run_dir, self.settings, self.info
        writer = None
        if info.is_main and not self.finished:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=self.start_epoch)
        try:
            for epoch in range(self.start_epoch, s.epochs):
                if self.finished:
                    break
                started = time.perf_counter()
                self._start_epoch(epoch)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                train_loss, train_images = self._train_epoch(epoch)
                speed = self._speed(time.perf_counter() - started, train_images)
                last = epoch + 1 == s.epochs
                validated = last or (epoch + 1) % int(s.val_every) == 0
                val_loss, metrics, value, improved = float("nan"), {}, float("nan"), False
                if validated:
                    val_loss, metrics = self.validate()
                    value = float(metrics[self.spec.monitor])
                    improved = self._improved(value)
                    if improved:
                        self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
                    else:
                        self.bad_epochs += 1
                stopped_early = bool(s.patience) and self.bad_epochs >= int(s.patience)
                self.finished = all_or_none(stopped_early or last, info)
                row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **metrics,
                       **current_lrs(self.optimizer), "time_s": time.perf_counter() - started, **speed}
                self.history.append(row)
                if info.is_main:
                    meta = self._meta(epoch, {"val_loss": val_loss, **metrics})
                    if improved:
                        save_checkpoint(run_dir / BEST, self.model, self.spec.model_config, self.spec.name, meta)
                    save_checkpoint(run_dir / LAST, self.model, self.spec.model_config, self.spec.name, meta,
                                    extra={"train_state": self._train_state(epoch)})
                    self._write_logs(writer, row)
                    print(f"[{self.spec.name}] fold {self.ctx.fold} epoch {epoch}: train_loss {train_loss:.4f} "
                          + (f"val_loss {val_loss:.4f} {self.spec.monitor} {value:.4f}" if validated else
                             "(not validated)") + (" *" if improved else "")
                          + f" [{row['train_images_per_s']:.1f} img/s]", flush=True)
                barrier(info)
        finally:
            if writer is not None:
                writer.close()
        oof_path = self._write_oof()
        best = load_checkpoint(run_dir / BEST, self.spec.name)["meta"]
        stopped_early = bool(self.history) and int(self.history[-1]["epoch"]) + 1 < s.epochs
        return FitResult(run_dir, run_dir / BEST, run_dir / LAST, int(best["epoch"]), dict(best["metrics"]),
                         len(self.history), stopped_early, oof_path, self.spec.monitor)

    def _write_oof(self) -> Path | None:
        """Rank 0 predicts the validation images with the best weights through the stage's writer."""
        path = None
        if self.spec.write_oof is not None and self.info.is_main:
            payload = load_checkpoint(self.ctx.run_dir / BEST, self.spec.name)
            model = unwrap(self.model)
            model.load_state_dict(payload["state_dict"])
            model.eval()
            path = self.spec.write_oof(model, self.ctx.run_dir, self.device)
        barrier(self.info)
        return path


def fit(spec: StageSpec, trainer_cfg: Any, optimizer_cfg: Any, scheduler_cfg: Any, ctx: RunContext) -> FitResult:
    """Train a stage in ``ctx.run_dir`` (resuming from ``checkpoints/last.pt`` when present)."""
    return Engine(spec, TrainerSettings.from_config(trainer_cfg), optimizer_cfg, scheduler_cfg, ctx).fit()
