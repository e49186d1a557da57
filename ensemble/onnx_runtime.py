"""Run a deploy bundle (``python -m deploy.export``) with ONNX Runtime: NumPy, OpenCV and onnxruntime, no torch.

Python API::

    from ensemble.onnx_runtime import load_bundle
    predictor = load_bundle("bundle/")                  # checks bundle.json and the sha256 of every file
    [result] = predictor.predict_images([rgb])          # uint8 RGB (256, 1600, 3) arrays
    result.masks, result.rows(), result.to_dict()       # (4, H, W) masks, (ImageId, ClassId, RLE) rows, JSON
    for result in predictor.iter_results(paths): ...    # streaming over image files

``python infer.py runtime=onnx bundle=BUNDLE`` runs the job of the PyTorch runtime (streaming, atomic
submission, ``evaluate=``, ``store=``) on the bundle. The work order (gate, TTA, reducer, post-processing) is
``ensemble.core.GatedEnsemble``, the one the PyTorch predictor runs; each ONNX file already gives
probabilities at the image size (``ensemble.predict.MemberNet``).

A member whose entry lists ``tta_in_graph`` (the export's default with the mean reducer) holds its TTA flips in
its graph (``deploy.export.FlipsInGraph``: one pass, the flips averaged before the one resize to 256x1600): it is
run once on the plain batch, and its output enters the reducer once, the mean over its flips.

``bundle.json`` (format ``steelseg-bundle``, version 2; version 1, without ``tta_in_graph``, still loads) holds
plain data only, nothing executed::

    {"format": "steelseg-bundle", "version": 2, "class_ids": [1, 2, 3, 4], "image_shape": [256, 1600],
     "members": [{"name": "classifier_0", "kind": "classifier", "file": "classifier_0.onnx", "sha256": "...",
                  "weight": 1.0, "preprocess": {"channels": 3, "mean": [...], "std": [...], "size": [96, 600]},
                  "input": "input", "outputs": ["labels"], "tta_in_graph": ["none", "hflip"],
                  "precision": "float32", "source": "...best.pt", "fold": 0}, ...],
     "tta": {"classifier": ["none"], "segmenter": ["none", "hflip"]}, "reducer": "mean",
     "rules": {Rules.to_dict(): thresholds, areas, gating, bins}, "thresholds": "source file or null",
     "versions": {...}, "opset": 18, "export_check": {"classifier_0": max |torch - onnx|, ...}}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from common.config import check_known, whole_number
from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.errors import ConfigError, SteelsegError
from common.preprocess import Preprocess
from ensemble.bundle_check import check_members, member_weight
from ensemble.core import (
    KINDS,
    GatedEnsemble,
    ImagePrediction,
    MemberInfo,
    cpu_count,
    iter_batches,
    prepare_inputs,
    stack_inputs,
)
from scoring.reduce import make_reducer
from scoring.rules import Rules, RulesError, read_thresholds
from scoring.tta import Flip, transforms

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "READABLE_VERSIONS",
    "MANIFEST",
    "OUTPUTS",
    "BundleError",
    "sha256_of",
    "read_manifest",
    "BundleMember",
    "OnnxPredictor",
    "OPTIMIZATION_LEVELS",
    "session_options",
    "load_bundle",
    "providers_for",
    "predictor_from_config",
]

BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST = "steelseg-bundle", 2, "bundle.json"
READABLE_VERSIONS = (1, 2)  # 2 added tta_in_graph: a version-1 runtime would flip a flip-averaging graph again
NO_FLIP = transforms(["none"])[0]
OUTPUTS: dict[str, tuple[str, ...]] = {"classifier": ("labels",), "segmenter": ("masks",), "joint": ("masks", "labels")}


class BundleError(SteelsegError, ValueError):
    """A bundle folder that is missing, changed since export or inconsistent; the message names the file and key."""


def sha256_of(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _need(node: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in node:
        raise BundleError(f"{where}: missing key {key!r}")
    if not isinstance(node[key], kind):
        raise BundleError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {node[key]!r}")
    return node[key]


def read_manifest(folder: Path | str) -> dict[str, Any]:
    """``bundle.json`` of a bundle folder, checked: format, classes, image size, member entries and the sha256 of
    every member file (a file changed after export is refused)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: not a bundle folder (no {MANIFEST}); write one with python -m deploy.export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise BundleError(
            f"{path}: bundle version {manifest.get('version')!r}, this runtime reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}; "
            "re-export with this version of steelseg"
        )
    if manifest.get("class_ids") != list(CLASS_IDS) or manifest.get("image_shape") != list(IMAGE_SHAPE):
        raise BundleError(
            f"{path}: bundle for classes {manifest.get('class_ids')} and images "
            f"{manifest.get('image_shape')}, expected {list(CLASS_IDS)} and {list(IMAGE_SHAPE)}"
        )
    members = _need(manifest, "members", list, str(path))
    names = set()
    for i, entry in enumerate(members):
        where = f"{path}: members[{i}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: expected an object, got {entry!r}")
        kind, name, file = (_need(entry, k, str, where) for k in ("kind", "name", "file"))
        if kind not in KINDS:
            raise BundleError(f"{where}.kind: {kind!r} is not one of {list(KINDS)}")
        if name in names:
            raise BundleError(f"{where}.name: {name!r} appears twice")
        names.add(name)
        if Path(file).name != file or file in ("", ".", ".."):
            raise BundleError(f"{where}.file: {file!r} must be a file name inside the bundle folder")
        target = folder / file
        if not target.is_file():
            raise BundleError(f"{target}: member file missing from the bundle")
        if sha256_of(target) != _need(entry, "sha256", str, where):
            raise BundleError(
                f"{target}: sha256 differs from {MANIFEST}: the file changed or is corrupt; re-export "
                "the bundle or copy it again"
            )
    return manifest


@dataclass
class BundleMember(MemberInfo):
    """One ONNX member: its name in the bundle and its ONNX Runtime session (``path``: the .onnx file)."""

    name: str = field(kw_only=True)
    session: Any = field(kw_only=True)
    tta_in_graph: tuple[str, ...] = field(default=(), kw_only=True)  # TTA flips the graph runs and averages itself

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name


@dataclass
class OnnxPredictor(GatedEnsemble):
    """The bundle's ensemble (``BundleMember``s) on ONNX Runtime sessions; the methods of ``GatedEnsemble``, as
    ``ensemble.predict.Predictor`` has them, plus ``predict_images``/``predict_files``."""

    folder: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    def _run(self, member: BundleMember, x: np.ndarray) -> Any:
        outputs = member.session.run(None, {member.input_name: np.ascontiguousarray(x, np.float32)})
        return tuple(outputs) if member.kind == "joint" else outputs[0]

    def _run_flips(self, member: BundleMember, x: np.ndarray, flips: list[Flip]) -> list[tuple[Flip, Any]]:
        """A member with its TTA in the graph: one run on the plain batch, whose output is already the mean over
        ``flips``; any other member: ``GatedEnsemble._run_flips``."""
        if not member.tta_in_graph:
            return super()._run_flips(member, x, flips)
        if tuple(f.name for f in flips) != member.tta_in_graph or self.reducer != "mean":
            raise BundleError(
                f"{member.name}: its graph averages the TTA flips {list(member.tta_in_graph)} (mean "
                f"reducer); this ensemble asks for {[f.name for f in flips]} with reducer "
                f"{self.reducer!r}: re-export with those settings or with --no-flips-in-graph"
            )
        return [(NO_FLIP, self._run(member, x))]

    def _batches(
        self, paths: Sequence[Path | str], batch_size: int, num_workers: int
    ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        return iter_batches(paths, self.preprocesses, batch_size, num_workers)

    def predict_images(
        self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None
    ) -> list[ImagePrediction]:
        """Predict decoded uint8 RGB (256, 1600, 3) images as one batch; ``image_ids`` default to their indices."""
        if not len(images):
            return []
        ids = [str(i) for i in range(len(images))] if image_ids is None else [str(i) for i in image_ids]
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} image ids")
        result = self.predict_result(stack_inputs([prepare_inputs(rgb, self.preprocesses) for rgb in images]))
        return [result.image(j, image_id) for j, image_id in enumerate(ids)]

    def predict_files(self, paths: Sequence[Path | str], batch_size: int = 4) -> list[ImagePrediction]:
        """Predict image files (read by content); one result per file, in order."""
        return list(self.iter_results(paths, batch_size))

    def describe(self) -> str:
        """One line: the bundle, its members and rules."""
        members = ", ".join(f"{m.name}" for m in self.members)
        return (
            f"bundle {self.folder}: {len(self.members)} members ({members}), TTA classifier "
            f"{[f.name for f in self.tta_classifier]} segmenter {[f.name for f in self.tta_segmenter]}, "
            f"reducer {self.reducer}, gating {self.rules.gating}, {self.threads} threads"
        )


OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def session_options(threads: int | None = None, optimization: str = "all") -> Any:
    """ONNX Runtime options: ``threads`` intra-op threads (default: every core), graph ``optimization`` level
    (``all``, the default, adds the CPU layout transform NCHWc: the fastest level in ``benchmarks/bench_onnx.py``)."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise ConfigError(f"optimization: {optimization!r} is not one of {list(OPTIMIZATION_LEVELS)}")

    options = ort.SessionOptions()
    options.intra_op_num_threads = whole_number(threads, "threads", note=" (0 or null: every core)") or cpu_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel,
        "ORT_DISABLE_ALL" if optimization == "disable" else f"ORT_ENABLE_{optimization.upper()}",
    )
    options.log_severity_level = 3
    return options


def providers_for(device: str = "cpu", providers: Sequence[str] | None = None) -> list[str]:
    """Execution providers: ``providers`` as given, else from ``device`` (cpu | cuda | auto); unavailable ones
    are an error that lists what this onnxruntime build has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        chosen = [str(p) for p in providers]
    elif device == "auto":
        chosen = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"]
        )
    elif device.startswith("cuda"):
        chosen = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif device == "cpu":
        chosen = ["CPUExecutionProvider"]
    else:
        raise ConfigError(f"device: {device!r} is not cpu, cuda or auto")
    missing = [p for p in chosen if p not in available]
    if missing:
        raise ConfigError(
            f"providers: {missing} not in this onnxruntime build (available: {available}); "
            "use device=cpu or install the onnxruntime package that has them"
        )
    return chosen


def _member(folder: Path, entry: Mapping[str, Any], options: Any, providers: list[str], tta: list[str]) -> BundleMember:
    import onnxruntime as ort

    where = f"{folder / MANIFEST}: member {entry['name']}"
    try:
        preprocess = Preprocess.from_meta(entry.get("preprocess"))
    except ConfigError as exc:
        raise BundleError(f"{where}: bad preprocess: {exc}") from exc
    weight = member_weight(entry.get("weight", 1.0), where)
    in_graph = entry.get("tta_in_graph", [])
    if in_graph and in_graph != tta:
        raise BundleError(f"{where}: tta_in_graph {in_graph!r} differs from the bundle's {entry['kind']} TTA {tta!r}")
    path = folder / entry["file"]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
    outputs = [o.name for o in session.get_outputs()]
    if len(session.get_inputs()) != 1 or len(outputs) != len(OUTPUTS[entry["kind"]]):
        raise BundleError(
            f"{path}: a {entry['kind']} member needs 1 input and outputs {list(OUTPUTS[entry['kind']])}, "
            f"the file has {len(session.get_inputs())} input(s) and outputs {outputs}"
        )
    return BundleMember(
        entry["kind"],
        path,
        preprocess,
        float(weight),
        entry.get("fold"),
        name=entry["name"],
        session=session,
        tta_in_graph=tuple(in_graph),
    )


def _rules(manifest: Mapping[str, Any], where: str) -> Rules:
    node = manifest.get("rules")
    if not isinstance(node, dict):
        raise BundleError(f"{where}: missing 'rules' object")
    check_known(node, [f.name for f in fields(Rules)], f"{where}: rules", BundleError)
    try:
        return Rules(**node)
    except (RulesError, TypeError) as exc:
        raise BundleError(f"{where}: bad rules: {exc}") from exc


def load_bundle(
    folder: Path | str,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    thresholds: Path | str | None = None,
    optimization: str = "all",
) -> OnnxPredictor:
    """A predictor from a bundle folder; ``thresholds``: a thresholds file replacing the bundle's tuned values;
    ``optimization``: ONNX Runtime's graph optimisation level (``session_options``)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    where = str(folder / MANIFEST)
    rules = _rules(manifest, where)
    if thresholds:
        rules = read_thresholds(thresholds, rules)
    tta = manifest.get("tta") or {}
    try:
        tta_classifier = transforms(list(tta.get("classifier", ["none"])))
        tta_segmenter = transforms(list(tta.get("segmenter", ["none"])))
        reducer = str(manifest.get("reducer", "mean"))
        make_reducer(reducer)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where}: {exc}") from exc
    options = session_options(threads, optimization)
    chosen = providers_for("cpu", providers)
    flips = {"classifier": [f.name for f in tta_classifier], "segmenter": [f.name for f in tta_segmenter]}
    members = [
        _member(folder, entry, options, chosen, flips["classifier" if entry["kind"] == "classifier" else "segmenter"])
        for entry in manifest["members"]
    ]
    check_members(members, where)
    if reducer != "mean" and any(m.tta_in_graph for m in members):
        raise BundleError(
            f"{where}: reducer {reducer!r} with members whose graphs average their flips (tta_in_graph): "
            "only the mean reducer can; re-export the bundle"
        )
    by_kind = {kind: [m for m in members if m.kind == kind] for kind in KINDS}
    try:
        return OnnxPredictor(
            by_kind["classifier"],
            by_kind["segmenter"],
            rules,
            tta_classifier,
            tta_segmenter,
            reducer,
            by_kind["joint"],
            folder=folder,
            manifest=manifest,
            threads=options.intra_op_num_threads,
        )
    except RulesError as exc:
        raise BundleError(f"{where}: {exc}") from exc


def predictor_from_config(cfg: Mapping[str, Any]) -> OnnxPredictor:
    """The ONNX predictor of an infer config: ``bundle``, ``threads``, ``device``/``providers``, ``thresholds``."""
    from ensemble.settings import InferSettings

    settings = InferSettings.from_config(cfg)
    if not settings.bundle:
        raise ConfigError("bundle: runtime=onnx needs bundle=<folder written by python -m deploy.export>")
    providers = providers_for(settings.device, settings.providers)
    predictor = load_bundle(settings.bundle, settings.threads, providers, settings.thresholds)
    print(
        f"runtime onnx: {predictor.describe()}; members, TTA, reducer and rules come from the bundle"
        + (f", thresholds from {settings.thresholds}" if settings.thresholds else "")
    )
    return predictor
