"""The layer rules of docs/architecture.md, read from the code's import statements, and the light ground floor."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "common",
    "engine",
    "classifier",
    "segmenter",
    "scoring",
    "ensemble",
    "tuning",
    "deploy",
    "analysis",
    "synthetic",
    "dashboard",
)
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "common": set(),
    "engine": {"common"},
    "classifier": {"common", "engine"},
    "segmenter": {"common", "engine"},
    "synthetic": {"common"},
    "scoring": {"common"},
    "ensemble": {"common", "scoring", "engine", "classifier", "segmenter"},
    "tuning": {"common", "scoring", "ensemble", "engine"},
    "deploy": {"common", "scoring", "ensemble", "engine", "segmenter"},
    "analysis": {"common", "scoring", "ensemble", "tuning", "engine"},
    "dashboard": {"common", "scoring", "ensemble", "analysis", "engine"},
}
HEAVY = (
    "torch",
    "hydra",
    "omegaconf",
    "matplotlib",
    "dash",
    "plotly",
    "albumentations",
    "timm",
    "segmentation_models_pytorch",
    "sklearn",
)
# Modules that must import with numpy / pandas / OpenCV alone (the ONNX runtime and line PCs use them too).
# ``scoring`` whole, and the ensemble's torch-free loop and ONNX runtime (onnxruntime itself is not heavy here).
TORCH_FREE_OUTSIDE_COMMON = (
    "scoring",
    *(f"scoring.{p.stem}" for p in sorted((REPO / "scoring").glob("*.py")) if p.stem != "__init__"),
    "ensemble.core",
    "ensemble.run",
    "ensemble.settings",
    "ensemble.onnx_runtime",
)


def project_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    return files + [REPO / name for name in ("train.py", "infer.py", "prepare.py")]


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import statement, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def test_layer_rules_hold_for_every_import_statement():
    problems = []
    for path in project_files():
        rel = path.relative_to(REPO)
        own = rel.parts[0] if len(rel.parts) > 1 else None
        for line, module, _ in imports_of(path):
            target = module.split(".")[0]
            if target not in PACKAGES or target == own:
                continue
            if target == "dashboard":
                problems.append(f"{rel}:{line} imports dashboard (nothing may)")
            elif own is not None and target not in ALLOWED[own]:
                problems.append(f"{rel}:{line}: {own} may not import {target}")
    assert not problems, "\n".join(problems)


def test_no_package_imports_another_packages_private_names():
    problems = []
    for path in project_files():
        rel = path.relative_to(REPO)
        own = rel.parts[0] if len(rel.parts) > 1 else None
        for line, module, names in imports_of(path):
            target = module.split(".")[0]
            if target in PACKAGES and target != own:
                private = [n for n in names if n.startswith("_")] + [
                    part for part in module.split(".")[1:] if part.startswith("_") and part != "__main__"
                ]
                if private:
                    problems.append(f"{rel}:{line} imports private {private} from {module}")
    assert not problems, "\n".join(problems)


def test_every_package_declares_its_exports():
    for pkg in PACKAGES:
        init = REPO / pkg / "__init__.py"
        assert init.is_file() and "__all__" in init.read_text(), f"{pkg}/__init__.py must define __all__"


def _loaded_by(modules: list[str]) -> dict[str, list[str]]:
    """For each module: the heavy libraries a fresh interpreter has loaded after importing it."""
    code = (
        "import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n"
        "    before = set(sys.modules)\n    importlib.import_module(m)\n"
        f"    out[m] = sorted({{k.split('.')[0] for k in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps(out))"
    )
    result = {}
    for module in modules:  # one interpreter per module: nothing imported by an earlier one can hide a later one
        proc = subprocess.run(
            [sys.executable, "-c", code, module], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        result.update(json.loads(proc.stdout))
    return result


def test_common_and_the_runtime_rules_import_without_torch_hydra_matplotlib_or_dash():
    modules = sorted(f"common.{p.stem}" for p in (REPO / "common").glob("*.py") if p.stem != "__init__")
    loaded = _loaded_by(["common", *modules, *TORCH_FREE_OUTSIDE_COMMON])
    heavy = {m: libs for m, libs in loaded.items() if libs}
    assert not heavy, f"modules that pull in heavy libraries at import time: {heavy}"


@pytest.mark.parametrize("argv", [["-m", "common.submission", "--help"], ["-m", "common.metrics", "--help"]])
def test_validator_and_metric_run_without_torch(argv, tmp_path):
    """The two Kaggle-kernel tools start where importing torch, Hydra or matplotlib fails."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\nfor name in ('torch', 'hydra', 'omegaconf', 'matplotlib', 'dash', 'sklearn'):\n"
        "    sys.modules[name] = None\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout


# Rules with one home (docs/architecture.md, "Single homes"): a pattern that would be a second copy, and the only
# files where it may stand.
SINGLE_HOMES = {
    "device choice": (r"cuda\.is_available\(\)\s*else|\"cuda\"\s+if\s+.*cuda", {"common/devices.py"}),
    "infer config -> predictor": (r"(?<![\w.])Predictor\(", {"ensemble/predict.py"}),
    "image BCE": (r"binary_cross_entropy_with_logits", {"engine/losses.py"}),
    "atomic replace": (r"os\.replace\(|os\.rename\(|shutil\.move\(|\w\.rename\((?!columns=|\")", {"common/io.py"}),
    "user-error report of a command": (r"[\"']error: |SystemExit\(2\)|return 2\s*(#|$)", {"common/errors.py"}),
    "Dice from counts": (r"2(\.0)?\s*\*\s*inter", {"common/metrics.py"}),
    "bin-grid threshold": (r"int\(round\(.*bins", {"common/oof.py"}),
    "validation batch size": (r"val_batch_size\"?\)?\s+or\b", {"engine/settings.py"}),
    "mask resize to the image size": (
        r"F\.interpolate\(|nn\.functional\.interpolate\(",
        {"segmenter/metrics.py", "segmenter/model.py"},
    ),
}


@pytest.mark.parametrize("rule", sorted(SINGLE_HOMES))
def test_a_rule_with_one_home_has_no_second_copy(rule):
    import re

    pattern, homes = SINGLE_HOMES[rule]
    found = [
        f"{path.relative_to(REPO)}:{i}: {line.strip()}"
        for path in project_files()
        if str(path.relative_to(REPO)) not in homes
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not found, f"{rule} lives in {sorted(homes)}; a second copy:\n" + "\n".join(found)


def test_gating_mode_names_are_listed_only_by_the_registry():
    """No tuple or list of three or more gating mode names outside ``scoring/gating.py`` (use its MODES,
    CLASSIFIER_MODES, SEARCH_MODES)."""
    from scoring.gating import MODES

    found = []
    for path in project_files():
        if path.relative_to(REPO).as_posix() == "scoring/gating.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in MODES]
                if len(names) >= 3:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {names}")
    assert not found, "\n".join(found)
