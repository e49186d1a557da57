"""RLE: Kaggle convention, strict validation, exact on every real mask."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.errors import RLEError

from common.rle import area, decode, encode


def reference_encode(mask: np.ndarray) -> str:
    """The straightforward formulation (transpose, flatten, pad, diff), as a cross-check."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def test_transposition_guard_with_asymmetric_mask():
    mask = np.zeros((256, 1600), np.uint8)
    mask[0:3, 0] = 1          # pixels 1..3 (top of the first column)
    mask[0, 1] = 1            # pixel 257: first row, second column
    mask[255, 1599] = 1       # the very last pixel
    assert encode(mask) == "1 3 257 1 409600 1"
    back = decode("1 3 257 1 409600 1")
    assert back.shape == (256, 1600)
    assert back[0:3, 0].all() and back[0, 1] == 1 and back[255, 1599] == 1
    assert back.sum() == 5 and back[1, 0] == 1 and back[0, 2] == 0


def test_empty_values():
    assert encode(np.zeros((256, 1600), np.uint8)) == ""
    for empty in ("", None, float("nan"), "   "):
        assert decode(empty).sum() == 0
        assert decode(empty).dtype == np.uint8


def test_full_mask_and_custom_shape():
    assert encode(np.ones((256, 1600), bool)) == "1 409600"
    assert decode("1 409600").all()
    small = np.array([[1, 0, 1], [1, 1, 0]])
    assert encode(small) == "1 2 4 2"
    np.testing.assert_array_equal(decode("1 2 4 2", (2, 3)), small)


@pytest.mark.parametrize("rle, message", [
    ("1 2 3", "odd number"),
    ("1 2.5", "not a non-negative integer"),
    ("a 2", "not a non-negative integer"),
    ("1 -2", "not a non-negative integer"),
    ("0 3", "start 0 < 1"),
    ("5 0", "length 0 < 1"),
    ("10 5 12 3", "ascending"),
    ("10 5 3 2", "ascending"),
    ("409600 2", "past the image end"),
    ("1 1_000", "not a non-negative integer"),
    ("1\u00a05 10 3", r"token 0 \('1\\xa05'\) is not a non-negative integer"),  # non-breaking space
    ("1 5 10\u20033", "token 2"),                                                   # em space
])
def test_decode_rejects_malformed(rle, message):
    with pytest.raises(RLEError, match=message):
        decode(rle)


def test_rle_error_is_value_error():
    with pytest.raises(ValueError):
        decode("1 2 3")
    with pytest.raises(RLEError):
        decode(12)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_round_trip_property(mask):
    rle = encode(mask)
    assert rle == reference_encode(mask)
    np.testing.assert_array_equal(decode(rle, mask.shape), mask)
    assert area(rle, mask.shape) == int(mask.sum())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), min_size=0, max_size=30))
def test_decode_encode_property_on_valid_runs(gaps_and_lengths):
    """Any ascending, non-touching run list survives decode -> encode unchanged."""
    tokens, pos = [], 0
    for gap, length in gaps_and_lengths:
        start = pos + gap + (1 if tokens else 0)
        tokens += [start + 1, length]
        pos = start + length
    shape = (64, max(1, -(-pos // 64) + 1))
    rle = " ".join(map(str, tokens))
    assert encode(decode(rle, shape)) == rle


@pytest.mark.real_data
def test_every_real_mask_round_trips_with_its_area(real_data):
    rows = pd.read_csv(real_data / "annotations" / "train_rle_partial.csv")
    labels = pd.read_csv(real_data / "annotations" / "image_labels.csv").set_index("image_id")
    assert len(rows) == 1943
    for image_id, class_id, rle in rows.itertuples(index=False):
        mask = decode(rle)
        assert encode(mask) == rle, (image_id, class_id)
        assert int(mask.sum()) == labels.loc[image_id, f"area_class_{class_id}"], (image_id, class_id)
