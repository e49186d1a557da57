"""Rules with one home, checked where they are used: the CV report predicts its holdout with infer.py's predictor
(``ensemble.predict.build_predictor``: reducer and classifier TTA included)."""

from __future__ import annotations

import pytest

from analysis.report import holdout_table
from ensemble_helpers import image_folder, save_tiny
from scoring.rules import Rules


def test_the_report_holdout_predicts_with_the_infer_configs_reducer_and_classifier_tta(tmp_path, monkeypatch):
    import ensemble.predict as predict

    built, original = [], predict.build_predictor

    def spy(cfg, members=None, rules=None):
        built.append(original(cfg, members, rules))
        return built[-1]

    monkeypatch.setattr(predict, "build_predictor", spy)
    save_tiny(tmp_path / "run" / "cls" / "checkpoints" / "best.pt", "classifier", size=[64, 400])
    save_tiny(tmp_path / "run" / "seg" / "checkpoints" / "best.pt", "segmenter", size=[64, 400])
    images, truth = image_folder(tmp_path / "holdout", 2)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    infer = {
        "tta": {"classifier": ["none", "hflip", "vflip"], "segmenter": ["none", "hflip"]},
        "ensemble": {"reducer": "max"},
        "device": "cpu",
        "channels_last": True,
    }
    rules = Rules(gating="veto")
    table, _ = holdout_table(
        [tmp_path / "run"], images, tmp_path / "truth.csv", rules, Rules(gating="none"), infer, limit=2
    )
    assert table["variant"].tolist()[:2] == [
        "ensemble, TTA none+hflip, gated (veto), tuned",
        "ensemble, no TTA, gated, tuned",
    ]
    full, no_tta = built[0], built[1]
    assert full.reducer == "max" and len(full.tta_classifier) == 3 and len(full.tta_segmenter) == 2
    assert no_tta.reducer == "max" and len(no_tta.tta_classifier) == len(no_tta.tta_segmenter) == 1
    assert all(p.reducer == "max" for p in built) and len(built) == len(table)


@pytest.mark.parametrize("exchange", [True, False])
def test_a_finished_folder_replaces_the_old_one_whole(tmp_path, monkeypatch, exchange):
    """``common.io.replace_folder`` (the bundle write): the new folder's files only, no old file left beside them,
    no temp folder left behind; without an atomic swap the two-rename fallback gives the same result."""
    import os

    from common import io

    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.onnx").write_text("old")
    old_umask = os.umask(0o022)
    try:
        staged = io.temp_dir_beside(out)
    finally:
        os.umask(old_umask)
    (staged / "new.onnx").write_text("new")
    assert io.replace_folder(staged, out) == out
    assert [p.name for p in out.iterdir()] == ["new.onnx"] and (out.stat().st_mode & 0o777) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    fresh = io.temp_dir_beside(tmp_path / "second")
    io.replace_folder(fresh, tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "second"]


def test_gating_mode_names_come_from_the_registry():
    """``scoring.gating.GATES`` is the one list of modes: the config's comment, every ensemble config's mode, the
    README's option list and the ``Rules`` doc name exactly those; the search modes and those needing a
    classifier are read off the gates."""
    import re
    from pathlib import Path

    import yaml

    from scoring.gating import CLASSIFIER_MODES, GATES, MODES, SEARCH_MODES
    from scoring.rules import Rules

    repo = Path(__file__).resolve().parents[1]
    default = (repo / "configs" / "ensemble" / "default.yaml").read_text()
    comment = re.search(r"^\s*mode:\s*\w+\s*#\s*([\w |]+)$", default, re.M).group(1)
    assert sorted(m.strip() for m in comment.split("|")) == sorted(MODES)
    for path in (repo / "configs" / "ensemble").glob("*.yaml"):
        mode = (yaml.safe_load(path.read_text()).get("gating") or {}).get("mode")
        assert mode is None or mode in GATES, f"{path.name}: gating.mode {mode!r}"
    readme = re.search(r"ensemble\.gating\.mode=(\w+(?:\|\w+)+)", (repo / "README.md").read_text()).group(1)
    assert sorted(readme.split("|")) == sorted(MODES)
    doc = re.search(r"gating \(``ensemble.gating``\): ([\w |]+);", Rules.__doc__).group(1)
    assert sorted(m.strip() for m in doc.split("|")) == sorted(MODES)
    assert set(SEARCH_MODES) == set(MODES) - {"label"}
    assert (
        {m for m in MODES if Rules(gating=m).needs_classifier}
        == set(CLASSIFIER_MODES)
        == {name for name, gate in GATES.items() if gate.needs_classifier}
    )


def test_unknown_keys_are_refused_by_one_helper():
    """``common.config.check_known``: the sampling, preprocessing and ``checkpoints`` nodes name the typo and the
    known keys in one line."""
    from common.config import ConfigError, check_known
    from common.preprocess import Preprocess
    from ensemble.predict import member_entries
    from scoring.rules import RulesError

    check_known({"mode": 1}, ("mode", "power"), "x")
    with pytest.raises(ConfigError, match=r"^x: unknown key\(s\) \['pwer'\]; known: mode, power$"):
        check_known({"mode": 1, "pwer": 2}, ("mode", "power"), "x")
    with pytest.raises(
        ConfigError, match=r"^preprocess: unknown key\(s\) \['sise'\]; known: channels, mean, std, size$"
    ):
        Preprocess.from_config({"sise": [1, 2]})
    with pytest.raises(
        RulesError, match=r"^checkpoints: unknown key\(s\) \['join'\]; known: runs, classifier, segmenter"
    ):
        member_entries({"join": []})
