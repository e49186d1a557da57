"""common.oof: the histogram OOF scores exactly like common.metrics on decoded masks; files round-trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.constants import IMAGE_SHAPE
from common.metrics import kaggle_score
from common.oof import OOFAccumulator, OOFError, SegmenterOOF, binarize, histograms, image_histograms, score, score_grid
from common.oof import read_segmenter_oof as read_oof
from common.oof import write_segmenter_oof as write_oof
from common.rle import encode
from segmenter.metrics import SegmenterMetric, threshold_bin

BINS = 100


def _fake_predictions(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Full-size truth masks (some pairs empty) and float32 probabilities that partly agree with them."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_SHAPE
    truth = np.zeros((n, 4, h, w), np.uint8)
    for i in range(n):
        for c in range(4):
            if rng.random() < 0.5:
                y, x = rng.integers(0, h - 60), rng.integers(0, w - 300)
                truth[i, c, y : y + rng.integers(10, 60), x : x + rng.integers(20, 300)] = 1
    # Coarse random field upsampled (blobs of all sizes) plus a push towards the truth.
    coarse = rng.random((n, 4, h // 32, w // 32)).astype(np.float32)
    field = np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)
    probs = np.clip(0.55 * field + 0.45 * truth + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)
    return [f"img{i:02d}.jpg" for i in range(n)], probs, truth


def _rows(image_ids, masks) -> pd.DataFrame:
    rows = [(iid, c + 1, encode(masks[i, c])) for i, iid in enumerate(image_ids) for c in range(4)]
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])


@pytest.fixture(scope="module")
def predictions():
    ids, probs, truth = _fake_predictions(5)
    acc = OOFAccumulator(fold=2, bins=BINS)
    for i, iid in enumerate(ids):
        acc.add_image(iid, probs[i], truth[i])
    return ids, probs, truth, acc.result()


@pytest.mark.parametrize(
    "k, min_area", [(50, [0, 0, 0, 0]), (35, [600, 600, 1000, 2000]), ([70, 20, 55, 90], [0, 3000, 100, 50])]
)
def test_histogram_score_equals_metric_on_decoded_masks(predictions, k, min_area):
    ids, probs, truth, oof = predictions
    ks = np.broadcast_to(k, (4,))
    pred = np.stack([binarize(probs[:, c], ks[c], BINS) for c in range(4)], axis=1)
    areas = pred.sum(axis=(2, 3))
    pred[areas < np.asarray(min_area)] = 0  # whole mask dropped below the min area
    expected = kaggle_score(_rows(ids, pred), _rows(ids, truth), ids)
    got = score(oof, k, min_area)
    assert got.overall == expected.overall
    assert got.per_class == expected.per_class and got.baseline == expected.baseline
    assert expected.baseline < 1.0 and expected.overall not in (0.0, 1.0)


def test_gate_and_label_threshold_drop_whole_pairs(predictions):
    ids, probs, truth, oof = predictions
    gate = np.random.default_rng(1).random((len(ids), 4)) > 0.3
    label_t = 0.97
    pred = binarize(probs, 40, BINS)
    pred[~gate | (probs.max(axis=(2, 3)) < label_t)] = 0
    expected = kaggle_score(_rows(ids, pred), _rows(ids, truth), ids)
    assert score(oof, 40, 0, gate=gate, label_threshold=label_t).overall == expected.overall


def test_score_grid_matches_score_at_every_point(predictions):
    *_, oof = predictions
    areas = [0, 500, 5000]
    grid = score_grid(oof, areas)
    assert grid.shape == (4, BINS, 3)
    for k in (1, 33, 50, 99):
        for j, m in enumerate(areas):
            report = score(oof, k, m)
            np.testing.assert_allclose(grid[:, k, j], [report.per_class[c] for c in (1, 2, 3, 4)], rtol=0, atol=1e-12)


def test_torch_batch_histograms_equal_numpy(predictions):
    ids, probs, truth, oof = predictions
    pos, neg, top = histograms(torch.from_numpy(probs[:2]), torch.from_numpy(truth[:2]).float(), BINS)
    np.testing.assert_array_equal(pos.numpy(), oof.hist_pos[:2])
    np.testing.assert_array_equal(neg.numpy(), oof.hist_neg[:2])
    np.testing.assert_array_equal(top.numpy(), oof.max_prob[:2])


def test_validation_metric_reports_score_and_baseline(predictions):
    ids, probs, truth, oof = predictions
    metric = SegmenterMetric(0.5, [0, 0, 0, 0])
    logits = torch.logit(torch.from_numpy(probs[:3]).double().clamp(1e-6, 1 - 1e-6)).float()
    metric.update(logits, {"target": torch.from_numpy(truth[:3]).float()})
    out = metric.compute(metric.state())
    assert {"kaggle", "kaggle_baseline", "kaggle_gain", "kaggle_best_grid", "kaggle_1"} <= set(out)
    assert out["kaggle_best_grid"] >= out["kaggle"] - 1e-12
    with pytest.raises(ValueError, match="multiple of 1/100"):
        threshold_bin(0.505)


def test_write_read_round_trip_and_concat(tmp_path, predictions):
    *_, oof = predictions
    path = write_oof(tmp_path / "oof_segmenter.npz", oof)
    back = read_oof(path)
    for key in ("image_ids", "fold", "bin_edges", "hist_pos", "hist_neg", "max_prob"):
        np.testing.assert_array_equal(getattr(back, key), getattr(oof, key))
    assert back.hist_pos.dtype == np.int32 and back.max_prob.dtype == np.float32 and back.bin_edges.dtype == np.float64
    assert back.image_ids.tolist() == oof.image_ids.tolist() and back.bins == BINS
    other = SegmenterOOF(
        np.array(["x.jpg"]), np.array([3]), oof.bin_edges, oof.hist_pos[:1], oof.hist_neg[:1], oof.max_prob[:1]
    )
    joined = SegmenterOOF.concat([back, other])
    assert len(joined) == len(oof) + 1 and joined.fold.tolist()[-1] == 3
    with pytest.raises(OOFError, match="duplicate"):
        SegmenterOOF.concat([back, back])


def test_bad_oof_files_are_named(tmp_path, predictions):
    *_, oof = predictions
    with pytest.raises(OOFError, match="not found"):
        read_oof(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", image_ids=oof.image_ids)
    with pytest.raises(OOFError, match=r"bad\.npz: missing arrays"):
        read_oof(tmp_path / "bad.npz")
    broken = SegmenterOOF(oof.image_ids, oof.fold, oof.bin_edges, oof.hist_pos, oof.hist_neg[:, :, :50], oof.max_prob)
    with pytest.raises(OOFError, match="hist_neg"):
        broken.validate("x")
    with pytest.raises(OOFError):
        image_histograms(np.zeros((4, 8, 8), np.float32), np.zeros((3, 8, 8), np.uint8))
