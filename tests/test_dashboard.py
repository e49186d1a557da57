"""Dashboard callbacks in-process on a tiny synthetic root: store import, dates, cards, charts, samples,
uploads with validation and scoring, worst-by-Dice table, side-by-side view, predictions on demand."""
from __future__ import annotations

import base64
import json
import sys
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from dash import html

from common.annotations import read_annotations
from common.errors import AnnotationError
from common.inspections import connect, query
from common.layout import find_root
from synthetic.generator import generate_dataset
from dashboard import importer
from dashboard.app import Dashboard, create_app
from dashboard.predict import PredictionError, build_command, predict_images

FAKE = Path(__file__).parent / "helpers" / "fake_infer.py"
FAKE_CMD = f"{{python}} {FAKE} {{images}} {{submission}}"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn"), n_train=30, n_test=8, seed=11)


@pytest.fixture()
def board(root, tmp_path) -> Dashboard:
    db = tmp_path / "store.sqlite"
    with closing(connect(db)) as conn:
        importer.import_root(conn, find_root(root))
    return Dashboard.from_root(db, find_root(root), predict_command=FAKE_CMD, max_upload_bytes=200_000)


def text_of(component) -> str:
    """All text inside a Dash component tree."""
    if isinstance(component, (list, tuple)):
        return " ".join(text_of(c) for c in component)
    if isinstance(component, str):
        return component
    return text_of(getattr(component, "children", None) or "")


def upload(path_or_text, name="sub.csv") -> str:
    raw = path_or_text.read_bytes() if isinstance(path_or_text, Path) else path_or_text.encode()
    return "data:text/csv;base64," + base64.b64encode(raw).decode()


def test_synthetic_dates_are_fixed_per_image_and_in_2021():
    a = importer.synthetic_date("0a1b2c3d4.jpg")
    assert a == importer.synthetic_date("0a1b2c3d4.jpg") and a.startswith("2021-")
    assert len({importer.synthetic_date(f"{i:09x}.jpg") for i in range(50)}) == 50


def test_date_column_gives_real_timestamps_and_bad_ones_name_the_line():
    text = "ImageId,ClassId,EncodedPixels,inspected_at\na.jpg,1,1 5,2023-05-06T07:08:09\n"
    annotations, dates = importer.load_csv_text(text, "x.csv")
    assert dates == {"a.jpg": "2023-05-06T07:08:09"}
    assert importer.dates_for(["a.jpg", "b.jpg"], dates)["b.jpg"] == importer.synthetic_date("b.jpg")
    with pytest.raises(AnnotationError, match="x.csv, line 2: inspected_at 'yesterday'"):
        importer.load_csv_text("ImageId,ClassId,EncodedPixels,inspected_at\na.jpg,1,1 5,yesterday\n", "x.csv")


def test_import_cli_replaces_a_source_on_reimport(root, tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    assert importer.main([str(db), "--root", str(root)]) == 0
    assert importer.main([str(db), "--root", str(root), "--submission", str(root / "test_truth.csv"), "--run-id", "r1"]) == 0
    with closing(connect(db)) as conn:
        counts = query(conn).groupby("source").size().to_dict()
    train = read_annotations(root / "train.csv")
    clean = 30 - train.rows["ImageId"].nunique()
    assert counts["train"] == len(train.rows) + clean          # imported twice, stored once
    assert set(counts) == {"train", "test", "pred:r1"}
    assert importer.main([str(db), "--submission", str(root / "nope.csv")]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err
    assert importer.main([str(db), "--submission", str(root / "train.csv"), "--run-id", "bad id"]) == 2


def test_cards_count_images_per_class_in_the_period(board, root):
    meta = json.loads((root / "dataset.json").read_text())["images_per_class"]["train"]
    assert board.update_cards("2021-01-01", "2021-12-31", "train") == [str(meta[k]) for k in ("1", "2", "3", "4", "none")]
    # A narrower period counts exactly the images whose date falls in it.
    truth = read_annotations(root / "train.csv").rows
    ids = sorted(p.name for p in (root / "train_images").iterdir())
    in_h1 = {i for i in ids if importer.synthetic_date(i) < "2021-07-01"}
    expected3 = truth[(truth.ClassId == 3) & truth.ImageId.isin(in_h1)].ImageId.nunique()
    clean = len(in_h1 - set(truth.ImageId))
    cards = board.update_cards("2021-01-01", "2021-06-30", "train")
    assert cards[2] == str(expected3) and cards[4] == str(clean)
    assert board.update_cards("2030-01-01", "2030-02-01", "train") == ["0"] * 5


def test_charts_show_the_period(board):
    pie, timeline = board.update_charts("2021-01-01", "2021-12-31", "test")
    assert sum(pie.data[0].values) >= 8 and list(pie.data[0].labels)[-1] == "No defect"
    assert sum(sum(bar.y) for bar in timeline.data) == sum(pie.data[0].values)


def test_samples_are_images_of_the_class_and_reroll(board, root):
    truth = read_annotations(root / "train.csv").rows
    class3 = set(truth.loc[truth.ClassId == 3, "ImageId"])
    rows = board.update_samples("2021-01-01", "2021-12-31", "train", 3, 0)
    shown = [r.to_plotly_json()["props"]["data-image"] for r in rows]
    assert len(shown) == 3 and set(shown) <= class3
    assert all(len(r.children) == 4 for r in rows)  # caption, image, mask, contours
    again = board.update_samples("2021-01-01", "2021-12-31", "train", 3, 0)
    assert [r.to_plotly_json()["props"]["data-image"] for r in again] == shown
    rerolls = {tuple(r.to_plotly_json()["props"]["data-image"] for r in board.update_samples(
        "2021-01-01", "2021-12-31", "train", 3, k)) for k in range(1, 6)}
    assert len(rerolls) > 1
    assert "No image of class 2" in text_of(board.update_samples("2030-01-01", "2030-01-02", "train", 2, 0))


def test_upload_is_scored_against_truth_and_browsable(board, root):
    truth = read_annotations(root / "test_truth.csv").rows
    assert len(truth), "the fixture's test truth must have a defect"
    dropped = truth.iloc[0]
    # A complete old-format submission: the truth of every test image except one mask left empty.
    rles = {(i, c): r for i, c, r in truth.itertuples(index=False)}
    lines = ["ImageId_ClassId,EncodedPixels"] + [
        f"{i}_{c},{'' if (i, c) == (dropped.ImageId, dropped.ClassId) else rles.get((i, c), '')}"
        for i in sorted(p.name for p in (root / "test_images").iterdir()) for c in (1, 2, 3, 4)]
    text = "\n".join(lines) + "\n"
    message, source = board.handle_upload(upload(text), "mine.csv")
    assert message.className == "alert ok" and source.startswith("pred:mine-")
    assert "Scored on" in message.children
    assert source in [o["value"] for o in board.source_options()[0]]
    score, worst, options = board.update_scores("2021-01-01", "2021-12-31", source)
    assert "Kaggle score" in text_of(score) and worst[0]["ImageId"] == dropped.ImageId
    assert worst[0][f"dice_{dropped.ClassId}"] == 0.0 and worst[-1]["dice"] == 1.0
    assert board.pick_from_table({"row": 0, "column": 0}, worst) == dropped.ImageId
    view = board.compare(source, dropped.ImageId)
    assert view[0].id == "compare-dice" and "ground truth" in text_of(view) and "prediction" in text_of(view)
    # The uploaded run is counted like any other source.
    assert board.update_cards("2021-01-01", "2021-12-31", source)[dropped.ClassId - 1] == str(
        truth[truth.ClassId == dropped.ClassId].ImageId.nunique() - 1)


@pytest.mark.parametrize("name, payload, expected", [
    ("sub.txt", "ImageId,ClassId,EncodedPixels\n", "only .csv files"),
    ("sub.csv", "x" * 300_000, "upload limit"),
    ("sub.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,5 3 1 2\n", "sub.csv, line 2: bad EncodedPixels"),
    ("sub.csv", "ImageId,Whatever\na.jpg,1\n", "neither"),
    ("sub.csv", "ImageId,ClassId,EncodedPixels\na.jpg,7,1 2\n", "unknown ClassId"),
])
def test_bad_uploads_show_clear_errors(board, name, payload, expected):
    message, source = board.handle_upload(upload(payload), name)
    assert source is None and message.id == "upload-error" and expected in message.children


def test_binary_and_corrupt_uploads_are_refused(board):
    message, _ = board.handle_upload("data:text/csv;base64," + base64.b64encode(b"\x89PNG\x00\x00").decode(), "a.csv")
    assert "binary data" in message.children
    message, _ = board.handle_upload("data:text/csv;base64,@@@", "a.csv")
    assert "corrupt base64" in message.children


def test_predict_adapter_runs_the_command(root):
    images = sorted((root / "test_images").iterdir())[:2]
    annotations = predict_images(images, FAKE_CMD)
    assert set(annotations.image_ids) == {p.name for p in images}
    assert (annotations.rows.ClassId == 3).all() and len(annotations.rows) == 2
    with pytest.raises(PredictionError, match="exited with status 1"):
        predict_images(images, FAKE_CMD + " --fail")
    with pytest.raises(PredictionError, match="wrote no submission.csv"):
        predict_images(images, "{python} -c pass")
    with pytest.raises(PredictionError, match="placeholders"):
        build_command("{python} infer.py {nope}", Path("i"), Path("o"))
    assert build_command("{python} x.py d={images}", Path("/a b"), Path("o")) == [sys.executable, "x.py", "d=/a b"]


def test_predictions_on_demand_are_shown_and_stored(board, root):
    chosen = sorted(p.name for p in (root / "test_images").iterdir())[:2]
    children, source = board.run_predictions(1, chosen)
    assert source.startswith("pred:live-") and "Stored as" in text_of(children[0])
    assert [c.to_plotly_json()["props"]["data-image"] for c in children[1:]] == chosen
    assert source in board.sources()
    children, source = board.run_predictions(1, [])
    assert source is None and "Choose one or more" in text_of(children)
    board.predict_command = FAKE_CMD + " --fail"
    children, _ = board.run_predictions(2, chosen)
    assert "Prediction failed" in text_of(children)


def test_app_wires_every_callback(board):
    app = create_app(board)
    outputs = " ".join(app.callback_map)
    for target in ("card-1.children", "pie.figure", "samples.children", "upload-status.children", "worst.data",
                   "compare-view.children", "predict-output.children", "compare-run.value"):
        assert target in outputs
    assert isinstance(app.layout(), html.Div)
