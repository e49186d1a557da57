"""The one training loop of steelseg: ``Engine`` trains one ``engine.stage.StageSpec`` in one run folder.

The stage interface is ``engine.stage``; the trainer settings and AMP choice ``engine.settings``; the run folder,
seeds and resume state ``engine.state``. Here: data loaders, the epoch loop, validation over ranks, early
stopping, checkpoints and logs, and the OOF file written with the best weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from common.config import ConfigError
from common.io import atomic_write_text
from engine.checkpoint import load_checkpoint, save_checkpoint, unwrap
from engine.distributed import (
    ShardSampler,
    WeightedShardSampler,
    all_or_none,
    barrier,
    broadcast_buffers,
    gather_rows,
    mean_over_ranks,
)
from engine.optim import build_optimizer, build_scheduler, current_lrs
from engine.settings import TrainerSettings, amp_settings, val_batch_size
from engine.stage import StageSpec
from engine.state import (
    BEST,
    LAST,
    METRICS_CSV,
    TENSORBOARD_DIR,
    FitResult,
    RunContext,
    check_run_folder,
    derive_seed,
    read_resume_state,
    rng_state,
    seed_worker,
    set_rng_state,
)


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
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 16,
    num_workers: int = 0,
    amp: bool = False,
) -> tuple[list[str], torch.Tensor]:
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

    def __init__(
        self, spec: StageSpec, settings: TrainerSettings, optimizer_cfg: Any, scheduler_cfg: Any, ctx: RunContext
    ) -> None:
        self.spec, self.settings, self.ctx = spec, settings, ctx
        check_run_folder(ctx.run_dir, spec.outputs)
        self.info = ctx.info
        self.device = ctx.info.device
        self.amp, self.amp_dtype = amp_settings(settings, self.device)
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
        self.val_loader = DataLoader(
            spec.val_set,
            batch_size=val_batch_size(settings),
            sampler=ShardSampler(len(spec.val_set), self.info),
            **_loader_options(settings.num_workers, self.device),
        )
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
            sampler = DistributedSampler(
                spec.train_set,
                num_replicas=info.world_size,
                rank=info.rank,
                shuffle=True,
                seed=self.ctx.seed,
                drop_last=False,
            )
        generator = torch.Generator()
        # A last batch of one item breaks BatchNorm in train mode: drop it (only then).
        per_rank = len(sampler)
        lone_last = per_rank > s.batch_size and per_rank % s.batch_size == 1
        loader = DataLoader(
            spec.train_set,
            batch_size=s.batch_size,
            sampler=sampler,
            worker_init_fn=seed_worker,
            generator=generator,
            drop_last=lone_last,
            **_loader_options(s.num_workers, self.device),
        )
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
        return {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "finished": self.finished,
            "config": self.ctx.config,
        }

    def _meta(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            **self.spec.meta,
            "stage": self.spec.name,
            "fold": self.ctx.fold,
            "epoch": epoch,
            "metrics": metrics,
            "monitor": self.spec.monitor,
            "mode": self.spec.mode,
            "seed": self.ctx.seed,
            "config": self.ctx.config,
        }

    # -- loops

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        """(mean training loss over all ranks, images trained on over all ranks) of one epoch."""
        s, model = self.settings, self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, count, n = 0.0, 0, len(self.train_loader)
        bar = tqdm(
            self.train_loader,
            desc=f"{self.spec.name} fold {self.ctx.fold} epoch {epoch}",
            leave=False,
            disable=not (s.progress and self.info.is_main),
            dynamic_ncols=True,
        )
        for i, batch in enumerate(bar):
            images, targets = _inputs(batch, self.device, self.channels_last)
            step_now = (i + 1) % s.accumulate == 0 or i + 1 == n
            sync = nullcontext() if step_now or not self.info.distributed else self.model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    loss = self.spec.loss(model(images), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{self.spec.name}: loss is {loss.item()} at epoch {epoch}, batch {i}; "
                        f"lower optimizer.lr or set trainer.grad_clip"
                    )
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
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
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
            raise ConfigError(
                f"{self.spec.name}.monitor: {self.spec.monitor!r} is not among the metrics {sorted(metrics)}"
            )
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
                print(
                    f"[{self.spec.name}] resuming {self.ctx.run_dir} at epoch {self.start_epoch}"
                    + (" (already finished)" if self.finished else ""),
                    flush=True,
                )
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
                row = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    **metrics,
                    **current_lrs(self.optimizer),
                    "time_s": time.perf_counter() - started,
                    **speed,
                }
                self.history.append(row)
                if info.is_main:
                    meta = self._meta(epoch, {"val_loss": val_loss, **metrics})
                    if improved:
                        save_checkpoint(run_dir / BEST, self.model, self.spec.model_config, self.spec.name, meta)
                    save_checkpoint(
                        run_dir / LAST,
                        self.model,
                        self.spec.model_config,
                        self.spec.name,
                        meta,
                        extra={"train_state": self._train_state(epoch)},
                    )
                    self._write_logs(writer, row)
                    print(
                        f"[{self.spec.name}] fold {self.ctx.fold} epoch {epoch}: train_loss {train_loss:.4f} "
                        + (
                            f"val_loss {val_loss:.4f} {self.spec.monitor} {value:.4f}"
                            if validated
                            else "(not validated)"
                        )
                        + (" *" if improved else "")
                        + f" [{row['train_images_per_s']:.1f} img/s]",
                        flush=True,
                    )
                barrier(info)
        finally:
            if writer is not None:
                writer.close()
        oof_path = self._write_oof()
        best = load_checkpoint(run_dir / BEST, self.spec.name)["meta"]
        stopped_early = bool(self.history) and int(self.history[-1]["epoch"]) + 1 < s.epochs
        return FitResult(
            run_dir,
            run_dir / BEST,
            run_dir / LAST,
            int(best["epoch"]),
            dict(best["metrics"]),
            len(self.history),
            stopped_early,
            oof_path,
            self.spec.monitor,
        )

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
