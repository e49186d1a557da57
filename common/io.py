"""File I/O every command shares: atomic writes, and the one CSV reader.

Atomic writes: a reader never sees a half-written file and a crash leaves the old one in place.
The CSV reader is used for every CSV the project reads (annotations, submissions, folds, id lists,
label tables, OOF tables, uploads), so they all accept and refuse the same things: UTF-8 with or
without a BOM, quoted fields of any size, blank lines skipped; errors name the file and the line.
"""
from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, Sequence

from common.errors import SteelsegError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CsvError", "CsvTable", "atomic_open", "atomic_write_text", "read_csv", "parse_csv_text"]


class CsvError(SteelsegError, ValueError):
    """A file that is not readable as CSV text; the message names the file and the line."""


@contextmanager
def atomic_open(path: Path | str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write text to ``path`` atomically and return the path."""
    with atomic_open(path, "w", newline="") as handle:
        handle.write(text)
    return Path(path)


@dataclass(frozen=True)
class CsvTable:
    """A CSV file as text: the header, the rows (lists of strings) and the line each row starts on."""

    name: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.rows)

    def require(self, columns: Sequence[str]) -> None:
        """Raise CsvError unless every column is in the header."""
        missing = [c for c in columns if c not in self.header]
        if missing:
            raise CsvError(f"{self.name}: missing column(s) {missing} (header: {self.header})")

    def check_widths(self) -> None:
        """Raise CsvError naming the first row whose field count differs from the header's."""
        for line, row in zip(self.lines, self.rows):
            if len(row) != len(self.header):
                raise CsvError(f"{self.name}, line {line}: {len(row)} fields, the header has {len(self.header)}")

    def frame(self) -> "pd.DataFrame":
        """All columns as text (no NaN: empty fields stay ''); rows of another width are an error."""
        import pandas as pd

        self.check_widths()
        if len(set(self.header)) != len(self.header):
            raise CsvError(f"{self.name}: repeated column names in the header {self.header}")
        return pd.DataFrame(self.rows, columns=self.header, dtype=object).astype(str) if self.rows else \
            pd.DataFrame({c: pd.Series(dtype=str) for c in self.header})


def _field_limit() -> None:
    limit = sys.maxsize
    while True:  # the C long of some platforms is 32-bit
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def parse_csv_text(text: str, name: str = "<csv>", comment: str | None = None) -> CsvTable:
    """Parse CSV text (a leading BOM is dropped); ``comment``: lines starting with it are skipped."""
    _field_limit()
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if comment and row[0].startswith(comment):
                continue
            if header is None:
                header = [c.strip() for c in row]
                continue
            rows.append(row)
            lines.append(line)
    except csv.Error as exc:
        raise CsvError(f"{name}, line {reader.line_num}: not readable as CSV ({exc})") from exc
    if header is None:
        raise CsvError(f"{name}: empty file (no header line)")
    return CsvTable(name, header, rows, lines)


def read_csv(source: Path | str | bytes, name: str | None = None, comment: str | None = None) -> CsvTable:
    """Read a CSV file (a path) or CSV bytes (e.g. an upload; ``name`` says where they came from)."""
    if isinstance(source, bytes):
        data, name = source, name or "<upload>"
    else:
        path = Path(source)
        name = name or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise CsvError(f"{name}: file not found") from exc
        except OSError as exc:
            raise CsvError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CsvError(f"{name}, line {line}: not UTF-8 text (byte {exc.start})") from exc
    return parse_csv_text(text, name, comment)
