"""One preprocessing object: training's validation input and inference's input are bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from classifier.data import PresenceDataset
from common.dataset import load_split
from common.errors import ConfigError
from common.preprocess import Preprocess
from ensemble.predict import ImageFiles
from segmenter.data import SegmentationDataset

SETTINGS = [
    Preprocess(),
    Preprocess(size=(96, 600)),
    Preprocess(channels=1, mean=(0.4,), std=(0.2,), size=(64, 400)),
    Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
]


@pytest.mark.parametrize("pre", SETTINGS, ids=lambda p: f"c{p.channels}-{p.size}")
def test_validation_input_equals_inference_input(tiny_dataset, pre):
    source = load_split(tiny_dataset, "train")
    ids = list(source.image_ids[:3])
    rebuilt = Preprocess.from_meta(pre.to_meta())  # what a checkpoint hands inference
    assert rebuilt == pre
    loader = DataLoader(ImageFiles([source.path(i) for i in ids], [rebuilt]), batch_size=3)
    inference = next(iter(loader))["inputs"][0]
    stages = [PresenceDataset(source, ids, pre)]
    if pre.size is None:  # the segmenter scores masks at full size
        stages.append(SegmentationDataset(source, ids, pre))
    for dataset in stages:
        training = torch.stack([dataset[j]["image"] for j in range(len(ids))])
        assert training.dtype == inference.dtype == torch.float32
        assert torch.equal(training, inference), type(dataset).__name__


def test_steps_and_errors():
    rgb = np.zeros((256, 1600, 3), np.uint8)
    rgb[:, :800] = 255
    grey = Preprocess(channels=1, mean=(0.0,), std=(1.0,), size=(128, 800))
    x = grey(rgb)
    assert x.shape == (1, 128, 800) and x[0, 0, 0] == 1.0 and x[0, 0, -1] == 0.0
    with pytest.raises(ConfigError, match="std > 0"):
        Preprocess(std=(0.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="unknown key"):
        Preprocess.from_config({"mean": [0.5] * 3, "sizes": [1, 2]})
    with pytest.raises(ValueError, match="uint8 RGB"):
        Preprocess().prepare(rgb[:, :, 0])
