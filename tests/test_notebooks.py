"""Every notebook runs top to bottom (nbclient, CPU, fast mode) and is committed without outputs.

The kernel is this interpreter: a kernelspec pointing at ``sys.executable`` is written to a
temporary ``JUPYTER_PATH``, so the test works in a fresh venv where only ``pip install -e
.[dev]`` ran, whatever other ``python3`` kernels the machine has registered.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "hmc-test-python"


def test_notebooks_exist() -> None:
    names = {p.stem for p in PATHS}
    assert {"01_quickstart", "02_your_own_taxonomy", "03_relabel_study"} <= names


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hmc test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("HMC_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    return KERNEL


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path: Path, kernel_env: str, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_env,
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors


def _notebook_function(path: Path, name: str) -> dict:
    """Exec the code cell of ``path`` that defines ``name``; return its namespace."""
    nb = nbformat.read(path, as_version=4)
    source = next(c.source for c in nb.cells if f"def {name}(" in c.source)
    namespace: dict = {}
    # Only the definitions: the cell's other statements use the notebook's earlier state.
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()),
        len(lines),
    )
    head = [line for line in lines[:start] if line.startswith(("import ", "from "))]
    exec("\n".join(["import math, struct, torch", *head, *lines[start:end]]), namespace)
    return namespace


def test_quickstart_fallback_data_loads(tmp_path: Path) -> None:
    """The stand-in the quickstart writes when Fashion-MNIST is missing is a valid raw layout."""
    from hmc.data import FashionMNIST

    fn = _notebook_function(NOTEBOOKS / "01_quickstart.ipynb", "write_tiny_fashion_mnist")
    fn["write_tiny_fashion_mnist"](tmp_path, per_class=6)
    train = FashionMNIST(tmp_path, "trainval", system_dir=None)
    test = FashionMNIST(tmp_path, "test", system_dir=None)
    assert len(train) == 60 and len(test) == 20
    assert torch.bincount(train.targets).count_nonzero() == 10  # ten leaf columns
    raw = FashionMNIST.raw_folder(tmp_path) / "train-images-idx3-ubyte"
    assert struct.unpack(">IIII", raw.read_bytes()[:16]) == (2051, 60, 28, 28)
    image, target = train[0]
    assert image.size == (28, 28) and train.hierarchy.is_leaf(target)
