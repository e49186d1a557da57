"""segmenter.model and segmenter.losses: every architecture gives (B, 4, H, W) logits; losses combine by weight."""

from __future__ import annotations

import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss

from common.config import build
from engine.checkpoint import load_model, save_checkpoint
from segmenter.losses import ClassBCE, CombinedLoss, LossConfigError
from segmenter.model import FACTORY, ModelConfigError, Rescaled, create_segmenter, param_groups

TINY = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


@pytest.mark.parametrize(
    "arch, encoder, kwargs",
    [
        ("Unet", "resnet18", TINY),
        ("FPN", "tu-resnet10t", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}),
        ("UnetPlusPlus", "tu-resnet10t", TINY),
    ],
)
def test_each_architecture_gives_four_logit_channels(arch, encoder, kwargs):
    model = create_segmenter(arch, encoder, encoder_weights=None, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 160))
    assert out.shape == (2, 4, 64, 160) and torch.isfinite(out).all()
    groups = param_groups(model)
    assert groups["backbone"] and groups["head"]
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(model.parameters()))


def test_checkpoint_rebuilds_a_rescaled_model(tmp_path):
    config = {
        "_target_": FACTORY,
        "arch": "Unet",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "input_scale": 0.5,
        **TINY,
    }
    model = build(config).eval()
    assert isinstance(model, Rescaled)
    x = torch.randn(1, 3, 64, 128)
    save_checkpoint(tmp_path / "m.pt", model, config, "segmenter", {"fold": 0})
    loaded, payload = load_model(tmp_path / "m.pt", "segmenter")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded(x).shape == (1, 4, 64, 128)


def test_local_encoder_weights_are_loaded_and_bad_files_named(tmp_path):
    source = create_segmenter("Unet", "resnet18", **TINY)
    path = tmp_path / "resnet18.pth"
    torch.save({**source.encoder.state_dict(), "fc.weight": torch.zeros(3, 3)}, path)  # extra head keys ignored
    model = create_segmenter("Unet", "resnet18", encoder_weights="imagenet", pretrained_path=str(path), **TINY)
    assert torch.equal(model.encoder.conv1.weight, source.encoder.conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelConfigError, match="wrong.pth.*does not fit"):
        create_segmenter("Unet", "resnet18", pretrained_path=str(tmp_path / "wrong.pth"), **TINY)
    with pytest.raises(ModelConfigError, match="not found"):
        create_segmenter("Unet", "resnet18", pretrained_path=str(tmp_path / "nope.pth"), **TINY)
    with pytest.raises(ModelConfigError, match="unknown arch"):
        create_segmenter("NoSuchNet", "resnet18")
    with pytest.raises(ModelConfigError, match="logits of shape"):
        create_segmenter("FPN", "resnet18", encoder_depth=3)
    with pytest.raises(ModelConfigError, match="input_scale"):
        create_segmenter("Unet", "resnet18", input_scale=2.0)


def test_combined_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 32, 64), (torch.rand(2, 4, 32, 64) > 0.8).float()
    bce, dice = ClassBCE([2.0, 2.0, 1.0, 1.5]), DiceLoss("multilabel")
    loss = CombinedLoss(
        {
            "bce": {"loss": bce, "weight": 0.75},
            "dice": {"loss": dice, "weight": 0.25},
            "off": {"loss": DiceLoss("multilabel"), "weight": 0.0},
        }
    )
    assert set(loss.terms) == {"bce", "dice"}
    expected = 0.75 * bce(logits, target) + 0.25 * dice(logits, target)
    assert torch.allclose(loss(logits, target), expected)
    # pos_weight really weighs the positives per class: more weight on class 1 raises the loss
    heavier = ClassBCE([5.0, 2.0, 1.0, 1.5])
    assert heavier(logits, target) > bce(logits, target)
    with pytest.raises(LossConfigError, match="every weight is zero"):
        CombinedLoss({"dice": {"loss": dice, "weight": 0}})
    with pytest.raises(LossConfigError, match="terms.x.loss"):
        CombinedLoss({"x": {"loss": "bce", "weight": 1}})
    with pytest.raises(LossConfigError, match="pos_weight"):
        ClassBCE([1.0, 2.0])(logits, target)


def test_loss_builds_from_the_default_config():
    from omegaconf import OmegaConf

    node = OmegaConf.load("configs/segmenter/default.yaml").loss
    loss = build(node, "segmenter.loss")
    assert isinstance(loss, CombinedLoss) and set(loss.terms) == {"bce", "dice"}
    logits, target = torch.randn(1, 4, 32, 32, requires_grad=True), torch.zeros(1, 4, 32, 32)
    loss(logits, target).backward()
    assert logits.grad is not None


def test_second_phase_starts_from_a_checkpoint_of_the_same_model(tmp_path):
    from common.config import ConfigError
    from segmenter.stage import init_weights

    config = {"_target_": FACTORY, "arch": "Unet", "encoder_name": "resnet18", "encoder_weights": None, **TINY}
    trained = build(config)
    save_checkpoint(tmp_path / "best.pt", trained, config, "segmenter", {"fold": 0})
    fresh = build(config)
    init_weights(fresh, {**config, "encoder_weights": "imagenet"}, str(tmp_path / "best.pt"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(ConfigError, match="init_from.*another model"):
        init_weights(
            build({**config, "arch": "UnetPlusPlus"}), {**config, "arch": "UnetPlusPlus"}, str(tmp_path / "best.pt")
        )
