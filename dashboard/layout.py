"""The page's components: controls, cards, charts, image strips with their legends, scoring and predictions.

Styles and the two pieces of browser code (the upload gate and the enlarge viewer) are in ``assets/``,
which Dash serves (compressed) with the page.
"""

from __future__ import annotations

from typing import Any

from dash import dash_table, dcc, html

from common.constants import CLASS_IDS
from common.viz import CLASS_HEX, hex_colour
from dashboard.images import MATCH_COLORS, MATCH_LABELS
from dashboard.views import DICE_COLUMNS, GRID_COLUMNS, LABELS

__all__ = ["CARD_KEYS", "strip", "class_legend", "match_legend", "alert", "page"]

CARD_KEYS = [*CLASS_IDS, 0]
STRIP_HINT = "Click to open the zoomable viewer (fit to width; drag or wheel to zoom, double-click to fit again)"
NUMERIC = {"defect_px", "px_1", "px_2", "px_3", "px_4", "dice"}


def _swatch(colour: str, label: str) -> html.Span:
    return html.Span([html.Span(className="swatch", style={"background": colour}), label], className="key")


def class_legend() -> html.Div:
    """Colour key of the defect classes."""
    return html.Div(
        [html.Span("Colours:", className="key-title")] + [_swatch(CLASS_HEX[c], LABELS[c]) for c in CLASS_IDS],
        className="legend classes",
    )


def match_legend() -> html.Div:
    """Colour key of the truth-vs-prediction overlay."""
    return html.Div(
        [html.Span("Overlay:", className="key-title")]
        + [_swatch(hex_colour(MATCH_COLORS[k]), MATCH_LABELS[k]) for k in MATCH_COLORS],
        className="legend match",
    )


def strip(image_url: str, layer_url: str | None, caption: str, image_id: str, legend: str = "classes") -> html.Div:
    """A full-width 1600x256 strip: the image, a transparent layer on top, a caption; click opens the viewer."""
    layers = [html.Img(src=image_url, className="base", alt=image_id)]
    if layer_url:
        layers.append(html.Img(src=layer_url, className="layer", alt=f"{image_id} overlay"))
    return html.Div(
        [
            html.Div(caption, className="caption"),
            html.Div(
                layers,
                className="strip",
                title=STRIP_HINT,
                **{"data-image": image_id, "data-caption": caption, "data-legend": legend},
            ),
        ],
        className="strip-box",
        **{"data-image": image_id},
    )


def alert(text: str, kind: str, id: str | None = None) -> html.Div:
    """A one-line message box (kind: ok, error, note, busy)."""
    return html.Div(text, className=f"alert {kind}", **({"id": id} if id else {}))


def _card(key: int) -> html.Div:
    return html.Div(
        [html.Div(LABELS[key], className="card-title"), html.Div("–", id=f"card-{key}", className="card-value")],
        className=f"card c{key}",
    )


def _dd(component: Any, width: str = "300px") -> html.Div:
    return html.Div(component, className="dd", style={"width": width})


def page(
    start: str,
    end: str,
    sources: list[dict],
    runs: list[dict],
    test_images: list[str],
    models: str,
    models_ready: bool,
    max_upload_bytes: int,
    poll_ms: int,
    version: str,
    latest: str | None = None,
) -> html.Div:
    """The single page."""
    first = sources[0]["value"] if sources else None
    return html.Div(
        [
            html.Div(
                [html.H1("Steel defect inspections"), html.Div(id="live-status", className="live")], className="head"
            ),
            html.Div(
                [
                    dcc.DatePickerRange(
                        id="date-range",
                        min_date_allowed="1995-08-05",
                        max_date_allowed="2090-12-31",
                        start_date=start,
                        end_date=end,
                        display_format="YYYY-MM-DD",
                    ),
                    dcc.Checklist(
                        id="follow",
                        options=[{"label": " follow new inspections", "value": "follow"}],
                        value=["follow"],
                        className="follow",
                    ),
                    _dd(dcc.Dropdown(id="dataset", options=sources, value=first, clearable=False), "330px"),
                    dcc.Upload(
                        id="upload",
                        children=html.Div(["Upload a submission CSV (drop or ", html.A("choose"), ")"]),
                        multiple=False,
                        className="upload",
                    ),
                    html.Button("Export inspections (CSV)", id="export-csv", n_clicks=0),
                ],
                className="controls",
            ),
            html.Div(id="period-alert"),
            html.Div(id="upload-status"),
            html.Div([_card(k) for k in CARD_KEYS], className="cards"),
            html.Div(id="cards-note", className="note"),
            html.Div(
                [
                    html.Div(dcc.Graph(id="pie", config={"displaylogo": False})),
                    html.Div(dcc.Graph(id="timeline", config={"displaylogo": False})),
                ],
                className="row",
            ),
            html.Div(dcc.Graph(id="rate", config={"displaylogo": False}), className="panel"),
            html.H2("Random images of a class"),
            html.Div(
                [
                    _dd(
                        dcc.Dropdown(
                            id="sample-class",
                            options=[{"label": LABELS[c], "value": c} for c in CARD_KEYS],
                            value=CLASS_IDS[0],
                            clearable=False,
                        ),
                        "200px",
                    ),
                    html.Button("Re-roll", id="reroll", n_clicks=0),
                    class_legend(),
                ],
                className="controls",
            ),
            dcc.Loading(html.Div(id="samples"), delay_show=300),
            html.H2("Image grid (every inspected image of the dataset and period, clean ones included)"),
            html.Div(id="grid-note", className="note"),
            dash_table.DataTable(
                id="grid",
                columns=[{"name": c, "id": c, "type": "numeric" if c in NUMERIC else "text"} for c in GRID_COLUMNS],
                data=[],
                filter_action="native",
                sort_action="native",
                sort_mode="multi",
                page_size=10,
                style_cell={"fontSize": 12, "padding": "2px 6px"},
                style_filter={"backgroundColor": "#fffbe6"},
            ),
            dcc.Loading(html.Div(id="grid-view"), delay_show=300),
            html.Div(
                [
                    dcc.Checklist(id="review-reject", options=[], value=[], inline=True),
                    html.Button("Save review", id="review-save", n_clicks=0),
                    html.Button("False alarm (no defect)", id="review-false-alarm", n_clicks=0),
                    html.Button("Export reviewed labels (train.csv)", id="review-export", n_clicks=0),
                ],
                className="controls review",
            ),
            html.Div(id="review-state", className="note"),
            html.Div(id="review-status"),
            html.H2("Prediction vs ground truth"),
            html.Div(
                [
                    _dd(
                        dcc.Dropdown(
                            id="compare-run",
                            options=runs,
                            value=runs[0]["value"] if runs else None,
                            placeholder="prediction run",
                        ),
                        "420px",
                    ),
                    html.Div(id="score"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Div("Worst images by mean Dice (click a row)", className="caption"),
                            dash_table.DataTable(
                                id="worst",
                                columns=[{"name": c, "id": c} for c in DICE_COLUMNS],
                                data=[],
                                page_size=8,
                                style_cell={"fontSize": 12, "padding": "2px 6px"},
                            ),
                        ],
                        className="worst",
                    ),
                    html.Div(
                        [
                            html.Div(
                                [
                                    _dd(dcc.Dropdown(id="compare-image", placeholder="image"), "320px"),
                                    html.Button("Export image (PNG)", id="export-png", n_clicks=0),
                                ],
                                className="controls",
                            ),
                            html.Div(id="compare-note", className="note"),
                            match_legend(),
                            html.Div(id="compare-dice"),
                        ],
                        className="compare-side",
                    ),
                ],
                className="row plain",
            ),
            dcc.Loading(html.Div(id="compare-view"), delay_show=300),
            html.Div(dcc.Graph(id="pr", config={"displaylogo": False}), className="panel"),
            html.H3("Model vs model on the selected image"),
            html.Div(
                [_dd(dcc.Dropdown(id="versus-run", options=runs, placeholder="second prediction run"), "420px")],
                className="controls",
            ),
            dcc.Loading(html.Div(id="versus-view"), delay_show=300),
            html.H2("Predict on demand"),
            alert(models, "note" if models_ready else "error", id="predict-models"),
            html.Div(
                [
                    _dd(
                        dcc.Dropdown(
                            id="predict-images",
                            multi=True,
                            placeholder="test images",
                            options=[{"label": i, "value": i} for i in test_images],
                        ),
                        "600px",
                    ),
                    html.Button("Run prediction", id="predict-run", n_clicks=0, disabled=not models_ready),
                    dcc.Upload(
                        id="predict-upload",
                        multiple=True,
                        accept=".jpg,.jpeg,.png",
                        className="upload",
                        disabled=not models_ready,
                        children=html.Div(
                            ["Or upload steel images to predict (1600x256 JPEG/PNG; drop or ", html.A("choose"), ")"]
                        ),
                    ),
                ],
                className="controls",
            ),
            html.Div(id="predict-progress"),
            html.Div(id="predict-output"),
            dcc.Store(id="period", data={"start": start, "end": end}),
            dcc.Store(id="store-version", data=version),
            dcc.Store(id="seen-latest", data=latest),  # the newest inspection the page has followed
            dcc.Store(id="upload-accepted"),
            dcc.Store(id="upload-limit", data=max_upload_bytes),
            dcc.Interval(id="poll", interval=poll_ms),
            dcc.Interval(id="predict-poll", interval=300, disabled=True),
            dcc.Download(id="download-csv"),
            dcc.Download(id="download-png"),
            dcc.Download(id="download-review"),
            dcc.Store(id="grid-pick"),
            dcc.Store(id="review-saved", data=0),
        ],
        className="wrap",
    )
