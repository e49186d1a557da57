"""EDA report of a data root: HTML page with PNG plots and the numbers as tables (plus CSV and JSON).

``python -m analysis.eda DATA_ROOT --out DIR [--annotations CSV] [--image-ids CSV] [--labels CSV] [--images DIR]``
Sections per label source (train annotations, test truth, a per-image labels table): images per class,
labels per image, class combinations, mask area per class, the largest masks; then sample images per
class with mask contours and the largest masks drawn, from the images on disk; and, when both an RLE file
and a labels table are present, a cross-check of classes and areas on the images they share.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.annotations import read_annotations  # noqa: E402
from common.constants import CLASS_IDS  # noqa: E402
from common.dataset import class_masks, list_images, rles_by_image  # noqa: E402
from common.errors import DatasetError, command  # noqa: E402
from common.images import read_image  # noqa: E402
from common.io import CsvError, atomic_write_text, check_writable, read_csv, spreadsheet_safe  # noqa: E402
from common.layout import DataRoot, find_root, read_id_list, with_overrides  # noqa: E402
from common.rle import area  # noqa: E402
from common.viz import CLASS_HEX, as_rgb, contour_overlay, mask_image  # noqa: E402

__all__ = [
    "LabelSource",
    "image_table",
    "read_labels_table",
    "class_counts",
    "labels_per_image",
    "class_combinations",
    "area_stats",
    "largest_masks",
    "cross_check",
    "load_sources",
    "build_report",
    "main",
]

HAS = [f"has_{c}" for c in CLASS_IDS]
AREA = [f"area_{c}" for c in CLASS_IDS]


@dataclass(frozen=True)
class LabelSource:
    """Per-image labels of one source: index ImageId, columns has_1..4 (0/1) and area_1..4 (pixels)."""

    name: str
    path: str
    table: pd.DataFrame
    rles: pd.DataFrame | None = None  # long-form rows when the masks are known


def image_table(rows: pd.DataFrame, image_ids: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """has/area per image and class from long-form RLE rows; images without rows are clean."""
    table = pd.DataFrame(
        0, index=pd.Index(list(dict.fromkeys(image_ids)), name="ImageId"), columns=HAS + AREA, dtype=np.int64
    )
    unknown = set(rows["ImageId"]) - set(table.index)
    if unknown:
        raise DatasetError(f"annotation rows name images outside the image list, e.g. {sorted(unknown)[:3]}")
    for image_id, class_id, rle in rows[["ImageId", "ClassId", "EncodedPixels"]].itertuples(index=False):
        table.loc[image_id, f"has_{class_id}"] = 1
        table.loc[image_id, f"area_{class_id}"] = area(rle)
    return table


def read_labels_table(path: Path | str) -> pd.DataFrame:
    """A per-image labels CSV (``image_id``, ``has_class_1..4``, ``area_class_1..4``) as has/area columns."""
    path = Path(path)
    try:
        frame = read_csv(path).frame()
    except CsvError as exc:
        raise DatasetError(str(exc)) from exc
    id_col = "image_id" if "image_id" in frame.columns else "ImageId"
    need = [id_col] + [f"has_class_{c}" for c in CLASS_IDS] + [f"area_class_{c}" for c in CLASS_IDS]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: labels table lacks columns {missing}")
    out = pd.DataFrame(index=pd.Index(frame[id_col].str.strip(), name="ImageId"))
    for c in CLASS_IDS:
        for src, dst in ((f"has_class_{c}", f"has_{c}"), (f"area_class_{c}", f"area_{c}")):
            values = pd.to_numeric(frame[src], errors="coerce")
            bad = values.isna() | (values < 0) | (values != values.round())
            if dst.startswith("has"):
                bad |= ~values.isin([0, 1])
            if bad.any():
                line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
                raise DatasetError(f"{path}, line {line}: bad {src} value {frame[src].iloc[line - 2]!r}")
            out[dst] = values.to_numpy(np.int64)
    if out.index.duplicated().any():
        dup = out.index[out.index.duplicated()][0]
        raise DatasetError(f"{path}: duplicate image id {dup!r}")
    clash = ((out[HAS].to_numpy() == 1) != (out[AREA].to_numpy() > 0)).any(axis=1)
    if clash.any():
        raise DatasetError(f"{path}, line {int(np.flatnonzero(clash)[0]) + 2}: has_class and area_class disagree")
    return out


# ----------------------------------------------------------------------------- tables (pure)


def class_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Images per class (and with no defect), with the share of all images."""
    n = len(table)
    counts = [int(table[f"has_{c}"].sum()) for c in CLASS_IDS] + [int((table[HAS].sum(axis=1) == 0).sum())]
    out = pd.DataFrame({"class": [str(c) for c in CLASS_IDS] + ["no defect"], "images": counts})
    out["percent"] = (100.0 * out["images"] / n).round(2) if n else 0.0
    return out


def labels_per_image(table: pd.DataFrame) -> pd.DataFrame:
    """Number of images with 0, 1, 2, 3 and 4 defect classes."""
    n_labels = table[HAS].sum(axis=1)
    return pd.DataFrame(
        {
            "labels": list(range(len(CLASS_IDS) + 1)),
            "images": [int((n_labels == k).sum()) for k in range(len(CLASS_IDS) + 1)],
        }
    )


def class_combinations(table: pd.DataFrame) -> pd.DataFrame:
    """Images per set of classes present (e.g. '3', '1+3', 'none'), most frequent first."""
    keys = ["+".join(str(c) for c, h in zip(CLASS_IDS, row) if h) or "none" for row in table[HAS].to_numpy()]
    counts = pd.Series(keys, dtype=object).value_counts()
    return pd.DataFrame({"classes": counts.index.astype(str), "images": counts.to_numpy(np.int64)})


def area_stats(table: pd.DataFrame) -> pd.DataFrame:
    """Mask area (pixels of 256x1600) per class over the images that have the class."""
    rows = []
    for c in CLASS_IDS:
        a = table.loc[table[f"has_{c}"] == 1, f"area_{c}"].to_numpy(np.float64)
        q = np.percentile(a, [5, 25, 50, 75, 95]) if a.size else [np.nan] * 5
        rows.append(
            {
                "class": c,
                "masks": int(a.size),
                "mean": a.mean() if a.size else np.nan,
                "p5": q[0],
                "p25": q[1],
                "median": q[2],
                "p75": q[3],
                "p95": q[4],
                "min": a.min() if a.size else np.nan,
                "max": a.max() if a.size else np.nan,
            }
        )
    return pd.DataFrame(rows).round(1)


def largest_masks(table: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n largest single-class masks: ImageId, class, area, share of the image."""
    long = table[AREA].rename(columns=dict(zip(AREA, CLASS_IDS))).stack()
    long = long[long > 0].sort_values(ascending=False, kind="stable").head(n)
    out = long.rename("area").reset_index()
    out.columns = ["ImageId", "class", "area"]
    out["percent_of_image"] = (100.0 * out["area"] / (256 * 1600)).round(2)
    return out


def cross_check(rle: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """On the images both tables list: how many disagree on presence or on area, per class."""
    shared = rle.index.intersection(labels.index)
    a, b = rle.loc[shared], labels.loc[shared]
    return pd.DataFrame(
        {
            "class": list(CLASS_IDS),
            "shared_images": len(shared),
            "presence_disagree": [int((a[f"has_{c}"] != b[f"has_{c}"]).sum()) for c in CLASS_IDS],
            "area_disagree": [int((a[f"area_{c}"] != b[f"area_{c}"]).sum()) for c in CLASS_IDS],
        }
    )


# ----------------------------------------------------------------------------- loading


def load_sources(data: DataRoot) -> list[LabelSource]:
    """Every label source the root offers; an error when it has none."""
    sources = []
    if data.train_csv is not None:
        ann = read_annotations(data.train_csv)
        ids = list(ann.image_ids)
        if data.train_ids_csv is not None:
            ids = read_id_list(data.train_ids_csv) + ids
        elif data.train_images is not None and data.layout == "kaggle":
            ids = list_images(data.train_images) + ids
        sources.append(LabelSource("train annotations", str(data.train_csv), image_table(ann.rows, ids), ann.rows))
    if data.test_truth_csv is not None:
        ann = read_annotations(data.test_truth_csv)
        ids = (list_images(data.test_images) if data.test_images is not None else []) + list(ann.image_ids)
        sources.append(LabelSource("test truth", str(data.test_truth_csv), image_table(ann.rows, ids), ann.rows))
    if data.labels_csv is not None:
        sources.append(LabelSource("labels table", str(data.labels_csv), read_labels_table(data.labels_csv)))
    if not sources:
        raise DatasetError(f"{data.root}: no annotations found (give --annotations CSV or --labels CSV)")
    return sources


def image_paths(data: DataRoot) -> dict[str, Path]:
    """ImageId -> file for every image in the root's image folders."""
    out: dict[str, Path] = {}
    for folder in (data.train_images, data.test_images):
        if folder is not None:
            out.update({name: folder / name for name in list_images(folder)})
    return out


# ----------------------------------------------------------------------------- plots


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def plot_counts(counts: pd.DataFrame, per_image: pd.DataFrame, title: str, path: Path) -> str:
    """Two bar charts: images per class, images per number of labels."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = [CLASS_HEX[c] for c in CLASS_IDS] + ["#999999"]
    bars = axes[0].bar(counts["class"], counts["images"], color=colors, edgecolor="black")
    axes[0].bar_label(bars, labels=[f"{n}\n{p:.1f}%" for n, p in zip(counts["images"], counts["percent"])], fontsize=8)
    axes[0].set(title=f"Images per class — {title}", xlabel="class", ylabel="images")
    axes[0].margins(y=0.25)
    bars = axes[1].bar(per_image["labels"].astype(str), per_image["images"], color="#607d8b", edgecolor="black")
    axes[1].bar_label(bars, fontsize=8)
    axes[1].set(title="Labels per image", xlabel="defect classes in the image", ylabel="images")
    axes[1].margins(y=0.2)
    return _save(fig, path)


def plot_areas(table: pd.DataFrame, title: str, path: Path) -> str:
    """Histogram of mask area per class (log-spaced bins)."""
    fig, axes = plt.subplots(1, len(CLASS_IDS), figsize=(12, 2.8), sharey=False)
    for ax, c in zip(axes, CLASS_IDS):
        a = table.loc[table[f"has_{c}"] == 1, f"area_{c}"].to_numpy()
        if a.size:
            bins = np.logspace(np.log10(max(a.min(), 1)), np.log10(max(a.max(), 2)), 25)
            ax.hist(a, bins=bins, color=CLASS_HEX[c], edgecolor="black")
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no masks", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"class {c} ({a.size} masks)", xlabel="area (px)")
    axes[0].set_ylabel("masks")
    fig.suptitle(f"Mask area per class — {title}", fontsize=10)
    return _save(fig, path)


def plot_examples(items: list[tuple[str, int, Path, dict[int, np.ndarray]]], title: str, path: Path) -> str:
    """One row per (ImageId, class): image, mask, contour overlay."""
    fig, axes = plt.subplots(len(items), 3, figsize=(15, 1.25 * len(items) + 0.6), squeeze=False)
    for row, (image_id, class_id, file, masks) in zip(axes, items):
        image = as_rgb(read_image(file))
        for ax, shown, label in zip(
            row,
            (image, mask_image(masks, image.shape[:2]), contour_overlay(image, masks, 3)),
            ("image", "mask", "contours"),
        ):
            ax.imshow(shown)
            ax.set_axis_off()
            ax.set_title(f"{image_id} class {class_id} — {label} ({int(masks[class_id].sum())} px)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def masks_of(rows: pd.DataFrame, image_id: str) -> dict[int, np.ndarray]:
    """Decoded class masks of one image from long-form rows."""
    return class_masks(rles_by_image(rows[rows["ImageId"] == image_id]).get(image_id, {}))


def pick_examples(source: LabelSource, files: dict[str, Path], per_class: int, seed: int) -> dict[int, list[str]]:
    """Up to ``per_class`` images per class that have both a mask and a file, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in CLASS_IDS:
        ids = sorted(set(source.rles.loc[source.rles["ClassId"] == c, "ImageId"]) & set(files))
        out[c] = sorted(rng.choice(ids, size=min(per_class, len(ids)), replace=False).tolist()) if ids else []
    return out


# ----------------------------------------------------------------------------- report


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t", na_rep="–", float_format=lambda v: f"{v:,.1f}")


def build_report(data: DataRoot, out: Path, per_class: int = 3, n_largest: int = 10, seed: int = 0) -> dict:
    """Write index.html, PNG plots, tables/*.csv and summary.json into ``out``; return the summary."""
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    sources = load_sources(data)
    files = image_paths(data)
    parts = [
        f"<h1>Severstal EDA — {html.escape(str(data.root))}</h1>",
        f"<p>Layout: <b>{data.layout}</b>; {len(files)} image files on disk "
        f"({', '.join(html.escape(str(p)) for p in (data.train_images, data.test_images) if p)}).</p>",
    ]
    summary: dict = {"root": str(data.root), "layout": data.layout, "image_files": len(files), "sources": {}}
    for k, src in enumerate(sources):
        slug = f"s{k}"
        t = src.table
        counts, per_image = class_counts(t), labels_per_image(t)
        combos, areas, largest = class_combinations(t), area_stats(t), largest_masks(t, n_largest)
        largest["image_file"] = largest["ImageId"].isin(set(files)).map({True: "yes", False: "no"})
        for name, frame in (
            ("class_counts", counts),
            ("labels_per_image", per_image),
            ("combinations", combos),
            ("area_stats", areas),
            ("largest_masks", largest),
        ):
            atomic_write_text(out / "tables" / f"{slug}_{name}.csv", spreadsheet_safe(frame).to_csv(index=False))
        summary["sources"][src.name] = {
            "path": src.path,
            "images": len(t),
            "masks": int(t[HAS].to_numpy().sum()),
            "images_per_class": {str(c): int(n) for c, n in zip(counts["class"], counts["images"])},
            "labels_per_image": {str(k): int(n) for k, n in zip(per_image["labels"], per_image["images"])},
        }
        counts_png = plot_counts(counts, per_image, src.name, out / f"{slug}_counts.png")
        areas_png = plot_areas(t, src.name, out / f"{slug}_areas.png")
        parts += [
            f"<h2>{html.escape(src.name)}</h2>",
            f"<p><code>{html.escape(src.path)}</code>: {len(t)} images, "
            f"{summary['sources'][src.name]['masks']} masks.</p>",
            "<h3>Images per class</h3>",
            _table_html(counts),
            "<h3>Labels per image</h3>",
            _table_html(per_image),
            f'<img src="{counts_png}">',
            "<h3>Class combinations</h3>",
            _table_html(combos),
            "<h3>Mask area per class (pixels)</h3>",
            _table_html(areas),
            f'<img src="{areas_png}">',
            f"<h3>{n_largest} largest masks</h3>",
            _table_html(largest),
        ]
        if src.rles is None:
            continue
        picks = pick_examples(src, files, per_class, seed)
        items = [(i, c, files[i], masks_of(src.rles, i)) for c in CLASS_IDS for i in picks[c]]
        summary["sources"][src.name]["examples"] = {str(c): v for c, v in picks.items()}
        if items:
            png = plot_examples(items, f"Sample images per class — {src.name}", out / f"{slug}_examples.png")
            parts += ["<h3>Sample images per class (image, mask, contours)</h3>", f'<img src="{png}">']
        else:
            parts.append("<p>No image file on disk has a known mask: no sample images.</p>")
        on_disk = largest_masks(t.loc[t.index.isin(set(files))], 4)
        big = [(i, int(c), files[i], masks_of(src.rles, i)) for i, c in zip(on_disk["ImageId"], on_disk["class"])]
        if big:
            png = plot_examples(big, f"Largest masks with an image file — {src.name}", out / f"{slug}_largest.png")
            parts += ["<h3>Largest masks (images on disk)</h3>", f'<img src="{png}">']
    with_rle = [s for s in sources if s.rles is not None and s.name == "train annotations"]
    labels = [s for s in sources if s.rles is None]
    if with_rle and labels:
        check = cross_check(with_rle[0].table, labels[0].table)
        atomic_write_text(out / "tables" / "cross_check.csv", spreadsheet_safe(check).to_csv(index=False))
        summary["cross_check"] = check.to_dict(orient="list")
        parts += [
            "<h2>Cross-check: RLE annotations vs labels table</h2>",
            "<p>Images listed in both; a disagreement means the two files describe an image differently.</p>",
            _table_html(check),
        ]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1300px}table.t{border-collapse:collapse;margin:.5em 0}"
        "table.t td,table.t th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Severstal EDA</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )
    atomic_write_text(out / "index.html", page)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


@command
def main(argv: list[str] | None = None) -> int:
    """CLI: write the report; input errors exit with status 2 and a message naming the file."""
    parser = argparse.ArgumentParser(prog="python -m analysis.eda", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="data root (Kaggle layout or annotations/ + images/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for index.html, PNGs and tables")
    parser.add_argument("--annotations", type=Path, help="train annotations CSV (either format) instead of the root's")
    parser.add_argument(
        "--image-ids", type=Path, help="CSV listing every annotated image (ImageId), clean ones included"
    )
    parser.add_argument("--labels", type=Path, help="per-image labels table (image_labels.csv layout)")
    parser.add_argument("--images", type=Path, help="folder of train images instead of the root's")
    parser.add_argument("--per-class", type=int, default=3, help="sample images per class (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing sample images (default 0)")
    args = parser.parse_args(argv)
    data = with_overrides(
        find_root(args.root),
        train_csv=args.annotations,
        train_ids_csv=args.image_ids,
        labels_csv=args.labels,
        train_images=args.images,
    )
    check_writable(args.out, "--out", directory=True)
    summary = build_report(data, args.out, per_class=args.per_class, seed=args.seed)
    for name, s in summary["sources"].items():
        print(
            f"{name}: {s['images']} images, per class {s['images_per_class']}, labels per image {s['labels_per_image']}"
        )
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
