"""Flips in the graph (the export's default): each member's ONNX file runs its TTA and averages the flips before the
one resize to 256x1600; the masks stay torch's, and a runtime asked for another TTA or reducer refuses the bundle."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from common.config import build
from common.errors import ConfigError
from deploy.export import FlipsInGraph, exportable_layers, graph_flips, parity
from deploy.export import main as export_main
from engine.checkpoint import save_checkpoint
from ensemble.onnx_runtime import BUNDLE_VERSION, MANIFEST, BundleError, load_bundle, read_manifest, session_options
from ensemble.predict import MemberNet, build_predictor
from ensemble_helpers import PRE, image_folder, save_tiny
from scoring.tta import transforms

JOINT = {
    "_target_": "segmenter.model.create_joint",
    "arch": "Unet",
    "encoder_name": "tu-test_resnet",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
}


def config(s: dict, reducer: str = "mean") -> dict:
    return {
        "checkpoints": {"joint": [str(s["joint"])], "classifier": [str(s["cls"])]},
        "tta": {"classifier": ["none", "hflip"], "segmenter": ["none", "hflip"]},
        "ensemble": {"gating": {"mode": "none"}, "reducer": reducer},
        "postprocess": {"min_area": [0, 0, 0, 0]},
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A joint member at 64x416 (its probabilities resized to 256x1600 in the graph) and a 96x600 classifier,
    exported through the CLI with its defaults and --parity."""
    base = tmp_path_factory.mktemp("flips")
    images, _ = image_folder(base / "images", 4)
    torch.manual_seed(3)
    joint = save_checkpoint(
        base / "joint.pt", build(dict(JOINT)), JOINT, "joint", {"preprocess": {**PRE, "size": [64, 416]}, "fold": 0}
    )
    s = {
        "images": images,
        "joint": joint,
        "cls": save_tiny(base / "cls.pt", "classifier", size=[96, 600]),
        "bundle": base / "bundle",
    }
    assert (
        export_main(
            [
                f"checkpoints.joint=[{joint}]",
                f"checkpoints.classifier=[{s['cls']}]",
                "checkpoints.runs=[]",
                f"images={images}",
                "tta=hflip",
                "ensemble.gating.mode=none",
                "postprocess.min_area=[0,0,0,0]",
                "--out",
                str(s["bundle"]),
                "--parity",
            ]
        )
        == 0
    )
    return s


def test_module_equals_the_reducer_over_flips():
    """FlipsInGraph's output is the mean reducer's result over the flips (un-flipped), one resize after the mean."""
    torch.manual_seed(0)
    with exportable_layers():
        net = MemberNet(build(dict(JOINT)), "joint").eval()
    flips = transforms("none,hflip,vflip")
    x = torch.randn(2, 3, 64, 416)
    with torch.inference_mode():
        masks, labels = FlipsInGraph(net, flips)(x)
        outs = [net(f.augment(x)) for f in flips]
    assert masks.shape == (2, 4, 256, 1600) and labels.shape == (2, 4)
    torch.testing.assert_close(masks, sum(f.deaugment(m) for f, (m, _) in zip(flips, outs)) / 3, atol=1e-5, rtol=0)
    torch.testing.assert_close(labels, sum(lab for _, lab in outs) / 3, atol=1e-6, rtol=0)


def test_graph_flips_only_for_the_mean_reducer():
    flips = transforms("none,hflip")
    member = SimpleNamespace(kind="joint")
    ensemble = SimpleNamespace(reducer="mean", tta_classifier=transforms("none"), tta_segmenter=flips)
    assert graph_flips(ensemble, member) == flips
    assert graph_flips(ensemble, SimpleNamespace(kind="classifier")) == []  # "none" alone: nothing to average
    for reducer in ("geometric", "max"):  # not linear: the flips stay with the runtime
        assert graph_flips(SimpleNamespace(**{**vars(ensemble), "reducer": reducer}), member) == []


def test_bundle_records_flips_and_keeps_torch_masks(setup):
    manifest = read_manifest(setup["bundle"])
    assert manifest["version"] == BUNDLE_VERSION == 2
    assert [m["tta_in_graph"] for m in manifest["members"]] == [["none", "hflip"]] * 2
    assert json.loads((setup["bundle"] / "parity.json").read_text())["ok"]
    with exportable_layers():
        reference = build_predictor(config(setup))
    onnx = load_bundle(setup["bundle"], threads=1)
    report = parity(reference, onnx, sorted(setup["images"].iterdir()), batch_size=3)
    assert report.ok and report.pairs == 16 and report.gate_differences == 0, report.format()
    assert report.max_seg_diff < 1e-4 and report.max_cls_diff < 1e-5, report.format()


def test_runtime_refuses_other_tta_or_reducer(setup):
    paths = sorted(setup["images"].iterdir())[:1]
    onnx = load_bundle(setup["bundle"], threads=1)
    onnx.tta_segmenter = transforms("none")
    with pytest.raises(BundleError, match=r"joint_0: its graph averages the TTA flips \['none', 'hflip'\]"):
        onnx.predict_files(paths)
    onnx = load_bundle(setup["bundle"], threads=1)
    onnx.reducer = "max"
    with pytest.raises(BundleError, match="reducer 'max'.*--no-flips-in-graph"):
        onnx.predict_files(paths)


def test_manifest_flips_must_match_its_tta(setup, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(setup["bundle"], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["members"][1]["tta_in_graph"] = ["none", "vflip"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError,
        match=r"joint_0: tta_in_graph \['none', 'vflip'\] differs from the bundle's "
        r"joint TTA \['none', 'hflip'\]",
    ):
        load_bundle(copy)
    manifest["members"][1]["tta_in_graph"] = ["none", "hflip"]
    (copy / MANIFEST).write_text(json.dumps({**manifest, "reducer": "geometric"}))
    with pytest.raises(BundleError, match="reducer 'geometric' with members whose graphs average their flips"):
        load_bundle(copy)


def test_optimisation_levels():
    import onnxruntime as ort

    assert session_options(1).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(1, "basic").graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ConfigError, match=r"optimization: 'fast' is not one of \['disable', 'basic'"):
        session_options(1, "fast")
