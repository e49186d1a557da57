"""Can the CPU follow a line camera? The CPU tail of GPU inference at >= 1,000 images/s, with the background writer.

When the GPU thresholds (``scoring.postprocess`` on device tensors), what is left per image on the CPU is: the
copy of the gated masks from the device (here a copy of the handed-over uint8 masks), components and min areas
of the pairs the GPU handed over (``finish_mask``, on the loop's thread, as ``iter_batch_results`` does), then RLE
and the CSV row (``rows_of`` + ``open_submission``'s writer, on ``drain_in_background``'s writer thread, as
``infer.py`` does). The masks are the 1st-place rules with ``veto`` gating applied to probability maps made from
real masks (``bench_postprocess.probability_maps``), cycled up to ``--images``.

Rows, wall time, one run (the machine's load is printed; figures on a shared machine are lower bounds):
* loop thread alone (copy + finish), writer alone (RLE + CSV), both on one thread one after the other (the
  baseline, what the tail costs without the writer thread), and both through ``drain_in_background``.
Target: the pipelined rate >= 1,000 images/s.
Usage: ``python benchmarks/bench_tail.py [--images 4000] [--distinct 200] [--batch 16] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_postprocess import FIRST_PLACE, probability_maps, true_masks  # noqa: E402
from common.submission import open_submission  # noqa: E402
from ensemble.core import rows_of  # noqa: E402
from ensemble.pipeline import drain_in_background  # noqa: E402
from scoring.gating import pair_rules  # noqa: E402
from scoring.postprocess import finish_mask, postprocess  # noqa: E402
from scoring.rules import Rules  # noqa: E402

TARGET = 1000.0


def handed_batches(n_distinct: int, batch: int, seed: int):
    """[(masks (B, 4, H, W) uint8 as the GPU hands them over, [(j, c, min_component, min_area)] to finish)]."""
    truth, source = true_masks(n_distinct, seed)
    prob = probability_maps(truth, seed)
    present = truth.reshape(*truth.shape[:2], -1).any(-1)
    rules = Rules(**FIRST_PLACE, gating="veto")
    bare = replace(rules, min_component=(0,) * 4, min_area=(0,) * 4)  # the GPU's part: gate + thresholds
    out = []
    for i in range(0, n_distinct, batch):
        p, cls = prob[i : i + batch], np.where(present[i : i + batch], 0.9, 0.1)
        masks = postprocess(p, cls, bare)
        pairs = pair_rules(rules, p.reshape(*p.shape[:2], -1).max(-1), cls)
        todo = [
            (int(j), int(c), rules.min_component[c], float(pairs.min_area[j, c]))
            for j, c in zip(*np.nonzero(masks.reshape(*masks.shape[:2], -1).any(-1)))
        ]
        out.append((masks, todo))
    return out, source


def produce(batches, n_images: int):
    """Yield (image id, None, finished masks) for ``n_images`` images, cycling the batches: the loop thread's share."""
    done = 0
    while done < n_images:
        for masks, todo in batches:
            local = masks.copy()  # what the device-to-host copy produces
            for j, c, min_component, min_area in todo:
                finish_mask(local[j, c], min_component, min_area)
            for j in range(len(local)):
                if done == n_images:
                    return
                yield f"{done:08d}.jpg", None, local[j]
                done += 1


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--distinct", type=int, default=200, help="distinct images, cycled up to --images")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    batches, source = handed_batches(args.distinct, args.batch, args.seed)
    n = args.images
    ids = [f"{i:08d}.jpg" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "submission.csv"

        written = [0]

        def write(handle_all):
            with open_submission(csv, ids) as writer:
                handle_all(lambda item: writer.write_rows(rows_of(item[0], item[2])))
            written[0] = writer.masks

        items = list(produce(batches, min(n, args.distinct)))  # the writer alone: finished masks, cycled
        cycled = [(ids[i], None, items[i % len(items)][2]) for i in range(n)]
        rows = {
            "loop thread alone (copy + components + areas)": lambda: sum(1 for _ in produce(batches, n)),
            "writer alone (RLE + CSV)": lambda: write(lambda h: [h(item) for item in cycled]),
            "both on one thread (baseline)": lambda: write(lambda h: [h(item) for item in produce(batches, n)]),
            "both, writer on drain_in_background": lambda: write(lambda h: drain_in_background(produce(batches, n), h)),
        }
        best = {name: min(timed(fn) for _ in range(args.repeat)) for name, fn in rows.items()}
        masks = written[0]
    print(
        f"{n} images ({args.distinct} distinct: {source}), batches of {args.batch}, 1st-place rules + veto, "
        f"{masks} masks written; best of {args.repeat}, wall time; {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f} (shared machine)"
    )
    base = best["both on one thread (baseline)"]
    for name, seconds in best.items():
        print(
            f"  {name:45s} {n / seconds:8.0f} images/s  {1e3 * seconds / n:6.3f} ms per image  "
            f"{base / seconds:4.2f}x baseline"
        )
    rate = n / best["both, writer on drain_in_background"]
    print(f"pipelined CPU tail {rate:.0f} images/s (target >= {TARGET:.0f}: {'met' if rate >= TARGET else 'not met'})")


if __name__ == "__main__":
    main()
