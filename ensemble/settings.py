"""The infer config: its root keys checked once (``InferSettings``), and composed for commands other than
``infer.py`` (threshold search, ensemble OOF, CV report, pseudo-labels, export).

Those commands take the same Hydra overrides as ``infer.py`` (``postprocess=first_place ensemble.gating.mode=soft
tta=flips ...``), so "the default thresholds" and "the TTA" mean exactly what ``python infer.py`` does.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.config import switch, to_plain, whole_number
from common.constants import SUBMISSION_HEADERS
from common.errors import ConfigError

__all__ = [
    "RUNTIMES",
    "AMP_CHOICES",
    "COMPILE_MODES",
    "InferSettings",
    "check_amp",
    "compile_mode",
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


RUNTIMES = ("torch", "onnx")
AMP_CHOICES = ("auto", "bfloat16", "float16", None)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_OFF = (False, None, "none", "null")


def check_amp(amp: Any) -> str | None:
    """The ``amp`` setting's name checked: auto, bfloat16, float16, or None for null/false (float32)."""
    if amp in _OFF:
        return None
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp: expected auto, bfloat16, float16 or null (float32), got {amp!r}")
    return str(amp)


def compile_mode(value: Any) -> str | None:
    """The ``compile`` setting checked: null/false (eager, the default) or a ``torch.compile`` mode."""
    if value in _OFF:
        return None
    if value not in COMPILE_MODES:
        raise ConfigError(f"compile: expected null (eager) or one of {list(COMPILE_MODES)}, got {value!r}")
    return str(value)


def _text(value: Any, key: str) -> str | None:
    """A path or name setting: None, or a non-empty string (a number or a list here is a mistake)."""
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigError(f"{key}: expected a path or name, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class InferSettings:
    """The root keys of an infer config (``configs/infer.yaml``; the sections ``checkpoints``, ``tta``,
    ``ensemble``, ``postprocess``, ``data`` are read where they are used), checked in one place: infer.py, the
    ensemble OOF, the threshold search, pseudo-labels, the export and both runtimes read them from here, so a
    bad value is the same one-line error naming its key before any model is loaded."""

    runtime: str = "torch"
    bundle: str | None = None
    providers: tuple[str, ...] | None = None
    thresholds: str | None = None
    images: str | None = None
    output: str | None = None
    format: str = "new"
    evaluate: bool = False
    truth: str | None = None
    store: str | None = None
    run_id: str = "infer"
    batch_size: int | None = None  # None: auto, the runtime's rule for its device
    num_workers: int = 0
    threads: int | None = None  # None: every core
    device: str = "cpu"
    channels_last: bool = True
    amp: str | None = "auto"
    batch_flips: bool = True
    compile: str | None = None
    profile: bool = False
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> InferSettings:
        """The checked settings of ``cfg`` (a composed infer config or its plain parts); a missing key takes the
        default above."""
        get = cfg.get
        runtime = str(get("runtime", "torch"))
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime: unknown runtime {runtime!r}; choose from {list(RUNTIMES)}")
        fmt = str(get("format", "new"))
        if fmt not in SUBMISSION_HEADERS:
            raise ConfigError(f"format: expected one of {list(SUBMISSION_HEADERS)}, got {fmt!r}")
        providers = get("providers")
        if providers is not None:
            if isinstance(providers, str) or not all(isinstance(p, str) and p for p in providers):
                raise ConfigError(f"providers: expected a list of execution provider names, got {providers!r}")
            providers = tuple(providers)
        batch_size = get("batch_size")
        if batch_size == "auto":
            batch_size = None
        device = get("device", "cpu")
        if not isinstance(device, str):
            raise ConfigError(f"device: expected cpu, cuda, cuda:<index> or auto, got {device!r}")
        run_id = get("run_id")
        return cls(
            runtime=runtime,
            bundle=_text(get("bundle"), "bundle"),
            providers=providers or None,
            thresholds=_text(get("thresholds"), "thresholds"),
            images=_text(get("images"), "images"),
            output=_text(get("output"), "output"),
            format=fmt,
            evaluate=switch(get("evaluate", False), "evaluate"),
            truth=_text(get("truth"), "truth"),
            store=_text(get("store"), "store"),
            run_id="infer" if run_id in (None, "") else str(run_id),
            batch_size=whole_number(batch_size, "batch_size", minimum=1, note=" (or auto: chosen for the device)"),
            num_workers=whole_number(get("num_workers"), "num_workers", default=0) or 0,
            threads=whole_number(get("threads"), "threads", note=" (0 or null: every core)") or None,
            device=device,
            channels_last=switch(get("channels_last", True), "channels_last"),
            amp=check_amp(get("amp", "auto")),
            batch_flips=switch(get("batch_flips", True), "batch_flips"),
            compile=compile_mode(get("compile")),
            profile=switch(get("profile", False), "profile"),
            progress=switch(get("progress", True), "progress"),
        )

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The root keys these settings cover."""
        return tuple(f.name for f in fields(cls))


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
