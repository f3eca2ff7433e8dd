"""Hierarchical classification metrics (torchmetrics ``Metric`` classes) and ``evaluate``.

- ``batch``: validate and format one batch once (:class:`MetricBatch`).
- ``levels``: per-level accuracy, full-path accuracy, inconsistency, hierarchical F1, severity.
- ``ranking``: top-k, average hierarchical distance, average precision, calibration error.
- ``confusion``: per-level confusion matrices.
- ``collection``: :class:`HierarchicalMetrics` and :func:`evaluate`.
"""

from hmc.metrics.batch import MetricBatch
from hmc.metrics.collection import (
    METRIC_GROUPS,
    PROBABILITY_GROUPS,
    HierarchicalMetrics,
    evaluate,
)
from hmc.metrics.confusion import LevelConfusion
from hmc.metrics.levels import (
    FullPathAccuracy,
    HierarchicalF1,
    HierarchicalMetric,
    InconsistencyRate,
    LevelAccuracy,
    MistakeSeverity,
)
from hmc.metrics.ranking import (
    AverageHierarchicalDistance,
    HierarchicalAveragePrecision,
    LevelCalibrationError,
    TopKAccuracy,
    binned_average_precision,
)

__all__ = [
    "METRIC_GROUPS",
    "PROBABILITY_GROUPS",
    "AverageHierarchicalDistance",
    "FullPathAccuracy",
    "HierarchicalAveragePrecision",
    "HierarchicalF1",
    "HierarchicalMetric",
    "HierarchicalMetrics",
    "InconsistencyRate",
    "LevelAccuracy",
    "LevelCalibrationError",
    "LevelConfusion",
    "MetricBatch",
    "MistakeSeverity",
    "TopKAccuracy",
    "binned_average_precision",
    "evaluate",
]
