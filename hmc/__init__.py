"""hmc: hierarchical multi-granularity classification in PyTorch.

Columns of every ``[B, N]`` score tensor follow :attr:`Hierarchy.nodes` (level-major).
The core (hierarchy, losses, decoding, metrics, models, predict) is plain PyTorch; the
Lightning names (``HMCModule``, ``HMCDataModule``) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use: every name needs torch, the model zoo (timm) and the losses/metrics
# pull in heavy libraries, and the training names need Lightning. `import hmc.onnx_predictor`
# must work where only numpy, Pillow and onnxruntime are installed.
_LAZY = {
    "Hierarchy": "hmc.hierarchy",
    "HierarchyError": "hmc.hierarchy",
    "UnknownLabelError": "hmc.hierarchy",
    "list_hierarchies": "hmc.hierarchy",
    "load_hierarchy": "hmc.hierarchy",
    "CombinatorialLoss": "hmc.losses",
    "HRNLoss": "hmc.losses",
    "LeafMarginalLoss": "hmc.losses",
    "PerLevelCrossEntropy": "hmc.losses",
    "build_loss": "hmc.losses",
    "Decoded": "hmc.decoding",
    "decode": "hmc.decoding",
    "node_marginals": "hmc.decoding",
    "node_probabilities": "hmc.decoding",
    "HierarchicalMetrics": "hmc.metrics",
    "evaluate": "hmc.metrics",
    "HeadOutput": "hmc.models",
    "HierarchicalClassifier": "hmc.models",
    "build_model": "hmc.models",
    "Predictor": "hmc.predict",
    "load_model": "hmc.predict",
    "explain": "hmc.explanations",
    "export": "hmc.onnx_export",
    "HMCModule": "hmc.training",
    "HMCDataModule": "hmc.training",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hmc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
