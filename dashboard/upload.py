"""Uploaded submission files: size cap, CSV only, validated by common.annotations with errors for the page."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path, PurePath

from common.annotations import Annotations, check_image_id
from common.errors import SteelsegError
from common.images import decode_image
from dashboard.importer import load_csv

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class UploadError(SteelsegError, ValueError):
    """An upload refused before or while parsing; the message is shown in the page."""


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def decode_contents(
    contents: str, filename: str, max_bytes: int = MAX_UPLOAD_BYTES, suffixes: tuple[str, ...] = (".csv",)
) -> bytes:
    """Bytes of a dcc.Upload ``data:<type>;base64,<data>`` string, refusing other file types and big files."""
    if not filename or PurePath(filename).suffix.lower() not in suffixes:
        raise UploadError(f"{filename or '<no name>'}: only {' / '.join(suffixes)} files are accepted")
    head, sep, data = (contents or "").partition(",")
    if not sep or not head.endswith(";base64"):
        raise UploadError(f"{filename}: the upload is not base64 data")
    if len(data) * 3 // 4 > max_bytes + 3:
        raise UploadError(f"{filename}: larger than the {max_bytes / 2**20:.1f} MiB upload limit")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise UploadError(f"{filename}: corrupt base64 upload ({exc})") from exc
    if len(raw) > max_bytes:
        raise UploadError(f"{filename}: larger than the {max_bytes / 2**20:.1f} MiB upload limit")
    return raw


def parse_upload(
    contents: str, filename: str, max_bytes: int = MAX_UPLOAD_BYTES
) -> tuple[Annotations, dict[str, str], str]:
    """Annotations, dates from a date column, and a run id (file stem + content hash) of an uploaded CSV."""
    raw = decode_contents(contents, filename, max_bytes)
    if b"\x00" in raw[:4096]:
        raise UploadError(f"{filename}: binary data, not a CSV text file")
    annotations, dates = load_csv(raw, filename)  # the one CSV reader: same rules as files on disk
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePath(filename).stem)[:40].strip("-.") or "upload"
    return annotations, dates, f"{stem}-{hashlib.sha256(raw).hexdigest()[:8]}"


def save_image_upload(contents: str, filename: str, folder: Path, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Check an uploaded steel image (a plain file name, a complete 1600x256 JPEG/PNG) and store it in ``folder``;
    a different image under a name already stored there is refused."""
    raw = decode_contents(contents, filename, max_bytes, IMAGE_SUFFIXES)
    try:
        name = check_image_id(filename, "uploaded image")
        decode_image(raw, filename)
    except SteelsegError as exc:
        raise UploadError(str(exc)) from exc
    path = Path(folder) / name
    if path.exists() and path.read_bytes() != raw:
        raise UploadError(f"{name}: another image of that name was uploaded before; rename the file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path
