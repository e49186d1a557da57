"""Deploy bundle: export to ONNX, the torch-free runtime (API and infer.py runtime=onnx), parity with torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import build
from common.images import read_image
from common.io import read_csv
from common.metrics import dice_rle
from common.submission import validate
from deploy.export import PARITY_DICE, ExportError, export_bundle, parity
from deploy.export import main as export_main
from engine.checkpoint import save_checkpoint
from ensemble.core import prepare_inputs, stack_inputs
from ensemble.onnx_runtime import MANIFEST, BundleError, load_bundle, read_manifest
from ensemble.predict import build_predictor
from ensemble.settings import compose_infer, section
from ensemble_helpers import PRE, image_folder, run_folder, save_tiny
from scoring.reduce import make_reducer
from scoring.tta import transforms

ROOT = Path(__file__).resolve().parents[1]
JOINT_CONFIG = {
    "_target_": "segmenter.model.create_joint",
    "arch": "Unet",
    "encoder_name": "tu-test_resnet",
    "encoder_weights": None,
    "encoder_depth": 3,
    "decoder_channels": [16, 8, 8],
    "input_scale": 0.5,
}
IDS = [f"img{i:03d}.jpg" for i in range(4)]


def overrides(s: dict, *extra: str) -> list[str]:
    return [
        f"checkpoints.classifier=[{s['cls']}]",
        f"checkpoints.segmenter=[{s['seg']}]",
        f"checkpoints.joint=[{s['joint']}]",
        f"images={s['images']}",
        "tta=hflip",
        "ensemble.gating.mode=soft",
        "postprocess.min_area=[0,0,0,0]",
        *extra,
    ]


def plain(s: dict, *extra: str) -> dict:
    cfg = compose_infer(overrides(s, *extra))
    out = section(cfg, "checkpoints", "tta", "ensemble", "postprocess")
    out.update(thresholds=cfg.get("thresholds"), device="cpu", channels_last=True)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Classifier (2 folds, 96x600 input), full-size segmenter and a joint model behind Rescaled (antialiased
    half-size input), exported once through the CLI with --parity, the flips left to the runtime (so the tests
    below can change its TTA and reducer; flips in the graph: tests/test_onnx_flips.py)."""
    base = tmp_path_factory.mktemp("export")
    images, truth = image_folder(base / "images", 4)
    truth.to_csv(base / "truth.csv", index=False)
    torch.manual_seed(3)
    joint = save_checkpoint(
        base / "joint.pt",
        build(dict(JOINT_CONFIG)),
        JOINT_CONFIG,
        "joint",
        {"preprocess": {**PRE, "size": None}, "fold": 0},
    )
    s = {
        "base": base,
        "images": images,
        "truth": base / "truth.csv",
        "joint": joint,
        "cls": run_folder(base / "cls", "classifier", 2),
        "seg": save_tiny(base / "seg.pt", "segmenter", seed=1),
    }
    for k in (0, 1):  # the classifier at a lower input size
        save_tiny(s["cls"] / f"{k}_fold={k}" / "checkpoints" / "best.pt", "classifier", k, k, size=[96, 600])
    s["bundle"] = base / "bundle"
    assert export_main([*overrides(s), "--out", str(s["bundle"]), "--parity", "--no-flips-in-graph"]) == 0
    return s


def test_bundle_contents_and_checksums(setup):
    manifest = read_manifest(setup["bundle"])
    names = [m["name"] for m in manifest["members"]]
    assert names == ["classifier_0", "classifier_1", "joint_0", "segmenter_0"]
    assert sorted(p.name for p in setup["bundle"].iterdir()) == sorted(
        [MANIFEST, "parity.json", *(f"{n}.onnx" for n in names)]
    )
    assert manifest["tta"] == {"classifier": ["none", "hflip"], "segmenter": ["none", "hflip"]}
    assert manifest["rules"]["gating"] == "soft" and manifest["rules"]["bins"] == 100
    assert manifest["members"][0]["preprocess"]["size"] == [96, 600]
    assert {"torch", "onnxruntime", "timm", "opset"} <= set(manifest["versions"])
    assert max(manifest["export_check"].values()) < 1e-4
    report = json.loads((setup["bundle"] / "parity.json").read_text())
    assert report["ok"] and report["images"] == 4 and report["pairs"] == 16 and report["min_dice"] >= PARITY_DICE


def test_dynamic_batch_and_api(setup):
    predictor = load_bundle(setup["bundle"], threads=1)
    rgb = [read_image(setup["images"] / i) for i in IDS]
    one = predictor.predict_images(rgb[:1], ["a.jpg"])
    three = predictor.predict_images(rgb[:3])
    np.testing.assert_array_equal(one[0].masks, three[0].masks)
    result = three[1].to_dict()
    assert result["image_id"] == "1" and [c["class_id"] for c in result["classes"]] == [1, 2, 3, 4]
    assert all(c["area"] == int(three[1].masks[i].sum()) for i, c in enumerate(result["classes"]))
    files = predictor.predict_files([setup["images"] / i for i in IDS], batch_size=3)
    assert [f.image_id for f in files] == IDS
    np.testing.assert_array_equal(files[2].masks, three[2].masks)
    with pytest.raises(ValueError, match="uint8 RGB image"):
        predictor.predict_images([np.zeros((256, 800, 3), np.uint8)])


@pytest.mark.parametrize("reducer,tta", [("mean", "none,hflip,vflip,both"), ("geometric", "hflip"), ("max", "none")])
def test_parity_with_torch(setup, reducer, tta):
    """The torch predictor and the bundle agree per pair (Dice >= 0.999) for each reducer and TTA set."""
    reference = build_predictor(
        plain(setup, f"ensemble.reducer={reducer}", "ensemble.gating.mode=veto", "postprocess.classifier_threshold=0.3")
    )
    onnx = load_bundle(setup["bundle"], threads=2)
    onnx.reducer = reducer
    onnx.tta_classifier = onnx.tta_segmenter = reference.tta_classifier = reference.tta_segmenter = transforms(tta)
    onnx.rules = reference.rules
    report = parity(reference, onnx, [setup["images"] / i for i in IDS], batch_size=3)
    assert report.ok and report.min_dice >= PARITY_DICE and report.pairs == 16, report.format()
    assert report.max_seg_diff < 1e-4 and report.max_cls_diff < 1e-4 and report.gate_differences == 0


def test_shared_steps_numpy_equals_torch():
    """TTA flips and reducers give the same on NumPy arrays (ONNX runtime) and torch tensors."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((2, 4, 6, 10), dtype=np.float32) for _ in range(2))
    for flip in transforms("none,hflip,vflip,both"):
        np.testing.assert_array_equal(flip.augment(a), flip.augment(torch.from_numpy(a)).numpy())
    for name in ("mean", "geometric", "max"):
        r_np, r_t = make_reducer(name), make_reducer(name)
        for x, w in ((a, 1.0), (b, 3.0)):
            r_np.add(x, w)
            r_t.add(torch.from_numpy(x), w)
        r_np.select(np.array([1]))
        r_t.select(np.array([1]))
        np.testing.assert_allclose(r_np.result(), r_t.result().numpy(), rtol=1e-6)
        assert r_np.result().shape == (1, 4, 6, 10)
    assert not np.shares_memory(a, b)


def test_tampered_and_bad_bundles(setup, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(setup["bundle"], copy)
    data = bytearray((copy / "segmenter_0.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "segmenter_0.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="segmenter_0.onnx: sha256 differs"):
        load_bundle(copy)
    (copy / "segmenter_0.onnx").unlink()
    with pytest.raises(BundleError, match="member file missing"):
        load_bundle(copy)
    manifest = json.loads((setup["bundle"] / MANIFEST).read_text())
    for change, message in (
        (("version", 99), "bundle version 99"),
        (("members", "x"), "members: expected list"),
        (("rules", {**manifest["rules"], "gating": "maybe"}), "bad rules"),
        (("reducer", "median"), "median"),
    ):
        shutil.copytree(setup["bundle"], tmp_path / "b", dirs_exist_ok=True)
        (tmp_path / "b" / MANIFEST).write_text(json.dumps({**manifest, change[0]: change[1]}))
        with pytest.raises(BundleError, match=message):
            load_bundle(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({**manifest, "version": 1}))  # before tta_in_graph: readable
    assert len(load_bundle(tmp_path / "b").members) == 4
    evil = {**manifest, "members": [{**manifest["members"][0], "file": "../escape.onnx"}]}
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(evil))
    with pytest.raises(BundleError, match="must be a file name inside the bundle"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="not a bundle folder"):
        load_bundle(tmp_path)


def test_export_errors(setup, tmp_path, capsys):
    assert export_main([*overrides(setup), "--out", str(setup["bundle"])]) == 2
    assert "exists; choose another --out or pass --force" in capsys.readouterr().err
    assert (
        export_main(
            ["checkpoints.runs=[]", "checkpoints.segmenter=[]", "checkpoints.joint=[]", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "no segmenting member" in capsys.readouterr().err
    assert export_main([*overrides(setup), "--opset", "17", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
    predictor = build_predictor(plain(setup))
    with pytest.raises(ExportError, match="exists"):
        export_bundle(predictor, setup["bundle"])


TORCH_BLOCKER = """
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
"""


def test_runtime_without_torch(setup, tmp_path):
    """infer.py runtime=onnx and the Python API in a process where importing torch fails."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(TORCH_BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "import of torch halted" in check.stderr
    sub, store = tmp_path / "onnx.csv", tmp_path / "store.sqlite"
    done = subprocess.run(
        [
            sys.executable,
            "infer.py",
            "runtime=onnx",
            f"bundle={setup['bundle']}",
            f"images={setup['images']}",
            f"output={sub}",
            f"hydra.run.dir={tmp_path}/run",
            "progress=false",
            "evaluate=true",
            f"truth={setup['truth']}",
            f"store={store}",
            "run_id=onnx",
            "threads=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runtime onnx: bundle" in done.stdout and "overall" in done.stdout and "inspections:" in done.stdout
    assert validate(sub, IDS) == []
    api = "\n".join(
        [
            "import json, sys",
            "from common.images import read_image",
            "from ensemble.onnx_runtime import load_bundle",
            f"predictor = load_bundle({str(setup['bundle'])!r}, threads=1)",
            f"results = predictor.predict_images([read_image({str(setup['images'] / IDS[0])!r})], ['x.jpg'])",
            "loaded = sys.modules.get('torch') is not None",
            "print(json.dumps({'torch': loaded, 'result': results[0].to_dict()}))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", api], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["torch"] is False and payload["result"]["image_id"] == "x.jpg"
    # the torch-free run wrote what the torch runtime writes (same masks for every image x class)
    from hydra import compose, initialize_config_dir

    from common.config import to_plain
    from ensemble.run import infer

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = to_plain(
            compose(
                "infer", overrides=[*overrides(setup), f"paths.output_dir={tmp_path}", "progress=false", "threads=1"]
            )
        )
    infer(cfg)
    onnx_rows, torch_rows = (submission_rows(f) for f in (sub, tmp_path / "submission.csv"))
    assert sorted(onnx_rows) == sorted(torch_rows) and len(torch_rows) == 16
    assert min(dice_rle(onnx_rows[k], torch_rows[k]) for k in torch_rows) >= PARITY_DICE


def submission_rows(path: Path) -> dict[tuple[str, str], str]:
    """(ImageId, ClassId) -> EncodedPixels of every row of a new-format submission."""
    table = read_csv(path)
    col = {name: table.header.index(name) for name in ("ImageId", "ClassId", "EncodedPixels")}
    return {(row[col["ImageId"]], row[col["ClassId"]]): row[col["EncodedPixels"]] for row in table.rows}


def test_unknown_runtime_and_missing_bundle(setup, tmp_path):
    from common.errors import ConfigError
    from ensemble.run import build_runtime

    with pytest.raises(ConfigError, match="runtime: unknown runtime 'tf'"):
        build_runtime({"runtime": "tf"})
    with pytest.raises(ConfigError, match="bundle: runtime=onnx needs bundle="):
        build_runtime({"runtime": "onnx", "bundle": None})
    with pytest.raises(ConfigError, match="not in this onnxruntime build"):
        build_runtime({"runtime": "onnx", "bundle": str(setup["bundle"]), "providers": ["NoSuchProvider"]})
    inputs = stack_inputs(
        [prepare_inputs(read_image(setup["images"] / IDS[0]), load_bundle(setup["bundle"]).preprocesses)]
    )
    assert inputs[0].shape[0] == 1
