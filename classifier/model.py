"""The classifier network: any timm model with a 4-logit head (one per defect class)."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from common.config import ConfigError
from engine.checkpoint import CheckpointError, read_torch_file
from engine.pretrained import PREFIX, is_package_source, load_into_timm


def create_classifier(
    name: str,
    num_classes: int = 4,
    pretrained: bool | str = False,
    pretrained_path: str | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    global_pool: str | None = None,
) -> nn.Module:
    """``timm.create_model(name, num_classes=4)``; weights from the hub, from an installed weights package
    (``pretrained=pip:efficientnet-lite0``, ``engine.pretrained``; the new head keeps its random init) or from
    ``pretrained_path``.

    Output: logits (B, num_classes). ``global_pool`` (e.g. ``max``; None keeps the model's own) suits
    small, local defects. Errors name the config key to fix (``name``, ``pretrained``,
    ``pretrained_path``) and are raised before any training starts.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise ConfigError(
            f"classifier.model.name: unknown timm model {name!r}" + (f"; similar: {close}" if close else "")
        )
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    if isinstance(pretrained, str) and not pretrained_path:
        if not is_package_source(pretrained):
            raise ConfigError(
                f"classifier.model.pretrained: expected true, false or {PREFIX}<package>, got {pretrained!r}"
            )
        model = timm.create_model(name, pretrained=False, **kwargs)
        head = str(model.pretrained_cfg.get("classifier") or "classifier")
        load_into_timm(
            model,
            pretrained,
            name,
            option="classifier.model.pretrained",
            model_option="classifier.model.name",
            new_head=(f"{head}.",),
        )
        return model
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise ConfigError(f"classifier.model.pretrained_path: weights file not found: {path}")
        try:  # read as data first: timm's own error would repeat torch's advice to load with weights_only=False
            read_torch_file(path)
        except CheckpointError as exc:
            raise ConfigError(f"classifier.model.pretrained_path: {exc}") from exc
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except Exception as exc:  # hub, network and file errors come in many types
        if not pretrained:
            raise
        where = f"file {pretrained_path}" if pretrained_path else "the hub"
        raise ConfigError(
            f"classifier.model.pretrained: cannot load {name} weights from {where} "
            f"({type(exc).__name__}: {exc}); offline, set classifier.model.pretrained_path=<weights "
            f"file> or classifier.model.pretrained=false"
        ) from exc


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Pretrained ``backbone`` vs the new classification ``head`` (timm's ``get_classifier``)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    params = list(model.parameters())
    return {"backbone": [p for p in params if id(p) not in head], "head": [p for p in params if id(p) in head]}
