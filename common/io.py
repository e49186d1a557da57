"""File I/O every command shares: atomic writes, the writability check, and the one CSV reader.

Atomic writes: a reader never sees a half-written file and a crash leaves the old one in place. The data
goes to a hidden temp file next to the target, ``.<name>.<pid>-<host>.<random>.tmp``, renamed over the
target when complete. The file gets the mode ``open()`` would give: the target's mode when it exists,
``0o666 & ~umask`` otherwise. A writer killed with ``kill -9`` cannot remove its temp file, so every
write first removes the stale temp files of the same target: those whose writer ran on this host and is
no longer running (the pid and a host tag are in the name), and those not modified for
``STALE_TEMP_AGE_S`` (another host's, or a reused pid's). Fresh temp files of live writers are kept.
A full disk, a read-only file system or a permission problem while writing is a ``WriteError`` (a user
error naming the file), never a bare ``OSError`` or a library's message.

The CSV reader is used for every CSV the project reads (annotations, submissions, folds, id lists,
label tables, OOF tables, uploads), so they all accept and refuse the same things: UTF-8 with or
without a BOM, quoted fields of any size, blank lines skipped; errors name the file and the line.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common.errors import SteelsegError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CsvError",
    "CsvTable",
    "WriteError",
    "STALE_TEMP_AGE_S",
    "atomic_open",
    "atomic_write_text",
    "temp_dir_beside",
    "replace_folder",
    "check_writable",
    "check_outputs",
    "place_error",
    "remove_stale_temps",
    "read_csv",
    "parse_csv_text",
    "FORMULA_PREFIXES",
    "spreadsheet_safe",
]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula (OWASP)

STALE_TEMP_AGE_S = 3600
# Failures of the place written to (not of the program): reported as one line naming the file.
_PLACE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOENT,
    errno.EEXIST,
}
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # only a write can raise these
_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "no permission: write elsewhere or fix the folder's permissions",
    errno.EPERM: "no permission: write elsewhere or fix the folder's permissions",
    errno.EISDIR: "a directory is in the way: name a file",
    errno.ENOTDIR: "a file is in the way of a folder",
}


class CsvError(SteelsegError, ValueError):
    """A file that is not readable as CSV text; the message names the file and the line."""


class WriteError(SteelsegError, OSError):
    """A file that cannot be written (full disk, read-only place, no permission, a directory in the way)."""

    def __str__(self) -> str:  # the one-line message, also when errno/strerror are set
        return str(self.args[0]) if self.args else ""


def _write_error(path: Path | str, exc: OSError, key: str | None = None) -> WriteError:
    """One line naming the file (and the setting that chose it), the cause and what to do."""
    cause = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0, "write elsewhere")
    where = f"{key}: {path}" if key else str(path)
    error = WriteError(f"{where}: cannot write ({cause}): {hint}")
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(path)
    return error


def place_error(exc: OSError, path: Path | str, key: str | None = None) -> WriteError | None:
    """The WriteError naming ``path`` when ``exc`` is a failure of the place written to (read-only, full, no
    permission, something in the way), for writes the project does not make itself (Hydra's run folder); else None."""
    if isinstance(exc, SteelsegError) or exc.errno not in _PLACE_ERRNOS:
        return None
    return _write_error(path, exc, key)


@lru_cache(maxsize=1)
def _host_tag() -> str:
    """8 hex digits naming this machine in temp file names (hostnames may hold any character)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(\d+)-([0-9a-f]{{8}})\.[A-Za-z0-9_]+\.tmp")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: Path | str, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the leftover temp files of ``path`` (see the module doc for which); return those removed."""
    path = Path(path)
    pattern, host, now = _temp_pattern(path.name), _host_tag(), time.time()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        pid, tag = int(match.group(1)), match.group(2)
        try:
            dead = tag == host and pid != os.getpid() and not _pid_running(pid)
            if dead or now - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # removed meanwhile, or not ours to remove: the write goes on
            continue
    return removed


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode open() would give ``path``: its current mode if it exists, else 0o666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def temp_dir_beside(path: Path | str) -> Path:
    """An empty temp folder next to ``path`` with the mode mkdir would give (0o777 minus the umask, not
    mkdtemp's 0o700), so a folder built there and renamed to ``path`` is shared as the umask says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    folder.chmod(0o777 & ~_umask())
    return folder


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system has none."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or file system without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(staged: Path | str, path: Path | str) -> Path:
    """Put the finished folder ``staged`` (from ``temp_dir_beside``) at ``path``; an existing ``path`` is swapped
    out in one step where the system allows it, so readers see the old folder or the new one, never none."""
    staged, path = Path(staged), Path(path)
    if not path.exists():
        os.rename(staged, path)
        return path
    if not _exchange(staged, path):  # no atomic swap here: the shortest window without ``path``
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old / path.name)
        os.rename(staged, path)
        staged = old
    import shutil

    shutil.rmtree(staged, ignore_errors=True)  # after the swap ``staged`` holds the old folder
    return path


def replace_file(staged: Path | str, path: Path | str) -> Path:
    """Put the finished file ``staged`` (written beside ``path``) at ``path`` in one step, so readers see the old
    file or the new one, never a part."""
    os.replace(staged, path)
    return Path(path)


def _temp_file(path: Path) -> tuple[int, str]:
    """Create the temp file for ``path`` (folder made if missing) with the final file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-{_host_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


@contextmanager
def atomic_open(path: Path | str, mode: str = "w", key: str | None = None, **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; rename it over ``path`` only if the block succeeds.

    ``key``: the setting that named the file, for the error message. A full disk, a read-only place or a
    missing permission raises WriteError naming the file; other errors pass unchanged.
    """
    path = Path(path)
    try:
        fd, tmp = _temp_file(path)
    except OSError as exc:
        if exc.errno in _PLACE_ERRNOS and not isinstance(exc, SteelsegError):
            raise _write_error(path, exc, key) from exc
        raise
    own_step = False
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            own_step = True
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, SteelsegError)
            and (exc.errno in _WRITE_ERRNOS or (own_step and exc.errno in _PLACE_ERRNOS))
        ):
            raise _write_error(path, exc, key) from exc
        raise


def atomic_write_text(path: Path | str, text: str, key: str | None = None) -> Path:
    """Write text to ``path`` atomically and return the path."""
    with atomic_open(path, "w", key=key, newline="") as handle:
        handle.write(text)
    return Path(path)


def check_writable(path: Path | str, key: str, directory: bool = False) -> Path:
    """Fail now, naming ``key``, when ``path`` cannot be written later (a directory or a file in the way, a
    read-only or full place, no permission): commands call it at start-up for every file or folder they will
    write. Nothing is created: a probe file is made and removed in the nearest existing folder."""
    path = Path(path)
    if not directory and path.is_dir():
        raise WriteError(f"{key}: {path} is a directory: name a file (in it or elsewhere)")
    if directory and path.exists() and not path.is_dir():
        raise WriteError(f"{key}: {path} is a file: name a folder")
    folder = path if directory else path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise WriteError(f"{key}: {path}: {existing} is a file, not a folder: write elsewhere")
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".steelseg-write-check.{os.getpid()}-{_host_tag()}.", suffix=".tmp", dir=existing
        )
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise _write_error(path, exc, key) from exc
    return path


def _file_in_the_way(folder: Path, inner: Path) -> Path | None:
    """The first existing non-folder on the way from ``folder`` down to ``inner`` (a folder to be made), or None."""
    step = folder
    for part in inner.relative_to(folder).parts:
        step = step / part
        if not step.exists():
            return None
        if not step.is_dir():
            return step
    return None


def check_outputs(folder: Path | str, key: str, files: Sequence[str] = (), folders: Sequence[str] = ()) -> Path:
    """Fail now, naming ``key``, when an output folder or a file or folder of its fixed layout (a run folder's
    ``checkpoints/last.pt``, ``metrics.csv``, OOF files...) cannot be written later: every stage calls it at
    start-up, so a directory where a checkpoint goes is found before the first epoch, not after it."""
    folder = check_writable(folder, key, directory=True)
    targets = [(folder / name, False) for name in files] + [(folder / name, True) for name in folders]
    for path, is_folder in targets:
        if not is_folder and path.is_dir():
            raise WriteError(f"{key}: {path} is a directory where a file is written: remove it or choose another {key}")
        blocker = _file_in_the_way(folder, path if is_folder else path.parent)
        if blocker is not None:
            raise WriteError(f"{key}: {blocker} is a file where a folder is made: remove it or choose another {key}")
        check_writable(path, key, directory=is_folder)
    return folder


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

    def frame(self) -> pd.DataFrame:
        """All columns as text (no NaN: empty fields stay ''); rows of another width are an error."""
        import pandas as pd

        self.check_widths()
        if len(set(self.header)) != len(self.header):
            raise CsvError(f"{self.name}: repeated column names in the header {self.header}")
        return (
            pd.DataFrame(self.rows, columns=self.header, dtype=object).astype(str)
            if self.rows
            else pd.DataFrame({c: pd.Series(dtype=str) for c in self.header})
        )


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
        line = data[: exc.start].count(b"\n") + 1
        raise CsvError(f"{name}, line {line}: not UTF-8 text (byte {exc.start})") from exc
    return parse_csv_text(text, name, comment)


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of a pandas frame for CSVs people open in a spreadsheet: text cells starting with ``= + - @``, tab or
    CR get a leading ``'`` (OWASP CSV injection); numbers stay numbers. Kaggle files (submissions, train.csv) are
    read by programs and never pass through here."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype).startswith("str"):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v
            )
    return out
