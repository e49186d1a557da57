"""Streaming predictor: DataLoader batches -> classifier -> gated segmenters x TTA -> reduce -> masks.

Nothing grows with the number of images: each batch is predicted, post-processed and handed on
(``iter_predictions``) before the next is read. ``predict_images`` is the plain-function entry for
callers such as the dashboard.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.annotations import CLASS_IDS
from common.images import read_image
from common.rle import encode
from ensemble.models import Member, load_members
from ensemble.postprocess import gate, segment_needed, to_masks
from ensemble.reduce import make_reducer
from ensemble.rules import Rules, RulesError, read_thresholds, rules_from_config
from ensemble.tta import Flip, transforms

LONG_COLUMNS = ["ImageId", "ClassId", "EncodedPixels"]


class ImageFiles(Dataset):
    """uint8 HxWx3 RGB tensors of image files, read by content; errors name the file."""

    def __init__(self, paths: Sequence[Path | str]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.from_numpy(read_image(self.paths[index], channels=3))


def make_loader(paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0) -> DataLoader:
    """Batches of (indices, uint8 images B x H x W x 3) in file order."""
    return DataLoader(ImageFiles(paths), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=False)


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


@dataclass
class Predictor:
    """Ensemble of classifier and segmenter members with TTA, a reducer and post-processing rules."""

    classifiers: list[Member]
    segmenters: list[Member]
    rules: Rules
    tta_classifier: list[Flip] = field(default_factory=lambda: transforms(["none"]))
    tta_segmenter: list[Flip] = field(default_factory=lambda: transforms(["none"]))
    reducer: str = "mean"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True
    stats: Stats = field(default_factory=Stats)
    _shape: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not self.segmenters:
            raise RulesError("checkpoints.segmenter: no segmenter checkpoint given; a submission needs at least one")
        if self.rules.needs_classifier and not self.classifiers:
            raise RulesError(f"gating mode {self.rules.gating!r} needs classifier checkpoints "
                             "(checkpoints.classifier); use ensemble.gating.mode=none or label without them")
        for member in self.classifiers + self.segmenters:
            member.model.to(self.device)

    def _inputs(self, images: torch.Tensor) -> dict[tuple, torch.Tensor]:
        """uint8 BxHxWx3 -> normalised float NCHW per distinct preprocessing of the members."""
        out: dict[tuple, torch.Tensor] = {}
        for member in self.classifiers + self.segmenters:
            key = member.preprocess_key
            if key in out:
                continue
            batch = images
            if member.size is not None and tuple(images.shape[1:3]) != member.size:
                # the training stage resizes uint8 images with area interpolation (common Preprocess.resize)
                batch = torch.from_numpy(np.stack([cv2.resize(im, member.size[::-1], interpolation=cv2.INTER_AREA)
                                                   for im in images.numpy()]))
            x = batch.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)[:, : member.channels]
            mean = torch.tensor(member.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(member.std, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
            out[key] = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
        return out

    def _run(self, members: list[Member], flips: list[Flip], inputs: dict[tuple, torch.Tensor],
             dense: bool) -> torch.Tensor:
        reducer = make_reducer(self.reducer)
        for member in members:
            x = inputs[member.preprocess_key]
            for flip in flips:
                logits = member.model(flip.augment(x))
                prob = torch.sigmoid(logits.float())
                if dense and prob.shape[-2:] != self._shape:  # a member run at a lower input size
                    prob = F.interpolate(prob, size=self._shape, mode="bilinear", align_corners=False)
                reducer.add(flip.deaugment(prob) if dense else prob, member.weight)
        return reducer.result()

    @torch.inference_mode()
    def predict_batch(self, images: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray]:
        """uint8 images (B, H, W, 3) -> (classifier probabilities (B, 4) or None, uint8 masks (B, 4, H, W))."""
        inputs = self._inputs(images)
        batch, height, width = images.shape[:3]
        self._shape = (height, width)
        cls_prob = None
        if self.classifiers:
            cls_prob = self._run(self.classifiers, self.tta_classifier, inputs, dense=False).cpu().numpy()
        needed = segment_needed(cls_prob, self.rules)
        keep = np.arange(batch) if needed is None else np.flatnonzero(needed)
        passes = len(self.segmenters) * len(self.tta_segmenter)
        self.stats.images += batch
        self.stats.segmented += len(keep)
        self.stats.seg_passes += passes * len(keep)
        self.stats.seg_passes_skipped += passes * (batch - len(keep))
        masks = np.zeros((batch, len(CLASS_IDS), height, width), np.uint8)
        if len(keep):
            sub = {k: v[torch.as_tensor(keep, device=v.device)] if len(keep) < batch else v for k, v in inputs.items()}
            seg = self._run(self.segmenters, self.tta_segmenter, sub, dense=True).cpu().numpy()
            if seg.shape[1:] != masks.shape[1:]:
                raise ValueError(f"segmenter output {tuple(seg.shape[1:])} does not match (4, {height}, {width})")
            seg, min_area = gate(seg, None if cls_prob is None else cls_prob[keep], self.rules)
            for j, i in enumerate(keep):
                masks[i] = to_masks(seg[j], self.rules, min_area[j])
        return cls_prob, masks

    def iter_predictions(self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0,
                         progress: bool = False) -> Iterator[tuple[str, np.ndarray | None, np.ndarray]]:
        """Yield (image name, classifier probabilities or None, masks (4, H, W)) per image, in order."""
        loader = make_loader(paths, batch_size, num_workers)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, total=len(loader), unit="batch", desc="predict", dynamic_ncols=True)
        for indices, images in loader:
            cls_prob, masks = self.predict_batch(images)
            for j, index in enumerate(indices.tolist()):
                yield Path(paths[index]).name, None if cls_prob is None else cls_prob[j], masks[j]


def rows_of(image_id: str, masks: np.ndarray) -> list[tuple[str, int, str]]:
    """Long-form rows (ImageId, ClassId, RLE or '') of one image, every class once."""
    return [(image_id, c, encode(masks[i])) for i, c in enumerate(CLASS_IDS)]


def load_rules(cfg: Mapping[str, Any]) -> Rules:
    """Rules from ``postprocess`` + ``ensemble.gating``, overridden by ``thresholds`` when it names a file."""
    rules = rules_from_config(cfg["postprocess"], cfg["ensemble"]["gating"])
    if cfg.get("thresholds"):
        rules = read_thresholds(cfg["thresholds"], rules)
    return rules


def build_predictor(cfg: Mapping[str, Any]) -> Predictor:
    """A predictor from the infer config (``checkpoints``, ``tta``, ``ensemble``, ``postprocess``, ...)."""
    device = str(cfg.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    channels_last = bool(cfg.get("channels_last", True))
    ckpt = cfg["checkpoints"]
    return Predictor(
        classifiers=load_members(ckpt.get("classifier") or [], "classifier", channels_last),
        segmenters=load_members(ckpt.get("segmenter") or [], "segmenter", channels_last),
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
