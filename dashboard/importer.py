"""Load a data root or a submission file into the inspections store, with an inspection date per image.

``python -m dashboard.importer DB --root DATA_ROOT`` stores the train annotations (and the test truth of a
synthetic root) as sources ``train`` / ``test``; ``python -m dashboard.importer DB --submission FILE --run-id X``
stores a submission as ``pred:X``. Importing a source again replaces its rows. Dates come from a column
``inspected_at`` (or ``timestamp``/``date``) when the CSV has one, otherwise from a hash of the ImageId
(deterministic, spread over 2021, as in the original app).
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from common.annotations import Annotations, check_image_id, check_run_id, parse_frame
from common.dataset import list_images
from common.errors import AnnotationError, SteelsegError, command
from common.inspections import append_rows, connect
from common.io import CsvError, CsvTable, parse_csv_text, read_csv
from common.layout import DataRoot, find_root, read_id_list

DATE_COLUMNS = ("inspected_at", "timestamp", "date")
EPOCH, SPAN_S = datetime(2021, 1, 1), 365 * 24 * 3600
TRUTH_SOURCES = ("train", "test")
PLACEHOLDER_RLES = ("", "1 409600")  # Kaggle's sample_submission.csv: every row "<id>,1 409600,0"


def synthetic_date(image_id: str) -> str:
    """A fixed pseudo-random time in 2021 for an image (same id, same date, on every machine)."""
    offset = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % SPAN_S
    return (EPOCH + timedelta(seconds=offset)).isoformat(timespec="seconds")


def _frame(table: CsvTable) -> pd.DataFrame:
    """The table as an all-text frame; CSV problems are AnnotationErrors naming the file and line."""
    try:
        return table.frame()
    except CsvError as exc:
        raise AnnotationError(str(exc)) from exc


def frame_dates(frame: pd.DataFrame, name: str, lines: list[int] | None = None) -> dict[str, str]:
    """ImageId -> ISO time from the frame's date column (empty when it has none); bad values name the line."""
    column = next((c for c in DATE_COLUMNS if c in frame.columns), None)
    if column is None:
        return {}
    ids = frame["ImageId"] if "ImageId" in frame.columns else frame["ImageId_ClassId"].str.rsplit("_", n=1).str[0]
    out: dict[str, str] = {}
    numbers = lines if lines is not None else range(2, len(frame) + 2)
    for line, image_id, value in zip(numbers, ids, frame[column]):
        try:
            stamp = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise AnnotationError(f"{name}, line {line}: {column} {value!r} is not an ISO date/time") from exc
        text = stamp.isoformat(timespec="seconds")
        if out.setdefault(image_id, text) != text:
            raise AnnotationError(f"{name}, line {line}: image {image_id!r} has two {column} values")
    return out


def dates_for(image_ids, given: dict[str, str]) -> dict[str, str]:
    """Given dates where known, synthetic ones elsewhere."""
    return {i: given.get(i) or synthetic_date(i) for i in image_ids}


def split_placeholders(
    frame: pd.DataFrame, name: str, lines: list[int] | None
) -> tuple[pd.DataFrame, list[int], list[str]]:
    """The rows other than Kaggle's ``sample_submission.csv`` placeholders (ClassId 0: the image is listed, no
    defect), their line numbers, and the placeholders' ImageIds; a ClassId-0 row with a real mask is refused."""
    numbers = np.asarray(lines if lines is not None else range(2, len(frame) + 2))
    if "ClassId" not in frame.columns or "ImageId" not in frame.columns:
        return frame, numbers.tolist(), []
    zero = (frame["ClassId"].astype(str).str.strip() == "0").to_numpy()
    listed = []
    for line, image_id, rle in zip(numbers[zero], frame["ImageId"][zero], frame["EncodedPixels"][zero]):
        if str(rle).strip() not in PLACEHOLDER_RLES:
            raise AnnotationError(
                f"{name}, line {line}: ClassId 0 is Kaggle's 'no defect' placeholder; its "
                f"EncodedPixels must be empty or '1 409600', not {str(rle)[:40]!r}"
            )
        listed.append(check_image_id(image_id, f"{name}, line {line}"))
    return frame[~zero].reset_index(drop=True), numbers[~zero].tolist(), listed


def load_table(table: CsvTable) -> tuple[Annotations, dict[str, str]]:
    """Validated annotations (either format; Kaggle's ClassId-0 placeholder rows list clean images) and the dates a
    date column provides."""
    frame = _frame(table)
    rest, lines, listed = split_placeholders(frame, table.name, table.lines)
    annotations = parse_frame(rest, table.name, lines=lines)
    if listed:
        both = sorted(set(listed) & set(annotations.rows["ImageId"]))
        if both:
            raise AnnotationError(
                f"{table.name}: image {both[0]!r} has a ClassId 0 (no defect) row and defect rows; "
                "keep one or the other"
            )
        annotations = replace(annotations, image_ids=tuple(dict.fromkeys([*annotations.image_ids, *listed])))
    return annotations, frame_dates(frame, table.name, table.lines)


def load_csv_text(text: str, name: str) -> tuple[Annotations, dict[str, str]]:
    """``load_table`` of CSV text (an upload)."""
    try:
        return load_table(parse_csv_text(text, name))
    except CsvError as exc:
        raise AnnotationError(str(exc)) from exc


def load_csv(source: Path | str | bytes, name: str | None = None) -> tuple[Annotations, dict[str, str]]:
    """``load_table`` of a file, or of a file's bytes (an upload, called ``name``)."""
    try:
        return load_table(read_csv(source, name))
    except CsvError as exc:
        raise AnnotationError(str(exc)) from exc


def replace_source(
    conn: sqlite3.Connection,
    annotations: Annotations,
    source: str,
    image_ids,
    dates: dict[str, str],
    run_id: str | None = None,
) -> int:
    """Delete the rows of ``source`` and store the new ones in one transaction; return rows stored."""
    image_ids = list(dict.fromkeys(list(image_ids) + list(annotations.image_ids)))
    return append_rows(
        conn,
        annotations.rows,
        source,
        run_id=run_id,
        dates=dates_for(image_ids, dates),
        image_ids=image_ids,
        replace=True,
    )


def import_root(conn: sqlite3.Connection, data: DataRoot) -> dict[str, int]:
    """Store the root's train annotations and test truth; return rows stored per source."""
    stored = {}
    if data.train_csv is not None:
        annotations, dates = load_csv(data.train_csv)
        if data.train_ids_csv is not None:
            ids = read_id_list(data.train_ids_csv)
        else:
            ids = list_images(data.train_images) if data.train_images is not None else []
        stored["train"] = replace_source(conn, annotations, "train", ids, dates)
    if data.test_truth_csv is not None:
        annotations, dates = load_csv(data.test_truth_csv)
        ids = list_images(data.test_images) if data.test_images is not None else []
        stored["test"] = replace_source(conn, annotations, "test", ids, dates)
    if not stored:
        raise SteelsegError(f"{data.root}: no annotations to import (no train.csv / train_rle_partial.csv)")
    return stored


def import_submission(conn: sqlite3.Connection, annotations: Annotations, dates: dict[str, str], run_id: str) -> int:
    """Store a submission as ``pred:<run_id>`` (replacing a previous import of that run)."""
    run_id = check_run_id(run_id)
    return replace_source(conn, annotations, f"pred:{run_id}", annotations.image_ids, dates, run_id)


@command
def main(argv: list[str] | None = None) -> int:
    """CLI: import a root and/or submissions; input errors exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m dashboard.importer", description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="SQLite inspections store (created when missing)")
    parser.add_argument("--root", type=Path, help="data root to import as train/test")
    parser.add_argument("--submission", type=Path, action="append", default=[], help="submission CSV (repeatable)")
    parser.add_argument("--run-id", action="append", default=[], help="run id per --submission (default: file stem)")
    args = parser.parse_args(argv)
    if not args.root and not args.submission:
        parser.error("give --root and/or --submission")
    if args.run_id and len(args.run_id) != len(args.submission):
        parser.error("give one --run-id per --submission, or none")
    for i, path in enumerate(args.submission):  # every run id checked before anything is stored
        check_run_id(args.run_id[i] if args.run_id else path.stem, "--run-id" if args.run_id else f"{path} (file stem)")
    conn = connect(args.db)
    if args.root:
        for source, n in import_root(conn, find_root(args.root)).items():
            print(f"{source}: {n} rows")
    for i, path in enumerate(args.submission):
        run_id = args.run_id[i] if args.run_id else path.stem
        annotations, dates = load_csv(path)
        print(f"pred:{run_id}: {import_submission(conn, annotations, dates, run_id)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
