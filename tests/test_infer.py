"""infer end to end on tiny checkpoints, plus the bad inputs that must stop it with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from common.config import to_plain
from common.errors import DatasetError, ImageError
from common.inspections import connect, query
from common.submission import validate
from engine.checkpoint import CheckpointError
from ensemble.predict import predict_images
from ensemble.run import infer
from ensemble_helpers import image_folder, run_folder, save_tiny
from scoring.rules import Rules, RulesError, write_thresholds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("infer")
    images, truth = image_folder(base / "images", 3)
    truth.to_csv(base / "truth.csv", index=False)
    return {
        "base": base,
        "images": images,
        "truth": base / "truth.csv",
        "cls": run_folder(base / "cls", "classifier", 2),
        "seg": save_tiny(base / "seg.pt", "segmenter"),
    }


def config(s, tmp_path, *overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "infer",
            overrides=[
                "checkpoints.runs=[]",
                f"checkpoints.classifier=[{s['cls']}]",
                f"checkpoints.segmenter=[{s['seg']}]",
                f"images={s['images']}",
                f"truth={s['truth']}",
                f"paths.output_dir={tmp_path}",
                "tta=none",
                "progress=false",
                "threads=1",
                "data.check_images=header",
                *overrides,
            ],
        )
    return to_plain(cfg)


def test_infer_end_to_end(setup, tmp_path, capsys):
    cfg = config(
        setup,
        tmp_path,
        "evaluate=true",
        f"store={tmp_path}/store.sqlite",
        "run_id=t1",
        "ensemble.gating.mode=soft",
        "postprocess.min_area=[0,0,0,0]",
        "tta=hflip",
    )
    summary = infer(cfg)
    out = capsys.readouterr().out
    assert "all-empty" in out and "class 4" in out and "overall" in out
    assert summary["images"] == 3 and 0 <= summary["score"]["score"] <= 1
    sub = tmp_path / "submission.csv"
    assert validate(sub, ["img000.jpg", "img001.jpg", "img002.jpg"]) == []
    from common.annotations import read_annotations
    from common.metrics import kaggle_score

    ids = ["img000.jpg", "img001.jpg", "img002.jpg"]
    whole = kaggle_score(read_annotations(sub).rows, read_annotations(setup["truth"]).rows, ids)
    assert summary["score"]["score"] == pytest.approx(whole.overall)  # the streaming score is the file's score
    stored = query(connect(tmp_path / "store.sqlite"), source="pred:t1")
    assert set(stored["image_id"]) == {"img000.jpg", "img001.jpg", "img002.jpg"}
    # the plain function the dashboard calls gives the same masks as the file
    rows = predict_images([setup["images"] / "img000.jpg"], cfg)
    assert len(rows) == 4 and list(rows["ClassId"]) == [1, 2, 3, 4]


def test_gating_skips_segmenter_and_old_format(setup, tmp_path):
    thresholds = write_thresholds(tmp_path / "t.json", Rules(classifier_threshold=1.0, gating="veto"))
    summary = infer(config(setup, tmp_path, f"thresholds={thresholds}", "format=old"))
    assert summary["segmenter_passes_skipped"] == 1.0 and summary["masks"] == 0
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageId_ClassId,EncodedPixels" and len(lines) == 13


def test_bad_inputs(setup, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images"):
        infer(config(setup, tmp_path, f"images={empty}"))
    wrong = tmp_path / "wrong"
    image_folder(wrong, 1)
    import cv2
    import numpy as np

    cv2.imwrite(str(wrong / "small.jpg"), np.zeros((100, 200), np.uint8))
    with pytest.raises(ImageError, match="small.jpg: image is 100x200"):
        infer(config(setup, tmp_path, f"images={wrong}"))
    unreadable = tmp_path / "unreadable"
    image_folder(unreadable, 1)
    (unreadable / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match="junk.jpg"):
        infer(config(setup, tmp_path, f"images={unreadable}"))
    with pytest.raises(CheckpointError, match="stage 'classifier', expected 'segmenter'"):
        infer(config(setup, tmp_path, f"checkpoints.segmenter=[{setup['cls']}]"))
    with pytest.raises(CheckpointError, match="no \\*\\*/checkpoints/best.pt"):
        infer(config(setup, tmp_path, f"checkpoints.classifier=[{empty}]"))
    other = tmp_path / "other.json"
    other.write_text('{"format": "steelseg-thresholds", "version": 1, "class_ids": [1, 2, 3], "classes": {}}')
    with pytest.raises(RulesError, match="other.json: thresholds are for classes"):
        infer(config(setup, tmp_path, f"thresholds={other}"))
    with pytest.raises(RulesError, match="needs classifier"):
        infer(config(setup, tmp_path, "checkpoints.classifier=[]"))
    assert not (tmp_path / "submission.csv").exists()


def test_failure_mid_stream_leaves_no_submission(setup, tmp_path):
    folder = tmp_path / "trunc"
    image_folder(folder, 5)
    data = (folder / "img004.jpg").read_bytes()
    (folder / "img004.jpg").write_bytes(data[: len(data) // 2])  # header fine, body truncated
    with pytest.raises(ImageError, match="img004.jpg: truncated"):
        infer(config(setup, tmp_path, f"images={folder}", "batch_size=2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunc"]


def test_infer_cli_reexecs_with_fast_allocator(setup, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = (
        "import os, runpy, sys; sys.argv = ['infer.py', '--cfg', 'job']; "
        "print('MALLOC', os.environ.get('MALLOC_MMAP_MAX_')); runpy.run_path('infer.py', run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # the first process has no MALLOC_ setting; after execve the re-run `python infer.py` prints the config
    assert out.returncode == 0, out.stderr
    assert "MALLOC None" in out.stdout and "checkpoints:" in out.stdout
    sub = tmp_path / "cli.csv"
    done = subprocess.run(
        [
            sys.executable,
            "infer.py",
            "checkpoints.runs=[]",
            f"checkpoints.classifier=[{setup['cls']}]",
            f"checkpoints.segmenter=[{setup['seg']}]",
            f"images={setup['images']}",
            f"output={sub}",
            f"hydra.run.dir={tmp_path}/run",
            "tta=none",
            "progress=false",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert validate(sub, ["img000.jpg", "img001.jpg", "img002.jpg"]) == []


def test_members_at_lower_input_size(setup, tmp_path):
    """Checkpoints trained on resized input get resized images; their masks come back at 256x1600."""
    seg = save_tiny(tmp_path / "seg_small.pt", "segmenter", size=[128, 800])
    cls = save_tiny(tmp_path / "cls_small.pt", "classifier", size=[64, 400])
    cfg = config(
        setup,
        tmp_path,
        f"checkpoints.segmenter=[{seg},{setup['seg']}]",
        f"checkpoints.classifier=[{cls}]",
        "ensemble.gating.mode=none",
        "postprocess.min_area=[0,0,0,0]",
    )
    rows = predict_images([setup["images"] / "img001.jpg"], cfg)
    assert len(rows) == 4
    from common.rle import decode

    assert all(decode(r).shape == (256, 1600) for r in rows["EncodedPixels"])
