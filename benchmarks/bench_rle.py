"""Benchmark common.rle against the straightforward numpy formulation, measured in the same run.

Masks: every real mask in ../shared/data/severstal (or synthetic ones when that folder is absent).
Prints per-mask times and speed ratios. Targets: encode >= 5x, decode >= 2x the baseline.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.constants import IMAGE_SHAPE
from common.rle import decode, encode  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal" / "annotations" / "train_rle_partial.csv"


def baseline_encode(mask: np.ndarray) -> str:
    """Transpose, flatten, pad, diff (the usual Kaggle kernel code)."""
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def baseline_decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Split, slice-assign each run, reshape in Fortran order (the usual Kaggle kernel code)."""
    s = rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0::2], s[1::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


def load_rles(limit: int | None) -> tuple[list[str], str]:
    """Real RLEs when available, else masks from the synthetic generator."""
    if REAL.is_file():
        rles = pd.read_csv(REAL)["EncodedPixels"].tolist()
        return rles[:limit] if limit else rles, f"real masks ({REAL})"
    from synthetic.generator import make_sample

    rng, rles = np.random.default_rng(0), []
    while len(rles) < (limit or 500):
        _, masks = make_sample(rng)
        rles += [encode(m) for m in masks.values()]
    return rles, "synthetic masks"


def timeit(fn, items, repeat: int) -> float:
    """Best-of-``repeat`` seconds per item."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return best / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N masks")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rles, source = load_rles(args.limit)
    masks = [np.ascontiguousarray(decode(r)) for r in rles]  # C order, as model outputs are
    assert all(encode(m) == baseline_encode(m) for m in masks), "encode disagrees with the baseline"
    assert all(np.array_equal(decode(r), baseline_decode(r)) for r in rles), "decode disagrees with the baseline"
    empty = [np.zeros(IMAGE_SHAPE, np.uint8)] * 200
    rows = [
        ("encode", timeit(baseline_encode, masks, args.repeat), timeit(encode, masks, args.repeat), 5.0),
        ("decode", timeit(baseline_decode, rles, args.repeat), timeit(decode, rles, args.repeat), 2.0),
        ("encode (empty masks)", timeit(baseline_encode, empty, args.repeat), timeit(encode, empty, args.repeat), None),
    ]
    print(f"{len(rles)} {source}, best of {args.repeat}")
    print(f"{'':22s} {'baseline ms':>12s} {'steelseg ms':>12s} {'speed-up':>9s} {'target':>7s}")
    for name, base, ours, target in rows:
        mark = "" if target is None else (f">={target:.0f}x " + ("ok" if base / ours >= target else "MISSED"))
        print(f"{name:22s} {base * 1e3:12.3f} {ours * 1e3:12.3f} {base / ours:8.1f}x {mark}")


if __name__ == "__main__":
    main()
