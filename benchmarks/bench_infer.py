"""CPU inference benchmark: plain ``python infer.py`` against a bare forward loop, gating skips, memory.

1. Throughput ratio (real 256x1600 input, small real models: timm resnet10t classifier + smp Unet
   resnet18 segmenter, TTA none+hflip, gating none): images/s of ``python infer.py`` started with NO
   allocator variables (it must re-exec itself) / images/s of a bare ``inference_mode`` forward loop of
   the same models x TTA run with the fast allocator variables, channels_last and all cores.
2. Share of segmenter passes skipped by gating (veto) in that infer run's configuration.
3. Peak RSS of ``python infer.py`` on 50 vs 500 images (tiny models, full-size input): streaming means
   the two should be within 10 %.
Usage: ``python benchmarks/bench_infer.py [--images 24] [--keep DIR]``; takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from common.config import build
from engine.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
PRE = {"channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SMALL = {
    "classifier": {"_target_": "timm.create_model", "model_name": "resnet10t", "pretrained": False, "num_classes": 4},
    "segmenter": {
        "_target_": "segmentation_models_pytorch.create_model",
        "arch": "unet",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "classes": 4,
    },
}
TINY = {
    "classifier": {"_target_": "timm.create_model", "model_name": "test_resnet", "pretrained": False, "num_classes": 4},
    "segmenter": {
        "_target_": "segmentation_models_pytorch.create_model",
        "arch": "unet",
        "encoder_name": "tu-test_resnet",
        "encoder_weights": None,
        "classes": 4,
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
    },
}

BARE = r"""
import sys, time, numpy as np, torch
from pathlib import Path
from common.images import read_image
from engine.checkpoint import load_model
torch.set_num_threads(int(sys.argv[3]))
cls, _ = load_model(sys.argv[1], "classifier"); seg, _ = load_model(sys.argv[2], "segmenter")
cls, seg = (m.to(memory_format=torch.channels_last) for m in (cls, seg))
batch = 4
# the same image files as the infer run, decoded and normalised before the clock starts
files = sorted(Path(sys.argv[4]).iterdir())
images = np.stack([read_image(f, channels=3) for f in files]).astype(np.float32) / 255  # the one decode rule
mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
data = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
batches = [data[i:i + batch].contiguous(memory_format=torch.channels_last) for i in range(0, len(data), batch)]
n = len(data)
def step(x):
    for f in ((), (-1,)):
        xi = torch.flip(x, f) if f else x
        torch.sigmoid(cls(xi)); y = torch.sigmoid(seg(xi)); torch.flip(y, f) if f else y
with torch.inference_mode():
    step(batches[0])
    start = time.perf_counter()
    for x in batches:
        step(x)
    print(f"BARE {n / (time.perf_counter() - start):.4f}")
"""


def make_checkpoints(folder: Path, configs: dict) -> dict[str, Path]:
    out = {}
    for stage, config in configs.items():
        torch.manual_seed(0)
        out[stage] = save_checkpoint(
            folder / f"{stage}.pt",
            build(dict(config)),
            config,
            stage,
            {"preprocess": PRE, "fold": 0, "class_ids": [1, 2, 3, 4]},
        )
    return out


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(70, 110, (256, 1600), dtype=np.uint8)
    for i in range(n):
        image = np.roll(base, 37 * i, axis=1).copy()
        x, y = rng.integers(0, 1400), rng.integers(0, 200)
        image[y : y + 50, x : x + 200] = 200
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image)
    return folder


def run_child(args: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS MiB of that child) via wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{out[-3000:]}")
    return out, time.perf_counter() - start, usage.ru_maxrss / 1024


def infer_args(ck: dict[str, Path], images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "infer.py",
        "checkpoints.runs=[]",
        f"checkpoints.classifier=[{ck['classifier']}]",
        f"checkpoints.segmenter=[{ck['segmenter']}]",
        f"images={images}",
        f"output={out}/submission.csv",
        f"hydra.run.dir={out}",
        "progress=false",
        *extra,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images for the throughput ratio")
    parser.add_argument("--memory-images", type=int, nargs=2, default=[50, 500])
    parser.add_argument(
        "--trained",
        nargs=2,
        metavar=("CLASSIFIER", "SEGMENTER"),
        help="trained checkpoints or run folders for a meaningful gating skip share",
    )
    parser.add_argument("--trained-images", type=Path, help="images for --trained (default: the benchmark images)")
    parser.add_argument("--thresholds", type=Path, help="tuned thresholds file for the --trained run")
    parser.add_argument("--parts", default="throughput,gating,memory", help="which measurements to run")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    plain_env = {k: v for k, v in os.environ.items() if k not in FAST}
    fast_env = {**os.environ, **FAST, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        small = make_checkpoints(work / "small", SMALL)
        tiny = make_checkpoints(work / "tiny", TINY)
        images = make_images(work / "images", max(args.images, *args.memory_images))
        few = work / "few"
        few.mkdir(exist_ok=True)
        for name in sorted(os.listdir(images))[: args.images]:
            (few / name).exists() or os.link(images / name, few / name)

        parts = set(args.parts.split(","))
        if "throughput" in parts:
            throughput(args, small, few, work, cores, fast_env, plain_env)
        if "gating" in parts:
            gating(args, small, few, work, plain_env)
        if "memory" in parts:
            memory(args, tiny, images, work, plain_env)


def throughput(args, small, few, work, cores, fast_env, plain_env) -> None:
    bare_out, _, _ = run_child(
        [sys.executable, "-c", BARE, str(small["classifier"]), str(small["segmenter"]), str(cores), str(few)], fast_env
    )
    bare = float(re.search(r"BARE ([\d.]+)", bare_out).group(1))
    out, wall, _ = run_child(
        infer_args(small, few, work / "run_plain", "tta=hflip", "ensemble.gating.mode=none"), plain_env
    )
    plain = float(re.search(r"([\d.]+) images/s", out).group(1))
    print(f"throughput ({args.images} images 256x1600, resnet10t + Unet-resnet18, TTA none+hflip, {cores} threads):")
    print(f"  bare forward loop (fast allocator env, channels_last): {bare:.3f} images/s")
    print(
        f"  plain `python infer.py` (no env prepared):            {plain:.3f} images/s "
        f"(whole command incl. start-up and model loading: {wall:.1f} s)"
    )
    print(f"  ratio infer / bare: {plain / bare:.3f}  (target >= 0.9)")


def gating(args, small, few, work, plain_env) -> None:
    if args.trained:
        ck = dict(zip(("classifier", "segmenter"), args.trained))
        extra = [f"thresholds={args.thresholds}"] if args.thresholds else ["ensemble.gating.mode=veto"]
        label = f"trained checkpoints {args.trained}, {extra[0]}"
        gate_images = args.trained_images or few
    else:
        ck, extra, gate_images = small, ["ensemble.gating.mode=veto"], few
        label = "random-weight classifier, veto at 0.5: not meaningful, pass --trained"
    out, _, _ = run_child(infer_args(ck, gate_images, work / "run_gated", "tta=hflip", *extra), plain_env)
    skipped = re.search(r"([\d.]+)% of segmenter passes skipped", out).group(1)
    gated_rate = float(re.search(r"([\d.]+) images/s", out).group(1))
    print(f"gating ({label}): {skipped}% of segmenter passes skipped, {gated_rate:.3f} images/s")


def memory(args, tiny, images, work, plain_env) -> None:
    peaks = {}
    for n in args.memory_images:
        folder = work / f"mem{n}"
        folder.mkdir(exist_ok=True)
        for name in sorted(os.listdir(images))[:n]:
            (folder / name).exists() or os.link(images / name, folder / name)
        out, wall, peak = run_child(
            infer_args(
                tiny,
                folder,
                work / f"run_mem{n}",
                "tta=none",
                "ensemble.gating.mode=none",
                "postprocess.min_area=[0,0,0,0]",
            ),
            plain_env,
        )
        peaks[n] = peak
        print(f"peak RSS on {n} images (tiny models, 256x1600): {peak:.0f} MiB ({wall:.0f} s)")
    a, b = args.memory_images
    print(f"  peak memory {b} vs {a} images: {peaks[b] / peaks[a]:.3f}x  (target within 10%)")


if __name__ == "__main__":
    main()
