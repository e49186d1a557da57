"""Tiny checkpoints and image folders for the ensemble tests (built directly with timm / smp)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from common.config import build
from common.rle import encode
from engine.checkpoint import save_checkpoint

PRE = {"channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
CLS_CONFIG = {"_target_": "timm.create_model", "model_name": "test_resnet", "pretrained": False, "num_classes": 4}
SEG_CONFIG = {
    "_target_": "segmentation_models_pytorch.create_model",
    "arch": "unet",
    "encoder_name": "tu-test_resnet",
    "encoder_weights": None,
    "classes": 4,
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
}


def save_tiny(path: Path, stage: str, fold: int = 0, seed: int = 0, size: list[int] | None = None) -> Path:
    """A randomly initialised tiny model of ``stage`` saved as a steelseg checkpoint (input ``size`` or full)."""
    torch.manual_seed(seed)
    config = CLS_CONFIG if stage == "classifier" else SEG_CONFIG
    model = build(dict(config))
    meta = {"preprocess": {**PRE, "size": size}, "fold": fold, "epoch": 1, "metrics": {}, "class_ids": [1, 2, 3, 4]}
    return save_checkpoint(path, model, config, stage, meta)


def run_folder(root: Path, stage: str, folds: int = 2) -> Path:
    """A multirun-like folder with ``<k>/checkpoints/best.pt`` per fold."""
    for k in range(folds):
        save_tiny(root / f"{k}_fold={k}" / "checkpoints" / "best.pt", stage, fold=k, seed=k)
    return root


def image_folder(root: Path, n: int = 3, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    """``n`` grey 256x1600 JPEGs with a bright rectangle of class 1 or 3 on some; returns folder and truth rows."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = rng.integers(60, 90, (256, 1600), dtype=np.uint8)
        name = f"img{i:03d}.jpg"
        if i % 2 == 0:
            mask = np.zeros((256, 1600), np.uint8)
            mask[40:120, 100 + 50 * i : 400 + 50 * i] = 1
            image[mask == 1] = 200
            rows.append((name, 1 + 2 * (i % 4 == 0), encode(mask)))
        cv2.imwrite(str(root / name), image)
    return root, pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
