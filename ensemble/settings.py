"""The composed ``infer`` config for commands other than ``infer.py`` (threshold search, ensemble OOF, CV report).

They take the same Hydra overrides as ``infer.py`` (``postprocess=first_place ensemble.gating.mode=soft
tta=flips ...``), so "the default thresholds" and "the TTA" mean exactly what ``python infer.py`` does.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config import to_plain
from common.errors import ConfigError

__all__ = [
    "CONFIG_DIR",
    "PREDICTOR_SECTIONS",
    "PREDICTOR_KEYS",
    "override_parser",
    "split_overrides",
    "compose_infer",
    "section",
    "predictor_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# What ``ensemble.predict.build_predictor`` and its loader read from the infer config: every command that predicts
# with checkpoints takes these (``predictor_config``), so no override of infer.py is dropped on the way.
PREDICTOR_SECTIONS = ("checkpoints", "tta", "ensemble", "postprocess")
PREDICTOR_KEYS = (
    "thresholds",
    "device",
    "channels_last",
    "amp",
    "compile",
    "batch_flips",
    "profile",
    "batch_size",
    "num_workers",
)


def override_parser(module: str, doc: str | None, overrides: str) -> argparse.ArgumentParser:
    """The parser of a command that takes infer.py's Hydra overrides beside its own options: ``python -m <module>``,
    the first line of ``doc`` (the module docstring), and an epilog naming the overrides that matter to it."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=(doc or module).splitlines()[0],
        epilog=f"Arguments with '=' are Hydra overrides of the infer config {overrides}",
    )


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(paths, Hydra overrides) of positional arguments: an argument with '=' in it is an override."""
    paths = [a for a in args if "=" not in a]
    return paths, [a for a in args if "=" in a]


def compose_infer(overrides: Sequence[str] = (), config_name: str = "infer") -> Any:
    """The ``infer`` config composed with ``overrides`` (a DictConfig; resolve only the sections you use)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app or test: a fresh context of our own
            GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="steelseg"):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"overrides {list(overrides)}: {exc}".replace("\n", " ")) from exc


def section(cfg: Any, *keys: str) -> dict[str, Any]:
    """Plain, resolved copies of the named top-level sections (e.g. ``postprocess``, ``ensemble``, ``tta``)."""
    from omegaconf.errors import OmegaConfBaseException

    out = {}
    for key in keys:
        try:
            out[key] = to_plain(cfg[key])
        except (OmegaConfBaseException, KeyError) as exc:
            raise ConfigError(f"{key}: {exc}".replace("\n", " ")) from exc
    return out


def predictor_config(cfg: Any) -> dict[str, Any]:
    """The plain parts of a composed infer config that ``build_predictor`` and its loader read (``PREDICTOR_*``)."""
    return section(cfg, *PREDICTOR_SECTIONS, *PREDICTOR_KEYS)
