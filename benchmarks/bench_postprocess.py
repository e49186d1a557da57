"""CPU post-processing per image on one core: thresholds + components + min area (scoring.postprocess) + RLE.

Probability maps are made realistic from real masks (../shared/data/severstal, else synthetic ones): each true
mask becomes a blurred probability blob (peak 0.6-0.97), the other classes get low background noise, and a
third of the images get a faint false-positive blob (peak 0.3-0.6) in a random class. Rules: the 1st-place
post-processing (pixel 0.55, label 0.7/0.7/0.6/0.6, components < 150 px removed, min area 600/600/900/2000)
without a classifier; then the same with ``veto`` gating from a classifier that sees the true classes.
Baseline, measured in the same run: the bin-array formulation that ``postprocess`` used before
(``bin_index(p) >= k`` over the whole batch, then components and area on every mask). Both must give the same
masks. RLE encoding (``common.rle.encode``, owned elsewhere) is timed separately on the resulting masks.
Target: post-processing + RLE <= 1 ms per image (4 classes) on one core.
Usage: ``python benchmarks/bench_postprocess.py [--images 200] [--batch 8] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.constants import CLASS_IDS, IMAGE_SHAPE  # noqa: E402
from common.rle import decode, encode  # noqa: E402
from scoring.gating import pair_rules  # noqa: E402
from scoring.postprocess import finish_mask, postprocess, threshold_masks  # noqa: E402
from scoring.rules import Rules  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal" / "annotations" / "train_rle_partial.csv"
FIRST_PLACE = dict(
    pixel_threshold=0.55,
    label_threshold=(0.7, 0.7, 0.6, 0.6),
    min_component=150,
    min_area=(600, 600, 900, 2000),
    classifier_threshold=0.5,
)


def true_masks(n: int, seed: int) -> tuple[np.ndarray, str]:
    """(n, 4, H, W) uint8 masks of n images: real ones (clean images included, at their real share) when the
    shared data is there, else synthetic."""
    out = np.zeros((n, len(CLASS_IDS), *IMAGE_SHAPE), np.uint8)
    if REAL.is_file():
        rows = pd.read_csv(REAL)
        every = pd.read_csv(REAL.with_name(REAL.stem + "_image_ids.csv"))["ImageId"]
        images = every.sample(n=min(n, len(every)), random_state=seed).tolist()
        where = {image: i for i, image in enumerate(images)}
        for row in rows[rows["ImageId"].isin(where)].itertuples():
            out[where[row.ImageId], int(row.ClassId) - 1] = decode(row.EncodedPixels)
        clean = len(images) - rows.loc[rows["ImageId"].isin(where), "ImageId"].nunique()
        return out, f"real masks of {len(images)} images ({REAL.name}), {clean} of them clean"
    from synthetic.generator import make_sample

    rng = np.random.default_rng(seed)
    for i in range(n):
        for c, mask in make_sample(rng)[1].items():
            out[i, int(c) - 1] = mask
    return out, "synthetic masks"


def probability_maps(masks: np.ndarray, seed: int) -> np.ndarray:
    """float32 maps like a trained segmenter's: blurred true masks, faint noise, some false-positive blobs."""
    rng = np.random.default_rng(seed)
    prob = rng.beta(0.5, 30.0, masks.shape).astype(np.float32)  # mostly < 0.05
    for i, c in zip(*np.nonzero(masks.reshape(*masks.shape[:2], -1).any(-1))):
        blob = cv2.GaussianBlur(masks[i, c].astype(np.float32), (0, 0), 6.0)
        prob[i, c] = np.maximum(prob[i, c], blob * rng.uniform(0.6, 0.97))
    for i in np.flatnonzero(rng.random(len(masks)) < 1 / 3):
        c, y, x = rng.integers(0, 4), rng.integers(20, 236), rng.integers(50, 1550)
        fake = np.zeros(IMAGE_SHAPE, np.float32)
        cv2.ellipse(fake, (int(x), int(y)), (int(rng.integers(10, 60)), int(rng.integers(5, 30))), 0, 0, 360, 1.0, -1)
        prob[i, c] = np.maximum(prob[i, c], cv2.GaussianBlur(fake, (0, 0), 5.0) * rng.uniform(0.3, 0.6))
    return prob


def baseline(prob: np.ndarray, cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray:
    """The bin-array formulation: every pixel's bin compared with k, then components and area on every mask."""
    pairs = pair_rules(rules, prob.reshape(*prob.shape[:2], -1).max(-1), cls_prob)
    masks = threshold_masks(prob, pairs, rules.bins)
    for j, c in np.ndindex(*masks.shape[:2]):
        mask = masks[j, c]
        if mask.any() and rules.min_component[c] > 1:
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            keep = stats[:, cv2.CC_STAT_AREA] >= rules.min_component[c]
            keep[0] = False
            mask[...] = keep[labels]
        if np.count_nonzero(mask) < pairs.min_area[j, c]:
            mask[...] = 0
    return masks


def per_image(fn, batches: list, n: int, repeat: int) -> float:
    """Best-of-``repeat`` CPU seconds (this process, one thread) per image of ``fn(*batch)`` over all batches
    of ``n`` images: CPU time, not wall time, so that other work on a shared machine does not count."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for batch in batches:
            fn(*batch)
        best = min(best, time.process_time() - start)
    return best / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="images per postprocess call (the inference batch)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one thread: NumPy's kernels here are single-threaded already
    truth, source = true_masks(args.images, args.seed)
    prob = probability_maps(truth, args.seed)
    present = truth.reshape(*truth.shape[:2], -1).any(-1)
    cls_prob = np.where(present, 0.9, 0.1)
    print(
        f"{args.images} images ({source}), batches of {args.batch}, one thread, best of {args.repeat} in CPU time; "
        "machine shared"
    )
    print("CPU: post-processing of float32 maps on the CPU (max, thresholds, components, areas) + RLE;")
    print("GPU: what stays on the CPU when the GPU thresholds (components + areas of the pairs it hands over) + RLE")
    print(
        f"{'rules':30s} {'baseline':>9s} {'ours':>7s} {'speed-up':>8s} {'RLE':>6s} {'CPU total':>9s} "
        f"{'GPU: finish':>11s} {'GPU total':>9s}   (ms per image; target <= 1 ms)"
    )
    for label, rules, cls in (
        ("1st place, no classifier", Rules(**FIRST_PLACE, gating="none"), None),
        ("1st place, veto (classifier)", Rules(**FIRST_PLACE, gating="veto"), cls_prob),
    ):
        batches = [
            (prob[i : i + args.batch], None if cls is None else cls[i : i + args.batch], rules)
            for i in range(0, args.images, args.batch)
        ]
        ours = np.concatenate([postprocess(*b) for b in batches])
        assert np.array_equal(ours, np.concatenate([baseline(*b) for b in batches])), "postprocess != baseline"
        # The GPU hands over the gated, thresholded masks; the CPU removes components and applies the areas.
        bare = replace(rules, min_component=(0,) * 4, min_area=(0,) * 4)
        handed = np.concatenate([postprocess(p, c, bare) for p, c, _ in batches])
        pairs = pair_rules(rules, prob.reshape(*prob.shape[:2], -1).max(-1), cls)
        todo = [
            (handed[j, c], rules.min_component[c], pairs.min_area[j, c])
            for j, c in zip(*np.nonzero(handed.reshape(*handed.shape[:2], -1).any(-1)))
        ]
        finish_s = per_image(
            lambda *items: [finish_mask(m.copy(), *rest) for m, *rest in items], [todo], args.images, args.repeat
        )
        base_s = per_image(baseline, batches, args.images, args.repeat)
        ours_s = per_image(postprocess, batches, args.images, args.repeat)
        masks = list(ours.reshape(-1, *IMAGE_SHAPE))
        rle_s = per_image(
            lambda *image: [encode(m) for m in image],
            [masks[i : i + 4] for i in range(0, len(masks), 4)],
            args.images,
            args.repeat,
        )
        print(
            f"{label:30s} {base_s * 1e3:9.3f} {ours_s * 1e3:7.3f} {base_s / ours_s:7.1f}x {rle_s * 1e3:6.3f} "
            f"{(ours_s + rle_s) * 1e3:9.3f} {finish_s * 1e3:11.3f} {(finish_s + rle_s) * 1e3:9.3f}"
        )
    print(
        f"({int(ours.reshape(-1, np.prod(IMAGE_SHAPE)).any(-1).sum())} of {ours.shape[0] * 4} masks non-empty "
        "after post-processing with veto)"
    )


if __name__ == "__main__":
    main()
