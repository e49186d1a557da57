"""``python -m deploy.export --int8``: members quantised to INT8 (calibrated on training images of the data root);
the bundle loads and predicts, and bad calibration settings are one-line errors."""

from __future__ import annotations

import onnx
import pytest
import torch

from common.config import build
from deploy.export import main as export_main
from engine.checkpoint import save_checkpoint
from ensemble.onnx_runtime import load_bundle, read_manifest
from ensemble_helpers import PRE, image_folder

JOINT = {
    "_target_": "segmenter.model.create_joint",
    "arch": "Unet",
    "encoder_name": "tu-test_resnet",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny joint member at 64x416 and a data root with 4 training images."""
    base = tmp_path_factory.mktemp("int8")
    root = base / "root"
    image_folder(root / "train_images", 4)
    torch.manual_seed(0)
    joint = save_checkpoint(
        base / "joint.pt", build(dict(JOINT)), JOINT, "joint", {"preprocess": {**PRE, "size": [64, 416]}, "fold": 0}
    )
    args = [
        f"checkpoints.joint=[{joint}]",
        "checkpoints.runs=[]",
        f"data.root={root}",
        f"images={root / 'train_images'}",
        "tta=none",
        "ensemble.gating.mode=none",
    ]
    return {"base": base, "root": root, "args": args}


def test_int8_bundle_loads_and_predicts(setup, capsys):
    out = setup["base"] / "bundle"
    assert export_main([*setup["args"], "--out", str(out), "--int8", "--calibration-images", "3"]) == 0
    assert "INT8 (QDQ, per-channel, 3 calibration images" in capsys.readouterr().out
    [member] = read_manifest(out)["members"]
    assert member["precision"] == "int8"
    ops = {n.op_type for n in onnx.load(str(out / member["file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Resize", "Sigmoid"} <= ops
    [result] = load_bundle(out, threads=1).predict_files([setup["root"] / "train_images" / "img000.jpg"])
    assert result.masks.shape == (4, 256, 1600) and result.classifier_probability.shape == (4,)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "joint_0.onnx"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--int8", "--calibration-images", "0"], "--calibration-images 0: give a whole number from 1 to 4"),
        (["--int8", "--calibration-images", "9"], "--calibration-images 9: give a whole number from 1 to 4"),
        (["--calibration-images", "2"], "--calibration-images 2: only used with --int8"),
    ],
)
def test_bad_calibration_settings(setup, capsys, extra, message):
    out = setup["base"] / "bad"
    assert export_main([*setup["args"], "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err and not out.exists()


def test_int8_needs_training_images(setup, tmp_path, capsys):
    args = [a if not a.startswith("data.root=") else f"data.root={tmp_path}" for a in setup["args"]]
    assert export_main([*args, "--out", str(tmp_path / "b"), "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --int8: no training images in {tmp_path / 'train_images'} to calibrate on; set data.root "
        "(or data=...) to a dataset root with train_images/"
    )
