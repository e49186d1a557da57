"""Annotations in both Kaggle formats, dataset roots, and the clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.annotations import read_annotations
from common.dataset import dataset_from, load_split
from common.errors import AnnotationError, DatasetError, ImageError
from common.images import read_image


def write_image(path: Path, value: int = 128, shape=(256, 1600), fmt: str = ".jpg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(fmt, np.full((*shape, 3), value, np.uint8))
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "train_images" / name)
    (tmp_path / "train.csv").write_text(
        "ImageId,ClassId,EncodedPixels\na.jpg,3,1 10 300 5\nb.jpg,1,5 2\nb.jpg,4,100 50\n"
    )
    return tmp_path


def test_new_format_keeps_clean_images(root: Path):
    ds = load_split(root)
    assert ds.image_ids == ("a.jpg", "b.jpg", "c.jpg")
    assert ds.labels.loc["c.jpg"].sum() == 0  # in the folder, not in the CSV: defect-free, kept
    assert ds.labels.loc["b.jpg"].tolist() == [1, 0, 0, 1]
    masks = ds.masks("a.jpg")
    assert masks.shape == (4, 256, 1600) and masks[2].sum() == 15 and masks[[0, 1, 3]].sum() == 0


def test_old_format_reads_to_the_same_long_form(root: Path, tmp_path: Path):
    new = read_annotations(root / "train.csv")
    old_csv = tmp_path / "old.csv"
    lines = ["ImageId_ClassId,EncodedPixels"]
    rles = {(i, c): r for i, c, r in new.rows.itertuples(index=False)}
    for image_id in ("a.jpg", "b.jpg", "c.jpg"):
        lines += [f"{image_id}_{c},{rles.get((image_id, c), '')}" for c in (1, 2, 3, 4)]
    old_csv.write_text("\n".join(lines) + "\n")
    old = read_annotations(old_csv)
    assert old.format == "old" and new.format == "new"
    assert old.rows.equals(new.rows)
    assert old.image_ids == ("a.jpg", "b.jpg", "c.jpg")  # clean images listed in the old format survive


def test_extra_index_column_is_tolerated(tmp_path: Path):
    csv = tmp_path / "seed.csv"
    csv.write_text(",EncodedPixels,ImageId,ClassId\n0,1 5,x.jpg,2\n1,,x.jpg,3\n")
    ann = read_annotations(csv)
    assert ann.rows.to_dict("records") == [{"ImageId": "x.jpg", "ClassId": 2, "EncodedPixels": "1 5"}]


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.jpg,5,1 3\n", "line 2: unknown ClassId '5'"),
        ("a.jpg,1,1 3\na.jpg,1,9 3\n", "line 3: duplicate row for image 'a.jpg' class 1 \\(first at line 2\\)"),
        ("../x.jpg,1,1 3\n", "line 2: ImageId '../x.jpg' is not a plain file name"),
        ("/etc/passwd,1,1 3\n", "is not a plain file name"),
        ("a.jpg,1,1 3 4\n", "line 2: bad EncodedPixels .* odd number"),
        ("a.jpg,1,409600 5\n", "past the image end"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, body: str, message: str):
    csv = tmp_path / "train.csv"
    csv.write_text("ImageId,ClassId,EncodedPixels\n" + body)
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(csv)
    assert str(csv) in str(info.value)


def test_unknown_header(tmp_path: Path):
    csv = tmp_path / "x.csv"
    csv.write_text("id,mask\n1,2\n")
    with pytest.raises(AnnotationError, match="neither"):
        read_annotations(csv)


def test_rows_naming_missing_images_are_an_error(root: Path):
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpg,3,1 10\nzzz.jpg,1,5 2\n")
    with pytest.raises(DatasetError, match=r"line 3: image 'zzz.jpg' is not in"):
        load_split(root)


def test_wrong_size_truncated_and_non_image_files(root: Path):
    write_image(root / "train_images" / "small.jpg", shape=(128, 800))
    with pytest.raises(ImageError, match=r"small.jpg: image is 128x800, expected 256x1600"):
        load_split(root)
    (root / "train_images" / "small.jpg").unlink()
    data = (root / "train_images" / "a.jpg").read_bytes()
    (root / "train_images" / "a.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"a.jpg: truncated JPEG"):
        read_image(root / "train_images" / "a.jpg")
    with pytest.raises(ImageError, match="truncated"):
        load_split(root, check="full")
    (root / "train_images" / "a.jpg").write_bytes(b"hello, not an image")
    with pytest.raises(ImageError, match="not a JPEG or PNG"):
        read_image(root / "train_images" / "a.jpg")


def test_png_bytes_named_jpg_are_read_by_content(tmp_path: Path):
    path = write_image(tmp_path / "p.jpg", value=77, fmt=".png")
    assert path.read_bytes().startswith(b"\x89PNG")
    image = read_image(path)
    assert image.shape == (256, 1600, 3) and (image == 77).all()
    assert read_image(path, channels=1).shape == (256, 1600)


def test_empty_folder_and_missing_root(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        dataset_from(tmp_path / "empty", None)
    with pytest.raises(DatasetError, match="not found"):
        load_split(tmp_path / "nope")


@pytest.mark.real_data
def test_real_annotations_load_and_agree_with_labels(real_data: Path):
    import pandas as pd

    ann = read_annotations(real_data / "annotations" / "train_rle_partial.csv")
    assert len(ann.rows) == 1943
    labels = pd.read_csv(real_data / "annotations" / "image_labels.csv").set_index("image_id")
    ids = pd.read_csv(real_data / "annotations" / "train_rle_partial_image_ids.csv")["ImageId"]
    for c in (1, 2, 3, 4):
        expected = int(labels.loc[ids, f"has_class_{c}"].sum())
        assert int((ann.rows["ClassId"] == c).sum()) == expected
    old = read_annotations(real_data / "annotations" / "predictions" / "khornlund_pseudo_stage1.csv")
    assert old.format == "old" and len(old.image_ids) == 1801 and len(old.rows) == 782


@pytest.mark.real_data
def test_real_images_decode_by_content(real_data: Path):
    train = sorted((real_data / "images" / "train").glob("*.jpg"))
    kinds = {p.read_bytes()[:4] == b"\x89PNG" for p in train}
    assert kinds == {True, False}  # both PNG-named-jpg and JPEG are present
    for path in train[:6]:
        image = read_image(path)
        assert image.shape == (256, 1600, 3)
        assert (image[..., 0] == image[..., 1]).all()  # grey stored as 3 channels
