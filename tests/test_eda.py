"""EDA report: tables on synthetic and real annotations, the HTML page and its files, clear input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import eda
from common.errors import DatasetError
from common.layout import find_root, with_overrides
from synthetic.generator import generate_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "severstal"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/severstal")


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn"), n_train=20, n_test=6, seed=5)


def test_report_on_synthetic_matches_generator_counts(syn_root, tmp_path):
    summary = eda.main([str(syn_root), "--out", str(tmp_path / "eda"), "--per-class", "1"])
    assert summary == 0
    meta = json.loads((syn_root / "dataset.json").read_text())
    got = json.loads((tmp_path / "eda" / "summary.json").read_text())["sources"]
    for name, split in (("train annotations", "train"), ("test truth", "test")):
        expected = meta["images_per_class"][split]
        assert got[name]["images_per_class"] == {**{c: expected[c] for c in "1234"}, "no defect": expected["none"]}
        assert sum(got[name]["labels_per_image"].values()) == meta[f"n_{split}"]
    page = (tmp_path / "eda" / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"s0_counts.png", "s0_areas.png", "s0_examples.png", "s0_largest.png"} <= set(images)
    for name in images:
        assert (tmp_path / "eda" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for section in ("Images per class", "Labels per image", "Mask area per class", "largest masks", "Sample images"):
        assert section in page


def test_tables_are_exact_on_a_tiny_frame():
    rows = pd.DataFrame(
        {"ImageId": ["a.jpg", "a.jpg", "b.jpg"], "ClassId": [1, 3, 3], "EncodedPixels": ["1 10", "20 5", "1 100"]}
    )
    table = eda.image_table(rows, ["a.jpg", "b.jpg", "c.jpg"])
    counts = eda.class_counts(table).set_index("class")["images"].to_dict()
    assert counts == {"1": 1, "2": 0, "3": 2, "4": 0, "no defect": 1}
    assert eda.labels_per_image(table)["images"].tolist() == [1, 1, 1, 0, 0]
    assert dict(zip(*eda.class_combinations(table).T.to_numpy())) == {"1+3": 1, "3": 1, "none": 1}
    largest = eda.largest_masks(table, 2)
    assert largest[["ImageId", "class", "area"]].values.tolist() == [["b.jpg", 3, 100], ["a.jpg", 1, 10]]
    stats = eda.area_stats(table).set_index("class")
    assert stats.loc[3, "masks"] == 2 and stats.loc[3, "max"] == 100 and stats.loc[2, "masks"] == 0


def test_rows_outside_the_id_list_are_an_error():
    rows = pd.DataFrame({"ImageId": ["z.jpg"], "ClassId": [1], "EncodedPixels": ["1 3"]})
    with pytest.raises(DatasetError, match="z.jpg"):
        eda.image_table(rows, ["a.jpg"])


def test_bad_labels_table_names_the_line(tmp_path):
    path = tmp_path / "labels.csv"
    head = (
        "image_id,"
        + ",".join(f"has_class_{c}" for c in range(1, 5))
        + ","
        + ",".join(f"area_class_{c}" for c in range(1, 5))
    )
    path.write_text(head + "\na.jpg,0,0,0,0,0,0,0,0\nb.jpg,1,0,0,0,0,0,0,0\n")
    with pytest.raises(DatasetError, match="line 3: has_class and area_class disagree"):
        eda.read_labels_table(path)
    path.write_text(head + "\na.jpg,0,2,0,0,0,0,0,0\n")
    with pytest.raises(DatasetError, match="line 2: bad has_class_2"):
        eda.read_labels_table(path)


def test_cli_errors_exit_2(tmp_path, capsys):
    assert eda.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no annotations found" in capsys.readouterr().err
    assert eda.main([str(tmp_path), "--out", str(tmp_path / "o"), "--labels", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err


@pytest.mark.real_data
@pytest.mark.skipif(not (REAL / "annotations" / "image_labels.csv").is_file(), reason="real data absent")
def test_real_annotations_reproduce_what_the_files_imply():
    data = find_root(REAL)
    assert data.layout == "split"
    sources = {s.name: s for s in eda.load_sources(data)}
    raw = pd.read_csv(REAL / "annotations" / "image_labels.csv")
    labels = sources["labels table"].table
    counts = eda.class_counts(labels).set_index("class")["images"]
    for c in range(1, 5):
        assert counts[str(c)] == raw[f"has_class_{c}"].sum()
        assert labels[f"area_{c}"].sum() == raw[f"area_class_{c}"].sum()
    assert counts["no defect"] == (raw["has_defect"] == 0).sum()
    per_image = eda.labels_per_image(labels).set_index("labels")["images"]
    assert per_image.to_dict() == {k: int((raw["n_defect_classes"] == k).sum()) for k in range(5)}
    # The RLE file covers the ids of its id list, and agrees with image_labels.csv on every shared image.
    rle = sources["train annotations"]
    assert len(rle.table) == len(pd.read_csv(REAL / "annotations" / "train_rle_partial_image_ids.csv"))
    assert int(rle.table[eda.HAS].to_numpy().sum()) == len(pd.read_csv(REAL / "annotations" / "train_rle_partial.csv"))
    check = eda.cross_check(rle.table, labels)
    assert check["shared_images"].iloc[0] == len(rle.table)
    assert check[["presence_disagree", "area_disagree"]].to_numpy().sum() == 0


@pytest.mark.real_data
@pytest.mark.skipif(not (REAL / "images" / "train").is_dir(), reason="real data absent")
def test_explicit_parts_override_the_layout(tmp_path):
    ann = REAL / "annotations"
    data = with_overrides(
        find_root(tmp_path),
        train_csv=ann / "train_rle_partial.csv",
        train_ids_csv=ann / "train_rle_partial_image_ids.csv",
        train_images=REAL / "images" / "train",
    )
    source = eda.load_sources(data)[0]
    picks = eda.pick_examples(source, eda.image_paths(data), per_class=2, seed=0)
    assert all(len(v) <= 2 for v in picks.values()) and picks[3]
    assert all((REAL / "images" / "train" / i).is_file() for v in picks.values() for i in v)
