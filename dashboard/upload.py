"""Uploaded submission files: size cap, CSV only, validated by common.annotations with errors for the page."""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import PurePath

from common.annotations import Annotations
from common.errors import SteelsegError
from dashboard.importer import load_csv

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class UploadError(SteelsegError, ValueError):
    """An upload refused before or while parsing; the message is shown in the page."""


def decode_contents(contents: str, filename: str, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """Bytes of a dcc.Upload ``data:<type>;base64,<data>`` string, refusing non-CSV names and big files."""
    if not filename or PurePath(filename).suffix.lower() != ".csv":
        raise UploadError(f"{filename or '<no name>'}: only .csv files are accepted")
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


def parse_upload(contents: str, filename: str, max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[Annotations, dict[str, str], str]:
    """Annotations, dates from a date column, and a run id (file stem + content hash) of an uploaded CSV."""
    raw = decode_contents(contents, filename, max_bytes)
    if b"\x00" in raw[:4096]:
        raise UploadError(f"{filename}: binary data, not a CSV text file")
    annotations, dates = load_csv(raw, filename)  # the one CSV reader: same rules as files on disk
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePath(filename).stem)[:40].strip("-.") or "upload"
    return annotations, dates, f"{stem}-{hashlib.sha256(raw).hexdigest()[:8]}"
