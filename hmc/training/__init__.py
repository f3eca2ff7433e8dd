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
    "ResultsTable": "hmc.training.callbacks",
    "format_results": "hmc.training.callbacks",
    "PerLevelAccuracyPlot": "hmc.training.callbacks",
    "LoggerSaveConfigCallback": "hmc.training.callbacks",
    "EvaluatedModule": "hmc.training.callbacks",
    "StepCheckpoint": "hmc.training.callbacks",
    "WandbLogger": "hmc.training.wandb",
    "LogHierarchy": "hmc.training.wandb_callbacks",
    "LogConfusionMatrices": "hmc.training.wandb_callbacks",
    "LogPredictionSamples": "hmc.training.wandb_callbacks",
    "LogSummary": "hmc.training.wandb_callbacks",
    "log_hierarchy_artifact": "hmc.training.artifacts",
    "load_hierarchy_artifact": "hmc.training.artifacts",
    "resolve_hierarchy": "hmc.training.artifacts",
    "FeatureCache": "hmc.training.feature_cache",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hmc.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
