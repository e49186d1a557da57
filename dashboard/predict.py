"""Predictions on demand: run the inference command on a few images in a temp folder, read its submission.

The command is a template (``--predict-cmd``) with placeholders ``{python}`` (this interpreter),
``{images}`` (a temp folder holding copies of the chosen images), ``{out}`` (an empty temp folder) and
``{submission}`` (``{out}/submission.csv``, the file the adapter reads back, either Kaggle format).
The default runs ``infer.py`` (keys ``images`` and ``output`` of configs/infer.yaml) from the repository root;
add the checkpoints, e.g. ``... checkpoints.classifier=[runs/cls] checkpoints.segmenter=[runs/seg] thresholds=t.json``.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common.annotations import Annotations, read_annotations
from common.errors import SteelsegError

DEFAULT_COMMAND = "{python} infer.py images={images} output={submission} evaluate=false"
REPO_ROOT = Path(__file__).resolve().parents[1]  # where infer.py lives: the default working folder


class PredictionError(SteelsegError, RuntimeError):
    """The inference command failed or wrote no usable submission; the message says which and why."""


def build_command(template: str, images: Path, out: Path) -> list[str]:
    """Split the template like a shell, then fill the placeholders of each word (paths may hold spaces)."""
    values = {"python": sys.executable, "images": str(images), "out": str(out), "submission": str(out / "submission.csv")}
    try:
        return [word.format(**values) for word in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise PredictionError(f"bad predict command template {template!r}: {exc!r} "
                              f"(placeholders: {', '.join('{' + k + '}' for k in values)})") from exc


def predict_images(image_paths: list[Path], template: str = DEFAULT_COMMAND, cwd: Path | str | None = REPO_ROOT,
                   timeout_s: float = 600.0) -> Annotations:
    """Run the command on copies of the images; return the predictions for exactly those images."""
    if not image_paths:
        raise PredictionError("no images chosen")
    with tempfile.TemporaryDirectory(prefix="steelseg-predict-") as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "out"
        images.mkdir()
        out.mkdir()
        for path in image_paths:
            shutil.copyfile(path, images / Path(path).name)
        command = build_command(template, images, out)
        try:
            done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError as exc:
            raise PredictionError(f"cannot start {command[0]!r}: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise PredictionError(f"{shlex.join(command)} ran past {timeout_s:.0f} s") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise PredictionError(f"{shlex.join(command)} exited with status {done.returncode}:\n{tail}")
        submission = out / "submission.csv"
        if not submission.is_file():
            raise PredictionError(f"{shlex.join(command)} wrote no {submission.name} into {{out}}")
        annotations = read_annotations(submission)
    names = {Path(p).name for p in image_paths}
    extra = sorted(set(annotations.image_ids) - names)
    if extra:
        raise PredictionError(f"the submission names images that were not chosen, e.g. {extra[:3]}")
    return annotations
