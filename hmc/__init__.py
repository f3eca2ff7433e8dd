"""hmc: hierarchical multi-granularity classification in PyTorch.

Columns of every ``[B, N]`` score tensor follow :attr:`Hierarchy.nodes` (level-major).
Heavy parts (Lightning, the model zoo) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from hmc._registry import list_hierarchies, load_hierarchy
from hmc.hierarchy import Hierarchy, HierarchyError, UnknownLabelError

__version__ = "0.1.0"

_LAZY = {
    "build_model": "hmc.models",
    "HierarchicalClassifier": "hmc.models",
    "CombinatorialLoss": "hmc.losses",
    "HRNLoss": "hmc.losses",
    "node_marginals": "hmc.decoding",
    "decode": "hmc.decoding",
    "HierarchicalMetrics": "hmc.metrics",
    "evaluate": "hmc.metrics",
    "HMCModule": "hmc.lit",
    "load_model": "hmc.predict",
    "Predictor": "hmc.predict",
    "build_loss": "hmc.losses",
    "node_probabilities": "hmc.decoding",
    "HMCDataModule": "hmc.data",
}

__all__ = [
    "Hierarchy",
    "HierarchyError",
    "UnknownLabelError",
    "list_hierarchies",
    "load_hierarchy",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hmc' has no attribute {name!r}")
