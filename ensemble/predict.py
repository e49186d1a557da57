"""Streaming PyTorch predictor: DataLoader batches -> classifier/joint members -> gated segmenters x TTA -> reduce
-> masks.

The loader reads each image once and applies every member's ``Preprocess`` (the object training used,
rebuilt from checkpoint meta) in its workers, so the network input is bit-identical to training's
validation input. The work order (gate, TTA, reducer, post-processing) is ``ensemble.core.GatedEnsemble``,
shared with the ONNX runtime; this module adds the torch side: ``MemberNet`` (a member's network with its
output turned into probabilities at the image size, the very module ``deploy.export`` writes as ONNX),
devices and the DataLoader. Nothing grows with the number of images: each batch is predicted,
post-processed and handed on (``iter_predictions``) before the next is read. ``predict_images`` is the
plain-function entry for callers such as the dashboard.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.config import check_known, whole_number
from common.constants import LONG_COLUMNS
from common.devices import choose_device
from common.preprocess import Preprocess
from ensemble.core import KINDS, GatedEnsemble, Stats, check_members, cpu_count, read_inputs, rows_of, split_joint
from ensemble.members import Member, discover, expand_runs, load_members
from ensemble.settings import InferSettings, check_amp
from ensemble.timing import Timer
from scoring.arrays import take
from scoring.rules import Rules, RulesError, read_thresholds, rules_from_config
from scoring.tta import transforms
from segmenter.metrics import to_full_size

__all__ = [
    "ImageFiles",
    "set_threads",
    "Stats",
    "check_members",
    "MemberNet",
    "amp_dtype_for",
    "batch_for_memory",
    "Predictor",
    "rows_of",
    "load_rules",
    "member_entries",
    "build_predictor",
    "predict_images",
]


class ImageFiles(Dataset):
    """Items ``{"index": i, "inputs": [float32 tensor per preprocessing], "decode_s": seconds}`` of image files read
    by content (``decode_s``: reading, decoding and preprocessing, in the loader worker)."""

    def __init__(self, paths: Sequence[Path | str], preprocesses: Sequence[Preprocess]) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocesses = list(preprocesses)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        inputs = [torch.from_numpy(x) for x in read_inputs(self.paths[index], self.preprocesses)]
        return {"index": index, "inputs": inputs, "decode_s": time.perf_counter() - start}


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: every core this process may run on)."""
    count = whole_number(threads, "threads", note=" (0 or null: every core)") or cpu_count()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


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
            return to_full_size(torch.sigmoid(mask_logits.float())), torch.sigmoid(label_logits.float())
        prob = torch.sigmoid(out.float())
        return prob if self.kind == "classifier" else to_full_size(prob)  # the rule validation and the stage OOF use


# Device memory one image may take in a forward pass per TTA flip (activations in bf16 + full-size float32
# probabilities of a 256x1600 effnet-b3 U-Net, rounded up): the rule behind batch_size=auto on CUDA.
BYTES_PER_IMAGE_PASS = 256 * 2**20
MAX_AUTO_BATCH = 64


def amp_dtype_for(amp: Any, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` setting on ``device``: ``auto`` is bf16 on CUDA (fp16 where the GPU has
    no bf16) and float32 (None) on a CPU; null/false is float32; bfloat16 / float16 need CUDA."""
    amp = check_amp(amp)
    if amp is None:
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        raise RulesError(
            f"amp={amp}: mixed precision inference needs device=cuda (or auto with a GPU); set amp=auto or amp=null"
        )
    if amp == "auto":
        supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return torch.bfloat16 if supported else torch.float16
    return getattr(torch, amp)


def batch_for_memory(free_bytes: int, flips: int) -> int:
    """The largest power of two of images whose forward passes (``flips`` each) fit in half the free memory,
    1 to ``MAX_AUTO_BATCH``."""
    fit = int(free_bytes * 0.5 // (BYTES_PER_IMAGE_PASS * max(flips, 1)))
    return max(1, min(MAX_AUTO_BATCH, 1 << (fit.bit_length() - 1) if fit else 1))


@dataclass
class Predictor(GatedEnsemble):
    """Ensemble of classifier, segmenter and joint members (``Member``: torch models) with TTA, a reducer and
    post-processing rules, run on ``device``."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True  # members were converted at load (load_members); inputs once per batch
    amp_dtype: torch.dtype | None = None  # autocast the networks in this dtype; None: float32
    compile: str | None = None  # torch.compile mode of every member network; None: eager

    def __post_init__(self) -> None:
        super().__post_init__()
        self._nets: dict[int, MemberNet] = {}
        self._compiled: dict[int, Any] = {}
        for member in self.members:
            member.model.to(self.device)
            net = self._nets[id(member)] = MemberNet(member.model, member.kind).eval()
            self._compiled[id(member)] = torch.compile(net, mode=self.compile) if self.compile else net

    def net(self, member: Member) -> MemberNet:
        """The member's network with probability outputs (what the ONNX export writes)."""
        return self._nets[id(member)]

    def auto_batch_size(self) -> int:
        """CUDA: by the device's free memory (``batch_for_memory``); elsewhere the CPU's 4."""
        if self.device.type != "cuda":
            return super().auto_batch_size()
        free, _ = torch.cuda.mem_get_info(self.device)
        return batch_for_memory(free, max(len(self.tta_segmenter), len(self.tta_classifier)))

    def loader(self, paths: Sequence[Path | str], batch_size: int = 4, num_workers: int = 0) -> DataLoader:
        """Batches ``{"index": (B,), "inputs": [(B, C, h, w) per preprocessing]}`` in file order."""
        return DataLoader(
            ImageFiles(paths, self.preprocesses),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if num_workers else None,
        )

    def _batches(
        self, paths: Sequence[Path | str], batch_size: int, num_workers: int
    ) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        loader = self.loader(paths, batch_size, num_workers)
        for batch in loader:
            self.timer.add("decode_in_workers", float(batch["decode_s"].sum()))
            yield batch["index"].tolist(), batch["inputs"]

    def to_device(self, inputs: Sequence[Any]) -> list[torch.Tensor]:
        """Each preprocessing slot's batch on the device (in channels_last): one copy per batch, whatever the
        number of members sharing the slot."""
        with self.timer.section("host_to_device"):
            moved = [torch.as_tensor(x).to(self.device, non_blocking=True) for x in inputs]
            if self.channels_last:
                moved = [x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in moved]
            return moved

    def _input(self, member: Member, inputs: Sequence[Any], keep: np.ndarray | None) -> torch.Tensor:
        x = inputs[self._slot[id(member)]]
        return x if keep is None else take(x, keep)

    def _run(self, member: Member, x: torch.Tensor) -> Any:
        return self._compiled[id(member)](x)

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA); a no-op elsewhere (for ``Timer(sync=...)``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def probabilities(
        self, inputs: Sequence[Any], gate: bool = True
    ) -> tuple[np.ndarray | None, torch.Tensor | None, np.ndarray]:
        """``GatedEnsemble.probabilities`` under ``torch.inference_mode`` on inputs moved to the device once
        (segmentation stays on the device), autocast in ``amp_dtype`` when set."""
        inputs = self.to_device(inputs)
        if self.amp_dtype is None:
            return super().probabilities(inputs, gate)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            return super().probabilities(inputs, gate)


def load_rules(cfg: Mapping[str, Any]) -> Rules:
    """Rules from ``postprocess`` + ``ensemble.gating``, overridden by ``thresholds`` when it names a file.

    The one definition of "the rules infer.py applies"; the threshold search and the CV report call it
    on the same composed config for their "default thresholds" figure.
    """
    rules = rules_from_config(cfg["postprocess"], cfg["ensemble"]["gating"])
    thresholds = InferSettings.from_config(cfg).thresholds
    if thresholds:
        rules = read_thresholds(thresholds, rules)
    return rules


def member_entries(ckpt: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Checkpoint entries per kind: ``checkpoints.classifier|segmenter|joint`` when any is given; otherwise every
    checkpoint under ``checkpoints.runs`` (training folders, files or glob patterns), by the kind its file records."""
    check_known(ckpt, ("runs", *KINDS), "checkpoints", RulesError)
    entries = {kind: list(ckpt.get(kind) or []) for kind in KINDS}
    if not any(entries.values()) and ckpt.get("runs"):
        for kind, paths in discover(expand_runs(ckpt["runs"])).items():
            entries[kind].extend(paths)
    return entries


def build_predictor(
    cfg: Mapping[str, Any], members: Mapping[str, Sequence[Member]] | None = None, rules: Rules | None = None
) -> Predictor:
    """A predictor from the infer config (``checkpoints``, ``tta``, ``ensemble``, ``postprocess``, ``device``, ...):
    the one builder of infer.py, the ensemble OOF and the CV report, so all predict alike; ``members`` (kind ->
    loaded members) and ``rules`` stand in for the ones the config names."""
    settings = InferSettings.from_config(cfg)
    device = torch.device(choose_device(settings.device, torch.cuda.device_count()))
    channels_last = settings.channels_last
    amp_dtype = amp_dtype_for(settings.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels once
    if members is None:
        entries = member_entries(cfg["checkpoints"])
        members = {kind: load_members(entries[kind], kind, channels_last) for kind in KINDS}
    predictor = Predictor(
        classifiers=list(members.get("classifier", [])),
        segmenters=list(members.get("segmenter", [])),
        joints=list(members.get("joint", [])),
        rules=load_rules(cfg) if rules is None else rules,
        tta_classifier=transforms(list(cfg["tta"]["classifier"])),
        tta_segmenter=transforms(list(cfg["tta"]["segmenter"])),
        reducer=str(cfg["ensemble"].get("reducer", "mean")),
        device=device,
        channels_last=channels_last,
        amp_dtype=amp_dtype,
        compile=settings.compile,
        batch_flips=settings.batch_flips,
    )
    if settings.profile:  # synchronised sections: where the time goes (slower than a plain run)
        predictor.timer = Timer(enabled=True, sync=predictor.synchronize)
    return predictor


def predict_images(
    image_paths: Sequence[Path | str], config: Mapping[str, Any] | Predictor, batch_size: int = 4
) -> pd.DataFrame:
    """Predict a few image files; long-form rows (ImageId, ClassId, EncodedPixels) for every image x class."""
    predictor = config if isinstance(config, Predictor) else build_predictor(config)
    rows = [
        row
        for image_id, _, masks in predictor.iter_predictions(image_paths, batch_size)
        for row in rows_of(image_id, masks)
    ]
    return pd.DataFrame(rows, columns=LONG_COLUMNS)
