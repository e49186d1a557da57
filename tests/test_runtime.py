"""The torch-free runtime installs from requirements-runtime.txt alone: its import graph (fast) and a fresh venv
with the documented commands on an exported bundle (slow; ``make test-runtime``, run by .ci/run)."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-runtime.txt"
PROJECT = ("common", "scoring", "ensemble", "deploy", "configs", "infer")
# Where the torch-free path starts: the documented commands and the Python API.
ENTRIES = ("infer", "ensemble.run", "ensemble.onnx_runtime", "deploy.serve")
# Imports in those modules that belong to the PyTorch runtime only, each behind the runtime choice.
TORCH_PATH = {("ensemble.run", "ensemble.predict"): "build_runtime(runtime=torch)"}
# Lazy imports the static walk finds on code paths a bundle run never takes, each with the reason.
NOT_ON_RUNTIME_PATH = {
    ("common.oof", "torch"): "torch.int32 of a tensor passed in (the segmenter's validation metric)",
    ("scoring.arrays", "torch"): "only for an object that already is a tensor (the torch runtime's outputs)",
    ("scoring.postprocess", "torch"): "thresholding a tensor on its device (the torch runtime)",
    ("scoring.tta", "torch"): "flipping a tensor (the torch runtime)",
    ("common.folds", "iterstrat"): "making folds for training (prepare.py, train.py)",
    ("common.metrics", "sklearn"): "class-head AUC / F1 of the CV report and threshold search",
}
NEVER = {"torch", "torchvision", "timm", "segmentation_models_pytorch", "albumentations"}


def module_file(name: str) -> Path | None:
    """The checkout's source file of a project module, or None when ``name`` is not one."""
    parts = name.split(".")
    if parts[0] not in PROJECT:
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (lazy imports count too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}"))
    return found


def runtime_graph() -> tuple[set[str], set[str]]:
    """(project modules reachable from ENTRIES, third-party top-level names they import)."""
    seen, external, todo = set(), set(), list(ENTRIES)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target in imports_of(name, module_file(name)):
            if (name, target) in TORCH_PATH or (name, target.split(".")[0]) in NOT_ON_RUNTIME_PATH:
                continue
            if module_file(target):
                todo.extend(p for p in (target, target.rpartition(".")[0]) if p and module_file(p))
            elif target.split(".")[0] not in PROJECT:
                external.add(target.split(".")[0])
    return seen, external - set(sys.stdlib_module_names) - {"__future__"}


def requirement_closure(path: Path) -> set[str]:
    """Distribution names of a requirements file and, from the installed metadata, everything they require."""
    todo = [
        Requirement(line.split("#")[0].strip()).name
        for line in path.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    names: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in names:
            continue
        names.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return names


def test_runtime_import_graph_is_accounted_for():
    """Every third-party module the torch-free path can import comes with requirements-runtime.txt; none of the
    training stack is reachable (the torch runtime's one import sits behind runtime=torch)."""
    modules, external = runtime_graph()
    assert {"ensemble.core", "common.images", "scoring.postprocess"} <= modules
    assert not modules & {"ensemble.predict", "ensemble.members", "deploy.export", "engine.checkpoint"}, modules
    assert not external & NEVER, external & NEVER
    owners = metadata.packages_distributions()
    allowed = requirement_closure(REQUIREMENTS)
    unaccounted = {
        name: owners.get(name)
        for name in external
        if not {d.lower().replace("_", "-") for d in owners.get(name, [])} & allowed
    }
    assert not unaccounted, (
        f"imported by the runtime but not in {REQUIREMENTS.name} (or what it requires): {unaccounted}"
    )
    # the names the first line-PC trial was missing are now covered
    assert {"PIL", "tqdm", "httpx", "hydra", "onnxruntime", "cv2"} <= external


def test_import_graph_sees_lazy_imports(tmp_path):
    """The walk counts imports inside functions, so a lazy torch import would not slip through."""
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    import torch\n    from PIL import Image\n")
    assert {"os", "torch", "PIL"} <= imports_of("common.m", module)


def test_bundle_folder_follows_umask(tmp_path):
    """The staged bundle folder gets mkdir's mode (0o777 minus the umask), not mkdtemp's 0o700."""
    from common.io import temp_dir_beside

    old = os.umask(0o022)
    try:
        folder = temp_dir_beside(tmp_path / "bundle")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and folder.parent == tmp_path


def export_tiny_bundle(base: Path) -> tuple[Path, Path, Path]:
    """(bundle, image folder, truth csv) from a tiny joint model, exported with the main venv's torch."""
    import torch

    from common.config import build
    from deploy.export import main as export_main
    from engine.checkpoint import save_checkpoint
    from ensemble_helpers import PRE, image_folder

    config = {
        "_target_": "segmenter.model.create_joint",
        "arch": "Unet",
        "encoder_name": "tu-test_resnet",
        "encoder_weights": None,
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
        "input_scale": 0.5,
    }
    images, truth = image_folder(base / "images", 3)
    truth.to_csv(base / "truth.csv", index=False)
    torch.manual_seed(0)
    joint = save_checkpoint(
        base / "joint.pt", build(dict(config)), config, "joint", {"preprocess": {**PRE, "size": None}, "fold": 0}
    )
    bundle = base / "bundle"
    assert (
        export_main(
            [
                f"checkpoints.joint=[{joint}]",
                "checkpoints.runs=[]",
                f"images={images}",
                "tta=hflip",
                "--out",
                str(bundle),
            ]
        )
        == 0
    )
    return bundle, images, base / "truth.csv"


def run(cmd: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command of the fresh venv with the allocator settings and no PYTHONPATH (nothing leaks in)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="68719476736")
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_fresh_venv_runs_the_documented_commands(tmp_path):
    """A venv with requirements-runtime.txt alone (+ the steelseg wheel, no deps): torch is absent, and
    infer.py runtime=onnx (checkout and installed command) and deploy.serve --load-test work on a bundle.
    pip caches its wheels under ~/.cache/pip, so a re-run takes seconds."""
    bundle, images, truth = export_tiny_bundle(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)  # never --system-site-packages
    python, bindir = env_dir / "bin" / "python", env_dir / "bin"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "-r", REQUIREMENTS], tmp_path)
    run(
        [python, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", tmp_path / "dist", ROOT],
        tmp_path,
    )
    run([*pip, "--no-deps", *sorted((tmp_path / "dist").glob("steelseg-*.whl"))], tmp_path)
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    common = ["runtime=onnx", f"bundle={bundle}", f"images={images}", "evaluate=true", f"truth={truth}", "threads=1"]
    # the README command from a checkout, and the installed command from a folder that is no checkout
    checkout = run(
        [python, ROOT / "infer.py", *common, f"output={tmp_path}/a.csv", f"hydra.run.dir={tmp_path}/ra"], ROOT
    )
    installed = run(
        [
            bindir / "steelseg-infer",
            *common,
            f"output={tmp_path}/b.csv",
            f"hydra.run.dir={tmp_path}/rb",
            f"store={tmp_path}/store.sqlite",
        ],
        tmp_path,
    )
    for done in (checkout, installed):
        assert "runtime onnx: bundle" in done.stdout and "overall" in done.stdout, done.stdout
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    where = run([python, "-c", "import ensemble, configs; print(ensemble.__file__, configs.__file__)"], tmp_path)
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout
    served = run(
        [
            python,
            "-m",
            "deploy.serve",
            bundle,
            "--load-test",
            "4",
            "--concurrency",
            "2",
            "--images",
            images,
            "--threads",
            "1",
        ],
        tmp_path,
    )
    assert "requests/s" in served.stdout, served.stdout
