"""Every root config composes with every option of its groups; `common.prepare` runs on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROOTS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def group_options(group: str) -> list[str]:
    """Every option of a config group. The experiment group nests its options by stage (``experiment/joint/demo.yaml``
    is ``experiment=joint/demo``); elsewhere a subfolder is a group of its own (``hydra/launcher``)."""
    folder = CONFIGS / group
    files = folder.rglob("*.yaml") if group == "experiment" else folder.glob("*.yaml")
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in files)


EXPERIMENTS = group_options("experiment")


def compose_root(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose_with_every_group_option(root: str):
    base = compose_root(root, [])
    defaults = (
        [d for d in OmegaConf.to_container(base.hydra.runtime.choices).items() if not d[0].startswith("hydra/")]
        if "runtime" in base.hydra
        else []
    )
    for group, _ in defaults:
        if not (CONFIGS / group).is_dir():
            continue
        for option in group_options(group):
            overrides = [f"{group}={option}"]
            if (group, option) == ("data", "kaggle") or group == "experiment":  # competition recipes read Kaggle data
                overrides.append("data.root=/tmp/some-root")
            cfg = compose_root(root, overrides)
            OmegaConf.to_container(cfg, resolve=False)  # every node is well formed
            assert cfg.data.train_csv


def test_prepare_writes_folds_and_reports_the_all_empty_score(tmp_path: Path):
    from common.data_setup import summarize

    cfg = compose_root(
        "prepare",
        [f"paths.data_dir={tmp_path}", "data.synthetic.n_train=30", "data.synthetic.n_test=6", "data.folds.n_splits=3"],
    )
    text = summarize(cfg.data)
    assert "train: 30 images" in text and "test: 6 images" in text
    assert "all-empty submission scores 0." in text
    assert Path(cfg.data.folds.path).is_file()
    assert summarize(cfg.data) == text  # cached data and folds are reused unchanged


def test_the_experiment_group_is_found_recursively():
    assert {"joint/demo", "joint/quality", "classifier/competition", "segmenter/competition"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("root", ["train", "infer"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_train_and_infer(root: str, experiment: str):
    overrides = [f"experiment={experiment}", "data.root=/tmp/some-root", "fold=0"]
    cfg = compose_root(root, overrides if root == "train" else overrides[:-1])
    plain = OmegaConf.to_container(cfg, resolve=False)
    run_name = plain["run_name"]
    assert run_name and "${" not in str(run_name)
    if root == "infer":  # infer predicts with the recipe's own runs
        assert cfg.train_run == run_name
        assert list(cfg.checkpoints.runs) == [f"outputs/train/*/{run_name}"]
    else:  # the recipe's stage is the one it trains
        assert cfg.hydra.runtime.choices.stage == experiment.split("/")[0]


def test_every_root_key_of_the_infer_config_is_a_checked_setting_or_a_section():
    """A root key of configs/infer.yaml that no code reads is dead config; one read with ``cfg.get`` unchecked
    turns ``progress=abc`` into true. Each is a field of ``InferSettings`` (checked there), a section read where it
    is used, or ``train_run`` (an interpolation helper for ``checkpoints.runs``)."""
    from ensemble.settings import PREDICTOR_SECTIONS, InferSettings

    cfg = compose_root("infer", [])
    roots = {k for k in cfg if k != "hydra"}
    sections = {*PREDICTOR_SECTIONS, "data", "paths"}
    assert roots - sections - {"train_run"} == set(InferSettings.keys())
    defaults = InferSettings.from_config({})
    composed = InferSettings.from_config(OmegaConf.to_container(cfg, resolve=False))
    for key in ("runtime", "format", "evaluate", "num_workers", "channels_last", "amp", "batch_flips", "compile"):
        assert getattr(composed, key) == getattr(defaults, key), key  # the code's defaults are the config's
