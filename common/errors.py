"""Exceptions that name the file, row or key that caused them."""
from __future__ import annotations


class SteelsegError(Exception):
    """Base class of every steelseg input error."""


class AnnotationError(SteelsegError, ValueError):
    """A malformed annotation or submission CSV; the message names the file and the row."""


class ImageError(SteelsegError, OSError):
    """An image file that is missing, unreadable, truncated or of the wrong size."""


class DatasetError(SteelsegError, ValueError):
    """A dataset root that does not have the Kaggle layout, or whose parts disagree."""
