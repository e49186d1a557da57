"""The one place objects are built from ``_target_`` configs, with errors that name the key."""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config node that cannot be turned into an object; the message names the key."""


def build(node: DictConfig | dict | None, key: str = "<config>", **kwargs: Any) -> Any:
    """Instantiate ``node`` (which must hold ``_target_``); extra kwargs override config values."""
    if node is None:
        raise ConfigError(f"{key}: missing config node")
    if isinstance(node, dict):
        node = OmegaConf.create(node)
    if "_target_" not in node:
        raise ConfigError(f"{key}: no _target_ in {OmegaConf.to_container(node, resolve=False)}")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        raise ConfigError(f"{key}: cannot build {node._target_}: {exc}") from exc


def to_plain(node: Any) -> Any:
    """A resolved, plain-python copy of a config node (for checkpoints and reports)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node
