"""Streaming predictor: DataLoader batches -> classifier/joint members -> gated segmenters x TTA -> reduce -> masks.

The loader reads each image once and applies every member's ``Preprocess`` (the object training used,
rebuilt from checkpoint meta) in its workers, so the network input is bit-identical to training's
validation input. Nothing grows with the number of images: each batch is predicted, post-processed and
handed on (``iter_predictions``) before the next is read. ``predict_images`` is the plain-function entry
for callers such as the dashboard.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.constants import CLASS_IDS, IMAGE_SHAPE, LONG_COLUMNS
from common.images import read_image
from common.preprocess import Preprocess
from common.rle import encode
from ensemble.gating import get_gate, segment_needed
from ensemble.members import Member, load_members
from ensemble.postprocess import postprocess
from ensemble.reduce import make_reducer
from ensemble.rules import Rules, RulesError, read_thresholds, rules_from_config
from ensemble.tta import Flip, transforms

__all__ = ["ImageFiles", "set_threads", "Stats", "check_members", "Predictor", "rows_of", "load_rules", "build_predictor",
           "predict_images"]


class ImageFiles(Dataset):
    """Items ``{"index": i, "inputs": [float32 tensor per preprocessing]}`` of image files read by content."""

    def __init__(self, paths: Sequence[Path | str], preprocesses: Sequence[Preprocess]) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocesses = list(preprocesses)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb = read_image(self.paths[index], channels=3)
        return {"index": index, "inputs": [torch.from_numpy(p(rgb)) for p in self.preprocesses]}


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: every core this process may run on)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = int(threads or cores)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


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


def check_members(kinds: Iterable[str], rules: Rules) -> None:
    """Refuse a set of member kinds that cannot make a submission under ``rules`` (callers may check first)."""
    kinds = set(kinds)
    if not kinds & {"segmenter", "joint"}:
        raise RulesError("checkpoints.segmenter / checkpoints.joint: no segmenting member given; "
                         "a submission needs at least one")
    get_gate(rules.gating)
    if rules.needs_classifier and not kinds & {"classifier", "joint"}:
        raise RulesError(f"gating mode {rules.gating!r} needs classifier or joint checkpoints "
                         "(checkpoints.classifier / checkpoints.joint); use ensemble.gating.mode=none or label")


def _split(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask logits, label logits) of a joint member's output."""
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise RulesError(f"a joint member must return (mask_logits, label_logits), got {type(output).__name__}")
    return output[0], output[1]


@dataclass
class Predictor:
    """Ensemble of classifier, segmenter and joint members with TTA, a reducer and post-processing rules."""

    classifiers: list[Member]
    segmenters: list[Member]
    rules: Rules
    tta_classifier: list[Flip] = field(default_factory=lambda: transforms(["none"]))
    tta_segmenter: list[Flip] = field(default_factory=lambda: transforms(["none"]))
    reducer: str = "mean"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True
    joints: list[Member] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        check_members({m.kind for m in self.members}, self.rules)
        make_reducer(self.reducer)
        self.preprocesses: list[Preprocess] = []
        self._slot: dict[int, int] = {}
        for member in self.members:
            member.model.to(self.device)
            key = member.preprocess.key
            slots = [p.key for p in self.preprocesses]
            if key not in slots:
                self.preprocesses.append(member.preprocess)
                slots.append(key)
            self._slot[id(member)] = slots.index(key)

    @property
    def members(self) -> list[Member]:
        return self.classifiers + self.joints + self.segmenters

    def loader(self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0) -> DataLoader:
        """Batches ``{"index": (B,), "inputs": [(B, C, h, w) per preprocessing]}`` in file order."""
        return DataLoader(ImageFiles(paths, self.preprocesses), batch_size=batch_size, shuffle=False,
                          num_workers=num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _input(self, member: Member, inputs: Sequence[torch.Tensor], keep: torch.Tensor | None) -> torch.Tensor:
        x = inputs[self._slot[id(member)]]
        if keep is not None:
            x = x[keep]
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _dense(self, prob: torch.Tensor) -> torch.Tensor:
        """Probabilities of a member run at another input size, resized to the image size."""
        if prob.shape[-2:] != IMAGE_SHAPE:
            prob = F.interpolate(prob, size=IMAGE_SHAPE, mode="bilinear", align_corners=False)
        return prob

    @torch.inference_mode()
    def probabilities(self, inputs: Sequence[torch.Tensor], gate: bool = True
                      ) -> tuple[np.ndarray | None, torch.Tensor | None, np.ndarray]:
        """(classifier probabilities (B, 4) or None, segmentation probabilities (K, 4, H, W) of the K images the
        gate lets through (all of them with ``gate=False``) on the device, their indices (K,))."""
        batch = len(inputs[0])
        labels, masks = make_reducer(self.reducer), make_reducer(self.reducer)
        for member in self.joints:  # one pass gives both heads, with the segmenter TTA
            x = self._input(member, inputs, None)
            for flip in self.tta_segmenter:
                mask_logits, label_logits = _split(member.model(flip.augment(x)))
                masks.add(flip.deaugment(self._dense(torch.sigmoid(mask_logits.float()))), member.weight)
                labels.add(torch.sigmoid(label_logits.float()), member.weight)
        for member in self.classifiers:
            x = self._input(member, inputs, None)
            for flip in self.tta_classifier:
                labels.add(torch.sigmoid(member.model(flip.augment(x)).float()), member.weight)
        cls_prob = labels.result().cpu().numpy().astype(np.float64) if labels.count else None
        needed = segment_needed(cls_prob, self.rules) if gate else None
        keep = np.arange(batch) if needed is None else np.flatnonzero(needed)
        passes = len(self.segmenters) * len(self.tta_segmenter)
        self.stats.images += batch
        self.stats.segmented += len(keep)
        self.stats.seg_passes += passes * len(keep)
        self.stats.seg_passes_skipped += passes * (batch - len(keep))
        if not len(keep):
            return cls_prob, None, keep
        index = None if len(keep) == batch else torch.as_tensor(keep)
        if index is not None and masks.count:
            masks.select(index.to(self.device))
        for member in self.segmenters:
            x = self._input(member, inputs, index)
            for flip in self.tta_segmenter:
                prob = torch.sigmoid(member.model(flip.augment(x)).float())
                masks.add(flip.deaugment(self._dense(prob)), member.weight)
        return cls_prob, masks.result(), keep

    def predict_batch(self, inputs: Sequence[torch.Tensor]) -> tuple[np.ndarray | None, np.ndarray]:
        """Loader inputs -> (classifier probabilities (B, 4) or None, uint8 masks (B, 4, H, W))."""
        batch = len(inputs[0])
        cls_prob, seg, keep = self.probabilities(inputs)
        masks = np.zeros((batch, len(CLASS_IDS), *IMAGE_SHAPE), np.uint8)
        if seg is not None:
            masks[keep] = postprocess(seg, None if cls_prob is None else cls_prob[keep], self.rules)
        return cls_prob, masks

    def iter_predictions(self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0,
                         progress: bool = False) -> Iterator[tuple[str, np.ndarray | None, np.ndarray]]:
        """Yield (image name, classifier probabilities or None, masks (4, H, W)) per image, in order."""
        loader = self.loader(paths, batch_size, num_workers)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, total=len(loader), unit="batch", desc="predict", dynamic_ncols=True)
        for batch in loader:
            cls_prob, masks = self.predict_batch(batch["inputs"])
            for j, index in enumerate(batch["index"].tolist()):
                yield Path(paths[index]).name, None if cls_prob is None else cls_prob[j], masks[j]


def rows_of(image_id: str, masks: np.ndarray) -> list[tuple[str, int, str]]:
    """Long-form rows (ImageId, ClassId, RLE or '') of one image, every class once."""
    return [(image_id, c, encode(masks[i])) for i, c in enumerate(CLASS_IDS)]


def load_rules(cfg: Mapping[str, Any]) -> Rules:
    """Rules from ``postprocess`` + ``ensemble.gating``, overridden by ``thresholds`` when it names a file.

    The one definition of "the rules infer.py applies"; the threshold search and the CV report call it
    on the same composed config for their "default thresholds" figure.
    """
    rules = rules_from_config(cfg["postprocess"], cfg["ensemble"]["gating"])
    if cfg.get("thresholds"):
        rules = read_thresholds(cfg["thresholds"], rules)
    return rules


def build_predictor(cfg: Mapping[str, Any]) -> Predictor:
    """A predictor from the infer config (``checkpoints``, ``tta``, ``ensemble``, ``postprocess``, ...)."""
    device = str(cfg.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RulesError("device: 'cuda' requested but torch sees no CUDA device; use device=cpu or auto")
    channels_last = bool(cfg.get("channels_last", True))
    ckpt = cfg["checkpoints"]
    return Predictor(
        classifiers=load_members(ckpt.get("classifier"), "classifier", channels_last),
        segmenters=load_members(ckpt.get("segmenter"), "segmenter", channels_last),
        joints=load_members(ckpt.get("joint"), "joint", channels_last),
        rules=load_rules(cfg),
        tta_classifier=transforms(list(cfg["tta"]["classifier"])),
        tta_segmenter=transforms(list(cfg["tta"]["segmenter"])),
        reducer=str(cfg["ensemble"].get("reducer", "mean")),
        device=torch.device(device),
        channels_last=channels_last,
    )


def predict_images(image_paths: Sequence[Path | str], config: Mapping[str, Any] | Predictor,
                   batch_size: int = 4) -> pd.DataFrame:
    """Predict a few image files; long-form rows (ImageId, ClassId, EncodedPixels) for every image x class."""
    predictor = config if isinstance(config, Predictor) else build_predictor(config)
    rows = [row for image_id, _, masks in predictor.iter_predictions(image_paths, batch_size)
            for row in rows_of(image_id, masks)]
    return pd.DataFrame(rows, columns=LONG_COLUMNS)
