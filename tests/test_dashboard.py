"""Dashboard callbacks in-process on a tiny synthetic root: store import, dates, period checks, cards, charts
(image partition, Monday weeks, integer axes, defect rate), samples, uploads (validation, scoring, duplicates),
worst-by-Dice table, TP/FP/FN comparison, exports, live store polling, image routes and in-process predictions."""

from __future__ import annotations

import base64
import io
import json
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from dash import html

from common.annotations import read_annotations
from common.errors import AnnotationError
from common.inspections import append_rows, connect, query
from common.layout import find_root
from common.rle import decode, encode
from dashboard import importer
from dashboard.app import NO_UPDATE, Dashboard, create_app
from dashboard.images import MATCH_COLORS, match_layer, match_regions
from dashboard.predict import OnDemand
from dashboard.store import ALL_RUNS
from dashboard.views import LABELS, SEVERAL, Buckets, inspections, rate_figure
from ensemble_helpers import save_tiny
from synthetic.generator import generate_dataset

YEAR = ("2021-01-01", "2021-12-31")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn"), n_train=30, n_test=8, seed=11)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {
        "classifier": save_tiny(base / "cls" / "checkpoints" / "best.pt", "classifier"),
        "segmenter": save_tiny(base / "seg" / "checkpoints" / "best.pt", "segmenter"),
    }


def infer_overrides(models: dict[str, Path]) -> list[str]:
    return [
        f"checkpoints.classifier=[{models['classifier'].parents[1]}]",
        f"checkpoints.segmenter=[{models['segmenter'].parents[1]}]",
        "tta=none",
        "batch_size=2",
    ]


@pytest.fixture()
def board(root, tmp_path) -> Dashboard:
    db = tmp_path / "store.sqlite"
    with closing(connect(db)) as conn:
        importer.import_root(conn, find_root(root))
    return Dashboard.from_root(
        db, find_root(root), predictor=OnDemand([f"checkpoints.classifier=[{tmp_path}/none]"]), max_upload_bytes=200_000
    )


def text_of(component) -> str:
    """All text inside a Dash component tree."""
    if isinstance(component, (list, tuple)):
        return " ".join(text_of(c) for c in component)
    if isinstance(component, str):
        return component
    return text_of(getattr(component, "children", None) or "")


def upload(text: str | bytes, name: str = "sub.csv") -> dict:
    """What the page's upload gate hands to the server."""
    raw = text if isinstance(text, bytes) else text.encode()
    return {"contents": "data:text/csv;base64," + base64.b64encode(raw).decode(), "filename": name}


def submission_text(root: Path, drop: tuple[str, int] | None = None) -> str:
    """An old-format submission of the test truth, with one (image, class) mask left out."""
    truth = read_annotations(root / "test_truth.csv").rows
    rles = {(i, c): r for i, c, r in truth.itertuples(index=False)}
    ids = sorted(p.name for p in (root / "test_images").iterdir())
    return "ImageId_ClassId,EncodedPixels\n" + "".join(
        f"{i}_{c},{'' if (i, c) == drop else rles.get((i, c), '')}\n" for i in ids for c in (1, 2, 3, 4)
    )


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
    assert (
        importer.main([str(db), "--root", str(root), "--submission", str(root / "test_truth.csv"), "--run-id", "r1"])
        == 0
    )
    with closing(connect(db)) as conn:
        counts = query(conn).groupby("source").size().to_dict()
    train = read_annotations(root / "train.csv")
    clean = 30 - train.rows["ImageId"].nunique()
    assert counts["train"] == len(train.rows) + clean  # imported twice, stored once
    assert set(counts) == {"train", "test", "pred:r1"}
    assert importer.main([str(db), "--submission", str(root / "nope.csv")]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err
    assert importer.main([str(db), "--submission", str(root / "train.csv"), "--run-id", "bad id"]) == 2


def test_cards_count_images_per_class_in_the_period(board, root):
    meta = json.loads((root / "dataset.json").read_text())["images_per_class"]["train"]
    cards = board.update_cards(*YEAR, "train")
    assert cards[:5] == [str(meta[k]) for k in ("1", "2", "3", "4", "none")]
    assert cards[5].startswith("30 images inspected in train")
    # A narrower period counts exactly the images whose date falls in it.
    truth = read_annotations(root / "train.csv").rows
    ids = sorted(p.name for p in (root / "train_images").iterdir())
    in_h1 = {i for i in ids if importer.synthetic_date(i) < "2021-07-01"}
    expected3 = truth[(truth.ClassId == 3) & truth.ImageId.isin(in_h1)].ImageId.nunique()
    clean = len(in_h1 - set(truth.ImageId))
    cards = board.update_cards("2021-01-01", "2021-06-30", "train")
    assert cards[2] == str(expected3) and cards[4] == str(clean)
    assert board.update_cards("2030-01-01", "2030-02-01", "train")[:5] == ["0"] * 5


def test_an_inverted_or_incomplete_period_is_refused_in_the_page(board):
    period, message = board.check_period("2021-06-30", "2021-01-01")
    assert period is NO_UPDATE and "2021-06-30 is after the end date 2021-01-01: swap them" in text_of(message)
    assert board.check_period("2021-01-01", None)[0] is NO_UPDATE
    assert board.check_period("2021-01-01T00:00:00", "2021-01-01") == (
        {"start": "2021-01-01", "end": "2021-01-01"},
        None,
    )


def test_pie_partitions_images_and_its_title_counts_them(board, root):
    *cards, pie, timeline, rate = board.update_overview(*YEAR, "train")
    assert cards == board.update_cards(*YEAR, "train")
    truth = read_annotations(root / "train.csv").rows
    per_image = truth.groupby("ImageId").ClassId.nunique()
    values = dict(zip(pie.data[0].labels, pie.data[0].values))
    assert sum(values.values()) == 30 and pie.layout.title.text.startswith("30 images of train")
    assert values.get(LABELS[SEVERAL], 0) == int((per_image > 1).sum())
    assert values[LABELS[0]] == 30 - len(per_image)
    assert sum(sum(bar.y) for bar in timeline.data) == 30  # every image once in the stacked bars


def test_weeks_run_monday_to_sunday_and_axes_count_whole_images(board):
    _, timeline, _ = board.update_charts(*YEAR, "train")
    starts = {pd.Timestamp(x) for bar in timeline.data for x in bar.customdata}
    assert starts and all(s.day_of_week == 0 for s in starts)  # Monday
    assert timeline.layout.yaxis.dtick == 1  # small counts: no 0.5-image ticks
    table = inspections(
        pd.DataFrame(
            {
                "source": "s",
                "image_id": ["a", "b", "c"],
                "class_id": [1, 0, 3],
                "rle": "",
                "inspected_at": ["2021-03-07T23:59:59", "2021-03-08T00:00:00", "2021-03-14T12:00:00"],
            }
        )
    )
    spans = Buckets("2021-01-01", "2021-06-30")
    assert spans.name == "week"
    weeks = spans.of(table["time"]).dt.strftime("%Y-%m-%d").tolist()
    assert weeks == ["2021-03-01", "2021-03-08", "2021-03-08"]  # Sunday night ends a week, Monday starts one
    assert Buckets("2021-03-07", "2021-03-08").name == "hour" and Buckets("2021-03-01", "2021-04-30").name == "day"


def test_defect_rate_is_images_with_the_class_over_images_inspected():
    rows = pd.DataFrame(
        {
            "source": "pred:a",
            "image_id": ["a", "a", "b", "c", "d"],
            "class_id": [1, 3, 0, 3, 0],
            "rle": "",
            "inspected_at": [
                "2026-01-05T10:05:00",
                "2026-01-05T10:05:00",
                "2026-01-05T10:40:00+00:00",
                "2026-01-05T11:10:00",
                "2026-01-05T11:20:00",
            ],
        }
    )
    fig = rate_figure(inspections(rows), Buckets("2026-01-05", "2026-01-05"), "t")
    assert [pd.Timestamp(x).hour for x in fig.data[0].x] == list(range(24))  # hourly for a one-day period
    by_name = {trace.name: list(trace.y[10:12]) for trace in fig.data}
    assert by_name["Defect 3"] == [0.5, 0.5] and by_name["Defect 1"] == [0.5, 0.0]
    assert by_name["Any defect"] == [0.5, 0.5] and by_name["Defect 2"] == [0.0, 0.0]
    assert np.isnan(fig.data[0].y[9]) and np.isnan(fig.data[0].y[12])  # hours without inspections: gaps
    assert fig.layout.yaxis.tickformat == ".0%"


def test_samples_say_how_many_images_have_a_file_and_reroll(board, root):
    truth = read_annotations(root / "train.csv").rows
    class3 = sorted(set(truth.loc[truth.ClassId == 3, "ImageId"]))
    out = board.update_samples(*YEAR, "train", 3, 0)
    shown = [s.to_plotly_json()["props"]["data-image"] for s in out[1:]]
    assert len(shown) == 3 and set(shown) <= set(class3)
    assert f"{len(class3)} images of class 3 in this period — showing 3, Re-roll for others." in text_of(out[0])
    strip = out[1].children[1]
    assert strip.className == "strip" and [i.className for i in strip.children] == ["base", "layer"]
    assert "source=train" in strip.children[1].src and "/steel/image?image=" in strip.children[0].src
    rolls = [
        tuple(s.to_plotly_json()["props"]["data-image"] for s in board.update_samples(*YEAR, "train", 3, k)[1:])
        for k in range(6)
    ]
    assert all(a != b for a, b in zip(rolls, rolls[1:]))  # every re-roll shows other images
    assert len({i for r in rolls[:6] for i in r}) == len(class3)  # and six rolls of 3 visit all 17
    # Only one class-3 image has a file: the note says so instead of silently showing one.
    board.images = {i: p for i, p in board.images.items() if i not in class3[1:]}
    out = board.update_samples(*YEAR, "train", 3, 0)
    assert f"{len(class3)} images of class 3 in this period; only 1 has an image file" in text_of(out[0])
    assert len(out) == 2
    assert "No image of class 2" in text_of(board.update_samples("2030-01-01", "2030-01-02", "train", 2, 0))


def test_upload_is_scored_compared_and_a_second_copy_is_not_stored(board, root):
    truth = read_annotations(root / "test_truth.csv").rows
    dropped = truth.iloc[0]
    text = submission_text(root, (dropped.ImageId, dropped.ClassId))
    message, kind, source = board.handle_upload(upload(text, "mine.csv"))
    assert kind == "alert ok" and source.startswith("pred:mine-") and "Scored on 8 images" in message
    assert source in [o["value"] for o in board.source_options()[0]]
    score, worst, options, note, keep = board.update_scores(*YEAR, source, None)
    assert "Kaggle score" in text_of(score) and worst[0]["ImageId"] == dropped.ImageId
    assert worst[0][f"dice_{dropped.ClassId}"] == 0.0 and worst[-1]["dice"] == 1.0
    assert board.pick_from_table({"row": 0, "column": 0}, worst) == dropped.ImageId
    head, strips = board.compare(source, dropped.ImageId)
    assert head[0].id == "compare-dice-table" and "0.000" in text_of(head)
    captions = text_of(strips)
    assert f"class {dropped.ClassId}: Dice 0.000 — TP 0 px, FP 0 px, FN " in captions
    assert all("match.png" in s.children[1].children[1].src for s in strips)
    # The same content again (other name): selected, not stored twice.
    before = board.store.sources()
    message, kind, again = board.handle_upload(upload(text, "copy.csv"))
    assert again == source and kind == "alert note" and "already loaded" in message
    assert board.store.sources() == before
    # The uploaded run is counted like any other source.
    assert board.update_cards(*YEAR, source)[dropped.ClassId - 1] == str(
        truth[truth.ClassId == dropped.ClassId].ImageId.nunique() - 1
    )


def test_reuploading_a_preloaded_file_selects_the_preloaded_run(board, root):
    annotations, dates = importer.load_csv(root / "test_truth.csv")
    with closing(connect(board.db)) as conn:
        importer.import_submission(conn, annotations, dates, "test_truth")
    message, kind, source = board.handle_upload(upload((root / "test_truth.csv").read_bytes(), "test_truth.csv"))
    assert source == "pred:test_truth" and "already loaded" in message
    assert [s for s in board.store.sources() if s.startswith("pred:test_truth")] == ["pred:test_truth"]


@pytest.mark.parametrize(
    "name, payload, expected",
    [
        ("sub.txt", "ImageId,ClassId,EncodedPixels\n", "only .csv files"),
        ("sub.csv", "x" * 300_000, "upload limit"),
        ("sub.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,5 3 1 2\n", "sub.csv, line 2: bad EncodedPixels"),
        ("sub.csv", "ImageId,ClassId,EncodedPixels\na.jpg,1,1\u00a05 10 3\n", r"line 2: bad EncodedPixels"),
        ("sub.csv", "ImageId,Whatever\na.jpg,1\n", "neither"),
        ("sub.csv", "ImageId,ClassId,EncodedPixels\na.jpg,7,1 2\n", "unknown ClassId"),
        ("a.csv", b"\x89PNG\x00\x00", "binary data"),
    ],
)
def test_bad_uploads_show_clear_errors(board, name, payload, expected):
    message, kind, source = board.handle_upload(upload(payload, name))
    assert source is None and kind == "alert error" and expected in message and message.startswith("Upload refused")


def test_corrupt_and_crashing_uploads_still_replace_the_message(board, monkeypatch):
    message, kind, _ = board.handle_upload({"contents": "data:text/csv;base64,@@@", "filename": "a.csv"})
    assert "corrupt base64" in message and kind == "alert error"

    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr("dashboard.app.parse_upload", boom)
    message, kind, _ = board.handle_upload(upload("x", "a.csv"))
    assert kind == "alert error" and "internal error (RuntimeError: bug)" in message


def test_switching_run_with_an_image_selected_is_safe(board, root):
    ids = sorted(p.name for p in (root / "test_images").iterdir())
    _, _, run_a = board.handle_upload(upload(submission_text(root), "a.csv"))
    _, _, run_b = board.handle_upload(upload(f"ImageId,ClassId,EncodedPixels\n{ids[1]},1,1 5\n", "b.csv"))
    assert board.update_scores(*YEAR, run_a, ids[0])[-1] == ids[0]  # kept while the run has it
    assert board.update_scores(*YEAR, run_b, ids[0])[-1] is None  # cleared when switching to a run without it
    head, view = board.compare(run_b, ids[0])  # a stale pair is a message, not an IndexError
    assert head == [] and f"{ids[0]} is not one of the images of {run_b}" in text_of(view)


def test_compare_lists_only_images_with_a_file(board, root):
    ids = sorted(p.name for p in (root / "test_images").iterdir())
    text = "ImageId,ClassId,EncodedPixels\n" + "".join(
        f"{i},3,1 10\n" for i in [*ids[:2], "nofile1.jpg", "nofile2.jpg"]
    )
    _, _, run = board.handle_upload(upload(text, "partial.csv"))
    _, _, options, note, _ = board.update_scores(*YEAR, run, None)
    assert [o["value"] for o in options] == ids[:2]
    assert note.startswith("2 of the 4 images of") and "have an image file" in note


def test_match_layer_colours_true_false_positives_and_negatives():
    truth = np.zeros((256, 1600), np.uint8)
    pred = np.zeros_like(truth)
    truth[50:100, 100:300] = 1
    pred[50:100, 200:400] = 1
    regions = match_regions(pred, truth, truth.shape)
    assert {k: int(v.sum()) for k, v in regions.items()} == {"TP": 5000, "FP": 5000, "FN": 5000}
    layer = match_layer(regions)
    assert tuple(layer[75, 250, :3]) == MATCH_COLORS["TP"] and tuple(layer[75, 350, :3]) == MATCH_COLORS["FP"]
    assert tuple(layer[75, 150, :3]) == MATCH_COLORS["FN"] and layer[10, 10, 3] == 0  # transparent elsewhere


def test_exports_csv_of_the_filtered_inspections_and_png_of_a_comparison(board, root):
    csv = board.export_csv("2021-01-01", "2021-06-30", "train")
    frame = pd.read_csv(io.StringIO(csv["content"]))
    assert csv["filename"] == "inspections_train_2021-01-01_2021-06-30.csv"
    assert len(frame) == len(board.rows("2021-01-01", "2021-06-30", "train")) and frame.inspected_at.max() < "2021-07"
    assert list(frame.columns) == ["image_id", "inspected_at", "source", "class_id", "area", "rle", "run_id"]
    truth = read_annotations(root / "test_truth.csv").rows
    dropped = truth.iloc[0]
    _, _, run = board.handle_upload(upload(submission_text(root, (dropped.ImageId, dropped.ClassId)), "p.csv"))
    png = board.compare_export(run, dropped.ImageId)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(png["content"]), np.uint8), cv2.IMREAD_COLOR)
    n_classes = truth[truth.ImageId == dropped.ImageId].ClassId.nunique()
    assert png["filename"].endswith(".png") and image.shape == (34 + n_classes * (30 + 256) + 30, 1600, 3)
    assert board.compare_export(run, "nofile.jpg") is NO_UPDATE


def test_poll_picks_up_any_writer_and_follows_the_newest_day(board):
    version, end, text, _ = board.poll(None, ["follow"], "2021-12-31")
    assert version and end is NO_UPDATE and "rows" in text
    assert board.poll(version, ["follow"], "2021-12-31")[:2] == (NO_UPDATE, NO_UPDATE)
    rows = pd.DataFrame({"ImageId": ["line1.jpg", "line2.jpg"], "ClassId": [3, 1], "EncodedPixels": ["1 10", ""]})
    with closing(connect(board.db)) as conn:  # what `infer.py store=...` does
        append_rows(conn, rows, "pred:line", "line", dates="2026-03-04T10:00:00+00:00")
    new, end, _, _ = board.poll(version, ["follow"], "2021-12-31")
    assert new != version and end == "2026-03-04"
    assert board.poll(version, [], "2021-12-31")[1] is NO_UPDATE  # not following: the period stays
    assert ALL_RUNS in [o["value"] for o in board.source_options()[0]]
    cards = board.update_cards("2026-03-04", "2026-03-04", ALL_RUNS)
    assert cards[2] == "1" and cards[4] == "1"
    _, _, rate = board.update_charts("2026-03-04", "2026-03-04", ALL_RUNS)
    assert {t.name: list(t.y) for t in rate.data}["Defect 3"][10] == 0.5


def test_predict_button_is_disabled_with_the_fix_when_no_models(board):
    text, ready = board.model_status()
    assert not ready and "make demo" in text and "not found (checkpoints.classifier)" in text
    assert "\n" not in text


def test_segmenter_alone_under_a_classifier_gate_is_reported_beforehand(root, tmp_path, models):
    board = Dashboard.from_root(
        tmp_path / "s.sqlite",
        find_root(root),
        predictor=OnDemand(["checkpoints.classifier=[]", f"checkpoints.segmenter=[{models['segmenter']}]"]),
    )
    text, ready = board.model_status()
    assert not ready and "gating mode 'veto' needs classifier" in text


def test_predictions_in_process_are_stored_shown_and_reuse_the_models(board, root, models):
    board.predictor = OnDemand(infer_overrides(models))
    text, ready = board.model_status()
    assert ready and "1 classifier, 1 segmenter" in text and "loaded on first use" in text
    chosen = sorted(p.name for p in (root / "test_images").iterdir())[:3]
    children, source = board.run_predictions(1, chosen)
    assert source.startswith("pred:live-") and "models loaded in" in text_of(children[0])
    assert [c.to_plotly_json()["props"]["data-image"] for c in children[1:]] == chosen
    stored = board.rows(None, None, source)
    assert set(stored.image_id) == set(chosen) and stored.inspected_at.str.endswith("+00:00").all()
    model = board.predictor._predictor
    children, _ = board.run_predictions(2, chosen[:1])
    assert "models reused" in text_of(children[0]) and board.predictor._predictor is model
    assert "(loaded)" in board.model_status()[0] and board.predictor.progress().stage == "idle"
    children, source = board.run_predictions(3, [])
    assert source is None and "Choose one or more" in text_of(children)


def test_routes_serve_known_images_and_layers_compressed(board, root):
    app = create_app(board)
    client = app.server.test_client()
    image = sorted(board.images)[0]
    assert client.get(f"/steel/image?image={image}").status_code == 200
    for bad in ("../train.csv", "nope.jpg", ""):
        assert client.get(f"/steel/image?image={bad}").status_code == 404
    layer = client.get(f"/steel/layer.png?image={image}&source=train")
    decoded = cv2.imdecode(np.frombuffer(layer.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert layer.mimetype == "image/png" and decoded.shape == (256, 1600, 4)
    truth = read_annotations(root / "train.csv").rows
    first = truth.iloc[0]
    mask = decode(first.EncodedPixels)
    layer = cv2.imdecode(
        np.frombuffer(client.get(f"/steel/layer.png?image={first.ImageId}&source=train").data, np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert (layer[..., 3][mask == 1] > 0).all() and encode(mask)
    assert client.get(f"/steel/match.png?image={image}&run=pred:x&class=9").status_code == 400
    page = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200
    plotly = client.get(
        "/_dash-component-suites/plotly/package_data/plotly.min.js", headers={"Accept-Encoding": "gzip"}
    )
    assert plotly.headers.get("Content-Encoding") == "gzip" and len(plotly.data) < 2_000_000  # 4.6 MB unpacked


def test_vendored_plotly_basic_matches_plotly_version():
    import re

    import plotly

    bundled = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    vendored = Path(create_app.__code__.co_filename).parent / "assets" / "vendor" / "plotly-basic.min.js"
    version = re.compile(rb"plotly\.js(?: \(basic - minified\))? v(\d+\.\d+\.\d+)")
    assert version.search(vendored.read_bytes()[:200]).group(1) == version.search(bundled.read_bytes()[:200]).group(1)


def test_app_wires_every_callback(board):
    app = create_app(board)
    outputs = " ".join(app.callback_map)
    for target in (
        "card-1.children",
        "pie.figure",
        "rate.figure",
        "samples.children",
        "upload-status.children",
        "worst.data",
        "compare-view.children",
        "predict-output.children",
        "compare-run.value",
        "period.data",
        "store-version.data",
        "download-csv.data",
        "download-png.data",
        "predict-progress.children",
    ):
        assert target in outputs
    page = app.layout()
    assert isinstance(page, html.Div)
    button = next(c for c in _walk(page) if getattr(c, "id", None) == "predict-run")
    assert button.disabled is True


def _walk(component):
    yield component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list) else [children] if children is not None else []:
        if not isinstance(child, str):
            yield from _walk(child)
