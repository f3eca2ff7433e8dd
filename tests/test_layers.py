"""The layering rules of CONTRIBUTING.md, checked by reading every import in the source tree.

Each layer of ``hmc`` may import only the layers listed for it; nothing imports the package
face (``import hmc`` / ``from hmc import ...``) from inside the package; only the training
layer and the CLI import Lightning or W&B; and no file outside a subpackage imports that
subpackage's private (``_x``) names, tests and benchmarks included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the hmc layers it may import (itself always allowed). Keep in step with the sketch
# at the top of CONTRIBUTING.md.
MAY_IMPORT: dict[str, set[str]] = {
    "checks": set(),  # argument checks shared by every layer
    "files": set(),  # image listing and prediction rows: standard library only (no torch)
    "numpy_decoding": set(),  # hmc.decoding's rules in numpy (no torch)
    "hierarchy": {"checks"},
    "sweeps": {"hierarchy"},
    "losses": {"hierarchy", "sweeps"},
    "decoding": {"hierarchy", "sweeps", "numpy_decoding"},
    "metrics": {"hierarchy", "sweeps", "decoding"},
    "data": {"hierarchy", "files"},
    "models": {"hierarchy"},
    "calibration": {"hierarchy", "sweeps", "decoding"},
    "cache": {"hierarchy", "data", "models"},
    "predict": {"hierarchy", "sweeps", "decoding", "calibration", "models", "data", "files"},
    "onnx_predictor": {"files", "numpy_decoding"},  # numpy, Pillow, onnxruntime: no torch
    "onnx_export": {
        "hierarchy",
        "sweeps",
        "decoding",
        "calibration",
        "models",
        "data",
        "predict",
        "onnx_predictor",
    },
    "explanations": {
        "hierarchy",
        "sweeps",
        "decoding",
        "calibration",
        "models",
        "data",
        "files",
        "predict",
    },
    "report": {"hierarchy", "sweeps", "decoding", "calibration", "models", "data", "predict"},
    "training": {
        "hierarchy",
        "sweeps",
        "losses",
        "decoding",
        "calibration",
        "metrics",
        "data",
        "models",
        "cache",
        "predict",
        "explanations",
    },
}
TOP = {"cli"}  # may import every layer
for _layer_name, _allowed in MAY_IMPORT.items():
    if _layer_name != "checks":
        _allowed.add("checks")
FRAMEWORKS = ("pytorch_lightning", "lightning", "wandb", "jsonargparse")
MAY_IMPORT_FRAMEWORKS = {"training", "cli"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import in the file, lazy ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if ".venv" not in p.parts)


PACKAGE_FILES = _files("hmc")


def test_the_rules_cover_every_layer():
    layers = {_layer(_module_name(p)) for p in PACKAGE_FILES} - {""}
    assert layers <= set(MAY_IMPORT) | TOP, sorted(layers - set(MAY_IMPORT) - TOP)


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_the_layers_below_it(path):
    me = _module_name(path)
    layer = _layer(me)
    bad = []
    for line, module, names in _imports(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        top = module.split(".")[0]
        if top in FRAMEWORKS and layer not in MAY_IMPORT_FRAMEWORKS:
            bad.append(f"{where}: {module} (only {sorted(MAY_IMPORT_FRAMEWORKS)} may)")
        if top != "hmc":
            continue
        if module == "hmc" and me != "hmc":
            bad.append(f"{where}: imports the package face ({module} {names})")
            continue
        if me == "hmc" or layer in TOP:
            continue
        target = _layer(module)
        if target != layer and target not in MAY_IMPORT[layer]:
            bad.append(f"{where}: layer {layer!r} imports {module!r} (layer {target!r})")
    assert not bad, "\n".join(bad)


def _private_imports(path: Path) -> list[str]:
    me = _module_name(path) if path.is_relative_to(ROOT / "hmc") else ""
    bad = []
    for line, module, names in _imports(path):
        if not module.startswith("hmc"):
            continue
        parts = module.split(".")
        private_module = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
        private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private_module is None and not private_names:
            continue
        # The owner of a private name is the subpackage (or module) that holds it.
        owner = ".".join(parts[: private_module if private_module is not None else len(parts)])
        owner = owner if owner.count(".") >= 1 else module
        owner_pkg = ".".join(owner.split(".")[:2])
        if me == owner_pkg or me.startswith(owner_pkg + "."):
            continue
        bad.append(f"{path.relative_to(ROOT)}:{line}: {module} {private_names or ''}".rstrip())
    return bad


@pytest.mark.parametrize("folder", ["hmc", "tests", "benchmarks", "tools"], ids=lambda f: f"{f}/")
def test_no_file_imports_another_subpackages_private_names(folder):
    bad = [b for p in _files(folder) for b in _private_imports(p)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    # The rule checker itself must fail on a planted upward import and a private import.
    planted = ROOT / "hmc" / "hierarchy" / "_planted_for_test.py"
    try:
        planted.write_text("from hmc.models import build_model\nfrom hmc.metrics.batch import _x\n")
        with pytest.raises(AssertionError, match="layer 'hierarchy' imports 'hmc.models'"):
            test_each_module_imports_only_the_layers_below_it(planted)
        assert _private_imports(planted)
    finally:
        planted.unlink()


PUBLIC_PATHS = (
    "import hmc, hmc.hierarchy, hmc.losses, hmc.decoding, hmc.metrics, hmc.models, hmc.data, "
    "hmc.predict, hmc.sweeps\n"
    "for name in hmc.__all__:\n"
    "    if name not in ('HMCModule', 'HMCDataModule'):\n"
    "        getattr(hmc, name)\n"
    "import hmc.training.artifacts as a\n"
    "assert a.resolve_hierarchy('cub200').num_levels == 3\n"
    "try:\n"
    "    a.resolve_hierarchy('wandb:')\n"
    "except hmc.HierarchyError:\n"
    "    pass\n"
    "bad = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')]\n"
    "assert not bad, bad\n"
)


def test_the_core_and_every_public_path_import_no_lightning():
    code = "import sys\n" + PUBLIC_PATHS
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
