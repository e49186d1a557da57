"""The fast post-processing paths give exactly the masks of the plain formulation (whole-array bin rule, then
components labelled with their areas on every mask): bin cuts, pair skipping, component bounds, torch batches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.oof import bin_index
from scoring import postprocess as pp
from scoring.gating import pair_rules
from scoring.rules import Rules


def plain_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def plain_postprocess(prob: np.ndarray, cls_prob: np.ndarray | None, rules: Rules) -> np.ndarray:
    pairs = pair_rules(rules, prob.reshape(*prob.shape[:2], -1).max(-1), cls_prob)
    masks = ((bin_index(prob, rules.bins) >= pairs.k[:, :, None, None]) & pairs.keep[:, :, None, None]).astype(np.uint8)
    for j, c in np.ndindex(*masks.shape[:2]):
        if rules.min_component[c] > 1:
            masks[j, c] = plain_components(masks[j, c], rules.min_component[c])
        if np.count_nonzero(masks[j, c]) < pairs.min_area[j, c]:
            masks[j, c] = 0
    return masks


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bins", [2, 10, 100])
def test_bin_cut_is_the_bin_rule_at_every_boundary(dtype, bins):
    kind = np.dtype(dtype).type
    for k in range(bins + 1):
        cut = pp.bin_cut(k, bins, dtype)
        centre = kind(k) / kind(bins)
        up, down = [centre], [centre]
        for _ in range(8):  # the values around k / bins, a few ulps either way
            up.append(np.nextafter(up[-1], kind(np.inf)))
            down.append(np.nextafter(down[-1], kind(-np.inf)))
        near = np.array(up + down + [0.0, 1.0, np.nan], dtype)
        with np.errstate(invalid="ignore"):  # NaN has no bin (and passes no threshold)
            expected = bin_index(near, bins) >= k
        got = np.zeros(len(near), bool) if cut is None else near >= kind(cut)
        np.testing.assert_array_equal(got, expected, err_msg=f"k={k} bins={bins} {dtype}")


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(1, 32))
    bins = draw(st.sampled_from([10, 20, 100]))
    prob = rng.random((b, 4, h, w))
    prob = np.where(rng.random(prob.shape) < 0.3, np.round(prob * bins) / bins, prob)  # values on the bin edges
    prob[rng.random((b, 4)) < 0.3] *= 0.2  # pairs that no pixel of passes
    dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    gating = draw(st.sampled_from(["none", "label", "veto", "image", "soft", "scale"]))
    rules = Rules(
        pixel_threshold=tuple(int(x) / bins for x in rng.integers(1, bins, 4)),
        min_area=tuple(int(x) for x in rng.integers(0, 40, 4)),
        min_component=tuple(int(x) for x in rng.choice([0, 1, 2, 5, 30], 4)),
        label_threshold=tuple(float(x) for x in rng.choice([0.0, 0.3, 0.7], 4)),
        classifier_threshold=0.5,
        gating=gating,
        bins=bins,
        area_scale=2.0,
    )
    cls_prob = rng.random((b, 4)) if gating not in ("none", "label") else None
    return prob.astype(dtype), cls_prob, rules


@settings(max_examples=150, deadline=None)
@given(cases())
def test_postprocess_equals_the_plain_formulation(case):
    prob, cls_prob, rules = case
    expected = plain_postprocess(prob, cls_prob, rules)
    np.testing.assert_array_equal(pp.postprocess(prob, cls_prob, rules), expected)
    np.testing.assert_array_equal(pp.postprocess(torch.from_numpy(prob), cls_prob, rules), expected)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 5, 12, 40, 150]))
def test_component_removal_equals_labelling_with_areas(seed, min_size):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 48, 2)
    mask = (rng.random((h, w)) < rng.uniform(0.05, 0.7)).astype(np.uint8)
    if rng.random() < 0.5:  # rings, holes and islands in holes
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8)) ^ mask
    before = mask.copy()
    np.testing.assert_array_equal(pp.remove_small_components(mask, min_size), plain_components(mask, min_size))
    np.testing.assert_array_equal(mask, before)  # the input is not changed
