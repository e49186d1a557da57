"""Dashboard round 2 (issue 23) in-process on a tiny synthetic root: a relative data root, infer's default
``checkpoints.runs``, the live line counting each image once, following the page's own runs, time axes that
span the data, test images without truth, Kaggle's sample submission, clean images, synthetic-date note."""

from __future__ import annotations

from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.annotations import read_annotations
from common.inspections import connect
from common.layout import find_root
from dashboard import importer
from dashboard.app import NO_UPDATE, Dashboard, create_app
from dashboard.predict import OnDemand, PredictionError
from dashboard.store import ALL_RUNS
from dashboard.views import inspections
from ensemble_helpers import save_tiny

YEAR = ("2021-01-01", "2021-12-31")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from synthetic.generator import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=12, n_test=4, seed=5)


@pytest.fixture()
def board(root, tmp_path) -> Dashboard:
    db = tmp_path / "store.sqlite"
    with closing(connect(db)) as conn:
        importer.import_root(conn, find_root(root))
    return Dashboard.from_root(db, find_root(root), predictor=OnDemand([f"checkpoints.classifier=[{tmp_path}/none]"]))


def store_run(board: Dashboard, rows: pd.DataFrame, image_ids: list[str], run_id: str, when: str | None = None) -> None:
    """Store long-form rows as run ``pred:<run_id>``, dated ``when`` (or synthetic dates)."""
    from common.annotations import Annotations
    from common.constants import NEW_FORMAT

    annotations = Annotations(rows.reset_index(drop=True), tuple(image_ids), NEW_FORMAT, run_id)
    with closing(connect(board.db)) as conn:
        importer.import_submission(conn, annotations, {i: when for i in image_ids} if when else {}, run_id)


def test_a_root_given_relative_to_the_working_directory_serves_its_images(root, tmp_path, monkeypatch):
    work = root.parent / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    relative = Path("..") / root.name  # as in `python -m dashboard ../shared/data/severstal`
    db = tmp_path / "s.sqlite"
    with closing(connect(db)) as conn:
        importer.import_root(conn, find_root(relative))
    board = Dashboard.from_root(db, find_root(relative))
    image_id = sorted(read_annotations(root / "train.csv").rows["ImageId"])[0]
    response = create_app(board).server.test_client().get(f"/steel/image?image={image_id}")
    assert response.status_code == 200
    assert response.data == (root / "train_images" / image_id).read_bytes()


def test_default_checkpoints_runs_find_the_models_like_infer(tmp_path):
    for stage in ("classifier", "segmenter"):
        save_tiny(tmp_path / "train" / stage / "demo" / "checkpoints" / "best.pt", stage)
    found = OnDemand([f"checkpoints.runs=[{tmp_path}/train/*/demo]", "tta=none"])
    assert found.status().startswith("Models: 1 classifier, 1 segmenter checkpoint(s)")
    missing = OnDemand([f"checkpoints.runs=[{tmp_path}/nothing/*/demo]"])
    with pytest.raises(PredictionError, match=r"No usable trained models: checkpoints.runs: .*matches no training"):
        missing.status()


def test_a_checkpoint_entry_is_read_by_infers_rule(tmp_path):
    """A ``{path:, weight:}`` entry goes through ``ensemble.members.entry_files``: a negative weight is refused on
    the page, as infer.py refuses it, not when the models load."""
    for stage in ("classifier", "segmenter"):
        save_tiny(tmp_path / stage / "checkpoints" / "best.pt", stage)
    weighted = OnDemand(
        [
            f"checkpoints.classifier=[{tmp_path}/classifier]",
            "tta=none",
            f"checkpoints.segmenter=[{{path:{tmp_path}/segmenter,weight:0.5}}]",
        ]
    )
    assert weighted.status().startswith("Models: 1 classifier, 1 segmenter checkpoint(s)")
    negative = OnDemand(
        [
            f"checkpoints.classifier=[{tmp_path}/classifier]",
            f"checkpoints.segmenter=[{{path:{tmp_path}/segmenter,weight:-1}}]",
        ]
    )
    with pytest.raises(PredictionError, match=r"checkpoints.segmenter: weight -1 must be >= 0"):
        negative.status()


def test_the_live_line_counts_each_image_once_with_its_newest_run(board, root):
    truth = read_annotations(root / "test_truth.csv")
    ids = list(truth.image_ids)
    store_run(board, truth.rows, ids, "old", "2021-03-01T08:00:00")
    store_run(board, truth.rows.iloc[:0], ids[:2], "new", "2021-06-01T08:00:00")  # two images again, clean now
    cards = board.update_cards(*YEAR, ALL_RUNS)
    table = inspections(board.rows(*YEAR, ALL_RUNS))
    assert len(table) == len(ids) == table["image_id"].nunique()
    assert cards[5].startswith(f"{len(ids)} images inspected in all prediction runs")
    newest = {i: ("pred:new" if i in ids[:2] else "pred:old") for i in ids}
    assert dict(zip(table["image_id"], table["source"])) == newest
    # Each class card agrees with the sample note of that class on the same screen.
    for k in (1, 2, 3, 4):
        note = board.update_samples(*YEAR, ALL_RUNS, k, 0)[0].children
        count = int(cards[k - 1].replace(",", ""))
        assert note.startswith(f"{count} image") if count else note.startswith("No image"), (k, cards, note)


def test_newest_run_per_image_breaks_ties_by_run_name():
    from dashboard.views import newest_run_per_image

    rows = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "source": ["pred:x", "pred:y", "pred:x"],
            "inspected_at": ["2021-01-01T00:00:00"] * 3,
            "class_id": [0, 1, 0],
        }
    )
    assert newest_run_per_image(rows)[["image_id", "source"]].values.tolist() == [["a", "pred:y"], ["b", "pred:x"]]


def test_follow_moves_the_end_date_after_the_pages_own_run(board, root):
    version, seen = board.store.version(), board.store.latest()
    today = datetime.now(timezone.utc)
    ids = list(read_annotations(root / "test_truth.csv").image_ids)[:1]
    store_run(
        board, read_annotations(root / "test_truth.csv").rows.iloc[:0], ids, "live", today.isoformat(timespec="seconds")
    )
    mine = board.store.version()  # the page's prediction callback already sent this stamp to the page
    assert mine != version
    stamp, end, _, newest = board.poll(mine, ["follow"], "2021-12-31", seen)
    assert stamp is NO_UPDATE and end == today.strftime("%Y-%m-%d") and newest == board.store.latest()
    assert board.poll(mine, [], "2021-12-31", seen)[1] is NO_UPDATE
    # Nothing new since: an end date the user set earlier stays where it is.
    assert board.poll(mine, ["follow"], "2021-06-30", newest)[1] is NO_UPDATE


def test_time_axes_span_the_data_not_the_empty_years_of_the_period(board):
    today = datetime.now().strftime("%Y-%m-%d")
    _, timeline, rate = board.update_charts("2021-01-01", today, "train")
    for fig in (timeline, rate):
        end = pd.Timestamp(fig.layout.xaxis.range[1])
        assert end <= pd.Timestamp("2022-01-09"), fig.layout.xaxis.range
    assert sum(sum(t.y) for t in timeline.data) == 12


def test_a_prediction_on_an_image_without_truth_is_drawn_in_class_colours(board, root):
    truth = read_annotations(root / "test_truth.csv")
    with closing(connect(board.db)) as conn:  # the test images have no truth, as on the real data
        conn.execute("DELETE FROM inspections WHERE source = 'test'")
        conn.commit()
    image_id = truth.rows["ImageId"].iloc[0]
    store_run(board, truth.rows, list(truth.image_ids), "r")
    head, view = board.compare("pred:r", image_id)
    html = repr(view)
    assert "layer.png" in html and "match.png" not in html and "data-legend='classes'" in html
    assert "nothing here is a true or a false positive" in repr(head)
    assert "FP" not in repr(view)
    png = board.compare_export("pred:r", image_id)
    assert png["filename"].endswith(".png")


def test_kaggle_sample_submission_lists_clean_images(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text("ImageId,EncodedPixels,ClassId\n0a1.jpg,1 409600,0\n0b2.jpg,1 409600,0\n")
    annotations, _ = importer.load_csv(path)
    assert annotations.image_ids == ("0a1.jpg", "0b2.jpg") and len(annotations.rows) == 0
    path.write_text("ImageId,EncodedPixels,ClassId\n0a1.jpg,1 409600,0\n0b2.jpg,5 10,0\n")
    with pytest.raises(importer.AnnotationError, match=r"sample_submission.csv, line 3: ClassId 0 is Kaggle's"):
        importer.load_csv(path)
    path.write_text("ImageId,EncodedPixels,ClassId\n0a1.jpg,1 409600,0\n0a1.jpg,5 10,2\n")
    with pytest.raises(importer.AnnotationError, match=r"'0a1.jpg' has a ClassId 0 \(no defect\) row and defect rows"):
        importer.load_csv(path)
    path.write_text("ImageId,EncodedPixels,ClassId\n0a1.jpg,1 409600,7\n")
    with pytest.raises(importer.AnnotationError, match=r"line 2: unknown ClassId '7'"):
        importer.load_csv(path)


def test_clean_images_can_be_browsed(board, root):
    clean = 12 - read_annotations(root / "train.csv").rows["ImageId"].nunique()
    assert clean > 0
    out = board.update_samples(*YEAR, "train", 0, 0)
    assert out[0].children.startswith(f"{clean} image{'s' if clean > 1 else ''} with no defect in this period")
    assert len(out) == 1 + min(3, clean)


def test_the_page_says_when_dates_are_synthetic(board, root):
    assert "100% of these dates are synthetic" in board.update_cards(*YEAR, "train")[5]
    ids = list(read_annotations(root / "test_truth.csv").image_ids)
    store_run(board, read_annotations(root / "test_truth.csv").rows.iloc[:0], ids, "dated", "2021-05-05T10:00:00")
    assert "synthetic" not in board.update_cards(*YEAR, "pred:dated")[5]


def test_chart_titles_sit_below_the_toolbar_band(board):
    for fig in board.update_charts(*YEAR, "train"):
        assert fig.layout.margin.t >= 60 and fig.layout.title.yref == "paper" and fig.layout.title.yanchor == "bottom"


def test_the_grid_lists_every_image_with_areas_and_dice(board, root):
    truth = read_annotations(root / "test_truth.csv")
    grid, note = board.update_grid(*YEAR, "train")
    train = read_annotations(root / "train.csv").rows
    assert len(grid) == 12 and {r["ImageId"] for r in grid if r["classes"] == "none"} == {
        r["ImageId"] for r in grid
    } - set(train["ImageId"])
    row = next(r for r in grid if r["classes"] != "none")
    assert row["defect_px"] == sum(row[f"px_{c}"] for c in (1, 2, 3, 4)) > 0 and row["file"] == "yes"
    assert "clean" in note and "no confidence column" in note
    drop = truth.rows.iloc[1:]  # the first mask left out: that image's Dice drops below 1
    store_run(board, drop, list(truth.image_ids), "r")
    runs = {r["ImageId"]: r["dice"] for r in board.update_grid(*YEAR, "pred:r")[0]}
    assert runs[truth.rows["ImageId"].iloc[0]] < 1 and max(runs.values()) == 1
    assert board.pick_from_grid({"row": 0}, [{"ImageId": "x.jpg", "source": "pred:r"}]) == {
        "source": "pred:r",
        "image": "x.jpg",
    }


def test_review_rejects_false_alarms_and_exports_a_train_csv_training_reads(board, root, tmp_path):
    truth = read_annotations(root / "test_truth.csv")
    store_run(board, truth.rows, list(truth.image_ids), "r")
    first, second = truth.rows["ImageId"].iloc[0], truth.rows["ImageId"].iloc[-1]
    assert first != second
    _, options, rejected, status = board.grid_view({"source": "pred:r", "image": first})
    assert options and rejected == [] and "not reviewed yet" in status
    assert board.save_review({"source": "pred:r", "image": first}, [], false_alarm=True)[0].startswith(
        f"Saved: {first} in pred:r — false alarm"
    )
    kept_class = int(truth.rows.loc[truth.rows["ImageId"] == second, "ClassId"].iloc[0])
    assert "accepted" in board.save_review({"source": "pred:r", "image": second}, [])[0]
    assert board.grid_view({"source": "pred:r", "image": first})[2] == [o["value"] for o in options]
    out = tmp_path / "train.csv"
    out.write_text(board.export_review("pred:r")["content"])
    labels = read_annotations(out)  # the project's annotation reader, as training uses it
    expected = truth.rows[truth.rows["ImageId"] != first].reset_index(drop=True)
    assert labels.rows.equals(expected) and labels.format == "new"
    assert kept_class in set(labels.rows.loc[labels.rows["ImageId"] == second, "ClassId"])
    assert board.save_review(None, [])[1] == "alert error"


def test_uploaded_images_are_checked_stored_and_predicted(board, root, tmp_path):
    import base64

    class Fake:
        def status(self):
            return "Models: fake."

        def predict(self, paths):
            ids = [Path(p).name for p in paths]
            assert all(Path(p).is_file() for p in paths)
            return pd.DataFrame(
                {"ImageId": ids, "ClassId": [1] * len(ids), "EncodedPixels": ["1 10"] * len(ids)}
            ), "1 s"

    board.predictor = Fake()
    good, other = [p.read_bytes() for p in sorted((root / "test_images").iterdir())[:2]]

    def data(raw: bytes) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(raw).decode()

    small = __import__("cv2").imencode(".png", np.zeros((10, 10), np.uint8))[1].tobytes()
    children, source = board.predict_uploaded([data(good), data(small), data(b"x")], ["new1.jpg", "small.png", "a.txt"])
    text = repr(children)
    assert source and source.startswith("pred:live-") and "new1.jpg" in text
    assert "small.png: image is 10x10, expected 256x1600" in text and "a.txt: only .jpg / .jpeg / .png" in text
    assert (board.upload_dir / "new1.jpg").read_bytes() == good and "new1.jpg" in board.images
    assert set(board.rows(None, None, source)["image_id"]) == {"new1.jpg"}
    refused, again = board.predict_uploaded([data(other)], ["new1.jpg"])
    assert again is None and "another image of that name was uploaded before" in repr(refused)
    # files without their names (a client that sent fewer names) are refused as a whole, none dropped silently
    refused, again = board.predict_uploaded([data(other), data(good)], ["x.jpg"])
    assert again is None and "2 files arrived with 1 names; upload them again" in repr(refused)
    assert not (board.upload_dir / "x.jpg").exists()


def test_precision_recall_curves_per_class_from_the_store(board, root):
    truth = read_annotations(root / "test_truth.csv")
    store_run(board, truth.rows, list(truth.image_ids), "perfect")
    fig = board.update_pr(*YEAR, "pred:perfect")
    assert fig.data and all(max(t.y) == 1 and max(t.x) == 1 for t in fig.data)
    # A perfect run reaches precision 1 at recall 1 for every class that has truth.
    for trace in fig.data:
        assert any(x == 1 and y == 1 for x, y in zip(trace.x, trace.y)), trace.name
    present = sorted(set(truth.rows["ClassId"]))
    assert [t.name.split(" (")[0] for t in fig.data] == [f"Defect {c}" for c in present]
    assert "no confidence" in fig.layout.title.text
    assert not board.update_pr(*YEAR, None).data


def test_model_vs_model_on_one_image(board, root):
    truth = read_annotations(root / "test_truth.csv")
    ids = list(truth.image_ids)
    store_run(board, truth.rows, ids, "a")
    image_id = truth.rows["ImageId"].iloc[0]
    store_run(board, truth.rows[truth.rows["ImageId"] != image_id], ids, "b")  # b misses that image's defects
    out = board.versus("pred:a", "pred:b", image_id)
    note = out[0].children
    cls = int(truth.rows.loc[truth.rows["ImageId"] == image_id, "ClassId"].iloc[0])
    assert f"class {cls} 0.000" in note and len(out) == 3
    assert "pred%3Aa" in repr(out[1]) and "pred%3Ab" in repr(out[2])
    assert "no image file" in board.versus("pred:a", "pred:b", "nope.jpg")[0].children
