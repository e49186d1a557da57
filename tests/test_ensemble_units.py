"""TTA, reducers, rules, gating modes and post-processing on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring import postprocess as pp
from scoring.gating import pair_rules, segment_needed
from scoring.reduce import make_reducer
from scoring.rules import Rules, RulesError, read_thresholds, rules_from_config, write_thresholds
from scoring.tta import transforms


@pytest.mark.parametrize("name", ["none", "hflip", "vflip", "both"])
def test_tta_roundtrip_and_moves_pixels(name):
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    (flip,) = transforms([name])
    assert torch.equal(flip.deaugment(flip.augment(x)), x)
    assert torch.equal(flip.augment(x), x) == (name == "none")


def test_tta_unaugment_aligns_dense_predictions():
    # a "model" that marks bright pixels: its un-augmented output must match the plain one for every flip
    x = torch.zeros(1, 1, 4, 6)
    x[0, 0, 1, 4] = 1
    for flip in transforms("none,hflip,vflip,both"):
        assert torch.equal(flip.deaugment((flip.augment(x) > 0.5).float()), x)
    with pytest.raises(ValueError, match="rot90"):
        transforms(["rot90"])


def test_reducers():
    a, b = torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.4])
    mean = make_reducer("mean")
    mean.add(a, 1.0)
    mean.add(b, 3.0)
    assert torch.allclose(mean.result(), (a + 3 * b) / 4)
    geo = make_reducer("geometric")
    geo.add(a)
    geo.add(b)
    assert torch.allclose(geo.result(), (a * b).sqrt())
    mx = make_reducer("max")
    mx.add(a)
    mx.add(b)
    assert torch.equal(mx.result(), torch.tensor([0.6, 0.8]))
    with pytest.raises(ValueError, match="median"):
        make_reducer("median")


def _probs() -> tuple[np.ndarray, np.ndarray]:
    seg = np.zeros((2, 4, 8, 10), np.float32)
    seg[:, :, 2:6, 2:8] = 0.8  # 24 pixels per class
    cls = np.array([[0.9, 0.1, 0.6, 0.2], [0.1, 0.2, 0.3, 0.4]], np.float32)
    return seg, cls


def _areas(masks: np.ndarray) -> list[list[int]]:
    return masks.sum(axis=(2, 3)).tolist()


def test_gating_modes():
    seg, cls = _probs()
    base = dict(pixel_threshold=0.5, min_area=10, classifier_threshold=0.5)
    # image: image 1's top probability 0.4 < 0.5 -> skipped; image 0 keeps every class
    rules = Rules(**base, gating="image")
    assert segment_needed(cls, rules).tolist() == [True, False]
    assert _areas(pp.postprocess(seg, cls, rules)) == [[24] * 4, [0] * 4]
    # veto: per class
    rules = Rules(**base, gating="veto")
    assert segment_needed(cls, rules).tolist() == [True, False]
    assert _areas(pp.postprocess(seg, cls, rules)) == [[24, 0, 24, 0], [0] * 4]
    # soft: probability x class probability; with pixel threshold 0.5 only p_c > 0.625 survive
    rules = Rules(**base, gating="soft")
    assert segment_needed(cls, rules) is None
    assert _areas(pp.postprocess(seg, cls, rules)) == [[24, 0, 0, 0], [0] * 4]
    # scale: absent classes need area_scale x min_area (24 px >= 10 but < 30)
    rules = Rules(**base, gating="scale", area_scale=3.0)
    assert pair_rules(rules, seg.max(axis=(2, 3)), cls).min_area.tolist() == [[10, 30, 10, 30], [30, 30, 30, 30]]
    assert _areas(pp.postprocess(seg, cls, rules)) == [[24, 0, 24, 0], [0] * 4]
    # label: maximum segmentation probability must reach the label threshold (no classifier needed)
    rules = Rules(**base, gating="label", label_threshold=(0.7, 0.9, 0.0, 0.85))
    assert _areas(pp.postprocess(seg, None, rules)) == [[24, 0, 24, 0]] * 2
    with pytest.raises(RulesError, match="classifier"):
        pp.postprocess(seg, None, Rules(gating="veto"))
    # the same rules on a torch batch (GPU-side thresholding) give the same masks
    for mode in ("image", "veto", "soft", "scale"):
        rules = Rules(**base, gating=mode, resolve_overlap=True)
        np.testing.assert_array_equal(
            pp.postprocess(torch.from_numpy(seg), cls, rules), pp.postprocess(seg, cls, rules)
        )


def test_postprocess_components_area_overlap():
    prob = np.zeros((1, 4, 20, 30), np.float32)
    prob[0, 0, 1:4, 1:4] = 0.9  # 9 px component
    prob[0, 0, 10:18, 10:20] = 0.7  # 80 px component
    prob[0, 1, 10:18, 15:25] = 0.8  # overlaps class 0 on 8 x 5
    prob[0, 2, 0:2, 0:2] = 0.6  # 4 px, below min_area
    rules = Rules(pixel_threshold=0.5, min_area=(0, 0, 5, 0), min_component=(10, 0, 0, 0), gating="none")
    assert _areas(pp.postprocess(prob, None, rules)) == [[80, 80, 0, 0]]
    resolved = pp.postprocess(
        prob, None, Rules(pixel_threshold=0.5, min_component=(10, 0, 0, 0), resolve_overlap=True, gating="none")
    )
    assert _areas(resolved) == [[40, 80, 3, 0]]  # class 3 loses (1,1) to class 1
    assert (resolved.sum(axis=1) <= 1).all()
    assert pp.remove_small_components(np.zeros((5, 5), np.uint8), 3).sum() == 0


def test_rules_config_and_thresholds_file(tmp_path):
    rules = rules_from_config(
        {"pixel_threshold": [0.4, 0.5, 0.6, 0.7], "min_area": 100}, {"mode": "soft", "image_threshold": 0.3}
    )
    assert rules.min_area == (100,) * 4 and rules.gating == "soft"
    with pytest.raises(RulesError, match="pixel_threshold"):
        Rules(pixel_threshold=(0.5, 0.5))
    with pytest.raises(RulesError, match="bogus"):
        rules_from_config({"bogus": 1}, {})
    with pytest.raises(RulesError, match="mode"):
        Rules(gating="sometimes")
    path = write_thresholds(tmp_path / "t.json", Rules(pixel_threshold=0.3, min_area=(1, 2, 3, 4), gating="scale"))
    back = read_thresholds(path, rules)
    assert back.pixel_threshold == (0.3,) * 4 and back.min_area == (1, 2, 3, 4) and back.gating == "scale"
    text = path.read_text().replace('"4": {', '"5": {').replace("[\n    1,\n    2,\n    3,\n    4\n  ]", "[1, 2, 3, 5]")
    (tmp_path / "other.json").write_text(text)
    with pytest.raises(RulesError, match=r"other.json: thresholds are for classes"):
        read_thresholds(tmp_path / "other.json", rules)
    with pytest.raises(RulesError, match="not found"):
        read_thresholds(tmp_path / "missing.json", rules)
