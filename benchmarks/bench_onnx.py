"""CPU speed of the deploy bundle: ONNX Runtime (threads tuned; OpenVINO where it is installed) against torch eager.

The same streaming prediction on both sides (read + decode, preprocessing, members x TTA, reducer, gate,
post-processing; ``iter_predictions``), the same images, batch size and core count, in one process, runs
alternating and the best of ``--repeats`` kept. Ensembles, random weights, TTA none+hflip, gating none (every
image goes through every segmenter, so both sides do the same work whatever the random classifier says):

* demo: 2 classifiers timm ``test_resnet`` (max pool) at 96x600 + 2 segmenters Unet ``tu-test_resnet`` at
  input_scale 0.5 (the ``experiment=*/demo`` recipes, 2 folds each);
* competition: EfficientNet-b1 classifier + Unet EfficientNet-b3 segmenter, both at 256x1600.

Prints images/s per runtime, the share of time in the networks, and the ratio ONNX / torch (target >= 1.5).
Usage: ``python benchmarks/bench_onnx.py [--sets demo,competition] [--images 16] [--repeats 2]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import make_images  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from common.config import build  # noqa: E402
from common.dataset import list_images  # noqa: E402
from engine.checkpoint import save_checkpoint  # noqa: E402
from ensemble.core import GatedEnsemble, cpu_count  # noqa: E402
from ensemble.export import export_bundle, exportable_layers  # noqa: E402
from ensemble.onnx_runtime import OnnxPredictor, load_bundle  # noqa: E402
from ensemble.predict import build_predictor, set_threads  # noqa: E402

PRE = {"channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SETS = {
    "demo": {
        "classifier": ({"_target_": "classifier.model.create_classifier", "name": "test_resnet", "global_pool": "max"},
                       [96, 600], 2),
        "segmenter": ({"_target_": "segmenter.model.create_segmenter", "arch": "Unet", "encoder_name": "tu-test_resnet",
                       "decoder_channels": [32, 16, 16, 8, 8], "input_scale": 0.5}, None, 2),
    },
    "competition": {
        "classifier": ({"_target_": "classifier.model.create_classifier", "name": "efficientnet_b1"}, None, 1),
        "segmenter": ({"_target_": "segmenter.model.create_segmenter", "arch": "Unet",
                       "encoder_name": "efficientnet-b3"}, None, 1),
    },
}


def make_config(name: str, folder: Path) -> dict:
    """Random-weight checkpoints of a set and the infer config naming them."""
    checkpoints: dict[str, list[str]] = {}
    for stage, (model_config, size, folds) in SETS[name].items():
        for fold in range(folds):
            torch.manual_seed(fold)
            path = save_checkpoint(folder / f"{stage}{fold}.pt", build(dict(model_config)), model_config, stage,
                                   {"preprocess": {**PRE, "size": size}, "fold": fold})
            checkpoints.setdefault(stage, []).append(str(path))
    return {"checkpoints": checkpoints, "tta": {"classifier": ["none", "hflip"], "segmenter": ["none", "hflip"]},
            "ensemble": {"gating": {"mode": "none"}, "reducer": "mean"}, "postprocess": {}, "device": "cpu"}


class Timed:
    """Wraps a predictor's ``_run`` to add up the seconds spent in the networks."""

    def __init__(self, predictor: GatedEnsemble) -> None:
        self.seconds, self.inner = 0.0, predictor._run
        predictor._run = self

    def __call__(self, member, x):
        start = time.perf_counter()
        out = self.inner(member, x)
        self.seconds += time.perf_counter() - start
        return out


def measure(predictor: GatedEnsemble, paths: list[Path], batch_size: int) -> tuple[float, float]:
    """(images/s of the whole streaming prediction, share of that time in the networks), after a warm-up batch."""
    for _ in predictor.iter_predictions(paths[:batch_size], batch_size):
        pass
    timer = Timed(predictor)
    start = time.perf_counter()
    for _ in predictor.iter_predictions(paths, batch_size):
        pass
    seconds = time.perf_counter() - start
    predictor._run = timer.inner
    return len(paths) / seconds, timer.seconds / seconds


def openvino_predictor(bundle: Path, threads: int) -> OnnxPredictor | None:
    """The bundle's ensemble with OpenVINO compiling the same ONNX files, or None where OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    predictor = load_bundle(bundle, threads)
    core = ov.Core()
    compiled = {id(m): core.compile_model(str(m.path), "CPU", {"INFERENCE_NUM_THREADS": threads})
                for m in predictor.members}

    def run(member, x):
        model = compiled[id(member)]
        out = model([x.copy()])
        values = [out[o] for o in model.outputs]
        return tuple(values) if member.kind == "joint" else values[0]

    predictor._run = run
    return predictor


def bench_set(name: str, work: Path, paths: list[Path], args: argparse.Namespace, cores: int) -> None:
    cfg = make_config(name, work / name)
    with exportable_layers():
        reference = build_predictor(cfg)
    start = time.perf_counter()
    bundle = export_bundle(reference, work / f"{name}_bundle", log=lambda *_: None)
    export_s = time.perf_counter() - start
    set_threads(cores)
    runs: dict[str, list[tuple[float, float]]] = {}
    candidates = {f"onnxruntime {t} thread(s)": load_bundle(bundle, t) for t in args.ort_threads}
    vino = openvino_predictor(bundle, cores)
    if vino is not None:
        candidates["openvino"] = vino
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both sides alike
        runs.setdefault("torch eager", []).append(measure(reference, paths, args.batch_size))
        for label, predictor in candidates.items():
            runs.setdefault(label, []).append(measure(predictor, paths, args.batch_size))
    best = {label: max(values) for label, values in runs.items()}
    torch_rate = best["torch eager"][0]
    members = ", ".join(f"{len(v)} x {k}" for k, v in cfg["checkpoints"].items())
    print(f"{name} ensemble ({members}; TTA none+hflip; {len(paths)} images 256x1600, batch {args.batch_size}, "
          f"{cores} cores; export {export_s:.0f} s):")
    for label, (rate, share) in best.items():
        ratio = "" if label == "torch eager" else f"  ratio vs torch {rate / torch_rate:.2f}x"
        print(f"  {label:26s} {rate:7.3f} images/s  ({share:.0%} in the networks){ratio}")
    ort = {k: v for k, v in best.items() if k.startswith("onnxruntime")}
    label, (rate, _) = max(ort.items(), key=lambda kv: kv[1][0])
    print(f"  best ONNX Runtime ({label}) / torch eager: {rate / torch_rate:.2f}x  (target >= 1.5)")
    if vino is None:
        print("  OpenVINO: not installed here (pip install openvino to include it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="demo,competition", help=f"comma-separated, from {list(SETS)}")
    parser.add_argument("--images", type=int, default=16, help="images per timed run (demo set)")
    parser.add_argument("--competition-images", type=int, default=8, help="images per timed run (competition set)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ort-threads", type=int, nargs="+", default=None,
                        help="ONNX Runtime intra-op thread counts to try (default: 1 and all cores)")
    args = parser.parse_args()
    cores = cpu_count()
    args.ort_threads = args.ort_threads or sorted({1, cores})
    print(f"{cores} cores, torch {torch.__version__}, {os.uname().nodename}: the machine may be shared with other "
          "jobs; compare the ratios, which come from alternating runs in this process")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = make_images(work / "images", max(args.images, args.competition_images))
        files = [folder / name for name in list_images(folder)]
        for name in args.sets.split(","):
            count = args.competition_images if name == "competition" else args.images
            bench_set(name, work, files[:count], args, cores)


if __name__ == "__main__":
    main()
