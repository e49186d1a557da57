"""SQLite store of inspections: one row per (image, defect class found), clean images as class 0.

Table ``inspections(id, image_id, inspected_at, source, class_id, area, rle, run_id)``:
``inspected_at`` is an ISO date/time text, ``source`` is ``'train'``, ``'test'`` or ``'pred:<run_id>'``,
``class_id`` 0 means "no defect" (then ``area`` 0 and ``rle`` ''). ``infer.py store=PATH`` appends its
predictions here; the dashboard reads it. Only the standard library plus common.rle.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from common.errors import SteelsegError
from common.rle import area, is_empty

__all__ = ["COLUMNS", "InspectionStoreError", "connect", "records", "append_rows", "query"]

COLUMNS = ["id", "image_id", "inspected_at", "source", "class_id", "area", "rle", "run_id"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id INTEGER PRIMARY KEY,
    image_id TEXT NOT NULL,
    inspected_at TEXT NOT NULL,
    source TEXT NOT NULL,
    class_id INTEGER NOT NULL CHECK (class_id BETWEEN 0 AND 4),
    area INTEGER NOT NULL,
    rle TEXT NOT NULL,
    run_id TEXT
);
CREATE INDEX IF NOT EXISTS inspections_inspected_at ON inspections (inspected_at);
CREATE INDEX IF NOT EXISTS inspections_source ON inspections (source);
"""


class InspectionStoreError(SteelsegError, ValueError):
    """A store that cannot be opened or rows that cannot be stored; the message names the item."""


def connect(path: Path | str, timeout: float = 5.0) -> sqlite3.Connection:
    """Open (creating file, table and indices if missing) the inspections store at ``path``; ``timeout``: seconds
    a write waits for another process's lock before it fails."""
    path = Path(path)
    try:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=timeout)
        conn.executescript(_SCHEMA)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise InspectionStoreError(f"{path}: cannot open inspections store ({exc})") from exc
    return conn


def _store_name(conn: sqlite3.Connection) -> str:
    """The file behind a connection (for error messages)."""
    try:
        return conn.execute("PRAGMA database_list").fetchone()[2] or ":memory:"
    except sqlite3.Error:
        return "inspections store"


def _iso(value: object, where: str) -> str:
    """Normalise a date/datetime/ISO text to ISO text; refuse anything else."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError as exc:
            raise InspectionStoreError(f"{where}: {value!r} is not an ISO date") from exc
        return value
    raise InspectionStoreError(f"{where}: date {value!r} is neither a date nor ISO text")


def _date_for(image_id: str, dates: Mapping[str, object] | str | date | None, now: str) -> str:
    if dates is None:
        return now
    if isinstance(dates, Mapping):
        if image_id not in dates:
            raise InspectionStoreError(f"no inspection date given for image {image_id!r}")
        return _iso(dates[image_id], f"date of {image_id!r}")
    return _iso(dates, "dates")


def records(rows: pd.DataFrame, image_ids: Iterable[str] | None = None) -> list[tuple[str, int, int, str]]:
    """Long-form rows (ImageId, ClassId, EncodedPixels; empty RLEs allowed) -> (image, class, area, rle).

    Every image named in ``rows`` or ``image_ids`` that has no non-empty mask gets one class-0 record.
    """
    missing = {"ImageId", "ClassId", "EncodedPixels"} - set(rows.columns)
    if missing:
        raise InspectionStoreError(f"rows lack columns {sorted(missing)}")
    out: list[tuple[str, int, int, str]] = []
    order = dict.fromkeys(list(image_ids or []) + rows["ImageId"].tolist())
    defects: dict[str, list[tuple[str, int, int, str]]] = {k: [] for k in order}
    for image_id, class_id, rle in zip(rows["ImageId"], rows["ClassId"], rows["EncodedPixels"]):
        if not is_empty(rle):
            defects[image_id].append((image_id, int(class_id), area(rle), str(rle)))
    for image_id in order:
        out.extend(defects[image_id] or [(image_id, 0, 0, "")])
    return out


def append_rows(
    conn: sqlite3.Connection,
    rows: pd.DataFrame,
    source: str,
    run_id: str | None = None,
    dates: Mapping[str, object] | str | date | None = None,
    image_ids: Iterable[str] | None = None,
    replace: bool = False,
) -> int:
    """Append long-form rows as inspections in one transaction; return the number of rows stored.

    ``dates``: one date for all, a mapping image -> date, or None for now (UTC). ``replace``: delete the
    source's earlier rows in the same transaction (a failure keeps the old rows).
    """
    if not (source in ("train", "test") or source.startswith("pred:")):
        raise InspectionStoreError(f"source {source!r} must be 'train', 'test' or 'pred:<run_id>'")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    values = [
        (image_id, _date_for(image_id, dates, now), source, class_id, px, rle, run_id)
        for image_id, class_id, px, rle in records(rows, image_ids)
    ]
    try:
        with conn:  # one transaction: commit on success, roll back (old rows kept) on any failure
            if replace:
                conn.execute("DELETE FROM inspections WHERE source = ?", (source,))
            conn.executemany(
                "INSERT INTO inspections (image_id, inspected_at, source, class_id, area, rle, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                values,
            )
    except sqlite3.OperationalError as exc:  # full disk, read-only file, locked: nothing was changed
        raise InspectionStoreError(
            f"{_store_name(conn)}: cannot store the rows of {source!r} ({exc}); the store is unchanged"
        ) from exc
    return len(values)


def query(
    conn: sqlite3.Connection, start: object = None, end: object = None, source: str | None = None
) -> pd.DataFrame:
    """Inspections with ``start <= inspected_at <= end`` and ``source`` (None = no bound).

    A date-only ``end`` includes that whole day; comparisons are on ISO text.
    """
    clauses, params = [], []
    if start is not None:
        clauses.append("inspected_at >= ?")
        params.append(_iso(start, "start"))
    if end is not None:
        end_text = _iso(end, "end")
        if len(end_text) == 10:  # a whole day: everything before the next day's midnight
            clauses.append("inspected_at < ?")
            params.append((date.fromisoformat(end_text) + timedelta(days=1)).isoformat())
        else:
            clauses.append("inspected_at <= ?")
            params.append(end_text)
    if source is not None:
        clauses.append("source = ?")
        params.append(source)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM inspections{where} ORDER BY inspected_at, id", params)
    return pd.DataFrame(cursor.fetchall(), columns=COLUMNS)
