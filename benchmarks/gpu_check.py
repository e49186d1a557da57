"""GPU check: every competition recipe trains, a killed run resumes, torchrun works, the ensemble's throughput.

Prints one table (and writes it to ``<work>/gpu_check.md``):

* each competition recipe (``configs/experiment/*/competition*.yaml``): one epoch at full resolution on
  ``--train-images`` synthetic images (fold 0 of 5) with AMP (bf16 where supported) and channels_last:
  training images/s, peak GPU memory, epoch time;
* a training run killed (SIGKILL) during its second epoch, then the same command: it must resume and finish;
* ``torchrun`` with 1 process, and with 2 when 2 GPUs exist;
* the competition ensemble (the classifier + 3 segmenters: the recipe's Unet, an FPN and a second Unet on the
  same encoder; hflip TTA, no gating skip, i.e. every image through every network) through ``python infer.py``
  on ``--infer-images`` images: images/s end to end (target >= 300 on one H100), the share of time the GPU is
  busy (nvidia-smi samples), and, from a second, synchronised ``profile=true`` run, where the time goes.

* AMP parity: the same ensemble in float32 and under autocast (bf16 on CUDA where supported, fp16 otherwise; on
  the CPU bf16, to exercise the path) on ``--profile-images`` images (``deploy.export.parity``): the verdict is
  max |p_amp - p_float32| of the segmentation and classifier probabilities against ``AMP_TOLERANCE``; the masks
  are compared pair by pair and printed, not judged (networks trained for one epoch put many pixels within a
  rounding of the threshold, so masks of untrained members flip where trained ones would not);
* a headline line: ensemble images/s against the 300 target, training images/s per recipe.

``--profile`` instead runs torch.profiler on one batch (an image and its hflip, as the ensemble runs them) of
each competition network, by op, plus smp's ``efficientnet-b3`` encoder against timm's ``tu-efficientnet_b3``
(``<work>/profile.md``).

Networks start from random weights (no download). The images are ``--distinct`` synthetic ones, hard-linked
under new names up to the counts asked for. ``--device cpu --tiny`` runs everything small on the CPU with
``debug=smoke`` (the tests do). On a GPU machine (343 s on one H100, measured):
``python benchmarks/gpu_check.py --work /tmp/gpu_check``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.config import build  # noqa: E402
from common.errors import SteelsegError, command  # noqa: E402
from common.io import atomic_write_text, check_writable, read_csv  # noqa: E402
from engine.checkpoint import model_allowlist, save_checkpoint  # noqa: E402

RECIPES = sorted(
    p.relative_to(ROOT / "configs" / "experiment").with_suffix("").as_posix()
    for p in (ROOT / "configs" / "experiment").glob("*/competition*.yaml")
)
# No downloads: what each stage needs to start from random weights (a new stage adds its line).
OFFLINE = {
    "classifier": ["classifier.model.pretrained=false", "classifier.model.pretrained_path=null"],
    "segmenter": ["segmenter.model.encoder_weights=null", "segmenter.model.pretrained_path=null"],
    "joint": ["joint.model.encoder_weights=null", "joint.model.pretrained_path=null"],
}
TARGET_IMAGES_PER_S = 300.0
# max |p_amp - p_float32| allowed per dtype: a few units of its rounding (bf16 keeps 8 bits, fp16 11)
AMP_TOLERANCE = {"bfloat16": 2e-2, "float16": 5e-3}


def env() -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        NO_ALBUMENTATIONS_UPDATE="1",
        PYTHONUNBUFFERED="1",
        MALLOC_MMAP_MAX_="0",
        MALLOC_TRIM_THRESHOLD_="68719476736",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv through the project's one CSV reader, numbers as numbers."""
    return read_csv(path).frame().apply(pd.to_numeric, errors="coerce")


def run(args: list[str], log: Path, timeout: float = 900) -> tuple[str, float]:
    """(output, seconds) of a command in the repository root; its output also goes to ``log``."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    log.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(log, " ".join(args) + "\n\n" + output)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}, see {log}: {output.strip().splitlines()[-1:]}")
    return output, seconds


def replicate(base: Path, out: Path, n_train: int, n_test: int) -> Path:
    """A Kaggle-layout root with ``n_train`` / ``n_test`` images hard-linked from ``base`` under new names."""
    links: list[tuple[str, str]] = []
    for split, n in (("train", n_train), ("test", n_test)):
        source = sorted((base / f"{split}_images").iterdir())
        folder = out / f"{split}_images"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            original = source[i % len(source)]
            target = folder / f"r{i // len(source):03d}{original.name}"
            if not target.exists():
                os.link(original, target)
            if split == "train":
                links.append((target.name, original.name))
    names = pd.DataFrame(links, columns=["ImageId", "Original"])
    train = read_csv(base / "train.csv").frame().rename(columns={"ImageId": "Original"})
    rows = names.merge(train, on="Original")[["ImageId", "ClassId", "EncodedPixels"]]
    atomic_write_text(out / "train.csv", rows.to_csv(index=False))
    return out


class GpuBusy:
    """Mean ``utilization.gpu`` (share of time a kernel ran) sampled by nvidia-smi while the block runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.samples = enabled, []

    def __enter__(self) -> GpuBusy:
        if self.enabled:
            self.proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                    "-i",
                    "0",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.thread = threading.Thread(
                target=lambda: self.samples.extend(float(line) for line in self.proc.stdout if line.strip().isdigit()),
                daemon=True,
            )
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.proc.terminate()
            self.thread.join(timeout=5)

    @property
    def share(self) -> str:
        busy = self.samples[2:] or self.samples  # the first samples are start-up
        return f"{sum(busy) / len(busy):.0f} %" if busy else "n/a (no nvidia-smi)"


class Check:
    """Collects table rows; a failing step is a row with its error, and the check goes on."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def step(self, name: str, fn) -> object:
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            status, figures, value = fn()
        except Exception as exc:  # noqa: BLE001 - reported in the table, the other checks still run
            self.rows.append((name, "FAILED", str(exc)))
            return None
        self.rows.append((name, status, figures))
        return value

    def table(self) -> str:
        lines = ["| check | result | figures |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in self.rows]
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return all(status != "FAILED" for _, status, _ in self.rows)


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny networks and data (debug=smoke): a CPU dry run")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "gpu_check")
    parser.add_argument("--train-images", type=int, help="training images per recipe (default 1000; tiny 12)")
    parser.add_argument("--infer-images", type=int, help="images through infer.py (default 2000; tiny 8)")
    parser.add_argument("--profile-images", type=int, help="images of the profiled run (default 500; tiny 8)")
    parser.add_argument("--distinct", type=int, help="distinct synthetic images per split (default 100; tiny 16)")
    parser.add_argument("--workers", type=int, default=min(8, len(os.sched_getaffinity(0))), help="loader workers")
    parser.add_argument("--batch", type=int, default=16, help="infer.py batch size")
    parser.add_argument("--profile", action="store_true", help="only profile one batch per network, by op")
    args = parser.parse_args(argv)
    counts = {
        "--train-images": args.train_images,
        "--infer-images": args.infer_images,
        "--profile-images": args.profile_images,
        "--distinct": args.distinct,
        "--batch": args.batch,
    }
    bad = [f"{k} {v}" for k, v in counts.items() if v is not None and v < 1]
    if bad or args.workers < 0:
        what = ", ".join(bad) or f"--workers {args.workers}"
        raise SteelsegError(f"{what}: counts must be >= 1 (--workers >= 0)")
    check_writable(args.work, "--work", directory=True)  # before any training starts
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    import torch

    from common.devices import choose_device

    if args.device == "cuda" and torch.cuda.device_count() == 0:
        raise SteelsegError("--device cuda: torch sees no CUDA device here; for a CPU dry run give --device cpu --tiny")
    tiny, cuda = args.tiny, choose_device(args.device, torch.cuda.device_count(), "--device") != "cpu"
    n_train = args.train_images or (12 if tiny else 1000)
    n_infer = args.infer_images or (8 if tiny else 2000)
    n_profile = args.profile_images or (8 if tiny else 500)
    distinct = args.distinct or (16 if tiny else 100)
    workers = 0 if tiny else args.workers
    work = args.work.resolve()
    gpus = torch.cuda.device_count() if cuda else 0
    bf16 = cuda and torch.cuda.is_bf16_supported()
    amp = ["trainer.amp=true", f"trainer.amp_dtype={'bfloat16' if bf16 else 'float16'}"] if cuda else []
    device_name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"[gpu_check] {device_name}, torch {torch.__version__}, {gpus} GPU(s), work folder {work}", flush=True)
    if args.profile:
        text = profile_networks(torch.device(args.device), tiny)
        header = f"Profile on {device_name} (torch {torch.__version__}{', tiny' if tiny else ''})"
        atomic_write_text(work / "profile.md", header + "\n\n" + text + "\n")
        print("\n" + header + "\n\n" + text)
        return 0

    from synthetic import ensure_dataset

    base = ensure_dataset(work / "base", distinct, distinct, seed=0)
    n_total = math.ceil(n_train * 5 / 4)  # fold 0 of 5 trains on n_train images
    big = replicate(base, work / "data" / "big", n_total, n_infer)
    small = replicate(base, work / "data" / "small", 16 if tiny else 64, 0)
    common = [
        "trainer.progress=false",
        f"trainer.device={args.device}",
        f"trainer.num_workers={workers}",
        "data.check_images=none",
        "resume=false",
        *amp,
    ] + (["debug=smoke"] if tiny else [])

    def train_args(recipe: str, root: Path, folds: int, out: Path, *extra: str) -> list[str]:
        stage = recipe.split("/")[0]
        if stage not in OFFLINE:
            raise KeyError(f"benchmarks/gpu_check.py: add the offline overrides of stage {stage!r} to OFFLINE")
        return [
            "train.py",
            f"experiment={recipe}",
            "data=kaggle",
            f"data.root={root}",
            f"data.folds.n_splits={folds}",
            f"data.folds.path={out}/folds.csv",
            "fold=0",
            *common,
            *OFFLINE[stage],
            f"hydra.run.dir={out}",
            *extra,
        ]

    check = Check()
    trained: dict[str, Path] = {}
    rates: dict[str, float] = {}
    infer_rate: list[float] = []
    for recipe in RECIPES:

        def one_epoch(recipe=recipe):
            out = work / "train" / recipe
            with GpuBusy(cuda and _has_nvidia_smi()) as busy:
                _, seconds = run(
                    [sys.executable, *train_args(recipe, big, 5, out, "trainer.epochs=1")], out / "log.txt"
                )
            row = read_metrics(out / "metrics.csv").iloc[-1]
            trained[recipe] = out / "checkpoints" / "best.pt"
            memory = f", peak GPU memory {row['gpu_peak_gib']:.1f} GiB" if "gpu_peak_gib" in row else ""
            rates[recipe] = float(row["train_images_per_s"])
            return (
                "ok",
                (
                    f"{n_train} images{' (tiny)' if tiny else ''}: {row['train_images_per_s']:.1f} images/s "
                    f"training ({1e3 / row['train_images_per_s']:.1f} ms per image){memory}, GPU busy "
                    f"{busy.share}; epoch with validation {row['time_s']:.0f} s, command {seconds:.0f} s"
                ),
                out,
            )

        check.step(f"train {recipe}, 1 epoch" + (", AMP bf16" if bf16 else ", AMP fp16" if cuda else ""), one_epoch)

    segmenter_recipe = next((r for r in RECIPES if r.startswith("segmenter/")), RECIPES[0])

    def kill_and_resume():
        from engine.checkpoint import load_checkpoint

        out = work / "resume"
        cmd = [sys.executable, *train_args(segmenter_recipe, small, 2, out, "trainer.epochs=2", "resume=true")]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        metrics, deadline = out / "metrics.csv", time.time() + 600
        while not metrics.exists() and proc.poll() is None and time.time() < deadline:  # epoch 0 is written
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:
            raise RuntimeError(f"the first run ended by itself (exit {proc.returncode}) before it could be killed")
        epoch = load_checkpoint(out / "checkpoints" / "last.pt")["meta"]["epoch"]
        if epoch != 0:
            raise RuntimeError(f"expected to kill during epoch 1, last.pt holds epoch {epoch}")
        output, seconds = run(cmd, out / "log_resumed.txt")
        if "resuming" not in output:
            raise RuntimeError("the second command did not resume")
        done = read_metrics(metrics)["epoch"].tolist()
        if done != [0, 1]:
            raise RuntimeError(f"after resuming, metrics.csv has epochs {done}")
        return (
            "ok",
            f"SIGKILL after epoch 0 of {segmenter_recipe}; the same command resumed at epoch 1 and "
            f"finished ({seconds:.0f} s)",
            None,
        )

    check.step("kill during training, then resume", kill_and_resume)

    classifier_recipe = next((r for r in RECIPES if r.startswith("classifier/")), RECIPES[0])
    for procs in (1, 2):
        if procs > max(gpus, 1):
            check.rows.append((f"torchrun, {procs} processes", "skipped", f"{gpus} GPU(s) on this machine"))
            continue

        def torchrun(procs=procs):
            out = work / f"torchrun{procs}"
            _, seconds = run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={procs}",
                    *train_args(classifier_recipe, small, 2, out, "trainer.epochs=1"),
                ],
                out / "log.txt",
            )
            return "ok", f"{classifier_recipe}, 1 epoch on {procs} process(es), {seconds:.0f} s", None

        check.step(f"torchrun, {procs} process{'es' if procs > 1 else ''}", torchrun)

    def ensemble():
        members = overrides_of(*make_ensemble(work / "ensemble", trained))
        out = work / "infer"
        infer = [
            sys.executable,
            "infer.py",
            *members,
            "tta=hflip",
            "ensemble.gating.mode=none",
            f"batch_size={args.batch}",
            f"num_workers={workers}",
            "progress=false",
            f"device={args.device}",
            f"hydra.run.dir={out}",
            "data=kaggle",
            f"data.root={big}",
            "data.check_images=none",
            *(["amp=bfloat16" if bf16 else "amp=float16"] if cuda else []),
        ]
        with GpuBusy(cuda and _has_nvidia_smi()) as busy:
            output, seconds = run(
                [*infer, f"images={big / 'test_images'}", f"output={out}/submission.csv"], out / "log.txt"
            )
        rate = float(re.search(r"([\d.]+) images/s", output).group(1))
        infer_rate.append(rate)
        verdict = "ok" if rate >= TARGET_IMAGES_PER_S or not cuda else "below target"
        check.rows.append(
            (
                "infer.py: classifier + 3 segmenters, hflip TTA",
                verdict,
                f"{n_infer} images: {rate:.1f} images/s end to end, {1e3 / rate:.2f} ms per image "
                f"(target >= {TARGET_IMAGES_PER_S:.0f} "
                f"on one H100), GPU busy {busy.share}; whole command {seconds:.0f} s",
            )
        )
        profiled = replicate(base, work / "data" / "profile", 0, n_profile)
        output, _ = run(
            [*infer, f"images={profiled / 'test_images'}", f"output={out}/profiled.csv", "profile=true"],
            out / "log_profile.txt",
        )
        line = re.search(r"time per image \(ms, device synchronised per section\): (.*)", output).group(1)
        return "ok", f"{n_profile} images, ms per image: {line}", None

    check.step("infer.py: time per image by section", ensemble)

    def amp_parity():
        from deploy.export import parity
        from ensemble.members import load_members
        from ensemble.predict import Predictor, amp_dtype_for
        from scoring.rules import Rules
        from scoring.tta import transforms

        device = torch.device(args.device)
        dtype = amp_dtype_for("auto", device) or torch.bfloat16  # the CPU: bf16 exercises the autocast path
        classifier, segmenters = make_ensemble(work / "ensemble", trained)
        kw = dict(
            classifiers=load_members([classifier], "classifier"),
            rules=Rules(gating="none"),
            segmenters=load_members(segmenters, "segmenter"),
            tta_segmenter=transforms("none,hflip"),
            device=device,
        )
        paths = sorted((work / "data" / "profile" / "test_images").iterdir())[:n_profile]
        start = time.perf_counter()
        report = parity(Predictor(**kw), Predictor(**kw, amp_dtype=dtype), paths, min(args.batch, 8))
        seconds = time.perf_counter() - start
        name = str(dtype).removeprefix("torch.")
        tolerance = AMP_TOLERANCE[name]
        # The verdict is on the probabilities: these networks are barely trained, so many of their pixels sit
        # within a rounding of the threshold and flip; the mask figures are printed for trained members.
        ok = max(report.max_seg_diff, report.max_cls_diff) <= tolerance
        return (
            "ok" if ok else "FAILED",
            f"{name} vs float32, {1e3 * seconds / max(len(paths), 1) / 2:.1f} ms per image per run; "
            f"verdict max |dp| <= {tolerance:g}; masks: "
            + report.format().removeprefix("parity: ").rsplit(" -> ", 1)[0],
            None,
        )

    check.step("AMP parity: masks under autocast vs float32", amp_parity)

    table = check.table()
    headline = (
        f"headline: ensemble {infer_rate[0] if infer_rate else float('nan'):.1f} images/s end to end "
        f"(target >= {TARGET_IMAGES_PER_S:.0f}"
        f"{', met' if infer_rate and infer_rate[0] >= TARGET_IMAGES_PER_S else ', not met'}); training "
        + ", ".join(f"{r} {v:.1f} images/s" for r, v in rates.items())
    )
    table += "\n\n" + headline
    header = f"GPU check on {device_name} (torch {torch.__version__}, {gpus} GPU(s){', tiny' if tiny else ''})"
    atomic_write_text(work / "gpu_check.md", header + "\n\n" + table + "\n")
    print("\n" + header + "\n\n" + table)
    return 0 if check.ok else 1


def _has_nvidia_smi() -> bool:
    from shutil import which

    return which("nvidia-smi") is not None


def overrides_of(classifier: Path, segmenters: list[Path]) -> list[str]:
    """infer.py overrides naming the ensemble's checkpoints."""
    return [f"checkpoints.classifier=[{classifier}]", f"checkpoints.segmenter=[{','.join(map(str, segmenters))}]"]


def make_ensemble(folder: Path, trained: dict[str, Path]) -> tuple[Path, list[Path]]:
    """(classifier, 3 segmenters): the trained recipes' checkpoints plus an FPN and a second Unet on the segmenter
    recipe's encoder (random weights; their speed is the point), written once."""

    import torch

    from engine.checkpoint import load_checkpoint

    classifier = next(p for r, p in trained.items() if r.startswith("classifier/"))
    segmenter = next(p for r, p in trained.items() if r.startswith("segmenter/"))
    payload = load_checkpoint(segmenter, "segmenter")
    paths = [segmenter]
    for i, arch in enumerate(("FPN", "Unet")):
        target = folder / f"segmenter_{arch}_{i}.pt"
        if target.is_file():
            paths.append(target)
            continue
        torch.manual_seed(i + 1)
        config = {**payload["model"], "arch": arch}
        if arch == "FPN":
            config.pop("decoder_channels", None)
        model = build(config, f"{segmenter}: model", allow=model_allowlist())  # a config read from a file
        paths.append(save_checkpoint(target, model, config, "segmenter", payload["meta"]))
    return classifier, paths


# The competition networks (random weights) profiled by ``--profile``, and smp's effnet-b3 against timm's.
PROFILED = {
    "classifier/competition: timm efficientnet_b1": {
        "_target_": "timm.create_model",
        "model_name": "efficientnet_b1",
        "pretrained": False,
        "num_classes": 4,
    },
    **{
        f"segmenter: smp {arch} {enc}": {
            "_target_": "segmentation_models_pytorch.create_model",
            "arch": arch,
            "encoder_name": enc,
            "encoder_weights": None,
            "classes": 4,
        }
        for arch, enc in (("Unet", "efficientnet-b3"), ("FPN", "efficientnet-b3"), ("Unet", "tu-efficientnet_b3"))
    },
}
PROFILED_TINY = {
    "classifier: timm test_resnet": {
        "_target_": "timm.create_model",
        "model_name": "test_resnet",
        "pretrained": False,
        "num_classes": 4,
    },
    "segmenter: smp Unet tu-test_resnet": {
        "_target_": "segmentation_models_pytorch.create_model",
        "arch": "unet",
        "encoder_name": "tu-test_resnet",
        "encoder_weights": None,
        "classes": 4,
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
    },
}


def profile_networks(device, tiny: bool, top: int = 8) -> str:
    """torch.profiler of one batch (a 256x1600 image and its hflip, channels_last, inference mode) per network:
    the forward's wall time per image and its top ops by self time, with their share."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines = []
    for name, config in (PROFILED_TINY if tiny else PROFILED).items():
        torch.manual_seed(0)
        model = build(dict(config)).eval().to(device, memory_format=torch.channels_last)
        x = torch.randn(1, 3, 256, 1600, device=device)
        x = torch.cat([x, x.flip(-1)]).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            model(x)  # warm-up: kernels chosen, memory allocated
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with profile(activities=activities) as prof:
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, sort), reverse=True)
        total = sum(getattr(e, sort) for e in events) or 1.0
        ops = ", ".join(f"{e.key} {100 * getattr(e, sort) / total:.0f}%" for e in events[:top])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        lines.append(f"| {name} | {params:.1f} M | {1e3 * seconds / len(x):.0f} | {ops} |")
    return "\n".join(
        [
            "| network | parameters | ms per image (profiled) | top ops by self time (share) |",
            "| --- | --- | --- | --- |",
            *lines,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
