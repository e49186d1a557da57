"""Tune per-class thresholds on out-of-fold outputs, exactly and fast, from probability histograms.

Inputs (plain numpy): ``hist_pos``/``hist_neg`` (N, 4, B) pixel counts by probability bin
``min(floor(p * B), B - 1)`` for truth 1 / truth 0, ``max_prob`` (N, 4), classifier probabilities (N, 4).
A pixel threshold ``k / B`` keeps the bins ``>= k``, so for any (k, min area, classifier threshold,
label threshold) every image's intersection and predicted area are suffix sums over bins.

How it stays fast: the Kaggle score is a mean over (image, class) pairs, so classes are independent.
For one class and one k, each image adds ``gain = dice - truth_empty`` to the score exactly when it
is kept, and it is kept iff area, label and classifier thresholds are all below its own values. So
the images are bucketed by (area rank, label rank, classifier rank), one ``bincount`` sums the gains,
and suffix sums over the three axes give the score of every grid point at once:
O(K x (N + A x L x T)) per class and mode instead of O(K x A x L x T x N).

Exact for: pixel threshold on the bin grid, total min area, classifier veto / image skip / area
scaling, label threshold on the maximum probability. Not representable (left to the config):
``min_component`` and overlap resolution. ``soft`` (prob x class prob) is approximate: each image's
threshold ``k / (B q)`` is rounded up to the next bin edge.

CLI: ``python -m tuning.threshold_search RUN_DIR... --out thresholds.json [OVERRIDES]`` (RUN_DIR: training
output folders holding ``oof_segmenter.npz`` and ``oof_classifier.csv``, or the files themselves; OVERRIDES:
Hydra overrides of the infer config, whose rules are the "default thresholds").
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.constants import CLASS_IDS, IMAGE_SHAPE
from common.errors import OOFError, command
from common.io import check_outputs, check_writable
from common.metrics import dice_from_counts
from common.oof import OOF, OOF_FILES, load_oof
from ensemble.settings import override_parser, split_overrides
from scoring.gating import SEARCH_MODES, Gate, get_gate, pair_rules
from scoring.rules import Rules, write_thresholds

__all__ = [
    "SEARCH_MODES",
    "DEFAULT_GRID",
    "ClassCounts",
    "Grid",
    "class_scores",
    "ModeResult",
    "search_mode",
    "pair_outcomes",
    "score_rules",
    "search",
    "cross_validated",
    "classes_to_switch_off",
    "switch_off",
    "run_search",
    "main",
]

OFF_AREA = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] + 1  # min_area above any mask's area: the class is never predicted
DEFAULT_GRID = {
    "pixel_threshold": [round(x, 2) for x in np.arange(0.2, 0.85, 0.05)],
    "min_area": [0, 100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 7000, 10000],
    "classifier_threshold": [round(x, 2) for x in np.arange(0.1, 0.95, 0.05)],
    "label_threshold": [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
}


@dataclass
class ClassCounts:
    """One class's suffix sums: ``inter[i, k]`` / ``pred[i, k]`` = truth-1 / all pixels of image i with bin >= k
    (k = B: none), and the true area ``truth[i]`` (``common.oof.OOF.tails``)."""

    inter: np.ndarray
    pred: np.ndarray
    truth: np.ndarray

    @classmethod
    def of(cls, oof: OOF, c: int) -> ClassCounts:
        return cls(*oof.tails(c))

    def at(self, k: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(intersection, predicted area) per image at bin index k (scalar or per image)."""
        if np.ndim(k) == 0:
            return self.inter[:, k], self.pred[:, k]
        rows = np.arange(len(self.truth))
        return self.inter[rows, k], self.pred[rows, k]

    def gain(self, k: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(score gain of predicting the mask instead of nothing, predicted area) per image."""
        inter, pred = self.at(k)
        # pairs with no predicted pixel are never kept (area rank 0 in class_scores): their gain is not used
        return dice_from_counts(inter, pred, self.truth) - (self.truth == 0), pred


def _ranks(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Number of grid values <= each value (grid sorted ascending)."""
    return np.searchsorted(grid, values, side="right")


def _suffix(h: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    for axis in axes:
        h = np.flip(np.cumsum(np.flip(h, axis), axis), axis)
    return h


def _bucket_sum(gain: np.ndarray, ranks: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    flat = np.ravel_multi_index(tuple(ranks), tuple(s + 1 for s in sizes))
    return np.bincount(flat, weights=gain, minlength=int(np.prod([s + 1 for s in sizes]))).reshape(
        [s + 1 for s in sizes]
    )


@dataclass
class Grid:
    """Search grid: pixel threshold indices k (threshold k/B), areas, classifier and label thresholds."""

    k: np.ndarray
    min_area: np.ndarray
    classifier_threshold: np.ndarray
    label_threshold: np.ndarray
    area_scale: float = 2.0

    @classmethod
    def make(
        cls,
        bins: int,
        pixel_threshold=None,
        min_area=None,
        classifier_threshold=None,
        label_threshold=None,
        area_scale: float = 2.0,
    ) -> Grid:
        def pick(v: Any, key: str) -> np.ndarray:
            return np.unique(np.asarray(DEFAULT_GRID[key] if v is None else v, np.float64))

        pixel = pick(pixel_threshold, "pixel_threshold")  # the default grid snaps to the bin edges
        k = np.unique(np.clip(np.round(pixel * bins).astype(np.int64), 1, bins - 1))
        if pixel_threshold is not None and not np.allclose(k / bins, np.clip(pixel, 1 / bins, (bins - 1) / bins)):
            raise OOFError(f"pixel thresholds {pixel.tolist()} are not on the {bins}-bin grid of the OOF histograms")
        return cls(
            k,
            pick(min_area, "min_area"),
            pick(classifier_threshold, "classifier_threshold"),
            pick(label_threshold, "label_threshold"),
            float(area_scale),
        )


def class_scores(
    counts: ClassCounts, max_prob: np.ndarray, cls_prob: np.ndarray | None, gate: Gate, c: int, grid: Grid, bins: int
) -> np.ndarray:
    """Sum over images of the pair score of class index ``c`` for every (k, area, label, classifier threshold)
    grid point under ``gate`` (the rule inference applies, from ``scoring.gating``).

    Shape (K, A, L, T); T = 1 for modes without a classifier threshold.
    """
    n = len(counts.truth)
    K, A, L = len(grid.k), len(grid.min_area), len(grid.label_threshold)
    value = gate.classifier_value(cls_prob, c)
    T = len(grid.classifier_threshold) if value is not None else 1
    rt = _ranks(grid.classifier_threshold, value) if value is not None else np.ones(n, np.int64)
    rl = _ranks(grid.label_threshold, gate.label_value(max_prob, cls_prob, c))
    base = float((counts.truth == 0).sum())
    out = np.empty((K, A, L, T))
    for ki, k in enumerate(grid.k):
        gain, pred = counts.gain(gate.pixel_bin(int(k), cls_prob, c, bins))
        ra = np.where(pred > 0, _ranks(grid.min_area, pred), 0)
        kept = _suffix(_bucket_sum(gain, (ra, rl, rt), (A, L, T)), (0, 1, 2))[1:, 1:, 1:]
        if gate.on_low == "scale":
            # classifier below its threshold (rank <= t): the area must reach area_scale x min_area instead
            ra2 = np.where(pred > 0, _ranks(grid.min_area * grid.area_scale, pred), 0)
            h2 = _suffix(_bucket_sum(gain, (ra2, rl, rt), (A, L, T)), (0, 1))[1:, 1:]
            kept = kept + np.cumsum(h2, axis=2)[:, :, :T]
        out[ki] = base + kept
    return out


@dataclass
class ModeResult:
    """Best rules of one gating mode with the per-class scores and curves for the report."""

    mode: str
    rules: Rules
    score: float
    per_class: dict[int, float]
    curves: dict[int, dict[str, list[float]]] = field(default_factory=dict)


def _curves(s: np.ndarray, n: int) -> dict[str, list[float]]:
    """Best mean score as a function of each searched parameter (max over the others)."""
    return {
        name: (s.max(axis=tuple(a for a in range(4) if a != axis)) / n).tolist()
        for axis, name in enumerate(("pixel_threshold", "min_area", "label_threshold", "classifier_threshold"))
    }


def search_mode(oof: OOF, mode: str, grid: Grid, base: Rules) -> ModeResult:
    """Best per-class (k, area, label, classifier threshold) of one mode; image mode shares one threshold."""
    if mode not in SEARCH_MODES:
        raise OOFError(f"unknown search mode {mode!r}; choose from {list(SEARCH_MODES)}")
    gate = get_gate(mode)
    if gate.needs_classifier and oof.cls_prob is None:
        raise OOFError(f"gating mode {mode!r} needs classifier OOF probabilities")
    n, bins = len(oof.image_ids), oof.bins
    cls_prob = oof.cls_prob if gate.needs_classifier else None
    tables = [
        class_scores(ClassCounts.of(oof, c), oof.max_prob, cls_prob, gate, c, grid, bins) for c in range(len(CLASS_IDS))
    ]
    shared_t = None
    if mode == "image":  # one image threshold for all classes: best total over classes
        shared_t = int(np.argmax(sum(t.max(axis=(0, 1, 2)) for t in tables)))
    picks = {key: [] for key in ("pixel_threshold", "min_area", "label_threshold", "classifier_threshold")}
    per_class, curves = {}, {}
    for c, table in zip(CLASS_IDS, tables):
        view = table if shared_t is None else table[..., shared_t : shared_t + 1]
        ki, ai, li, ti = np.unravel_index(int(np.argmax(view)), view.shape)
        ti = ti if shared_t is None else shared_t
        per_class[c] = float(view.max() / n)
        curves[c] = _curves(table, n)
        picks["pixel_threshold"].append(float(grid.k[ki] / bins))
        picks["min_area"].append(int(grid.min_area[ai]))
        picks["label_threshold"].append(float(grid.label_threshold[li]))
        picks["classifier_threshold"].append(
            float(grid.classifier_threshold[ti]) if table.shape[3] > 1 else base.classifier_threshold[c - 1]
        )
    label_used = any(v > 0 for v in picks["label_threshold"])
    gating = {"none": "label" if label_used else "none"}.get(mode, mode)
    image_threshold = float(grid.classifier_threshold[shared_t]) if shared_t is not None else base.image_threshold
    rules = replace(
        base,
        **{k: tuple(v) for k, v in picks.items()},
        gating=gating,
        image_threshold=image_threshold,
        area_scale=grid.area_scale,
        bins=bins,
    )
    return ModeResult(gating, rules, float(np.mean(list(per_class.values()))), per_class, curves)


def pair_outcomes(oof: OOF, rules: Rules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, predicted area, true area), each (N, 4), of fixed rules on the OOF: the very per-pair rules
    inference applies (``scoring.gating.pair_rules``), counted on the histograms."""
    if rules.bins != oof.bins:
        raise OOFError(
            f"the rules use a {rules.bins}-step threshold grid (postprocess.bins), the OOF histograms "
            f"{oof.bins} bins; set postprocess.bins={oof.bins}"
        )
    gate = get_gate(rules.gating)
    if gate.needs_classifier and oof.cls_prob is None:
        raise OOFError(f"gating mode {rules.gating!r} needs classifier OOF probabilities")
    pairs = pair_rules(rules, oof.max_prob, oof.cls_prob if gate.needs_classifier else None)
    inter, pred, truth = (np.zeros((len(oof), len(CLASS_IDS)), np.int64) for _ in range(3))
    for i in range(len(CLASS_IDS)):
        counts = ClassCounts.of(oof, i)
        a, p = counts.at(pairs.k[:, i])
        keep = pairs.keep[:, i] & (p >= pairs.min_area[:, i])
        inter[:, i], pred[:, i], truth[:, i] = np.where(keep, a, 0), np.where(keep, p, 0), counts.truth
    return inter, pred, truth


def score_rules(oof: OOF, rules: Rules) -> dict[int, float]:
    """Mean pair score per class of fixed rules on the OOF (e.g. the 'default thresholds' figure)."""
    dice = dice_from_counts(*pair_outcomes(oof, rules))
    return {c: float(dice[:, i].mean()) for i, c in enumerate(CLASS_IDS)}


def search(oof: OOF, grid: Grid, base: Rules, modes: Sequence[str] = SEARCH_MODES) -> dict[str, ModeResult]:
    """Best rules per gating mode (modes needing a classifier are skipped when there is no classifier OOF)."""
    usable = [m for m in modes if m == "none" or oof.cls_prob is not None]
    if not usable:
        raise OOFError(f"no searchable mode among {list(modes)} without classifier OOF")
    return {m: search_mode(oof, m, grid, base) for m in usable}


def cross_validated(oof: OOF, grid: Grid, base: Rules, mode: str) -> dict[int, float]:
    """Honest estimate per class: tune on all folds but one, score the held-out fold, average over images
    (empty when the OOF holds a single fold)."""
    folds = np.unique(oof.fold)
    if len(folds) < 2:
        return {}
    total = {c: 0.0 for c in CLASS_IDS}
    for f in folds:
        held = oof.fold == f
        rules = search_mode(oof.subset(~held), mode, grid, base).rules
        for c, value in score_rules(oof.subset(held), rules).items():
            total[c] += value * held.sum()
    return {c: float(v / len(oof.fold)) for c, v in total.items()}


def classes_to_switch_off(held_out: dict[int, float], baseline: dict[int, float]) -> tuple[int, ...]:
    """Classes whose tuned rules, scored on held-out folds, lose to never predicting the class (its all-empty
    pair score): typically a rare class the models have not learned, whose tuned thresholds over-fit a few images."""
    return tuple(c for c in CLASS_IDS if held_out[c] < baseline[c])


def switch_off(rules: Rules, classes: Sequence[int]) -> Rules:
    """The rules with ``classes`` never predicted (min_area above any mask's area); the others unchanged."""
    areas = tuple(OFF_AREA if c in classes else a for c, a in zip(CLASS_IDS, rules.min_area))
    return replace(rules, min_area=areas)


def run_search(
    oof: OOF, base: Rules, grid: Grid, modes: Sequence[str] = SEARCH_MODES, cv: bool = True
) -> dict[str, Any]:
    """Search every mode and choose what to write without over-fitting.

    Each mode is tuned on all folds (``tuned``) and, with ``cv``, tuned on the other folds and scored on the
    held-out one (``cross_validated``, the honest figure). A class whose tuned rules score below never predicting
    it on the held-out folds is switched off in that mode (``classes_off``; its held-out score is then its
    all-empty score). The mode with the best cross-validated score wins; if even that does not beat the untuned
    default rules on the same OOF, the defaults are kept (``decision`` says which, and why). Without ``cv`` the
    best in-sample mode is taken.
    """
    results = search(oof, grid, base, modes)
    # Without classifier OOF a classifier-gated default cannot be scored: it is scored ungated, and says so.
    usable_base = base if (not base.needs_classifier or oof.cls_prob is not None) else replace(base, gating="none")
    usable_base = replace(usable_base, bins=oof.bins)
    default = score_rules(oof, usable_base)
    default_mean = float(np.mean(list(default.values())))
    truth_empty = oof.truth_present() == 0
    baseline = {c: float(truth_empty[:, i].mean()) for i, c in enumerate(CLASS_IDS)}
    tuned_held_out = {m: cross_validated(oof, grid, base, m) for m in results} if cv else {}
    tuned_held_out = {m: v for m, v in tuned_held_out.items() if v}
    off = {m: classes_to_switch_off(v, baseline) for m, v in tuned_held_out.items()}
    honest = {
        m: {c: baseline[c] if c in off[m] else v for c, v in per_class.items()}
        for m, per_class in tuned_held_out.items()
    }
    honest_mean = {m: float(np.mean(list(v.values()))) for m, v in honest.items()}
    off_text = ""
    if honest:
        key = max(honest_mean, key=honest_mean.get)
        best_cv = honest_mean[key]
        keep_default = best_cv <= default_mean
        if off[key] and not keep_default:
            off_text = (
                f"; class(es) {list(off[key])} switched off: tuned on the other folds they scored "
                + ", ".join(f"{tuned_held_out[key][c]:.4f}" for c in off[key])
                + " on the held-out one, below never predicting them ("
                + ", ".join(f"{baseline[c]:.4f}" for c in off[key])
                + ")"
            )
        decision = (
            f"defaults kept: the best tuned mode ({results[key].mode}) scores {best_cv:.5f} on held-out folds, "
            f"not above the defaults' {default_mean:.5f}"
            if keep_default
            else f"tuned ({results[key].mode}): {best_cv:.5f} on held-out folds vs {default_mean:.5f} for the "
            f"defaults{off_text}"
        )
    else:
        key = max(results, key=lambda m: results[m].score)
        keep_default, decision = False, f"tuned ({results[key].mode}): best in-sample score (no cross-validation)"
    best = results[key]
    summary = {
        "n_images": int(len(oof.image_ids)),
        "bins": oof.bins,
        "best_mode": best.mode,
        "tuned": best.score,
        "tuned_per_class": best.per_class,
        "default": default_mean,
        "default_per_class": default,
        "default_gating": usable_base.gating,
        "baseline": float(truth_empty.mean()),
        "baseline_per_class": baseline,
        "modes": {
            m: {
                "score": r.score,
                "per_class": r.per_class,
                "rules": r.rules.to_dict(),
                **(
                    {
                        "cross_validated": honest_mean[m],
                        "cross_validated_per_class": honest[m],
                        "classes_off": list(off[m]),
                        "tuned_held_out_per_class": tuned_held_out[m],
                    }
                    if m in honest
                    else {}
                ),
            }
            for m, r in results.items()
        },
        "decision": decision,
        "written": "default" if keep_default else "tuned",
        "classes_off": [] if keep_default else list(off.get(key, ())),
    }
    if key in honest:
        summary["cross_validated"] = honest_mean[key]
        summary["cross_validated_per_class"] = honest[key]
    chosen = usable_base if keep_default else switch_off(best.rules, summary["classes_off"])
    return {"summary": summary, "best": best, "results": results, "chosen": chosen}


def default_rules(overrides: Sequence[str] = ()) -> Rules:
    """The rules ``python infer.py <overrides>`` applies (postprocess + gating [+ thresholds file])."""
    from ensemble.predict import load_rules
    from ensemble.settings import compose_infer, section

    cfg = compose_infer(overrides)
    plain = section(cfg, "postprocess", "ensemble")
    plain["thresholds"] = cfg.get("thresholds")
    return load_rules(plain)


def has_checkpoints(entries: Sequence[str | Path]) -> bool:
    """True when an entry is a training folder holding checkpoints (not only OOF files)."""
    return any(Path(e).is_dir() and next(Path(e).glob("**/checkpoints/best.pt"), None) is not None for e in entries)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = override_parser(
        "tuning.threshold_search",
        __doc__,
        "(e.g. postprocess=first_place tta=flips "
        "ensemble.gating.mode=soft): the OOF is predicted, and the default thresholds are, what infer.py "
        "does with them.",
    )
    parser.add_argument("runs", nargs="+", help="training output folders, OOF folders or OOF files; then overrides")
    parser.add_argument("--out", type=Path, required=True, help="thresholds file to write (JSON)")
    parser.add_argument(
        "--oof-dir",
        type=Path,
        help="where training folders' ensemble OOF is written (default: next to --out, <name>_oof/)",
    )
    parser.add_argument(
        "--from-files",
        action="store_true",
        help="score the runs' own OOF files (written at training, no TTA) instead of predicting the "
        "ensemble OOF the way infer.py predicts",
    )
    parser.add_argument("--modes", default=",".join(SEARCH_MODES), help=f"comma-separated, from {SEARCH_MODES}")
    parser.add_argument("--no-cv", action="store_true", help="skip the tune-on-other-folds estimate")
    args = parser.parse_intermixed_args(argv)
    runs, overrides = split_overrides(args.runs)
    if not runs:
        raise OOFError("give at least one training output folder or OOF file")
    check_writable(args.out, "--out")
    base = default_rules(overrides)
    entries = runs
    if has_checkpoints(runs) and not args.from_files:
        from ensemble.predict import set_threads
        from ensemble.settings import InferSettings, compose_infer, predictor_config, section
        from tuning.oof import ensemble_oof

        cfg = compose_infer(overrides)
        settings = InferSettings.from_config(section(cfg, "threads", "progress"))
        plain = predictor_config(cfg)
        set_threads(settings.threads)
        oof_dir = check_outputs(args.oof_dir or args.out.parent / f"{args.out.stem}_oof", "--oof-dir", files=OOF_FILES)
        made = ensemble_oof(runs, oof_dir, plain, base.bins, settings.progress)
        print(
            f"ensemble OOF (as infer.py predicts: TTA {list(plain['tta']['segmenter'])}, members "
            f"{made['members']}): {made['images']} images in {made['seconds']:.0f} s -> {oof_dir}"
        )
        entries = [oof_dir]
    oof = load_oof(entries)
    grid = Grid.make(oof.bins, area_scale=base.area_scale)
    out = run_search(oof, base, grid, args.modes.split(","), not args.no_cv)
    s = out["summary"]
    write_thresholds(
        args.out,
        out["chosen"],
        {"scores": s, "sources": [str(r) for r in runs], "oof": [str(e) for e in entries], "overrides": overrides},
    )
    print(
        f"OOF: {s['n_images']} images; all-empty {s['baseline']:.5f}; default thresholds "
        f"({s['default_gating']}) {s['default']:.5f}; tuned ({s['best_mode']}) {s['tuned']:.5f}"
        + (f"; tuned on other folds {s['cross_validated']:.5f}" if "cross_validated" in s else "")
    )
    for mode, r in s["modes"].items():
        cv = f" (other folds {r['cross_validated']:.5f})" if "cross_validated" in r else ""
        cv += f" classes off {r['classes_off']}" if r.get("classes_off") else ""
        print(f"  {mode:6s} {r['score']:.5f}{cv}  " + " ".join(f"c{c}={v:.4f}" for c, v in r["per_class"].items()))
    print(f"{s['decision']}\nthresholds: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
