"""Exceptions that name the file, row or key that caused them.

A ``SteelsegError`` is a user error: command-line tools print its one-line message and exit 2, with no
traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


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


__all__ = ["SteelsegError", "AnnotationError", "ImageError", "DatasetError", "ConfigError", "RLEError", "OOFError",
           "SubmissionError"]
