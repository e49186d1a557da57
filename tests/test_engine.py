"""The training engine on a tiny dataset: outputs, determinism, resume after kill -9, 2-process gloo DDP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from classifier.metrics import classifier_metrics
from common.config import ConfigError
from engine.checkpoint import load_checkpoint, load_model
from engine.distributed import DistInfo, ShardSampler, WeightedShardSampler
from engine.loop import Engine, _loader_options
from engine.optim import cosine_with_warmup, one_cycle
from engine.run import train
from engine.settings import TrainerSettings, amp_settings, cpu_has_bf16
from engine.state import config_differences

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EPOCH_COLUMNS_IGNORED = ["time_s", "train_time_s", "train_images_per_s"]


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """A classifier run on the tiny dataset that takes about a second per epoch."""
    return [
        "stage=classifier",
        "data=kaggle",
        f"data.root={root}",
        "data.folds.n_splits=2",
        "fold=0",
        "classifier.model.name=test_resnet",
        "classifier.model.pretrained=false",
        "classifier.preprocess.size=[32,200]",
        "classifier.cache_images=true",
        "trainer.device=cpu",
        "trainer.epochs=2",
        "trainer.batch_size=4",
        "trainer.num_workers=0",
        "trainer.progress=false",
        "optimizer.lr.backbone=3e-3",
        "optimizer.lr.head=3e-3",
        *extra,
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_inprocess(root: Path, run_dir: Path, *extra: str):
    cfg = compose_train(tiny_overrides(root, f"paths.output_dir={run_dir}", *extra))
    return train(cfg, run_dir)


def epoch_table(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=EPOCH_COLUMNS_IGNORED)


def subprocess_env(threads: int = 1) -> dict[str, str]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads)
    )
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_fit_writes_the_run_folder_and_the_checkpoint_rebuilds_alone(tiny_dataset: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_inprocess(tiny_dataset, run_dir)
    assert result.epochs_done == 2 and result.monitor == "auc_mean"
    table = epoch_table(run_dir)
    assert table["epoch"].tolist() == [0, 1]
    assert {"train_loss", "val_loss", "auc_1", "auc_mean", "f1_mean", "any_acc", "lr_backbone", "lr_head"} <= set(table)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    model, payload = load_model(run_dir / "checkpoints/best.pt", "classifier")
    meta = payload["meta"]
    assert meta["stage"] == "classifier" and meta["fold"] == 0 and meta["monitor"] == "auc_mean"
    assert meta["class_ids"] == [1, 2, 3, 4] and meta["epoch"] == result.best_epoch
    assert meta["preprocess"]["channels"] == 3 and len(meta["preprocess"]["mean"]) == 3
    assert payload["model"]["_target_"] == "classifier.model.create_classifier"

    # The OOF probabilities are the rebuilt model's outputs on raw images pre-processed from the meta alone.
    from common.images import read_image
    from common.preprocess import Preprocess

    oof = pd.read_csv(run_dir / "oof_classifier.csv", comment="#")
    assert list(oof.columns) == ["ImageId", "fold", "prob_1", "prob_2", "prob_3", "prob_4"]
    assert (oof["fold"] == 0).all() and len(oof) == 8
    preprocess = Preprocess.from_meta(meta["preprocess"])
    images = [read_image(tiny_dataset / "train_images" / image_id) for image_id in oof["ImageId"]]
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.stack([torch.from_numpy(preprocess(i)) for i in images]))).numpy()
    np.testing.assert_allclose(probs, oof[["prob_1", "prob_2", "prob_3", "prob_4"]].to_numpy(), atol=2e-5)

    # Started again when finished: nothing is retrained.
    again = run_inprocess(tiny_dataset, run_dir)
    assert again.best_metrics == result.best_metrics and len(epoch_table(run_dir)) == 2


def test_same_seed_same_metrics(tiny_dataset: Path, tmp_path: Path):
    run_inprocess(tiny_dataset, tmp_path / "a", "trainer.epochs=1")
    run_inprocess(tiny_dataset, tmp_path / "b", "trainer.epochs=1")
    pd.testing.assert_frame_equal(epoch_table(tmp_path / "a"), epoch_table(tmp_path / "b"))
    run_inprocess(tiny_dataset, tmp_path / "c", "trainer.epochs=1", "seed=7")
    assert not epoch_table(tmp_path / "a")["train_loss"].equals(epoch_table(tmp_path / "c")["train_loss"])


def test_cpu_runs_train_channels_last_on_the_configured_threads(tiny_dataset: Path, tmp_path: Path, monkeypatch):
    """trainer.threads sets torch's CPU threads (1 per fold when folds train side by side) and channels_last
    applies on CPU too (it is 1.25x faster there); a bad thread count is a one-line config error."""
    seen = {}
    original = Engine.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        weight = next(p for p in self.model.parameters() if p.ndim == 4 and p.shape[-1] > 1)
        seen.update(
            threads=torch.get_num_threads(), channels_last=weight.is_contiguous(memory_format=torch.channels_last)
        )

    monkeypatch.setattr(Engine, "__init__", spy)
    before = torch.get_num_threads()
    try:
        run_inprocess(tiny_dataset, tmp_path / "run", "trainer.epochs=1", "trainer.threads=1")
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 1, "channels_last": True}
    with pytest.raises(ConfigError, match=r"trainer\.threads: expected a whole number >= 1"):
        TrainerSettings.from_config({"threads": 0})


def test_cpu_mixed_precision_is_bf16_autocast_and_float16_is_refused(tiny_dataset: Path, tmp_path: Path):
    """trainer.amp=true on the CPU trains under bf16 autocast (1.4x faster on CPUs with bf16 units, see
    benchmarks/bench_train_cpu.py); float16 there is a one-line error naming the key and the fix."""
    result = run_inprocess(
        tiny_dataset, tmp_path / "bf16", "trainer.epochs=1", "trainer.amp=true", "trainer.amp_dtype=bfloat16"
    )
    assert np.isfinite(epoch_table(tmp_path / "bf16")["train_loss"]).all() and result.best_path.is_file()
    with pytest.raises(ConfigError, match=r"trainer\.amp: float16 mixed precision needs a CUDA device; .*bfloat16"):
        run_inprocess(
            tiny_dataset, tmp_path / "fp16", "trainer.epochs=1", "trainer.amp=true", "trainer.amp_dtype=float16"
        )


def test_bf16_autocast_falls_back_to_float32_on_cpus_without_bf16_units():
    """The recipes ask for CPU bf16 autocast; a CPU without bf16 units trains in float32 and says so."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    settings = TrainerSettings.from_config({"amp": True, "amp_dtype": "bfloat16"})
    assert amp_settings(settings, cpu, bf16_cpu=lambda: True) == (True, torch.bfloat16)
    with pytest.warns(UserWarning, match=r"trainer\.amp: this CPU has no bf16 units .* float32"):
        assert amp_settings(settings, cpu, bf16_cpu=lambda: False) == (False, torch.bfloat16)
    assert amp_settings(settings, cuda, bf16_cpu=lambda: False) == (True, torch.bfloat16)  # GPUs: not asked
    assert amp_settings(TrainerSettings.from_config({}), cpu, bf16_cpu=lambda: False)[0] is False  # auto: off
    assert isinstance(cpu_has_bf16(), bool)


def test_amp_dtype_auto_is_bf16_where_the_device_has_it_and_the_loaders_keep_a_gpu_fed():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = TrainerSettings.from_config({})
    assert auto.amp_dtype == "auto"
    assert amp_settings(auto, cuda, bf16_cuda=lambda: True) == (True, torch.bfloat16)  # Ampere and later
    assert amp_settings(auto, cuda, bf16_cuda=lambda: False) == (True, torch.float16)  # older GPUs: GradScaler
    on = TrainerSettings.from_config({"amp": True})
    assert amp_settings(on, cpu, bf16_cpu=lambda: True, bf16_cuda=lambda: False) == (True, torch.bfloat16)
    with pytest.raises(ConfigError, match=r"trainer\.amp_dtype: expected auto, float16 or bfloat16"):
        TrainerSettings.from_config({"amp_dtype": "fp8"})
    assert _loader_options(0, cpu) == {"num_workers": 0, "pin_memory": False}
    assert _loader_options(8, cuda) == {
        "num_workers": 8,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 4,
    }


def test_resume_refuses_a_folder_trained_with_another_config(tiny_dataset: Path, tmp_path: Path):
    run_inprocess(tiny_dataset, tmp_path / "run", "trainer.epochs=1")
    with pytest.raises(ConfigError, match=r"trainer\.batch_size"):
        run_inprocess(tiny_dataset, tmp_path / "run", "trainer.epochs=1", "trainer.batch_size=2")
    assert config_differences({"a": {"b": 1}, "resume": True}, {"a": {"b": 2}, "resume": False}) == ["a.b"]


def test_killed_run_continues_from_its_last_checkpoint(tiny_dataset: Path, tmp_path: Path):
    run_dir = tmp_path / "killed"
    command = [
        sys.executable,
        "train.py",
        *tiny_overrides(tiny_dataset, "trainer.epochs=4"),
        f"hydra.run.dir={run_dir}",
    ]
    last = run_dir / "checkpoints/last.pt"
    env = subprocess_env(torch.get_num_threads())  # same threads as the in-process run compared below
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900  # a hang guard only: a loaded 2-core machine can take minutes per epoch
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read().decode()
    assert last.is_file(), "no last.pt after 900 s: training hangs"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved_epoch = load_checkpoint(last, "classifier")["train_state"]["epoch"]
    assert saved_epoch < 3

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"at epoch {saved_epoch + 1}" in done.stdout
    table = epoch_table(run_dir)
    assert table["epoch"].tolist() == [0, 1, 2, 3]
    assert load_checkpoint(last, "classifier")["train_state"]["finished"]

    # The resumed run trained exactly like an uninterrupted one.
    run_inprocess(tiny_dataset, tmp_path / "straight", "trainer.epochs=4")
    pd.testing.assert_frame_equal(table, epoch_table(tmp_path / "straight"), rtol=1e-4, atol=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run_reduces_metrics_over_ranks(tiny_dataset: Path, tmp_path: Path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "train.py",
        *tiny_overrides(tiny_dataset),
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("epoch 1: train_loss") == 1  # only rank 0 reports and writes
    table = epoch_table(run_dir)
    assert table["epoch"].tolist() == [0, 1]
    oof = pd.read_csv(run_dir / "oof_classifier.csv", comment="#")
    folds = pd.read_csv(tiny_dataset / "folds_k2_seed42.csv")
    assert sorted(oof["ImageId"]) == sorted(folds.loc[folds["fold"] == 0, "ImageId"])

    # The logged validation metrics (each rank saw half the images) equal one process over all of them.
    assert load_checkpoint(run_dir / "checkpoints/last.pt", "classifier")["meta"]["epoch"] == 1
    best_epoch = load_checkpoint(run_dir / "checkpoints/best.pt", "classifier")["meta"]["epoch"]
    logged = table.set_index("epoch").loc[best_epoch]  # the OOF file holds the best model's outputs
    labels = pd.read_csv(tiny_dataset / "train.csv")
    truth = np.array(
        [[int(((labels.ImageId == i) & (labels.ClassId == c)).any()) for c in (1, 2, 3, 4)] for i in oof["ImageId"]]
    )
    recomputed = classifier_metrics(oof[["prob_1", "prob_2", "prob_3", "prob_4"]].to_numpy(), truth, [0.5] * 4)
    assert recomputed["auc_mean"] == pytest.approx(logged["auc_mean"], abs=1e-4)
    assert recomputed["any_acc"] == pytest.approx(logged["any_acc"], abs=1e-6)


def test_samplers_split_over_ranks():
    ranks = [DistInfo(rank=r, world_size=2) for r in (0, 1)]
    shards = [list(ShardSampler(7, info)) for info in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(7))
    weights = [1.0] * 6 + [0.0] * 4
    draws = []
    for info in ranks:
        sampler = WeightedShardSampler(weights, info, seed=3)
        sampler.set_epoch(2)
        draws.append(list(sampler))
        assert list(sampler) == draws[-1] and len(draws[-1]) == len(sampler) == 5
    assert all(i < 6 for d in draws for i in d)
    with pytest.raises(ValueError):
        WeightedShardSampler([0.0, 0.0], ranks[0])
    # a fixed number of draws per epoch, whatever the number of items (trainer.samples_per_epoch)
    fixed = WeightedShardSampler([1.0] * 3, ranks[1], seed=1, num_samples=25)
    assert len(fixed) == len(list(fixed)) == 13 and set(fixed) <= {0, 1, 2}


def test_schedules_warm_up_and_peak_at_the_configured_lr():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params, "lr": 1.0}])
    sched = cosine_with_warmup(opt, total_steps=100, warmup=10, min_lr_ratio=0.0)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(1.0)
    assert lrs[99] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    opt = torch.optim.SGD([{"params": params, "lr": 0.5}])
    sched = one_cycle(opt, total_steps=20, pct_start=0.5)
    peak = 0.0
    for _ in range(20):
        peak = max(peak, opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert peak == pytest.approx(0.5, rel=1e-3)
