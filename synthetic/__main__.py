"""``python -m synthetic --out DIR --train N --test M --seed S [--shapes-from CSV]``: write a synthetic dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.constants import CLASS_IDS
from common.errors import command
from synthetic.generator import generate_dataset, read_metadata


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Generate a dataset and print a one-line summary; input errors exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m synthetic", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (created; a previous synthetic dataset there is replaced)",
    )
    parser.add_argument("--train", type=int, default=200, help="number of train images (default 200)")
    parser.add_argument("--test", type=int, default=50, help="number of test images (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--shapes-from",
        type=Path,
        default=None,
        help="Kaggle train CSV (either format) whose real masks replace the drawn shapes",
    )
    args = parser.parse_args(argv)
    out = generate_dataset(args.out, args.train, args.test, args.seed, args.shapes_from)
    per = read_metadata(out)["images_per_class"]
    train = " ".join(f"c{k}={per['train'][str(k)]}" for k in CLASS_IDS)
    test = " ".join(f"c{k}={per['test'][str(k)]}" for k in CLASS_IDS)
    print(
        f"synthetic dataset: {args.train} train ({train} clean={per['train']['none']}), "
        f"{args.test} test ({test} clean={per['test']['none']}), seed {args.seed} -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
