"""The Dash app: callbacks over the inspections store, the image files and the in-process predictor.

Callbacks are methods of ``Dashboard`` (plain functions of their inputs) so tests call them in-process;
``create_app`` wires them to the page and adds the image routes: ``/steel/image`` (the file as is),
``/steel/layer.png`` (a source's class masks) and ``/steel/match.png`` (one class's TP/FP/FN), each a
transparent layer the browser stacks over the image.
"""

from __future__ import annotations

import logging
import re
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import dash
import numpy as np
import pandas as pd
from dash import ClientsideFunction, Dash, Input, Output, State, dcc, html
from flask import abort, request, send_file

from common.annotations import Annotations
from common.constants import CLASS_IDS, IMAGE_SHAPE, NEW_FORMAT
from common.dataset import list_images
from common.errors import SteelsegError
from common.images import read_image
from common.inspections import connect, records
from common.io import spreadsheet_safe
from common.layout import DataRoot
from dashboard.images import class_layer, compare_png, match_layer, match_regions, png_rgba
from dashboard.importer import import_submission
from dashboard.layout import CARD_KEYS, alert, page, strip
from dashboard.predict import OnDemand
from dashboard.review import save_verdicts, train_csv, verdicts
from dashboard.store import ALL_RUNS, Store, source_label
from dashboard.upload import MAX_UPLOAD_BYTES, parse_upload, save_image_upload
from dashboard.views import (
    NO_DEFECT,
    SEVERAL,
    Buckets,
    data_span,
    dice_table,
    image_grid,
    image_groups,
    inspections,
    masks_for,
    pair_dice,
    period_counts,
    pie_figure,
    pr_figure,
    rate_figure,
    sample_ids,
    synthetic_share,
    timeline_figure,
)

__all__ = ["Dashboard", "create_app"]

log = logging.getLogger(__name__)
NO_UPDATE = dash.no_update


@dataclass
class Dashboard:
    """Everything the callbacks need: the store, the image files, the predictor and the upload cap."""

    db: Path
    images: dict[str, Path] = field(default_factory=dict)
    test_images: list[str] = field(default_factory=list)
    predictor: OnDemand = field(default_factory=OnDemand)
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    poll_s: float = 5.0
    base: str = "/"

    def __post_init__(self) -> None:
        self.db = Path(self.db)
        self.store = Store(self.db)

    @classmethod
    def from_root(cls, db: Path, data: DataRoot, **kwargs) -> Dashboard:
        """Index the root's image folders (train first, so a test image never hides a train one).

        Folders are made absolute against the working directory here: Flask's ``send_file`` would resolve a
        relative path against the package folder (``python -m dashboard ../shared/...`` answered HTTP 500)."""
        images: dict[str, Path] = {}
        tests = list_images(data.test_images) if data.test_images is not None else []
        if data.test_images is not None:
            images.update({i: data.test_images.absolute() / i for i in tests})
        if data.train_images is not None:
            images.update({i: data.train_images.absolute() / i for i in list_images(data.train_images)})
        return cls(Path(db), images, tests, **kwargs)

    # ------------------------------------------------------------------ helpers
    def rows(self, start: str | None, end: str | None, source: str | None) -> pd.DataFrame:
        """Inspections of a source (or ALL_RUNS) in an inclusive day range."""
        return self.store.rows(_day(start), _day(end), source)

    def url(self, route: str, **params: str) -> str:
        """Address of an image route, with the store stamp so the browser caches until the store changes."""
        return f"{self.base}steel/{route}?{urlencode({**params, 'v': self.store.version()})}"

    def model_status(self) -> tuple[str, bool]:
        """The predict section's line and whether the button can be used (checked on every page load)."""
        try:
            return self.predictor.status(), True
        except SteelsegError as exc:
            return str(exc), False

    def source_options(self) -> tuple[list[dict], list[dict]]:
        """Options of the dataset selector (all sources) and of the run selector (prediction runs)."""
        sources = self.store.sources()
        return (
            [{"label": source_label(s), "value": s} for s in sources],
            [{"label": s, "value": s} for s in sources if s.startswith("pred:") and s != ALL_RUNS],
        )

    # ------------------------------------------------------------------ period and live updates
    def check_period(self, start: str | None, end: str | None) -> tuple[dict | object, html.Div | None]:
        """The period every view uses; an inverted or incomplete range is refused in the page."""
        if not start or not end:
            return NO_UPDATE, alert(
                "Choose both a start and an end date; the views keep the last complete period.",
                "error",
                id="period-error",
            )
        if _day(start) > _day(end):
            return NO_UPDATE, alert(
                f"The start date {_day(start)} is after the end date {_day(end)}: swap them. "
                "The views keep showing the last valid period.",
                "error",
                id="period-error",
            )
        return {"start": _day(start), "end": _day(end)}, None

    def poll(
        self, version: str | None, follow: list[str] | None, end: str | None, seen: str | None = None
    ) -> tuple[object, object, str, object]:
        """New store stamp when any writer changed the store; with 'follow', the end date moves to the newest day
        when a newer inspection arrived: the store changed since the page's stamp, or its newest inspection is not
        the one the page last followed (``seen``: the page's own uploads and predictions already sent the stamp).
        Returns the stamp, the end date, the status line and the newest inspection now seen."""
        now = self.store.version()
        latest = self.store.latest()
        checked = datetime.now().strftime("%H:%M:%S")
        text = (
            f"Store: {int(now.split('-')[0]):,} rows, newest inspection {latest[:16].replace('T', ' ')}"
            if latest
            else "Store: empty"
        ) + f" · checked {checked}, every {self.poll_s:g} s"
        arrived = now != version or (seen is not None and latest != seen)
        new_end = latest[:10] if arrived and follow and latest and end and latest[:10] > _day(end) else NO_UPDATE
        return (NO_UPDATE if now == version else now), new_end, text, (latest if latest != seen else NO_UPDATE)

    # ------------------------------------------------------------------ counts and charts
    def update_overview(self, start: str, end: str, source: str) -> list:
        """Cards, the note under them and the three charts, from one query (one request per change)."""
        table = inspections(self.rows(start, end, source))
        return [*self._cards(table, start, end, source), *self._charts(table, start, end, source)]

    def update_cards(self, start: str, end: str, source: str) -> list[str]:
        """Images per class and with no defect in the period (five cards), then the note under them."""
        return self._cards(inspections(self.rows(start, end, source)), start, end, source)

    def update_charts(self, start: str, end: str, source: str) -> tuple:
        """Pie of the period's images by defect group, images per bucket, and the defect rate per bucket."""
        return self._charts(inspections(self.rows(start, end, source)), start, end, source)

    @staticmethod
    def _cards(table: pd.DataFrame, start: str, end: str, source: str) -> list[str]:
        counts = period_counts(table)
        several = int((image_groups(table) == SEVERAL).sum())
        note = (
            f"{_n(len(table), 'image')} inspected in {source_label(source)} from {_day(start)} to {_day(end)}; "
            f"{several:,} of them {'has' if several == 1 else 'have'} several defect classes and "
            f"{'counts' if several == 1 else 'count'} on each of {'its' if several == 1 else 'their'} cards."
        )
        if source == ALL_RUNS:
            note += " An image predicted by several runs counts once, with its newest run."
        share = synthetic_share(table)
        if share:
            note += (
                f" {share:.0%} of these dates are synthetic: their CSV had no inspected_at column, so each image "
                "got a fixed date in 2021 from a hash of its ImageId (real line times need that column)."
            )
        return [f"{counts[k]:,}" for k in CARD_KEYS] + [note]

    @staticmethod
    def _charts(table: pd.DataFrame, start: str, end: str, source: str) -> tuple:
        spans = Buckets(*data_span(table, _day(start), _day(end)))
        name = source_label(source)
        return (
            pie_figure(table, f"{len(table):,} images of {name} by defect class"),
            timeline_figure(
                table,
                spans,
                f"Images inspected per {spans.name} (Monday-to-Sunday weeks)"
                if spans.name == "week"
                else f"Images inspected per {spans.name}",
            ),
            rate_figure(
                table,
                spans,
                f"Defect rate per class per {spans.name} — {name} (images with the defect / images inspected)",
            ),
        )

    # ------------------------------------------------------------------ images
    def update_samples(self, start: str, end: str, source: str, class_id: int, rolls: int | None) -> list:
        """A note on how many images of the class have a file, then three of them as full-width strips."""
        rows = self.rows(start, end, source)
        class_id = int(class_id)
        of_class = set(rows.loc[rows["class_id"] == class_id, "image_id"])
        with_file = of_class & set(self.images)
        kind = "with no defect" if class_id == NO_DEFECT else f"of class {class_id}"
        if not of_class:
            return [html.P(f"No image {kind} in this period.", className="empty", id="samples-note")]
        found = f"{_n(len(of_class), 'image')} {kind} in this period"
        picks = sample_ids(rows, class_id, with_file, int(rolls or 0))
        if not with_file:
            text = f"{found}; none has an image file in the data root."
        elif len(with_file) < len(of_class):
            text = (
                f"{found}; only {len(with_file):,} "
                f"{'has' if len(with_file) == 1 else 'have'} an image file in the data root — showing {len(picks)}."
            )
        else:
            text = f"{found} — showing {len(picks)}" + (", Re-roll for others." if len(with_file) > len(picks) else ".")
        note = html.P(text, className="note", id="samples-note")
        return [note] + [
            self.source_strip(i, source if source != ALL_RUNS else _source_of(rows, i), rows) for i in picks
        ]

    def source_strip(self, image_id: str, source: str, rows: pd.DataFrame) -> html.Div:
        """Strip of an image with the class masks of a source."""
        masks = masks_for(rows[rows["source"] == source], image_id)
        classes = ", ".join(f"class {c}: {int(m.sum()):,} px" for c, m in sorted(masks.items())) or "no defect"
        return strip(
            self.url("image", image=image_id),
            self.url("layer.png", image=image_id, source=source),
            f"{image_id} ({source}) — {classes}",
            image_id,
        )

    def image_file(self, image_id: str) -> Path:
        """The file of an image of the data root (404 for any other name)."""
        path = self.images.get(image_id)
        if path is None:
            abort(404)
        return path

    def class_layer_png(self, image_id: str, source: str) -> bytes:
        """The class-mask layer of one image of one source."""
        self.image_file(image_id)
        return png_rgba(class_layer(masks_for(self.rows(None, None, source), image_id), IMAGE_SHAPE))

    def match_layer_png(self, image_id: str, run: str, class_id: int) -> bytes:
        """The TP / FP / FN layer of one class of one image."""
        self.image_file(image_id)
        pred, truth = self._masks(run, image_id)
        return png_rgba(match_layer(match_regions(pred.get(class_id), truth.get(class_id), IMAGE_SHAPE)))

    def _masks(self, run: str, image_id: str) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        return masks_for(self.rows(None, None, run), image_id), masks_for(self.store.truth(), image_id)

    # ------------------------------------------------------------------ uploads
    def handle_upload(self, accepted: dict | None) -> tuple[str, str, str | None]:
        """Validate and store an uploaded submission: (message, its style, the run to select or None)."""
        if not accepted or not accepted.get("contents"):
            return NO_UPDATE, NO_UPDATE, None
        filename = accepted.get("filename") or ""
        try:
            annotations, dates, run_id = parse_upload(accepted["contents"], filename, self.max_upload_bytes)
            same = self.store.same_run({(i, c, r) for i, c, _, r in records(annotations.rows, annotations.image_ids)})
            if same:
                return (
                    f"{filename} holds the same predictions as {same}, which is already loaded: selected it, "
                    "nothing stored twice.",
                    "alert note",
                    same,
                )
            with closing(connect(self.db)) as conn:
                import_submission(conn, annotations, dates, run_id)
        except SteelsegError as exc:
            return f"Upload refused: {exc}", "alert error", None
        except Exception as exc:  # a bug: traceback in the server log, a line in the page instead of a stale message
            log.exception("upload of %s failed", filename)
            return (
                f"Upload failed on an internal error ({type(exc).__name__}: {exc}); see the server log.",
                "alert error",
                None,
            )
        source = f"pred:{run_id}"
        table, report = dice_table(self.rows(None, None, source), self.store.truth())
        scored = (
            f" Scored on {report.n_images:,} images with ground truth: {report.overall:.4f} "
            f"(all-empty baseline {report.baseline:.4f})."
            if report
            else " No ground truth for these images."
        )
        text = (
            f"Loaded {filename} as {source}: {len(annotations.image_ids):,} images, "
            f"{len(annotations.rows):,} defect masks.{scored}"
        )
        return text, "alert ok", source

    # ------------------------------------------------------------------ prediction vs ground truth
    def update_scores(self, start: str, end: str, run: str | None, current: str | None):
        """Score of a run in the period, its worst images, the images that can be shown, and the kept selection."""
        if not run:
            return html.Div("Choose or upload a prediction run.", className="empty"), [], [], "", None
        pred = self.rows(start, end, run)
        ids = sorted(pred["image_id"].unique())
        shown = [i for i in ids if i in self.images]
        options = [{"label": i, "value": i} for i in shown]
        note = (
            f"{len(shown):,} of the {len(ids):,} images of {run} in this period have an image file; "
            "only those are listed."
            if len(shown) < len(ids)
            else f"{len(ids):,} images of {run} in this period."
        )
        keep = current if current in shown else None
        table, report = dice_table(pred, self.store.truth())
        if report is None:
            return (
                html.Div(
                    f"{run}: none of its {len(ids):,} images in this period has ground truth.",
                    className="empty",
                    id="score-text",
                ),
                [],
                options,
                note,
                keep,
            )
        per_class = ", ".join(f"class {c} {report.per_class[c]:.4f}" for c in CLASS_IDS)
        summary = html.Div(
            [
                html.B(f"Kaggle score {report.overall:.4f}"),
                f" on {report.n_images:,} images (all-empty baseline {report.baseline:.4f}); {per_class}.",
            ],
            id="score-text",
        )
        return summary, table.head(200).to_dict("records"), options, note, keep

    def pick_from_table(self, active_cell: dict | None, rows: list[dict] | None) -> str:
        """The ImageId of the clicked row of the worst-images table."""
        if not active_cell or not rows or active_cell.get("row") is None or active_cell["row"] >= len(rows):
            return NO_UPDATE
        return rows[active_cell["row"]]["ImageId"]

    def comparison(self, run: str, image_id: str) -> tuple[list[tuple[int, str]], pd.Series | None]:
        """(class, caption) of each class with truth or prediction in the image, and its Dice row (None: no truth)."""
        pred_rows = self.rows(None, None, run)
        pred_rows = pred_rows[pred_rows["image_id"] == image_id]
        truth_rows = self.store.truth()
        truth_rows = truth_rows[truth_rows["image_id"] == image_id]
        pred, truth = masks_for(pred_rows, image_id), masks_for(truth_rows, image_id)
        dice = dice_table(pred_rows, truth_rows)[0].iloc[0] if len(truth_rows) else None
        shown = []
        for c in CLASS_IDS:
            if c not in pred and c not in truth:
                continue
            if dice is None:  # no truth: nothing is a true or false positive, only predicted pixels
                shown.append((c, f"class {c}: {int(pred[c].sum()):,} px predicted (no ground truth)"))
                continue
            px = {k: int(v.sum()) for k, v in match_regions(pred.get(c), truth.get(c), IMAGE_SHAPE).items()}
            shown.append(
                (
                    c,
                    f"class {c}: Dice {dice[f'dice_{c}']:.3f} — TP {px['TP']:,} px, FP {px['FP']:,} px, "
                    f"FN {px['FN']:,} px",
                )
            )
        return shown, dice

    def compare(self, run: str | None, image_id: str | None) -> tuple[list, list]:
        """Per-class Dice and one TP/FP/FN strip per class with truth or prediction, for one image of a run."""
        if not run or not image_id:
            return [], [html.P("Pick an image (or click a row of the table).", className="empty")]
        if image_id not in self.images:
            return [], [html.P(f"{image_id}: no image file in the data root.", className="empty")]
        run_ids = set(self.rows(None, None, run)["image_id"])
        if image_id not in run_ids:
            return [], [
                html.P(f"{image_id} is not one of the images of {run}; pick one of its images.", className="empty")
            ]
        shown, dice = self.comparison(run, image_id)
        head = []
        if dice is not None:
            cells = [html.Td(f"{dice[f'dice_{c}']:.3f}") for c in CLASS_IDS] + [html.Td(f"{dice['dice']:.3f}")]
            head = [
                html.Table(
                    [html.Tr([html.Th(f"class {c}") for c in CLASS_IDS] + [html.Th("mean")]), html.Tr(cells)],
                    className="dice",
                    id="compare-dice-table",
                )
            ]
        else:
            head = [
                html.P(
                    "No ground truth for this image (a test image): its predicted masks are shown in the class "
                    "colours; nothing here is a true or a false positive.",
                    className="empty",
                    id="compare-no-truth",
                )
            ]
            return head, [self.source_strip(image_id, run, self.rows(None, None, run))]
        if not shown:
            return head, [
                strip(
                    self.url("image", image=image_id),
                    None,
                    f"{image_id}: no defect in the truth nor in {run} (Dice 1 for every class)",
                    image_id,
                )
            ]
        return head, [
            strip(
                self.url("image", image=image_id),
                self.url("match.png", image=image_id, run=run, **{"class": str(c)}),
                f"{image_id} — {caption}",
                image_id,
                legend="match",
            )
            for c, caption in shown
        ]

    def update_pr(self, start: str, end: str, run: str | None) -> object:
        """Per-class precision/recall curves of the run in the period (images with truth only)."""
        if not run:
            return pr_figure(
                self.rows(start, end, None).iloc[:0],
                self.store.truth().iloc[:0],
                "Precision / recall per class: choose a prediction run",
            )
        return pr_figure(
            self.rows(start, end, run),
            self.store.truth(),
            f"Precision / recall per class of {run} (image level; score: predicted area, "
            "the store holds no confidence)",
        )

    def versus(self, run: str | None, other: str | None, image_id: str | None) -> list:
        """Two runs on one image: each run's masks in the class colours, and how much they agree per class."""
        if not run or not other or not image_id:
            return [html.P("Pick a run, an image and a second run to compare the two models on it.", className="empty")]
        if image_id not in self.images:
            return [html.P(f"{image_id}: no image file in the data root.", className="empty")]
        a, b = self.rows(None, None, run), self.rows(None, None, other)
        missing = [r for r, rows in ((run, a), (other, b)) if image_id not in set(rows["image_id"])]
        if missing:
            return [html.P(f"{image_id} is not one of the images of {missing[0]}.", className="empty")]
        _, values, _ = pair_dice(a[a["image_id"] == image_id], b[b["image_id"] == image_id])
        agree = ", ".join(f"class {c} {values[0][i]:.3f}" for i, c in enumerate(CLASS_IDS))
        return [
            html.P(
                f"Agreement of {run} with {other} on {image_id} (Dice, 1 where both predict nothing): {agree}.",
                className="note",
                id="versus-note",
            ),
            self.source_strip(image_id, run, a),
            self.source_strip(image_id, other, b),
        ]

    def compare_export(self, run: str | None, image_id: str | None) -> dict | object:
        """The compared image as one PNG (a strip per class with its Dice and the colour key), for download."""
        if not run or not image_id or image_id not in self.images:
            return NO_UPDATE
        if image_id not in set(self.rows(None, None, run)["image_id"]):
            return NO_UPDATE
        shown, dice = self.comparison(run, image_id)
        pred, truth = self._masks(run, image_id)
        image = read_image(self.images[image_id], channels=3)
        title = f"{image_id} - {run} vs ground truth" + (f" - mean Dice {dice['dice']:.3f}" if dice is not None else "")
        if dice is None:  # no truth: the predicted masks in the class colours, no TP/FP/FN key
            strips = [(caption, class_layer({c: pred[c]}, IMAGE_SHAPE)) for c, caption in shown]
            title = f"{image_id} - {run} (no ground truth: predicted masks in the class colours)"
        else:
            strips = [
                (caption, match_layer(match_regions(pred.get(c), truth.get(c), IMAGE_SHAPE))) for c, caption in shown
            ]
        return dcc.send_bytes(
            compare_png(image, title, strips, match_key=dice is not None), f"{_safe(run)}_{_safe(image_id)}.png"
        )

    def export_csv(self, start: str, end: str, source: str) -> dict:
        """The period's inspections of the selected source as a CSV download."""
        rows = self.rows(start, end, source)
        name = f"inspections_{_safe(source)}_{_day(start)}_{_day(end)}.csv"
        return dcc.send_data_frame(spreadsheet_safe(rows.drop(columns=["id"])).to_csv, name, index=False)

    # ------------------------------------------------------------------ image grid and review
    def update_grid(self, start: str, end: str, source: str) -> tuple[list[dict], str]:
        """Rows of the filterable, sortable image grid (clean images included) and a line on what it holds."""
        grid = image_grid(self.rows(start, end, source), self.store.truth(), set(self.images))
        clean = int((grid["classes"] == "none").sum())
        note = (
            f"{_n(len(grid), 'image')} of {source_label(source)} in this period, {clean:,} of them clean; "
            f"{int((grid['file'] == 'yes').sum()):,} with an image file. Filter with e.g. '> 1000' or 'yes', "
            "sort by clicking a header, click a row to see and review the image. Dice: prediction runs against "
            "the ground truth, where there is one. The store holds no detection confidence, so there is no "
            "confidence column."
        )
        return grid.to_dict("records"), note

    def pick_from_grid(self, active_cell: dict | None, rows: list[dict] | None) -> dict | object:
        """The (source, image) of the clicked grid row."""
        if not active_cell or not rows or active_cell.get("row") is None or active_cell["row"] >= len(rows):
            return NO_UPDATE
        row = rows[active_cell["row"]]
        return {"source": row["source"], "image": row["ImageId"]}

    def grid_view(self, pick: dict | None, _reviews: int | None = None) -> tuple[list, list[dict], list[int], str]:
        """The picked image's strip, its detected classes for the review, the rejected ones, and its verdicts."""
        if not pick:
            return [html.P("Click a row of the grid.", className="empty")], [], [], ""
        source, image_id = pick["source"], pick["image"]
        rows = self.rows(None, None, source)
        mine = rows[rows["image_id"] == image_id]
        classes = sorted(int(c) for c in mine["class_id"] if c > 0)
        reviewed = verdicts(self.db, source)
        reviewed = reviewed[reviewed["image_id"] == image_id]
        rejected = [int(c) for c in reviewed.loc[reviewed["verdict"] == "reject", "class_id"] if c in classes]
        state = "; ".join(
            f"class {c}: {v} ({t[:16].replace('T', ' ')})"
            for c, v, t in zip(reviewed["class_id"], reviewed["verdict"], reviewed["reviewed_at"])
        )
        status = f"Review of {image_id} in {source}: " + (state or "not reviewed yet") + "."
        view = (
            self.source_strip(image_id, source, rows)
            if image_id in self.images
            else html.P(f"{image_id}: no image file in the data root.", className="empty")
        )
        options = [{"label": f" reject class {c} (false alarm)", "value": c} for c in classes]
        return [view], options, rejected, status

    def save_review(self, pick: dict | None, rejected: list[int] | None, false_alarm: bool = False) -> tuple[str, str]:
        """Store the verdicts of the picked image (every detected class accepted unless rejected; a false alarm
        rejects them all): the message and its style."""
        if not pick:
            return "Click a row of the grid first.", "alert error"
        source, image_id = pick["source"], pick["image"]
        rows = self.rows(None, None, source)
        classes = sorted(int(c) for c in rows.loc[rows["image_id"] == image_id, "class_id"] if c > 0)
        if not classes:
            return f"{image_id} has no detection in {source}: nothing to accept or reject.", "alert note"
        rejected = set(classes) if false_alarm else {int(c) for c in rejected or []}
        try:
            save_verdicts(self.db, source, image_id, {c: "reject" if c in rejected else "accept" for c in classes})
        except SteelsegError as exc:
            return f"Review not saved: {exc}", "alert error"
        kept = [c for c in classes if c not in rejected]
        return (
            f"Saved: {image_id} in {source} — "
            + ("false alarm, no defect" if not kept else f"class {', '.join(map(str, kept))} accepted")
            + (f", class {', '.join(map(str, sorted(rejected)))} rejected" if rejected and kept else "")
            + "."
        ), "alert ok"

    def export_review(self, source: str) -> dict:
        """The source's labels with the rejected detections removed, as a Kaggle train.csv download."""
        text = train_csv(self.rows(None, None, source), verdicts(self.db))
        return dcc.send_string(text, f"train_reviewed_{_safe(source)}.csv")

    # ------------------------------------------------------------------ predictions on demand
    def run_predictions(self, n_clicks: int | None, image_ids: list[str] | None) -> tuple[list, str | None]:
        """Predict the chosen images in-process, store them as a run dated now, and show the predicted masks."""
        if not n_clicks:
            return [], None
        if not image_ids:
            return [alert("Choose one or more test images first.", "error", id="predict-error")], None
        try:
            rows, timing = self.predictor.predict([self.images[i] for i in image_ids])
            stamp = datetime.now(timezone.utc)
            run_id = "live-" + stamp.strftime("%Y%m%dT%H%M%S")
            now = stamp.isoformat(timespec="seconds")
            with closing(connect(self.db)) as conn:
                import_submission(conn, _annotations(rows), {i: now for i in image_ids}, run_id)
        except SteelsegError as exc:
            return [alert(f"Prediction failed: {exc}", "error", id="predict-error")], None
        source = f"pred:{run_id}"
        stored = self.rows(None, None, source)
        return [alert(f"Predicted {timing}; stored as {source}.", "ok", id="predict-ok")] + [
            self.source_strip(i, source, stored) for i in image_ids
        ], source

    def predict_uploaded(self, contents: list[str] | None, filenames: list[str] | None) -> tuple[list, str | None]:
        """Store uploaded steel images (beside the store, folder ``uploads``), predict them and show the masks."""
        if not contents:
            return [], None
        if not self.model_status()[1]:
            return [alert(f"Images not predicted: {self.model_status()[0]}", "error", id="predict-error")], None
        names = list(filenames or [])
        if len(names) != len(contents):  # pairing them would drop or misname uploads without a word
            message = f"Upload refused: {len(contents)} files arrived with {len(names)} names; upload them again"
            return [alert(message, "error", id="image-upload-error")], None
        saved, refused = [], []
        for data, name in zip(contents, names, strict=True):
            try:
                path = save_image_upload(data, name, self.upload_dir, self.max_upload_bytes)
            except SteelsegError as exc:
                refused.append(str(exc))
                continue
            if self.images.get(path.name, path) != path:
                refused.append(f"{path.name}: an image of the data root has that name; rename the upload")
                continue
            self.images[path.name] = path
            saved.append(path.name)
        notes = [alert(f"Upload refused: {r}", "error", id="image-upload-error") for r in refused]
        if not saved:
            return notes, None
        children, source = self.run_predictions(1, saved)
        return notes + children, source

    @property
    def upload_dir(self) -> Path:
        """Where uploaded images are kept: ``uploads/`` beside the store."""
        return self.db.parent / "uploads"

    def predict_progress(self, _n: int | None) -> html.Div | str:
        """Progress of the running prediction."""
        progress = self.predictor.progress()
        if progress.stage == "idle":
            return ""
        text = (
            "Loading the models (first prediction, or their files changed)…"
            if progress.stage == "loading models"
            else f"Predicting: {progress.done} of {progress.total} images done…"
        )
        return html.Div(
            [html.Progress(value=str(progress.done), max=str(max(progress.total, 1))), text],
            className="alert busy",
            id="predict-busy",
        )


def _annotations(rows: pd.DataFrame) -> Annotations:
    """Annotations of predicted long-form rows: the defect rows, and every image (clean ones stay clean)."""
    defects = rows[rows["EncodedPixels"] != ""].reset_index(drop=True)
    return Annotations(defects, tuple(dict.fromkeys(rows["ImageId"])), NEW_FORMAT, "<prediction on demand>")


def _source_of(rows: pd.DataFrame, image_id: str) -> str:
    """The first source holding an image (for the all-runs view)."""
    return str(rows.loc[rows["image_id"] == image_id, "source"].iloc[0])


def _n(count: int, noun: str) -> str:
    """'1 image', '2,345 images'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _day(value: str | None) -> str | None:
    """The date part of a DatePickerRange value ('2021-03-04' or '2021-03-04T00:00:00')."""
    return value[:10] if value else None


def _safe(text: str) -> str:
    """A file-name-safe version of a source or image id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "all"


def _png(data: bytes):
    from flask import Response

    return Response(data, mimetype="image/png", headers={"Cache-Control": "private, max-age=3600"})


def add_routes(app: Dash, board: Dashboard) -> None:
    """Flask routes for the image files and the layers (image ids are looked up, never used as paths)."""
    server = app.server

    @server.route("/steel/image")
    def _image():
        return send_file(board.image_file(request.args.get("image", "")), max_age=3600)

    @server.route("/steel/layer.png")
    def _layer():
        return _png(board.class_layer_png(request.args.get("image", ""), request.args.get("source", "")))

    @server.route("/steel/match.png")
    def _match():
        try:
            class_id = int(request.args.get("class", ""))
        except ValueError:
            abort(400)
        if class_id not in CLASS_IDS:
            abort(400)
        return _png(board.match_layer_png(request.args.get("image", ""), request.args.get("run", ""), class_id))


def create_app(board: Dashboard) -> Dash:
    """A Dash app wired to the dashboard's callbacks, with compressed responses."""
    app = Dash(__name__, title="Steel defect inspections", compress=True)
    board.base = app.config.requests_pathname_prefix
    # Upload bodies are base64 (4/3 of the file) inside JSON; the page refuses bigger files before sending.
    app.server.config["MAX_CONTENT_LENGTH"] = int(board.max_upload_bytes * 1.5) + 2**20
    add_routes(app, board)

    def layout():
        start, end = board.store.date_extent()
        sources, runs = board.source_options()
        models, ready = board.model_status()
        return page(
            start,
            end,
            sources,
            runs,
            board.test_images,
            models,
            ready,
            board.max_upload_bytes,
            int(board.poll_s * 1000),
            board.store.version(),
            board.store.latest(),
        )

    app.layout = layout
    period = [Input("period", "data"), Input("dataset", "value"), Input("store-version", "data")]

    def periodic(method):
        return lambda p, source, _version, *rest: method(p["start"], p["end"], source, *rest)

    # The period and the store stamp start in the layout: the first render runs each view once.
    app.callback(
        Output("period", "data"),
        Output("period-alert", "children"),
        Input("date-range", "start_date"),
        Input("date-range", "end_date"),
        prevent_initial_call=True,
    )(board.check_period)
    app.callback(
        Output("store-version", "data"),
        Output("date-range", "end_date"),
        Output("live-status", "children"),
        Output("seen-latest", "data"),
        Input("poll", "n_intervals"),
        State("store-version", "data"),
        State("follow", "value"),
        State("date-range", "end_date"),
        State("seen-latest", "data"),
    )(lambda _n, *args: board.poll(*args))
    selectors = [
        Output("dataset", "options", allow_duplicate=True),
        Output("compare-run", "options", allow_duplicate=True),
    ]
    app.callback(
        Output("dataset", "options"),
        Output("compare-run", "options"),
        Input("store-version", "data"),
        prevent_initial_call=True,
    )(lambda _v: board.source_options())
    app.callback(
        [Output(f"card-{k}", "children") for k in CARD_KEYS]
        + [Output("cards-note", "children")]
        + [Output("pie", "figure"), Output("timeline", "figure"), Output("rate", "figure")],
        *period,
    )(periodic(board.update_overview))
    app.callback(Output("samples", "children"), *period, Input("sample-class", "value"), Input("reroll", "n_clicks"))(
        periodic(board.update_samples)
    )
    app.callback(
        Output("download-csv", "data"),
        Input("export-csv", "n_clicks"),
        State("period", "data"),
        State("dataset", "value"),
        prevent_initial_call=True,
    )(lambda _n, p, source: board.export_csv(p["start"], p["end"], source))

    # The image grid: filtered and sorted in the browser; a clicked row shows the image and its review.
    app.callback(Output("grid", "data"), Output("grid-note", "children"), *period)(periodic(board.update_grid))
    app.callback(
        Output("grid-pick", "data"),
        Input("grid", "active_cell"),
        State("grid", "derived_viewport_data"),
        prevent_initial_call=True,
    )(board.pick_from_grid)
    app.callback(
        Output("grid-view", "children"),
        Output("review-reject", "options"),
        Output("review-reject", "value"),
        Output("review-state", "children"),
        Input("grid-pick", "data"),
        Input("review-saved", "data"),
    )(board.grid_view)

    @app.callback(
        Output("review-status", "children"),
        Output("review-status", "className"),
        Output("review-saved", "data"),
        Input("review-save", "n_clicks"),
        Input("review-false-alarm", "n_clicks"),
        State("grid-pick", "data"),
        State("review-reject", "value"),
        State("review-saved", "data"),
        prevent_initial_call=True,
    )
    def _review(_save, _false, pick, rejected, saved):
        text, kind = board.save_review(pick, rejected, false_alarm=dash.ctx.triggered_id == "review-false-alarm")
        return text, kind, (saved or 0) + 1

    app.callback(
        Output("download-review", "data"),
        Input("review-export", "n_clicks"),
        State("dataset", "value"),
        prevent_initial_call=True,
    )(lambda _n, source: board.export_review(source))

    # Upload: the page checks the size first (clientside), the server validates, stores and selects the run.
    app.clientside_callback(
        ClientsideFunction("steelseg", "gateUpload"),
        Output("upload-status", "children"),
        Output("upload-status", "className"),
        Output("upload-accepted", "data"),
        Input("upload", "contents"),
        State("upload", "filename"),
        State("upload-limit", "data"),
        prevent_initial_call=True,
    )

    # Upload and prediction add a run: the selectors get it in the same response as the new selection.
    @app.callback(
        Output("upload-status", "children", allow_duplicate=True),
        Output("upload-status", "className", allow_duplicate=True),
        Output("compare-run", "value", allow_duplicate=True),
        Output("store-version", "data", allow_duplicate=True),
        *selectors,
        Input("upload-accepted", "data"),
        prevent_initial_call=True,
    )
    def _upload(accepted):
        text, kind, source = board.handle_upload(accepted)
        return text, kind, source or NO_UPDATE, board.store.version(), *board.source_options()

    @app.callback(
        Output("predict-output", "children"),
        Output("compare-run", "value", allow_duplicate=True),
        Output("store-version", "data", allow_duplicate=True),
        *selectors,
        Output("predict-progress", "children", allow_duplicate=True),
        Input("predict-run", "n_clicks"),
        State("predict-images", "value"),
        prevent_initial_call=True,
        running=[(Output("predict-run", "disabled"), True, False), (Output("predict-poll", "disabled"), False, True)],
    )
    def _predict(n_clicks, image_ids):
        children, source = board.run_predictions(n_clicks, image_ids)
        return children, source or NO_UPDATE, board.store.version(), *board.source_options(), ""

    @app.callback(
        Output("predict-output", "children", allow_duplicate=True),
        Output("compare-run", "value", allow_duplicate=True),
        Output("store-version", "data", allow_duplicate=True),
        *selectors,
        Input("predict-upload", "contents"),
        State("predict-upload", "filename"),
        prevent_initial_call=True,
        running=[(Output("predict-poll", "disabled"), False, True)],
    )
    def _predict_upload(contents, filenames):
        children, source = board.predict_uploaded(contents, filenames)
        return children, source or NO_UPDATE, board.store.version(), *board.source_options()

    app.callback(
        Output("predict-progress", "children"), Input("predict-poll", "n_intervals"), prevent_initial_call=True
    )(board.predict_progress)
    app.callback(
        Output("score", "children"),
        Output("worst", "data"),
        Output("compare-image", "options"),
        Output("compare-note", "children"),
        Output("compare-image", "value", allow_duplicate=True),
        Input("period", "data"),
        Input("compare-run", "value"),
        Input("store-version", "data"),
        State("compare-image", "value"),
        prevent_initial_call="initial_duplicate",
    )(lambda p, run, _v, current: board.update_scores(p["start"], p["end"], run, current))
    app.callback(
        Output("compare-image", "value"),
        Input("worst", "active_cell"),
        State("worst", "derived_viewport_data"),
        prevent_initial_call=True,
    )(board.pick_from_table)
    app.callback(
        Output("compare-dice", "children"),
        Output("compare-view", "children"),
        Input("compare-run", "value"),
        Input("compare-image", "value"),
    )(board.compare)
    app.callback(
        Output("pr", "figure"), Input("period", "data"), Input("compare-run", "value"), Input("store-version", "data")
    )(lambda p, run, _v: board.update_pr(p["start"], p["end"], run))
    app.callback(
        Output("versus-view", "children"),
        Input("compare-run", "value"),
        Input("versus-run", "value"),
        Input("compare-image", "value"),
    )(board.versus)
    app.callback(Output("versus-run", "options"), Input("compare-run", "options"))(lambda options: options)
    app.callback(
        Output("download-png", "data"),
        Input("export-png", "n_clicks"),
        State("compare-run", "value"),
        State("compare-image", "value"),
        prevent_initial_call=True,
    )(lambda _n, run, image_id: board.compare_export(run, image_id))
    return app
