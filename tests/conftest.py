"""Shared fixtures: paths to the real data beside the repo (tests using it skip when it is absent)."""
from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real Severstal annotations and images folder; skips the test when it is absent."""
    if not (REAL_DATA / "annotations" / "train_rle_partial.csv").is_file():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA
