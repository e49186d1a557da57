"""Segmenter model factories: ``smp.create_model`` (Unet, FPN, Unet++, ... any smp or ``tu-`` timm encoder).

``create_segmenter``: (B, 3, H, W) images -> (B, 4, H, W) logits, one sigmoid channel per defect class.
``create_joint``: the same network with smp's classification head on the encoder (``aux_params``), giving
``(mask_logits (B, 4, H, W), label_logits (B, 4))`` from one pass (the 4th-place two-headed model).
H and W must be multiples of 32 (256x1600 and crops such as 256x512 are), or use ``input_scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import SteelsegError
from engine.checkpoint import CheckpointError, read_torch_file
from engine.pretrained import check_architecture, is_package_source, load_into_timm, package_of

N_CLASSES = 4
FACTORY = "segmenter.model.create_segmenter"
JOINT_FACTORY = "segmenter.model.create_joint"

__all__ = [
    "N_CLASSES",
    "FACTORY",
    "JOINT_FACTORY",
    "ModelConfigError",
    "Rescaled",
    "load_encoder_weights",
    "check_output_size",
    "create_segmenter",
    "create_joint",
    "param_groups",
]


class ModelConfigError(SteelsegError, ValueError):
    """A segmenter config naming an unknown architecture/encoder or an unusable weights file."""


class Rescaled(nn.Module):
    """Runs ``net`` on the input resized by ``scale`` and resizes the logits back (cheap CPU training).

    The resized input is padded (reflect) to a multiple of 32 for the encoder and the padding cut off again.
    """

    def __init__(self, net: nn.Module, scale: float, multiple: int = 32) -> None:
        super().__init__()
        self.net, self.scale, self.multiple = net, float(scale), multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        small = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False, antialias=True)
        h, w = small.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            small = F.pad(small, (0, pad_w, 0, pad_h), mode="reflect")
        out = self.net(small)
        masks = out[0] if isinstance(out, tuple) else out
        masks = F.interpolate(masks[..., :h, :w], size=size, mode="bilinear", align_corners=False)
        return (masks, out[1]) if isinstance(out, tuple) else masks


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelConfigError(f"segmenter.model.pretrained_path: weights file {path} not found")
    try:
        state = read_torch_file(path)
    except CheckpointError as exc:
        raise ModelConfigError(f"segmenter.model.pretrained_path: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ModelConfigError(f"segmenter.model.pretrained_path: {path} holds no state dict")
    return state


def load_encoder_weights(model: nn.Module, path: Path | str) -> None:
    """Load a local encoder state dict (smp-encoder, timm or torchvision keys) into ``model.encoder``.

    Keys the encoder does not have (e.g. a classifier head ``fc.*``) are ignored; encoder tensors the file
    lacks or whose shapes differ are an error naming the file.
    """
    path = Path(path)
    state = _read_state_dict(path)
    encoder = model.encoder
    # A tu- encoder wraps the timm network as ``encoder.model``; accept bare timm keys for it.
    target = encoder.model if hasattr(encoder, "model") and not any(k.startswith("model.") for k in state) else encoder
    for prefix in ("module.", "encoder."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ModelConfigError(
            f"segmenter.model.pretrained_path: {path} does not fit encoder {type(encoder).__name__}: "
            f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(wrong)} of other shape (e.g. {wrong[:3]})"
        )
    target.load_state_dict({k: state[k] for k in own}, strict=True)


@torch.no_grad()
def check_output_size(model: nn.Module, in_channels: int, classes: int, where: str) -> None:
    """Raise unless the network maps a (1, C, 64, 96) input to (1, classes, 64, 96) logits.

    Some settings silently break the size contract (e.g. smp FPN with ``encoder_depth`` < 5).
    """
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, in_channels, 64, 96))
    finally:
        model.train(was_training)
    shape = tuple((out[0] if isinstance(out, tuple) else out).shape)
    if shape != (1, classes, 64, 96):
        raise ModelConfigError(f"{where}: a 64x96 input gives logits of shape {shape}, expected (1, {classes}, 64, 96)")
    if isinstance(out, tuple) and tuple(out[1].shape) != (1, classes):
        raise ModelConfigError(f"{where}: the class head gives shape {tuple(out[1].shape)}, expected (1, {classes})")


def _build(
    arch: str,
    encoder_name: str,
    encoder_weights: str | None,
    pretrained_path: str | None,
    classes: int,
    in_channels: int,
    input_scale: float,
    key: str,
    **kwargs: Any,
) -> nn.Module:
    """smp.create_model with errors that name the config key; optional local encoder weights and input scale."""
    if not 0 < input_scale <= 1:
        raise ModelConfigError(f"{key}.input_scale must be in (0, 1], got {input_scale}")
    package = encoder_weights if is_package_source(encoder_weights) and not pretrained_path else None
    if package:  # an installed weights package fills a timm (tu-) encoder after the build
        fits = package_of(package, f"{key}.encoder_weights").architectures
        if not encoder_name.startswith("tu-"):  # smp's own encoders (efficientnet-b0, resnet34) are not timm's
            raise ModelConfigError(
                f"{key}.encoder_weights: {package} fills a timm encoder, not smp's "
                f"{encoder_name!r}; set {key}.encoder_name=tu-{fits[0]} (or other weights)"
            )
        check_architecture(package, encoder_name[3:], f"{key}.encoder_weights", f"{key}.encoder_name", "tu-")
    weights = None if pretrained_path or package else encoder_weights
    try:
        model = smp.create_model(
            arch, encoder_name=encoder_name, encoder_weights=weights, in_channels=in_channels, classes=classes, **kwargs
        )
    except KeyError as exc:
        raise ModelConfigError(f"{key}: unknown arch or encoder ({arch!r}, {encoder_name!r}): {exc}") from exc
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        hint = f" (offline? set {key}.pretrained_path to a local file or encoder_weights=null)" if weights else ""
        raise ModelConfigError(f"{key}: cannot build {arch}/{encoder_name}{hint}: {exc}") from exc
    if pretrained_path:
        load_encoder_weights(model, pretrained_path)
    elif package:
        load_into_timm(
            model.encoder.model,
            package,
            encoder_name[3:],
            option=f"{key}.encoder_weights",
            model_option=f"{key}.encoder_name",
        )
    check_output_size(model, in_channels, classes, f"{key} ({arch}/{encoder_name}, {kwargs})")
    return Rescaled(model, input_scale) if input_scale != 1 else model


def create_segmenter(
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    pretrained_path: str | None = None,
    classes: int = N_CLASSES,
    in_channels: int = 3,
    input_scale: float = 1.0,
    **kwargs: Any,
) -> nn.Module:
    """Build an smp segmentation model returning logits.

    Args:
        arch: smp architecture name (``Unet``, ``FPN``, ``UnetPlusPlus``, ...).
        encoder_name: smp encoder or ``tu-<timm name>``.
        encoder_weights: smp/hub weights name (``imagenet``) when online; ``pip:<package>`` for an installed
            weights package (``engine.pretrained``, a ``tu-`` encoder of its family); None for random init.
        pretrained_path: local encoder state dict for offline machines (overrides ``encoder_weights``).
        input_scale: run the network at this fraction of the input size (1.0 = native), logits resized back.
        kwargs: passed to the architecture (``decoder_channels``, ``decoder_attention_type``, ...).
    """
    return _build(
        arch,
        encoder_name,
        encoder_weights,
        pretrained_path,
        classes,
        in_channels,
        input_scale,
        "segmenter.model",
        **kwargs,
    )


def create_joint(
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    pretrained_path: str | None = None,
    classes: int = N_CLASSES,
    in_channels: int = 3,
    input_scale: float = 1.0,
    label_pooling: str = "max",
    label_dropout: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """A two-headed smp model: ``(mask_logits (B, 4, H, W), label_logits (B, 4))`` from one encoder pass.

    ``label_pooling`` (``max`` or ``avg``) and ``label_dropout`` configure smp's classification head
    (``aux_params``) on the deepest encoder features; the other arguments are ``create_segmenter``'s.
    """
    if label_pooling not in ("max", "avg"):
        raise ModelConfigError(f"joint.model.label_pooling: expected max or avg, got {label_pooling!r}")
    aux = {"classes": classes, "pooling": label_pooling, "dropout": float(label_dropout) or None}
    return _build(
        arch,
        encoder_name,
        encoder_weights,
        pretrained_path,
        classes,
        in_channels,
        input_scale,
        "joint.model",
        aux_params=aux,
        **kwargs,
    )


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Encoder (``backbone``, possibly pretrained) vs decoder and heads (``head``), for separate learning rates
    (segmenters and joint models alike)."""
    net = model.net if isinstance(model, Rescaled) else model
    encoder = {id(p) for p in net.encoder.parameters()}
    params = list(model.parameters())
    return {"backbone": [p for p in params if id(p) in encoder], "head": [p for p in params if id(p) not in encoder]}
