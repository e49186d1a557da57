"""CV report from a multirun-like folder: OOF files, metrics.csv, checkpoints and a labelled holdout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis.report import main
from ensemble_helpers import image_folder, save_tiny
from test_threshold_search import B, _data


def test_report_end_to_end(tmp_path):
    oof, _, _ = _data(seed=3)
    run = tmp_path / "multirun"
    for f in (0, 1):
        part = oof.subset(oof.fold == f)
        seg, cls = run / f"seg_fold{f}", run / f"cls_fold{f}"
        save_tiny(seg / "checkpoints" / "best.pt", "segmenter", fold=f, seed=f)
        save_tiny(cls / "checkpoints" / "best.pt", "classifier", fold=f, seed=f)
        np.savez(
            seg / "oof_segmenter.npz",
            image_ids=part.image_ids,
            fold=part.fold,
            bin_edges=np.linspace(0, 1, B + 1),
            hist_pos=part.hist_pos,
            hist_neg=part.hist_neg,
            max_prob=part.max_prob.astype(np.float32),
        )
        frame = pd.DataFrame(part.cls_prob, columns=[f"prob_{c}" for c in (1, 2, 3, 4)])
        frame.insert(0, "ImageId", part.image_ids)
        frame.insert(1, "fold", f)
        frame.to_csv(cls / "oof_classifier.csv", index=False)
        pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_score": [0.5, 0.6]}).to_csv(
            seg / "metrics.csv", index=False
        )
    images, truth = image_folder(tmp_path / "holdout", 2)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "report"
    assert (
        main(
            [
                str(run),
                "--out",
                str(out),
                "--images",
                str(images),
                "--truth",
                str(tmp_path / "truth.csv"),
                "postprocess.bins=10",
            ]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    for needle in (
        "all-empty baseline",
        "segmenters alone",
        "tuned: veto",
        "roc_auc",
        "Held-out images",
        "no TTA",
        "one fold",
        "Dice on positive pairs",
        "false-positive rate on clean pairs",
        "gap closed",
        "on the other folds",
        "Decision:",
    ):
        assert needle in md, needle
    holdout = json.loads((out / "thresholds.json").read_text())["scores"]["holdout"]
    assert holdout[0]["minus first row"] == 0.0  # each stage is set beside the full pipeline
    for row in holdout:
        if row["gap closed"] is None:  # no defect in the held-out images: no gap to close
            assert row["gap closed, 95% low"] is None
        else:
            assert row["gap closed, 95% low"] <= row["gap closed, 95% high"]
        assert row["minus first row, 95% low"] <= row["minus first row"] <= row["minus first row, 95% high"]
    assert {
        "threshold_curves.png",
        "scores_by_setting.png",
        "classifier_roc.png",
        "learning_curves_0.png",
        "holdout_examples.png",
        "report.html",
        "thresholds.json",
    } <= {p.name for p in out.iterdir()}
