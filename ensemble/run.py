"""The job behind ``python infer.py``: images -> ensemble -> submission (+ score, + inspections store)."""
from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from common.annotations import read_annotations
from common.data_setup import prepare_root
from common.dataset import dataset_from
from common.errors import DatasetError
from common.metrics import kaggle_score
from common.submission import open_submission
from ensemble.predict import LONG_COLUMNS, build_predictor, rows_of, set_threads


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


def _image_set(cfg: Mapping[str, Any]):
    """The checked image folder (and its truth when evaluating)."""
    data = cfg["data"]
    images = Path(cfg["images"])
    if str(images) == str(data["test_dir"]):
        prepare_root(data)  # generates the synthetic dataset on first use
    truth = None
    if cfg.get("evaluate"):
        if not cfg.get("truth") or not Path(cfg["truth"]).is_file():
            raise DatasetError(f"evaluate=true needs truth= pointing to the labels of {images}; got {cfg.get('truth')!r}")
        truth = read_annotations(cfg["truth"])
    return dataset_from(images, truth, str(data.get("check_images", "header")))


def infer(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Write the submission for ``cfg.images``; return a summary (paths, counts, speed, score)."""
    threads = set_threads(cfg.get("threads"))
    dataset = _image_set(cfg)
    predictor = build_predictor(cfg)
    paths = [dataset.path(i) for i in dataset.image_ids]
    output = Path(cfg["output"])
    kept: list[tuple[str, int, str]] = []
    start = time.perf_counter()
    with sigterm_as_exit(), open_submission(output, dataset.image_ids, str(cfg.get("format", "new"))) as writer:
        for image_id, _, masks in predictor.iter_predictions(paths, int(cfg.get("batch_size", 4)),
                                                             int(cfg.get("num_workers", 0)),
                                                             bool(cfg.get("progress", True))):
            rows = rows_of(image_id, masks)
            writer.write_rows(rows)
            kept.extend(r for r in rows if r[2])
    seconds = time.perf_counter() - start
    stats = predictor.stats
    summary: dict[str, Any] = {
        "submission": str(output), "images": len(paths), "masks": writer.masks, "seconds": seconds,
        "images_per_s": len(paths) / seconds if seconds else float("nan"), "threads": threads,
        "segmenter_passes_skipped": stats.skipped_share, "rules": predictor.rules.to_dict(),
    }
    print(f"submission: {output} ({len(paths)} images, {writer.masks} masks, {summary['images_per_s']:.2f} images/s, "
          f"{stats.skipped_share:.1%} of segmenter passes skipped by gating)")
    pred = pd.DataFrame(kept, columns=LONG_COLUMNS)
    if cfg.get("evaluate"):
        report = kaggle_score(pred, dataset.annotations, dataset.image_ids)
        print(report.format())
        summary["score"] = report.to_dict()
    if cfg.get("store"):
        from common.inspections import append_rows, connect

        conn = connect(cfg["store"])
        try:
            run_id = str(cfg.get("run_id") or "infer")
            summary["stored"] = append_rows(conn, pred, f"pred:{run_id}", run_id, image_ids=dataset.image_ids)
        finally:
            conn.close()
        print(f"inspections: {summary['stored']} rows appended to {cfg['store']}")
    return summary
