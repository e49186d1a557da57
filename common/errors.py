"""Exceptions that name the file, row or key that caused them.

A ``SteelsegError`` is a user error: command-line tools print its one-line message and exit 2, with no
traceback (``command`` for a ``main(argv) -> int``, ``exit_on_user_error`` for Hydra apps). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec

_P = ParamSpec("_P")


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


_APP_STARTED = [False]  # set once an entry point's own code runs (Hydra has made its run folder by then)


def report_user_error(message: object) -> int:
    """Print a user error as every command does (``error: <message>`` on stderr) and return its exit status, 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def command(main: Callable[_P, int]) -> Callable[_P, int]:
    """Decorate a command's ``main(argv) -> int``: a SteelsegError anywhere in it is reported by
    ``report_user_error`` and ``main`` returns 2, without a traceback; other exceptions pass unchanged."""

    @functools.wraps(main)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except SteelsegError as exc:
            return report_user_error(exc)

    return run


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For Hydra apps and code outside a ``command``: a SteelsegError in the block is reported by
    ``report_user_error`` and exits 2, without a traceback; other exceptions pass unchanged."""
    _APP_STARTED[0] = True
    try:
        yield
    except SteelsegError as exc:
        raise SystemExit(report_user_error(exc)) from None


def _hydra_output_error(exc: OSError) -> str | None:
    """The one-line message when Hydra itself cannot make or write its output folder (``hydra.run.dir`` read-only,
    a file in the way...) before the app starts; None for any other OSError (a bug keeps its traceback)."""
    from common.io import place_error

    if _APP_STARTED[0]:
        return None
    multirun = bool({"-m", "--multirun", "hydra.mode=MULTIRUN"} & set(sys.argv[1:]))
    error = place_error(exc, exc.filename or "the output folder", "hydra.sweep.dir" if multirun else "hydra.run.dir")
    return None if error is None else str(error)


def _one_line(exc: BaseException) -> str:
    """An exception's message (and its cause's) on one line, without OmegaConf's full_key/object_type lines."""
    parts = [str(exc)] + (
        [str(exc.__cause__)] if exc.__cause__ is not None and str(exc.__cause__) not in str(exc) else []
    )
    text = "\n".join(parts).split("Config search path:")[0]  # Hydra's search path list says nothing to a user
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(
        line for line in lines if line and not line.startswith(("full_key:", "object_type=", "reference_type="))
    )


@contextmanager
def hydra_command_line_errors() -> Iterator[None]:
    """For the ``__main__`` of Hydra apps: a command line Hydra refuses while composing the config (an unknown
    key, a bad override, a config group option that does not exist) prints ``error: command line: <message>``
    and exits 2, like every other user error, instead of Hydra's report and exit 1. Errors of the app itself
    pass unchanged. (Hydra reports through ``hydra._internal.utils.run_and_report``; without it, nothing changes.)"""
    try:
        from hydra._internal import utils
        from hydra.errors import ConfigCompositionException, OverrideParseException
    except ImportError:  # another Hydra layout: its own report stays
        yield
        return
    original = getattr(utils, "run_and_report", None)
    if original is None:
        yield
        return

    def run_and_report(func):  # type: ignore[no-untyped-def]
        def guarded():  # type: ignore[no-untyped-def]
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as exc:
                raise SystemExit(report_user_error(f"command line: {_one_line(exc)}")) from None
            except OSError as exc:
                message = _hydra_output_error(exc)
                if message is None:
                    raise
                raise SystemExit(report_user_error(message)) from None

        return original(guarded)

    utils.run_and_report = run_and_report
    try:
        yield
    finally:
        utils.run_and_report = original


__all__ = [
    "exit_on_user_error",
    "hydra_command_line_errors",
    "SteelsegError",
    "AnnotationError",
    "ImageError",
    "DatasetError",
    "ConfigError",
    "RLEError",
    "OOFError",
    "SubmissionError",
]
