"""Cross-validation report of training runs: HTML page + markdown summary + PNG plots.

``python -m analysis.report RUN_DIR... [--oof OOF_DIR] [--out DIR] [--images DIR --truth CSV] [OVERRIDES]``

Scores come from the ensemble OOF (``python -m tuning.oof``, made the way inference predicts) when
``--oof`` names it, else from the runs' own OOF files. Every score stands beside the all-empty baseline:
default rules, tuned rules and tuned-on-the-other-folds (the honest figure) per class; Dice on positive pairs
and false-positive rate on clean pairs; classifier ROC-AUC/F1 and ROC curves; each run (joint or separate
members) side by side on its own OOF; per-fold learning curves. With a labelled holdout (``--images`` +
``--truth``) it runs the checkpoints to show what each stage adds (gating, TTA, fold ensemble, member kinds)
and draws a few held-out images with truth and prediction.
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.constants import CLASS_IDS, LONG_COLUMNS
from common.errors import SteelsegError, command
from common.io import atomic_write_text, check_writable, read_csv
from common.metrics import dice_from_counts, f1_per_class, gap_closed, roc_auc_per_class
from common.oof import CLASSIFIER_FILE, OOF, SEGMENTER_FILE, find_files, load_oof
from ensemble.settings import override_parser, split_overrides
from scoring.rules import Rules, write_thresholds
from tuning.threshold_search import Grid, default_rules, pair_outcomes, run_search, score_rules

__all__ = ["per_fold_table", "pair_table", "classifier_table", "members_table", "holdout_table", "build_report", "main"]

CLASSES = [f"class {c}" for c in CLASS_IDS]


def _mean(scores: dict[int, float]) -> float:
    return float(np.mean(list(scores.values())))


def _row(name: str, per_class: dict[int, float], baseline: float, **extra: Any) -> dict[str, Any]:
    overall = _mean(per_class)
    return {
        "setting": name,
        **extra,
        **{n: per_class[c] for n, c in zip(CLASSES, CLASS_IDS)},
        "overall": overall,
        "gap closed": gap_closed(overall, baseline),
    }


def per_fold_table(oof: OOF, named_rules: dict[str, Rules]) -> pd.DataFrame:
    """Rows (fold or 'all', setting); columns per class + overall + gap closed; the all-empty baseline included."""
    rows = []
    present = oof.truth_present()
    for fold in [*np.unique(oof.fold).tolist(), "all"]:
        mask = np.ones(len(oof.fold), bool) if fold == "all" else oof.fold == fold
        part = oof.subset(mask)
        empty = 1 - present[mask]
        baseline = float(empty.mean())
        rows.append(
            _row(
                "all-empty baseline",
                {c: float(empty[:, i].mean()) for i, c in enumerate(CLASS_IDS)},
                baseline,
                fold=fold,
                images=int(mask.sum()),
            )
        )
        for name, rules in named_rules.items():
            rows.append(_row(name, score_rules(part, rules), baseline, fold=fold, images=int(mask.sum())))
    return pd.DataFrame(rows)


def pair_table(oof: OOF, rules: Rules) -> pd.DataFrame:
    """Per class under ``rules``: positive pairs, their mean Dice and how many are found; clean pairs and the
    share given a false mask."""
    inter, pred, truth = pair_outcomes(oof, rules)
    dice = dice_from_counts(inter, pred, truth)
    rows = []
    for i, name in enumerate(CLASSES):
        pos, neg = truth[:, i] > 0, truth[:, i] == 0
        rows.append(
            {
                "class": name,
                "positive pairs": int(pos.sum()),
                "Dice on positive pairs": float(dice[pos, i].mean()) if pos.any() else float("nan"),
                "positives found": float((pred[pos, i] > 0).mean()) if pos.any() else float("nan"),
                "clean pairs": int(neg.sum()),
                "false-positive rate on clean pairs": float((pred[neg, i] > 0).mean()) if neg.any() else float("nan"),
                "pair score": float(dice[:, i].mean()),
            }
        )
    return pd.DataFrame(rows)


def classifier_table(oof: OOF, thresholds: Sequence[float]) -> pd.DataFrame:
    """ROC-AUC and F1 (at the given classifier thresholds) per fold and class."""
    present = oof.truth_present()
    rows = []
    for fold in [*np.unique(oof.fold).tolist(), "all"]:
        mask = np.ones(len(oof.fold), bool) if fold == "all" else oof.fold == fold
        aucs = roc_auc_per_class(oof.cls_prob[mask], present[mask])
        f1s = f1_per_class(oof.cls_prob[mask], present[mask], thresholds)
        for i, name in enumerate(CLASSES):
            rows.append(
                {
                    "fold": fold,
                    "class": name,
                    "positives": int(present[mask, i].sum()),
                    "images": int(mask.sum()),
                    "roc_auc": aucs[i],
                    "threshold": thresholds[i],
                    "f1": f1s[i],
                }
            )
    return pd.DataFrame(rows)


def members_table(runs: Sequence[Path], base: Rules) -> pd.DataFrame:
    """Each run on its own OOF (its members alone, no TTA): tuned-on-other-folds score and class-head ROC-AUC."""
    rows = []
    for run in runs:
        seg, cls = find_files([run], SEGMENTER_FILE), find_files([run], CLASSIFIER_FILE)
        row: dict[str, Any] = {
            "run": str(run),
            "kind": "joint" if seg and cls else "segmenter" if seg else "classifier",
        }
        present = probs = None
        if seg:
            oof = load_oof([run])
            grid = Grid.make(oof.bins, area_scale=base.area_scale)
            s = run_search(oof, base, grid)["summary"]
            row.update(
                {
                    "images": s["n_images"],
                    "all-empty": s["baseline"],
                    "tuned": s["tuned"],
                    "tuned on other folds": s.get("cross_validated", float("nan")),
                    "gap closed": gap_closed(s.get("cross_validated", float("nan")), s["baseline"]),
                }
            )
            present, probs = oof.truth_present(), oof.cls_prob
        elif cls:
            from common.oof import read_classifier_oof

            parts = [read_classifier_oof(p) for p in cls]
            probs, present = np.concatenate([p.probs for p in parts]), None
            row["images"] = len(probs)
        if present is not None and probs is not None:
            row.update({f"AUC {c}": a for c, a in zip(CLASS_IDS, roc_auc_per_class(probs, present))})
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(value: float | None) -> str:
    """A share as a percentage, or 'n/a' where it could not be computed."""
    return "n/a" if value is None else f"{value:.1%}"


def _holdout_predictor(kinds: dict[str, list], rules: Rules, infer: Mapping[str, Any], gated: bool):
    """The infer config's predictor (``build_predictor``: TTA, reducer, device...) over these members and rules."""
    from ensemble.predict import build_predictor

    if gated:
        return build_predictor(infer, kinds, rules)
    return build_predictor(infer, {**kinds, "classifier": []}, replace(rules, gating="none"))


def holdout_table(
    runs: Sequence[Path],
    images: Path,
    truth: Path,
    rules: Rules,
    alone: Rules,
    infer: Mapping[str, Any],
    limit: int,
    out: Path | None = None,
    draw: int = 4,
) -> tuple[pd.DataFrame, str | None]:
    """Score checkpoint variants on a labelled holdout (what each stage adds), each beside the first (full) variant
    with a paired bootstrap interval of the difference, so that a few images' luck is not read as a stage's worth;
    optionally draw a few images. ``infer``: the infer config's ``predictor_config`` (TTA, reducer, device...)."""
    from common.annotations import read_annotations
    from common.dataset import dataset_from
    from common.metrics import pair_dice, paired_difference, score_pairs, with_interval
    from ensemble.members import discover, load_members
    from ensemble.predict import rows_of

    dataset = dataset_from(images, read_annotations(truth))
    ids = list(dataset.image_ids[:limit])
    found = discover(runs)
    members = {kind: load_members(paths, kind, bool(infer.get("channels_last", True))) for kind, paths in found.items()}
    if not members["segmenter"] and not members["joint"]:
        raise SteelsegError(f"no segmenter or joint checkpoints under {[str(r) for r in runs]}")
    has_labels = bool(members["classifier"] or members["joint"])
    first_fold = sorted({m.fold for ms in members.values() for m in ms}, key=str)[0]
    one_fold = {k: [m for m in v if m.fold == first_fold] for k, v in members.items()}
    tta = list(infer["tta"]["segmenter"])
    no_tta = {**infer, "tta": {"classifier": ["none"], "segmenter": ["none"]}}
    variants = {f"ensemble, TTA {'+'.join(tta)}, gated ({rules.gating}), tuned": (members, rules, infer, True)}
    if infer["tta"] != no_tta["tta"]:
        variants["ensemble, no TTA, gated, tuned"] = (members, rules, no_tta, True)
    variants[f"one fold ({first_fold}), TTA, gated, tuned"] = (one_fold, rules, infer, True)
    variants["segmenters alone (no classifier gate), TTA, tuned for no gate"] = (members, alone, infer, False)
    if members["joint"] and (members["segmenter"] or members["classifier"]):
        variants["joint members only, TTA, gated, tuned"] = (
            {"classifier": [], "segmenter": [], "joint": members["joint"]},
            rules,
            infer,
            True,
        )
        if members["segmenter"] and (members["classifier"] or not rules.needs_classifier):
            variants["separate members only, TTA, gated, tuned"] = ({**members, "joint": []}, rules, infer, True)
    rows, drawn, full = [], None, None
    for name, (kinds, r, settings, gated) in variants.items():
        if gated and r.needs_classifier and not (kinds["classifier"] or kinds["joint"]):
            continue
        predictor = _holdout_predictor(kinds, r, settings, gated and has_labels)
        masks_of, pred = {}, []
        for image_id, _, masks in predictor.iter_predictions([dataset.path(i) for i in ids]):
            pred.extend(row for row in rows_of(image_id, masks) if row[2])
            if drawn is None and len(masks_of) < draw:
                masks_of[image_id] = masks
        values, empty = pair_dice(pd.DataFrame(pred, columns=LONG_COLUMNS), dataset.annotations, ids)
        report = with_interval(score_pairs(values, empty, len(ids)), values, empty)
        low, high = report.gap_interval or (float("nan"), float("nan"))
        full = values if full is None else full
        diff = paired_difference(values, full) if len(ids) > 1 else (float("nan"),) * 3
        rows.append(
            {
                "variant": name,
                **{n: report.per_class[c] for n, c in zip(CLASSES, CLASS_IDS)},
                "overall": report.overall,
                "all-empty": report.baseline,
                "gap closed": report.gap_closed,
                "gap closed, 95% low": low,
                "gap closed, 95% high": high,
                "minus first row": diff[0],
                "minus first row, 95% low": diff[1],
                "minus first row, 95% high": diff[2],
                "segmenter passes skipped": predictor.stats.skipped_share,
            }
        )
        if drawn is None and out is not None:
            drawn = _draw_holdout(out, dataset, masks_of)
    return pd.DataFrame(rows), drawn


def _draw_holdout(out: Path, dataset, masks_of: dict[str, np.ndarray]) -> str | None:
    """A PNG of held-out images: truth outlines on the left, predicted outlines on the right, Dice per class."""
    if not masks_of:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.metrics import dice
    from common.viz import CLASS_HEX, contour_overlay, stack_masks

    fig, axes = plt.subplots(len(masks_of), 2, figsize=(16, 1.6 * len(masks_of) + 0.6), squeeze=False)
    for row, (image_id, pred) in zip(axes, masks_of.items()):
        image, truth = dataset.image(image_id), dataset.masks(image_id)
        scores = " ".join(
            f"c{c} {dice(pred[i], truth[i]):.2f}" for i, c in enumerate(CLASS_IDS) if pred[i].any() or truth[i].any()
        )
        for ax, masks, label in ((row[0], truth, "truth"), (row[1], pred, f"prediction (Dice {scores or '-'})")):
            ax.imshow(contour_overlay(image, stack_masks(masks), 3))
            ax.set_axis_off()
            ax.set_title(f"{image_id}: {label}", fontsize=8)
    handles = [plt.Line2D([], [], color=CLASS_HEX[c], lw=3, label=f"class {c}") for c in CLASS_IDS]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / "holdout_examples.png", dpi=80)
    plt.close(fig)
    return "holdout_examples.png"


def _save(fig: Any, out: Path, name: str, names: list[str]) -> None:
    """Write ``fig`` as the PNG ``out / name``, close it and list its name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    names.append(name)


def _plots(
    out: Path, oof: OOF, search: dict[str, Any], grid: Grid, folds: pd.DataFrame, runs: Sequence[Path]
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    best = search["best"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    for ax, key in zip(axes, ("pixel_threshold", "min_area", "classifier_threshold", "label_threshold")):
        values = getattr(grid, key if key != "pixel_threshold" else "k")
        xs = values / oof.bins if key == "pixel_threshold" else values
        for c in CLASS_IDS:
            ys = best.curves[c][key]
            if len(ys) == len(xs):
                ax.plot(xs, ys, marker=".", label=f"class {c}")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("best class score")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"threshold curves (gating {best.mode}; each point: best over the other parameters)")
    _save(fig, out, "threshold_curves.png", names)

    overall = folds[folds["fold"] == "all"].set_index("setting")
    fig, ax = plt.subplots(figsize=(10, 4))
    overall[CLASSES + ["overall"]].T.plot.bar(ax=ax)
    ax.set_ylim(max(0.0, overall[CLASSES].to_numpy().min() - 0.05), 1.0)
    ax.set_ylabel("Kaggle score (OOF)")
    ax.legend(fontsize=8)
    _save(fig, out, "scores_by_setting.png", names)

    if oof.cls_prob is not None:
        from sklearn.metrics import roc_curve

        present = oof.truth_present()
        fig, ax = plt.subplots(figsize=(5, 5))
        for i, name in enumerate(CLASSES):
            if 0 < present[:, i].sum() < len(present):
                fpr, tpr, _ = roc_curve(present[:, i], oof.cls_prob[:, i])
                auc = roc_auc_per_class(oof.cls_prob[:, i : i + 1], present[:, i : i + 1])[0]
                ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f}, {int(present[:, i].sum())} positives)")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("classifier ROC (OOF)")
        ax.legend(fontsize=7)
        _save(fig, out, "classifier_roc.png", names)

    for i, run in enumerate(runs):
        curves = sorted(Path(run).glob("fold*/metrics.csv")) or sorted(Path(run).glob("**/metrics.csv"))
        if not curves:
            continue
        fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(13, 3.6))
        for path in curves:
            frame = read_csv(path).frame().apply(pd.to_numeric, errors="coerce")  # the one CSV reader
            fold = path.parent.name
            loss_ax.plot(frame["epoch"], frame["train_loss"], marker=".", label=f"{fold} train")
            if "val_loss" in frame and frame["val_loss"].notna().any():
                loss_ax.plot(frame["epoch"], frame["val_loss"], marker="o", ls="--", label=f"{fold} validation")
            monitor = _monitor_of(path)
            if monitor and monitor in frame:
                valid = frame[frame[monitor].notna()]
                metric_ax.plot(valid["epoch"], valid[monitor], marker="o", label=f"{fold} {monitor}")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")
        loss_ax.legend(fontsize=7)
        loss_ax.grid(alpha=0.3)
        metric_ax.set_xlabel("epoch")
        metric_ax.set_ylabel("monitored metric (validation fold)")
        if metric_ax.get_legend_handles_labels()[0]:
            metric_ax.legend(fontsize=7)
        metric_ax.grid(alpha=0.3)
        fig.suptitle(f"learning curves: {run}")
        _save(fig, out, f"learning_curves_{i}.png", names)
    return names


def _monitor_of(metrics_csv: Path) -> str | None:
    """The monitored metric of a run folder, from its best checkpoint's meta."""
    best = metrics_csv.parent / "checkpoints" / "best.pt"
    if not best.is_file():
        return None
    from engine.checkpoint import load_checkpoint

    return (load_checkpoint(best).get("meta") or {}).get("monitor")


def _md_table(frame: pd.DataFrame) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def build_report(
    runs: Sequence[Path],
    out: Path,
    base: Rules,
    images: Path | None = None,
    truth: Path | None = None,
    limit: int = 40,
    oof_dir: Path | None = None,
    infer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write report.html, report.md, summary.json, thresholds.json and PNGs into ``out``; return the summary.
    ``infer``: the infer config's ``predictor_config`` the holdout predicts with (default: infer.py's)."""
    out.mkdir(parents=True, exist_ok=True)
    oof = load_oof([oof_dir] if oof_dir is not None else runs)
    base = replace(base, bins=oof.bins)
    grid = Grid.make(oof.bins, area_scale=base.area_scale)
    search = run_search(oof, base, grid)
    s = search["summary"]
    chosen: Rules = search["chosen"]
    alone = replace(base, gating="none")
    named = {"segmenters alone, default rules": alone}
    if oof.cls_prob is not None and base.needs_classifier:
        named[f"gated ({base.gating}), default rules"] = base
    for mode, result in search["results"].items():
        named[f"tuned: {mode}"] = result.rules
    folds = per_fold_table(oof, named)
    overall = folds[folds["fold"] == "all"].drop(columns=["fold"])
    if "cross_validated_per_class" in s:
        cv = {int(c): v for c, v in s["cross_validated_per_class"].items()}
        overall = pd.concat(
            [
                overall,
                pd.DataFrame(
                    [
                        _row(
                            f"tuned ({s['best_mode']}) on the other folds, scored on the held-out one",
                            cv,
                            s["baseline"],
                            images=s["n_images"],
                        )
                    ]
                ),
            ]
        )
    source = f"the ensemble OOF in {oof_dir}" if oof_dir is not None else "the runs' own OOF files"
    headline = (
        f"{s['n_images']} out-of-fold images ({source}). All-empty baseline {s['baseline']:.4f}; default rules "
        f"({s['default_gating']}) {s['default']:.4f}; tuned ({s['best_mode']}) {s['tuned']:.4f}"
    )
    if "cross_validated" in s:
        headline += (
            f"; tuned on the other folds and scored on the held-out one {s['cross_validated']:.4f}, i.e. "
            f"{gap_closed(s['cross_validated'], s['baseline']):.1%} of the gap between all-empty and 1.0 "
            "closed (the honest figure: the gap to 'tuned' is over-tuning)"
        )
    sections: list[tuple[str, pd.DataFrame | str]] = [("Summary", f"{headline}. Decision: {s['decision']}.")]
    sections.append(("What each stage adds (OOF, all folds)", overall))
    sections.append((f"Per class with the written rules ({chosen.gating})", pair_table(oof, chosen)))
    sections.append(("Per fold and class", folds[folds["fold"] != "all"]))
    if oof.cls_prob is not None:
        sections.append(("Classifier ROC-AUC and F1 (OOF)", classifier_table(oof, chosen.classifier_threshold)))
    if oof_dir is not None or len(runs) > 1:
        sections.append(("Members side by side (each run on its own OOF, no TTA)", members_table(runs, base)))
    rules_table = pd.DataFrame(
        [
            {"class": f"class {c}", **{k: v[i] for k, v in chosen.to_dict().items() if isinstance(v, list)}}
            for i, c in enumerate(CLASS_IDS)
        ]
    )
    sections.append((f"Written rules ({s['written']}, gating {chosen.gating})", rules_table))
    plots = _plots(out, oof, search, grid, folds, runs)
    if images is not None and truth is not None:
        alone_rules = search["results"]["none"].rules if "none" in search["results"] else alone
        if infer is None:
            from ensemble.settings import compose_infer, predictor_config

            infer = predictor_config(compose_infer())
        table, drawn = holdout_table(runs, images, truth, chosen, alone_rules, infer, limit, out)
        sections.append(
            (
                "Held-out images: what each stage adds (95% intervals with the images resampled; "
                "'minus first row' is paired: an interval holding 0 means these images cannot tell the "
                "two apart)",
                table,
            )
        )
        # JSON has no NaN: a figure that cannot be computed (one image, or no defect to find) is written as null.
        s["holdout"] = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        if drawn:
            plots.append(drawn)
    write_thresholds(out / "thresholds.json", chosen, {"scores": s, "sources": [str(r) for r in runs]})

    md = ["# Cross-validation report", ""]
    page = [
        "<html><head><meta charset='utf-8'><title>steelseg CV report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>Cross-validation report</h1>",
    ]
    for title, body in sections:
        md += [f"## {title}", "", body if isinstance(body, str) else _md_table(body), ""]
        page += [
            f"<h2>{html.escape(title)}</h2>",
            f"<p>{html.escape(body)}</p>" if isinstance(body, str) else body.to_html(index=False, float_format="%.4f"),
        ]
    md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    page += ["<h2>Plots</h2>"] + [f"<p><img src='{p}'></p>" for p in plots] + ["</body></html>"]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.html", "\n".join(page) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(s, indent=2, default=float) + "\n")
    return s


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = override_parser("analysis.report", __doc__, "(default rules, tta).")
    parser.add_argument("runs", nargs="+", help="training (multi)run output folders; then overrides")
    parser.add_argument("--oof", type=Path, help="ensemble OOF folder (python -m tuning.oof) to score")
    parser.add_argument("--out", type=Path, help="report folder (default: RUN_DIR/report)")
    parser.add_argument("--images", type=Path, help="labelled holdout images (optional)")
    parser.add_argument("--truth", type=Path, help="truth CSV of --images")
    parser.add_argument("--limit", type=int, default=40, help="at most this many holdout images")
    args = parser.parse_intermixed_args(argv)
    runs, overrides = split_overrides(args.runs)
    if not runs:
        raise SteelsegError("give at least one training output folder")
    if (args.images is None) != (args.truth is None):
        raise SteelsegError("--images and --truth go together (a labelled holdout)")
    from ensemble.settings import compose_infer, predictor_config

    out = check_writable(args.out or Path(runs[0]) / "report", "--out", directory=True)
    infer = predictor_config(compose_infer(overrides))
    s = build_report(
        [Path(r) for r in runs], out, default_rules(overrides), args.images, args.truth, args.limit, args.oof, infer
    )
    print(
        f"all-empty {s['baseline']:.4f}  default {s['default']:.4f}  tuned ({s['best_mode']}) {s['tuned']:.4f}"
        + (
            f"  tuned-on-other-folds {s['cross_validated']:.4f} (gap closed "
            f"{gap_closed(s['cross_validated'], s['baseline']):.1%})"
            if "cross_validated" in s
            else ""
        )
    )
    for row in s.get("holdout", []):
        print(
            f"  holdout: {row['variant']}: {row['overall']:.4f} vs all-empty {row['all-empty']:.4f} "
            f"(gap closed {_pct(row['gap closed'])}, 95% interval {_pct(row['gap closed, 95% low'])} to "
            f"{_pct(row['gap closed, 95% high'])})"
            + (
                ""
                if row is s["holdout"][0] or row["minus first row, 95% low"] is None
                else f"; minus the first row {row['minus first row']:+.4f} (95% interval "
                f"{row['minus first row, 95% low']:+.4f} to {row['minus first row, 95% high']:+.4f})"
            )
        )
    print(f"report: {out / 'report.html'}  {out / 'report.md'}  thresholds: {out / 'thresholds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
