"""From the composed ``train.yaml`` config to one training run of the stage that ``cfg.stage`` names.

``cfg.stage`` is a ``_partial_`` node whose ``_target_`` is the stage's factory
``make_stage(cfg: DictConfig) -> StageSpec`` (e.g. ``classifier.stage.make_stage``), so adding a stage
is a config file (``configs/stage/<name>.yaml``), not code here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from common.config import ConfigError, build, to_plain, whole_number
from engine.distributed import barrier, setup, teardown
from engine.loop import fit
from engine.settings import TrainerSettings
from engine.stage import StageSpec
from engine.state import FitResult, RunContext, check_run_folder, seed_everything


def run_dir_from_hydra() -> Path:
    """The Hydra output folder of the current run (train.py never changes the working directory)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain values (stored in checkpoints, compared on resume)."""
    plain = to_plain(cfg)
    plain.pop("hydra", None)
    return plain


def make_stage(cfg: DictConfig) -> StageSpec:
    """Build the StageSpec with the factory named by ``cfg.stage``."""
    factory = build(cfg.get("stage"), "stage")
    if not callable(factory):
        raise ConfigError("stage: expected a _partial_ factory node (make_stage(cfg) -> StageSpec)")
    spec = factory(cfg)
    if not isinstance(spec, StageSpec):
        raise ConfigError(f"stage: {cfg.stage._target_} returned {type(spec).__name__}, not a StageSpec")
    return spec


def train(cfg: DictConfig, run_dir: Path | str | None = None) -> FitResult:
    """Train one fold of one stage; outputs go to ``run_dir`` (default: the Hydra output folder)."""
    run_dir = check_run_folder(Path(run_dir) if run_dir is not None else run_dir_from_hydra())
    if cfg.get("fold") is None:
        raise ConfigError("fold: set the fold to train, e.g. fold=0 (or -m fold=0,1,2,3,4)")
    whole_number(cfg.fold, "fold", note=", e.g. fold=0 (or -m fold=0,1,2,3,4)")
    whole_number(cfg.get("seed"), "seed", default=0)
    TrainerSettings.from_config(cfg.trainer)  # before the stage reads trainer.batch_size or any data
    info = setup(str(cfg.trainer.get("device", "auto")))
    try:
        seed_everything(int(cfg.seed))
        # Rank 0 builds first: the stage may generate the synthetic data or the folds file.
        spec = make_stage(cfg) if info.is_main else None
        barrier(info)
        if spec is None:
            spec = make_stage(cfg)
        ctx = RunContext(
            run_dir=run_dir,
            fold=int(cfg.fold),
            seed=int(cfg.seed),
            info=info,
            config=run_config(cfg),
            resume=bool(cfg.get("resume", True)),
        )
        result = fit(spec, cfg.trainer, cfg.optimizer, cfg.scheduler, ctx)
    finally:
        teardown()
    if info.is_main:
        summary = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items() if k == spec.monitor)
        print(
            f"[{spec.name}] fold {cfg.fold}: best epoch {result.best_epoch} ({summary}); outputs in {run_dir}",
            flush=True,
        )
    return result
