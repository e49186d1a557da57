"""Per-class decision rules (thresholds, areas, gating) from config or from a tuned thresholds file.

Thresholds file (JSON, written by ``python -m ensemble.threshold_search``)::

    {"format": "steelseg-thresholds", "version": 1, "class_ids": [1, 2, 3, 4],
     "gating": "veto", "image_threshold": 0.5, "area_scale": 2.0,
     "classes": {"1": {"pixel_threshold": 0.5, "min_area": 600, "classifier_threshold": 0.5,
                       "label_threshold": 0.0}, ...},
     "scores": {...}, "grid": {...}, "sources": [...]}

Values the file does not hold (``min_component``, ``resolve_overlap``) come from the config.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from common.annotations import CLASS_IDS
from common.errors import SteelsegError
from common.io import atomic_write_text

GATING_MODES = ("none", "image", "veto", "soft", "scale", "label")
CLASSIFIER_MODES = ("image", "veto", "soft", "scale")
PER_CLASS = ("pixel_threshold", "min_area", "min_component", "classifier_threshold", "label_threshold")
TUNED = ("pixel_threshold", "min_area", "classifier_threshold", "label_threshold")
FILE_FORMAT, FILE_VERSION = "steelseg-thresholds", 1


class RulesError(SteelsegError, ValueError):
    """Post-processing or gating settings that are inconsistent; the message names the key or file."""


@dataclass(frozen=True)
class Rules:
    """Everything that turns probabilities into masks, per class in CLASS_IDS order.

    gating: none | image (skip images whose top class probability < image_threshold) |
    veto (drop class c when p_c < classifier_threshold[c]) | soft (seg prob x class prob) |
    scale (min_area x area_scale when p_c < classifier_threshold[c]) | label (no classifier).
    label_threshold (any mode): drop class c when its maximum segmentation probability is below it.
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

    def __post_init__(self) -> None:
        n = len(CLASS_IDS)
        for key in PER_CLASS:
            value = getattr(self, key)
            if isinstance(value, (int, float)):
                value = (value,) * n
            value = tuple(value)
            if len(value) != n:
                raise RulesError(f"postprocess.{key}: expected {n} values (classes {list(CLASS_IDS)}), got {list(value)}")
            cast = int if key in ("min_area", "min_component") else float
            value = tuple(cast(v) for v in value)
            if any(v < 0 for v in value) or (cast is float and any(v > 1 for v in value)):
                raise RulesError(f"postprocess.{key}: values out of range: {list(value)}")
            object.__setattr__(self, key, value)
        if self.gating not in GATING_MODES:
            raise RulesError(f"ensemble.gating.mode: unknown mode {self.gating!r}; choose from {list(GATING_MODES)}")
        if not 0 <= self.image_threshold <= 1 or self.area_scale < 1:
            raise RulesError(f"ensemble.gating: image_threshold {self.image_threshold} must be in [0, 1] "
                             f"and area_scale {self.area_scale} >= 1")

    @property
    def needs_classifier(self) -> bool:
        return self.gating in CLASSIFIER_MODES

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def rules_from_config(postprocess: Mapping[str, Any], gating: Mapping[str, Any]) -> Rules:
    """Rules from the ``postprocess`` and ``ensemble.gating`` config nodes."""
    keys = set(PER_CLASS) | {"resolve_overlap"}
    unknown = set(postprocess) - keys
    if unknown:
        raise RulesError(f"postprocess: unknown keys {sorted(unknown)}; known: {sorted(keys)}")
    unknown = set(gating) - {"mode", "image_threshold", "area_scale"}
    if unknown:
        raise RulesError(f"ensemble.gating: unknown keys {sorted(unknown)}")
    kwargs = {k: (list(v) if not isinstance(v, (int, float, bool, str)) else v) for k, v in postprocess.items()}
    return Rules(**kwargs, gating=str(gating.get("mode", "veto")),
                 image_threshold=float(gating.get("image_threshold", 0.5)),
                 area_scale=float(gating.get("area_scale", 2.0)))


def write_thresholds(path: Path | str, rules: Rules, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the tuned part of ``rules`` (plus scores/provenance in ``extra``) as a thresholds file."""
    payload: dict[str, Any] = {
        "format": FILE_FORMAT, "version": FILE_VERSION, "class_ids": list(CLASS_IDS),
        "gating": rules.gating, "image_threshold": rules.image_threshold, "area_scale": rules.area_scale,
        "classes": {str(c): {k: getattr(rules, k)[i] for k in TUNED} for i, c in enumerate(CLASS_IDS)},
    }
    payload.update(extra or {})
    return atomic_write_text(path, json.dumps(payload, indent=2, default=float) + "\n")


def read_thresholds(path: Path | str, base: Rules) -> Rules:
    """``base`` with the tuned values of a thresholds file; refuse files for other classes or formats."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RulesError(f"{path}: thresholds file not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RulesError(f"{path}: not a readable thresholds file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT or payload.get("version") != FILE_VERSION:
        raise RulesError(f"{path}: not a {FILE_FORMAT} v{FILE_VERSION} file")
    classes = payload.get("classes")
    if payload.get("class_ids") != list(CLASS_IDS) or not isinstance(classes, dict) or \
            sorted(classes) != sorted(str(c) for c in CLASS_IDS):
        found = payload.get("class_ids"), sorted(classes) if isinstance(classes, dict) else classes
        raise RulesError(f"{path}: thresholds are for classes {found}, expected {list(CLASS_IDS)}")
    values: dict[str, Any] = {}
    for key in TUNED:
        try:
            values[key] = tuple(classes[str(c)][key] for c in CLASS_IDS)
        except (KeyError, TypeError) as exc:
            raise RulesError(f"{path}: class entries lack {key!r}") from exc
    try:
        return replace(base, **values, gating=payload["gating"], image_threshold=payload["image_threshold"],
                       area_scale=payload["area_scale"])
    except KeyError as exc:
        raise RulesError(f"{path}: missing key {exc}") from exc
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from exc
