"""The job behind ``python infer.py``: images -> ensemble -> submission (+ score, + inspections store)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.annotations import check_run_id, read_annotations
from common.constants import CLASS_IDS, LONG_COLUMNS
from common.data_setup import prepare_root
from common.dataset import dataset_from
from common.errors import ConfigError, DatasetError
from common.io import check_writable
from common.metrics import ScoreReport, dice, score_pairs, with_interval
from common.rle import decode
from common.submission import open_submission
from ensemble.core import resolve_batch_size, rows_of
from ensemble.pipeline import drain_in_background
from ensemble.settings import InferSettings


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so cleanup (temp submission removal) runs."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def image_set(cfg: Mapping[str, Any]):
    """The checked image folder of an infer config (and its truth when evaluating): infer.py, pseudo-labels, export."""
    settings = InferSettings.from_config(cfg)
    if settings.images is None:
        raise ConfigError("images: give the folder of the images to predict")
    data = cfg["data"]
    images = Path(settings.images)
    if str(images) == str(data["test_dir"]):
        prepare_root(data)  # generates the synthetic dataset on first use
    truth = None
    if settings.evaluate:
        if not settings.truth or not Path(settings.truth).is_file():
            raise DatasetError(f"evaluate=true needs truth= pointing to the labels of {images}; got {settings.truth!r}")
        truth = read_annotations(settings.truth)
    return dataset_from(images, truth, str(data.get("check_images", "header")))


class _Scorer:
    """Per-pair Dice as predictions stream by (N x 4 floats kept, never the masks or RLEs)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.dice = np.zeros((len(dataset), len(CLASS_IDS)))
        self.empty = np.zeros((len(dataset), len(CLASS_IDS)), bool)
        self.index = {image_id: i for i, image_id in enumerate(dataset.image_ids)}

    def add(self, image_id: str, masks: np.ndarray) -> None:
        i, truth = self.index[image_id], self.dataset.rles(image_id)
        for j, c in enumerate(CLASS_IDS):
            t = decode(truth[c]) if c in truth else None
            self.empty[i, j] = t is None
            self.dice[i, j] = dice(masks[j], t) if t is not None else float(not masks[j].any())

    def report(self) -> ScoreReport:
        return with_interval(score_pairs(self.dice, self.empty, len(self.dataset)), self.dice, self.empty)


class _Store:
    """Appends predictions to the inspections store in chunks as they stream by."""

    def __init__(self, path: str, run_id: str, chunk: int = 64) -> None:
        from common.inspections import connect

        self.conn, self.run_id, self.chunk = connect(path), run_id, chunk
        self.rows: list[tuple[str, int, str]] = []
        self.ids: list[str] = []
        self.count = 0

    def add(self, image_id: str, rows: list[tuple[str, int, str]]) -> None:
        self.ids.append(image_id)
        self.rows.extend(r for r in rows if r[2])
        if len(self.ids) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        from common.inspections import append_rows

        if self.ids:
            frame = pd.DataFrame(self.rows, columns=LONG_COLUMNS)
            self.count += append_rows(self.conn, frame, f"pred:{self.run_id}", self.run_id, image_ids=self.ids)
        self.rows, self.ids = [], []


def build_runtime(cfg: Mapping[str, Any]) -> tuple[Any, int]:
    """(predictor, threads) of ``cfg.runtime``, imported only when chosen: ``torch`` (checkpoints through
    PyTorch) or ``onnx`` (an exported bundle through ONNX Runtime; torch is never imported)."""
    settings = InferSettings.from_config(cfg)
    if settings.runtime == "onnx":
        from ensemble.onnx_runtime import predictor_from_config

        predictor = predictor_from_config(cfg)
        return predictor, predictor.threads
    from ensemble.predict import build_predictor, set_threads

    threads = set_threads(settings.threads)
    return build_predictor(cfg), threads


def infer(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Write the submission for ``cfg.images``; return a summary (paths, counts, speed, score).

    Memory does not grow with the number of images: masks are encoded and written per image (on a background
    thread, so the device loop does not wait for it), the score is accumulated per pair, inspections are
    appended in chunks. ``profile=true`` adds where the time goes per image (``time_ms_per_image``).
    """
    settings = InferSettings.from_config(cfg)  # every root key checked before anything is read or loaded
    if settings.output is None:
        raise ConfigError("output: give the submission file to write")
    output = check_writable(settings.output, "output")  # fail before the prediction, not after it
    if settings.store:
        check_writable(settings.store, "store")
        check_run_id(settings.run_id, "run_id")
    dataset = image_set(cfg)
    predictor, threads = build_runtime(cfg)
    batch_size = resolve_batch_size(settings.batch_size, predictor)
    paths = [dataset.path(i) for i in dataset.image_ids]
    scorer = _Scorer(dataset) if settings.evaluate else None
    store = _Store(settings.store, settings.run_id) if settings.store else None
    timer = predictor.timer

    def handle(item: tuple[str, Any, np.ndarray]) -> None:
        image_id, _, masks = item
        with timer.section("rle"):
            rows = rows_of(image_id, masks)
        with timer.section("write"):
            writer.write_rows(rows)
            if scorer:
                scorer.add(image_id, masks)
            if store:
                store.add(image_id, rows)

    start = time.perf_counter()
    try:
        with sigterm_as_exit(), open_submission(output, dataset.image_ids, settings.format) as writer:
            drain_in_background(
                predictor.iter_predictions(paths, batch_size, settings.num_workers, settings.progress), handle
            )
        if store:
            store.flush()
    finally:
        if store:
            store.conn.close()
    seconds = time.perf_counter() - start
    stats = predictor.stats
    summary: dict[str, Any] = {
        "submission": str(output),
        "runtime": settings.runtime,
        "images": len(paths),
        "masks": writer.masks,
        "seconds": seconds,
        "images_per_s": len(paths) / seconds if seconds else float("nan"),
        "threads": threads,
        "segmenter_passes_skipped": stats.skipped_share,
        "rules": predictor.rules.to_dict(),
    }
    print(
        f"submission: {output} ({len(paths)} images, {writer.masks} masks, {summary['images_per_s']:.2f} images/s, "
        f"{stats.skipped_share:.1%} of segmenter passes skipped by gating)"
    )
    if timer.enabled:
        summary["time_ms_per_image"] = timer.per_item(len(paths))
        print(
            "time per image (ms, device synchronised per section): "
            + ", ".join(f"{name} {ms:.3f}" for name, ms in summary["time_ms_per_image"].items())
        )
    if scorer:
        report = scorer.report()
        print(report.format())
        summary["score"] = report.to_dict()
    if store:
        summary["stored"] = store.count
        print(f"inspections: {store.count} rows appended to {cfg['store']} (source pred:{store.run_id})")
    return summary
