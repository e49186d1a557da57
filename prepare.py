"""``python prepare.py [data=kaggle data.root=DIR]``: generate (synthetic) or check (real) the data, write the
folds, and print per-class counts, labels per image, mask areas, positives per fold and class, and the Kaggle
score of an all-empty submission (the baseline every score is reported beside)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    from common.data_setup import summarize
    from common.errors import exit_on_user_error

    with exit_on_user_error():
        print(summarize(cfg.data))


if __name__ == "__main__":
    from common.errors import hydra_command_line_errors

    with hydra_command_line_errors():
        main()
