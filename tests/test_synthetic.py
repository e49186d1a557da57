"""The synthetic default dataset: Kaggle layout, exact masks, determinism, real-like statistics."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.constants import IMAGE_SHAPE
from common.errors import AnnotationError
from common.rle import decode, encode
from synthetic import __main__ as synthetic_cli
from synthetic import generator as S

REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared/data/severstal"
REAL_TRAIN_CSV = REAL / "annotations/train_rle_partial.csv"
ID_RE = re.compile(r"^[0-9a-f]{9}\.jpg$")
# Median defect area (pixels) per class over the real train images (image_labels.csv).
REAL_MEDIAN_AREA = {1: 3365, 2: 3136, 3: 12020, 4: 25060}

N_TRAIN, N_TEST, SEED = 16, 6, 11


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def read_gray3(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} is not readable"
    return image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return S.generate_dataset(tmp_path_factory.mktemp("syn") / "data", N_TRAIN, N_TEST, SEED)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, dict[int, np.ndarray]]]:
    return [S.make_sample(S.sample_rng(2024, "train", i)) for i in range(300)]


def write_masks_csv(path: Path, masks: dict[int, list[np.ndarray]]) -> Path:
    rows = [f"{i:09x}.jpg,{k},{encode(m)}" for k, ms in masks.items() for i, m in enumerate(ms)]
    path.write_text("ImageId,ClassId,EncodedPixels\n" + "\n".join(rows) + "\n")
    return path


def box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


# ------------------------------------------------------------------ layout and files


def test_kaggle_layout(dataset: Path) -> None:
    train_files = sorted(p.name for p in (dataset / "train_images").iterdir())
    test_files = sorted(p.name for p in (dataset / "test_images").iterdir())
    assert len(train_files) == N_TRAIN and len(test_files) == N_TEST
    assert all(ID_RE.match(name) for name in train_files + test_files)
    assert not set(train_files) & set(test_files)

    for name in ("train.csv", "test_truth.csv"):
        header, rows = read_rows(dataset / name)
        assert header == ["ImageId", "ClassId", "EncodedPixels"]
        keys = [(r[0], int(r[1])) for r in rows]
        assert keys == sorted(set(keys)), f"{name}: rows must be unique and sorted by ImageId, ClassId"
        assert all(k in (1, 2, 3, 4) for _, k in keys)
        assert {i for i, _ in keys} <= set(train_files if name == "train.csv" else test_files)

    header, rows = read_rows(dataset / "sample_submission.csv")
    assert header == ["ImageId", "EncodedPixels", "ClassId"]
    assert rows == [[name, "1 409600", "0"] for name in test_files]

    meta = json.loads((dataset / "dataset.json").read_text())
    assert (meta["seed"], meta["n_train"], meta["n_test"], meta["version"]) == (SEED, N_TRAIN, N_TEST, S.VERSION)
    assert S.read_metadata(dataset) == meta


def test_images_are_256x1600_grey_in_three_channels(dataset: Path) -> None:
    for path in sorted((dataset / "train_images").iterdir()) + sorted((dataset / "test_images").iterdir()):
        assert path.read_bytes()[:2] == b"\xff\xd8", f"{path} is not a JPEG"
        image = read_gray3(path)
        assert image.shape == (*IMAGE_SHAPE, 3) and image.dtype == np.uint8
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        assert 5 < image.std(), f"{path} is flat"


def test_csv_rles_decode_to_the_generated_masks_and_images_match(dataset: Path) -> None:
    ids = S.make_image_ids(N_TRAIN + N_TEST, SEED)
    parts = (("train", "train.csv", ids[:N_TRAIN]), ("test", "test_truth.csv", ids[N_TRAIN:]))
    for split, csv_name, split_ids in parts:
        _, rows = read_rows(dataset / csv_name)
        by_id: dict[str, dict[int, str]] = {}
        for image_id, class_id, rle in rows:
            by_id.setdefault(image_id, {})[int(class_id)] = rle
        for index, image_id in enumerate(split_ids):
            image, masks = S.make_sample(S.sample_rng(SEED, split, index))
            rles = by_id.get(image_id, {})
            assert set(rles) == set(masks), f"{split} {image_id}: CSV classes differ from the generated ones"
            for class_id, rle in rles.items():
                decoded = decode(rle)
                assert decoded.any(), f"{image_id} class {class_id}: empty RLE"
                assert np.array_equal(decoded, masks[class_id])
            stored = read_gray3(dataset / f"{split}_images" / image_id)[..., 0]
            assert np.abs(stored.astype(int) - image).mean() < 3.0, "JPEG must hold the generated pixels"


def test_rerun_replaces_old_dataset_but_refuses_foreign_folder(tmp_path: Path) -> None:
    out = S.generate_dataset(tmp_path / "d", 5, 2, 0)
    S.generate_dataset(out, 3, 1, 0)
    assert len(list((out / "train_images").iterdir())) == 3
    assert len(list((out / "test_images").iterdir())) == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(S.SyntheticDataError, match="not empty"):
        S.generate_dataset(foreign, 2, 1, 0)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs", [dict(n_train=-1, n_test=1, seed=0), dict(n_train=1, n_test=1, seed=-3)])
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(S.SyntheticDataError):
        S.generate_dataset(tmp_path / "x", **kwargs)


# ------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = S.generate_dataset(tmp_path / "a", 6, 3, 5)
    b = S.generate_dataset(tmp_path / "b", 6, 3, 5)
    c = S.generate_dataset(tmp_path / "c", 6, 3, 6)
    for name in ("train.csv", "test_truth.csv", "sample_submission.csv", "dataset.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for sub in ("train_images", "test_images"):
        names = sorted(p.name for p in (a / sub).iterdir())
        assert names == sorted(p.name for p in (b / sub).iterdir())
        for name in names:
            assert np.array_equal(read_gray3(a / sub / name), read_gray3(b / sub / name))
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    assert {p.name for p in (a / "train_images").iterdir()}.isdisjoint(p.name for p in (c / "train_images").iterdir())

    first, again, other = (S.make_sample(S.sample_rng(s, "train", 0)) for s in (5, 5, 6))
    assert np.array_equal(first[0], again[0]) and first[1].keys() == again[1].keys()
    assert all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
    assert not np.array_equal(first[0], other[0])


def test_image_ids_unique_and_kaggle_like() -> None:
    ids = S.make_image_ids(2000, 3)
    assert len(set(ids)) == 2000 and all(ID_RE.match(i) for i in ids)
    assert S.make_image_ids(10, 3) == S.make_image_ids(10, 3) != S.make_image_ids(10, 4)


# ------------------------------------------------------------------ statistics and learnability


def test_class_statistics_are_real_like(samples) -> None:
    n = len(samples)
    per_class = {k: sum(k in masks for _, masks in samples) for k in S.CLASS_IDS}
    n_clean = sum(not masks for _, masks in samples)
    n_multi = sum(len(masks) >= 2 for _, masks in samples)
    assert 0.35 <= n_clean / n <= 0.60
    assert per_class[3] == max(per_class.values())
    assert per_class[2] == min(per_class.values()) and per_class[2] > 0
    assert 0.25 <= per_class[3] / n <= 0.55
    assert n_multi > 0
    for _, masks in samples:
        assert all(m.dtype == np.uint8 and m.shape == IMAGE_SHAPE and m.any() and m.max() == 1 for m in masks.values())


def test_large_classes_have_large_areas(samples) -> None:
    areas = {k: [int(m[k].sum()) for _, m in samples if k in m] for k in S.CLASS_IDS}
    median = {k: float(np.median(v)) for k, v in areas.items()}
    assert min(median[3], median[4]) > max(median[1], median[2])


@pytest.mark.parametrize("class_id", S.CLASS_IDS)
def test_drawn_areas_match_real_medians_and_are_blob_like(class_id: int) -> None:
    rng = np.random.default_rng(class_id)
    masks = [S.draw_mask(class_id, rng) for _ in range(80)]
    median = float(np.median([m.sum() for m in masks]))
    assert REAL_MEDIAN_AREA[class_id] / 2 <= median <= REAL_MEDIAN_AREA[class_id] * 2
    for mask in masks:
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        assert opened.sum() >= 0.9 * mask.sum(), "masks must be solid regions, not pixel noise"
        assert cv2.connectedComponents(mask)[0] - 1 <= 12


@pytest.mark.parametrize("class_id", S.CLASS_IDS)
def test_defects_change_pixels_inside_the_mask_only(class_id: int) -> None:
    rng = np.random.default_rng(100 + class_id)
    inside = []
    for _ in range(12):
        background = S.make_background(rng)
        mask = S.draw_mask(class_id, rng)
        image = S.render_defect(background.copy(), class_id, mask, rng)
        diff = np.abs(image - background)
        assert np.array_equal(image[mask == 0], background[mask == 0])
        inside.append(float(diff[mask > 0].mean()))
    assert min(inside) > 1.5, "even faint defects must differ from the steel"
    assert np.median(inside) > 8.0, f"class {class_id} defects are too faint to learn: {inside}"


def test_defect_contrast_survives_grain(samples) -> None:
    # On finished images the masked pixels differ from a ring of steel around them.
    gaps = {k: [] for k in S.CLASS_IDS}
    for image, masks in samples[:150]:
        for k, mask in masks.items():
            ring = cv2.dilate(mask, np.ones((25, 25), np.uint8)) - cv2.dilate(mask, np.ones((5, 5), np.uint8))
            if ring.sum() > 200:
                gaps[k].append(
                    abs(float(image[mask > 0].mean()) - float(image[ring > 0].mean()))
                    + abs(float(image[mask > 0].std()) - float(image[ring > 0].std()))
                )
    for k, values in gaps.items():
        if values:
            assert np.median(values) > 3.0, f"class {k}: {values}"


# ------------------------------------------------------------------ --shapes-from


def test_shapes_from_uses_the_given_masks(tmp_path: Path) -> None:
    given = {
        1: [box_mask(10, 60, 100, 130), box_mask(100, 140, 300, 320)],
        2: [box_mask(0, 200, 500, 512)],
        3: [box_mask(0, 256, 700, 760)],
        4: [box_mask(50, 200, 900, 1100)],
    }
    csv_path = write_masks_csv(tmp_path / "shapes.csv", given)
    bank = S.MaskBank.from_csv(csv_path)
    for i in range(60):
        _, masks = S.make_sample(S.sample_rng(1, "train", i), bank)
        for k, mask in masks.items():
            assert any(np.array_equal(mask, g) for g in given[k]), f"class {k} mask not from the file"

    out = S.generate_dataset(tmp_path / "d", 20, 0, 1, shapes_from=csv_path)
    _, rows = read_rows(out / "train.csv")
    assert rows
    allowed = {k: {encode(g) for g in gs} for k, gs in given.items()}
    assert all(rle in allowed[int(k)] for _, k, rle in rows)
    assert json.loads((out / "dataset.json").read_text())["shapes_from"] == str(csv_path)


def test_shapes_from_without_a_needed_class_names_file_and_class(tmp_path: Path) -> None:
    csv_path = write_masks_csv(tmp_path / "only3.csv", {3: [box_mask(0, 256, 10, 40)]})
    with pytest.raises(S.SyntheticDataError, match=r"only3\.csv.*class 1"):
        S.MaskBank.from_csv(csv_path).sample(1, np.random.default_rng(0))
    with pytest.raises(S.SyntheticDataError, match=r"only3\.csv.*class [124]"):
        S.generate_dataset(tmp_path / "d", 60, 0, 0, shapes_from=csv_path)


@pytest.mark.parametrize(
    "content, match",
    [
        ("ImageId,EncodedPixels\na.jpg,1 2\n", "header"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,3,1 5\nb.jpg,7,1 5\n", r"line 3: unknown ClassId"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,3,1 5\nb.jpg,2,10 5 12 3\n", r"line 3: bad EncodedPixels for 'b\.jpg'"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,3,409600 5\n", r"line 2: bad EncodedPixels for 'a\.jpg'"),
    ],
)
def test_invalid_shapes_file_names_file_and_row(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=r"bad\.csv.*" + match):
        S.MaskBank.from_csv(path)
    with pytest.raises(AnnotationError, match="missing.csv"):
        S.MaskBank.from_csv(tmp_path / "missing.csv")


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_TRAIN_CSV.is_file(), reason="real Severstal annotations not present")
def test_shapes_from_real_annotations() -> None:
    bank = S.MaskBank.from_csv(REAL_TRAIN_CSV)
    assert all(bank.rles[k] for k in S.CLASS_IDS)
    real = {k: set(v) for k, v in bank.rles.items()}
    seen = 0
    for i in range(25):
        image, masks = S.make_sample(S.sample_rng(0, "train", i), bank)
        assert image.shape == IMAGE_SHAPE
        for k, mask in masks.items():
            assert encode(mask) in real[k]
            seen += 1
    assert seen > 5


# ------------------------------------------------------------------ command line


def test_command_line_writes_dataset_and_prints_summary(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "synthetic", "--out", str(out), "--train", "3", "--test", "2", "--seed", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "c3=" in lines[0]
    assert len(list((out / "train_images").iterdir())) == 3
    assert (out / "sample_submission.csv").is_file() and (out / "test_truth.csv").is_file()


def test_command_line_reports_bad_shapes_file(tmp_path: Path, capsys) -> None:
    status = synthetic_cli.main(
        ["--out", str(tmp_path / "o"), "--train", "1", "--test", "0", "--shapes-from", str(tmp_path / "nope.csv")]
    )
    assert status == 2
    assert "nope.csv" in capsys.readouterr().err


def test_processes_that_start_together_generate_the_dataset_once(tmp_path: Path) -> None:
    """Folds launched side by side (hydra/launcher=joblib) both call ensure_dataset on a missing root: one
    generates, the other waits for the lock and finds the finished dataset (no 'folder is not empty' error)."""
    root = tmp_path / "synthetic" / "ds"
    code = (
        "import sys; from synthetic.generator import ensure_dataset; "
        f"ensure_dataset({str(root)!r}, 12, 2, 3); print('ok')"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert json.loads((root / "dataset.json").read_text())["n_train"] == 12
    assert len(list((root / "train_images").iterdir())) == 12
