"""CPU training throughput of a recipe's model: memory layout, threads, folds side by side, bf16 autocast.

Each variant trains the recipe's network (composed from ``configs/``, e.g. ``experiment=joint/demo``) on random
batches of the recipe's crop size and batch size (AdamW, BCE on both heads) in a fresh process started with the
fast allocator variables, and prints images/s over the same wall-clock window, with ratios against the old
engine's CPU setting (NCHW, one process on every core) measured in the same run:

1. NCHW, one process, every core (the baseline);
2. channels_last, one process, every core;
3. channels_last, ``--jobs`` processes side by side (one per fold), cores / jobs threads each: images/s summed;
4. channels_last + bf16 autocast, one process, every core (informative: the gain depends on the CPU's bf16 support).

Usage: ``python benchmarks/bench_train_cpu.py [--seconds 20] [--jobs 2] [overrides ...]``; about 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}
# the config node of each stage (configs/stage/*.yaml _target_ -> the node that holds model, crop, preprocess)
STAGE_NODES = {"segmenter.joint": "joint", "segmenter.stage": "segmenter", "classifier.stage": "classifier"}


def worker(overrides: list[str], layout: str, threads: int, seconds: float, bf16: bool) -> None:
    """Train the composed recipe's model for ``seconds`` (after a warm-up) and print images/s."""
    import torch
    from hydra import compose, initialize_config_dir

    from common.config import build, to_plain

    torch.set_num_threads(threads)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    target = str(cfg.stage._target_)
    name = next(node for prefix, node in STAGE_NODES.items() if target.startswith(prefix))
    node = cfg[name]
    model = build(to_plain(node.model), f"{name}.model")
    crop = node.get("crop") or node.preprocess.size
    batch = int(cfg.trainer.batch_size)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, int(crop[0]), int(crop[1]))
    y = (torch.rand(batch, 4, int(crop[0]), int(crop[1])) > 0.9).float()
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        masks, labels = out if isinstance(out, tuple) else (out, None) if out.ndim == 4 else (None, out)
        loss = sum(bce(m.float(), t) for m, t in ((masks, y), (labels, y.amax(dim=(2, 3)))) if m is not None)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    print(f"{steps * batch / (time.perf_counter() - start):.2f}", flush=True)


def measure(
    overrides: list[str], layout: str, threads: int, seconds: float, jobs: int = 1, bf16: bool = False
) -> float:
    """Images/s summed over ``jobs`` worker processes started together."""
    env = dict(os.environ, **FAST, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, __file__, "--worker", layout, str(threads), str(seconds), str(int(bf16)), *overrides]
    procs = [
        subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(jobs)
    ]
    total = 0.0
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed ({proc.returncode}):\n{err[-3000:]}")
        total += float(out.strip().splitlines()[-1])
    return total


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        layout, threads, seconds, bf16, *overrides = argv[1:]
        worker(overrides, layout, int(threads), float(seconds), bool(int(bf16)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed window per variant")
    parser.add_argument("--jobs", type=int, default=2, help="processes side by side (folds)")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=["experiment=joint/demo"],
        help="train.py overrides that name the recipe (default: experiment=joint/demo)",
    )
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    per_job = max(1, cores // args.jobs)
    print(f"recipe: {' '.join(args.overrides)}; {cores} cores; {args.seconds:.0f} s per variant")
    base = measure(args.overrides, "nchw", cores, args.seconds)
    rows = [
        (f"NCHW, 1 process x {cores} threads (baseline)", base),
        (f"channels_last, 1 process x {cores} threads", measure(args.overrides, "channels_last", cores, args.seconds)),
        (
            f"channels_last, {args.jobs} processes x {per_job} thread(s), summed",
            measure(args.overrides, "channels_last", per_job, args.seconds, jobs=args.jobs),
        ),
        (
            f"channels_last + bf16 autocast, 1 process x {cores} threads",
            measure(args.overrides, "channels_last", cores, args.seconds, bf16=True),
        ),
    ]
    for name, rate in rows:
        print(f"  {name:<58} {rate:8.1f} img/s   {rate / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
