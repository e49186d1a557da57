"""``python -m deploy.export [overrides] --out BUNDLE``: the ensemble ``infer.py`` would run, as a deploy bundle.

The overrides are ``infer.py``'s (``checkpoints.classifier=[...] checkpoints.segmenter=[...] thresholds=t.json
tta=flips ensemble.gating.mode=soft ...``), so the bundle is exactly that ensemble: one ONNX file per member
(``ensemble.predict.MemberNet``: probabilities at the image size, dynamic batch, opset 18 for antialiased
resizing) and ``bundle.json`` (see ``ensemble.onnx_runtime``) with preprocessing, TTA, reducer, rules and
tuned thresholds, class ids, versions and sha256 checksums. Every member is checked after export: ONNX
Runtime and torch must agree on a probe batch (``export_check``). ``--parity`` then runs both runtimes on the
images of the config (default: the synthetic test set) and writes ``parity.json`` beside the bundle files.

Flips in the graph (the default with the ``mean`` reducer; ``--no-flips-in-graph`` turns it off): each member's
file takes the plain batch and runs its TTA inside (``FlipsInGraph``): every flip of the batch in one pass, the
probabilities un-flipped and averaged at the network's output size, then resized to 256x1600 once instead of once
per flip (for the demo's 64x416 members Resize fell from 26% to 11% of ONNX Runtime's kernel time,
``benchmarks/bench_onnx.py``). Bilinear resizing is linear and commutes with the flips, so the masks are torch's up
to float rounding (``--parity`` on the demo's 100 test images: every mask identical, max |dp| 5e-5). The runtime
then runs each member once (``bundle.json``: ``tta_in_graph`` per member).

``--int8``: the member files are quantised to INT8 (ONNX Runtime static quantisation, QDQ, per-channel weights,
calibrated on ``--calibration-images`` training images of the config's data root; the final Resize and Sigmoid stay
float). Measured on the demo its held-out score stays inside float32's bootstrap interval but lower (README
"Deploy"), so it is an option, off by default.

Export pitfalls handled: models are rebuilt with timm's ``exportable`` layer config and memory-efficient
Swish switched off (``set_swish(memory_efficient=False)`` where an encoder has it); the torch.export-based
exporter (dynamo) handles smp decoders, padding and the antialiased resize of ``segmenter.model.Rescaled``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.errors import SteelsegError, command
from common.io import atomic_write_text, check_writable, replace_file, replace_folder, temp_dir_beside
from common.metrics import dice
from ensemble.core import GatedEnsemble, iter_batches, split_joint
from ensemble.onnx_runtime import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    MANIFEST,
    OUTPUTS,
    BundleError,
    load_bundle,
    session_options,
    sha256_of,
)
from ensemble.predict import MemberNet, Predictor, build_predictor
from scoring.tta import Flip
from segmenter.metrics import to_full_size

__all__ = [
    "OPSET",
    "PARITY_DICE",
    "ExportError",
    "exportable_layers",
    "make_exportable",
    "FlipsInGraph",
    "graph_flips",
    "export_net",
    "check_net",
    "quantize_int8",
    "calibration_images",
    "calibration_batches",
    "quantize_bundle",
    "export_bundle",
    "ParityReport",
    "parity",
    "main",
]

OPSET = 18  # Resize with antialias (segmenter.model.Rescaled) needs opset >= 18
PARITY_DICE = 0.999  # per (image, class) pair Dice the ONNX runtime must reach against torch
CHECK_TOLERANCE = 1e-3  # max |torch - onnx| probability on the probe batch
PROBE_BATCHES = (1, 3)  # batch sizes the export check runs (the file was traced with 2)
CALIBRATION_IMAGES = 32  # --int8: training images the activation ranges are calibrated on


class ExportError(SteelsegError, RuntimeError):
    """A member that cannot be exported, or whose ONNX file disagrees with torch; the message names it."""


@contextlib.contextmanager
def exportable_layers() -> Iterator[None]:
    """Build models inside with timm's export-friendly layers (no memory-efficient/JIT activations)."""
    from timm.layers import set_layer_config

    with set_layer_config(scriptable=False, exportable=True, no_jit=True):
        yield


def make_exportable(model: nn.Module) -> nn.Module:
    """Switch memory-efficient Swish (a custom autograd function) to the plain one wherever a module offers it."""
    for module in model.modules():
        if hasattr(module, "set_swish"):
            module.set_swish(memory_efficient=False)
    return model


class FlipsInGraph(nn.Module):
    """A member's network with its TTA inside: the flips of a batch in one pass, un-flipped and averaged at the
    network's output size, resized to the image size once (the mean reducer's result, with 1 resize, not 1 per flip)."""

    def __init__(self, net: MemberNet, flips: Sequence[Flip]) -> None:
        super().__init__()
        self.net, self.flips, self.kind = net, list(flips), net.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch, n = x.shape[0], len(self.flips)
        out = self.net.model(torch.cat([flip.augment(x) for flip in self.flips]))
        masks, labels = split_joint(out) if self.kind == "joint" else (out, out)

        def mean(y: torch.Tensor, unflip: bool) -> torch.Tensor:  # slices, not chunk: keeps the batch dynamic
            parts = [y[i * batch : (i + 1) * batch] for i in range(n)]
            return sum(f.deaugment(p) if unflip else p for f, p in zip(self.flips, parts)) / n

        labels = mean(torch.sigmoid(labels.float()), False)
        if self.kind == "classifier":
            return labels
        masks = to_full_size(mean(torch.sigmoid(masks.float()), True))
        return (masks, labels) if self.kind == "joint" else masks


def graph_flips(predictor: GatedEnsemble, member: Any) -> list[Flip]:
    """The TTA flips of ``member`` (the classifier's or the segmenter's set, by kind) that its graph can hold: all
    of them with the mean reducer (linear: flip-then-average equals the reducer's mean), none otherwise or when the
    set is ``none`` alone (nothing to average)."""
    flips = list(predictor.tta_classifier if member.kind == "classifier" else predictor.tta_segmenter)
    if predictor.reducer != "mean" or [f.name for f in flips] == ["none"]:
        return []
    return flips


def _probe(shape: tuple[int, ...], batch: int, seed: int = 0) -> torch.Tensor:
    """A reproducible normalised-image-like input batch of ``shape`` (C, h, w)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=generator)


def _input_shape(member: Any) -> tuple[int, int, int]:
    size = member.preprocess.size or IMAGE_SHAPE
    return member.preprocess.channels, int(size[0]), int(size[1])


def export_net(net: MemberNet, shape: tuple[int, int, int], path: Path, opset: int = OPSET) -> None:
    """Write ``net`` as ONNX with a dynamic batch dimension (torch.export-based exporter, one self-contained file)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net.float().eval(),
                (_probe(shape, 2),),
                str(path),
                dynamo=True,
                input_names=["input"],
                output_names=list(OUTPUTS[net.kind]),
                dynamic_shapes={"x": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
            )
    except Exception as exc:  # the exporter raises many types; the member is named, the log tail kept
        tail = " | ".join(log.getvalue().strip().splitlines()[-3:])
        raise ExportError(f"{path.stem}: torch.onnx.export failed ({type(exc).__name__}: {exc}) {tail}") from exc


def check_net(net: MemberNet, shape: tuple[int, int, int], path: Path) -> float:
    """Max |torch - ONNX Runtime| over the outputs of probe batches of sizes ``PROBE_BATCHES``; an error above
    ``CHECK_TOLERANCE`` or on a wrong output shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in PROBE_BATCHES:
        x = _probe(shape, batch, seed=batch)
        with torch.inference_mode():
            expected = net(x)
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        for name, e, g in zip(OUTPUTS[net.kind], expected, got):
            if e.shape != g.shape:
                raise ExportError(f"{path}: output {name} has shape {g.shape} for batch {batch}, torch gives {e.shape}")
            worst = max(worst, float(np.abs(e - g).max()))
    if worst > CHECK_TOLERANCE:
        raise ExportError(
            f"{path}: ONNX Runtime differs from torch by {worst:.2e} (> {CHECK_TOLERANCE}) on the probe "
            "batch; the model uses an operator the exporter translates differently"
        )
    return worst


def calibration_images(root: Path | str, count: int) -> list[Path]:
    """``count`` training images of the data root ``root`` (``train_images/``), evenly spread over the sorted names:
    the inputs INT8 activations are calibrated on; a bad count or a root without them is an ``ExportError``."""
    from common.dataset import list_images

    folder = Path(root) / "train_images"
    names = list_images(folder) if folder.is_dir() else []
    if not names:
        raise ExportError(
            f"--int8: no training images in {folder} to calibrate on; set data.root (or data=...) to a "
            "dataset root with train_images/"
        )
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(names):
        raise ExportError(
            f"--calibration-images {count}: give a whole number from 1 to {len(names)} (the training "
            f"images in {folder})"
        )
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [folder / names[i] for i in sorted(set(picks.tolist()))]


def calibration_batches(paths: Sequence[Path | str], preprocess: Any, batch_size: int = 8) -> list[np.ndarray]:
    """Float32 network inputs of ``paths`` (read by content, ``preprocess`` applied), in batches."""
    from ensemble.core import read_inputs

    inputs = [read_inputs(p, [preprocess])[0] for p in paths]
    return [np.stack(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]


def quantize_int8(src: Path, dst: Path, batches: Sequence[np.ndarray]) -> list[str]:
    """Write ``src`` quantised to INT8 as ``dst`` (ONNX Runtime static quantisation: QDQ, per-channel signed weights,
    unsigned activations calibrated on ``batches``); Resize and Sigmoid stay float. Returns the node types kept
    float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.items = iter([{name: b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    staged = dst.with_name(dst.stem + ".pre.onnx")
    try:  # the exporter's graph has shapes the symbolic inference cannot follow; ONNX's own inference suffices
        quant_pre_process(str(src), str(staged), skip_symbolic_shape=True)
        graph = onnx.load(str(staged)).graph
        kept = ("Resize", "Sigmoid")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quantize_static(
                str(staged),
                str(dst),
                Reader(graph.input[0].name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=[n.name for n in graph.node if n.op_type in kept],
            )
    finally:
        staged.unlink(missing_ok=True)
    return list(kept)


def quantize_bundle(folder: Path, calibration: Sequence[Path | str], log: Any = print) -> None:
    """Quantise every float32 member file of the bundle ``folder`` to INT8 in place (``quantize_int8``, calibrated on
    the image files ``calibration``), updating ``bundle.json`` (sha256, ``precision``)."""
    from common.preprocess import Preprocess

    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for entry in manifest["members"]:
        if entry.get("precision", "float32") != "float32":
            continue
        path = folder / entry["file"]
        staged = path.with_name(f"{path.stem}.int8.onnx")
        try:
            # one image per run: a full-size U-Net's calibration run on a batch of 8 (16 with the flips) was killed
            # for memory on this 24 GB machine
            batches = calibration_batches(calibration, Preprocess.from_meta(entry["preprocess"]), batch_size=1)
            kept = quantize_int8(path, staged, batches)
            replace_file(staged, path)  # the float32 file stays in place until the INT8 one is whole
        finally:
            staged.unlink(missing_ok=True)
        entry.update(sha256=sha256_of(path), precision="int8")
        log(
            f"  {entry['name']}: INT8 (QDQ, per-channel, {len(calibration)} calibration images; {'/'.join(kept)} "
            f"float), {path.stat().st_size / 1e6:.1f} MB"
        )
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _versions(opset: int) -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(opset),
    }
    for dist in ("steelseg", "timm", "segmentation-models-pytorch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def export_bundle(
    predictor: Predictor,
    out: Path | str,
    thresholds: str | None = None,
    opset: int = OPSET,
    force: bool = False,
    log: Any = print,
    flips_in_graph: bool = True,
    int8_calibration: Sequence[Path | str] | None = None,
) -> Path:
    """Write ``predictor`` as a bundle folder ``out`` (built in a temp folder beside it, moved in when complete);
    ``flips_in_graph``: each member's TTA inside its file (``FlipsInGraph``, mean reducer only);
    ``int8_calibration``: image files to calibrate INT8 members on (None: float32 members)."""
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out}: exists; choose another --out or pass --force to replace it")
    staged = temp_dir_beside(out)
    try:
        entries, checks, counts = [], {}, {}
        for member in predictor.members:
            index = counts[member.kind] = counts.get(member.kind, -1) + 1
            name = f"{member.kind}_{index}"
            path = staged / f"{name}.onnx"
            net, shape = make_exportable(predictor.net(member)).cpu(), _input_shape(member)
            flips = graph_flips(predictor, member) if flips_in_graph else []
            net = FlipsInGraph(net, flips) if flips else net
            export_net(net, shape, path, opset)
            checks[name] = check_net(net, shape, path)
            entries.append(
                {
                    "name": name,
                    "kind": member.kind,
                    "file": path.name,
                    "sha256": sha256_of(path),
                    "weight": member.weight,
                    "preprocess": member.preprocess.to_meta(),
                    "input": "input",
                    "outputs": list(OUTPUTS[member.kind]),
                    "tta_in_graph": [f.name for f in flips],
                    "precision": "float32",
                    "source": str(member.path),
                    "fold": member.fold,
                }
            )
            log(
                f"  {name}: {member.path} -> {path.name} ({path.stat().st_size / 1e6:.1f} MB, input {list(shape)}, "
                f"TTA in graph {[f.name for f in flips] or 'no'}, max |torch - onnx| {checks[name]:.1e})"
            )
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "class_ids": list(CLASS_IDS),
            "image_shape": list(IMAGE_SHAPE),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "members": entries,
            "tta": {
                "classifier": [f.name for f in predictor.tta_classifier],
                "segmenter": [f.name for f in predictor.tta_segmenter],
            },
            "reducer": predictor.reducer,
            "rules": predictor.rules.to_dict(),
            "thresholds": thresholds,
            "versions": _versions(opset),
            "opset": opset,
            "export_check": checks,
        }
        atomic_write_text(staged / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        if int8_calibration is not None:
            quantize_bundle(staged, int8_calibration, log)
        if out.exists() and not force:
            raise ExportError(f"{out}: exists (written while exporting); pass --force to replace it")
        replace_folder(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return out


@dataclass
class ParityReport:
    """Masks of two runtimes compared per (image, class) pair (Dice, empty-on-empty = 1) and pixel by pixel."""

    images: int
    pairs: int
    min_dice: float
    pairs_below: int  # pairs with Dice < PARITY_DICE
    identical_pairs: int
    differing_pixels: int  # pixels whose 0/1 value differs, over all pairs
    mask_pixels: int  # predicted pixels of the reference, over all pairs
    gate_differences: int  # images the gate sent to the segmenters in one runtime only
    max_seg_diff: float  # max |p_ref - p_other| of the ensemble segmentation probability
    max_cls_diff: float  # max |p_ref - p_other| of the ensemble classifier probability

    @property
    def ok(self) -> bool:
        return self.pairs_below == 0

    def format(self) -> str:
        return (
            f"parity: {self.images} images, {self.pairs} pairs: min Dice {self.min_dice:.6f}, "
            f"{self.pairs_below} pairs below {PARITY_DICE}, {self.identical_pairs} identical; "
            f"{self.differing_pixels} differing pixels of {self.mask_pixels} predicted; "
            f"{self.gate_differences} gate differences; max |dp| segmentation {self.max_seg_diff:.2e}, "
            f"classifier {self.max_cls_diff:.2e} -> {'OK' if self.ok else 'FAILED'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "threshold": PARITY_DICE, "ok": self.ok}


def parity(
    reference: GatedEnsemble, other: GatedEnsemble, paths: Sequence[Path | str], batch_size: int = 4
) -> ParityReport:
    """Run both ensembles on the same decoded inputs of ``paths`` and compare their masks and probabilities."""
    from scoring.arrays import to_numpy

    if [p.key for p in reference.preprocesses] != [p.key for p in other.preprocesses]:
        raise BundleError("the two ensembles preprocess differently; they are not the same ensemble")
    dices, identical, differing, pixels, gates, seg_diff, cls_diff = [], 0, 0, 0, 0, 0.0, 0.0
    for _, inputs in iter_batches(paths, reference.preprocesses, batch_size):
        a, b = reference.predict_result(inputs), other.predict_result(inputs)
        if a.cls_prob is not None:
            cls_diff = max(cls_diff, float(np.abs(a.cls_prob - b.cls_prob).max()))
        gates += len(set(a.keep.tolist()) ^ set(b.keep.tolist()))
        if a.seg_prob is not None and np.array_equal(a.keep, b.keep):
            seg_diff = max(seg_diff, float(np.abs(to_numpy(a.seg_prob) - to_numpy(b.seg_prob)).max()))
        for ma, mb in zip(a.masks.reshape(-1, *IMAGE_SHAPE), b.masks.reshape(-1, *IMAGE_SHAPE)):
            dices.append(dice(mb, ma))
            diff = int(np.count_nonzero(ma != mb))
            identical += diff == 0
            differing += diff
            pixels += int(np.count_nonzero(ma))
    scores = np.asarray(dices) if dices else np.ones(1)
    return ParityReport(
        len(paths),
        len(dices),
        float(scores.min()),
        int((scores < PARITY_DICE).sum()),
        identical,
        differing,
        pixels,
        gates,
        seg_diff,
        cls_diff,
    )


def _compose(overrides: Sequence[str]) -> dict[str, Any]:
    """The infer config sections the export reads (the same composition as ``python infer.py <overrides>``)."""
    from ensemble.settings import InferSettings, compose_infer, section

    cfg = compose_infer(overrides)
    settings = InferSettings.from_config(section(cfg, "thresholds", "channels_last", "images"))
    plain = section(cfg, "checkpoints", "tta", "ensemble", "postprocess", "data")
    plain.update(
        {
            "thresholds": settings.thresholds,
            "device": "cpu",
            "channels_last": settings.channels_last,
            "images": settings.images,
        }
    )
    return plain


def _parity_paths(cfg: Mapping[str, Any], limit: int | None) -> list[Path]:
    from ensemble.run import image_set

    dataset = image_set({**cfg, "evaluate": False})
    ids = dataset.image_ids[:limit] if limit else dataset.image_ids
    return [dataset.path(i) for i in ids]


def _parser() -> argparse.ArgumentParser:
    from ensemble.settings import override_parser

    parser = override_parser(
        "deploy.export",
        __doc__,
        "(the bundle holds the ensemble 'python infer.py <overrides>' runs: checkpoints, tta, ensemble, "
        "postprocess, thresholds).",
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET}, at least 18)")
    parser.add_argument(
        "--parity",
        action="store_true",
        help="compare the bundle with torch on the config's images (images=...; default the "
        "synthetic test set) and write BUNDLE/parity.json",
    )
    parser.add_argument("--parity-limit", type=int, default=None, help="only the first N images for --parity")
    parser.add_argument(
        "--no-flips-in-graph",
        dest="flips_in_graph",
        action="store_false",
        help="leave the TTA flips to the runtime (one batched run per member, a resize per flip) "
        "instead of inside each member's graph (the default with the mean reducer)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="quantise the members to INT8 (static, QDQ, per-channel; measured on the demo: 0.95-1.09x "
        "the float32 speed on an AVX2 CPU and a held-out loss: README Deploy)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help=f"--int8: training images of the data root to calibrate on (default {CALIBRATION_IMAGES})",
    )
    parser.add_argument("overrides", nargs="*", help="infer.py overrides, e.g. checkpoints.segmenter=[runs/seg]")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    from ensemble.settings import split_overrides

    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    extra, overrides = split_overrides(args.overrides)
    if extra:
        raise ExportError(f"unexpected arguments {extra}: give infer.py overrides (key=value) and --out")
    if args.opset < OPSET:
        raise ExportError(f"--opset {args.opset}: at least {OPSET} is needed (Resize with antialias)")
    if args.parity_limit is not None and args.parity_limit < 1:
        raise ExportError(f"--parity-limit {args.parity_limit}: give at least 1 image (or leave it out for all)")
    if args.out.exists() and not args.force:  # checked before the members are loaded and exported
        raise ExportError(f"--out {args.out}: exists; choose another --out or pass --force to replace it")
    if args.calibration_images is not None and not args.int8:
        raise ExportError(
            f"--calibration-images {args.calibration_images}: only used with --int8; add --int8 or leave it out"
        )
    check_writable(args.out, "--out", directory=True)
    cfg = _compose(overrides)
    calibration = (
        calibration_images(
            cfg["data"]["root"], CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
        )
        if args.int8
        else None
    )
    with exportable_layers():
        predictor = build_predictor(cfg)
    print(f"export: {len(predictor.members)} members -> {args.out}")
    out = export_bundle(
        predictor,
        args.out,
        cfg["thresholds"],
        args.opset,
        args.force,
        flips_in_graph=args.flips_in_graph,
        int8_calibration=calibration,
    )
    print(
        f"bundle: {out} ({MANIFEST} + {len(predictor.members)} ONNX files; gating {predictor.rules.gating}, "
        f"TTA {[f.name for f in predictor.tta_segmenter]}, reducer {predictor.reducer})"
    )
    if args.parity:
        report = parity(predictor, load_bundle(out), _parity_paths(cfg, args.parity_limit))
        atomic_write_text(out / "parity.json", json.dumps(report.to_dict(), indent=2) + "\n")
        print(report.format())
        if not report.ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
