"""Hierarchical classification metrics as torchmetrics ``Metric`` classes, and ``evaluate``.

Every metric takes the same inputs: ``node_probs`` [B, N] probabilities in the hierarchy's
column order (``hmc.decoding.node_probabilities`` or ``Decoded.node_probs``), ``targets`` [B]
label columns (negative = unlabelled) or [B, D] per-level columns, and ``predictions`` [B, D]
per-level columns with -1 below an early stop (``Decoded.nodes`` of any decoder), [B] node
columns, or None for the per-level argmax of ``node_probs``. A sample counts only at the levels
it is labelled at: a family label counts for order and family, not for species. Unlabelled
samples count nowhere. A value with no sample to count is NaN.

Result names (``HierarchicalMetrics.compute()``; ``<level>`` is a level name):

==================  =================================================================
acc/<level>         share of samples labelled at the level predicted correctly there
acc/mean            mean of acc/<level> over levels
top<k>/<level>      label's ancestor among the level's k most probable nodes
fpa                 full-path accuracy: correct at every labelled level
tice                predictions at the labelled levels that are not a (prefix) path
hp, hr, hf1         hierarchical precision / recall / F1, micro (Kiritchenko et al.)
hf1/macro           mean over samples of the per-sample hierarchical F1
mistake_severity    mean LCA height (levels) of top-1 mistakes at the label's level
ahd@<k>             mean LCA height of the k most probable nodes at the label's level
ap/micro, ap/<lvl>  binned average precision of node membership, all levels / one level
ece/<level>         expected calibration error (15 bins) of the level's top-1
==================  =================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor
from torchmetrics import MetricCollection

from hmc.hierarchy import Hierarchy
from hmc.metrics import confusion, levels, ranking
from hmc.metrics.batch import MetricBatch, as_tensor

__all__ = ["METRIC_GROUPS", "PROBABILITY_GROUPS", "HierarchicalMetrics", "evaluate"]

#: Group name -> metric class (``HierarchicalMetrics(metrics=[...])`` takes these names).
METRIC_GROUPS: dict[str, type[levels.HierarchicalMetric]] = {
    "acc": levels.LevelAccuracy,
    "topk": ranking.TopKAccuracy,
    "fpa": levels.FullPathAccuracy,
    "tice": levels.InconsistencyRate,
    "hf1": levels.HierarchicalF1,
    "mistake_severity": levels.MistakeSeverity,
    "ahd": ranking.AverageHierarchicalDistance,
    "ap": ranking.HierarchicalAveragePrecision,
    "ece": ranking.LevelCalibrationError,
    "confusion": confusion.LevelConfusion,
}
#: The groups that need ``node_probs``.
PROBABILITY_GROUPS = ("topk", "ahd", "ap", "ece")


class HierarchicalMetrics(MetricCollection):
    """All hierarchical metrics of :mod:`hmc.metrics` in one ``MetricCollection``.

    Args:
        hierarchy: the label tree whose column order the inputs use.
        metrics: group names to include (keys of :data:`METRIC_GROUPS`); all by default.
        top_k: k values of ``top<k>/<level>`` (:class:`TopKAccuracy`).
        k: k values of ``ahd@<k>`` (:class:`AverageHierarchicalDistance`).
        thresholds: number of equal score bins of the average precision
            (:class:`HierarchicalAveragePrecision`).
        n_bins: number of confidence bins of the calibration error
            (:class:`LevelCalibrationError`).
        max_dense, max_pairs: levels with at most ``max_dense`` nodes keep a dense confusion
            matrix; ``max_pairs`` mistakes per level from :meth:`confusions`
            (:class:`LevelConfusion`).
        validate_args: check shapes, ranges and level membership of every input.
        prefix, postfix: added to every result name (``clone(prefix="val/")`` does the same).
        kwargs: passed to every ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``...).

    ``update`` formats a batch once and feeds it to every metric. ``compute()`` returns a flat
    dict of scalar tensors; ``confusions()`` the top confused pairs per level.

    Example:
        >>> import torch
        >>> from hmc import Hierarchy
        >>> h = Hierarchy.from_paths([("a", "a1"), ("a", "a2"), ("b", "b1")])
        >>> m = HierarchicalMetrics(h, metrics=["acc", "fpa", "tice"])
        >>> targets = torch.tensor([h.index("a1"), h.index("b1"), h.index("a")])
        >>> predictions = torch.tensor([[0, 2], [1, 3], [0, -1]])  # Decoded.nodes style
        >>> {k: round(v.item(), 3) for k, v in m(None, targets, predictions).items()}
        {'acc/level_1': 1.0, 'acc/level_2': 0.5, 'acc/mean': 0.75, 'fpa': 0.667, 'tice': 0.333}
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        metrics: Iterable[str] | None = None,
        top_k: int | Sequence[int] = 5,
        k: int | Sequence[int] = (1, 5),
        thresholds: int = 200,
        n_bins: int = 15,
        max_dense: int = 256,
        max_pairs: int = 20,
        validate_args: bool = True,
        prefix: str | None = None,
        postfix: str | None = None,
        **kwargs: Any,
    ) -> None:
        groups = list(METRIC_GROUPS) if metrics is None else list(metrics)
        unknown = [g for g in groups if g not in METRIC_GROUPS]
        if unknown or not groups:
            raise ValueError(
                f"Expected argument `metrics` to be a non-empty subset of {list(METRIC_GROUPS)}, "
                f"but got {groups!r}"
            )
        options: dict[str, dict[str, Any]] = {
            "topk": {"top_k": top_k},
            "ahd": {"k": k},
            "ap": {"thresholds": thresholds},
            "ece": {"n_bins": n_bins},
            "confusion": {"max_dense": max_dense, "max_pairs": max_pairs},
        }
        children = {
            g: cls(hierarchy, validate_args=validate_args, **options.get(g, {}), **kwargs)
            for g, cls in METRIC_GROUPS.items()
            if g in groups
        }
        super().__init__(children, prefix=prefix, postfix=postfix, compute_groups=False)
        self.hierarchy = hierarchy
        self.validate_args = validate_args
        self.needs_probs = any(g in PROBABILITY_GROUPS for g in children)

    def _format(self, node_probs: Any, targets: Any, predictions: Any) -> MetricBatch:
        if node_probs is None and self.needs_probs:
            have = [g for g in self.keys(keep_base=True) if g in PROBABILITY_GROUPS]
            raise ValueError(
                f"Expected argument `node_probs` for the metrics {have}, but got None; pass "
                f"node_probs, or leave those out with `metrics=`"
            )
        return MetricBatch(
            self.hierarchy, node_probs, targets, predictions, validate_args=self.validate_args
        )

    def update(self, node_probs: Any = None, targets: Any = None, predictions: Any = None) -> None:
        """Accumulate one batch: node_probs [B, N] (or None without probability metrics),
        targets [B] or [B, D], predictions [B, D] / [B] / None (per-level argmax)."""
        batch = self._format(node_probs, targets, predictions)
        for m in self.values(copy_state=False):
            m.update(batch=batch)

    def forward(
        self, node_probs: Any = None, targets: Any = None, predictions: Any = None
    ) -> dict[str, Tensor]:
        """Update and return the metrics of this batch alone."""
        batch = self._format(node_probs, targets, predictions)
        return self._compute_and_reduce("forward", batch=batch)

    def _confusion(self) -> confusion.LevelConfusion:
        for m in self.values(copy_state=False):
            if isinstance(m, confusion.LevelConfusion):
                return m
        raise ValueError("this needs the 'confusion' metric group, which was left out")

    def confusions(self, max_pairs: int | None = None) -> dict[str, list[tuple[str, str, int]]]:
        """Per level name, the most frequent mistakes as (true id, predicted id, count)."""
        return self._confusion().confusions(max_pairs)

    def confusion_matrix(self, level: int | str) -> Tensor:
        """[n, n + 1] counts of a level with at most ``max_dense`` nodes (rows: true,
        columns: predicted in the level's column order, last column: early stop)."""
        return self._confusion().confusion_matrix(level)


def evaluate(
    hierarchy: Hierarchy,
    node_probs: Any,
    targets: Any,
    predictions: Any = None,
    *,
    batch_size: int = 4096,
    **kwargs: Any,
) -> dict[str, float]:
    """Metrics of saved outputs (numpy arrays or tensors; memory-mapped arrays are read in
    chunks of ``batch_size`` rows), in the argument order of ``update``. ``node_probs`` [B, N]
    or None, which leaves out the probability metrics (top-k, ahd, ap, ece); ``targets`` [B] or
    [B, D]; ``predictions`` [B, D] or [B], or None for the per-level argmax of ``node_probs``.
    ``kwargs`` go to :class:`HierarchicalMetrics`. Returns ``{name: float}`` with the names of
    ``compute()``."""
    if predictions is None and node_probs is None:
        raise ValueError("Expected `node_probs` or `predictions` to be given, but got neither")
    if "metrics" not in kwargs:
        kwargs["metrics"] = [
            g
            for g in METRIC_GROUPS
            if g != "confusion" and (node_probs is not None or g not in PROBABILITY_GROUPS)
        ]
    metric = HierarchicalMetrics(hierarchy, **kwargs)
    n = len(targets)
    for name, x in (("node_probs", node_probs), ("predictions", predictions)):
        if x is not None and len(x) != n:
            raise ValueError(
                f"Expected argument `{name}` to have {n} rows (one per target), but got {len(x)}"
            )
    step = max(1, int(batch_size))
    for i in range(0, max(n, 1), step):
        rows = slice(i, i + step)
        metric.update(
            None if node_probs is None else as_tensor(node_probs[rows], "node_probs"),
            as_tensor(targets[rows], "targets"),
            None if predictions is None else as_tensor(predictions[rows], "predictions"),
        )
    return {k: float(v) for k, v in metric.compute().items()}
