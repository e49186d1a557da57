"""``python infer.py`` -> submission.csv from trained checkpoints (see configs/infer.yaml).

Examples: ``python infer.py checkpoints.classifier=[multirun/cls] checkpoints.segmenter=[multirun/seg]
thresholds=thresholds.json evaluate=true``; installed (``pip install ".[runtime]"``), the same command is
``steelseg-infer runtime=onnx bundle=BUNDLE ...`` (configs/ is package data beside this module). Restarts itself
once with the fast glibc allocator settings (they only work when set before Python starts), before anything heavy
is imported.
"""

import os
import sys

FAST_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}


def _reexec_with_fast_env() -> None:
    """Re-run this command with FAST_ENV added (values already set by the user are kept)."""
    missing = {k: v for k, v in FAST_ENV.items() if k not in os.environ}
    if missing and not os.environ.get("STEELSEG_NO_REEXEC"):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})


if __name__ == "__main__":
    _reexec_with_fast_env()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
def main(cfg: DictConfig) -> float | None:
    """A user error (SteelsegError) prints ``error: <message>`` and exits 2; a bug keeps its traceback."""
    from common.config import to_plain
    from common.errors import exit_on_user_error
    from ensemble.run import infer

    with exit_on_user_error():
        summary = infer(to_plain(cfg))
    return summary.get("score", {}).get("score")


def cli() -> None:
    """The command: fast allocator settings, then the Hydra app with its command-line errors as one line."""
    _reexec_with_fast_env()
    from common.errors import hydra_command_line_errors

    with hydra_command_line_errors():
        main()


if __name__ == "__main__":
    cli()
