"""Read Severstal images by content (real data has PNG bytes named .jpg), with clear errors.

One orientation rule for every reader (training, infer, the service, the dashboard, EDA): the pixels are taken as
stored and an EXIF orientation tag is ignored (``DECODE_FLAGS``), as the Kaggle data needs; the header check
(``read_size``, PIL's stored size) therefore agrees with the decode, so a file that passes it also reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from common.constants import IMAGE_SHAPE
from common.errors import ImageError

__all__ = [
    "DECODE_FLAGS",
    "sniff_format",
    "check_complete",
    "header_size",
    "check_header_size",
    "decode_image",
    "read_bytes",
    "read_image",
    "read_size",
]

_JPEG_SOI = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# In entropy-coded JPEG data a 0xFF byte is followed by 0x00 (stuffing), 0xD0-0xD7 (restart markers) or
# more 0xFF (fill); any other byte after 0xFF is the next marker.
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # markers without a length field
# OpenCV rotates JPEG, PNG and WebP pixels by their EXIF orientation unless told not to: never rotate.
DECODE_FLAGS = {
    1: cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
    3: cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
}


def sniff_format(data: bytes) -> str:
    """Return 'jpeg' or 'png' from the file's magic bytes, or '' when it is neither."""
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    return ""


def _jpeg_end(data: bytes) -> int | None:
    """Offset just past the JPEG's end-of-image marker, following the segment structure (so markers
    inside an EXIF thumbnail or after the image do not count); None when the data ends first."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None  # not at a marker: damaged or cut
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker == 0xD9:
            return i
        if marker in _STANDALONE:
            continue
        if i + 2 > n:
            return None
        i += int.from_bytes(data[i : i + 2], "big")
        if marker == 0xDA:  # start of scan: skip the entropy-coded data up to the next marker
            found = _NEXT_MARKER.search(data, i)
            if found is None:
                return None
            i = found.start()
    return None


def _png_complete(data: bytes) -> bool:
    """True when the chunk chain reaches a whole IEND chunk (bytes after it are ignored)."""
    i, n = len(_PNG_MAGIC), len(data)
    while i + 8 <= n:
        end = i + 12 + int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == b"IEND":
            return end <= n
        i = end
    return False


def check_complete(data: bytes, path: Path | str) -> None:
    """Raise ImageError when the bytes are not a complete JPEG or PNG (truncated downloads); bytes after the
    end of the image (trailing garbage some real files have) are accepted."""
    kind = sniff_format(data)
    if not kind:
        raise ImageError(f"{path}: not a JPEG or PNG file (first bytes {data[:8]!r})")
    if kind == "jpeg" and _jpeg_end(data) is None:
        raise ImageError(f"{path}: truncated JPEG (the data ends before the end-of-image marker)")
    if kind == "png" and not _png_complete(data):
        raise ImageError(f"{path}: truncated PNG (the data ends before the IEND chunk)")


def header_size(data: bytes | Path | str, path: Path | str = "<bytes>") -> tuple[int, int]:
    """(height, width) a JPEG/PNG header claims (bytes or a file), read without decoding the pixels and as stored
    (EXIF orientation ignored, as ``decode_image`` reads): a decompression bomb is refused by its header."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=["JPEG", "PNG"]) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:  # raised only while Image.MAX_IMAGE_PIXELS is set
        raise ImageError(
            f"{path}: the header claims an image of more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
            f"(a decompression bomb?); not decoded"
        ) from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable image header ({exc})") from exc
    return height, width


def check_header_size(data: bytes, path: Path | str, shape: tuple[int, int]) -> None:
    """Refuse, before any decoding, image bytes whose header claims a size other than ``shape``."""
    height, width = header_size(data, path)
    if (height, width) != tuple(shape):
        raise ImageError(
            f"{path}: image is {height}x{width}, expected {shape[0]}x{shape[1]} (refused from its header, not decoded)"
        )


def decode_image(
    data: bytes, path: Path | str = "<bytes>", channels: int = 3, shape: tuple[int, int] | None = IMAGE_SHAPE
) -> np.ndarray:
    """Decode JPEG/PNG bytes to uint8 HxW (channels=1) or HxWx3 (channels=3) as stored (EXIF orientation
    ignored), checking the size."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    check_complete(data, path)
    if shape is not None:
        check_header_size(data, path, shape)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS[channels])
    if image is None:
        raise ImageError(f"{path}: the image data cannot be decoded")
    if shape is not None and image.shape[:2] != tuple(shape):
        raise ImageError(f"{path}: image is {image.shape[0]}x{image.shape[1]}, expected {shape[0]}x{shape[1]}")
    if channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def read_bytes(path: Path | str) -> bytes:
    """The bytes of an image file; an unreadable one is an ImageError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def read_image(path: Path | str, channels: int = 3, shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Read an image file by content (never by extension) as uint8 HxW or HxWx3 RGB."""
    return decode_image(read_bytes(path), path, channels, shape)


def read_size(path: Path | str) -> tuple[int, int]:
    """(height, width) as stored (the size ``decode_image`` gives: EXIF orientation ignored), from the file header
    alone, for fast layout checks of a whole folder."""
    return header_size(path, path)
