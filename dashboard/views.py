"""Pure data and figure functions behind the dashboard callbacks: counts, charts, samples, Dice tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from common.viz import CLASS_HEX
from common.constants import CLASS_IDS, LONG_COLUMNS
from common.dataset import class_masks
from common.metrics import ScoreReport, pair_dice as kaggle_pair_dice, score_pairs

NO_DEFECT = 0
LABELS = {1: "Defect 1", 2: "Defect 2", 3: "Defect 3", 4: "Defect 4", NO_DEFECT: "No defect"}
COLORS = {**CLASS_HEX, NO_DEFECT: "#9e9e9e"}


def long_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Store rows (class 0 = clean) -> long-form defect rows ImageId, ClassId, EncodedPixels."""
    defects = rows[rows["class_id"] > 0]
    return pd.DataFrame(dict(zip(LONG_COLUMNS, (defects["image_id"].to_numpy(),
                                                 defects["class_id"].astype(np.int64).to_numpy(),
                                                 defects["rle"].to_numpy()))))


def period_counts(rows: pd.DataFrame) -> dict[int, int]:
    """Images per defect class and images with no defect among the rows (one image counts once per class)."""
    per_class = rows.drop_duplicates(["image_id", "class_id"]).groupby("class_id")["image_id"].nunique()
    has_defect = set(rows.loc[rows["class_id"] > 0, "image_id"])
    clean = set(rows["image_id"]) - has_defect
    return {**{c: int(per_class.get(c, 0)) for c in CLASS_IDS}, NO_DEFECT: len(clean)}


def pie_figure(counts: dict[int, int], title: str) -> go.Figure:
    """Distribution of the period's images over the classes and 'no defect'."""
    keys = [*CLASS_IDS, NO_DEFECT]
    fig = go.Figure(go.Pie(labels=[LABELS[k] for k in keys], values=[counts[k] for k in keys], sort=False,
                           marker={"colors": [COLORS[k] for k in keys]}, textinfo="percent", textposition="inside",
                           hole=0.3))
    fig.update_layout(title=title, margin={"l": 10, "r": 10, "t": 50, "b": 10}, height=320, showlegend=True)
    return fig


def timeline_figure(rows: pd.DataFrame, title: str) -> go.Figure:
    """Images per class per week (per day for periods under five weeks), stacked bars."""
    fig = go.Figure()
    if len(rows):
        stamps = pd.to_datetime(rows["inspected_at"], format="ISO8601")
        span_days = (stamps.max() - stamps.min()).days
        freq = "D" if span_days < 35 else "W-MON"
        frame = rows.assign(period=stamps.dt.to_period(freq).dt.start_time)
        frame = frame.drop_duplicates(["image_id", "class_id", "period"])
        table = frame.groupby(["period", "class_id"])["image_id"].nunique().unstack(fill_value=0)
        for k in [*CLASS_IDS, NO_DEFECT]:
            if k in table.columns:
                fig.add_bar(x=table.index, y=table[k], name=LABELS[k], marker_color=COLORS[k])
    fig.update_layout(title=title, barmode="stack", height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.2}, yaxis_title="images")
    return fig


def sample_ids(rows: pd.DataFrame, class_id: int, available: set[str], seed: int, n: int = 3) -> list[str]:
    """Up to n images of the class (that have a file) chosen with ``seed``; a new seed re-rolls."""
    ids = sorted(set(rows.loc[rows["class_id"] == class_id, "image_id"]) & available)
    if not ids:
        return []
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def masks_for(rows: pd.DataFrame, image_id: str) -> dict[int, np.ndarray]:
    """Decoded masks of one image's defect rows."""
    sel = rows[(rows["image_id"] == image_id) & (rows["class_id"] > 0)]
    return class_masks({int(c): r for c, r in zip(sel["class_id"], sel["rle"])})


def pair_dice(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Images that have both a prediction and a truth, their (n, 4) Dice and (n, 4) truth-empty flags."""
    ids = sorted(set(pred["image_id"]) & set(truth["image_id"]))
    values, empty = kaggle_pair_dice(long_rows(pred[pred["image_id"].isin(ids)]),
                                     long_rows(truth[truth["image_id"].isin(ids)]), ids)
    return ids, values, empty


def dice_table(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, ScoreReport | None]:
    """Per-image Dice (worst first) and the Kaggle score over the images that have truth (None if none)."""
    ids, values, empty = pair_dice(pred, truth)
    if not ids:
        return pd.DataFrame(columns=["ImageId", "dice", *[f"dice_{c}" for c in CLASS_IDS]]), None
    table = pd.DataFrame(values, columns=[f"dice_{c}" for c in CLASS_IDS])
    table.insert(0, "dice", values.mean(axis=1))
    table.insert(0, "ImageId", ids)
    table = table.sort_values(["dice", "ImageId"], kind="stable").reset_index(drop=True)
    return table.round(4), score_pairs(values, empty, len(ids))
