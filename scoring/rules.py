"""Per-class decision rules (thresholds, areas, gating) from config or from a tuned thresholds file.

Thresholds file (JSON, written by ``python -m tuning.threshold_search``)::

    {"format": "steelseg-thresholds", "version": 1, "class_ids": [1, 2, 3, 4], "bins": 100,
     "gating": "veto", "image_threshold": 0.5, "area_scale": 2.0,
     "classes": {"1": {"pixel_threshold": 0.5, "min_area": 600, "classifier_threshold": 0.5,
                       "label_threshold": 0.0}, ...},
     "scores": {...}, "grid": {...}, "sources": [...]}

Values the file does not hold (``min_component``, ``resolve_overlap``) come from the config.
Pixel thresholds lie on the grid of ``bins`` steps (the OOF histogram bins), so the threshold search
scores exactly what inference does. NumPy-free and torch-free: the ONNX runtime uses it unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from common.config import check_known
from common.constants import CLASS_IDS
from common.errors import SteelsegError
from common.io import atomic_write_text
from common.oof import grid_bin

__all__ = [
    "PER_CLASS",
    "TUNED",
    "FILE_FORMAT",
    "FILE_VERSION",
    "RulesError",
    "Rules",
    "rules_from_config",
    "write_thresholds",
    "read_thresholds",
]

PER_CLASS = ("pixel_threshold", "min_area", "min_component", "classifier_threshold", "label_threshold")
TUNED = ("pixel_threshold", "min_area", "classifier_threshold", "label_threshold")
FILE_FORMAT, FILE_VERSION = "steelseg-thresholds", 1
_INTEGER = ("min_area", "min_component")


class RulesError(SteelsegError, ValueError):
    """Post-processing or gating settings that are inconsistent; the message names the key or file."""


def _number(value: Any, key: str, integer: bool) -> float | int:
    """A finite number from config/JSON; None, text, booleans, NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RulesError(f"{key}: expected a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise RulesError(f"{key}: expected a whole number of pixels, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class Rules:
    """Everything that turns probabilities into masks, per class in CLASS_IDS order.

    gating (``ensemble.gating``): none | label | image | veto | soft | scale; what each mode does is defined
    once, in ``scoring.gating.GATES``. label_threshold (any mode): drop class c when its maximum
    probability is below it. ``bins``: pixel thresholds are multiples of 1 / bins.
    """

    pixel_threshold: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
    min_area: tuple[int, ...] = (0, 0, 0, 0)
    min_component: tuple[int, ...] = (0, 0, 0, 0)
    classifier_threshold: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
    label_threshold: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    gating: str = "veto"
    image_threshold: float = 0.5
    area_scale: float = 2.0
    resolve_overlap: bool = False
    bins: int = 100

    def __post_init__(self) -> None:
        n = len(CLASS_IDS)
        bins = int(_number(self.bins, "postprocess.bins", True))  # integer=True: a whole number already
        if bins < 2:
            raise RulesError(f"postprocess.bins: must be >= 2, got {bins}")
        object.__setattr__(self, "bins", bins)
        for key in PER_CLASS:
            value = getattr(self, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,) * n
            if not isinstance(value, (list, tuple)):
                raise RulesError(f"postprocess.{key}: expected {n} numbers (classes {list(CLASS_IDS)}), got {value!r}")
            value = tuple(_number(v, f"postprocess.{key}", key in _INTEGER) for v in value)
            if len(value) != n:
                raise RulesError(
                    f"postprocess.{key}: expected {n} values (classes {list(CLASS_IDS)}), got {list(value)}"
                )
            if any(v < 0 for v in value) or (key not in _INTEGER and any(v > 1 for v in value)):
                raise RulesError(f"postprocess.{key}: values out of range: {list(value)}")
            object.__setattr__(self, key, value)
        for t in self.pixel_threshold:
            if grid_bin(t, bins) is None:
                raise RulesError(
                    f"postprocess.pixel_threshold: {t} is not a multiple of 1/{bins} strictly between 0 "
                    f"and 1 (postprocess.bins)"
                )
        from scoring.gating import get_gate  # the registry of modes (it imports this module)

        get_gate(self.gating)
        image_threshold = _number(self.image_threshold, "ensemble.gating.image_threshold", False)
        area_scale = _number(self.area_scale, "ensemble.gating.area_scale", False)
        if not 0 <= image_threshold <= 1 or area_scale < 1:
            raise RulesError(
                f"ensemble.gating: image_threshold {image_threshold} must be in [0, 1] and area_scale {area_scale} >= 1"
            )
        object.__setattr__(self, "image_threshold", image_threshold)
        object.__setattr__(self, "area_scale", area_scale)
        if not isinstance(self.resolve_overlap, bool):
            raise RulesError(f"postprocess.resolve_overlap: expected true or false, got {self.resolve_overlap!r}")

    @property
    def needs_classifier(self) -> bool:
        """True when the gating mode needs classifier probabilities (``scoring.gating.CLASSIFIER_MODES``)."""
        from scoring.gating import CLASSIFIER_MODES

        return self.gating in CLASSIFIER_MODES

    @property
    def pixel_bins(self) -> tuple[int, ...]:
        """Pixel thresholds as bin indices k (threshold k / bins)."""
        ks = tuple(grid_bin(t, self.bins) for t in self.pixel_threshold)
        if any(k is None for k in ks):  # checked at construction: only a bug gets here
            raise AssertionError(f"pixel thresholds {self.pixel_threshold} off the grid of {self.bins} bins")
        return tuple(int(k or 0) for k in ks)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def rules_from_config(postprocess: Mapping[str, Any], gating: Mapping[str, Any]) -> Rules:
    """Rules from the ``postprocess`` and ``ensemble.gating`` config nodes."""
    check_known(postprocess, [*PER_CLASS, "resolve_overlap", "bins"], "postprocess", RulesError)
    check_known(gating, ["mode", "image_threshold", "area_scale"], "ensemble.gating", RulesError)
    kwargs: dict[str, Any] = {
        k: (list(v) if not isinstance(v, (int, float, bool, str)) and v is not None else v)
        for k, v in postprocess.items()
    }  # checked by Rules.__post_init__
    return Rules(
        **kwargs,
        gating=str(gating.get("mode", "veto")),
        image_threshold=gating.get("image_threshold", 0.5),
        area_scale=gating.get("area_scale", 2.0),
    )


def write_thresholds(path: Path | str, rules: Rules, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the tuned part of ``rules`` (plus scores/provenance in ``extra``) as a thresholds file."""
    payload: dict[str, Any] = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "class_ids": list(CLASS_IDS),
        "bins": rules.bins,
        "gating": rules.gating,
        "image_threshold": rules.image_threshold,
        "area_scale": rules.area_scale,
        "classes": {str(c): {k: getattr(rules, k)[i] for k in TUNED} for i, c in enumerate(CLASS_IDS)},
    }
    payload.update(extra or {})
    return atomic_write_text(path, json.dumps(payload, indent=2, default=float, allow_nan=False) + "\n")


def read_thresholds(path: Path | str, base: Rules) -> Rules:
    """``base`` with the tuned values of a thresholds file; refuse files for other classes or formats."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RulesError(f"{path}: thresholds file not found (thresholds=)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RulesError(f"{path}: not a readable thresholds file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT or payload.get("version") != FILE_VERSION:
        raise RulesError(f"{path}: not a {FILE_FORMAT} v{FILE_VERSION} file")
    classes = payload.get("classes")
    if (
        payload.get("class_ids") != list(CLASS_IDS)
        or not isinstance(classes, dict)
        or sorted(classes) != sorted(str(c) for c in CLASS_IDS)
    ):
        found = payload.get("class_ids"), sorted(classes) if isinstance(classes, dict) else classes
        raise RulesError(f"{path}: thresholds are for classes {found}, expected {list(CLASS_IDS)}")
    values: dict[str, Any] = {}
    for key in TUNED:
        try:
            values[key] = tuple(classes[str(c)][key] for c in CLASS_IDS)
        except (KeyError, TypeError) as exc:
            raise RulesError(f"{path}: class entries lack {key!r}") from exc
    try:
        return replace(
            base,
            **values,
            gating=payload["gating"],
            image_threshold=payload["image_threshold"],
            area_scale=payload["area_scale"],
            bins=payload.get("bins", base.bins),
        )
    except KeyError as exc:
        raise RulesError(f"{path}: missing key {exc}") from exc
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from exc
