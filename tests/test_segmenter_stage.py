"""Segmenter data (crops, flips, clean ratio), bad input at start-up, and a tiny fold through the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from common.config import ConfigError
from common.dataset import load_split
from common.errors import AnnotationError
from common.oof import read_segmenter_oof as read_oof
from common.oof import score
from common.preprocess import Preprocess
from engine.checkpoint import load_model
from engine.run import train
from segmenter.data import SegmentationDataset, build_train_augment, check_crop, select_training_ids
from segmenter.metrics import to_full_size

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FLIP = {"_target_": "albumentations.HorizontalFlip", "p": 1.0}
VFLIP = {"_target_": "albumentations.VerticalFlip", "p": 1.0}


class _Marked:
    """A SteelDataset stand-in whose image encodes each pixel's column and row, with an L-shaped class-2 mask."""

    labelled, source = True, "marked"

    def image(self, image_id, channels=3):
        rows, cols = np.mgrid[0:256, 0:1600]
        return np.stack([cols % 251, cols // 251, rows], axis=-1).astype(np.uint8)

    def masks(self, image_id):
        m = np.zeros((4, 256, 1600), np.uint8)
        m[1, 10:200, 300:310] = 1  # vertical bar
        m[1, 190:200, 300:900] = 1  # horizontal foot to the right: asymmetric in both axes
        return m


def _positions(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the source pixel shown at each output pixel."""
    return image[..., 2].astype(int), image[..., 0].astype(int) + 251 * image[..., 1].astype(int)


@pytest.mark.parametrize("extra", [[], [FLIP], [FLIP, VFLIP]])
@pytest.mark.parametrize("mode", ["random", "defect"])
def test_crops_and_flips_move_mask_with_image(extra, mode):
    source = _Marked()
    data = SegmentationDataset(source, ["a.jpg"], Preprocess(), build_train_augment((128, 512), extra, 3, mode))
    truth = source.masks("a.jpg")
    for seed in range(4):
        data.set_seed(seed)
        image, mask, _ = data.sample(0)
        assert image.shape == (128, 512, 3) and mask.shape == (4, 128, 512)
        rows, cols = _positions(image)
        np.testing.assert_array_equal(mask, truth[:, rows, cols])  # every mask pixel is the source pixel's
        if mode == "defect":
            assert mask[1].any()
    item = data[0]
    assert item["image"].shape == (3, 128, 512) and item["target"].shape == (4, 128, 512)
    assert item["target"].dtype == torch.float32 and item["image_id"] == "a.jpg"


def test_validation_items_are_the_full_image():
    item = SegmentationDataset(_Marked(), ["a.jpg"], Preprocess())[0]
    assert item["image"].shape == (3, 256, 1600) and item["target"].sum() == 190 * 10 + 10 * 600 - 10 * 10
    assert "truth" not in item


def test_reduced_network_input_keeps_full_size_truth_for_scoring():
    """At preprocess.size the network input and loss target shrink; validation items carry the full truth."""
    quarter = Preprocess(size=(64, 416))
    item = SegmentationDataset(_Marked(), ["a.jpg"], quarter, full_truth=True)[0]
    assert item["image"].shape == (3, 64, 416) and item["target"].shape == (4, 64, 416)
    assert item["truth"].shape == (4, 256, 1600) and int(item["truth"].sum()) == 190 * 10 + 10 * 600 - 10 * 10
    crops = SegmentationDataset(_Marked(), ["a.jpg"], quarter, build_train_augment((64, 128), [], 0, "random"))
    assert crops[0]["image"].shape == (3, 64, 128) and crops[0]["target"].shape == (4, 64, 128)
    probs = torch.rand(2, 4, 64, 416)
    full = to_full_size(probs)
    assert full.shape == (2, 4, 256, 1600) and torch.equal(to_full_size(full), full)


def test_crop_settings_are_checked():
    assert check_crop([256, 512]) == (256, 512) and check_crop(None) is None
    with pytest.raises(ConfigError, match="does not fit"):
        check_crop([256, 1632])
    with pytest.raises(ConfigError, match="multiples of 32"):
        check_crop([256, 500])
    with pytest.raises(ConfigError, match="crop_mode"):
        build_train_augment((256, 512), [], 0, "center")
    with pytest.raises(ConfigError, match="multiples of 32"):
        SegmentationDataset(_Marked(), ["a.jpg"], Preprocess(size=(64, 400)))
    assert check_crop([64, 128], size=(64, 416)) == (64, 128)
    with pytest.raises(ConfigError, match="network input"):
        check_crop([128, 128], size=(64, 416))


def test_clean_ratio_selects_defect_images_and_a_share_of_clean_ones():
    labels = pd.DataFrame(
        {1: [1, 0, 0, 0, 1, 0], 2: 0, 3: [0, 0, 1, 0, 0, 0], 4: 0}, index=[f"{i}.jpg" for i in range(6)]
    )
    ids = list(labels.index)
    assert select_training_ids(labels, ids, None, 0) == ids
    assert select_training_ids(labels, ids, 0, 0) == ["0.jpg", "2.jpg", "4.jpg"]
    mixed = select_training_ids(labels, ids, 1 / 3, 0)
    assert len(mixed) == 4 and {"0.jpg", "2.jpg", "4.jpg"} <= set(mixed)
    with pytest.raises(ConfigError, match="needs 6 clean images"):
        select_training_ids(labels, ids, 2, 0)


def _overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "stage=segmenter",
        f"paths.output_dir={run_dir}",
        "data=kaggle",
        f"data.root={root}",
        "data.folds.n_splits=2",
        "fold=0",
        "segmenter.model.encoder_name=resnet18",
        "segmenter.model.encoder_weights=null",
        "+segmenter.model.encoder_depth=3",
        "+segmenter.model.decoder_channels=[16,8,8]",
        "segmenter.model.input_scale=0.25",
        "segmenter.crop=[128,256]",
        "segmenter.crop_mode=defect",
        "segmenter.validation.min_area=0",
        "trainer.device=cpu",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.num_workers=0",
        "trainer.progress=false",
        *extra,
    ]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_one_fold_through_the_engine_writes_checkpoint_and_oof(tiny_dataset: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = train(_compose(_overrides(tiny_dataset, run_dir)), run_dir)
    assert result.monitor == "kaggle"
    table = pd.read_csv(run_dir / "metrics.csv")
    assert {"kaggle", "kaggle_baseline", "kaggle_gain", "kaggle_best_grid", "kaggle_4"} <= set(table)

    model, payload = load_model(run_dir / "checkpoints/best.pt", "segmenter")
    meta = payload["meta"]
    assert payload["model"]["_target_"] == "segmenter.model.create_segmenter"
    assert meta["fold"] == 0 and meta["preprocess"]["channels"] == 3 and "kaggle" in meta["metrics"]

    oof = read_oof(run_dir / "oof_segmenter.npz")
    assert len(oof) == 8 and (oof.fold == 0).all() and oof.bins == 100
    assert oof.hist_pos.sum() + oof.hist_neg.sum() == 8 * 4 * 256 * 1600
    # The OOF is the rebuilt model on raw images pre-processed from the meta alone, and it reproduces
    # the best epoch's validation score.
    dataset = load_split(tiny_dataset, "train")
    image_id = str(oof.image_ids[0])
    x = torch.from_numpy(Preprocess.from_meta(meta["preprocess"])(dataset.image(image_id)))[None]
    with torch.no_grad():
        probs = torch.sigmoid(model(x))[0]
    assert abs(float(probs.flatten(1).amax(1)[0]) - float(oof.max_prob[0, 0])) < 1e-5
    k = int(round(0.5 * oof.bins))
    assert score(oof, k, 0).overall == pytest.approx(meta["metrics"]["kaggle"], abs=1e-12)
    assert dataset.masks(image_id).sum(axis=(1, 2)).tolist() == oof.true_area()[0].tolist()


def test_bad_input_stops_at_start_up(tiny_dataset: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="segmenter.crop: crop 256x2048 does not fit"):
        train(_compose(_overrides(tiny_dataset, tmp_path, "segmenter.crop=[256,2048]")), tmp_path)
    with pytest.raises(ConfigError, match="segmenter.validation.threshold"):
        train(_compose(_overrides(tiny_dataset, tmp_path, "segmenter.validation.threshold=0.123")), tmp_path)
    csv = tiny_dataset / "train.csv"
    lines = csv.read_text().splitlines()
    image_id = lines[1].split(",")[0]
    csv.write_text("\n".join(lines + [f"{image_id},1,409590 20"]) + "\n")  # runs past the 256x1600 image
    with pytest.raises(AnnotationError, match=rf"train.csv.*{image_id}|{image_id}.*train.csv"):
        train(_compose(_overrides(tiny_dataset, tmp_path)), tmp_path)
