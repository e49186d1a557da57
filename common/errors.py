"""Exceptions that name the file, row or key that caused them.

A ``SteelsegError`` is a user error: command-line tools print its one-line message and exit 2, with no
traceback (``exit_on_user_error``). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class SteelsegError(Exception):
    """Base class of every steelseg input error."""


class AnnotationError(SteelsegError, ValueError):
    """A malformed annotation or submission CSV; the message names the file and the row."""


class ImageError(SteelsegError, OSError):
    """An image file that is missing, unreadable, truncated or of the wrong size."""


class DatasetError(SteelsegError, ValueError):
    """A dataset root that does not have the Kaggle layout, or whose parts disagree."""


class ConfigError(SteelsegError, ValueError):
    """A config node that cannot be turned into an object; the message names the key."""


class RLEError(SteelsegError, ValueError):
    """An encoded-pixels string that is not a valid Kaggle RLE for the given shape."""


class OOFError(SteelsegError, ValueError):
    """An OOF file that is missing, malformed or inconsistent; the message names the file and the array."""


class SubmissionError(SteelsegError, ValueError):
    """A submission that is incomplete, has duplicates or rows for unknown images."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For command-line entry points (Hydra apps included): a SteelsegError in the block becomes
    ``error: <message>`` on stderr and exit status 2, without a traceback; other exceptions pass unchanged."""
    try:
        yield
    except SteelsegError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


__all__ = ["exit_on_user_error", "SteelsegError", "AnnotationError", "ImageError", "DatasetError", "ConfigError", "RLEError", "OOFError",
           "SubmissionError"]
