"""CPU speed of the deploy bundle, side by side in one run: torch eager vs ONNX Runtime's options, OpenVINO, INT8.

The same streaming prediction on every row (read + decode, preprocessing, members x TTA, reducer, gate,
post-processing; ``iter_predictions``), the same images and batch size, in one process, at 1 thread and at every
core; the rows run alternating and the best of ``--repeats`` is kept. Rows:

* torch eager (the baseline);
* ONNX Runtime at graph optimisation ``basic`` / ``extended`` / ``all`` (the TTA flips batched into one run by the
  runtime, the bundle as exported before ``tta_in_graph``), and at ``all`` with one run per flip;
* ``all`` + I/O binding (inputs bound, outputs written into arrays allocated by the caller);
* ``all``, flips in the graph (``deploy.export.FlipsInGraph``, the export's default): flips averaged before the one
  resize to 256x1600;
* OpenVINO's own runtime compiling the same files (when ``import openvino`` works: requirements-openvino.txt);
* INT8 (``deploy.export.quantize_bundle``: ONNX Runtime static quantisation, QDQ, per-channel, calibrated on
  training images of the data root; Resize and Sigmoid float), flips in the graph.

Each row also says whether its masks equal torch's on the timed images (differing pixels). For the ``trained`` set
the INT8 masks are compared with float32 on every held-out test image (Dice per mask) and both are scored against
the truth with the bootstrap interval of the gap closed (``common.metrics``).

Sets: ``trained``: the demo's trained joint models (``--runs``, ``--thresholds``, ``--data`` as ``make demo``
passes them; skipped with the reason when absent); ``demo``: the same architecture with random weights (Unet
``tu-tf_efficientnet_lite0`` + class head at 64x416, 2 folds); ``competition``: EfficientNet-b1 classifier + Unet
EfficientNet-b3 segmenter at 256x1600, random weights. Random sets run with gating ``none`` (every image through every
member). Usage: ``python benchmarks/bench_onnx.py [--sets trained,demo,competition] [--images 8] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import make_images  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from common.annotations import read_annotations  # noqa: E402
from common.config import build  # noqa: E402
from common.constants import CLASS_IDS, LONG_COLUMNS  # noqa: E402
from common.dataset import list_images  # noqa: E402
from common.metrics import dice, pair_dice, paired_difference, score_pairs, with_interval  # noqa: E402
from deploy.export import _compose, calibration_images, export_bundle, exportable_layers, parity, quantize_bundle  # noqa: E402  # noqa: E402
from engine.checkpoint import save_checkpoint  # noqa: E402
from ensemble.core import GatedEnsemble, cpu_count, rows_of  # noqa: E402
from ensemble.onnx_runtime import OnnxPredictor, load_bundle  # noqa: E402
from ensemble.predict import build_predictor, set_threads  # noqa: E402

PRE = {"channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
JOINT_DEMO = {
    "_target_": "segmenter.model.create_joint",
    "arch": "Unet",
    "encoder_name": "tu-tf_efficientnet_lite0",
    "encoder_weights": None,
    "decoder_channels": [64, 32, 16, 16, 8],
}
SETS = {
    "demo": {"joint": (JOINT_DEMO, [64, 416], 2)},
    "competition": {
        "classifier": ({"_target_": "classifier.model.create_classifier", "name": "efficientnet_b1"}, None, 1),
        "segmenter": (
            {"_target_": "segmenter.model.create_segmenter", "arch": "Unet", "encoder_name": "efficientnet-b3"},
            None,
            1,
        ),
    },
}
DEMO_DATA = "data.folds.n_splits=2 data.synthetic.n_train=2000 data.synthetic.n_test=100"  # the Makefile's DEMO_ARGS
LEVELS = ("basic", "extended", "all")


def random_config(name: str, folder: Path) -> dict:
    """Random-weight checkpoints of a set and the infer config naming them (gating none, TTA none+hflip)."""
    checkpoints: dict[str, list[str]] = {}
    for stage, (model_config, size, folds) in SETS[name].items():
        for fold in range(folds):
            torch.manual_seed(fold)
            path = save_checkpoint(
                folder / f"{stage}{fold}.pt",
                build(dict(model_config)),
                model_config,
                stage,
                {"preprocess": {**PRE, "size": size}, "fold": fold},
            )
            checkpoints.setdefault(stage, []).append(str(path))
    return {
        "checkpoints": checkpoints,
        "tta": {"classifier": ["none", "hflip"], "segmenter": ["none", "hflip"]},
        "ensemble": {"gating": {"mode": "none"}, "reducer": "mean"},
        "postprocess": {},
        "device": "cpu",
    }


def trained_config(args: argparse.Namespace) -> tuple[dict | None, str]:
    """The demo's infer config on its trained runs (as ``make demo`` runs ``infer.py``), or None and why not."""
    runs, thresholds = Path(args.runs), Path(args.thresholds)
    found = sorted(runs.glob("**/checkpoints/best.pt")) if runs.is_dir() else []
    if not found:
        return None, f"no trained checkpoints under {runs} (make demo trains them; --runs names another folder)"
    if not thresholds.is_file():
        return None, f"no thresholds file {thresholds} (make demo writes it; --thresholds names another)"
    cfg = _compose([f"checkpoints.runs=[{runs}]", f"thresholds={thresholds}", *args.data.split()])
    return cfg, f"{len(found)} checkpoints under {runs}, thresholds {thresholds}"


def count_nodes(path: Path, level: str) -> tuple[int, str]:
    """(node count, the most common node types and the activations fused into convs) of ``path`` after ONNX Runtime's
    optimisation at ``level`` (``optimized_model_filepath``; ``disable``: the exported graph)."""
    import onnx
    import onnxruntime as ort

    from ensemble.onnx_runtime import session_options

    options = session_options(1, level)
    out = path.with_name(f"{path.stem}.{level}.opt.onnx")
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(out)).graph.node
    out.unlink()
    kinds = collections.Counter(f"{'nchwc.' if n.domain.endswith('nchwc') else ''}{n.op_type}" for n in nodes)
    fused = collections.Counter(a.s.decode() for n in nodes for a in n.attribute if a.name == "activation")
    text = ", ".join(f"{k} {v}" for k, v in kinds.most_common(7))
    return len(nodes), text + (f"; activations fused into convs: {dict(fused)}" if fused else "")


def resize_share(path: Path, shape: tuple[int, ...], batch: int) -> float:
    """Share of ONNX Runtime's kernel time (level all, 1 thread) spent in Resize nodes, from its profiler."""
    import onnxruntime as ort

    from ensemble.onnx_runtime import session_options

    options = session_options(1)
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_name("profile"))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    for _ in range(2):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    times = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            times[e["args"]["op_name"]] += e["dur"]
    return times["Resize"] / max(sum(times.values()), 1)


def with_io_binding(predictor: OnnxPredictor) -> OnnxPredictor:
    """``predictor`` running its sessions through I/O binding: the input bound, each output written into an array
    allocated here (no copy out of ONNX Runtime's own buffers)."""

    def run(member, x):
        x = np.ascontiguousarray(x, np.float32)
        binding = member.session.io_binding()
        binding.bind_cpu_input(member.input_name, x)
        outputs = []
        for output in member.session.get_outputs():
            shape = (len(x), *output.shape[1:])
            array = np.empty(shape, np.float32)
            binding.bind_output(output.name, "cpu", 0, np.float32, shape, array.ctypes.data)
            outputs.append(array)
        member.session.run_with_iobinding(binding)
        return tuple(outputs) if member.kind == "joint" else outputs[0]

    predictor._run = run
    return predictor


def openvino_predictor(bundle: Path, threads: int) -> OnnxPredictor | None:
    """The bundle's ensemble with OpenVINO compiling the same ONNX files, or None where OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    predictor = load_bundle(bundle, threads)
    core = ov.Core()
    compiled = {
        id(m): core.compile_model(str(m.path), "CPU", {"INFERENCE_NUM_THREADS": threads}) for m in predictor.members
    }

    def run(member, x):
        model = compiled[id(member)]
        out = model([np.ascontiguousarray(x, np.float32)])
        values = [out[o] for o in model.outputs]
        return tuple(values) if member.kind == "joint" else values[0]

    predictor._run = run
    return predictor


def measure(predictor: GatedEnsemble, paths: list[Path], batch_size: int) -> float:
    """Images/s of the whole streaming prediction, after a warm-up batch."""
    for _ in predictor.iter_predictions(paths[:batch_size], batch_size):
        pass
    start = time.perf_counter()
    for _ in predictor.iter_predictions(paths, batch_size):
        pass
    return len(paths) / (time.perf_counter() - start)


def masks_of(predictor: GatedEnsemble, paths: list[Path], batch_size: int) -> tuple[list[str], np.ndarray]:
    """(image ids, uint8 masks (N, 4, H, W)) of every image."""
    ids, masks = [], []
    for image_id, _, m in predictor.iter_predictions(paths, batch_size):
        ids.append(image_id)
        masks.append(m)
    return ids, np.stack(masks)


def held_out_score(ids: list[str], masks: np.ndarray, truth: Any) -> tuple[Any, np.ndarray]:
    """(ScoreReport with the gap-closed interval, per-pair Dice (N, 4)) of masks against the truth rows."""
    import pandas as pd

    rows = pd.DataFrame([r for i, m in zip(ids, masks) for r in rows_of(i, m)], columns=LONG_COLUMNS)
    values, empty = pair_dice(rows, truth.rows, ids)
    return with_interval(score_pairs(values, empty, len(ids)), values, empty), values


def int8_quality(reference: OnnxPredictor, int8: OnnxPredictor, cfg: Any, batch_size: int) -> None:
    """INT8 against float32 on every held-out test image: Dice per mask, and both held-out scores with intervals."""
    images = Path(cfg["images"])
    paths = [images / i for i in list_images(images)]
    truth = read_annotations(cfg["data"]["test_truth_csv"])
    ids, float_masks = masks_of(reference, paths, batch_size)
    _, int8_masks = masks_of(int8, paths, batch_size)
    per_mask = np.array(
        [[dice(int8_masks[j, c], float_masks[j, c]) for c in range(len(CLASS_IDS))] for j in range(len(ids))]
    )
    print(
        f"  INT8 vs float32 masks on the {len(ids)} held-out test images (Dice per (image, class) mask, "
        "empty-on-empty 1):"
    )
    for c, class_id in enumerate(CLASS_IDS):
        col = per_mask[:, c]
        print(
            f"    class {class_id}: mean {col.mean():.4f}, min {col.min():.4f}, {int((col < 1).sum())} of "
            f"{len(col)} masks differ"
        )
    reports, values = {}, {}
    for label, masks in (("float32", float_masks), ("INT8", int8_masks)):
        reports[label], values[label] = held_out_score(ids, masks, truth)
        r = reports[label]
        low, high = r.gap_interval
        print(
            f"    held-out score {label}: {r.overall:.5f} (all-empty {r.baseline:.5f}), gap closed "
            f"{r.gap_closed:.1%} (95% interval {low:.1%} to {high:.1%})"
        )
    low, high = reports["float32"].gap_interval
    holds = low <= reports["INT8"].gap_closed <= high
    print(
        f"    INT8 gap closed {reports['INT8'].gap_closed:.1%} is {'inside' if holds else 'OUTSIDE'} float32's "
        f"interval: {'holds the score' if holds else 'does not hold the score'}"
    )
    diff, low, high = paired_difference(values["INT8"], values["float32"])
    print(
        f"    INT8 - float32 score on the same images: {diff:+.5f} (95% paired interval {low:+.5f} to {high:+.5f}; "
        f"{'holds 0' if low <= 0 <= high else 'excludes 0'})"
    )


def bench_set(name: str, work: Path, files: list[Path], args: argparse.Namespace, cores: int) -> None:
    if name == "trained":
        cfg, why = trained_config(args)
        if cfg is None:
            print(f"trained set skipped: {why}")
            return
        paths = [Path(cfg["images"]) / i for i in list_images(cfg["images"])][: args.images]
        calibration = calibration_images(cfg["data"]["root"], args.calibration_images)
    else:
        cfg, why = random_config(name, work / name), "random weights, gating none"
        paths = files[: args.competition_images if name == "competition" else args.images]
        calibration = files[: min(len(files), args.calibration_images)]
    with exportable_layers():
        reference = build_predictor(cfg)
    members = ", ".join(
        f"{n} {kind}"
        for kind, n in (
            ("classifier", len(reference.classifiers)),
            ("joint", len(reference.joints)),
            ("segmenter", len(reference.segmenters)),
        )
        if n
    )
    print(
        f"\n{name} set ({why}): {members} members, TTA {[f.name for f in reference.tta_segmenter]}, gating "
        f"{reference.rules.gating}; {len(paths)} images 256x1600, batch {args.batch_size}"
    )
    bundles, quiet = {}, (lambda *_: None)
    for label, in_graph in (("batched", False), ("in_graph", True)):
        start = time.perf_counter()
        bundles[label] = export_bundle(reference, work / f"{name}_{label}", log=quiet, flips_in_graph=in_graph)
        print(
            f"  export, flips {'in the graph' if in_graph else 'batched by the runtime'}: "
            f"{time.perf_counter() - start:.0f} s"
        )
    start = time.perf_counter()
    bundles["int8"] = work / f"{name}_int8"
    shutil.copytree(bundles["in_graph"], bundles["int8"])
    quantize_bundle(bundles["int8"], calibration, log=quiet)
    print(f"  INT8 quantisation ({len(calibration)} calibration images): {time.perf_counter() - start:.0f} s")

    first = reference.members[0]
    kind_name = f"{first.kind}_0"
    shape = (first.preprocess.channels, *(first.preprocess.size or (256, 1600)))
    print(f"  graph of {kind_name} (flips batched by the runtime), nodes after ONNX Runtime's optimisation:")
    for level in ("disable", *LEVELS):
        count, kinds = count_nodes(bundles["batched"] / f"{kind_name}.onnx", level)
        print(f"    {level:9s} {count:4d} nodes: {kinds}")
    count, kinds = count_nodes(bundles["int8"] / f"{kind_name}.onnx", "all")
    print(f"    INT8 all  {count:4d} nodes: {kinds}")
    batch = args.batch_size * len(reference.tta_segmenter)
    print(
        f"  Resize share of ONNX Runtime kernel time ({kind_name}, level all, 1 thread, {args.batch_size} images): "
        f"flips batched {resize_share(bundles['batched'] / f'{kind_name}.onnx', shape, batch):.0%}, flips in "
        f"the graph {resize_share(bundles['in_graph'] / f'{kind_name}.onnx', shape, args.batch_size):.0%}"
    )

    rows: list[tuple[str, Callable[[int], GatedEnsemble | None]]] = [("torch eager", lambda t: reference)]
    for level in LEVELS:
        rows.append(
            (f"ORT {level}, flips batched", lambda t, lv=level: load_bundle(bundles["batched"], t, optimization=lv))
        )

    def per_flip(t: int) -> OnnxPredictor:
        predictor = load_bundle(bundles["batched"], t)
        predictor.batch_flips = False
        return predictor

    rows += [
        ("ORT all, one run per flip", per_flip),
        ("ORT all, flips batched, I/O binding", lambda t: with_io_binding(load_bundle(bundles["batched"], t))),
        ("ORT all, flips in graph (default)", lambda t: load_bundle(bundles["in_graph"], t)),
        ("ORT all, flips in graph, I/O binding", lambda t: with_io_binding(load_bundle(bundles["in_graph"], t))),
        ("OpenVINO, flips batched", lambda t: openvino_predictor(bundles["batched"], t)),
        ("OpenVINO, flips in graph", lambda t: openvino_predictor(bundles["in_graph"], t)),
        ("ORT INT8, flips in graph", lambda t: load_bundle(bundles["int8"], t)),
    ]
    table: dict[str, dict[int, float]] = collections.defaultdict(dict)
    same: dict[str, str] = {}
    for threads in args.threads:
        set_threads(threads)
        for repeat in range(args.repeats):  # alternate, so drift on a shared machine hits every row alike
            for label, make in rows:  # one predictor alive at a time: full-size sessions hold GBs each
                predictor = make(threads)
                if predictor is None:
                    continue
                rate = measure(predictor, paths, args.batch_size)
                table[label][threads] = max(table[label].get(threads, 0.0), rate)
                print(f"    {threads} thread(s), repeat {repeat + 1}: {label}: {rate:.2f} images/s", flush=True)
                if threads == args.threads[-1] and repeat == 0 and label != "torch eager":
                    r = parity(reference, predictor, paths, args.batch_size)
                    same[label] = (
                        f"{r.differing_pixels} px differ, max|dp| {r.max_seg_diff:.1e}"
                        if r.pairs_below == 0
                        else f"{r.pairs_below} masks Dice<0.999, {r.differing_pixels} px differ"
                    )
                del predictor
                gc.collect()
    if not any(label.startswith("OpenVINO") for label in table):
        print("  OpenVINO: not importable here (pip install -r requirements-openvino.txt to include it)")
    header = " | ".join(f"{t} thread{'s' if t > 1 else ''}: img/s (x torch)" for t in args.threads)
    print(f"  | row | {header} | masks vs torch ({args.threads[-1]} threads) |")
    print("  | --- |" + " --- |" * (len(args.threads) + 1))
    for label, rates in table.items():
        cells = " | ".join(f"{rates[t]:.2f} ({rates[t] / table['torch eager'][t]:.2f}x)" for t in args.threads)
        print(f"  | {label} | {cells} | {same.get(label, 'baseline')} |")
    if name == "trained":
        set_threads(cores)
        int8_quality(load_bundle(bundles["in_graph"], cores), load_bundle(bundles["int8"], cores), cfg, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default="trained,demo,competition", help="comma-separated: trained, demo, competition"
    )
    parser.add_argument("--images", type=int, default=8, help="images per timed run (trained and demo sets)")
    parser.add_argument("--competition-images", type=int, default=4, help="images per timed run (competition set)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    parser.add_argument("--runs", default="outputs/train/joint/demo", help="trained set: the demo's training runs")
    parser.add_argument("--thresholds", default="outputs/demo/thresholds.json", help="trained set: its thresholds")
    parser.add_argument("--data", default=DEMO_DATA, help="trained set: the data overrides make demo passes")
    parser.add_argument("--calibration-images", type=int, default=32, help="INT8: training images to calibrate on")
    args = parser.parse_args()
    cores = cpu_count()
    args.threads = args.threads or sorted({1, cores})
    print(
        f"{cores} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at the start: the "
        "machine may be shared with other jobs; compare the ratios, which come from alternating runs in this process"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = make_images(work / "images", max(args.images, args.competition_images, 8))
        files = [folder / name for name in list_images(folder)]
        for name in args.sets.split(","):
            bench_set(name, work, files, args, cores)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
