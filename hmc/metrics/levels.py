"""The metric base class and the metrics that need only per-level predictions.

Every metric counts a sample only at the levels it is labelled at (levels 1..l for a label at
level l) and ignores unlabelled samples (negative targets). All states are sums across
processes: integer counts, exact under DDP, or float64 sums (``hf1/macro``, ECE), equal to
rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from hmc.hierarchy import Hierarchy
from hmc.metrics.batch import MetricBatch

__all__ = [
    "HierarchicalMetric",
    "LevelAccuracy",
    "FullPathAccuracy",
    "InconsistencyRate",
    "HierarchicalF1",
    "MistakeSeverity",
]


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den as float, NaN where den == 0 (no sample counted)."""
    num = num.to(torch.float64)
    den = den.to(torch.float64)
    out = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
    return out.to(torch.get_default_dtype())


def check_int(value: Any, name: str, low: int) -> int:
    """``value`` if it is an integer >= ``low``, else a ``ValueError`` naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {low}, but got {value!r}")
    return value


class HierarchicalMetric(Metric):
    """Base class: a torchmetrics ``Metric`` on a :class:`~hmc.Hierarchy`.

    ``update(node_probs, targets, predictions=None)`` with node_probs [B, N] probabilities
    (or None for metrics that need only predictions), targets [B] label columns (negative =
    unlabelled) or [B, D] per-level columns, predictions [B, D] per-level columns with -1 below
    an early stop (``Decoded.nodes``), [B] node columns, or None for the per-level argmax of
    ``node_probs``. ``update(batch=...)`` takes an already formatted :class:`MetricBatch`
    instead (how :class:`~hmc.metrics.HierarchicalMetrics` feeds its children).
    ``compute()`` returns a dict of named scalars.
    """

    is_differentiable = False
    full_state_update = False
    needs_probs = False

    def __init__(self, hierarchy: Hierarchy, *, validate_args: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(
                "Expected argument `hierarchy` to be an hmc.Hierarchy, but got "
                f"{type(hierarchy).__name__}"
            )
        self.hierarchy = hierarchy  # shared by clones: Hierarchy.__deepcopy__ returns itself
        self.validate_args = bool(validate_args)

    def _add_sum(self, name: str, shape: tuple[int, ...] = (), dtype=torch.long) -> None:
        self.add_state(name, default=torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")

    def update(
        self,
        node_probs: Any = None,
        targets: Any = None,
        predictions: Any = None,
        *,
        batch: MetricBatch | None = None,
    ) -> None:
        """Accumulate one batch; see the class docstring for shapes."""
        if batch is None:
            batch = MetricBatch(
                self.hierarchy,
                node_probs,
                targets,
                predictions,
                validate_args=self.validate_args,
            )
        elif not (node_probs is None and targets is None and predictions is None):
            raise ValueError("Expected either `batch` or the tensors to be given, but got both")
        elif batch.hierarchy is not self.hierarchy:
            raise ValueError("Expected `batch` to be formatted for this metric's hierarchy")
        if self.needs_probs and batch.probs is None:
            raise ValueError(
                f"{type(self).__name__} needs `node_probs` [B, {self.hierarchy.num_nodes}], "
                "but got None"
            )
        if len(batch):
            self._update(batch)

    def _update(self, batch: MetricBatch) -> None:
        raise NotImplementedError

    def _per_level(self, prefix: str, values: Tensor) -> dict[str, Tensor]:
        """``{"<prefix>/<level name>": value}`` of [D] values."""
        names = self.hierarchy.level_names
        return {f"{prefix}/{n}": v for n, v in zip(names, values.unbind(), strict=True)}


class LevelAccuracy(HierarchicalMetric):
    """Per-level accuracy ("OA"): ``acc/<level>`` = share of the samples labelled at that level
    whose predicted column there equals the label's ancestor (an early stop above it is wrong);
    ``acc/mean`` = mean of the per-level values (over levels with at least one sample)."""

    higher_is_better = True

    def __init__(self, hierarchy: Hierarchy, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self._add_sum("correct", (hierarchy.num_levels,))
        self._add_sum("total", (hierarchy.num_levels,))

    def _update(self, batch: MetricBatch) -> None:
        counted = batch.level_targets >= 0
        self.correct += ((batch.predictions == batch.level_targets) & counted).sum(0)
        self.total += counted.sum(0)

    def compute(self) -> dict[str, Tensor]:
        acc = ratio(self.correct, self.total)
        out = self._per_level("acc", acc)
        out["acc/mean"] = acc.nanmean()  # NaN when no level has a sample
        return out


class FullPathAccuracy(HierarchicalMetric):
    """``fpa``: share of labelled samples whose predictions are correct at every level they are
    labelled at (levels 1..l for a label at level l; predictions below l are not looked at)."""

    higher_is_better = True

    def __init__(self, hierarchy: Hierarchy, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self._add_sum("correct")
        self._add_sum("total")

    def _update(self, batch: MetricBatch) -> None:
        lt = batch.level_targets
        ok = ((batch.predictions == lt) | (lt < 0)).all(1) & batch.labelled
        self.correct += ok.sum()
        self.total += batch.labelled.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"fpa": ratio(self.correct, self.total)}


class InconsistencyRate(HierarchicalMetric):
    """``tice``: share of labelled samples whose predictions at levels 1..l (the labelled levels)
    are not a path of the tree: some predicted node's parent is not the prediction one level up.
    A prefix path (-1 below an early stop) is consistent; a node below a -1 is not."""

    higher_is_better = False

    def __init__(self, hierarchy: Hierarchy, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self._add_sum("inconsistent")
        self._add_sum("total")

    def _update(self, batch: MetricBatch) -> None:
        pred = batch.predictions_within_labels()  # [B, D]
        parent = batch.tensors.parent[pred.clamp_min(0)]  # [B, D], -1 at level 1
        ok = (pred[:, 1:] < 0) | (parent[:, 1:] == pred[:, :-1])
        self.inconsistent += (~ok.all(1) & batch.labelled).sum()
        self.total += batch.labelled.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"tice": ratio(self.inconsistent, self.total)}


class HierarchicalF1(HierarchicalMetric):
    """Hierarchical precision, recall and F1 of Kiritchenko et al. (2005) over ancestor sets.

    For a sample labelled at level l, T = the label and its ancestors (l nodes, root excluded);
    P = the predicted nodes at levels 1..l and all their ancestors (a set: an inconsistent
    prediction may contribute more than one node per level). ``hp`` = sum|P n T| / sum|P|,
    ``hr`` = sum|P n T| / sum|T| (micro: sums over samples), ``hf1`` = 2 hp hr / (hp + hr).
    ``hf1/macro`` = mean over samples of 2|P n T| / (|P| + |T|) (example-based macro average;
    per-class averaging is ill-defined when labels sit at mixed depths), a float64 sum.
    """

    higher_is_better = True

    def __init__(self, hierarchy: Hierarchy, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self._add_sum("intersection")
        self._add_sum("predicted")
        self._add_sum("true")
        self._add_sum("samples")
        self._add_sum("f1_sum", dtype=torch.float64)

    def _update(self, batch: MetricBatch) -> None:
        pred = batch.predictions_within_labels()  # [B, D]
        paths = batch.tensors.paths
        anc = paths[pred.clamp_min(0)]  # [B, D (predicted level), D (ancestor level)]
        anc = torch.where(pred[:, :, None] >= 0, anc, -1)
        # An ancestor counts once per level: it is new unless a shallower prediction shares it.
        same = anc[:, :, None, :] == anc[:, None, :, :]  # [B, d, d', e]
        d = anc.shape[1]
        earlier = torch.ones(d, d, dtype=torch.bool, device=anc.device).tril(-1)
        seen = (same & earlier[None, :, :, None]).any(2)
        num_pred = ((anc >= 0) & ~seen).sum((1, 2))
        lt = batch.level_targets
        hit = ((anc == lt[:, None, :]) & (lt[:, None, :] >= 0)).any(1)  # [B, e]
        num_inter = hit.sum(1)
        num_true = batch.label_level
        lab = batch.labelled
        self.intersection += num_inter[lab].sum()
        self.predicted += num_pred[lab].sum()
        self.true += num_true[lab].sum()
        self.samples += lab.sum()
        self.f1_sum += ((2 * num_inter[lab]).double() / (num_pred + num_true)[lab]).sum()

    def compute(self) -> dict[str, Tensor]:
        hp = ratio(self.intersection, self.predicted)
        hr = ratio(self.intersection, self.true)
        hf1 = ratio(2 * self.intersection, self.predicted + self.true)
        macro = ratio(self.f1_sum, self.samples)
        return {"hp": hp, "hr": hr, "hf1": hf1, "hf1/macro": macro}


class MistakeSeverity(HierarchicalMetric):
    """``mistake_severity``: mean LCA height of top-1 mistakes, in levels.

    A sample labelled at level l (label y) is a mistake when its prediction at level l is not y
    (including an early stop above l). Its height is l - level(LCA(p, y)), where p is the
    prediction at level l, or, after an early stop, the deepest predicted node above l (no
    prediction at all: height l). Averaged over mistakes only (Bertinetto et al., 2020).
    """

    higher_is_better = False

    def __init__(self, hierarchy: Hierarchy, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self._add_sum("height")
        self._add_sum("mistakes")

    def _update(self, batch: MetricBatch) -> None:
        pred = batch.predictions_within_labels()
        level = batch.label_level
        y = batch.deepest_target()
        at_label = pred.gather(1, (level - 1).clamp_min(0)[:, None]).squeeze(1)
        mistake = batch.labelled & (at_label != y)
        depth = torch.arange(pred.shape[1], device=pred.device)
        deepest = torch.where(pred >= 0, depth, -1).max(1).values  # [B], -1: nothing predicted
        node = pred.gather(1, deepest.clamp_min(0)[:, None]).squeeze(1)
        lca = self.hierarchy.lca_level(node.clamp_min(0), y.clamp_min(0))
        height = level - torch.where(deepest >= 0, lca, 0)
        self.height += height[mistake].sum()
        self.mistakes += mistake.sum()

    def compute(self) -> dict[str, Tensor]:
        return {"mistake_severity": ratio(self.height, self.mistakes)}
