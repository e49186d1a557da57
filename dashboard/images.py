"""Layers drawn over the steel images of the page (class masks; true/false positives/negatives) and PNG export.

A layer is an RGBA image the size of the steel image: transparent where nothing is drawn, a light fill
inside each region and an opaque 2-pixel outline around it, so small defects stay visible when the
browser scales the strip down. The page stacks a layer over the untouched JPEG; the PNG export blends them.
"""

from __future__ import annotations

import cv2
import numpy as np

from common.viz import CLASS_COLORS, as_rgb

__all__ = [
    "MATCH_COLORS",
    "MATCH_LABELS",
    "layer",
    "class_layer",
    "match_regions",
    "match_layer",
    "png_rgba",
    "blend",
    "compare_png",
]

Rgb = tuple[int, int, int]
# True positive: predicted and true; false positive: predicted only; false negative: missed.
MATCH_COLORS: dict[str, Rgb] = {"TP": (40, 200, 40), "FP": (235, 40, 40), "FN": (255, 176, 0)}
MATCH_LABELS = {
    "TP": "true positive (predicted and true)",
    "FP": "false positive (predicted only)",
    "FN": "false negative (missed)",
}
FILL_ALPHA = 80


def layer(regions: list[tuple[np.ndarray, Rgb]], shape: tuple[int, int]) -> np.ndarray:
    """RGBA layer: each region filled (light) and outlined (opaque) in its colour, later regions on top."""
    out = np.zeros((*shape, 4), np.uint8)
    for mask, rgb in regions:
        region = np.asarray(mask) != 0
        if not region.any():
            continue
        out[region] = (*rgb, FILL_ALPHA)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (*rgb, 255), 2)
    return out


def class_layer(masks: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Layer of class masks in the class colours (yellow 1, green 2, blue 3, magenta 4)."""
    return layer([(m, CLASS_COLORS[c]) for c, m in sorted(masks.items())], shape)


def match_regions(pred: np.ndarray | None, truth: np.ndarray | None, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """TP / FP / FN pixels of one class (a missing mask is empty)."""
    p = np.zeros(shape, bool) if pred is None else np.asarray(pred) != 0
    t = np.zeros(shape, bool) if truth is None else np.asarray(truth) != 0
    return {"TP": p & t, "FP": p & ~t, "FN": ~p & t}


def match_layer(regions: dict[str, np.ndarray]) -> np.ndarray:
    """Layer of a class's TP / FP / FN pixels in the match colours."""
    shape = next(iter(regions.values())).shape
    return layer([(regions[k], MATCH_COLORS[k]) for k in ("TP", "FP", "FN")], shape)


def png_rgba(image: np.ndarray) -> bytes:
    """PNG bytes of an RGBA (or RGB) uint8 image."""
    code = cv2.COLOR_RGBA2BGRA if image.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, code))
    if not ok:
        raise ValueError(f"cannot PNG-encode an image of shape {image.shape}")
    return buf.tobytes()


def blend(image: np.ndarray, over: np.ndarray) -> np.ndarray:
    """The RGB image with an RGBA layer alpha-blended on top."""
    base = as_rgb(image).astype(np.float32)
    alpha = over[..., 3:4].astype(np.float32) / 255.0
    return (base * (1 - alpha) + over[..., :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)


def _band(width: int, text: str, height: int = 30) -> np.ndarray:
    band = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(band, text, (8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (20, 20, 20), 1, cv2.LINE_AA)
    return band


def _legend(width: int) -> np.ndarray:
    band = _band(width, "")
    x = 8
    for key, rgb in MATCH_COLORS.items():
        cv2.rectangle(band, (x, 8), (x + 16, 22), rgb, -1)
        cv2.putText(band, MATCH_LABELS[key], (x + 22, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
        x += 30 + 9 * len(MATCH_LABELS[key])
    return band


def compare_png(image: np.ndarray, title: str, strips: list[tuple[str, np.ndarray]], match_key: bool = True) -> bytes:
    """One PNG: a title, then per strip a caption over the image blended with its layer, then the TP/FP/FN key."""
    width = image.shape[1]
    parts = [_band(width, title, 34)]
    for caption, over in strips or [
        ("no defect in the truth nor in the prediction", np.zeros((*image.shape[:2], 4), np.uint8))
    ]:
        parts += [_band(width, caption), blend(image, over)]
    if match_key:
        parts.append(_legend(width))
    return png_rgba(np.concatenate(parts, axis=0))
