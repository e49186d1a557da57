"""Streaming PyTorch predictor: DataLoader batches -> classifier/joint members -> gated segmenters x TTA -> reduce
-> masks.

The loader reads each image once and applies every member's ``Preprocess`` (the object training used,
rebuilt from checkpoint meta) in its workers, so the network input is bit-identical to training's
validation input. The work order (gate, TTA, reducer, post-processing) is ``ensemble.core.GatedEnsemble``,
shared with the ONNX runtime; this module adds the torch side: ``MemberNet`` (a member's network with its
output turned into probabilities at the image size, the very module ``ensemble.export`` writes as ONNX),
devices and the DataLoader. Nothing grows with the number of images: each batch is predicted,
post-processed and handed on (``iter_predictions``) before the next is read. ``predict_images`` is the
plain-function entry for callers such as the dashboard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.constants import IMAGE_SHAPE, LONG_COLUMNS
from common.preprocess import Preprocess
from ensemble.core import GatedEnsemble, Stats, cpu_count, read_inputs, rows_of, split_joint
from ensemble.members import Member, load_members
from ensemble.rules import Rules, RulesError, read_thresholds, rules_from_config
from ensemble.tta import transforms

__all__ = ["ImageFiles", "set_threads", "Stats", "MemberNet", "to_image_size", "Predictor", "rows_of", "load_rules",
           "build_predictor", "predict_images"]


class ImageFiles(Dataset):
    """Items ``{"index": i, "inputs": [float32 tensor per preprocessing]}`` of image files read by content."""

    def __init__(self, paths: Sequence[Path | str], preprocesses: Sequence[Preprocess]) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocesses = list(preprocesses)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "inputs": [torch.from_numpy(x) for x in read_inputs(self.paths[index], self.preprocesses)]}


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: every core this process may run on)."""
    count = int(threads or cpu_count())
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def to_image_size(prob: torch.Tensor) -> torch.Tensor:
    """Probabilities of a member run at another input size, resized (bilinear) to the image size."""
    if prob.shape[-2:] != IMAGE_SHAPE:
        prob = F.interpolate(prob, size=IMAGE_SHAPE, mode="bilinear", align_corners=False)
    return prob


class MemberNet(nn.Module):
    """A member's network whose outputs are probabilities: (B, 4) class probabilities for a classifier,
    (B, 4, 256, 1600) mask probabilities for a segmenter, both (as a pair) for a joint member."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        if self.kind == "joint":
            mask_logits, label_logits = split_joint(out)
            return to_image_size(torch.sigmoid(mask_logits.float())), torch.sigmoid(label_logits.float())
        prob = torch.sigmoid(out.float())
        return prob if self.kind == "classifier" else to_image_size(prob)


@dataclass
class Predictor(GatedEnsemble):
    """Ensemble of classifier, segmenter and joint members (``Member``: torch models) with TTA, a reducer and
    post-processing rules, run on ``device``."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._nets: dict[int, MemberNet] = {}
        for member in self.members:
            member.model.to(self.device)
            self._nets[id(member)] = MemberNet(member.model, member.kind).eval()

    def net(self, member: Member) -> MemberNet:
        """The member's network with probability outputs (what the ONNX export writes)."""
        return self._nets[id(member)]

    def loader(self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0) -> DataLoader:
        """Batches ``{"index": (B,), "inputs": [(B, C, h, w) per preprocessing]}`` in file order."""
        return DataLoader(ImageFiles(paths, self.preprocesses), batch_size=batch_size, shuffle=False,
                          num_workers=num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _batches(self, paths: Sequence[Path | str], batch_size: int, num_workers: int
                 ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        loader = self.loader(paths, batch_size, num_workers)
        for batch in loader:
            yield batch["index"].tolist(), batch["inputs"]

    def _input(self, member: Member, inputs: Sequence[Any], keep: np.ndarray | None) -> torch.Tensor:
        x = torch.as_tensor(super()._input(member, inputs, keep)).to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _run(self, member: Member, x: torch.Tensor) -> Any:
        return self._nets[id(member)](x)

    @torch.inference_mode()
    def probabilities(self, inputs: Sequence[Any], gate: bool = True
                      ) -> tuple[np.ndarray | None, torch.Tensor | None, np.ndarray]:
        """``GatedEnsemble.probabilities`` under ``torch.inference_mode`` (segmentation stays on the device)."""
        return super().probabilities(inputs, gate)


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
