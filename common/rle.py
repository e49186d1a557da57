"""Kaggle run-length encoding: 1-indexed ``start length`` pairs over column-major pixels.

Pixels are numbered top-to-bottom, then left-to-right (Fortran order), starting at 1.
An empty mask encodes to ``''``.

Validation is exact: an RLE is digits separated by ASCII whitespace (space, tab, CR, LF), an even number
of tokens, starts >= 1, lengths >= 1, runs ascending and not overlapping, inside the image. Values are
range-checked before any arithmetic (no int64 overflow) and a token too large for the image is reported
with its exact value (never saturated). The fast path checks everything with a few vector operations;
only a failing RLE is re-read token by token to name the first bad token or run.

Speed (``benchmarks/bench_rle.py``): ``encode`` never transposes the mask: it compares each row with the
next 8 pixels at a time (``uint64`` words) and sorts the few transitions into column-major order;
numbers are written through a lookup table of their decimal text.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from common.constants import IMAGE_SHAPE
from common.errors import RLEError

__all__ = ["RLEError", "is_empty", "format_ints", "encode", "parse", "decode", "area"]

_SEPARATORS = " \t\n\r"
_ALLOWED = b"0123456789" + _SEPARATORS.encode()
_TOKEN = re.compile(r"[^ \t\n\r]+")
_BAD_CHAR = re.compile(r"[^0-9 \t\n\r]")
_TABLE_LIMIT = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] + 1


def is_empty(rle: object) -> bool:
    """True for the values that mean 'no mask': None, NaN and blank strings."""
    if rle is None:
        return True
    if isinstance(rle, float) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


# ----------------------------------------------------------------------------- formatting


@lru_cache(maxsize=1)
def _decimal_table(limit: int = _TABLE_LIMIT) -> np.ndarray:
    """uint64 per value 0..limit-1: its decimal digits and a space as bytes, zero-padded (3.3 MB, ~20 ms once)."""
    values = np.arange(limit, dtype=np.int64)
    n_digits = np.ones(limit, np.int64)
    for k in range(1, 7):
        n_digits += values >= 10**k
    table = np.zeros((limit, 8), np.uint8)
    for pos in range(7):  # byte ``pos`` holds the digit of weight 10 ** (n_digits - 1 - pos)
        power = n_digits - 1 - pos
        on = power >= 0
        table[on, pos] = values[on] // 10 ** power[on] % 10 + ord("0")
    table[np.arange(limit), n_digits] = ord(" ")
    return table.view(np.uint64).ravel()


def format_ints(values: npt.ArrayLike) -> str:
    """Space-separated decimal text of non-negative ints (a list or an int array), via a lookup table."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return ""
    if values.max() >= _TABLE_LIMIT or values.min() < 0:
        return " ".join(map(str, values.tolist()))
    return _format(values)


def _format(values: np.ndarray) -> str:
    """``format_ints`` of a non-empty int array known to lie in [0, _TABLE_LIMIT)."""
    text = _decimal_table()[values].view(np.uint8)
    digits: bytes = text[text != 0].tobytes()
    return digits[:-1].decode("ascii")


# ----------------------------------------------------------------------------- encoding

_EMPTY = np.zeros(0, np.int64)


def _changes_column_major(mask: np.ndarray) -> np.ndarray:
    """0-based column-major positions where the on/off state changes (any layout, any dtype)."""
    flat = np.ascontiguousarray(mask.T).reshape(-1) != 0  # no copy for Fortran-ordered masks
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    head = [0] if flat[0] else []
    tail = [flat.size] if flat[-1] else []
    return np.concatenate((head, change, tail)).astype(np.int64)


def _changes_by_words(mask: np.ndarray) -> np.ndarray:
    """``_changes_column_major`` of a C-ordered 1-byte mask whose width is a multiple of 8, without transposing:
    rows are compared with the next row 8 pixels at a time, and only the differing words are looked at."""
    h, w = mask.shape
    words = mask.view(np.uint64)
    differ = np.flatnonzero(words[1:] != words[:-1])  # word i of row r vs the same word of row r + 1
    parts = [_EMPTY]
    if differ.size:
        flat = words.reshape(-1)
        above = flat[differ].view(np.uint8) != 0
        below = flat[differ + w // 8].view(np.uint8) != 0
        byte = np.flatnonzero(above != below)  # values 1 and 255 are both 'on': compare states, not bytes
        row, col = np.divmod(differ[byte >> 3] * 8 + (byte & 7), w)  # of the upper pixel of each change
        parts[0] = col * h + row + 1
    top, bottom = mask[0] != 0, mask[h - 1] != 0
    parts.append((np.flatnonzero(bottom[:-1] != top[1:]) + 1) * h)  # last pixel of column c vs first of c + 1
    if top[0]:
        parts.append(np.zeros(1, np.int64))
    if bottom[-1]:
        parts.append(np.full(1, h * w, np.int64))
    changes = np.concatenate(parts)
    changes.sort()
    return changes


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype, nonzero = on) as a Kaggle RLE string."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.size == 0:
        return ""
    h, w = mask.shape
    if mask.itemsize == 1 and mask.flags.c_contiguous and w % 8 == 0 and h > 1:
        if not mask.view(np.uint64).max():  # most (image, class) pairs are empty: 8 us instead of 45
            return ""
        changes = _changes_by_words(mask.view(np.uint8))
    else:
        changes = _changes_column_major(mask)
    if changes.size == 0:
        return ""
    changes[1::2] -= changes[::2]
    changes[::2] += 1
    return _format(changes) if h * w < _TABLE_LIMIT else format_ints(changes)


# ----------------------------------------------------------------------------- parsing


def _shown(token: str) -> str:
    return repr(token) if len(token) <= 24 else f"{token[:12]!r}...{token[-6:]!r} ({len(token)} characters)"


def _token_at(rle: str, i: int) -> tuple[int, str]:
    """(index, text) of the token (ASCII-whitespace separated) holding character ``i``; the text before it
    holds only digits and ASCII whitespace."""
    start = max(rle.rfind(sep, 0, i) for sep in _SEPARATORS) + 1
    found = _TOKEN.match(rle, start)
    return _count_tokens(rle[:start]), found.group() if found else rle[start : i + 1]


def _count_tokens(text: str) -> int:
    """Number of tokens of a text of digits and ASCII whitespace only."""
    digit = np.frombuffer(text.encode("ascii"), np.uint8) > ord(" ")
    return int(digit[:1].sum()) + int(np.count_nonzero(digit[1:] & ~digit[:-1]))


def _explain(rle: str, shape: tuple[int, int], values: np.ndarray | None = None) -> RLEError:
    """The exact reason an RLE fails the fast checks: the first bad character, token or run (vectorised, so
    even a 100 MB field is explained in seconds). ``values``: the tokens already parsed, if any."""
    bad = _BAD_CHAR.search(rle)
    if bad is not None:
        i, char = bad.start(), bad.group()
        if char.isspace():
            name = unicodedata.name(char, "control character")
            return RLEError(
                f"character {char!r} (U+{ord(char):04X} {name}) at position {i}: separate the numbers with ASCII spaces"
            )
        k, token = _token_at(rle, i)
        return RLEError(f"token {k} ({_shown(token)}) is not a non-negative integer")
    if values is None:
        values = np.fromstring(rle, dtype=np.int64, sep=" ")  # exact up to 18 digits; saturates above
    if values.size % 2:
        return RLEError(f"odd number of tokens ({values.size}): RLE must be 'start length' pairs")
    total = shape[0] * shape[1]
    large = np.flatnonzero(values > total)
    if large.size:
        k = int(large[0])
        token = next(itertools.islice(_TOKEN.finditer(rle), k, None)).group()
        shown = token.lstrip("0") if len(token) <= 24 else f"{token.lstrip('0')[:12]}... ({len(token)} digits)"
        what = "start" if k % 2 == 0 else "length"
        return RLEError(f"run {k // 2}: {what} {shown} is larger than the image ({total} pixels for {shape})")
    starts, lengths = values[0::2], values[1::2]  # every value <= H * W: no overflow
    ends = starts - 1 + lengths
    overlap = np.zeros(starts.size, bool)
    overlap[1:] = starts[1:] - 1 < ends[:-1]
    failing = np.flatnonzero((starts < 1) | (lengths < 1) | overlap | (ends > total))
    if failing.size == 0:
        raise AssertionError(f"RLE {rle[:80]!r} failed a check that its exact reading does not reproduce")
    i = int(failing[0])
    start, length, end = int(starts[i]), int(lengths[i]), int(ends[i])
    if start < 1:
        return RLEError(f"run {i}: start {start} < 1 (starts are 1-indexed)")
    if length < 1:
        return RLEError(f"run {i}: length {length} < 1")
    if overlap[i]:
        return RLEError(
            f"run {i}: start {start} is not after the end of run {i - 1} ({int(ends[i - 1])}): "
            f"runs must be ascending and must not overlap"
        )
    return RLEError(f"run {i} ends at pixel {end}, past the image end ({total} pixels for {shape})")


@lru_cache(maxsize=1)
def _alternating() -> np.ndarray:
    """0, 1, 0, 1, ... (uint8): the smallest gap / run lengths, and the values decode repeats."""
    return (np.arange(_TABLE_LIMIT + 1) & 1).astype(np.uint8)


def _lowest(size: int) -> np.ndarray:
    """The smallest valid alternating gap / run lengths: 0, 1, 0, 1, ..., 0."""
    return _alternating()[:size] if size <= _TABLE_LIMIT + 1 else (np.arange(size) & 1).astype(np.uint8)


def _counts(rle: object, shape: tuple[int, int]) -> np.ndarray:
    """Validated alternating gap / run lengths (int64, 2 * runs + 1 values, summing to H * W); empty RLE: []."""
    if type(rle) is not str or not rle.strip():  # noqa: E721 - the fast path is for exact str
        if is_empty(rle):
            return np.zeros(0, np.int64)
        if not isinstance(rle, str):
            raise RLEError(f"RLE must be a string, got {type(rle).__name__}: {rle!r}")
    foreign: bytes | bool
    try:
        foreign = rle.encode("ascii").translate(None, _ALLOWED)
    except UnicodeEncodeError:
        foreign = True
    if foreign:
        raise _explain(rle, shape)
    total = shape[0] * shape[1]
    # Runs of one pixel with gaps of one: the most numbers any RLE of the image holds (checked before
    # parsing when the text is long enough to hold more).
    n = _count_tokens(rle) if len(rle) > 8 * (total + 1) else 0
    if n <= total + 1:
        # Only digits and ASCII whitespace are left, so the C text parser reads every token.
        values = np.fromstring(rle, dtype=np.int64, sep=" ")
        n = values.size
    if n > total + 1:
        raise RLEError(f"{n} numbers: more than any RLE of a {shape[0]}x{shape[1]} image holds ({total + 1})")
    if n % 2 or values.min() == 0:  # a 0 is a start < 1 or a run of length 0
        raise _explain(rle, shape)
    # Gaps and runs, computed in uint64: exact for any values (each < 2**63), and a value out of order or out
    # of range wraps to or stays a count > H * W. So when every count is <= H * W, the run boundaries (their
    # partial sums) are exact and ascending, and the RLE is valid.
    raw = values.view(np.uint64)
    counts = np.empty(n + 1, np.uint64)
    counts[1:n:2] = raw[1::2]
    gaps = counts[2:n:2]
    np.subtract(raw[2::2], raw[:-2:2], out=gaps)
    gaps -= raw[1:-1:2]
    counts[0] = int(raw[0]) - 1
    tail = total - (int(raw[-2]) - 1 + int(raw[-1]))
    if tail < 0 or counts[:n].max() > total:
        raise _explain(rle, shape)
    counts[n] = tail
    return counts.view(np.int64)


def parse(rle: object, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE and return its 0-based run starts and lengths (int64 arrays)."""
    counts = _counts(rle, shape)
    if counts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = counts[1::2]
    starts = np.cumsum(counts[:-1])[0::2]
    return starts, lengths.copy()


def decode(rle: object, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Decode a Kaggle RLE into a uint8 0/1 mask of ``shape``; '', None and NaN give an empty mask."""
    counts = _counts(rle, shape)
    n = counts.size
    if n == 0:
        return np.zeros(shape, np.uint8)
    # One repeat of alternating 0-gaps and 1-runs writes the whole column-major buffer.
    values = _alternating()[:n] if n <= _TABLE_LIMIT + 1 else _lowest(n)
    return values.repeat(counts).reshape(shape[1], shape[0]).T


def area(rle: object, shape: tuple[int, int] = IMAGE_SHAPE) -> int:
    """Number of pixels an RLE covers, validated, without decoding the mask."""
    return int(_counts(rle, shape)[1::2].sum())
