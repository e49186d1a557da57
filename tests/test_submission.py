"""Streaming submission writer (atomic, complete or nothing) and the validator that lists every problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.submission import SubmissionError, open_submission, validate

IDS = ["a.jpg", "b.jpg"]


def _write(path, fmt="new"):
    with open_submission(path, IDS, fmt) as writer:
        for image_id in IDS:
            writer.write_rows([(image_id, c, "1 3" if c == 2 else "") for c in (1, 2, 3, 4)])
    return writer


@pytest.mark.parametrize("fmt", ["new", "old"])
def test_writer_formats_validate(tmp_path, fmt):
    path = tmp_path / "sub.csv"
    writer = _write(path, fmt)
    assert writer.masks == 2
    lines = path.read_text().splitlines()
    assert lines[0] == ("ImageId,EncodedPixels,ClassId" if fmt == "new" else "ImageId_ClassId,EncodedPixels")
    assert len(lines) == 9
    assert validate(path, IDS) == []


def test_huge_rle_validates(tmp_path):
    path = tmp_path / "sub.csv"
    huge = " ".join(f"{2 * i + 1} 1" for i in range(100_000))  # ~1.3 MB: a speckled mask
    with open_submission(path, IDS) as writer:
        writer.write_rows([(i, c, huge if c == 1 else "") for i in IDS for c in (1, 2, 3, 4)])
    assert validate(path, IDS) == []


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "sub.csv"
    with pytest.raises(KeyboardInterrupt):
        with open_submission(path, IDS) as writer:
            writer.write("a.jpg", 1, "")
            raise KeyboardInterrupt
    with pytest.raises(SubmissionError, match="never written"):
        with open_submission(path, IDS) as writer:
            writer.write("a.jpg", 1, "")
    with pytest.raises(SubmissionError, match="second row"):
        with open_submission(path, IDS) as writer:
            writer.write("a.jpg", 1, "")
            writer.write("a.jpg", 1, "")
    with pytest.raises(SubmissionError, match="not in the image list"):
        with open_submission(path, IDS) as writer:
            writer.write("zzz.jpg", 1, "")
    assert list(tmp_path.iterdir()) == []  # no submission, no temp file


def test_validator_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "ImageId,EncodedPixels,ClassId\n"
        "a.jpg,1 3,1\n"
        "a.jpg,,1\n"  # duplicate
        "a.jpg,5 x,2\n"  # bad RLE token
        "a.jpg,,7\n"  # unknown class
        "c.jpg,,1\n"  # image not in folder
        "a.jpg,,3,extra\n"  # ragged
        "b.jpg,409601 2,1\n"
    )  # past the image end
    problems = validate(bad, IDS)
    text = "\n".join(problems)
    for needle in (
        "line 3: duplicate",
        "line 4",
        "line 5: unknown ClassId",
        "line 6: image 'c.jpg'",
        "line 7: 4 fields",
        "line 8",
        "'a.jpg' has no row for class(es) [2, 3, 4]",
        "'b.jpg' has no row for class(es) [1, 2, 3, 4]",
    ):
        assert needle in text, (needle, problems)
    assert len(problems) == 8
    (tmp_path / "hdr.csv").write_text("foo,bar\n")
    assert "neither" in validate(tmp_path / "hdr.csv")[0]


def test_validate_cli(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in IDS:
        (images / name).write_bytes(b"")
    good = tmp_path / "sub.csv"
    _write(good)

    def run(f: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "common.submission", "validate", str(f), "--images", str(images)],
            capture_output=True,
            text=True,
        )

    ok = run(good)
    assert ok.returncode == 0 and "valid" in ok.stdout
    good.write_text(good.read_text().rsplit("\n", 2)[0] + "\n")  # drop the last row
    bad = run(good)
    assert bad.returncode == 1 and "'b.jpg' has no row for class(es) [4]" in bad.stdout
