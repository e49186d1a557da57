"""The one training loop of steelseg: devices, AMP, DDP via torchrun, optimisers and schedules, checkpoints,
resume, logging. It knows no stage: a stage hands it a ``StageSpec``. Imports only ``common``."""
from engine.augment import Augment, build_augment
from engine.checkpoint import (CheckpointError, build_model, load_checkpoint, load_model, model_allowlist,
                               save_checkpoint, unwrap)
from engine.distributed import DistInfo, setup, teardown
from engine.loop import (BEST, LAST, METRICS_CSV, EpochMetric, FitResult, RunContext, StageSpec, TrainerSettings, fit,
                         predict, seed_everything)
from engine.run import train

__all__ = ["Augment", "build_augment", "CheckpointError", "build_model", "load_checkpoint", "load_model",
           "model_allowlist", "save_checkpoint", "unwrap", "DistInfo", "setup", "teardown", "BEST", "LAST",
           "METRICS_CSV", "EpochMetric", "FitResult", "RunContext", "StageSpec", "TrainerSettings", "fit", "predict",
           "seed_everything", "train"]
