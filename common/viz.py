"""Draw defect masks on steel images: per-class colours, contour overlays (cv2.findContours), PNG bytes."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from common.constants import CLASS_IDS

__all__ = [
    "CLASS_COLORS",
    "CLASS_HEX",
    "hex_colour",
    "as_rgb",
    "contour_overlay",
    "mask_image",
    "stack_masks",
    "png_bytes",
    "png_data_uri",
]

# RGB per class, as in the seed's notebook: yellow = 1, green = 2, blue = 3, magenta = 4.
CLASS_COLORS: dict[int, tuple[int, int, int]] = {1: (255, 220, 0), 2: (0, 200, 70), 3: (40, 110, 255), 4: (230, 0, 230)}


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """``#rrggbb`` of an RGB triple (CSS, Plotly)."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


CLASS_HEX = {c: hex_colour(rgb) for c, rgb in CLASS_COLORS.items()}


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 copy of a grey (HxW) or RGB image."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return image.copy()


def contour_overlay(image: np.ndarray, masks: dict[int, np.ndarray], thickness: int = 2) -> np.ndarray:
    """The image with the outline of each class mask drawn in its class colour."""
    out = np.ascontiguousarray(as_rgb(image))
    for class_id, mask in sorted(masks.items()):
        contours, _ = cv2.findContours((mask != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, CLASS_COLORS[class_id], thickness)
    return out


def mask_image(masks: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Black RGB image with each class mask filled in its class colour (later classes on top)."""
    out = np.zeros((*shape, 3), np.uint8)
    for class_id, mask in sorted(masks.items()):
        out[mask != 0] = CLASS_COLORS[class_id]
    return out


def stack_masks(masks: np.ndarray) -> dict[int, np.ndarray]:
    """(4, H, W) class masks -> {class id: mask} for the non-empty classes."""
    return {c: masks[i] for i, c in enumerate(CLASS_IDS) if masks[i].any()}


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 RGB or grey image."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"cannot PNG-encode an image of shape {image.shape}")
    return buf.tobytes()


def png_data_uri(image: np.ndarray, scale: float = 1.0) -> str:
    """``data:image/png;base64,...`` of the image, optionally downscaled (for web pages)."""
    if scale != 1.0:
        h, w = image.shape[:2]
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
