"""Train one fold of one stage: ``python train.py stage=classifier fold=0 [experiment=classifier/demo]``.

Cross-validation: ``python train.py -m stage=classifier fold=0,1,2,3,4``; several GPUs:
``torchrun --nproc_per_node=N train.py stage=classifier fold=0``. Running the same command again
continues an interrupted run from its last checkpoint (outputs/train/<stage>/<run_name>/fold<k>/).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from common.errors import exit_on_user_error
from engine.run import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the best value of the stage's monitored metric (the objective for sweeps).
    A user error (SteelsegError) prints ``error: <message>`` and exits 2; a bug keeps its traceback."""
    with exit_on_user_error():
        result = train(cfg)
    return float(result.best_metrics[result.monitor])


if __name__ == "__main__":
    from common.errors import hydra_command_line_errors

    with hydra_command_line_errors():
        main()
