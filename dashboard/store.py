"""Read access to the inspections store for the page: sources, date extent, a change stamp, cached queries.

Any writer (``infer.py store=...``, the importer, the page's uploads and predictions) may append while the
page is open; ``version`` is a cheap stamp that changes with every write, and query results are cached per
stamp, so the several callbacks of one interaction share one SQL query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import closing
from datetime import date
from pathlib import Path

import pandas as pd

from common.inspections import COLUMNS, connect, query
from dashboard.importer import TRUTH_SOURCES
from dashboard.views import newest_run_per_image

__all__ = ["ALL_RUNS", "Store", "source_label"]

ALL_RUNS = "pred:*"  # pseudo-source: every prediction run together (the live line), each image once


def source_label(source: str) -> str:
    """How a source is named in the selectors."""
    return "all prediction runs (live line)" if source == ALL_RUNS else source


class Store:
    """The SQLite file behind the page; every method opens its own connection (Flask serves from threads)."""

    def __init__(self, db: Path | str, cache_size: int = 32) -> None:
        self.db = Path(db)
        self._cache: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def version(self) -> str:
        """Stamp of the store's content: row count and highest row id (appends and replacements change it)."""
        with closing(connect(self.db)) as conn:
            count, top = conn.execute("SELECT COUNT(*), MAX(id) FROM inspections").fetchone()
        return f"{count}-{top or 0}"

    def rows(self, start: str | None, end: str | None, source: str | None) -> pd.DataFrame:
        """Inspections of a source (or ALL_RUNS: each image's newest run) in an inclusive day range; do not modify."""
        key = (start, end, source, self.version())
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # callbacks of one interaction arrive together: one of them queries, the others wait
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
            frame = self._query(start, end, source)
            with self._lock:
                self._cache[key] = frame
                while len(self._cache) > self._cache_size:
                    old, _ = self._cache.popitem(last=False)
                    self._key_locks.pop(old, None)
        return frame

    def _query(self, start: str | None, end: str | None, source: str | None) -> pd.DataFrame:
        with closing(connect(self.db)) as conn:
            if source != ALL_RUNS:
                return query(conn, start, end, source)
            frame = query(conn, start, end)
        return newest_run_per_image(frame[frame["source"].str.startswith("pred:")].reset_index(drop=True))

    def truth(self) -> pd.DataFrame:
        """Ground-truth rows of every date (train and test sources)."""
        frames = [self.rows(None, None, s) for s in TRUTH_SOURCES]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)

    def sources(self) -> list[str]:
        """Sources in the store: train, test, ALL_RUNS (when there is a run), then the runs by name."""
        with closing(connect(self.db)) as conn:
            found = [r[0] for r in conn.execute("SELECT DISTINCT source FROM inspections")]
        runs = sorted(s for s in found if s not in TRUTH_SOURCES)
        return [s for s in TRUTH_SOURCES if s in found] + ([ALL_RUNS] if runs else []) + runs

    def date_extent(self) -> tuple[str, str]:
        """First and last inspection day in the store (this year when it is empty)."""
        with closing(connect(self.db)) as conn:
            lo, hi = conn.execute("SELECT MIN(inspected_at), MAX(inspected_at) FROM inspections").fetchone()
        if not lo:
            year = date.today().year
            return f"{year}-01-01", f"{year}-12-31"
        return lo[:10], hi[:10]

    def latest(self) -> str | None:
        """Time of the newest inspection (ISO text) or None."""
        with closing(connect(self.db)) as conn:
            return conn.execute("SELECT MAX(inspected_at) FROM inspections").fetchone()[0]

    def same_run(self, records: set[tuple[str, int, str]]) -> str | None:
        """The prediction run holding exactly these (image, class, rle) records, if one is stored."""
        images = {r[0] for r in records}
        with closing(connect(self.db)) as conn:
            candidates = conn.execute(
                "SELECT source FROM inspections WHERE source LIKE 'pred:%' "
                "GROUP BY source HAVING COUNT(DISTINCT image_id) = ?",
                (len(images),),
            ).fetchall()
            for (source,) in candidates:
                stored = conn.execute("SELECT image_id, class_id, rle FROM inspections WHERE source = ?", (source,))
                if set(stored.fetchall()) == records:
                    return source
        return None
