"""Pure data and figure functions behind the dashboard callbacks: counts, charts, samples, Dice tables.

An *inspection* is one image of one source (``source``, ``image_id``): the unit every count, share and
rate on the page is made of, so an image with two defect classes is still one inspected image.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from common.constants import CLASS_IDS, LONG_COLUMNS
from common.dataset import class_masks
from common.metrics import ScoreReport, score_pairs
from common.metrics import pair_dice as kaggle_pair_dice
from common.viz import CLASS_HEX
from dashboard.importer import synthetic_date

__all__ = [
    "NO_DEFECT",
    "SEVERAL",
    "LABELS",
    "COLORS",
    "GROUP_KEYS",
    "long_rows",
    "newest_run_per_image",
    "inspections",
    "period_counts",
    "data_span",
    "synthetic_share",
    "image_groups",
    "Buckets",
    "pie_figure",
    "timeline_figure",
    "rate_figure",
    "sample_ids",
    "masks_for",
    "pair_dice",
    "dice_table",
    "DICE_COLUMNS",
    "GRID_COLUMNS",
    "image_grid",
    "pr_figure",
]

NO_DEFECT, SEVERAL = 0, 5
LABELS = {
    1: "Defect 1",
    2: "Defect 2",
    3: "Defect 3",
    4: "Defect 4",
    NO_DEFECT: "No defect",
    SEVERAL: "Several classes",
}
COLORS = {**CLASS_HEX, NO_DEFECT: "#9e9e9e", SEVERAL: "#7a4a1e"}
GROUP_KEYS = [*CLASS_IDS, SEVERAL, NO_DEFECT]  # the pie's and the bars' partition of images
DICE_COLUMNS = ["ImageId", "dice", *[f"dice_{c}" for c in CLASS_IDS]]
CLASS_COLUMNS = [f"c{c}" for c in CLASS_IDS]
TOP_MARGIN = 64  # px above the plot: Plotly's toolbar in the top ~30 px, the title below it


def long_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Store rows (class 0 = clean) -> long-form defect rows ImageId, ClassId, EncodedPixels."""
    defects = rows[rows["class_id"] > 0]
    return pd.DataFrame(
        dict(
            zip(
                LONG_COLUMNS,
                (
                    defects["image_id"].to_numpy(),
                    defects["class_id"].astype(np.int64).to_numpy(),
                    defects["rle"].to_numpy(),
                ),
            )
        )
    )


def newest_run_per_image(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of each image's newest run (ties: the later run name), so a view over several runs counts an image once."""
    if not len(rows):
        return rows
    times = pd.to_datetime(rows["inspected_at"], format="ISO8601", utc=True)
    runs = rows[["image_id", "source"]].assign(time=times).groupby(["image_id", "source"], sort=False).max()
    newest = runs.reset_index().sort_values(["image_id", "time", "source"]).drop_duplicates("image_id", keep="last")
    keep = pd.MultiIndex.from_frame(rows[["image_id", "source"]]).isin(
        pd.MultiIndex.from_frame(newest[["image_id", "source"]])
    )
    return rows[keep].reset_index(drop=True)


def inspections(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, image): its time (naive UTC) and a boolean column ``c<k>`` per defect class."""
    if not len(rows):
        return pd.DataFrame(
            {"source": [], "image_id": [], "time": pd.to_datetime([]), **{c: np.zeros(0, bool) for c in CLASS_COLUMNS}}
        )
    codes = rows.groupby(["source", "image_id"], sort=False).ngroup().to_numpy()
    _, first = np.unique(codes, return_index=True)
    out = rows.iloc[first][["source", "image_id", "inspected_at"]].reset_index(drop=True)
    flags = np.zeros((len(out), len(CLASS_IDS)), bool)
    classes = rows["class_id"].to_numpy()
    defect = classes > 0
    flags[codes[defect], classes[defect] - 1] = True
    for i, column in enumerate(CLASS_COLUMNS):
        out[column] = flags[:, i]
    # Stores hold naive times (imports) and UTC-aware ones (infer.py): compare them all as UTC.
    out["time"] = pd.to_datetime(out.pop("inspected_at"), format="ISO8601", utc=True).dt.tz_convert(None)
    return out


def period_counts(table: pd.DataFrame) -> dict[int, int]:
    """Inspected images per defect class and with no defect (an image with two classes counts for both)."""
    flags = table[CLASS_COLUMNS].to_numpy()
    return {**{c: int(flags[:, i].sum()) for i, c in enumerate(CLASS_IDS)}, NO_DEFECT: int((~flags.any(axis=1)).sum())}


def data_span(table: pd.DataFrame, start: str, end: str) -> tuple[str, str]:
    """The period narrowed to the days holding inspections, so the time axes span the data, not empty years."""
    if not len(table):
        return start[:10], end[:10]
    first, last = table["time"].min().strftime("%Y-%m-%d"), table["time"].max().strftime("%Y-%m-%d")
    return max(start[:10], first), min(end[:10], last)


def synthetic_share(table: pd.DataFrame) -> float:
    """Share of the inspections whose time is the importer's synthetic date of their ImageId (no date column)."""
    if not len(table):
        return 0.0
    stamps = table["time"].dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()
    return float(np.mean([s == synthetic_date(i) for s, i in zip(stamps, table["image_id"])]))


def image_groups(table: pd.DataFrame) -> pd.Series:
    """Each inspection's group: its single defect class, SEVERAL, or NO_DEFECT (a partition of the images)."""
    flags = table[CLASS_COLUMNS].to_numpy()
    n = flags.sum(axis=1)
    single = np.asarray(CLASS_IDS)[flags.argmax(axis=1)] if len(flags) else np.zeros(0, int)
    return pd.Series(np.where(n == 0, NO_DEFECT, np.where(n == 1, single, SEVERAL)), index=table.index)


class Buckets:
    """Time buckets of a period: hours up to 2 days, days up to 62 days, weeks (Monday to Sunday) beyond."""

    def __init__(self, start: str, end: str) -> None:
        self.start = pd.Timestamp(start)
        self.end = pd.Timestamp(date.fromisoformat(end[:10]) + timedelta(days=1))  # exclusive
        days = (self.end - self.start).days
        self.freq, self.name = ("h", "hour") if days <= 2 else ("D", "day") if days <= 62 else ("W-SUN", "week")
        self.half = {"h": pd.Timedelta(minutes=30), "D": pd.Timedelta(hours=12), "W-SUN": pd.Timedelta(days=3.5)}[
            self.freq
        ]
        self.first = self.of(pd.Series([self.start])).iloc[0]  # the first bucket may start before the period

    def of(self, times: pd.Series) -> pd.Series:
        """Start of each time's bucket (weeks start on Monday)."""
        return times.dt.to_period(self.freq).dt.start_time

    def starts(self) -> pd.DatetimeIndex:
        """Every bucket start of the period (so a bucket without inspections shows as a gap)."""
        return pd.date_range(self.first, self.end, freq=self.half * 2, inclusive="left")


def pie_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Images of the period by defect group: every image in exactly one slice."""
    groups = image_groups(table).value_counts()
    keys = [k for k in GROUP_KEYS if groups.get(k, 0)] or GROUP_KEYS
    fig = go.Figure(
        go.Pie(
            labels=[LABELS[k] for k in keys],
            values=[int(groups.get(k, 0)) for k in keys],
            sort=False,
            marker={"colors": [COLORS[k] for k in keys]},
            textinfo="percent",
            textposition="inside",
            hovertemplate="%{label}: %{value:,} images (%{percent})<extra></extra>",
            hole=0.3,
        )
    )
    fig.update_layout(
        title=chart_title(title), margin={"l": 10, "r": 10, "t": TOP_MARGIN, "b": 10}, height=320, showlegend=True
    )
    return fig


def chart_title(text: str) -> dict:
    """A title left-aligned just above the plot, below the band where Plotly's toolbar appears (top right)."""
    return {
        "text": text,
        "x": 0.0,
        "xref": "paper",
        "xanchor": "left",
        "y": 1.0,
        "yref": "paper",
        "yanchor": "bottom",
        "pad": {"b": 8},
        "font": {"size": 15},
    }


def _time_axis(fig: go.Figure, spans: Buckets, title: str, ytitle: str) -> None:
    fig.update_layout(
        title=chart_title(title),
        height=320,
        margin={"l": 10, "r": 10, "t": TOP_MARGIN, "b": 10},
        legend={"orientation": "h", "y": -0.2},
        yaxis_title=ytitle,
        xaxis={"range": [spans.first, spans.end], "title": None},
    )


def timeline_figure(table: pd.DataFrame, spans: Buckets, title: str) -> go.Figure:
    """Images per defect group per bucket, stacked (a bar's height = images inspected in it)."""
    fig = go.Figure()
    top = 0
    if len(table):
        frame = table.assign(bucket=spans.of(table["time"]), group=image_groups(table))
        counts = frame.groupby(["bucket", "group"]).size().unstack(fill_value=0)
        top = int(counts.sum(axis=1).max())
        for k in GROUP_KEYS:
            if k in counts.columns:  # bars centred on their bucket, hover names its start
                fig.add_bar(
                    x=counts.index + spans.half,
                    y=counts[k],
                    name=LABELS[k],
                    marker_color=COLORS[k],
                    customdata=counts.index,
                    width=spans.half.total_seconds() * 2000 * 0.9,
                    hovertemplate=f"{spans.name} of %{{customdata|%Y-%m-%d %H:%M}}: %{{y}} {LABELS[k]}<extra></extra>",
                )
    _time_axis(fig, spans, title, "images")
    fig.update_layout(barmode="stack")
    if top <= 10:  # small counts: one tick per image, never 0.5 images
        fig.update_yaxes(dtick=1, range=[0, max(top, 1) + 0.2])
    fig.update_yaxes(tickformat=",d", rangemode="tozero")
    return fig


def rate_figure(table: pd.DataFrame, spans: Buckets, title: str) -> go.Figure:
    """Share of inspected images with each defect class (and with any) per bucket; no inspections = a gap."""
    fig = go.Figure()
    if len(table):
        frame = table.assign(bucket=spans.of(table["time"]), any=table[CLASS_COLUMNS].any(axis=1))
        grouped = frame.groupby("bucket")
        n = grouped.size().reindex(spans.starts(), fill_value=0)
        for key, column in [*zip(CLASS_IDS, CLASS_COLUMNS), (None, "any")]:
            hits = grouped[column].sum().reindex(n.index, fill_value=0)
            name = LABELS[key] if key else "Any defect"
            starts = n.index.strftime("%Y-%m-%d %H:%M")
            rate = (hits / n.where(n > 0)).to_numpy()
            fig.add_scatter(
                x=n.index + spans.half,
                y=rate,
                name=name,
                mode="lines+markers",
                line={"color": COLORS[key] if key else "#222", "dash": "solid" if key else "dot"},
                customdata=np.stack([hits.to_numpy(), n.to_numpy(), starts], axis=1).tolist(),
                hovertemplate=(
                    f"{name}: %{{y:.1%}} (%{{customdata[0]}} of %{{customdata[1]}} images)"
                    f" — {spans.name} of %{{customdata[2]}}<extra></extra>"
                ),
            )
    _time_axis(fig, spans, title, "share of images")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return fig


def sample_ids(rows: pd.DataFrame, class_id: int, available: set[str], roll: int, n: int = 3) -> list[str]:
    """The ``roll``-th window of n images of the class (that have a file) in a fixed shuffled order.

    Consecutive rolls show different images whenever the class has more than n of them (then wrap around).
    """
    ids = sorted(set(rows.loc[rows["class_id"] == class_id, "image_id"]) & available)
    if not ids:
        return []
    order = np.random.default_rng(class_id).permutation(len(ids))
    take = min(n, len(ids))
    return sorted(ids[order[(roll * take + k) % len(ids)]] for k in range(take))


def masks_for(rows: pd.DataFrame, image_id: str) -> dict[int, np.ndarray]:
    """Decoded masks of one image's defect rows."""
    sel = rows[(rows["image_id"] == image_id) & (rows["class_id"] > 0)]
    return class_masks({int(c): r for c, r in zip(sel["class_id"], sel["rle"])})


def pair_dice(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Images that have both a prediction and a truth, their (n, 4) Dice and (n, 4) truth-empty flags."""
    ids = sorted(set(pred["image_id"]) & set(truth["image_id"]))
    values, empty = kaggle_pair_dice(
        long_rows(pred[pred["image_id"].isin(ids)]), long_rows(truth[truth["image_id"].isin(ids)]), ids
    )
    return ids, values, empty


def dice_table(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, ScoreReport | None]:
    """Per-image Dice (worst first) and the Kaggle score over the images that have truth (None if none)."""
    ids, values, empty = pair_dice(pred, truth)
    if not ids:
        return pd.DataFrame(columns=DICE_COLUMNS), None
    table = pd.DataFrame(values, columns=DICE_COLUMNS[2:])
    table.insert(0, "dice", values.mean(axis=1))
    table.insert(0, "ImageId", ids)
    table = table.sort_values(["dice", "ImageId"], kind="stable").reset_index(drop=True)
    return table.round(4), score_pairs(values, empty, len(ids))


GRID_COLUMNS = [
    "ImageId",
    "source",
    "inspected",
    "classes",
    "defect_px",
    *[f"px_{c}" for c in CLASS_IDS],
    "dice",
    "file",
]


def image_grid(rows: pd.DataFrame, truth: pd.DataFrame, with_file: set[str]) -> pd.DataFrame:
    """One row per inspected image (clean ones included): classes, pixel areas, Dice against the truth (prediction
    runs with truth only), and whether the image file is there; the page filters and sorts it."""
    if not len(rows):
        return pd.DataFrame(columns=GRID_COLUMNS)
    area = rows.pivot_table(
        index=["source", "image_id"], columns="class_id", values="area", aggfunc="sum", fill_value=0
    )
    area = area.reindex(columns=[0, *CLASS_IDS], fill_value=0)[list(CLASS_IDS)]
    first = rows.groupby(["source", "image_id"])["inspected_at"].first()
    out = pd.DataFrame(
        {
            "ImageId": area.index.get_level_values("image_id"),
            "source": area.index.get_level_values("source"),
            "inspected": first.reindex(area.index).str.slice(0, 16).str.replace("T", " ").to_numpy(),
        }
    )
    values = area.to_numpy()
    out["classes"] = [" ".join(str(c) for c, a in zip(CLASS_IDS, row) if a) or "none" for row in values]
    out["defect_px"] = values.sum(axis=1)
    for i, c in enumerate(CLASS_IDS):
        out[f"px_{c}"] = values[:, i]
    out["dice"] = np.nan
    preds = rows[rows["source"].str.startswith("pred:")]
    if len(preds) and len(truth):
        for source, part in preds.groupby("source"):
            table, _ = dice_table(part, truth)
            if len(table):
                hit = out["source"] == source
                out.loc[hit, "dice"] = out.loc[hit, "ImageId"].map(table.set_index("ImageId")["dice"]).to_numpy()
    out["file"] = np.where(out["ImageId"].isin(with_file), "yes", "no")
    return out.sort_values(["source", "ImageId"], kind="stable").reset_index(drop=True)


def pr_figure(pred: pd.DataFrame, truth: pd.DataFrame, title: str) -> go.Figure:
    """Per class, image-level precision/recall of a run as the minimum predicted area varies (the store holds
    no confidence, so the predicted area is the score), over the run's images that have ground truth."""
    from sklearn.metrics import precision_recall_curve

    fig = go.Figure()
    ids = sorted(set(pred["image_id"]) & set(truth["image_id"]))
    for c in CLASS_IDS:
        score = pred[pred["class_id"] == c].groupby("image_id")["area"].sum().reindex(ids, fill_value=0)
        present = truth[truth["class_id"] == c].groupby("image_id")["area"].sum().reindex(ids, fill_value=0) > 0
        if not len(ids) or not present.any():
            continue
        precision, recall, cuts = precision_recall_curve(present.to_numpy(), score.to_numpy())
        areas = [*cuts.astype(int).tolist(), None]
        fig.add_scatter(
            x=recall,
            y=precision,
            name=f"{LABELS[c]} ({int(present.sum())} with truth)",
            mode="lines+markers",
            line={"color": COLORS[c], "shape": "hv"},
            customdata=areas,
            hovertemplate=f"{LABELS[c]}: recall %{{x:.2f}}, precision %{{y:.2f}} "
            "(images with at least %{customdata} px predicted)<extra></extra>",
        )
    fig.update_layout(
        title=chart_title(title),
        height=340,
        margin={"l": 10, "r": 10, "t": TOP_MARGIN, "b": 10},
        xaxis={"title": "recall (images with the class found)", "range": [0, 1.02]},
        yaxis={"title": "precision", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
