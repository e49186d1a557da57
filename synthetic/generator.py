"""Synthetic Severstal-like dataset: the default data when the real Kaggle set is not available.

Images imitate the real 256x1600 grey steel photos (vertical rolling streaks, stains, uneven
lighting, grain, sometimes a dark off-strip margin); defects of the four classes have real-like
frequencies, co-occurrences and areas, and masks are polygon-like regions as in the real labels.

Usage: ``python -m synthetic --out DIR --train N --test M --seed S [--shapes-from CSV]``.
Everything is a pure function of the seed: the same seed gives byte-identical CSVs and pixels.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from common.annotations import read_annotations
from common.constants import CLASS_IDS, IMAGE_SHAPE, LONG_COLUMNS, NEW_FORMAT, SUBMISSION_HEADERS
from common.errors import DatasetError
from common.io import atomic_write_text, check_writable
from common.rle import decode, encode

__all__ = [
    "VERSION",
    "SyntheticDataError",
    "MaskBank",
    "sample_classes",
    "draw_mask",
    "make_background",
    "render_defect",
    "make_sample",
    "sample_rng",
    "make_image_ids",
    "generate_dataset",
    "ensure_dataset",
    "read_metadata",
]

VERSION = 2
JPEG_QUALITY = 95
TRAIN_HEADER = tuple(LONG_COLUMNS)
SUBMISSION_HEADER = tuple(SUBMISSION_HEADERS[NEW_FORMAT])

# Sets of defect classes per image, counted on the 8379 real train images of image_labels.csv
# (46.9 % defect-free; class frequencies 7.1 / 2.1 / 40.9 / 6.5 %). The two real 3-class images
# out of 12568 are left out.
CLASS_COMBO_COUNTS: dict[tuple[int, ...], int] = {
    (): 3929,
    (3,): 3158,
    (1,): 511,
    (4,): 348,
    (3, 4): 195,
    (2,): 141,
    (1, 3): 65,
    (1, 2): 22,
    (2, 3): 10,
}
_COMBOS = list(CLASS_COMBO_COUNTS)
_COMBO_P = np.array(list(CLASS_COMBO_COUNTS.values()), float) / sum(CLASS_COMBO_COUNTS.values())

# Per-class style: probability that the defect is brighter than the steel, amplitude range (grey
# levels) and probability (15 %) of a faint defect (amplitude scaled down to 30-55 %).
_BRIGHT_P = {1: 0.6, 2: 0.3, 3: 0.65, 4: 0.1}
_AMPLITUDE = {1: (35.0, 90.0), 2: (25.0, 70.0), 3: (25.0, 65.0), 4: (35.0, 80.0)}
_FAINT_P = 0.15

_F32 = np.float32


class SyntheticDataError(DatasetError):
    """The synthetic generator cannot do what was asked (bad arguments, unusable output folder)."""


# ----------------------------------------------------------------------------- small helpers


def _noise_field(rng: np.random.Generator, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Smooth random field of ``shape``: unit normal noise on a coarse ``grid``, upsampled bicubically."""
    coarse = rng.standard_normal((max(grid[0], 2), max(grid[1], 2)), dtype=_F32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _white_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-variance float32 uniform white noise, from random bytes (5x faster than normals)."""
    raw = np.frombuffer(rng.bytes(shape[0] * shape[1]), np.uint8).reshape(shape)
    return cv2.addWeighted(raw, 1 / 73.9, raw, 0.0, -127.5 / 73.9, dtype=cv2.CV_32F)


def _smooth_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """1-D correlated noise of length n with unit standard deviation (Gaussian-filtered white noise)."""
    line = cv2.GaussianBlur(
        rng.standard_normal((1, n), dtype=_F32), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT
    )[0]
    return line / max(float(line.std()), 1e-6)


def _polygon(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n_vertices: int, jitter: float
) -> np.ndarray:
    """Irregular star-shaped polygon (int32 Nx2 x,y points) around an ellipse, like a hand-drawn outline."""
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, n_vertices))
    radius = 1.0 + jitter * rng.uniform(-1.0, 1.0, n_vertices)
    pts = np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def _strip(
    rng: np.random.Generator, cx: float, y0: float, y1: float, width: float, slope: float, n_knots: int, jitter: float
) -> np.ndarray:
    """Vertical band polygon from row y0 to y1 around a line of given slope (dx/dy), with wobbly sides."""
    ys = np.linspace(y0, y1, n_knots)
    centre = cx + slope * (ys - (y0 + y1) / 2) + rng.normal(0.0, width * 0.15, n_knots)
    half = width / 2 * (1.0 + jitter * rng.uniform(-1.0, 1.0, n_knots))
    half[[0, -1]] *= rng.uniform(0.3, 1.0, 2)  # tapered ends
    left = np.stack([centre - half, ys], axis=1)
    right = np.stack([centre + half, ys], axis=1)[::-1]
    return np.round(np.concatenate([left, right])).astype(np.int32)


def _fill(polygons: Sequence[np.ndarray], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Rasterise polygons into a 0/1 uint8 mask (clipped to the image)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, list(polygons), 1)
    return mask


# ----------------------------------------------------------------------------- class sets and shapes


def sample_classes(rng: np.random.Generator) -> tuple[int, ...]:
    """Draw the set of defect classes of one image with the real per-image co-occurrence frequencies."""
    return _COMBOS[int(rng.choice(len(_COMBOS), p=_COMBO_P))]


def _blob_cluster(
    rng: np.random.Generator,
    shape: tuple[int, int],
    lam: float,
    n_max: int,
    margin: float,
    spread: float,
    y_margin: float,
    rx: tuple[float, float],
    ry: tuple[float, float],
    vertices: tuple[int, int],
    jitter: float,
) -> np.ndarray:
    """1 + Poisson(lam) (at most n_max) irregular blobs scattered by ``spread`` around one column."""
    h, w = shape
    n = int(min(1 + rng.poisson(lam), n_max))
    cx0 = rng.uniform(margin, w - margin)
    polys = [
        _polygon(
            rng,
            cx0 + rng.normal(0, spread),
            rng.uniform(y_margin, h - y_margin),
            rng.uniform(*rx),
            rng.uniform(*ry),
            int(rng.integers(*vertices)),
            jitter,
        )
        for _ in range(n)
    ]
    return _fill(polys, shape)


def _mask_class1(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Class 1 (pitting): a vertical chain of 1-10 small blobs around one column."""
    return _blob_cluster(rng, shape, 1.8, 10, 40, 20, 10, (9, 26), (18, 50), (6, 11), 0.25)


def _mask_class2(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Class 2 (thin scratch): one, rarely two, narrow and long vertical bands."""
    h, w = shape
    polys = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        length = rng.uniform(90, h + 40)
        y0 = rng.uniform(-20, max(h - length + 20, -19))
        polys.append(
            _strip(rng, rng.uniform(20, w - 20), y0, y0 + length, rng.uniform(9, 26), rng.normal(0, 0.08), 6, 0.3)
        )
    return _fill(polys, shape)


def _mask_class3(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Class 3 (scratches / streaks along the rolling direction): 1-6 long vertical bands, sometimes wide."""
    h, w = shape
    n = int(min(1 + rng.poisson(1.0), 6))
    cx0 = rng.uniform(30, w - 30)
    polys = []
    for _ in range(n):
        if rng.random() < 0.18:  # wide streaky region, outlined loosely
            length = rng.uniform(150, h + 60)
            cy = rng.uniform(length / 2 - 30, h - length / 2 + 30)
            polys.append(
                _polygon(
                    rng, cx0 + rng.normal(0, 110), cy, rng.uniform(60, 210), length / 2, int(rng.integers(7, 12)), 0.15
                )
            )
            continue
        width = float(np.clip(rng.lognormal(np.log(32), 0.5), 10, 160))
        length = rng.uniform(90, h + 60)
        y0 = rng.uniform(-30, max(h - length + 30, -29))
        polys.append(
            _strip(
                rng,
                cx0 + rng.normal(0, 110),
                y0,
                y0 + length,
                width,
                rng.normal(0, 0.12),
                int(rng.integers(4, 9)),
                0.25,
            )
        )
    return _fill(polys, shape)


def _mask_class4(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Class 4 (holes / large dark blotches): 1-5 big irregular blobs close to each other."""
    return _blob_cluster(rng, shape, 0.8, 5, 100, 130, 40, (45, 150), (40, 110), (10, 20), 0.3)


_MASK_DRAWERS: dict[int, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    1: _mask_class1,
    2: _mask_class2,
    3: _mask_class3,
    4: _mask_class4,
}


def draw_mask(class_id: int, rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """A random, non-empty 0/1 uint8 mask of a class-``class_id`` defect, polygon-shaped like real labels."""
    if class_id not in _MASK_DRAWERS:
        raise ValueError(f"class_id must be one of {CLASS_IDS}, got {class_id!r}")
    while True:
        mask = _MASK_DRAWERS[class_id](rng, shape)
        if mask.any():
            return mask


class MaskBank:
    """Real defect masks by class, read from a Kaggle ``ImageId,ClassId,EncodedPixels`` file (``--shapes-from``)."""

    def __init__(self, path: Path | str, rles: dict[int, list[str]], shape: tuple[int, int] = IMAGE_SHAPE):
        self.path, self.rles, self.shape = Path(path), rles, shape

    @classmethod
    def from_csv(cls, path: Path | str, shape: tuple[int, int] = IMAGE_SHAPE) -> MaskBank:
        """Read and validate every row (either Kaggle format, through ``common.annotations``)."""
        rows = read_annotations(path, shape=shape).rows
        rles = {k: rows.loc[rows["ClassId"] == k, "EncodedPixels"].tolist() for k in CLASS_IDS}
        return cls(path, rles, shape)

    def sample(self, class_id: int, rng: np.random.Generator) -> np.ndarray:
        """Decode one real mask of ``class_id`` picked at random; error naming the file if it has none."""
        pool = self.rles.get(class_id, [])
        if not pool:
            raise SyntheticDataError(
                f"{self.path}: no non-empty mask of class {class_id} to take shapes from "
                f"(counts per class: { {k: len(v) for k, v in self.rles.items()} })"
            )
        return decode(pool[int(rng.integers(len(pool)))], self.shape)


# ----------------------------------------------------------------------------- background


def make_background(rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Defect-free steel as float32 grey levels: rolling streaks, stains, uneven lighting (no grain yet)."""
    h, w = shape
    base = rng.uniform(60.0, 150.0)
    contrast = rng.uniform(0.7, 1.6)
    # Rolling texture: every column has its own brightness (the strip moves along the 256-px axis).
    columns = (
        rng.uniform(6, 18) * _smooth_1d(rng, w, rng.uniform(25, 80))
        + rng.uniform(3, 9) * _smooth_1d(rng, w, rng.uniform(3, 8))
        + rng.uniform(1, 5) * _smooth_1d(rng, w, 0.7)
    )
    image = np.empty(shape, _F32)
    image[:] = base + contrast * columns[None, :]
    # Vertically elongated stains (oil / water marks), present only in patches of the image.
    stains = _noise_field(rng, (int(rng.integers(3, 8)), w // int(rng.integers(4, 10))), shape)
    patches = _noise_field(rng, (2, int(rng.integers(3, 9))), shape)
    depth = rng.uniform(15, 45) * contrast * (1 if rng.random() < 0.75 else -1)
    image -= depth * np.clip(stains - 0.9, 0.0, 1.0) * np.clip(patches + 0.3, 0.0, 1.0)
    if rng.random() < 0.5:  # mottled (rusty / dirty) areas
        mottle = _noise_field(rng, (int(rng.integers(12, 30)), int(rng.integers(80, 200))), shape)
        image -= rng.uniform(10, 35) * contrast * np.clip(mottle - 0.8, 0.0, 1.0) * np.clip(patches, 0.0, 1.0)
    # Uneven illumination: smooth bright/dark zones plus a gradient across the strip.
    illum = _noise_field(rng, (2, int(rng.integers(3, 7))), shape) * rng.uniform(8, 25)
    illum += np.linspace(-1.0, 1.0, w, dtype=_F32)[None, :] * rng.uniform(-30, 30)
    illum += np.linspace(-1.0, 1.0, h, dtype=_F32)[:, None] * rng.uniform(-30, 30)
    image += illum
    if rng.random() < 0.4:  # faint horizontal chatter lines
        period = rng.uniform(3.0, 7.0)
        rows = np.sin(2 * np.pi * np.arange(h, dtype=_F32) / period + rng.uniform(0, 2 * np.pi))
        image += (rng.uniform(0.5, 3.0) * rows)[:, None].astype(_F32)
    return image


def _add_off_strip(image: np.ndarray, masks: dict[int, np.ndarray], rng: np.random.Generator) -> None:
    """Sometimes blacken a margin beyond the strip edge (as in real images), never over a defect."""
    if rng.random() >= 0.3:
        return
    h, w = image.shape
    used = np.zeros(w, bool)
    for mask in masks.values():
        used |= mask.any(axis=0)
    cols = np.flatnonzero(used)
    left_room = int(cols[0]) - 20 if cols.size else w  # keep 20 px of steel beside a defect
    right_room = w - int(cols[-1]) - 21 if cols.size else w
    side = "left" if rng.random() < 0.5 else "right"
    room = min(left_room if side == "left" else right_room, int(0.9 * w))
    if room < 60:
        return
    width = int(rng.uniform(60, room))
    dark = rng.uniform(2, 12) + rng.normal(0, 1.5, (h, width)).astype(_F32)
    if side == "left":
        image[:, :width] = dark
        image[:, width : width + 4] += 25  # bright rim at the strip edge
    else:
        image[:, w - width :] = dark
        image[:, w - width - 4 : w - width] += 25


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera grain (fine and slightly correlated), surface pits and sparkles, then round to uint8."""
    h, w = image.shape
    noise = _white_noise(rng, (h, w))
    smooth = cv2.GaussianBlur(noise, (3, 3), 0.8)
    grain = cv2.addWeighted(smooth, rng.uniform(6, 14), noise, rng.uniform(2.5, 6), 0.0)
    flat = cv2.add(image, grain).reshape(-1)
    # Surface pits (dark) and sparkles (bright): single pixels, softened by the JPEG later.
    pits, sparkles = int(rng.integers(0, 6000)), int(rng.integers(0, 800))
    for scale, count in ((-rng.uniform(15, 45), pits), (rng.uniform(20, 60), sparkles)):
        flat[rng.integers(0, h * w, count)] += (scale * rng.uniform(0.4, 1.0, count)).astype(_F32)
    # Saturating, rounding float32 -> uint8 conversion in one pass.
    return cv2.add(flat.reshape(h, w), 0.0, dtype=cv2.CV_8U)


# ----------------------------------------------------------------------------- defect textures


def _tex_class1(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pits: a cluster of small round spots of varied size over a slight overall tint."""
    spots = np.zeros(m.shape, _F32)
    inside = np.flatnonzero(m)
    n = max(4, int(inside.size * rng.uniform(0.015, 0.04)))
    picks = rng.choice(inside, n)
    radii = rng.choice([1, 2, 2, 3, 3, 4, 5], n)
    values = rng.uniform(0.5, 1.0, n)
    for p, r, v in zip(picks.tolist(), radii.tolist(), values.tolist()):
        cv2.circle(spots, (p % m.shape[1], p // m.shape[1]), r, v, -1)
    # The tint keeps a pit cluster visible after the 4x downscale of small models.
    return 0.4 + 0.8 * cv2.GaussianBlur(spots, (0, 0), 0.7)


def _tex_class2(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thin scratch: a sharp ridge along the middle of the region, broken up along its length."""
    dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    ridge = np.clip(dist / max(float(dist.max()), 1.0), 0, 1) ** 1.5
    along = 0.65 + 0.35 * np.tanh(1.5 * _smooth_1d(rng, m.shape[0], rng.uniform(4, 15)))
    return (0.25 + 0.9 * ridge) * along[:, None]


def _tex_class3(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scratches/streaks: parallel fine lines along the region's axis plus streaky smears."""
    h, w = m.shape
    xs = np.arange(w, dtype=_F32)
    lines = np.zeros(w, _F32)
    for _ in range(int(rng.integers(2, 3 + w // 12))):
        centre, width = rng.uniform(0, w), rng.uniform(0.8, 4.0)
        lines += rng.uniform(0.4, 1.0) * np.exp(-0.5 * ((xs - centre) / width) ** 2)
    along = 0.55 + 0.45 * np.tanh(_smooth_1d(rng, h, rng.uniform(5, 20)))
    smear = np.clip(_noise_field(rng, (max(h // 60, 2), max(w // 4, 2)), (h, w)), 0, None) * 0.5
    pattern = np.clip(lines, 0, 1.2)[None, :] * along[:, None] + smear + 0.3
    # Lines follow the tilt of clearly vertical regions (x-on-y regression slope), else stay vertical.
    mom = cv2.moments(m.astype(np.uint8), binaryImage=True)
    slope = float(np.clip(mom["mu11"] / mom["mu02"], -0.3, 0.3)) if mom["mu02"] > 2 * mom["mu20"] else 0.0
    if abs(slope) > 0.02:
        shear = np.array([[1.0, slope, -slope * h / 2], [0.0, 1.0, 0.0]], np.float32)
        pattern = cv2.warpAffine(pattern, shear, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return pattern


def _tex_class4(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Holes/blotches: deepest inside, rough-textured, with a few flakes of the opposite brightness."""
    h, w = m.shape
    depth = np.clip(cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3) / rng.uniform(6, 25), 0, 1)
    rough = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=_F32), (0, 0), rng.uniform(2, 5))
    rough /= max(float(rough.std()), 1e-6)
    pattern = (0.45 + 0.55 * depth) * (0.85 + 0.3 * rough) + 0.12 * rng.standard_normal((h, w), dtype=_F32)
    pattern[rough > 2.0] = -0.6
    return pattern


_TEXTURES: dict[int, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    1: _tex_class1,
    2: _tex_class2,
    3: _tex_class3,
    4: _tex_class4,
}


def render_defect(image: np.ndarray, class_id: int, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add the class texture inside ``mask`` (any shape) to a float32 image in place; pixels outside stay put."""
    if class_id not in _TEXTURES:
        raise ValueError(f"class_id must be one of {CLASS_IDS}, got {class_id!r}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    sign = 1.0 if rng.random() < _BRIGHT_P[class_id] else -1.0
    amplitude = rng.uniform(*_AMPLITUDE[class_id])
    if rng.random() < _FAINT_P:
        amplitude *= rng.uniform(0.3, 0.55)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    for i in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        region = labels[y : y + bh, x : x + bw] == i
        weight = cv2.GaussianBlur(region.astype(_F32), (0, 0), 1.5) * region
        texture = _TEXTURES[class_id](region, rng)
        image[y : y + bh, x : x + bw] += (sign * amplitude) * texture * weight
    return image


# ----------------------------------------------------------------------------- samples


def make_sample(
    rng: np.random.Generator, shapes: MaskBank | None = None, shape: tuple[int, int] = IMAGE_SHAPE
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One synthetic image (uint8 HxW) and its masks {class_id: 0/1 uint8 HxW}, drawn or taken from ``shapes``."""
    classes = sample_classes(rng)
    masks = {k: (shapes.sample(k, rng) if shapes is not None else draw_mask(k, rng, shape)) for k in classes}
    image = make_background(rng, shape)
    _add_off_strip(image, masks, rng)
    for k in classes:
        render_defect(image, k, masks[k], rng)
    return _finish(image, rng), masks


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator of image ``index`` of ``split`` ('train'/'test'), so images can be made in any order."""
    return np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])


def make_image_ids(n: int, seed: int) -> list[str]:
    """``n`` unique Kaggle-like ids ('0123abcde.jpg': 9 lowercase hex digits), a function of the seed."""
    rng = np.random.default_rng([seed, 2])
    ids: dict[str, None] = {}
    while len(ids) < n:
        for value in rng.integers(0, 16**9, n - len(ids)).tolist():
            ids.setdefault(f"{value:09x}.jpg", None)
    return list(ids)


# ----------------------------------------------------------------------------- dataset on disk


def _encode_jpeg(gray: np.ndarray) -> bytes:
    """Grey image as a 3-channel JPEG (identical channels), as the Kaggle files are stored."""
    ok, buf = cv2.imencode(".jpg", cv2.merge([gray, gray, gray]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SyntheticDataError("OpenCV could not encode a JPEG image")
    return buf.tobytes()


def _csv_text(header: Sequence[str], rows: list[tuple]) -> str:
    """CSV with '\\n' line ends, as in the Kaggle files."""
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def _prepare_out(out: Path) -> None:
    """Create ``out``; a previous synthetic dataset there is replaced, any other non-empty folder refused."""
    if out.exists() and not out.is_dir():
        raise SyntheticDataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "dataset.json").is_file():
            raise SyntheticDataError(
                f"{out}: folder is not empty and holds no synthetic dataset.json; refusing to write into it"
            )
        (out / "dataset.json").unlink()  # marks the folder incomplete while rewriting
        for sub in ("train_images", "test_images"):
            shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("train_images", "test_images"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, to tie a cached dataset to the exact --shapes-from file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_dataset(
    out: Path | str, n_train: int, n_test: int, seed: int, shapes_from: Path | str | None = None
) -> Path:
    """Write a Kaggle-layout synthetic dataset under ``out`` and return ``out``.

    Files: train_images/*.jpg, test_images/*.jpg, train.csv and test_truth.csv
    (ImageId,ClassId,EncodedPixels), sample_submission.csv (ImageId,EncodedPixels,ClassId) and,
    written last so that its presence means 'complete', dataset.json with the parameters.
    """
    out = Path(out)
    if n_train < 0 or n_test < 0:
        raise SyntheticDataError(f"image counts must be >= 0, got train={n_train} test={n_test}")
    if seed < 0:
        raise SyntheticDataError(f"seed must be >= 0, got {seed}")
    bank = MaskBank.from_csv(shapes_from) if shapes_from is not None else None
    check_writable(out, "synthetic dataset folder (data.root, or --out)", directory=True)
    _prepare_out(out)
    ids = make_image_ids(n_train + n_test, seed)
    class_counts: dict[str, Counter] = {}
    for split, split_ids in (("train", ids[:n_train]), ("test", ids[n_train:])):
        rows: list[tuple] = []
        counts: Counter = Counter()
        for index, image_id in enumerate(split_ids):
            image, masks = make_sample(sample_rng(seed, split, index), bank)
            (out / f"{split}_images" / image_id).write_bytes(_encode_jpeg(image))
            rows.extend((image_id, k, encode(masks[k])) for k in sorted(masks))
            counts.update(masks.keys() or ["none"])
        rows.sort(key=lambda r: (r[0], r[1]))
        csv_name = "train.csv" if split == "train" else "test_truth.csv"
        atomic_write_text(out / csv_name, _csv_text(TRAIN_HEADER, rows))
        class_counts[split] = counts
    submission = [(image_id, "1 409600", 0) for image_id in sorted(ids[n_train:])]
    atomic_write_text(out / "sample_submission.csv", _csv_text(SUBMISSION_HEADER, submission))
    meta = {
        "generator": "synthetic.generator",
        "version": VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "image_shape": list(IMAGE_SHAPE),
        "jpeg_quality": JPEG_QUALITY,
        "shapes_from": str(shapes_from) if shapes_from is not None else None,
        "shapes_from_sha256": _file_sha256(Path(shapes_from)) if shapes_from is not None else None,
        "images_per_class": {split: {str(k): c[k] for k in (*CLASS_IDS, "none")} for split, c in class_counts.items()},
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out


def read_metadata(out: Path | str) -> dict | None:
    """Parameters of the synthetic dataset in ``out`` (dataset.json), or None if absent/incomplete."""
    path = Path(out) / "dataset.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_dataset(
    root: Path | str, n_train: int, n_test: int, seed: int, shapes_from: Path | str | None = None
) -> Path:
    """Generate the dataset into ``root`` unless the one there was made with the same parameters (and the
    same ``--shapes-from`` file, by checksum); the ``data.generate`` hook of ``configs/data/synthetic*.yaml``."""
    root = Path(root)
    with _generation_lock(root):  # folds trained side by side (hydra/launcher=joblib) start here together
        meta = read_metadata(root)
        sha = _file_sha256(Path(shapes_from)) if shapes_from else None
        if meta is not None and (
            meta.get("version"),
            meta.get("seed"),
            meta.get("n_train"),
            meta.get("n_test"),
            meta.get("shapes_from_sha256"),
        ) == (VERSION, seed, n_train, n_test, sha):
            return root
        return generate_dataset(root, n_train, n_test, seed, shapes_from=shapes_from or None)


@contextlib.contextmanager
def _generation_lock(root: Path):
    """An exclusive lock file beside ``root`` (``.<name>.lock``): one process generates, the others wait and
    then find the finished dataset."""
    check_writable(root.parent, "synthetic dataset parent folder (data.root, or --out)", directory=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
