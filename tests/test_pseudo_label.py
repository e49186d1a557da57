"""ensemble.pseudo_label and data.extra_train: confident predictions become a Kaggle-layout training root that joins
the training images of every fold and never a validation fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from common.annotations import read_annotations
from common.data_setup import fold_split
from common.dataset import dataset_from
from common.errors import ConfigError, DatasetError
from engine.run import train
from ensemble import pseudo_label as pl
from ensemble.predict import build_predictor
from ensemble.settings import compose_infer, section

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_confidence_rules():
    conf = pl.Confidence(boundary=1)
    prob = np.zeros((4, 8, 10), np.float32)
    masks = np.zeros((4, 8, 10), np.uint8)
    prob[1, 2:6, 2:6], masks[1, 2:6, 2:6] = 0.95, 1
    scores = np.array([0.01, 0.99, 0.02, 0.03])
    assert pl.select(scores, prob, masks, conf) is None
    assert pl.select(np.array([0.01, 0.5, 0.02, 0.03]), prob, masks, conf) == "image"
    assert pl.select(np.array([0.99, 0.99, 0.02, 0.03]), prob, masks, conf) == "agreement"  # class 1 has no mask
    unsure = prob.copy()
    unsure[3, :, :5] = 0.5  # half of class 4's map is unsure
    assert pl.select(scores, unsure, masks, conf) == "pixels"
    edge = prob.copy()
    edge[1, 1:7, 1] = 0.5  # uncertain pixels on the mask's edge band are not counted
    assert pl.confident_pixels(edge[1], masks[1], conf) == 1.0
    assert pl.confident_pixels(edge[1], masks[1], pl.Confidence(boundary=0)) < 1.0
    assert np.array_equal(pl.image_scores(None, np.array([[0.1, 0.9, 0, 0]])), [[0.1, 0.9, 0, 0]])
    for bad in ({"image_low": 0.6, "image_high": 0.5}, {"pixel_high": 1.5}, {"min_confident": -1}, {"boundary": -2}):
        with pytest.raises(ConfigError):
            pl.Confidence(**bad)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One tiny joint fold, unlabelled images with ids of their own, and the pseudo-label root made from them."""
    from conftest import write_tiny_dataset

    base = tmp_path_factory.mktemp("pseudo")
    root = write_tiny_dataset(base / "data", n=16)
    test = write_tiny_dataset(base / "unlabelled", n=8, seed=5) / "train_images"
    for path in test.iterdir():  # test images have ids of their own
        path.rename(test / f"t{path.name}")
    runs = base / "runs"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        train(compose(config_name="train", overrides=_train_overrides(root, runs / "fold0")), runs / "fold0")
    out = base / "pl"
    args = [
        "--out",
        str(out),
        f"checkpoints.runs=[{runs}]",
        "data=kaggle",
        f"data.root={root}",
        f"images={test}",
        "progress=false",
        "--image-low",
        "0.49",
        "--image-high",
        "0.5",
        "--min-confident",
        "0",
    ]
    assert pl.main(args) == 0
    return root, test, runs, out, args


def _train_overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=joint/scratch",
        f"paths.output_dir={run_dir}",
        "data=kaggle",
        f"data.root={root}",
        "data.folds.n_splits=2",
        "fold=0",
        "joint.model.encoder_name=tu-test_resnet",
        "+joint.model.encoder_depth=3",
        "joint.model.decoder_channels=[16,8,8]",
        "joint.crop=[64,128]",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.progress=false",
        *extra,
    ]


def test_pseudo_labels_are_the_inferred_masks_of_the_confident_images(tiny_runs, capsys, monkeypatch):
    root, images, runs, out, args = tiny_runs
    summary = json.loads((out / "pseudo_label.json").read_text())
    assert summary["images"] == 8 and summary["kept"] + sum(summary["dropped_by"].values()) == 8
    assert summary["thresholds"]["image_high"] == 0.5
    kept = sorted(p.name for p in (out / "train_images").iterdir())
    assert len(kept) == summary["kept"] > 0
    # The labels are what the ensemble predicts (gating off, the same rules): same masks, image by image.
    composed = compose_infer([f"checkpoints.runs=[{runs}]", "data=kaggle", f"data.root={root}"])
    cfg = {**section(composed, "checkpoints", "tta", "ensemble", "postprocess", "data"), "device": "cpu"}
    labelled = dataset_from(out / "train_images", read_annotations(out / "train.csv"))
    for names, result in build_predictor(cfg).iter_batch_results([images / n for n in kept], 4, gate=False):
        for j, name in enumerate(names):
            assert np.array_equal(labelled.masks(name), result.masks[j]), name
    # A non-empty --out is refused unless --force; the strictest setting keeps no image here.
    assert pl.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    strict = tiny_runs[3].parent / "strict"
    assert pl.main([*args[2:], "--out", str(strict), "--image-low", "0.0", "--image-high", "1.0"]) == 0
    assert json.loads((strict / "pseudo_label.json").read_text())["kept"] == 0
    assert (strict / "train.csv").read_text() == "ImageId,ClassId,EncodedPixels\n"
    assert "pseudo-labels: 0 of 8 images kept" in capsys.readouterr().out
    # --force replaces the root only once the new one is whole: a failure on the way leaves the old one as it was
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(*_args, **_kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(pl, "_write_root", broken)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        pl.main([*args, "--force"])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staged folder left


def test_extra_training_roots_join_the_training_folds_only(tiny_runs, tmp_path):
    root, images, *_ = tiny_runs
    extra = tmp_path / "extra"
    (extra / "train_images").mkdir(parents=True)
    names = sorted(p.name for p in images.iterdir())[:3]
    for name in names:
        (extra / "train_images" / f"pl_{name}").write_bytes((images / name).read_bytes())
    (extra / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\npl_{names[0]},3,1 500\n")
    data = {
        "root": str(root),
        "train_csv": str(root / "train.csv"),
        "check_images": "header",
        "folds": {"n_splits": 2, "seed": 42, "path": str(root / "folds.csv")},
        "extra_train": [str(extra)],
    }
    base, base_train, base_val = fold_split({**data, "extra_train": []}, 0)
    dataset, train_ids, val_ids = fold_split(data, 0)
    assert val_ids == base_val and train_ids == base_train + [f"pl_{n}" for n in names]
    assert dataset.path(f"pl_{names[0]}") == extra / "train_images" / f"pl_{names[0]}"
    assert dataset.masks(f"pl_{names[0]}")[2].sum() == 500 and dataset.labels.loc[f"pl_{names[1]}"].sum() == 0
    assert dataset.path(base_train[0]) == root / "train_images" / base_train[0]
    # an image id shared with the train root, or a folder that is no root, is an error naming it
    (extra / "train_images" / base_val[0]).write_bytes((root / "train_images" / base_val[0]).read_bytes())
    with pytest.raises(DatasetError, match=rf"ImageId '{base_val[0]}'.*also in"):
        fold_split(data, 0)
    with pytest.raises(DatasetError, match=r"data\.extra_train\[0\]: .* is not a training root"):
        fold_split({**data, "extra_train": [str(tmp_path)]}, 0)


def test_the_joint_stage_trains_on_the_extra_root_and_validates_on_real_labels(tiny_runs, tmp_path):
    from segmenter.joint import make_stage

    root, _, _, out, _ = tiny_runs
    kept = {p.name for p in (out / "train_images").iterdir()}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        plain = compose(config_name="train", overrides=_train_overrides(root, tmp_path / "a"))
        extra = compose(
            config_name="train", overrides=_train_overrides(root, tmp_path / "b", f"data.extra_train=[{out}]")
        )
    before, after = make_stage(plain), make_stage(extra)
    assert len(after.train_set) == len(before.train_set) + len(kept)
    assert set(after.train_set.image_ids) - set(before.train_set.image_ids) == kept
    assert after.val_set.image_ids == before.val_set.image_ids and not kept & set(after.val_set.image_ids)
    assert len(after.sample_weights) == len(after.train_set)  # rare-class sampling counts the pseudo-labels too
