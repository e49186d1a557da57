"""Cross-validation report of a training multirun: HTML page + markdown summary + PNG plots.

``python -m analysis.report RUN_DIR... [--out DIR] [--images DIR --truth CSV]``

From the OOF files under RUN_DIR: Kaggle score per fold and class beside the all-empty baseline,
classifier ROC-AUC and F1, segmenter alone vs each gating mode, default vs tuned vs tuned-on-other-
folds thresholds, threshold curves, ROC curves, training curves (``metrics.csv``). With a labelled
holdout (``--images`` + ``--truth``) it also runs the checkpoints found under RUN_DIR to measure
TTA vs none, one fold vs the ensemble, gated vs segmenter alone on unseen images.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from common.constants import CLASS_IDS, LONG_COLUMNS
from common.errors import SteelsegError
from common.io import atomic_write_text, check_writable
from common.metrics import f1_per_class, roc_auc_per_class
from common.oof import OOF, load_oof
from ensemble.rules import Rules, write_thresholds
from ensemble.settings import split_overrides
from ensemble.threshold_search import Grid, default_rules, run_search, score_rules

__all__ = ["per_fold_table", "classifier_table", "holdout_table", "build_report", "main"]

CLASSES = [f"class {c}" for c in CLASS_IDS]


def _mean(scores: dict[int, float]) -> float:
    return float(np.mean(list(scores.values())))


def per_fold_table(oof: OOF, named_rules: dict[str, Rules]) -> pd.DataFrame:
    """Rows (fold or 'all', setting); columns per class + overall; the all-empty baseline included."""
    rows = []
    present = oof.truth_present()
    for fold in [*np.unique(oof.fold).tolist(), "all"]:
        mask = np.ones(len(oof.fold), bool) if fold == "all" else oof.fold == fold
        part = oof.subset(mask)
        empty = 1 - present[mask]
        rows.append({"fold": fold, "setting": "all-empty baseline", "images": int(mask.sum()),
                     **{n: float(empty[:, i].mean()) for i, n in enumerate(CLASSES)}, "overall": float(empty.mean())})
        for name, rules in named_rules.items():
            s = score_rules(part, rules)
            rows.append({"fold": fold, "setting": name, "images": int(mask.sum()),
                         **{n: s[c] for n, c in zip(CLASSES, CLASS_IDS)}, "overall": _mean(s)})
    return pd.DataFrame(rows)


def classifier_table(oof: OOF, thresholds: Sequence[float]) -> pd.DataFrame:
    """ROC-AUC and F1 (at the tuned classifier thresholds) per fold and class."""
    present = oof.truth_present()
    rows = []
    for fold in [*np.unique(oof.fold).tolist(), "all"]:
        mask = np.ones(len(oof.fold), bool) if fold == "all" else oof.fold == fold
        aucs = roc_auc_per_class(oof.cls_prob[mask], present[mask])
        f1s = f1_per_class(oof.cls_prob[mask], present[mask], thresholds)
        for i, name in enumerate(CLASSES):
            rows.append({"fold": fold, "class": name, "positives": int(present[mask, i].sum()),
                         "images": int(mask.sum()), "roc_auc": aucs[i], "threshold": thresholds[i], "f1": f1s[i]})
    return pd.DataFrame(rows)


def _plots(out: Path, oof: OOF, search: dict[str, Any], folds: pd.DataFrame, runs: Sequence[Path]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    best = search["best"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    for ax, key in zip(axes, ("pixel_threshold", "min_area", "classifier_threshold", "label_threshold")):
        grid = getattr(search["grid"], key if key != "pixel_threshold" else "k")
        xs = grid / oof.bins if key == "pixel_threshold" else grid
        for c in CLASS_IDS:
            ys = best.curves[c][key]
            if len(ys) == len(xs):
                ax.plot(xs, ys, marker=".", label=f"class {c}")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("best class score")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"threshold curves (gating {best.mode}; each point: best over the other parameters)")
    fig.tight_layout()
    fig.savefig(out / "threshold_curves.png", dpi=90)
    plt.close(fig)
    names.append("threshold_curves.png")

    overall = folds[folds["fold"] == "all"].set_index("setting")
    fig, ax = plt.subplots(figsize=(10, 4))
    overall[CLASSES + ["overall"]].T.plot.bar(ax=ax)
    ax.set_ylim(max(0.0, overall[CLASSES].to_numpy().min() - 0.05), 1.0)
    ax.set_ylabel("Kaggle score (OOF)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scores_by_setting.png", dpi=90)
    plt.close(fig)
    names.append("scores_by_setting.png")

    if oof.cls_prob is not None:
        from sklearn.metrics import roc_curve

        present = oof.truth_present()
        fig, ax = plt.subplots(figsize=(5, 5))
        for i, name in enumerate(CLASSES):
            if 0 < present[:, i].sum() < len(present):
                fpr, tpr, _ = roc_curve(present[:, i], oof.cls_prob[:, i])
                ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("classifier ROC (OOF)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "classifier_roc.png", dpi=90)
        plt.close(fig)
        names.append("classifier_roc.png")

    curves = sorted({p for r in runs for p in Path(r).glob("**/metrics.csv")})
    if curves:
        fig, ax = plt.subplots(figsize=(8, 4))
        for path in curves:
            frame = pd.read_csv(path)
            x = frame["epoch"] if "epoch" in frame else np.arange(len(frame))
            for col in [c for c in frame.columns if c != "epoch" and pd.api.types.is_numeric_dtype(frame[c])
                        and ("val" in c or "loss" in c)][:4]:
                ax.plot(x, frame[col], marker=".", label=f"{path.parent.name}: {col}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=90)
        plt.close(fig)
        names.append("training_curves.png")
    return names


def holdout_table(runs: Sequence[Path], images: Path, truth: Path, rules: Rules, limit: int) -> pd.DataFrame:
    """Score checkpoint variants on a labelled holdout: ensemble vs one fold, TTA vs none, gated vs not."""
    from common.annotations import read_annotations
    from common.dataset import dataset_from
    from common.metrics import kaggle_score
    from ensemble.members import discover, load_members
    from ensemble.predict import Predictor, rows_of
    from ensemble.tta import transforms

    dataset = dataset_from(images, read_annotations(truth))
    ids = dataset.image_ids[:limit]
    found = discover(runs)
    segs, classifiers = load_members(found["segmenter"], "segmenter"), load_members(found["classifier"], "classifier")
    joints = load_members(found["joint"], "joint")
    if not segs and not joints:
        raise SteelsegError(f"no segmenter or joint checkpoints under {[str(r) for r in runs]}")
    gated = rules if classifiers or joints or not rules.needs_classifier else replace(rules, gating="none")
    flips, none = transforms(["none", "hflip"]), transforms(["none"])
    one = (segs or joints)[0]
    variants = {
        "ensemble, TTA none+hflip, tuned gating": (classifiers, segs, joints, flips, gated),
        "ensemble, no TTA, tuned gating": (classifiers, segs, joints, none, gated),
        f"one fold ({one.path.parent.parent.name}), TTA, tuned gating": (classifiers[:1], segs[:1], joints[:1], flips,
                                                                         gated),
        "segmenters alone, TTA": ([], segs, joints, flips, replace(gated, gating="none")),
    }
    rows = []
    for name, (cls, seg, joint, tta, r) in variants.items():
        predictor = Predictor(cls, seg, r, tta, tta, joints=joint)
        pred = [row for image_id, _, masks in predictor.iter_predictions([dataset.path(i) for i in ids])
                for row in rows_of(image_id, masks) if row[2]]
        report = kaggle_score(pd.DataFrame(pred, columns=LONG_COLUMNS), dataset.annotations, ids)
        rows.append({"variant": name, **{n: report.per_class[c] for n, c in zip(CLASSES, CLASS_IDS)},
                     "overall": report.overall, "all-empty": report.baseline,
                     "segmenter passes skipped": predictor.stats.skipped_share})
    return pd.DataFrame(rows)


def _md_table(frame: pd.DataFrame) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def build_report(runs: Sequence[Path], out: Path, base: Rules, images: Path | None = None,
                 truth: Path | None = None, limit: int = 40) -> dict[str, Any]:
    """Write report.html, report.md, thresholds.json and PNGs into ``out``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    oof = load_oof(runs)
    grid = Grid.make(oof.bins)
    search = run_search(oof, base, grid)
    search["grid"] = grid
    s = search["summary"]
    alone = replace(base, gating="none")
    named = {"segmenter alone, default thresholds": alone}
    if oof.cls_prob is not None and base.needs_classifier:
        named[f"gated ({base.gating}), default thresholds"] = base
    for mode, result in search["results"].items():
        named[f"tuned: {mode}"] = result.rules
    folds = per_fold_table(oof, named)
    sections: list[tuple[str, pd.DataFrame | str]] = []
    headline = (f"{s['n_images']} OOF images. All-empty baseline {s['baseline']:.4f}; segmenter alone at default "
                f"thresholds {_mean(score_rules(oof, alone)):.4f}; default config ({s['default_gating']}) "
                f"{s['default']:.4f}; tuned ({s['best_mode']}) {s['tuned']:.4f}")
    if "cross_validated" in s:
        headline += (f"; tuned on the other folds and scored on the held-out one {s['cross_validated']:.4f} "
                     "(the honest figure: the gap to 'tuned' is over-tuning)")
    sections.append(("Summary", headline + "."))
    overall = folds[folds["fold"] == "all"].drop(columns=["fold"])
    sections.append(("What each stage adds (OOF, all folds)", overall))
    sections.append(("Per fold and class", folds[folds["fold"] != "all"]))
    if oof.cls_prob is not None:
        sections.append(("Classifier ROC-AUC and F1 (OOF)",
                         classifier_table(oof, search["best"].rules.classifier_threshold)))
    tuned = pd.DataFrame([{"class": f"class {c}", **{k: v[i] for k, v in search["best"].rules.to_dict().items()
                                                     if isinstance(v, list)}} for i, c in enumerate(CLASS_IDS)])
    sections.append((f"Tuned thresholds (gating {search['best'].mode})", tuned))
    if images is not None and truth is not None:
        sections.append(("Holdout: TTA, folds, gating", holdout_table(runs, images, truth, search["best"].rules, limit)))
    plots = _plots(out, oof, search, folds, runs)
    write_thresholds(out / "thresholds.json", search["best"].rules, {"scores": s, "sources": [str(r) for r in runs]})

    md = ["# Cross-validation report", ""]
    page = ["<html><head><meta charset='utf-8'><title>steelseg CV report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}</style></head><body>",
            "<h1>Cross-validation report</h1>"]
    for title, body in sections:
        md += [f"## {title}", "", body if isinstance(body, str) else _md_table(body), ""]
        page += [f"<h2>{html.escape(title)}</h2>",
                 f"<p>{html.escape(body)}</p>" if isinstance(body, str) else body.to_html(index=False, float_format="%.4f")]
    md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    page += ["<h2>Plots</h2>"] + [f"<p><img src='{p}'></p>" for p in plots] + ["</body></html>"]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.html", "\n".join(page) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(s, indent=2, default=float) + "\n")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report", description=__doc__.splitlines()[0],
        epilog="Arguments with '=' are Hydra overrides of the infer config (the default thresholds).")
    parser.add_argument("runs", nargs="+", help="training (multi)run output folders or OOF folders; then overrides")
    parser.add_argument("--out", type=Path, help="report folder (default: RUN_DIR/report)")
    parser.add_argument("--images", type=Path, help="labelled holdout images (optional)")
    parser.add_argument("--truth", type=Path, help="truth CSV of --images")
    parser.add_argument("--limit", type=int, default=40, help="at most this many holdout images")
    args = parser.parse_intermixed_args(argv)
    runs, overrides = split_overrides(args.runs)
    try:
        if not runs:
            raise SteelsegError("give at least one training output folder")
        out = check_writable(args.out or Path(runs[0]) / "report", "--out", directory=True)
        s = build_report([Path(r) for r in runs], out, default_rules(overrides), args.images, args.truth, args.limit)
    except SteelsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"all-empty {s['baseline']:.4f}  default {s['default']:.4f}  tuned ({s['best_mode']}) {s['tuned']:.4f}"
          + (f"  tuned-on-other-folds {s['cross_validated']:.4f}" if "cross_validated" in s else ""))
    print(f"report: {out / 'report.html'}  {out / 'report.md'}  thresholds: {out / 'thresholds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
