"""Threshold search speed and memory on synthetic OOF arrays of the full Kaggle train size.

12,568 images x 4 classes x 100 bins, realistic defect rates; searches every gating mode on the
default grid and prints seconds, peak RSS growth and the scores (all-empty, default, tuned).
Usage: ``python benchmarks/bench_threshold.py [--images 12568] [--cv]``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from scoring.rules import Rules
from tuning.threshold_search import OOF, SEARCH_MODES, Grid, run_search

DEFECT_RATE = (0.071, 0.021, 0.409, 0.065)


def synthetic_oof(n: int, bins: int = 100, seed: int = 0) -> OOF:
    """Histograms of a noisy segmenter: defects have high-probability pixels, clean pairs a few false ones."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, 4)) < np.asarray(DEFECT_RATE)
    area = np.where(present, rng.lognormal(8.0, 1.0, (n, 4)), 0).astype(np.int64).clip(0, 60000)
    centres = np.arange(bins)
    hist_pos = np.zeros((n, 4, bins), np.int32)
    hist_neg = np.zeros((n, 4, bins), np.int32)
    # truth pixels: probability mass high (beta-like) for detected defects, low for missed ones
    quality = rng.random((n, 4))
    peak_pos = np.where(quality > 0.2, rng.integers(55, 99, (n, 4)), rng.integers(5, 45, (n, 4)))
    peak_neg = np.where(rng.random((n, 4)) < 0.15, rng.integers(50, 95, (n, 4)), rng.integers(0, 20, (n, 4)))
    fp_area = (rng.lognormal(5.5, 1.3, (n, 4))).astype(np.int64).clip(0, 20000)
    total = 256 * 1600
    for c in range(4):
        w_pos = np.exp(-0.5 * ((centres[None] - peak_pos[:, c, None]) / 8.0) ** 2)
        w_pos /= w_pos.sum(1, keepdims=True)
        hist_pos[:, c] = np.floor(w_pos * area[:, c, None]).astype(np.int32)
        w_fp = np.exp(-0.5 * ((centres[None] - peak_neg[:, c, None]) / 6.0) ** 2)
        w_fp /= w_fp.sum(1, keepdims=True)
        fp = np.floor(w_fp * fp_area[:, c, None]).astype(np.int32)
        hist_neg[:, c] = fp
        hist_neg[:, c, 0] += total - hist_pos[:, c].sum(1) - fp.sum(1)
    max_prob = (np.maximum(np.where(hist_pos.sum(2) > 0, peak_pos, 0), peak_neg) + 1) / bins
    cls = np.clip(np.where(present, rng.beta(5, 2, (n, 4)), rng.beta(1.5, 6, (n, 4))), 0, 1)
    return OOF(
        np.array([f"{i:09d}.jpg" for i in range(n)]),
        np.arange(n) % 5,
        hist_pos,
        hist_neg,
        max_prob.astype(np.float64),
        cls,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12568)
    parser.add_argument(
        "--cv", action="store_true", help="also time the tune-on-other-folds estimate (5 more searches)"
    )
    args = parser.parse_args()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    oof = synthetic_oof(args.images)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grid = Grid.make(oof.bins)
    points = len(grid.k) * len(grid.min_area) * len(grid.label_threshold) * len(grid.classifier_threshold)
    start = time.perf_counter()
    out = run_search(oof, Rules(min_area=(600, 600, 1000, 2000)), grid, SEARCH_MODES, cv=args.cv)
    seconds = time.perf_counter() - start
    rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = out["summary"]
    print(
        f"OOF arrays: {args.images} images x 4 classes x {oof.bins} bins "
        f"({(oof.hist_pos.nbytes + oof.hist_neg.nbytes) / 2**20:.0f} MiB of histograms)"
    )
    print(
        f"grid per class and mode: {len(grid.k)} pixel x {len(grid.min_area)} area x {len(grid.label_threshold)} "
        f"label x {len(grid.classifier_threshold)} classifier thresholds = {points} points; "
        f"{len(SEARCH_MODES)} modes x 4 classes = {points * len(SEARCH_MODES) * 4 * args.images / 1e9:.1f} G "
        "image-evaluations brute force"
    )
    print(f"search time: {seconds:.2f} s{' (with 5-fold tune-on-other-folds)' if args.cv else ''}")
    print(
        f"peak RSS: {rss2 / 1024:.0f} MiB (data {(rss1 - rss0) / 1024:.0f} MiB, "
        f"search added {(rss2 - rss1) / 1024:.0f} MiB)"
    )
    print(
        f"scores: all-empty {s['baseline']:.4f}, default thresholds {s['default']:.4f}, "
        f"tuned ({s['best_mode']}) {s['tuned']:.4f}"
        + (f", tuned-on-other-folds {s['cross_validated']:.4f}" if args.cv else "")
    )
    for mode, r in s["modes"].items():
        print(f"  {mode:6s} {r['score']:.4f}")


if __name__ == "__main__":
    main()
