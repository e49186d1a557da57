"""Classifier stage: metrics, sampling weights, pre-processing, model factory, start-up errors, recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from classifier.metrics import ClassifierMetric, classifier_metrics
from classifier.model import create_classifier, param_groups
from common.config import ConfigError, build
from common.errors import DatasetError, ImageError
from common.preprocess import Preprocess
from common.sampling import balanced_weights, sample_weights
from engine.augment import Augment, build_augment
from engine.run import make_stage, train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(
    p.relative_to(CONFIGS / "experiment").with_suffix("").as_posix() for p in (CONFIGS / "experiment").rglob("*.yaml")
)
CLASSIFIER_EXPERIMENTS = [e for e in EXPERIMENTS if e.startswith("classifier/")]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny(root: Path, *extra: str):
    return compose_train(
        [
            "data=kaggle",
            f"data.root={root}",
            "data.folds.n_splits=2",
            "fold=0",
            "classifier.model.name=test_resnet",
            "classifier.model.pretrained=false",
            "classifier.preprocess.size=[32,200]",
            "trainer.device=cpu",
            "trainer.num_workers=0",
            "trainer.progress=false",
            *extra,
        ]
    )


# ------------------------------------------------------------------ metrics and sampling


def test_metrics_by_hand():
    labels = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    probs = np.array([[0.9, 0.1, 0.2, 0.1], [0.2, 0.1, 0.8, 0.1], [0.6, 0.2, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]])
    m = classifier_metrics(probs, labels, [0.5] * 4)
    assert m["auc_1"] == pytest.approx(0.75)  # positives 0.9, 0.6 vs negatives 0.2, 0.7: 3 of 4 pairs
    assert m["auc_3"] == 1.0
    assert np.isnan(m["auc_2"]) and np.isnan(m["auc_4"])  # one label value only: undefined, not 0.5
    assert m["auc_mean"] == pytest.approx(0.875)
    assert m["f1_1"] == pytest.approx(0.8) and m["f1_3"] == pytest.approx(2 / 3)
    assert m["any_acc"] == pytest.approx(0.75)  # the clean image is flagged by class 1
    with pytest.raises(ValueError):
        classifier_metrics(probs, labels[:, :3], [0.5] * 4)


def test_metric_accumulates_sigmoid_probabilities():
    metric = ClassifierMetric([0.5] * 4)
    logits = torch.tensor([[3.0, -3.0, 0.0, 0.0], [-3.0, 3.0, 0.0, 0.0]])
    metric.update(logits, {"target": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])})
    state = metric.state()
    assert torch.allclose(state["probs"], torch.sigmoid(logits))
    assert metric.compute(state)["auc_1"] == 1.0


def test_balanced_weights_equalise_groups():
    labels = pd.DataFrame([[0, 0, 1, 0]] * 6 + [[1, 0, 1, 0]] + [[0, 0, 0, 0]] * 3, columns=[1, 2, 3, 4])
    w = balanced_weights(labels)
    groups = {"c3": w[:6].sum(), "c1 (rarest of 1+3)": w[6], "clean": w[7:].sum()}
    assert all(v == pytest.approx(1.0) for v in groups.values())
    half = sample_weights(labels, {"mode": "balanced", "power": 0.5})
    assert half[0] == pytest.approx(6**-0.5) and half[6] == pytest.approx(1.0)
    assert sample_weights(labels, None) is None
    assert sample_weights(labels, {"mode": "balanced", "power": 0}) is None  # power 0: plain shuffling
    with pytest.raises(ConfigError, match="sampling.power"):
        sample_weights(labels, {"mode": "balanced", "power": 2})


# ------------------------------------------------------------------ pre-processing


def test_preprocess_round_trip_and_normalisation():
    p = Preprocess(size=(32, 200))
    assert Preprocess.from_meta(p.to_meta()) == p
    image = np.full((256, 1600, 3), 255, np.uint8)
    x = torch.from_numpy(p(image))
    assert x.shape == (3, 32, 200) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], (1 - torch.tensor(p.mean)) / torch.tensor(p.std))
    with pytest.raises(ConfigError, match="preprocess.mean"):
        Preprocess(mean=(0.5,))


def test_augment_moves_image_and_mask_together():
    augment = build_augment([{"_target_": "albumentations.HorizontalFlip", "p": 1.0}], "t")
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, 0] = 255
    mask = np.zeros((4, 4, 6), np.uint8)
    mask[2, :, 0] = 1
    out_image, out_mask = augment(image, mask)
    assert out_image[:, -1].min() == 255 and out_mask.shape == (4, 4, 6) and out_mask[2, :, -1].all()
    with pytest.raises(ConfigError, match=r"aug\[0\]"):
        build_augment([{"_target_": "collections.OrderedDict"}], "aug")


def test_augment_seed_makes_draws_repeatable():
    augment = Augment([build({"_target_": "albumentations.HorizontalFlip", "p": 0.5}, "t")])
    image = np.arange(12, dtype=np.uint8).reshape(2, 6, 1).repeat(3, axis=2)
    draws = []
    for _ in range(2):
        augment.set_seed(5)
        draws.append([augment(image)[0][0, 0, 0] for _ in range(20)])
    assert draws[0] == draws[1] and len(set(draws[0])) == 2


# ------------------------------------------------------------------ model factory


def test_model_outputs_four_logits_and_splits_backbone_from_head():
    model = create_classifier("test_resnet", num_classes=4)
    assert model(torch.zeros(2, 3, 32, 200)).shape == (2, 4)
    groups = param_groups(model)
    assert groups["head"] and groups["backbone"]
    assert len(groups["head"]) + len(groups["backbone"]) == len(list(model.parameters()))


def test_unknown_model_name_and_missing_weights_file_name_the_key(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"classifier\.model\.name.*effnet_b9"):
        create_classifier("effnet_b9")
    missing = tmp_path / "b1.pth"
    with pytest.raises(ConfigError, match=r"classifier\.model\.pretrained_path.*b1\.pth"):
        create_classifier("test_resnet", pretrained_path=str(missing))


def test_local_weights_file_is_loaded(tmp_path: Path):
    source = create_classifier("test_resnet", num_classes=4)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = create_classifier("test_resnet", num_classes=4, pretrained_path=str(path))
    key = next(k for k in source.state_dict() if k.endswith("weight"))
    assert torch.equal(loaded.state_dict()[key], source.state_dict()[key])


# ------------------------------------------------------------------ start-up errors (before any training)


def test_missing_image_stops_at_start_up(tiny_dataset: Path, tmp_path: Path):
    victim = pd.read_csv(tiny_dataset / "train.csv")["ImageId"].iloc[0]
    (tiny_dataset / "train_images" / victim).unlink()
    with pytest.raises(DatasetError, match=victim):
        train(tiny(tiny_dataset, f"paths.output_dir={tmp_path}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unreadable_image_stops_at_start_up(tiny_dataset: Path, tmp_path: Path):
    victim = tiny_dataset / "train_images" / "000000000.jpg"
    victim.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="000000000.jpg"):
        train(tiny(tiny_dataset, f"paths.output_dir={tmp_path}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("classifier.model.name=resnet_does_not_exist", "classifier.model.name"),
        ("classifier.model.pretrained_path=/nonexistent/weights.pth", "classifier.model.pretrained_path"),
        ("classifier.thresholds=[0.5]", "classifier.thresholds"),
        ("classifier.loss.pos_weight=[1.0]", "classifier.loss.pos_weight"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("~optimizer.lr.backbone", "optimizer.lr"),
        ("fold=7", "fold 7"),
    ],
)
def test_bad_config_is_reported_with_its_key(tiny_dataset: Path, tmp_path: Path, override: str, key: str):
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        train(tiny(tiny_dataset, f"paths.output_dir={tmp_path}", override), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ recipes


@pytest.mark.parametrize("experiment", CLASSIFIER_EXPERIMENTS)
def test_classifier_experiments_compose_and_build(experiment: str):
    cfg = compose_train([f"experiment={experiment}", "fold=0", "data.root=/tmp/absent"])
    assert cfg.stage._target_ == "classifier.stage.make_stage" and cfg.run_name != "default"
    model_cfg = OmegaConf.to_container(cfg.classifier.model)
    model_cfg["pretrained"] = False
    model = build(model_cfg, "classifier.model")
    assert model(torch.zeros(1, 3, 64, 256)).shape == (1, 4)
    build_augment(cfg.classifier.augment, "classifier.augment")
    Preprocess.from_config(cfg.classifier.preprocess)
    for group in ("optimizer", "scheduler"):
        assert OmegaConf.to_container(cfg[group])


def test_demo_recipe_builds_its_stage_on_the_tiny_dataset(tiny_dataset: Path):
    cfg = compose_train(
        ["experiment=classifier/demo", "fold=1", "data=kaggle", f"data.root={tiny_dataset}", "data.folds.n_splits=2"]
    )
    spec = make_stage(cfg)
    assert spec.name == "classifier" and spec.monitor == "auc_mean" and spec.mode == "max"
    assert len(spec.train_set) + len(spec.val_set) == 16
    item = spec.train_set[0]
    assert item["image"].shape == (3, 96, 600) and item["target"].shape == (4,)
    assert spec.meta["preprocess"]["size"] == [96, 600]
