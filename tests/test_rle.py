"""RLE: Kaggle convention, strict validation, exact on every real mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.errors import RLEError
from common.rle import area, decode, encode, format_ints, parse


def reference_encode(mask: np.ndarray) -> str:
    """The straightforward formulation (transpose, flatten, pad, diff), as a cross-check."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def test_transposition_guard_with_asymmetric_mask():
    mask = np.zeros((256, 1600), np.uint8)
    mask[0:3, 0] = 1  # pixels 1..3 (top of the first column)
    mask[0, 1] = 1  # pixel 257: first row, second column
    mask[255, 1599] = 1  # the very last pixel
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


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.int8])
@pytest.mark.parametrize("row, col, expected", [(0, 0, "1 1"), (255, 1599, "409600 1"), (7, 3, "776 1")])
def test_one_pixel_is_not_taken_for_an_empty_mask(dtype, row, col, expected):
    mask = np.zeros((256, 1600), dtype)  # the empty-mask shortcut reads the mask 8 bytes at a time
    mask[row, col] = 1
    assert encode(mask) == expected


def test_full_mask_and_custom_shape():
    assert encode(np.ones((256, 1600), bool)) == "1 409600"
    assert decode("1 409600").all()
    small = np.array([[1, 0, 1], [1, 1, 0]])
    assert encode(small) == "1 2 4 2"
    np.testing.assert_array_equal(decode("1 2 4 2", (2, 3)), small)


@pytest.mark.parametrize(
    "rle, message",
    [
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
        ("1\u00a05 10 3", r"U\+00A0 NO-BREAK SPACE\) at position 1"),  # non-breaking space
        ("1 5 10\u20033", r"U\+2003 EM SPACE\) at position 6"),  # em space
    ],
)
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


# ----------------------------------------------------------------------------- every layout and dtype encodes alike


def _speckled(shape=(256, 1600), seed=0, density=0.002) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = (rng.random(shape) < density).astype(np.uint8)
    mask[:, 100:140] = 1  # a band touching the top and bottom rows: runs across columns
    mask[0, :] = rng.random(shape[1]) < 0.5  # first row and last column: the edges of the column-major order
    mask[:, -1] = 1
    return mask


@pytest.mark.parametrize(
    "layout",
    [
        "uint8",
        "bool",
        "uint8 0/255",
        "int8 -1",
        "float32",
        "int32",
        "fortran",
        "column slice",
        "row slice",
        "transposed view",
    ],
)
def test_encode_is_the_same_for_every_layout_and_dtype(layout):
    mask = _speckled()
    expected = reference_encode(mask)
    variants = {
        "uint8": mask,
        "bool": mask.astype(bool),
        "uint8 0/255": mask * np.uint8(255),
        "int8 -1": -mask.astype(np.int8),
        "float32": mask.astype(np.float32) * 0.7,
        "int32": mask.astype(np.int32) * 3,
        "fortran": np.asfortranarray(mask),
        "column slice": np.pad(mask, ((0, 0), (3, 5)))[:, 3:-5],
        "row slice": np.pad(mask, ((2, 2), (0, 0)))[2:-2],
        "transposed view": np.ascontiguousarray(mask.T).T,
    }
    assert encode(variants[layout]) == expected


def test_encode_word_path_on_mixed_values_and_shapes():
    rng = np.random.default_rng(3)
    for h, w in [(2, 8), (3, 16), (256, 1600), (7, 64), (1, 64), (256, 8)]:
        for density in (0.0, 0.01, 0.5, 1.0):
            mask = (rng.random((h, w)) < density).astype(np.uint8) * rng.integers(1, 256, (h, w), dtype=np.uint8)
            assert encode(mask) == reference_encode(mask != 0), (h, w, density)
            np.testing.assert_array_equal(decode(encode(mask), (h, w)), mask != 0)


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        np.uint8, st.tuples(st.integers(1, 9), st.sampled_from([8, 16, 24, 40])), elements=st.sampled_from([0, 1, 255])
    )
)
def test_word_path_property(mask):
    """C-ordered 1-byte masks whose width is a multiple of 8 take the no-transpose path: same text as the reference."""
    assert encode(mask) == reference_encode(mask != 0)


def test_format_ints_matches_str():
    values = [0, 1, 9, 10, 99, 100, 12345, 409600, 409601, 10**7, 2**40]
    assert format_ints(values) == " ".join(map(str, values))
    assert format_ints(np.arange(0, 409601, 997)) == " ".join(map(str, range(0, 409601, 997)))
    assert format_ints([]) == ""


def test_parse_gives_starts_and_lengths_and_allows_touching_runs():
    starts, lengths = parse("3 2 5 4 20 1")
    assert starts.tolist() == [2, 4, 19] and lengths.tolist() == [2, 4, 1]
    assert decode("3 2 5 4", (4, 3)).T.ravel().tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert area("3 2 5 4 20 1") == 7
