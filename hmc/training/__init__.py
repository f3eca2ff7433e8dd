"""The training layer: Lightning (``HMCModule``, ``HMCDataModule``, callbacks) and W&B.

Names are imported on first use, so :mod:`hmc.training.artifacts` (the ``"wandb:"`` hierarchy
references) works without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "HMCModule": "hmc.training.module",
    "HMCDataModule": "hmc.training.datamodule",
    "DATASETS": "hmc.training.datamodule",
    "RunCheckpoint": "hmc.training.checkpoint",
    "ResultsTable": "hmc.training.checkpoint",
    "format_results": "hmc.training.checkpoint",
    "PerLevelAccuracyPlot": "hmc.training.callbacks",
    "LoggerSaveConfigCallback": "hmc.training.callbacks",
    "LogHierarchy": "hmc.training.callbacks",
    "LogConfusionMatrices": "hmc.training.callbacks",
    "LogPredictionSamples": "hmc.training.callbacks",
    "LogSummary": "hmc.training.callbacks",
    "WandbLogger": "hmc.training.wandb",
    "log_hierarchy_artifact": "hmc.training.artifacts",
    "load_hierarchy_artifact": "hmc.training.artifacts",
    "resolve_hierarchy": "hmc.training.artifacts",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hmc.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
