"""Predictions on demand, in-process: the ``infer`` config composed once, the models loaded once and reused.

The dashboard takes the Hydra overrides of ``infer.py`` (``--infer checkpoints.segmenter=[runs/seg]
--infer thresholds=t.json``); without them it uses infer.py's defaults, the demo's training runs
(``outputs/train/<stage>/demo`` after ``make demo``). Which checkpoints exist is checked on every page
load (the files, and under ``checkpoints.runs`` the kind each records), so models trained while the dashboard
runs are found on the next reload; they are loaded on the first prediction and kept until their files change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.constants import LONG_COLUMNS
from common.errors import SteelsegError

__all__ = ["FIX", "PredictionError", "Progress", "OnDemand"]

FIX = (
    "run `make demo` to train the demo models, or start the dashboard with "
    "--infer checkpoints.segmenter=[PATH] (a checkpoint or training output folder; likewise classifier, joint)"
)


class PredictionError(SteelsegError, RuntimeError):
    """Prediction on demand cannot run; the message is one line with the fix."""


@dataclass(frozen=True)
class Progress:
    """Where a prediction stands: what it does, images done and images in all."""

    stage: str = "idle"
    done: int = 0
    total: int = 0


class OnDemand:
    """The infer config, the checkpoints it names, and the predictor built from them (one run at a time)."""

    def __init__(self, overrides: Sequence[str] = ()) -> None:
        self.overrides = list(overrides)
        self._cfg: dict[str, Any] | None = None
        self._predictor = None
        self._key: tuple | None = None
        self._run_lock = threading.Lock()
        self._progress = Progress()

    def config(self) -> dict[str, Any]:
        """The plain sections of the composed infer config that prediction uses (composed once)."""
        if self._cfg is None:
            from ensemble.settings import compose_infer, predictor_config

            self._cfg = predictor_config(compose_infer(self.overrides))
        return self._cfg

    def checkpoints(self) -> dict[str, list[Path]]:
        """Checkpoint files per member kind that the config names (per kind, else ``checkpoints.runs``), on disk now."""
        from ensemble.members import entry_files
        from ensemble.predict import member_entries  # the one rule infer.py uses to turn the config into members

        found: dict[str, list[Path]] = {}
        for kind, entries in member_entries(self.config()["checkpoints"]).items():
            for entry in entries:
                found.setdefault(kind, []).extend(entry_files(entry, kind)[0])
        return found

    def status(self) -> str:
        """One line naming the models found; raises PredictionError with the fix when none can predict."""
        from ensemble.predict import check_members, load_rules

        try:
            found = self.checkpoints()
            check_members([k for k, paths in found.items() if paths], load_rules(self.config()))
        except SteelsegError as exc:
            raise PredictionError(f"No usable trained models: {exc}. Fix: {FIX}") from exc
        kinds = ", ".join(f"{len(paths)} {kind}" for kind, paths in found.items() if paths)
        state = (
            "loaded" if self._predictor is not None and self._key == self._files_key(found) else "loaded on first use"
        )
        return f"Models: {kinds} checkpoint(s) ({state})."

    def progress(self) -> Progress:
        """The running prediction's progress (idle when none runs)."""
        return self._progress

    def _files_key(self, found: dict[str, list[Path]]) -> tuple:
        files = [p for paths in found.values() for p in paths]
        thresholds = self.config().get("thresholds")
        if thresholds:
            files.append(Path(thresholds))
        return tuple((str(p), p.stat().st_mtime_ns if p.exists() else None) for p in files)

    def predict(self, paths: Sequence[Path]) -> tuple[pd.DataFrame, str]:
        """Long-form rows (ImageId, ClassId, EncodedPixels) of every image x class, and a line on the timing."""
        from ensemble.core import resolve_batch_size
        from ensemble.predict import build_predictor, rows_of

        self.status()
        if not self._run_lock.acquire(blocking=False):
            raise PredictionError("a prediction is already running; wait for it to finish")
        try:
            total = len(paths)
            start = time.perf_counter()
            key = self._files_key(self.checkpoints())
            note = "models reused"
            if self._predictor is None or self._key != key:
                self._progress = Progress("loading models", 0, total)
                self._predictor, self._key = build_predictor(self.config()), key
                note = f"models loaded in {time.perf_counter() - start:.1f} s"
            self._progress = Progress("predicting", 0, total)
            begin = time.perf_counter()
            rows = []
            for done, (image_id, _, masks) in enumerate(
                self._predictor.iter_predictions(
                    list(paths), resolve_batch_size(self.config().get("batch_size"), self._predictor)
                ),
                1,
            ):
                rows.extend(rows_of(image_id, masks))
                self._progress = Progress("predicting", done, total)
            seconds = time.perf_counter() - begin
        finally:
            self._progress = Progress()
            self._run_lock.release()
        return pd.DataFrame(rows, columns=LONG_COLUMNS), f"{total} image(s) in {seconds:.1f} s ({note})"
