"""The Kaggle metric: hand-computed cases, a per-pair reference, the CLI and folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.folds import make_folds, read_folds, split_ids, write_folds
from common.metrics import (
    bootstrap_gap_interval,
    dice,
    dice_from_counts,
    dice_rle,
    kaggle_score,
    main,
    paired_difference,
    score_pairs,
    with_interval,
)
from common.rle import encode


def rows(*items):
    return pd.DataFrame(items, columns=["ImageId", "ClassId", "EncodedPixels"])


def test_dice_hand_cases():
    a = np.zeros((4, 4), np.uint8)
    a[0, :2] = 1  # 2 pixels
    b = np.zeros((4, 4), np.uint8)
    b[0, 1:4] = 1  # 3 pixels, 1 shared
    assert dice(a, b) == pytest.approx(2 * 1 / 5)
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert dice(a, np.zeros((4, 4))) == 0.0
    assert dice_rle("", None) == 1.0 and dice_rle("1 5", "") == 0.0
    assert dice_rle("1 10", "6 10") == pytest.approx(2 * 5 / 20)
    np.testing.assert_allclose(dice_from_counts([1, 0, 0], [2, 0, 3], [3, 0, 0]), [0.4, 1.0, 0.0])


def test_kaggle_score_by_hand():
    ids = ["x.jpg", "y.jpg"]
    truth = rows(("x.jpg", 1, "1 10"), ("y.jpg", 3, "100 20"))
    pred = rows(("x.jpg", 1, "6 10"), ("y.jpg", 4, "1 5"))
    report = kaggle_score(pred, truth, ids)
    # 8 pairs: x/1 = 0.5, y/3 = 0 (missed), y/4 = 0 (false positive), 5 empty-empty pairs = 1
    assert report.overall == pytest.approx((0.5 + 5) / 8)
    assert report.per_class == pytest.approx({1: 0.75, 2: 1.0, 3: 0.5, 4: 0.5})
    assert report.baseline == pytest.approx(6 / 8)
    assert report.baseline_per_class == pytest.approx({1: 0.5, 2: 1.0, 3: 0.5, 4: 1.0})
    assert "overall" in report.format() and "all-empty" in report.format()
    empty = kaggle_score(rows(), truth, ids)
    assert empty.overall == pytest.approx(empty.baseline)


def _pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(Dice, truth-empty) of n images: about half the pairs hold a defect, found with Dice ~0.7."""
    rng = np.random.default_rng(seed)
    empty = rng.random((n, 4)) < 0.5
    return np.where(empty, 1.0, rng.uniform(0.4, 1.0, (n, 4))), empty


def test_gap_interval_holds_the_estimate_narrows_with_more_images_and_is_deterministic():
    values, empty = _pairs(100, 0)
    report = score_pairs(values, empty, 100)
    low, high = bootstrap_gap_interval(values, empty)
    assert low < report.gap_closed < high
    assert (low, high) == bootstrap_gap_interval(values, empty)  # seeded: the same figures every run
    big_low, big_high = bootstrap_gap_interval(np.tile(values, (16, 1)), np.tile(empty, (16, 1)))
    assert big_high - big_low < 0.5 * (high - low)  # 16x the images: about 1/4 the width
    assert (
        bootstrap_gap_interval(values, empty, level=0.5)[1] - bootstrap_gap_interval(values, empty, level=0.5)[0]
        < high - low
    )
    # Only defect-free images: there is no gap to close, hence no interval.
    assert all(np.isnan(bootstrap_gap_interval(np.ones((5, 4)), np.ones((5, 4), bool))))
    with pytest.raises(ValueError, match="at least 2 images"):
        bootstrap_gap_interval(values[:1], empty[:1])


def test_report_prints_and_exports_the_interval():
    values, empty = _pairs(50, 1)
    report = with_interval(score_pairs(values, empty, 50), values, empty)
    assert report.gap_interval is not None and "95% interval of the gap closed" in report.format()
    row = report.to_dict()
    assert row["gap_closed_low"] < row["gap_closed"] < row["gap_closed_high"]
    single = with_interval(score_pairs(values[:1], empty[:1], 1), values[:1], empty[:1])
    assert single.gap_interval is None and "95%" not in single.format()


def test_paired_difference_tells_a_real_gain_from_luck():
    values, _ = _pairs(100, 2)
    assert paired_difference(values, values) == (0.0, 0.0, 0.0)
    better = np.minimum(values + 0.05, 1.0)  # the same images, each a bit better
    diff, low, high = paired_difference(better, values)
    assert 0 < low <= diff <= high
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.1, values.shape)
    diff, low, high = paired_difference(values + noise - noise.mean(), values)  # no systematic change, only noise
    assert low < 0 < high and diff == pytest.approx(0.0, abs=1e-12)


def test_kaggle_score_matches_per_pair_reference():
    rng = np.random.default_rng(0)
    ids = [f"{i}.jpg" for i in range(12)]
    shape = (256, 1600)
    truth, pred, ref = [], [], []
    for image_id in ids:
        for c in (1, 2, 3, 4):
            t = np.zeros(shape, np.uint8)
            p = np.zeros(shape, np.uint8)
            if rng.random() < 0.4:
                r0, c0 = rng.integers(0, 200), rng.integers(0, 1500)
                t[r0 : r0 + 50, c0 : c0 + 90] = 1
            if rng.random() < 0.4:
                r0, c0 = rng.integers(0, 200), rng.integers(0, 1500)
                p[r0 : r0 + 40, c0 : c0 + 100] = 1
            inter, total = int((t & p).sum()), int(t.sum() + p.sum())
            ref.append(1.0 if total == 0 else 2 * inter / total)
            if t.any():
                truth.append((image_id, c, encode(t)))
            if p.any():
                pred.append((image_id, c, encode(p)))
    report = kaggle_score(rows(*pred), rows(*truth), ids)
    assert report.overall == pytest.approx(np.mean(ref))


def test_cli_scores_a_submission(tmp_path: Path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("x.jpg", "y.jpg"):
        (images / name).write_bytes(b"")
    (tmp_path / "truth.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 10\n")
    (tmp_path / "sub.csv").write_text(
        "ImageId_ClassId,EncodedPixels\n"
        + "".join(
            f"{i}_{c},{'1 10' if (i, c) == ('x.jpg', 1) else ''}\n" for i in ("x.jpg", "y.jpg") for c in (1, 2, 3, 4)
        )
    )
    assert main([str(tmp_path / "sub.csv"), "--truth", str(tmp_path / "truth.csv"), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "overall   1.00000    0.87500" in out
    assert "95% interval of the gap closed, images resampled (2 images): 100.0% to 100.0%" in out
    (tmp_path / "short.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 10\n")
    assert main([str(tmp_path / "short.csv"), "--truth", str(tmp_path / "truth.csv"), "--images", str(images)]) == 2
    assert "1 images" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text(
        "ImageId_ClassId,EncodedPixels\n" + "".join(f"{i}_{c},\n" for i in ("x.jpg", "y.jpg") for c in (1, 2, 3, 4))
    )
    assert (
        main(
            [
                str(tmp_path / "sub.csv"),
                "--truth",
                str(tmp_path / "truth.csv"),
                "--images",
                str(images),
                "--versus",
                str(tmp_path / "empty.csv"),
            ]
        )
        == 0
    )
    assert (
        f"versus {tmp_path / 'empty.csv'}: +0.1250 (95% paired interval over images: +0.0000 to +0.2500; holds 0"
        in capsys.readouterr().out
    )
    assert (
        main(
            [
                str(tmp_path / "sub.csv"),
                "--truth",
                str(tmp_path / "truth.csv"),
                "--images",
                str(images),
                "--versus",
                str(tmp_path / "short.csv"),
            ]
        )
        == 2
    )


def test_folds_are_stratified_deterministic_and_complete(tmp_path: Path):
    rng = np.random.default_rng(1)
    n = 400
    flags = (rng.random((n, 4)) < [0.07, 0.03, 0.4, 0.07]).astype(int)
    labels = pd.DataFrame(
        flags, index=pd.Index([f"{i:05d}.jpg" for i in range(n)], name="ImageId"), columns=[1, 2, 3, 4]
    )
    folds = make_folds(labels, n_splits=5, seed=3)
    assert folds.equals(make_folds(labels, n_splits=5, seed=3))
    assert not folds.equals(make_folds(labels, n_splits=5, seed=4))
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    per_fold = labels.assign(fold=folds["fold"].to_numpy()).groupby("fold")[3].sum()
    assert per_fold.max() - per_fold.min() <= 3  # class 3 spread evenly
    path = write_folds(folds, tmp_path / "folds.csv")
    back = read_folds(path, labels.index.tolist())
    train, val = split_ids(back, 2)
    assert set(train).isdisjoint(val) and len(train) + len(val) == n


@pytest.mark.real_data
def test_all_empty_baseline_on_real_labels(real_data: Path):
    ids = pd.read_csv(real_data / "annotations" / "train_rle_partial_image_ids.csv")["ImageId"].tolist()
    from common.annotations import read_annotations

    truth = read_annotations(real_data / "annotations" / "train_rle_partial.csv").rows
    report = kaggle_score(rows(), truth, ids)
    assert report.overall == pytest.approx(1 - 1943 / (4 * len(ids)))
    assert 0.84 < report.overall < 0.88  # the known ~0.86 of an all-empty submission
