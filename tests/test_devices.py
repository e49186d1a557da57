"""Everything a stage owns follows the model's device. The ``meta`` device stands in for a GPU: a tensor left on
the CPU (a loss weight kept as a plain attribute, a ``torch.tensor(...)`` made without a device) meets a meta
tensor in some operation and fails there, as it would on the first CUDA batch. Stages are discovered from
``configs/stage/``; each builds through ``debug=smoke`` on a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader

from classifier.metrics import ClassifierMetric
from engine.optim import build_optimizer, build_scheduler
from engine.run import make_stage
from ensemble.members import load_members
from ensemble.predict import ImageFiles, Predictor
from ensemble_helpers import image_folder, save_tiny
from scoring.reduce import REDUCERS
from scoring.rules import Rules
from scoring.tta import transforms

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = sorted(p.stem for p in (CONFIGS / "stage").glob("*.yaml"))
META = torch.device("meta")


def stage_config(stage: str, root: Path, out: Path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"stage={stage}",
                "debug=smoke",
                "data=kaggle",
                f"data.root={root}",
                "fold=0",
                f"paths.output_dir={out}",
            ],
        )


def loose_tensors(module: nn.Module) -> list[str]:
    """Tensor attributes that are neither parameters nor buffers: ``.to(device)`` would leave them behind."""
    return [
        f"{name or type(module).__name__}.{key}"
        for name, sub in module.named_modules()
        for key, value in vars(sub).items()
        if isinstance(value, torch.Tensor)
    ]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """(StageSpec, composed config) per stage, built once on a 16-image dataset."""
    from conftest import write_tiny_dataset

    base = tmp_path_factory.mktemp("devices")
    root = write_tiny_dataset(base / "tiny")
    return {stage: (make_stage(cfg := stage_config(stage, root, base / stage)), cfg) for stage in STAGES}


@pytest.mark.parametrize("stage", STAGES)
def test_the_loss_is_a_module_whose_tensors_are_buffers(specs, stage):
    spec, _ = specs[stage]
    assert isinstance(spec.loss, nn.Module), f"{stage}: the engine moves only nn.Module losses to its device"
    assert loose_tensors(spec.loss) == []
    weights = [name for name, _ in spec.loss.named_buffers() if name.endswith("pos_weight")]
    assert weights, f"{stage}: the configured pos_weight should be a buffer of the loss"
    spec.loss.to(META)
    assert {b.device for b in spec.loss.buffers()} == {META}


@pytest.mark.parametrize("stage", STAGES)
def test_one_training_step_on_the_meta_device(specs, stage):
    spec, cfg = specs[stage]
    model = spec.model.to(META).to(memory_format=torch.channels_last)
    spec.loss.to(META)
    assert loose_tensors(model) == []
    batch = next(iter(DataLoader(spec.train_set, batch_size=2)))
    images = batch["image"].to(META).contiguous(memory_format=torch.channels_last)
    targets = batch["target"].to(META)
    groups = spec.param_groups(model) if spec.param_groups else {"head": list(model.parameters())}
    optimizer = build_optimizer(groups, cfg.optimizer)
    scheduler = build_scheduler(cfg.scheduler, optimizer, 10)
    model.train()
    loss = spec.loss(model(images), targets)
    assert loss.device == META and loss.ndim == 0
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    assert {p.device for p in model.parameters()} == {META}
    assert all(p.grad is None or p.grad.device == META for p in model.parameters())
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        assert out.device == META


def test_the_classifier_metric_accumulates_on_the_device():
    metric = ClassifierMetric([0.5] * 4)
    metric.update(torch.zeros(3, 4, device=META), {"target": torch.ones(3, 4)})
    assert metric.probs[0].device == META and metric.labels[0].device == META


@pytest.mark.parametrize("reducer", sorted(REDUCERS))
def test_ensemble_tta_and_reducers_stay_on_the_device(tmp_path, reducer):
    images, _ = image_folder(tmp_path / "images", 2)
    segmenters = load_members([save_tiny(tmp_path / f"seg{i}.pt", "segmenter", seed=i) for i in range(2)], "segmenter")
    predictor = Predictor(
        classifiers=[],
        segmenters=segmenters,
        rules=Rules(gating="none"),
        tta_segmenter=transforms(["none", "hflip", "vflip", "both"]),
        reducer=reducer,
        device=META,
    )
    batch = next(iter(DataLoader(ImageFiles(sorted(images.iterdir()), predictor.preprocesses), batch_size=2)))
    cls_prob, seg, keep = predictor.probabilities(batch["inputs"], gate=False)
    assert cls_prob is None and keep.tolist() == [0, 1]
    assert seg.device == META and tuple(seg.shape) == (2, 4, 256, 1600)


@pytest.mark.parametrize(
    "name, count, rank, expected",
    [
        ("auto", 0, None, "cpu"),
        ("auto", 1, None, "cuda"),
        ("auto", 2, 1, "cuda:1"),
        ("cpu", 2, None, "cpu"),
        ("cuda", 1, None, "cuda"),
        ("cuda", 2, 0, "cuda:0"),
        ("cuda:1", 2, None, "cuda:1"),
    ],
)
def test_a_device_setting_names_the_device_asked_for(name, count, rank, expected):
    from common.devices import choose_device

    assert choose_device(name, count, local_rank=rank) == expected


@pytest.mark.parametrize(
    "name, count, message",
    [
        ("cuda", 0, "device: 'cuda' requested but torch sees no CUDA device; set device=cpu or device=auto"),
        ("cuda:0", 0, "device: 'cuda:0' requested but torch sees no CUDA device"),
        ("cuda:2", 2, "device: cuda:2 requested but torch sees 2 CUDA device(s), cuda:0 to cuda:1"),
        ("gpu", 1, "device: expected cpu, cuda, cuda:<index> or auto, got 'gpu'"),
    ],
)
def test_a_device_torch_cannot_see_is_a_user_error_not_the_cpu(name, count, message):
    from common.devices import choose_device
    from common.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        choose_device(name, count)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("where", ["infer", "trainer"])
def test_every_device_site_refuses_cuda_without_a_gpu(monkeypatch, where):
    """The predictor builder (infer.py, the ensemble OOF, the CV report, the dashboard) and training share the rule:
    with no CUDA device, ``cuda`` stops with a user error (the ensemble OOF used to run on the CPU instead)."""
    from common.errors import SteelsegError
    from engine.distributed import resolve_device
    from ensemble.predict import build_predictor

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SteelsegError, match=r"'cuda' requested but torch sees no CUDA device"):
        if where == "infer":
            build_predictor({"device": "cuda"}, {}, Rules(gating="none"))
        else:
            resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
