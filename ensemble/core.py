"""The ensemble's order of work, shared by the PyTorch predictor and the ONNX runtime (torch-free).

A runtime supplies one thing: a member's network run on a batch (``_run``), giving probabilities at the
image size (``(mask probabilities, label probabilities)`` for a joint member). Everything else is defined
here once: the preprocessing slots (members with equal preprocessing share one input), which members run on
which images (joint and classifier members on every image, then the gate on their probabilities, then the
segmenters on the images it lets through), the TTA flips and their un-flipping, the reducer, post-processing,
the per-image result and the submission rows.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from common.config import whole_number
from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.images import read_image
from common.preprocess import Preprocess
from common.rle import encode
from ensemble.timing import Timer
from scoring.arrays import to_numpy
from scoring.gating import get_gate, segment_needed
from scoring.postprocess import max_probability, postprocess
from scoring.reduce import make_reducer
from scoring.rules import Rules, RulesError
from scoring.tta import Flip, augment_all, split_outputs, transforms

__all__ = [
    "KINDS",
    "cpu_count",
    "Stats",
    "check_members",
    "MemberInfo",
    "prepare_inputs",
    "read_inputs",
    "stack_inputs",
    "iter_batches",
    "split_joint",
    "rows_of",
    "ImagePrediction",
    "BatchResult",
    "GatedEnsemble",
    "resolve_batch_size",
]


KINDS = ("classifier", "segmenter", "joint")


def cpu_count() -> int:
    """The number of cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class Stats:
    """Counters for the benchmark and the log: images seen and segmenter passes run/skipped."""

    images: int = 0
    segmented: int = 0
    seg_passes: int = 0
    seg_passes_skipped: int = 0

    @property
    def skipped_share(self) -> float:
        total = self.seg_passes + self.seg_passes_skipped
        return self.seg_passes_skipped / total if total else 0.0


@dataclass
class MemberInfo:
    """What the work order needs of a member besides its network: kind, preprocessing, weight, provenance."""

    kind: str
    path: Path
    preprocess: Preprocess
    weight: float = 1.0
    fold: Any = None

    @property
    def gives_masks(self) -> bool:
        return self.kind in ("segmenter", "joint")

    @property
    def gives_labels(self) -> bool:
        return self.kind in ("classifier", "joint")


def prepare_inputs(rgb: np.ndarray, preprocesses: Sequence[Preprocess]) -> list[np.ndarray]:
    """One uint8 RGB (256, 1600, 3) image -> its float32 (C, h, w) network input per preprocessing."""
    if rgb.shape != (*IMAGE_SHAPE, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image of shape {(*IMAGE_SHAPE, 3)}, got {rgb.dtype} {rgb.shape}")
    return [p(rgb) for p in preprocesses]


def read_inputs(path: Path | str, preprocesses: Sequence[Preprocess]) -> list[np.ndarray]:
    """One image file, read by content once -> its float32 (C, h, w) network input per preprocessing."""
    return prepare_inputs(read_image(path, channels=3), preprocesses)


def stack_inputs(items: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per-image input lists -> one (B, C, h, w) batch per preprocessing slot."""
    return [np.stack([item[s] for item in items]) for s in range(len(items[0]))]


def iter_batches(
    paths: Sequence[Path | str], preprocesses: Sequence[Preprocess], batch_size: int = 4, num_workers: int = 0
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(indices, inputs per preprocessing slot) of consecutive batches; ``num_workers`` threads read ahead at
    most ``num_workers + 1`` batches (OpenCV decodes with the GIL released), so memory stays bounded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = (list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size))

    def load(chunk: list[int]) -> tuple[list[int], list[np.ndarray]]:
        return chunk, stack_inputs([read_inputs(paths[i], preprocesses) for i in chunk])

    if num_workers <= 0:
        yield from map(load, chunks)
        return
    with ThreadPoolExecutor(num_workers, thread_name_prefix="steelseg-read") as pool:
        pending = deque(pool.submit(load, c) for c in islice(chunks, num_workers + 1))
        while pending:
            done = pending.popleft().result()
            pending.extend(pool.submit(load, c) for c in islice(chunks, 1))
            yield done


def split_joint(output: Any) -> tuple[Any, Any]:
    """(mask output, label output) of a joint member."""
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise RulesError(f"a joint member must return (mask_logits, label_logits), got {type(output).__name__}")
    return output[0], output[1]


def rows_of(image_id: str, masks: np.ndarray) -> list[tuple[str, int, str]]:
    """Long-form rows (ImageId, ClassId, RLE or '') of one image, every class once."""
    return [(image_id, c, encode(masks[i])) for i, c in enumerate(CLASS_IDS)]


@dataclass
class ImagePrediction:
    """One image's result: masks (4, H, W), classifier probabilities (4,) or None, and the per-class maximum
    of the ensemble segmentation probability (NaN where the gate kept the image from the segmenters)."""

    image_id: str
    masks: np.ndarray
    classifier_probability: np.ndarray | None
    max_probability: np.ndarray

    @property
    def segmented(self) -> bool:
        return not np.isnan(self.max_probability).all()

    def rows(self) -> list[tuple[str, int, str]]:
        return rows_of(self.image_id, self.masks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per class its RLE, area (pixels), maximum probability and classifier probability."""
        classes = []
        for i, (_, class_id, rle) in enumerate(self.rows()):
            top = float(self.max_probability[i])
            cls = None if self.classifier_probability is None else float(self.classifier_probability[i])
            classes.append(
                {
                    "class_id": class_id,
                    "rle": rle,
                    "area": int(np.count_nonzero(self.masks[i])),
                    "max_probability": None if np.isnan(top) else top,
                    "classifier_probability": cls,
                }
            )
        return {
            "image_id": self.image_id,
            "segmented": self.segmented,
            "classes": classes,
            "defects": [c["class_id"] for c in classes if c["rle"]],
        }


@dataclass
class BatchResult:
    """One batch: classifier probabilities (B, 4) or None, per-class maximum segmentation probability (B, 4;
    NaN for the images the gate skipped), uint8 masks (B, 4, H, W), and the segmentation probabilities
    (K, 4, H, W; the runtime's array type) of the K images in ``keep`` (None when K = 0)."""

    cls_prob: np.ndarray | None
    max_prob: np.ndarray
    masks: np.ndarray
    seg_prob: Any
    keep: np.ndarray

    def image(self, j: int, image_id: str) -> ImagePrediction:
        cls = None if self.cls_prob is None else self.cls_prob[j]
        return ImagePrediction(image_id, self.masks[j], cls, self.max_prob[j])


def resolve_batch_size(value: Any, runtime: GatedEnsemble) -> int:
    """``batch_size`` from a config: a whole number >= 1 as given, or ``auto`` / null -> the runtime's rule for
    its device (``auto_batch_size``: by free memory on CUDA, 4 on a CPU)."""
    if value is None or value == "auto":
        return runtime.auto_batch_size()
    return whole_number(value, "batch_size", minimum=1, note=" (or auto: chosen for the device)")


def check_members(kinds: Iterable[str], rules: Rules) -> None:
    """Refuse a set of member kinds that cannot make a submission under ``rules`` (callers such as the
    dashboard may check before loading any model)."""
    kinds = set(kinds)
    if not kinds & {"segmenter", "joint"}:
        raise RulesError(
            "checkpoints.segmenter / checkpoints.joint: no segmenting member given; a submission needs at least one"
        )
    get_gate(rules.gating)
    if rules.needs_classifier and not kinds & {"classifier", "joint"}:
        raise RulesError(
            f"gating mode {rules.gating!r} needs classifier or joint checkpoints "
            "(checkpoints.classifier / checkpoints.joint); use ensemble.gating.mode=none or label"
        )


@dataclass
class GatedEnsemble:
    """Classifier, segmenter and joint members with TTA, a reducer and rules: the work order of both runtimes.

    Runtimes subclass it (adding their own fields), implement ``_run`` and ``_batches`` and may override
    ``_input`` (device moves); ``__post_init__`` checks the ensemble and assigns the preprocessing slots.
    """

    classifiers: list
    segmenters: list
    rules: Rules
    tta_classifier: list = field(default_factory=lambda: transforms(["none"]))
    tta_segmenter: list = field(default_factory=lambda: transforms(["none"]))
    reducer: str = "mean"
    joints: list = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    timer: Timer = field(default_factory=Timer)  # waiting_for_data, decode_in_workers, host_to_device, forward,
    # postprocess (+ rle, write in ensemble.run); off by default
    batch_flips: bool = True  # every TTA flip of a batch in one forward pass (False: one pass per flip)

    @property
    def members(self) -> list:
        return self.classifiers + self.joints + self.segmenters

    def __post_init__(self) -> None:
        """Check the ensemble and give each member its preprocessing slot."""
        check_members(
            [
                *(["classifier"] if self.classifiers else []),
                *(["segmenter"] if self.segmenters else []),
                *(["joint"] if self.joints else []),
            ],
            self.rules,
        )
        make_reducer(self.reducer)
        self.preprocesses: list[Preprocess] = []
        self._slot: dict[int, int] = {}
        for member in self.members:
            keys = [p.key for p in self.preprocesses]
            if member.preprocess.key not in keys:
                self.preprocesses.append(member.preprocess)
                keys.append(member.preprocess.key)
            self._slot[id(member)] = keys.index(member.preprocess.key)

    def _input(self, member: Any, inputs: Sequence[Any], keep: np.ndarray | None) -> Any:
        """The member's input batch (its preprocessing slot), restricted to the images ``keep``."""
        x = inputs[self._slot[id(member)]]
        return x if keep is None else x[keep]

    def _run(self, member: Any, x: Any) -> Any:
        """The member's probabilities at the image size for the batch ``x`` (a pair for a joint member)."""
        raise NotImplementedError

    def _batches(
        self, paths: Sequence[Path | str], batch_size: int, num_workers: int
    ) -> Iterable[tuple[list[int], list[Any]]]:
        """(indices into ``paths``, inputs per preprocessing slot) per batch, in file order."""
        raise NotImplementedError

    def auto_batch_size(self) -> int:
        """The batch size when none is asked for (``batch_size=auto``): 4, small for a CPU (runtimes override)."""
        return 4

    def _run_flips(self, member: Any, x: Any, flips: list[Flip]) -> list[tuple[Flip, Any]]:
        """(flip, the member's output for the flipped batch) per flip: one forward pass of every flipped copy
        concatenated on the batch axis (``batch_flips``), else one pass per flip."""
        if not self.batch_flips or len(flips) == 1:
            return [(flip, self._run(member, flip.augment(x))) for flip in flips]
        return list(zip(flips, split_outputs(self._run(member, augment_all(flips, x)), len(flips))))

    def probabilities(self, inputs: Sequence[Any], gate: bool = True) -> tuple[np.ndarray | None, Any, np.ndarray]:
        """(classifier probabilities (B, 4) or None, segmentation probabilities (K, 4, H, W) of the K images the
        gate lets through (all of them with ``gate=False``; None when K = 0), their indices (K,))."""
        batch = len(inputs[0])
        labels, masks = make_reducer(self.reducer), make_reducer(self.reducer)
        for member in self.joints:  # one pass gives both heads, with the segmenter TTA
            for flip, output in self._run_flips(member, self._input(member, inputs, None), self.tta_segmenter):
                mask_prob, label_prob = split_joint(output)
                masks.add(flip.deaugment(mask_prob), member.weight)
                labels.add(label_prob, member.weight)
        for member in self.classifiers:
            for _, output in self._run_flips(member, self._input(member, inputs, None), self.tta_classifier):
                labels.add(output, member.weight)
        cls_prob = to_numpy(labels.result()).astype(np.float64) if labels.count else None
        needed = segment_needed(cls_prob, self.rules) if gate else None
        keep = np.arange(batch) if needed is None else np.flatnonzero(needed)
        passes = len(self.segmenters) * len(self.tta_segmenter)
        self.stats.images += batch
        self.stats.segmented += len(keep)
        self.stats.seg_passes += passes * len(keep)
        self.stats.seg_passes_skipped += passes * (batch - len(keep))
        if not len(keep):
            return cls_prob, None, keep
        index = None if len(keep) == batch else keep
        if index is not None and masks.count:
            masks.select(index)
        for member in self.segmenters:
            for flip, output in self._run_flips(member, self._input(member, inputs, index), self.tta_segmenter):
                masks.add(flip.deaugment(output), member.weight)
        return cls_prob, masks.result(), keep

    def predict_result(self, inputs: Sequence[Any], gate: bool = True) -> BatchResult:
        """Inputs per preprocessing slot -> the batch's probabilities summary and post-processed masks
        (``gate=False``: the segmenters see every image, as the pseudo-labeller needs)."""
        batch = len(inputs[0])
        with self.timer.section("forward"):
            cls_prob, seg, keep = self.probabilities(inputs, gate)
        masks = np.zeros((batch, len(CLASS_IDS), *IMAGE_SHAPE), np.uint8)
        max_prob = np.full((batch, len(CLASS_IDS)), np.nan)
        if seg is not None:
            with self.timer.section("postprocess"):
                top = max_probability(seg)
                max_prob[keep] = top
                masks[keep] = postprocess(seg, None if cls_prob is None else cls_prob[keep], self.rules, top)
        return BatchResult(cls_prob, max_prob, masks, seg, keep)

    def predict_batch(self, inputs: Sequence[Any]) -> tuple[np.ndarray | None, np.ndarray]:
        """Inputs per preprocessing slot -> (classifier probabilities (B, 4) or None, uint8 masks (B, 4, H, W))."""
        result = self.predict_result(inputs)
        return result.cls_prob, result.masks

    def iter_batch_results(
        self,
        paths: Sequence[Path | str],
        batch_size: int = 4,
        num_workers: int = 0,
        progress: bool = False,
        gate: bool = True,
    ) -> Iterator[tuple[list[str], BatchResult]]:
        """(image names, ``BatchResult``) per batch of image files, in order; nothing is kept beyond the batch."""
        batches = self._batches(paths, batch_size, num_workers)
        if progress:
            from tqdm import tqdm

            batches = tqdm(
                batches, total=-(-len(paths) // batch_size), unit="batch", desc="predict", dynamic_ncols=True
            )
        batches = iter(batches)
        while True:
            with self.timer.section("waiting_for_data"):
                item = next(batches, None)
            if item is None:
                return
            indices, inputs = item
            yield [Path(paths[index]).name for index in indices], self.predict_result(inputs, gate)

    def iter_results(
        self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0, progress: bool = False
    ) -> Iterator[ImagePrediction]:
        """One ``ImagePrediction`` per image file, in order; nothing is kept beyond the current batch."""
        for names, result in self.iter_batch_results(paths, batch_size, num_workers, progress):
            for j, name in enumerate(names):
                yield result.image(j, name)

    def iter_predictions(
        self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0, progress: bool = False
    ) -> Iterator[tuple[str, np.ndarray | None, np.ndarray]]:
        """Yield (image name, classifier probabilities or None, masks (4, H, W)) per image, in order."""
        for item in self.iter_results(paths, batch_size, num_workers, progress):
            yield item.image_id, item.classifier_probability, item.masks
