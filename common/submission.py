"""Kaggle submission files: a streaming, atomic writer and a validator that lists every problem.

Formats: ``new`` (current Kaggle: ``ImageId,EncodedPixels,ClassId``, every image x class once) and
``old`` (2019: ``ImageId_ClassId,EncodedPixels``). The writer streams rows to a temp file next to the
target and renames it only when every image x class was written exactly once; on any error or
interrupt the temp file is removed, so no partial submission is ever left behind.

``python -m common.submission validate FILE --images DIR`` prints every problem and exits 1 if any.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from common.annotations import check_image_id, check_row, detect_format
from common.constants import CLASS_IDS, NEW_FORMAT, SUBMISSION_HEADERS
from common.errors import AnnotationError, SubmissionError, command
from common.io import CsvError, atomic_open, read_csv

__all__ = ["HEADERS", "SubmissionError", "SubmissionWriter", "open_submission", "validate", "main"]

HEADERS = SUBMISSION_HEADERS


class SubmissionWriter:
    """Accepts rows one at a time (``write``) and checks the image x class coverage."""

    def __init__(self, handle: IO[str], image_ids: Iterable[str], fmt: str, path: Path) -> None:
        if fmt not in HEADERS:
            raise SubmissionError(f"submission format {fmt!r}: choose 'new' or 'old'")
        self.path, self.fmt = path, fmt
        self.expected = {check_image_id(i, f"{path}: image list") for i in image_ids}  # never a two-line row
        self.seen: set[tuple[str, int]] = set()
        self.masks = 0
        self._csv = csv.writer(handle, lineterminator="\n")
        self._csv.writerow(HEADERS[fmt])

    def write(self, image_id: str, class_id: int, rle: str) -> None:
        """One (image, class) row; '' for no defect."""
        key = (image_id, int(class_id))
        if image_id not in self.expected:
            raise SubmissionError(f"{self.path}: row for image {image_id!r}, which is not in the image list")
        if key[1] not in CLASS_IDS:
            raise SubmissionError(f"{self.path}: row for {image_id!r} has unknown ClassId {class_id!r}")
        if key in self.seen:
            raise SubmissionError(f"{self.path}: second row for image {image_id!r} class {class_id}")
        self.seen.add(key)
        self.masks += bool(rle)
        if self.fmt == NEW_FORMAT:
            self._csv.writerow([image_id, rle, key[1]])
        else:
            self._csv.writerow([f"{image_id}_{key[1]}", rle])

    def write_rows(self, rows: Iterable[tuple[str, int, str]]) -> None:
        for image_id, class_id, rle in rows:
            self.write(image_id, class_id, rle)

    def check_complete(self) -> None:
        missing = len(self.expected) * len(CLASS_IDS) - len(self.seen)
        if missing:
            absent = sorted({i for i in self.expected for c in CLASS_IDS if (i, c) not in self.seen})
            raise SubmissionError(
                f"{self.path}: {missing} image x class rows were never written "
                f"({len(absent)} images, e.g. {absent[:3]})"
            )


@contextmanager
def open_submission(path: Path | str, image_ids: Iterable[str], fmt: str = NEW_FORMAT) -> Iterator[SubmissionWriter]:
    """Write a submission atomically; it appears at ``path`` only if complete when the block ends."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as handle:
        writer = SubmissionWriter(handle, image_ids, fmt, path)
        yield writer
        writer.check_complete()


def validate(path: Path | str, image_ids: Iterable[str] | None = None) -> list[str]:
    """Every problem of a submission file (empty list = valid); ``image_ids`` = the images it must cover."""
    path = Path(path)
    try:
        table = read_csv(path)
    except CsvError as exc:
        return [str(exc)]
    header = table.header
    try:
        fmt = detect_format(header, str(path))
    except AnnotationError as exc:
        return [str(exc)]
    problems: list[str] = []
    extra = sorted(set(header) - set(HEADERS[fmt]))
    if extra:
        problems.append(f"{path}: unexpected columns {extra}")
    col = {name: header.index(name) for name in HEADERS[fmt]}
    expected = None if image_ids is None else set(image_ids)
    seen: dict[tuple[str, int], int] = {}
    for line, fields in zip(table.lines, table.rows):
        where = f"{path}, line {line}"
        if len(fields) != len(header):
            problems.append(f"{where}: {len(fields)} fields, header has {len(header)}")
            continue
        key = fields[col["ImageId" if fmt == NEW_FORMAT else "ImageId_ClassId"]]
        cls = fields[col["ClassId"]] if fmt == NEW_FORMAT else None
        try:
            image_id, class_id, _ = check_row(fmt, key, cls, fields[col["EncodedPixels"]], where)
        except AnnotationError as exc:
            problems.append(str(exc))
            continue
        if (image_id, class_id) in seen:
            problems.append(
                f"{where}: duplicate row for image {image_id!r} class {class_id} "
                f"(first at line {seen[(image_id, class_id)]})"
            )
            continue
        seen[(image_id, class_id)] = line
        if expected is not None and image_id not in expected:
            problems.append(f"{where}: image {image_id!r} is not in the image folder")
    covered: dict[str, set[int]] = {}
    for image_id, class_id in seen:
        covered.setdefault(image_id, set()).add(class_id)
    for image_id in sorted((expected or set()) | set(covered)):
        if expected is not None and image_id not in expected:
            continue
        absent = [c for c in CLASS_IDS if c not in covered.get(image_id, set())]
        if absent:
            problems.append(f"{path}: image {image_id!r} has no row for class(es) {absent}")
    return problems


@command
def main(argv: list[str] | None = None) -> int:
    """CLI: ``validate FILE [--images DIR]``."""
    from common.dataset import list_images

    parser = argparse.ArgumentParser(prog="python -m common.submission", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="list every problem of a submission file")
    check.add_argument("file", type=Path)
    check.add_argument("--images", type=Path, help="folder whose images must all be covered")
    args = parser.parse_args(argv)
    image_ids = list_images(args.images) if args.images else None
    problems = validate(args.file, image_ids)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.file}: INVALID, {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: valid" + (f" ({len(image_ids)} images x {len(CLASS_IDS)} classes)" if image_ids else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
