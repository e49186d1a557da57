"""Review of detections: accept or reject one class of one image of a source (a rejected detection is a false
alarm), and the corrected labels as a Kaggle ``train.csv`` (``ImageId,ClassId,EncodedPixels``, defect rows only)
that training reads like any other. Verdicts live in the store's file, table ``reviews``, one per
(source, image, class); saving again replaces a verdict. The inspections themselves are never changed.
"""

from __future__ import annotations

from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from common.constants import CLASS_IDS, LONG_COLUMNS
from common.errors import SteelsegError
from common.inspections import connect

__all__ = ["VERDICTS", "ReviewError", "save_verdicts", "verdicts", "corrected", "train_csv"]

VERDICTS = ("accept", "reject")
SCHEMA = """CREATE TABLE IF NOT EXISTS reviews (
    source TEXT NOT NULL, image_id TEXT NOT NULL, class_id INTEGER NOT NULL, verdict TEXT NOT NULL,
    reviewed_at TEXT NOT NULL, PRIMARY KEY (source, image_id, class_id))"""


class ReviewError(SteelsegError, ValueError):
    """A verdict that cannot be stored; the message is shown in the page."""


def save_verdicts(db: Path | str, source: str, image_id: str, given: dict[int, str]) -> int:
    """Store one verdict per class of an image of a source (replacing earlier ones); return how many."""
    for class_id, verdict in given.items():
        if class_id not in CLASS_IDS or verdict not in VERDICTS:
            raise ReviewError(
                f"{image_id} class {class_id}: verdict {verdict!r} (expected one of {list(VERDICTS)} "
                f"for a class in {list(CLASS_IDS)})"
            )
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with closing(connect(db)) as conn, conn:
        conn.execute(SCHEMA)
        conn.executemany(
            "INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
            [(source, image_id, int(c), v, now) for c, v in sorted(given.items())],
        )
    return len(given)


def verdicts(db: Path | str, source: str | None = None) -> pd.DataFrame:
    """The verdicts of a source (None: of every source): source, image_id, class_id, verdict, reviewed_at."""
    where, params = ("WHERE source = ?", (source,)) if source else ("", ())
    with closing(connect(db)) as conn:
        conn.execute(SCHEMA)
        found = conn.execute(
            "SELECT source, image_id, class_id, verdict, reviewed_at FROM reviews "
            f"{where} ORDER BY source, image_id, class_id",
            params,
        ).fetchall()
    return pd.DataFrame(found, columns=["source", "image_id", "class_id", "verdict", "reviewed_at"])


def corrected(rows: pd.DataFrame, reviewed: pd.DataFrame) -> pd.DataFrame:
    """Long-form defect rows of store rows without the detections rejected in their source (sorted like train.csv)."""
    defects = rows[rows["class_id"] > 0]
    no = reviewed[reviewed["verdict"] == "reject"]
    rejected = set(zip(no["source"], no["image_id"], no["class_id"].astype(int)))
    keep = [
        (s, i, int(c)) not in rejected for s, i, c in zip(defects["source"], defects["image_id"], defects["class_id"])
    ]
    kept = defects[keep]
    out = pd.DataFrame(
        {
            "ImageId": kept["image_id"].to_numpy(),
            "ClassId": kept["class_id"].astype(int).to_numpy(),
            "EncodedPixels": kept["rle"].to_numpy(),
        },
        columns=LONG_COLUMNS,
    )
    return out.sort_values(["ImageId", "ClassId"], kind="stable").reset_index(drop=True)


def train_csv(rows: pd.DataFrame, reviewed: pd.DataFrame) -> str:
    """The corrected labels as the text of a Kaggle train.csv (images left without rows are clean)."""
    return corrected(rows, reviewed).to_csv(index=False, lineterminator="\n")
