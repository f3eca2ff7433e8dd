"""Metrics that rank or bin the node probabilities: top-k accuracy, average hierarchical
distance, average precision and calibration error. All states are bounded (no per-sample
storage) and sum across processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hmc.hierarchy import Hierarchy
from hmc.metrics.batch import MetricBatch
from hmc.metrics.levels import HierarchicalMetric, check_int, ratio

__all__ = [
    "TopKAccuracy",
    "AverageHierarchicalDistance",
    "HierarchicalAveragePrecision",
    "LevelCalibrationError",
    "binned_average_precision",
]

_CHUNK = 1 << 22  # elements per step of the average precision's scan


def _check_ks(ks: int | Sequence[int], name: str) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"Expected argument `{name}` to be positive integers, but got {ks!r}")
    return tuple(sorted(set(ks)))


class TopKAccuracy(HierarchicalMetric):
    """``top<k>/<level>``: share of the samples labelled at a level whose label's ancestor there
    is among the k most probable nodes of that level (``node_probs`` restricted to the level's
    slice; k is clipped to the level's size). Ties are broken towards the lower column, as
    argmax does, so top-1 equals the accuracy of the per-level argmax."""

    higher_is_better = True
    needs_probs = True

    def __init__(self, hierarchy: Hierarchy, top_k: int | Sequence[int] = 5, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self.top_k = _check_ks(top_k, "top_k")
        self._add_sum("hits", (len(self.top_k), hierarchy.num_levels))
        self._add_sum("total", (hierarchy.num_levels,))

    def _update(self, batch: MetricBatch) -> None:
        h = self.hierarchy
        for d in range(1, h.num_levels + 1):
            col = batch.level_targets[:, d - 1]
            counted = col >= 0
            if not bool(counted.any()):
                continue
            size = h.level_slice(d).stop - h.level_slice(d).start
            ks = [min(k, size) for k in self.top_k]
            values, _ = batch.level_topk(d, max(ks))  # [B, k'] best first
            kth = values[:, [k - 1 for k in ks]]  # [B, K]
            pt = batch.target_probs(d)[:, None]  # [B, 1]
            hit = pt > kth  # rank < k unless the label ties with the k-th value
            tie = counted & (pt == kth).any(1)
            if bool(tie.any()):
                rows = tie.nonzero().squeeze(1)
                p = batch.level_probs(d)[rows]  # [R, n_d]
                local = col[rows] - h.level_slice(d).start
                before = torch.arange(size, device=p.device)[None, :] < local[:, None]
                ptr = pt[rows]
                rank = (p > ptr).sum(1) + ((p == ptr) & before).sum(1)
                hit[rows] = rank[:, None] < torch.tensor(ks, device=p.device)[None, :]
            self.hits[:, d - 1] += (hit & counted[:, None]).sum(0)
            self.total[d - 1] += counted.sum()

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.top_k):
            out.update(self._per_level(f"top{k}", ratio(self.hits[i], self.total)))
        return out


class AverageHierarchicalDistance(HierarchicalMetric):
    """``ahd@<k>`` (Bertinetto et al., 2020, "Making Better Mistakes"): for a sample labelled at
    level l, rank level l's nodes by probability and take the k best (k clipped to the level's
    size); the value is the mean over these (sample, prediction) pairs of the LCA height
    l - level(LCA(prediction, label)), in levels (0 for a correct prediction). Among equal
    probabilities at the k-th place, which node is taken is unspecified."""

    higher_is_better = False
    needs_probs = True

    def __init__(self, hierarchy: Hierarchy, k: int | Sequence[int] = (1, 5), **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self.k = _check_ks(k, "k")
        self._add_sum("height", (len(self.k),))
        self._add_sum("pairs", (len(self.k),))

    def _update(self, batch: MetricBatch) -> None:
        h = self.hierarchy
        y = batch.deepest_target()
        for d in range(1, h.num_levels + 1):
            rows = (batch.label_level == d).nonzero().squeeze(1)
            if not rows.numel():
                continue
            size = h.level_slice(d).stop - h.level_slice(d).start
            ks = [min(k, size) for k in self.k]
            _, cols = batch.level_topk(d, max(ks))
            cols = cols[rows]  # [R, k']
            height = d - h.lca_level(cols, y[rows, None].expand_as(cols))
            cum = height.cumsum(1)  # [R, k']
            idx = torch.tensor([k - 1 for k in ks], device=cum.device)
            self.height += cum[:, idx].sum(0)
            self.pairs += torch.tensor(ks, device=cum.device) * rows.numel()

    def compute(self) -> dict[str, Tensor]:
        return {
            f"ahd@{k}": v
            for k, v in zip(self.k, ratio(self.height, self.pairs).unbind(), strict=True)
        }


def binned_average_precision(pos: Tensor, neg: Tensor) -> Tensor:
    """Average precision from per-bin counts. pos, neg: [..., T] counts of positive and negative
    scores in bins [j/T, (j+1)/T) (1.0 in the last). With thresholds t_j = j/T:
    AP = sum_j (R_j - R_{j+1}) P_j, R_T = 0, P_j = 1 when nothing scores >= t_j (as torchmetrics'
    binned curve). NaN where there are no positives. -> [...]."""
    pos, neg = pos.to(torch.float64), neg.to(torch.float64)
    tp = pos.flip(-1).cumsum(-1).flip(-1)  # scores >= t_j
    fp = neg.flip(-1).cumsum(-1).flip(-1)
    called = tp + fp
    precision = torch.where(called > 0, tp / called.clamp_min(1), torch.ones_like(tp))
    total = tp[..., :1]
    recall = tp / total.clamp_min(1)
    drop = recall - torch.cat([recall[..., 1:], torch.zeros_like(recall[..., :1])], -1)
    ap = (drop * precision).sum(-1)
    return torch.where(total[..., 0] > 0, ap, torch.full_like(ap, float("nan")))


class HierarchicalAveragePrecision(HierarchicalMetric):
    """Average precision of the node-membership matrix (C-HMCNN's "AU(PRC)" micro average).

    Each (sample, node) pair at a level the sample is labelled at is one binary decision:
    positive when the node is the label or one of its ancestors, scored by ``node_probs``.
    ``ap/micro`` pools the pairs of all levels, ``ap/<level>`` those of one level. A score x
    falls in bin min(T - 1, floor(x * T)) of T = ``thresholds`` equal bins of [0, 1]
    (negative rounding slack in bin 0), and AP is computed at the thresholds j / T, so the
    state is 2 x levels x T counts whatever the number of samples. Binned AP is the exact AP of
    the scores replaced by their bins. It equals the exact AP of the scores when no bin holds
    two of them, and differs from it by at most (1/P) sum_j pos_j (n_j - 1) / N_j otherwise
    (P positives; n_j scores in bin j, N_j in bins >= j).
    """

    higher_is_better = True
    needs_probs = True

    def __init__(self, hierarchy: Hierarchy, thresholds: int = 200, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self.thresholds = check_int(thresholds, "thresholds", 2)
        self._add_sum("positives", (hierarchy.num_levels, thresholds))
        self._add_sum("negatives", (hierarchy.num_levels, thresholds))

    def _bin_counts(self, x: Tensor) -> Tensor:
        """[T] counts of the scores ``x`` (any shape) per bin; float64 keeps the rule exact."""
        t = self.thresholds
        idx = (x.double() * t).floor_().clamp_(0, t - 1).long()
        return torch.bincount(idx.flatten(), minlength=t)

    def _level_counts(self, p: Tensor, counted: Tensor) -> Tensor:
        """[T] bin counts of the scores of the counted rows of p [B, n], in row chunks that
        bound the float64 copy. A level's probabilities sum to at most 1, so few scores per row
        reach bin 1: only those go through the binning rule, the rest count in bin 0."""
        low = (1.0 - 1e-6) / self.thresholds  # below this the rule gives bin 0; margin: rounding
        counts = torch.zeros(self.thresholds, dtype=torch.long, device=p.device)
        step = max(1, _CHUNK // p.shape[1])
        for r0 in range(0, p.shape[0], step):
            chunk, rows = p[r0 : r0 + step], counted[r0 : r0 + step, None]
            big = chunk[(chunk >= low) & rows]
            counts += self._bin_counts(big)
            counts[0] += int(rows.sum()) * p.shape[1] - big.numel()
        return counts

    def _update(self, batch: MetricBatch) -> None:
        for d in range(1, self.hierarchy.num_levels + 1):
            counted = batch.level_targets[:, d - 1] >= 0
            if not bool(counted.any()):
                continue
            counts = self._level_counts(batch.level_probs(d), counted)
            pos = self._bin_counts(batch.target_probs(d)[counted])
            self.positives[d - 1] += pos
            self.negatives[d - 1] += counts - pos

    def compute(self) -> dict[str, Tensor]:
        per_level = binned_average_precision(self.positives, self.negatives)
        micro = binned_average_precision(self.positives.sum(0), self.negatives.sum(0))
        dtype = torch.get_default_dtype()
        return {"ap/micro": micro.to(dtype), **self._per_level("ap", per_level.to(dtype))}


class LevelCalibrationError(HierarchicalMetric):
    """``ece/<level>``: expected calibration error (L1) of the top-1 prediction within each
    level: confidence = the largest probability in the level's slice, correct = its node is the
    label's ancestor; ``n_bins`` equal-width confidence bins, binned as torchmetrics'
    ``MulticlassCalibrationError``. Independent of the decoder's predictions."""

    higher_is_better = False
    needs_probs = True

    def __init__(self, hierarchy: Hierarchy, n_bins: int = 15, **kwargs: Any):
        super().__init__(hierarchy, **kwargs)
        self.n_bins = check_int(n_bins, "n_bins", 1)
        shape = (hierarchy.num_levels, n_bins + 1)  # + 1: confidence exactly 1, as torchmetrics
        self._add_sum("count", shape)
        self._add_sum("correct", shape)
        self._add_sum("confidence", shape, dtype=torch.float64)

    def _update(self, batch: MetricBatch) -> None:
        for d in range(1, self.hierarchy.num_levels + 1):
            col = batch.level_targets[:, d - 1]
            counted = col >= 0
            if not bool(counted.any()):
                continue
            conf, pred = batch.level_max(d)
            conf, ok = conf[counted].clamp(0, 1), (pred == col)[counted]
            edges = torch.linspace(0, 1, self.n_bins + 1, dtype=conf.dtype, device=conf.device)
            idx = torch.bucketize(conf, edges, right=True) - 1
            self.count[d - 1] += torch.bincount(idx, minlength=self.n_bins + 1)
            self.correct[d - 1] += torch.bincount(idx[ok], minlength=self.n_bins + 1)
            self.confidence[d - 1] += torch.bincount(
                idx, weights=conf.double(), minlength=self.n_bins + 1
            )

    def compute(self) -> dict[str, Tensor]:
        count = self.count.to(torch.float64)
        n = count.sum(1, keepdim=True)
        gap = (self.correct - self.confidence).abs() / n.clamp_min(1)  # = prop * |acc - conf|
        ece = torch.where(n[:, 0] > 0, gap.sum(1), torch.full_like(n[:, 0], float("nan")))
        return self._per_level("ece", ece.to(torch.get_default_dtype()))
