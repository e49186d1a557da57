"""The joint two-headed stage, and the pipeline around it: training folds -> ensemble OOF made the way infer.py
predicts -> threshold search -> infer.py -> CV report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from common.config import to_plain
from common.oof import load_oof
from engine.checkpoint import load_model
from engine.run import train
from ensemble.predict import Predictor, build_predictor
from ensemble.run import infer
from scoring.rules import Rules
from scoring.tta import transforms
from segmenter.joint import JointLoss, JointMetric, image_targets
from segmenter.losses import ClassBCE, CombinedLoss
from segmenter.model import create_joint
from tuning import threshold_search
from tuning.oof import ensemble_oof

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def test_joint_model_gives_masks_and_class_logits():
    model = create_joint("Unet", "tu-test_resnet", input_scale=0.5, **TINY).eval()
    with torch.no_grad():
        masks, labels = model(torch.randn(2, 3, 64, 192))
    assert masks.shape == (2, 4, 64, 192) and labels.shape == (2, 4)


def test_loss_targets_and_devices():
    masks = torch.zeros(2, 4, 8, 8)
    masks[0, 2, 3, 3] = 1
    assert image_targets(masks).tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    loss = JointLoss(
        CombinedLoss({"bce": {"loss": ClassBCE([2.0, 2.0, 1.0, 1.5]), "weight": 1.0}}), 0.5, [2.0, 2.0, 1.0, 2.0]
    )
    value = loss((torch.zeros(2, 4, 8, 8), torch.zeros(2, 4)), masks)
    assert torch.isfinite(value) and value > 0
    moved = loss.to("meta")  # every buffer (both pos_weights) follows the module
    assert all(b.device.type == "meta" for b in moved.buffers()) and len(list(moved.buffers())) == 2


def test_metric_scores_masks_and_class_head():
    metric = JointMetric(0.5, 0, 100)
    truth = torch.zeros(4, 4, 16, 16)
    truth[0, 0, 2:6, 2:6] = 1
    truth[1, 2, :, 4:8] = 1
    mask_logits = truth * 8 - 4
    label_logits = image_targets(truth) * 8 - 4
    metric.update((mask_logits, label_logits), {"target": truth})
    out = metric.compute(metric.state())
    assert out["kaggle_best_gated"] == pytest.approx(1.0) and out["kaggle_best_grid"] == pytest.approx(1.0)
    assert out["auc_1"] == 1.0 and out["auc_3"] == 1.0 and np.isnan(out["auc_2"])


def _overrides(root: Path, run_dir: Path, fold: int) -> list[str]:
    return [
        "experiment=joint/scratch",
        f"paths.output_dir={run_dir}",
        "data=kaggle",
        f"data.root={root}",
        "data.folds.n_splits=2",
        f"fold={fold}",
        "joint.model.encoder_name=tu-test_resnet",
        "+joint.model.encoder_depth=3",
        "joint.model.decoder_channels=[16,8,8]",
        "joint.crop=[64,128]",
        "joint.validation.min_area=0",
        "trainer.epochs=2",
        "trainer.val_every=2",
        "trainer.batch_size=4",
        "trainer.progress=false",
    ]


@pytest.fixture(scope="module")
def joint_runs(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import write_tiny_dataset

    base = tmp_path_factory.mktemp("joint")
    root = write_tiny_dataset(base / "data", n=16)
    runs = base / "runs" / "joint"
    for fold in (0, 1):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=_overrides(root, runs / f"fold{fold}", fold))
        result = train(cfg, runs / f"fold{fold}")
        assert result.monitor == "kaggle_best_gated"
    return root, runs


def test_joint_folds_write_both_oof_files_and_checkpoints(joint_runs):
    root, runs = joint_runs
    model, payload = load_model(runs / "fold1" / "checkpoints" / "best.pt", "joint")
    assert payload["model"]["_target_"] == "segmenter.model.create_joint" and payload["meta"]["fold"] == 1
    table = pd.read_csv(runs / "fold0" / "metrics.csv")
    assert table["val_loss"].isna().tolist() == [True, False]  # validated every 2nd epoch (and the last)
    assert {"auc_mean", "kaggle_best_gated", "train_images_per_s"} <= set(table)
    oof = load_oof([runs])
    assert len(oof) == 16 and oof.cls_prob is not None and set(oof.fold) == {0, 1}


def test_ensemble_oof_equals_inference_predictions(joint_runs, tmp_path):
    """The ensemble OOF histograms are exactly what the inference predictor gives on those images."""
    root, runs = joint_runs
    cfg = {
        "tta": {"classifier": ["none", "hflip"], "segmenter": ["none", "hflip"]},
        "ensemble": {"reducer": "mean"},
        "device": "cpu",
        "batch_size": 1,
        "num_workers": 0,
    }  # batch 1: the same arithmetic as below
    summary = ensemble_oof([runs], tmp_path / "oof", cfg, progress=False)
    assert summary["images"] == 16 and summary["members"]["joint"] == 2
    oof = load_oof([tmp_path / "oof"])
    from common.dataset import load_split
    from common.folds import read_folds
    from common.oof import histograms
    from ensemble.members import load_members

    dataset = load_split(root, "train")
    folds = read_folds(root / "folds_k2_seed42.csv")
    image_id = str(oof.image_ids[0])
    fold = int(folds.set_index("ImageId").loc[image_id, "fold"])
    joints = load_members([runs / f"fold{fold}" / "checkpoints" / "best.pt"], "joint")
    flips = transforms(["none", "hflip"])
    predictor = Predictor([], [], Rules(gating="none"), flips, flips, joints=joints)
    batch = next(iter(predictor.loader([dataset.path(image_id)], 1)))
    cls_prob, seg, _ = predictor.probabilities(batch["inputs"], gate=False)
    pos, neg, top = histograms(seg.numpy(), dataset.masks(image_id)[None], 100)
    np.testing.assert_array_equal(oof.hist_pos[0], pos[0])
    np.testing.assert_array_equal(oof.hist_neg[0], neg[0])
    np.testing.assert_allclose(oof.cls_prob[0], cls_prob[0], atol=1e-6)


def test_search_on_training_folders_then_infer_and_report(joint_runs, tmp_path, capsys):
    root, runs = joint_runs
    out = tmp_path / "thresholds.json"
    assert threshold_search.main([str(runs), "--out", str(out), "progress=false", "tta=hflip"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble OOF (as infer.py predicts" in printed and "thresholds:" in printed
    payload = json.loads(out.read_text())
    assert payload["scores"]["written"] in ("tuned", "default") and "cross_validated" in payload["scores"]
    assert (tmp_path / "thresholds_oof" / "oof_segmenter.npz").is_file()

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = to_plain(
            compose(
                "infer",
                overrides=[
                    f"checkpoints.runs=[{runs}]",
                    f"thresholds={out}",
                    f"images={root / 'train_images'}",
                    f"truth={root / 'train.csv'}",
                    "evaluate=true",
                    f"output={tmp_path / 'sub.csv'}",
                    "progress=false",
                    f"paths.output_dir={tmp_path}",
                ],
            )
        )
    predictor = build_predictor(cfg)
    assert len(predictor.joints) == 2 and not predictor.segmenters and not predictor.classifiers
    summary = infer(cfg)
    assert summary["images"] == 16 and "score" in summary

    from analysis.report import main as report

    assert (
        report(
            [
                str(runs),
                "--oof",
                str(tmp_path / "thresholds_oof"),
                "--out",
                str(tmp_path / "report"),
                "--images",
                str(root / "train_images"),
                "--truth",
                str(root / "train.csv"),
                "--limit",
                "6",
            ]
        )
        == 0
    )
    md = (tmp_path / "report" / "report.md").read_text()
    assert "the ensemble OOF" in md and "Members side by side" in md and "Held-out images" in md
