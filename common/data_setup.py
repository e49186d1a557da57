"""Turn the ``data`` config into a checked dataset and its folds (generating synthetic data on first use)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from common.annotations import read_annotations
from common.dataset import SteelDataset, dataset_from
from common.folds import make_folds, read_folds, write_folds


def ensure_synthetic(data_cfg: DictConfig) -> Path:
    """Generate the synthetic dataset into ``data.root`` unless a matching one is already cached."""
    from common.synthetic import VERSION, generate_dataset

    root = Path(data_cfg.root)
    syn = data_cfg.synthetic
    marker = root / "dataset.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        wanted = (VERSION, syn.seed, syn.n_train, syn.n_test)
        if (meta.get("version"), meta.get("seed"), meta.get("n_train"), meta.get("n_test")) == wanted:
            return root
    shapes = Path(syn.shapes_from) if syn.get("shapes_from") else None
    return generate_dataset(root, syn.n_train, syn.n_test, syn.seed, shapes_from=shapes)


def _node(data_cfg: DictConfig | dict) -> DictConfig:
    """Accept the ``data`` node as a DictConfig or as its plain-dict copy."""
    return data_cfg if isinstance(data_cfg, DictConfig) else OmegaConf.create(data_cfg)


def prepare_root(data_cfg: DictConfig | dict) -> Path:
    """The dataset root, generated first when ``data.kind`` is synthetic."""
    data_cfg = _node(data_cfg)
    if data_cfg.kind == "synthetic":
        return ensure_synthetic(data_cfg)
    return Path(data_cfg.root)


def load_train(data_cfg: DictConfig | dict) -> SteelDataset:
    """The labelled training split, checked against its annotations."""
    data_cfg = _node(data_cfg)
    root = prepare_root(data_cfg)
    return dataset_from(root / "train_images", read_annotations(data_cfg.train_csv), data_cfg.check_images)


def load_test(data_cfg: DictConfig | dict) -> SteelDataset:
    """The test split; labelled when ``data.test_truth_csv`` names an existing file."""
    data_cfg = _node(data_cfg)
    prepare_root(data_cfg)
    truth = data_cfg.get("test_truth_csv")
    annotations = read_annotations(truth) if truth and Path(truth).is_file() else None
    return dataset_from(Path(data_cfg.test_dir), annotations, data_cfg.check_images)


def load_folds(data_cfg: DictConfig | dict, dataset: SteelDataset) -> pd.DataFrame:
    """Folds for the dataset: read from ``data.folds.path`` or made (and written) when absent."""
    data_cfg = _node(data_cfg)
    path = Path(data_cfg.folds.path)
    if path.is_file():
        return read_folds(path, dataset.image_ids)
    folds = make_folds(dataset.labels, data_cfg.folds.n_splits, data_cfg.folds.seed)
    write_folds(folds, path)
    return folds
