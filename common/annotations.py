"""Read Severstal annotation CSVs in either Kaggle format into one long form.

Long form: one row per (ImageId, ClassId) that has a defect, columns ``ImageId, ClassId,
EncodedPixels``. The new format (``ImageId,ClassId,EncodedPixels``) lists defect rows only; the
2019 format (``ImageId_ClassId,EncodedPixels``) lists every image x class, empty when clean.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, cast

import numpy as np
import pandas as pd

from common.constants import CLASS_IDS, IMAGE_SHAPE, LONG_COLUMNS, NEW_FORMAT, OLD_FORMAT
from common.errors import AnnotationError, RLEError
from common.io import CsvError, read_csv
from common.rle import is_empty, parse

__all__ = [
    "Annotations",
    "check_image_id",
    "check_run_id",
    "detect_format",
    "check_row",
    "check_four_rows",
    "iter_rows",
    "parse_frame",
    "read_annotations",
    "labels_table",
]


@dataclass(frozen=True)
class Annotations:
    """Defect rows in long form plus every ImageId the file mentions (clean ones included)."""

    rows: pd.DataFrame
    image_ids: tuple[str, ...]
    format: str
    path: str = "<frame>"
    line_of: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)


MAX_ID_LENGTH = 255  # the longest file name common file systems take


def check_image_id(image_id: object, where: str) -> str:
    """Return the id if it is a plain file name; refuse paths that could leave the images folder, and control or
    format characters (a newline splits a CSV row, U+202E reverses the text shown to people)."""
    if not isinstance(image_id, str) or not image_id.strip():
        raise AnnotationError(f"{where}: empty or non-text ImageId {image_id!r}")
    if image_id != image_id.strip():
        raise AnnotationError(f"{where}: ImageId {image_id!r} has leading or trailing spaces")
    if len(image_id) > MAX_ID_LENGTH:
        raise AnnotationError(f"{where}: ImageId of {len(image_id)} characters (at most {MAX_ID_LENGTH}: a file name)")
    odd = next((ch for ch in image_id if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")), None)
    if odd is not None:
        raise AnnotationError(
            f"{where}: ImageId {image_id!r} holds the control or format character "
            f"U+{ord(odd):04X} ({unicodedata.name(odd, 'unnamed')}); rename the file"
        )
    posix, windows = PurePosixPath(image_id), PureWindowsPath(image_id)
    if (
        posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or len(posix.parts) != 1
        or len(windows.parts) != 1
        or image_id in (".", "..")
    ):
        raise AnnotationError(f"{where}: ImageId {image_id!r} is not a plain file name (paths are refused)")
    return image_id


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def check_run_id(run_id: object, where: str = "run id") -> str:
    """Return the run id if it is 1-80 letters, digits, '.', '_' or '-' starting with a letter or digit (it becomes
    part of the store's source name and of CSVs people open: no formulas, markup or control characters)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        shown = repr(run_id) if not isinstance(run_id, str) or len(run_id) <= 100 else f"{run_id[:100]!r}..."
        raise AnnotationError(
            f"{where}: run id {shown} must be 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run_id


def detect_format(columns: list[str], path: str) -> str:
    """'new' or 'old' from the header; an error naming the file when it is neither."""
    cols = set(columns)
    if {"ImageId", "ClassId", "EncodedPixels"} <= cols:
        return NEW_FORMAT
    if {"ImageId_ClassId", "EncodedPixels"} <= cols:
        return OLD_FORMAT
    raise AnnotationError(
        f"{path}: header {columns} is neither 'ImageId,ClassId,EncodedPixels' nor 'ImageId_ClassId,EncodedPixels'"
    )


def _class_id(value: object, where: str) -> int:
    """The ClassId as an int of CLASS_IDS; ASCII digits only ('\u00b2' and other Unicode digits are refused)."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) not in CLASS_IDS:
        raise AnnotationError(f"{where}: unknown ClassId {value!r} (expected one of {list(CLASS_IDS)})")
    return int(text)


def check_row(
    fmt: str,
    key: object,
    cls: object,
    rle: object,
    where: str,
    validate_rle: bool = True,
    shape: tuple[int, int] = IMAGE_SHAPE,
) -> tuple[str, int, str]:
    """Validate one CSV row; return (ImageId, ClassId, RLE or '') or raise naming ``where``."""
    if fmt == OLD_FORMAT:
        if not isinstance(key, str) or "_" not in key:
            raise AnnotationError(f"{where}: ImageId_ClassId {key!r} has no '_<class>' suffix")
        key, cls = key.rsplit("_", 1)
    image_id = check_image_id(key, where)
    class_id = _class_id(cls, where)
    if is_empty(rle):
        return image_id, class_id, ""
    if validate_rle:
        try:
            parse(rle, shape)
        except RLEError as exc:
            raise AnnotationError(f"{where}: bad EncodedPixels for {image_id!r} class {class_id}: {exc}") from exc
    return image_id, class_id, str(rle).strip()


def iter_rows(frame: pd.DataFrame, fmt: str, lines: list[int] | None = None) -> Iterator[tuple[int, Any, Any, Any]]:
    """Yield (line number, key, class, rle) of a raw frame; ``lines`` are the file's line numbers
    of the rows (default: row i is on line i + 2, after the header)."""
    id_col = "ImageId" if fmt == NEW_FORMAT else "ImageId_ClassId"
    classes = frame["ClassId"] if fmt == NEW_FORMAT else frame[id_col]
    numbers = lines if lines is not None else range(2, len(frame) + 2)
    yield from zip(numbers, frame[id_col], classes, frame["EncodedPixels"])


def check_four_rows(seen: dict[tuple[str, int], int], path: str) -> None:
    """A 2019-format file lists every image x class: an image with fewer than four rows is an error naming it and
    its first line (a lost row may have held a defect, which would otherwise be read as clean)."""
    classes: dict[str, list[int]] = {}
    for (image_id, _class_id), line in seen.items():
        classes.setdefault(image_id, []).append(line)
    for image_id, lines in classes.items():
        missing = [c for c in CLASS_IDS if (image_id, c) not in seen]
        if missing:
            raise AnnotationError(
                f"{path}, line {min(lines)}: image {image_id!r} has no row for class(es) {missing}; the 2019 format "
                f"(ImageId_ClassId) lists all {len(CLASS_IDS)} classes of every image (an empty EncodedPixels: clean)"
            )


def parse_frame(
    frame: pd.DataFrame,
    path: str = "<frame>",
    validate_rle: bool = True,
    shape: tuple[int, int] = IMAGE_SHAPE,
    lines: list[int] | None = None,
) -> Annotations:
    """Turn a raw CSV frame (all columns as text) of either format into validated long form."""
    fmt = detect_format(list(frame.columns), path)
    ids, classes, rles = [], [], []
    seen: dict[tuple[str, int], int] = {}
    mentioned: dict[str, None] = {}
    for line, key, cls, rle in iter_rows(frame, fmt, lines):
        where = f"{path}, line {line}"
        image_id, class_id, rle = check_row(fmt, key, cls, rle, where, validate_rle, shape)
        if (image_id, class_id) in seen:
            raise AnnotationError(
                f"{where}: duplicate row for image {image_id!r} class {class_id} "
                f"(first at line {seen[(image_id, class_id)]})"
            )
        seen[(image_id, class_id)] = line
        mentioned[image_id] = None
        if rle:
            ids.append(image_id)
            classes.append(class_id)
            rles.append(rle)
    if fmt == OLD_FORMAT:
        check_four_rows(seen, path)
    rows = pd.DataFrame(
        {"ImageId": ids, "ClassId": np.asarray(classes, np.int64), "EncodedPixels": rles}, columns=LONG_COLUMNS
    )
    rows = rows.sort_values(["ImageId", "ClassId"], kind="stable").reset_index(drop=True)
    return Annotations(rows=rows, image_ids=tuple(mentioned), format=fmt, path=path, line_of=seen)


def read_annotations(
    source: Path | str | bytes, validate_rle: bool = True, shape: tuple[int, int] = IMAGE_SHAPE, name: str | None = None
) -> Annotations:
    """Read an annotation or submission CSV of either format (auto-detected) into long form.

    ``source`` is a path or the file's bytes (an upload, named by ``name``).
    """
    try:
        table = read_csv(source, name)
        detect_format(table.header, table.name)
        frame = table.frame()
    except CsvError as exc:
        raise AnnotationError(str(exc)) from exc
    return parse_frame(frame, table.name, validate_rle, shape, lines=table.lines)


def labels_table(rows: pd.DataFrame, image_ids: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """0/1 presence table indexed by ImageId with one column per class (1..4), clean images included."""
    table = pd.DataFrame(0, index=pd.Index(list(image_ids), name="ImageId"), columns=list(CLASS_IDS), dtype=np.int64)
    unknown = set(rows["ImageId"]) - set(table.index)
    if unknown:
        raise AnnotationError(f"annotation rows name images outside the image list: {sorted(unknown)[:5]}")
    for class_id, group in rows.groupby("ClassId"):  # the stubs type group keys as any scalar; ClassId holds ints
        table.loc[group["ImageId"].to_numpy(), int(cast(int, class_id))] = 1
    return table
