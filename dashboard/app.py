"""The Dash app: layout and callbacks over the inspections store, the image files and the predict command.

Callbacks are methods of ``Dashboard`` (plain functions of their inputs) so tests call them in-process;
``create_app`` wires them to the page. Every callback opens its own SQLite connection (Flask threads).
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import dash
import pandas as pd
from dash import Dash, Input, Output, State, dash_table, dcc, html

from common.constants import CLASS_IDS
from common.dataset import list_images
from common.errors import SteelsegError
from common.images import read_image
from common.inspections import connect, query
from common.layout import DataRoot
from common.viz import as_rgb, contour_overlay, mask_image, png_data_uri
from dashboard.importer import TRUTH_SOURCES, dates_for, import_submission
from dashboard.predict import DEFAULT_COMMAND, REPO_ROOT, predict_images
from dashboard.upload import MAX_UPLOAD_BYTES, parse_upload
from dashboard.views import LABELS, NO_DEFECT, dice_table, masks_for, period_counts, pie_figure, sample_ids, timeline_figure

IMAGE_SCALE = 0.5  # images are sent at 800x128
CARD_KEYS = [*CLASS_IDS, NO_DEFECT]


@dataclass
class Dashboard:
    """Everything the callbacks need: the store, the image files, the predict command and the upload cap."""

    db: Path
    images: dict[str, Path] = field(default_factory=dict)
    test_images: list[str] = field(default_factory=list)
    predict_command: str = DEFAULT_COMMAND
    predict_cwd: Path | None = REPO_ROOT
    max_upload_bytes: int = MAX_UPLOAD_BYTES

    @classmethod
    def from_root(cls, db: Path, data: DataRoot, **kwargs) -> "Dashboard":
        """Index the root's image folders (train first, so a test image never hides a train one)."""
        images: dict[str, Path] = {}
        tests = list_images(data.test_images) if data.test_images is not None else []
        if data.test_images is not None:
            images.update({i: data.test_images / i for i in tests})
        if data.train_images is not None:
            images.update({i: data.train_images / i for i in list_images(data.train_images)})
        return cls(Path(db), images, tests, **kwargs)

    # ------------------------------------------------------------------ store access
    def rows(self, start: str | None, end: str | None, source: str | None) -> pd.DataFrame:
        """Inspections of one source in a date range (inclusive days)."""
        with closing(connect(self.db)) as conn:
            return query(conn, _day(start), _day(end), source)

    def sources(self) -> list[str]:
        """Sources in the store: train, test, then prediction runs by name."""
        with closing(connect(self.db)) as conn:
            found = [r[0] for r in conn.execute("SELECT DISTINCT source FROM inspections")]
        return [s for s in TRUTH_SOURCES if s in found] + sorted(s for s in found if s not in TRUTH_SOURCES)

    def date_extent(self) -> tuple[str, str]:
        """First and last inspection day in the store (2021 when it is empty)."""
        with closing(connect(self.db)) as conn:
            lo, hi = conn.execute("SELECT MIN(inspected_at), MAX(inspected_at) FROM inspections").fetchone()
        return (lo[:10], hi[:10]) if lo else ("2021-01-01", "2021-12-31")

    def truth(self) -> pd.DataFrame:
        """Ground-truth rows of every date (train and test sources)."""
        return pd.concat([self.rows(None, None, s) for s in TRUTH_SOURCES], ignore_index=True)

    # ------------------------------------------------------------------ callbacks
    def update_cards(self, start: str, end: str, source: str) -> list[str]:
        """Images per class and with no defect in the period, for the five cards."""
        counts = period_counts(self.rows(start, end, source))
        return [f"{counts[k]:,}" for k in CARD_KEYS]

    def update_charts(self, start: str, end: str, source: str):
        """Pie of the period's distribution and the counts over time."""
        rows = self.rows(start, end, source)
        n = rows["image_id"].nunique()
        return (pie_figure(period_counts(rows), f"Defect distribution — {source}, {n:,} images"),
                timeline_figure(rows, "Images per class over time"))

    def update_samples(self, start: str, end: str, source: str, class_id: int, rolls: int | None) -> list:
        """Three random images of the class in the period: image, mask, contour overlay (re-roll = new seed)."""
        rows = self.rows(start, end, source)
        picks = sample_ids(rows, int(class_id), set(self.images), seed=int(rolls or 0) * 7919 + int(class_id))
        if not picks:
            return [html.P(f"No image of class {class_id} with an image file in this period.", className="empty")]
        return [self.image_row(i, masks_for(rows, i), f"{i} ({source})") for i in picks]

    def image_row(self, image_id: str, masks: dict, caption: str) -> html.Div:
        """Image, colour mask and contour overlay of one image."""
        image = as_rgb(read_image(self.images[image_id]))
        panels = [(image, "image"), (mask_image(masks, image.shape[:2]), "mask"), (contour_overlay(image, masks, 4), "contours")]
        return html.Div([html.Div(caption, className="caption")] + [
            html.Img(src=png_data_uri(p, IMAGE_SCALE), title=f"{image_id} {name}", className="steel")
            for p, name in panels], className="image-row", **{"data-image": image_id})

    def handle_upload(self, contents: str | None, filename: str | None) -> tuple[html.Div, str | None]:
        """Validate and store an uploaded submission; the message (error or summary) and the new source."""
        if not contents:
            return html.Div(), None
        try:
            annotations, dates, run_id = parse_upload(contents, filename or "", self.max_upload_bytes)
            with closing(connect(self.db)) as conn:
                import_submission(conn, annotations, dates, run_id)
        except (SteelsegError, ValueError) as exc:
            return html.Div(f"Upload refused: {exc}", className="alert error", id="upload-error"), None
        source = f"pred:{run_id}"
        table, report = dice_table(self.rows(None, None, source), self.truth())
        scored = (f" Scored on {report.n_images} images with ground truth: {report.overall:.4f} "
                  f"(all-empty baseline {report.baseline:.4f})." if report else " No ground truth for these images.")
        text = (f"Loaded {filename} as {source}: {len(annotations.image_ids):,} images, "
                f"{len(annotations.rows):,} defect masks.{scored}")
        return html.Div(text, className="alert ok", id="upload-ok"), source

    def source_options(self) -> tuple[list[dict], list[dict]]:
        """Options of the dataset selector (all sources) and of the run selector (prediction runs)."""
        sources = self.sources()
        return ([{"label": s, "value": s} for s in sources],
                [{"label": s, "value": s} for s in sources if s.startswith("pred:")])

    def update_scores(self, start: str, end: str, run: str | None) -> tuple[html.Div, list[dict], list[dict]]:
        """Score of a prediction run in the period, its worst images, and the images to compare."""
        if not run:
            return html.Div("Choose or upload a prediction run.", className="empty"), [], []
        pred = self.rows(start, end, run)
        options = [{"label": i, "value": i} for i in sorted(pred["image_id"].unique())]
        table, report = dice_table(pred, self.truth())
        if report is None:
            return html.Div(f"{run}: none of its {len(options)} images in this period has ground truth.",
                            className="empty"), [], options
        per_class = ", ".join(f"class {c} {report.per_class[c]:.4f}" for c in CLASS_IDS)
        summary = html.Div([html.B(f"Kaggle score {report.overall:.4f}"),
                            f" on {report.n_images} images (all-empty baseline {report.baseline:.4f}); {per_class}."],
                           id="score-text")
        return summary, table.head(50).to_dict("records"), options

    def pick_from_table(self, active_cell: dict | None, rows: list[dict] | None) -> str:
        """The ImageId of the clicked row of the worst-images table."""
        if not active_cell or not rows or active_cell.get("row") is None or active_cell["row"] >= len(rows):
            return dash.no_update
        return rows[active_cell["row"]]["ImageId"]

    def compare(self, run: str | None, image_id: str | None) -> list:
        """Ground truth and prediction of one image side by side, with the per-class Dice."""
        if not run or not image_id:
            return [html.P("Pick an image (or click a row of the table).", className="empty")]
        pred = self.rows(None, None, run)
        pred = pred[pred["image_id"] == image_id]
        truth = self.truth()
        truth = truth[truth["image_id"] == image_id]
        if image_id not in self.images:
            return [html.P(f"{image_id}: no image file in the data root.", className="empty")]
        image = as_rgb(read_image(self.images[image_id]))
        out = []
        if len(truth):
            table, _ = dice_table(pred, truth)
            dice = table.iloc[0]
            cells = [html.Td(f"{dice[f'dice_{c}']:.3f}") for c in CLASS_IDS] + [html.Td(f"{dice['dice']:.3f}")]
            out.append(html.Table([html.Tr([html.Th(f"class {c}") for c in CLASS_IDS] + [html.Th("mean")]),
                                   html.Tr(cells)], className="dice", id="compare-dice"))
            out.append(self._panel(image, masks_for(truth, image_id), "ground truth"))
        else:
            out.append(html.P("No ground truth for this image: prediction only.", className="empty"))
        out.append(self._panel(image, masks_for(pred, image_id), f"prediction ({run})"))
        return out

    @staticmethod
    def _panel(image, masks, caption) -> html.Div:
        classes = ", ".join(f"{c}: {int(m.sum()):,} px" for c, m in sorted(masks.items())) or "no defect"
        return html.Div([html.Div(f"{caption} — {classes}", className="caption"),
                         html.Img(src=png_data_uri(contour_overlay(image, masks, 4), IMAGE_SCALE), className="steel wide")])

    def run_predictions(self, n_clicks: int | None, image_ids: list[str] | None) -> tuple[list, str | None]:
        """Run the predict command on the chosen images, store them as a run and show the predicted masks."""
        if not n_clicks:
            return [], None
        if not image_ids:
            return [html.Div("Choose one or more test images first.", className="alert error")], None
        try:
            annotations = predict_images([self.images[i] for i in image_ids], self.predict_command, self.predict_cwd)
            run_id = "live-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            with closing(connect(self.db)) as conn:
                import_submission(conn, annotations, {}, run_id)
        except (SteelsegError, ValueError, KeyError) as exc:
            return [html.Div(f"Prediction failed: {exc}", className="alert error", id="predict-error")], None
        source = f"pred:{run_id}"
        rows = self.rows(None, None, source)
        return [html.Div(f"Stored as {source}.", className="alert ok")] + [
            self.image_row(i, masks_for(rows, i), f"{i} — predicted") for i in image_ids], source


def _day(value: str | None) -> str | None:
    """The date part of a DatePickerRange value ('2021-03-04' or '2021-03-04T00:00:00')."""
    return value[:10] if value else None


def _card(key: int) -> html.Div:
    return html.Div([html.Div(LABELS[key], className="card-title"), html.Div("–", id=f"card-{key}", className="card-value")],
                    className=f"card c{key}")


CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f3f1ec;color:#222}
.wrap{max-width:1700px;margin:auto;padding:12px 20px}
h1{font-size:22px;margin:4px 0 10px} h2{font-size:17px;margin:18px 0 6px}
.controls{display:flex;gap:18px;align-items:center;flex-wrap:wrap}
.controls .dd{width:300px} .controls .dash-datepicker{width:auto}
.cards{display:flex;gap:12px;margin:12px 0}
.card{flex:1;background:#fff;border-radius:6px;padding:8px 14px;border-top:5px solid #999;box-shadow:0 1px 2px #0002}
.c1{border-color:#ffdc00}.c2{border-color:#00c846}.c3{border-color:#286eff}.c4{border-color:#e600e6}
.card-title{font-size:13px;color:#555}.card-value{font-size:26px;font-weight:600}
.row{display:flex;gap:12px}.row>div{flex:1;background:#fff;border-radius:6px}
.image-row{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0;align-items:center}
.caption{width:100%;font-size:12px;color:#444}
img.steel{width:32.5%;image-rendering:auto;border:1px solid #999} img.steel.wide{width:98%}
.alert{padding:6px 10px;border-radius:4px;margin:6px 0;white-space:pre-wrap}
.alert.error{background:#fde2e1;color:#8a1010}.alert.ok{background:#e2f5e4;color:#145a1e}
.upload{border:2px dashed #888;border-radius:6px;padding:8px 16px;cursor:pointer;background:#fff}
.empty{color:#666;font-style:italic} table.dice td,table.dice th{padding:2px 10px;border:1px solid #ccc}
"""


def layout(dash_obj: Dashboard) -> html.Div:
    """The single page: controls, cards, charts, samples, upload, scoring and comparison, predictions."""
    start, end = dash_obj.date_extent()
    sources, runs = dash_obj.source_options()
    first = sources[0]["value"] if sources else None
    return html.Div([
        html.H1("Steel defect inspections"),
        html.Div([
            dcc.DatePickerRange(id="date-range", min_date_allowed="1995-08-05", max_date_allowed="2090-12-31",
                                start_date=start, end_date=end, display_format="YYYY-MM-DD"),
            html.Div(dcc.Dropdown(id="dataset", options=sources, value=first, clearable=False), className="dd"),
            dcc.Upload(id="upload", children=html.Div(["Upload a submission CSV (drop or ", html.A("choose"), ")"]),
                       accept=".csv", multiple=False, className="upload"),
        ], className="controls"),
        html.Div(id="upload-status"),
        html.Div([_card(k) for k in CARD_KEYS], className="cards"),
        html.Div([html.Div(dcc.Graph(id="pie")), html.Div(dcc.Graph(id="timeline"))], className="row"),
        html.H2("Random images of a class"),
        html.Div([html.Div(dcc.Dropdown(id="sample-class", options=[{"label": LABELS[c], "value": c} for c in CLASS_IDS],
                                        value=CLASS_IDS[0], clearable=False), className="dd"),
                  html.Button("Re-roll", id="reroll", n_clicks=0)], className="controls"),
        dcc.Loading(html.Div(id="samples")),
        html.H2("Prediction vs ground truth"),
        html.Div([html.Div(dcc.Dropdown(id="compare-run", options=runs, value=runs[0]["value"] if runs else None,
                                        placeholder="prediction run"), className="dd"),
                  html.Div(id="score")], className="controls"),
        html.Div([
            html.Div([html.Div("Worst images by Dice (click a row)", className="caption"),
                      dash_table.DataTable(id="worst", columns=[{"name": c, "id": c} for c in
                                                                ["ImageId", "dice", *[f"dice_{k}" for k in CLASS_IDS]]],
                                           data=[], page_size=10, style_cell={"fontSize": 12, "padding": "2px 6px"})],
                     style={"flex": "0 0 520px"}),
            html.Div([html.Div(dcc.Dropdown(id="compare-image", placeholder="image"), className="dd"),
                      dcc.Loading(html.Div(id="compare-view"))]),
        ], className="row"),
        html.H2("Predict on demand"),
        html.Div([html.Div(dcc.Dropdown(id="predict-images", multi=True, placeholder="test images",
                                        options=[{"label": i, "value": i} for i in dash_obj.test_images]),
                           style={"width": "600px"}),
                  html.Button("Run prediction", id="predict-run", n_clicks=0)], className="controls"),
        dcc.Loading(html.Div(id="predict-output")),
    ], className="wrap")


def create_app(dash_obj: Dashboard) -> Dash:
    """A Dash app wired to the dashboard's callbacks."""
    app = Dash(__name__, title="Steel defect inspections")
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + CSS + "</style>")
    # Upload bodies are base64 (4/3 of the file) inside JSON: refuse requests far above the cap early.
    app.server.config["MAX_CONTENT_LENGTH"] = int(dash_obj.max_upload_bytes * 1.5) + 2**20
    app.layout = lambda: layout(dash_obj)
    period = [Input("date-range", "start_date"), Input("date-range", "end_date"), Input("dataset", "value")]
    app.callback([Output(f"card-{k}", "children") for k in CARD_KEYS], *period)(dash_obj.update_cards)
    app.callback(Output("pie", "figure"), Output("timeline", "figure"), *period)(dash_obj.update_charts)
    app.callback(Output("samples", "children"), *period, Input("sample-class", "value"),
                 Input("reroll", "n_clicks"))(dash_obj.update_samples)

    # Upload and on-demand prediction both add a source: they refresh the selectors and select the new run.
    sources_out = [Output("dataset", "options", allow_duplicate=True), Output("compare-run", "options", allow_duplicate=True),
                   Output("compare-run", "value", allow_duplicate=True)]

    def _with_sources(children, source):
        datasets, runs = dash_obj.source_options()
        return children, datasets, runs, source or dash.no_update

    @app.callback(Output("upload-status", "children"), *sources_out,
                  Input("upload", "contents"), State("upload", "filename"), prevent_initial_call=True)
    def _upload(contents, filename):
        return _with_sources(*dash_obj.handle_upload(contents, filename))

    @app.callback(Output("predict-output", "children"), *sources_out,
                  Input("predict-run", "n_clicks"), State("predict-images", "value"), prevent_initial_call=True)
    def _predict(n_clicks, image_ids):
        return _with_sources(*dash_obj.run_predictions(n_clicks, image_ids))

    app.callback(Output("score", "children"), Output("worst", "data"), Output("compare-image", "options"),
                 Input("date-range", "start_date"), Input("date-range", "end_date"),
                 Input("compare-run", "value"))(dash_obj.update_scores)
    app.callback(Output("compare-image", "value"), Input("worst", "active_cell"),
                 State("worst", "derived_viewport_data"), prevent_initial_call=True)(dash_obj.pick_from_table)
    app.callback(Output("compare-view", "children"), Input("compare-run", "value"),
                 Input("compare-image", "value"))(dash_obj.compare)
    return app
