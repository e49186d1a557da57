"""The fast inference path on the CPU: TTA flips in one forward pass, inputs moved once per batch, autocast,
the device rules for amp / batch size / torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from ensemble.core import resolve_batch_size
from ensemble.members import load_members
from ensemble.predict import MAX_AUTO_BATCH, Predictor, amp_dtype_for, batch_for_memory
from ensemble.settings import compile_mode
from ensemble_helpers import image_folder, save_tiny
from scoring.rules import Rules, RulesError
from scoring.tta import augment_all, split_outputs, transforms


@pytest.fixture
def members(tmp_path):
    images, _ = image_folder(tmp_path / "images", 3)
    return (
        sorted(images.iterdir()),
        load_members([save_tiny(tmp_path / "c.pt", "classifier")], "classifier"),
        load_members([save_tiny(tmp_path / "s.pt", "segmenter")], "segmenter"),
        load_members([save_tiny(tmp_path / "j.pt", "segmenter", seed=1)], "segmenter"),
    )


def _predictor(members, **kw) -> Predictor:
    _, cls, seg, seg2 = members
    return Predictor(
        classifiers=cls,
        segmenters=seg + seg2,
        rules=Rules(gating="none"),
        tta_segmenter=transforms("none,hflip,vflip,both"),
        tta_classifier=transforms("none,hflip"),
        **kw,
    )


SMALL = [torch.rand(3, 3, 32, 64, generator=torch.Generator().manual_seed(0))]  # networks run at any size


def test_flips_in_one_forward_pass_give_the_probabilities_of_separate_passes(members):
    results, calls = {}, {}
    for batched in (True, False):
        predictor = _predictor(members, batch_flips=batched)
        run, sizes = predictor._run, []
        predictor._run = lambda member, x, run=run, sizes=sizes: sizes.append(len(x)) or run(member, x)
        results[batched], calls[batched] = predictor.probabilities(SMALL, gate=False), sizes
    assert calls[True] == [6, 12, 12] and calls[False] == [3] * 2 + [3] * 8  # one pass per member
    assert torch.equal(results[True][1], results[False][1])  # segmentation: bit-identical
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=0, atol=1e-6)  # classifier GEMM blocking


def test_augment_all_and_split_outputs_round_trip_tensors_arrays_and_two_heads():
    flips = transforms("none,hflip,vflip")
    x = np.arange(2 * 1 * 2 * 3, dtype=np.float32).reshape(2, 1, 2, 3)
    parts = split_outputs(augment_all(flips, x), 3)
    assert all(np.array_equal(f.deaugment(p), x) for f, p in zip(flips, parts))
    t = torch.from_numpy(x)
    heads = split_outputs((augment_all(flips, t), torch.arange(6)), 3)
    assert [h[1].tolist() for h in heads] == [[0, 1], [2, 3], [4, 5]]
    assert all(torch.equal(f.deaugment(h[0]), t) for f, h in zip(flips, heads))
    with pytest.raises(ValueError, match="does not split"):
        split_outputs(torch.zeros(5), 2)


def test_inputs_travel_to_the_device_once_per_batch_in_channels_last(members):
    predictor = _predictor(members)
    moved = predictor.to_device([np.zeros((2, 3, 8, 16), np.float32)])
    assert len(moved) == 1 and moved[0].is_contiguous(memory_format=torch.channels_last)
    seen = []
    to_device = predictor.to_device
    predictor.to_device = lambda inputs: seen.append(len(inputs)) or to_device(inputs)
    predictor.probabilities(SMALL, gate=False)
    assert seen == [1]  # 3 members, 1 preprocessing slot: one move


def test_bf16_autocast_path_runs_on_the_cpu(members):
    _, cls, seg, _ = members
    kw = dict(classifiers=cls, segmenters=seg, rules=Rules(gating="none"))
    cls32, seg32, _ = Predictor(**kw).probabilities(SMALL, gate=False)
    cls16, seg16, _ = Predictor(**kw, amp_dtype=torch.bfloat16).probabilities(SMALL, gate=False)
    assert seg16.dtype == torch.float32 and tuple(seg16.shape) == (3, 4, 256, 1600)  # float32 probabilities out
    error = float((seg16 - seg32).abs().max())
    assert 0 < error < 0.05 and 0 < np.abs(cls16 - cls32).max() < 0.05  # bf16 really ran, and stayed close


def test_amp_auto_is_bf16_on_cuda_fp16_without_bf16_and_float32_on_the_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype_for("auto", cuda, bf16_supported=True) == torch.bfloat16
    assert amp_dtype_for("auto", cuda, bf16_supported=False) == torch.float16
    assert amp_dtype_for("auto", cpu) is None and amp_dtype_for(None, cuda) is None
    assert amp_dtype_for(False, cuda) is None and amp_dtype_for("float16", cuda) == torch.float16
    with pytest.raises(RulesError, match="amp=bfloat16: mixed precision inference needs device=cuda"):
        amp_dtype_for("bfloat16", cpu)
    with pytest.raises(ConfigError, match="amp: expected auto"):
        amp_dtype_for("fp8", cuda)


def test_batch_size_rule_and_override(members):
    gib = 2**30
    assert batch_for_memory(75 * gib, 2) == MAX_AUTO_BATCH  # an H100's free memory, hflip TTA
    assert batch_for_memory(10 * gib, 2) == 8 and batch_for_memory(10 * gib, 1) == 16
    assert batch_for_memory(0, 2) == 1
    predictor = _predictor(members)
    assert resolve_batch_size("auto", predictor) == 4 and resolve_batch_size(None, predictor) == 4  # CPU
    assert resolve_batch_size(12, predictor) == 12 and resolve_batch_size("7", predictor) == 7
    with pytest.raises(Exception, match="batch_size: expected a whole number >= 1 \\(or auto"):
        resolve_batch_size(0, predictor)


def test_compile_is_off_by_default_and_a_checked_key(members, monkeypatch):
    assert compile_mode(None) is None and compile_mode("max-autotune") == "max-autotune"
    with pytest.raises(ConfigError, match="compile: expected null"):
        compile_mode("fast")
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, mode: compiled.append(mode) or net)
    _predictor(members)
    assert compiled == []
    _predictor(members, compile="max-autotune")
    assert compiled == ["max-autotune"] * 3
