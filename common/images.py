"""Read Severstal images by content (real data has PNG bytes named .jpg), with clear errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.errors import ImageError
from common.constants import IMAGE_SHAPE

__all__ = ['sniff_format', 'check_complete', 'decode_image', 'read_image', 'read_size']

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_MAGIC, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def sniff_format(data: bytes) -> str:
    """Return 'jpeg' or 'png' from the file's magic bytes, or '' when it is neither."""
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    return ""


def check_complete(data: bytes, path: Path | str) -> None:
    """Raise ImageError when the bytes are not a complete JPEG or PNG (truncated downloads)."""
    kind = sniff_format(data)
    if not kind:
        raise ImageError(f"{path}: not a JPEG or PNG file (first bytes {data[:8]!r})")
    tail = data.rstrip(b"\x00")[-16:]
    if kind == "jpeg" and not tail.endswith(_JPEG_EOI):
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    if kind == "png" and _PNG_IEND not in tail:
        raise ImageError(f"{path}: truncated PNG (no IEND chunk)")


def decode_image(data: bytes, path: Path | str = "<bytes>", channels: int = 3,
                 shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Decode JPEG/PNG bytes to uint8 HxW (channels=1) or HxWx3 (channels=3), checking the size."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    check_complete(data, path)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise ImageError(f"{path}: the image data cannot be decoded")
    if shape is not None and image.shape[:2] != tuple(shape):
        raise ImageError(f"{path}: image is {image.shape[0]}x{image.shape[1]}, expected {shape[0]}x{shape[1]}")
    if channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def read_image(path: Path | str, channels: int = 3, shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Read an image file by content (never by extension) as uint8 HxW or HxWx3 RGB."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return decode_image(data, path, channels, shape)


def read_size(path: Path | str) -> tuple[int, int]:
    """(height, width) from the file header alone, for fast layout checks of a whole folder."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(f"{path}: unreadable image ({exc})") from exc
    return height, width
