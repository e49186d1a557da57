"""Every root config composes with every option of its groups; `common.prepare` runs on tiny data."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROOTS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_root(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose_with_every_group_option(root: str):
    base = compose_root(root, [])
    defaults = [d for d in OmegaConf.to_container(base.hydra.runtime.choices).items()
                if not d[0].startswith("hydra/")] if "runtime" in base.hydra else []
    for group, _ in defaults:
        if not (CONFIGS / group).is_dir():
            continue
        for option in group_options(group):
            overrides = [f"{group}={option}"]
            if group == "data" and option == "kaggle":
                overrides.append("data.root=/tmp/some-root")
            cfg = compose_root(root, overrides)
            OmegaConf.to_container(cfg, resolve=False)  # every node is well formed
            assert cfg.data.train_csv


def test_prepare_writes_folds_and_reports_the_all_empty_score(tmp_path: Path):
    from common.data_setup import summarize

    cfg = compose_root("prepare", [f"paths.data_dir={tmp_path}", "data.synthetic.n_train=30",
                                   "data.synthetic.n_test=6", "data.folds.n_splits=3"])
    text = summarize(cfg.data)
    assert "train: 30 images" in text and "test: 6 images" in text
    assert "all-empty submission scores 0." in text
    assert Path(cfg.data.folds.path).is_file()
    assert summarize(cfg.data) == text                      # cached data and folds are reused unchanged
