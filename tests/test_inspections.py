"""The SQLite inspections store: schema, class-0 rows for clean images, date filters, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common import inspections
from common.rle import encode


def _rows() -> pd.DataFrame:
    mask = np.zeros((256, 1600), np.uint8)
    mask[10:20, 30:40] = 1
    return pd.DataFrame(
        {"ImageId": ["a.jpg", "a.jpg", "b.jpg"], "ClassId": [1, 3, 2], "EncodedPixels": [encode(mask), "", ""]}
    )


def test_append_and_query_roundtrip(tmp_path):
    conn = inspections.connect(tmp_path / "s" / "store.sqlite")
    n = inspections.append_rows(
        conn,
        _rows(),
        "pred:r1",
        run_id="r1",
        dates={"a.jpg": "2024-01-02", "b.jpg": "2024-01-05T08:00:00", "c.jpg": "2024-02-01"},
        image_ids=["c.jpg"],
    )
    assert n == 3  # a: class 1 (100 px); b and c clean -> class 0
    out = inspections.query(conn)
    assert list(out.columns) == inspections.COLUMNS
    got = {(r.image_id, r.class_id, r.area) for r in out.itertuples()}
    assert got == {("a.jpg", 1, 100), ("b.jpg", 0, 0), ("c.jpg", 0, 0)}
    assert set(out["source"]) == {"pred:r1"} and set(out["run_id"]) == {"r1"}
    # date-only end includes the whole day; start bound; source filter
    assert set(inspections.query(conn, "2024-01-03", "2024-01-05")["image_id"]) == {"b.jpg"}
    assert set(inspections.query(conn, end="2024-01-02")["image_id"]) == {"a.jpg"}
    assert inspections.query(conn, source="train").empty
    idx = {r[1] for r in conn.execute("PRAGMA index_list(inspections)")}
    assert {"inspections_inspected_at", "inspections_source"} <= idx


def test_bad_input(tmp_path):
    conn = inspections.connect(tmp_path / "store.sqlite")
    with pytest.raises(inspections.InspectionStoreError, match="source"):
        inspections.append_rows(conn, _rows(), "elsewhere")
    with pytest.raises(inspections.InspectionStoreError, match="b.jpg"):
        inspections.append_rows(conn, _rows(), "test", dates={"a.jpg": "2024-01-01"})
    with pytest.raises(inspections.InspectionStoreError, match="ISO"):
        inspections.append_rows(conn, _rows(), "test", dates="yesterday")
    assert inspections.query(conn).empty  # failed appends store nothing
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(inspections.InspectionStoreError, match="bad.sqlite"):
        inspections.connect(bad)
