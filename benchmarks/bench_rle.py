"""Benchmark common.rle against the usual numpy formulations, measured in the same run.

Masks: every real mask in ../shared/data/severstal (or synthetic ones when that folder is absent), as
C-ordered uint8 arrays (the layout post-processing produces). Baselines: encode = transpose, flatten, pad,
diff, join (the Kaggle kernel code); decode = split, int array, one ``np.repeat`` of alternating 0/1 runs
(a vectorised decode), and the per-run slice-assignment loop of the Kaggle kernels for reference.
Targets: encode >= 5x, decode >= 2x the vectorised decode. Baseline and steelseg are timed alternately,
best of ``--repeat``, in CPU time of this process, so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.constants import IMAGE_SHAPE  # noqa: E402
from common.io import read_csv  # noqa: E402
from common.rle import decode, encode  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal" / "annotations" / "train_rle_partial.csv"


def baseline_encode(mask: np.ndarray) -> str:
    """Transpose, flatten, pad, diff (the usual Kaggle kernel code)."""
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def vectorised_decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Split, int array, one np.repeat of alternating 0-gaps and 1-runs, Fortran reshape (no validation)."""
    s = np.array(rle.split(), dtype=np.int64)
    starts, lengths = s[0::2] - 1, s[1::2]
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - (starts[:-1] + lengths[:-1])
    counts[1::2] = lengths
    counts[-1] = shape[0] * shape[1] - (starts[-1] + lengths[-1])
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(shape, order="F")


def loop_decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
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
        table = read_csv(REAL)
        rles = [row[table.header.index("EncodedPixels")] for row in table.rows]
        return rles[:limit] if limit else rles, f"real masks ({REAL})"
    from synthetic.generator import make_sample

    rng, rles = np.random.default_rng(0), []
    while len(rles) < (limit or 500):
        _, masks = make_sample(rng)
        rles += [encode(m) for m in masks.values()]
    return rles, "synthetic masks"


def once(fn, items) -> float:
    """CPU seconds of this process per item of one pass (CPU time, not wall time: on a shared machine other
    processes' load does not count; both sides run single-threaded)."""
    t0 = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - t0) / len(items)


def compare(base, ours, items, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` seconds per item of both functions, timed alternately."""
    best_base = best_ours = float("inf")
    for _ in range(repeat):
        best_base = min(best_base, once(base, items))
        best_ours = min(best_ours, once(ours, items))
    return best_base, best_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N masks")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rles, source = load_rles(args.limit)
    masks = [np.ascontiguousarray(decode(r)) for r in rles]  # C order, as model outputs are
    assert all(encode(m) == baseline_encode(m) for m in masks), "encode disagrees with the baseline"
    assert all(np.array_equal(decode(r), vectorised_decode(r)) for r in rles), "decode disagrees with the baseline"
    encode(masks[0]), decode(rles[0])  # build the lookup tables outside the timings
    empty = [np.zeros(IMAGE_SHAPE, np.uint8)] * 200
    rows = [
        ("encode", "transpose+diff+join", *compare(baseline_encode, encode, masks, args.repeat), 5.0),
        ("decode", "split+np.repeat", *compare(vectorised_decode, decode, rles, args.repeat), 2.0),
        ("decode", "per-run loop", *compare(loop_decode, decode, rles, args.repeat), None),
        ("encode (empty masks)", "transpose+diff+join", *compare(baseline_encode, encode, empty, args.repeat), None),
    ]
    print(f"{len(rles)} {source}, best of {args.repeat}, CPU time, baseline and steelseg timed alternately")
    print(f"{'':21s} {'baseline':20s} {'baseline ms':>11s} {'steelseg ms':>11s} {'speed-up':>9s} {'target':>10s}")
    for name, base_name, base, ours, target in rows:
        mark = "" if target is None else (f">={target:.0f}x " + ("ok" if base / ours >= target else "MISSED"))
        print(f"{name:21s} {base_name:20s} {base * 1e3:11.3f} {ours * 1e3:11.3f} {base / ours:8.1f}x {mark:>10s}")


if __name__ == "__main__":
    main()
