"""The gating registry: what the classifier's image-level probabilities do to each (image, class) pair.

One object per mode (``GATES``); inference (``scoring.postprocess``), fixed-rule scoring and the threshold
search (``tuning.threshold_search``) all ask these objects, so they cannot drift apart. A mode answers:

* ``needed``: which images the segmenters must see at all (the others are skipped: no segmenter pass);
* ``classifier_value``: the per-image number compared with the classifier threshold, and ``on_low``
  what happens to a pair whose value is below it: ``drop`` the pair, or ``scale`` its minimum area;
* ``pixel_bin``: the pixel-threshold bin of each image (``soft``: the threshold divided by the class
  probability, rounded up to the bin grid, i.e. segmentation probability x class probability >= t);
* ``label_value``: the value compared with the label threshold (``soft``: max probability x class probability).

``pair_rules`` turns these answers plus ``Rules`` into per-pair arrays, the counting form both inference and
the search apply. Probabilities of the classifier come from classifier members and from the image heads of
joint (two-headed) members alike. NumPy only (torch-free: the ONNX runtime uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.constants import N_CLASSES
from scoring.rules import Rules, RulesError

__all__ = [
    "PairRules",
    "Gate",
    "GATES",
    "MODES",
    "CLASSIFIER_MODES",
    "SEARCH_MODES",
    "get_gate",
    "pair_rules",
    "segment_needed",
]


@dataclass(frozen=True)
class PairRules:
    """Per (image, class) decisions, arrays of shape (N, 4): a pixel is predicted where its probability bin is
    >= ``k`` (``common.oof.bin_index``); the pair keeps its mask only if ``keep``, its area (after small
    components are removed) is >= ``min_area`` and ``label`` (the pair's gated max probability) is >= the
    class's label threshold (already folded into ``keep``)."""

    k: np.ndarray
    min_area: np.ndarray
    keep: np.ndarray


class Gate:
    """Mode ``none``: the classifier is not used (segmenters alone, no label threshold expected)."""

    name = "none"
    needs_classifier = False
    on_low: str | None = None  # "drop" | "scale" | None (no classifier threshold)
    searched = True  # the threshold search tunes this mode (``SEARCH_MODES``)

    def needed(self, cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray | None:
        """Bool (N,): the images the segmenters must see; None = all of them."""
        return None

    def classifier_value(self, cls_prob: np.ndarray | None, c: int) -> np.ndarray | None:
        """(N,) values compared with the class-``c`` classifier threshold, or None (no threshold)."""
        return None

    def pixel_bin(self, k: int, cls_prob: np.ndarray | None, c: int, bins: int) -> np.ndarray | int:
        """Pixel-threshold bin of class ``c`` per image (scalar when it is the same for all)."""
        return k

    def label_value(self, max_prob: np.ndarray, cls_prob: np.ndarray | None, c: int) -> np.ndarray:
        """(N,) values compared with the class-``c`` label threshold."""
        return max_prob[:, c]

    def threshold(self, rules: Rules, c: int) -> float:
        """The classifier threshold this mode compares ``classifier_value`` with."""
        return rules.classifier_threshold[c]

    def check(self, cls_prob: np.ndarray | None) -> None:
        if self.needs_classifier and cls_prob is None:
            raise RulesError(
                f"gating mode {self.name!r} needs classifier probabilities (classifier or joint "
                "members, or their OOF); use ensemble.gating.mode=none or label without them"
            )


def _given(cls_prob: np.ndarray | None) -> np.ndarray:
    """The classifier probabilities of a mode that needs them (``Gate.check`` refuses None before any call)."""
    if cls_prob is None:
        raise TypeError("a gating mode that needs classifier probabilities was called without them")
    return cls_prob


class LabelGate(Gate):
    """Mode ``label``: no classifier; the label threshold on the segmentation maximum decides presence."""

    name = "label"
    searched = False  # scores as ``none`` does: the search tunes label_threshold in every mode


class VetoGate(Gate):
    """Mode ``veto``: class c is dropped where its classifier probability is below its threshold; images
    where every class is vetoed skip the segmenters."""

    name = "veto"
    needs_classifier = True
    on_low = "drop"

    def needed(self, cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray:
        return np.asarray((_given(cls_prob) >= np.asarray(rules.classifier_threshold)).any(axis=1))

    def classifier_value(self, cls_prob: np.ndarray | None, c: int) -> np.ndarray:
        return _given(cls_prob)[:, c]


class ImageGate(Gate):
    """Mode ``image``: an image whose highest class probability is below ``image_threshold`` is empty
    (and skips the segmenters); the other images keep every class."""

    name = "image"
    needs_classifier = True
    on_low = "drop"

    def needed(self, cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray:
        seen: np.ndarray = _given(cls_prob).max(axis=1) >= rules.image_threshold
        return seen

    def classifier_value(self, cls_prob: np.ndarray | None, c: int) -> np.ndarray:
        highest: np.ndarray = _given(cls_prob).max(axis=1)
        return highest

    def threshold(self, rules: Rules, c: int) -> float:
        return rules.image_threshold


class ScaleGate(Gate):
    """Mode ``scale``: where the classifier says 'absent' the class needs ``area_scale`` x its min area."""

    name = "scale"
    needs_classifier = True
    on_low = "scale"

    def classifier_value(self, cls_prob: np.ndarray | None, c: int) -> np.ndarray:
        return _given(cls_prob)[:, c]


class SoftGate(Gate):
    """Mode ``soft`` (4th place): segmentation probability x class probability, thresholded. As a pixel rule:
    ``bin(p) >= ceil(k / q)``, the threshold divided by the class probability on the bin grid."""

    name = "soft"
    needs_classifier = True

    def pixel_bin(self, k: int, cls_prob: np.ndarray | None, c: int, bins: int) -> np.ndarray:
        q = _given(cls_prob)[:, c]
        with np.errstate(divide="ignore", invalid="ignore"):
            kk = np.where(q > 0, np.ceil(k / np.maximum(q, 1e-12) - 1e-9), bins)
        return np.minimum(kk, bins).astype(np.int64)

    def label_value(self, max_prob: np.ndarray, cls_prob: np.ndarray | None, c: int) -> np.ndarray:
        gated: np.ndarray = max_prob[:, c] * _given(cls_prob)[:, c]
        return gated


GATES: dict[str, Gate] = {g.name: g for g in (Gate(), LabelGate(), VetoGate(), ImageGate(), ScaleGate(), SoftGate())}
# The mode names, read off the registry (the config comment, README and ``Rules`` check follow them; a test ties them).
MODES = tuple(GATES)
CLASSIFIER_MODES = tuple(name for name, gate in GATES.items() if gate.needs_classifier)
SEARCH_MODES = tuple(name for name, gate in GATES.items() if gate.searched)


def get_gate(name: str) -> Gate:
    """The gate of a mode name; an unknown name is an error naming the key."""
    if name not in GATES:
        raise RulesError(f"ensemble.gating.mode: unknown mode {name!r}; choose from {sorted(GATES)}")
    return GATES[name]


def segment_needed(cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray | None:
    """Bool (N,): images the segmenters must see; None = all (no classifier, or a mode that skips none)."""
    gate = get_gate(rules.gating)
    if cls_prob is None or not gate.needs_classifier:
        return None
    return gate.needed(np.asarray(cls_prob, np.float64), rules)


def pair_rules(rules: Rules, max_prob: np.ndarray, cls_prob: np.ndarray | None) -> PairRules:
    """Per-pair pixel bins, minimum areas and keep flags of N images from their (N, 4) maximum segmentation
    probabilities and (N, 4) classifier probabilities (None without a classifier)."""
    gate = get_gate(rules.gating)
    gate.check(cls_prob)
    max_prob = np.asarray(max_prob, np.float64)
    cls_prob = None if cls_prob is None or not gate.needs_classifier else np.asarray(cls_prob, np.float64)
    n = len(max_prob)
    k = np.empty((n, N_CLASSES), np.int64)
    min_area = np.empty((n, N_CLASSES), np.float64)
    keep = np.ones((n, N_CLASSES), bool)
    for c in range(N_CLASSES):
        k[:, c] = gate.pixel_bin(rules.pixel_bins[c], cls_prob, c, rules.bins)
        min_area[:, c] = rules.min_area[c]
        value = gate.classifier_value(cls_prob, c)
        if value is not None:
            low = value < gate.threshold(rules, c)
            if gate.on_low == "drop":
                keep[:, c] &= ~low
            elif gate.on_low == "scale":
                min_area[low, c] *= rules.area_scale
        keep[:, c] &= gate.label_value(max_prob, cls_prob, c) >= rules.label_threshold[c]
    return PairRules(k, min_area, keep)
