"""Losses on ``[B, N]`` node scores and ``[B]`` node-column targets (any depth; negative =
unlabelled).

- :class:`CombinatorialLoss`: the HRN paper's combinatorial loss over hierarchy states.
- :class:`HRNLoss`: the paper's total loss, combinatorial loss + cross-entropy of a leaf head.
- :class:`PerLevelCrossEntropy`: one softmax per level ("level_logits" heads).
- :class:`LeafMarginalLoss`: leaf softmax, coarse labels by marginalisation ("leaf_log_probs").
- :func:`build_loss` by name. The names are the head names they fit (:data:`LOSSES`: "hrn",
  "flat", "leaf"; each head's ``default_loss``), plus "combinatorial" (HRN without the leaf term).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmc.checks import check_choice, check_node_scores, upcast_half
from hmc.hierarchy import Hierarchy
from hmc.hierarchy.marginals import leaf_to_node_log_probs
from hmc.sweeps import CombinatorialNLL, state_plan

__all__ = [
    "CombinatorialLoss",
    "HRNLoss",
    "PerLevelCrossEntropy",
    "LeafMarginalLoss",
    "build_loss",
    "sigmoid_loss_floor",
    "LOSSES",
    "LEAF_LOSSES",
]

_REDUCTIONS = ("mean", "sum", "none")
_SCORES = ("sigmoid", "logits")
# HRNLoss's leaf term: the paper's leaf-only cross-entropy, or the leaf-marginal likelihood.
LEAF_LOSSES = ("ce", "marginal")


def _labelled(
    h: Hierarchy, node_scores: Tensor, targets: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Validate shapes and labels. Returns (mask [B] bool of labelled samples, targets with
    unlabelled entries replaced by a valid column)."""
    check_node_scores(h, node_scores)
    if targets.ndim != 1 or targets.shape[0] != node_scores.shape[0]:
        raise ValueError(
            f"Expected `targets` of shape [{node_scores.shape[0]}] (one node column per sample), "
            f"but got {list(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"Expected `targets` to be integer node columns, but got {targets.dtype}")
    targets = targets.long()
    mask = targets >= 0
    if ignore_index >= 0:
        mask &= targets != ignore_index
    if targets.numel() and (bad := int(targets.max())) >= h.num_nodes:
        raise ValueError(
            f"Expected `targets` to be node columns in [0, {h.num_nodes}) or negative "
            f"(unlabelled), but got {bad}"
        )
    # Unlabelled samples get a placeholder label on the deepest level (any column would do;
    # this one keeps the backward's conditional sweep short).
    return mask, torch.where(mask, targets, h.num_nodes - 1)


def _reduce(per_sample: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Reduce [B] losses over labelled samples. "mean" of an all-unlabelled batch is 0 (kept in
    the graph, so every parameter still gets a zero gradient)."""
    per_sample = torch.where(mask, per_sample, 0.0)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp_min(1).to(total.dtype)


class CombinatorialLoss(nn.Module):
    """The HRN combinatorial loss (Chen et al., CVPR 2022) in log space, O(B x N).

    States: the empty state (score 0) and, for every node v, the path from level 1 to v, whose
    score is the sum of the node scores on it. For a sample labelled l (any depth),

        loss = -logsumexp_{states whose path contains l} score + logsumexp_{all states} score
             = -log P(l lies on the state's path).

    Args:
        hierarchy: the label tree; column j of ``node_scores`` is ``hierarchy.nodes[j]``.
        scores: ``"sigmoid"`` (the paper) applies a sigmoid to the inputs first. Node scores are
            then in (0, 1), so the loss has a floor above 0 that depends on the label and the
            tree (see :func:`sigmoid_loss_floor`): it never reaches 0 and its gradient never
            vanishes. ``"logits"`` uses the raw inputs; the loss then tends to 0.
        reduction: ``"mean"`` over labelled samples (0 if there are none), ``"sum"`` or
            ``"none"`` ([B], 0 for unlabelled samples).
        ignore_index: target value of unlabelled samples (every negative target is unlabelled).

    Shapes: node_scores [B, N] (any float dtype; half is computed in float32), targets [B] long.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        scores: str = "sigmoid",
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        check_choice("scores", scores, _SCORES)
        check_choice("reduction", reduction, _REDUCTIONS)
        self.hierarchy = hierarchy
        self.scores = scores
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, node_scores: Tensor, targets: Tensor, leaf_logits: Tensor | None = None):
        mask, t = _labelled(self.hierarchy, node_scores, targets, self.ignore_index)
        x = upcast_half(node_scores)
        plan = state_plan(self.hierarchy, x.device)
        per_sample = CombinatorialNLL.apply(x, t, plan, self.scores == "sigmoid")
        return _reduce(per_sample, mask, self.reduction)

    def extra_repr(self) -> str:
        return f"scores={self.scores!r}, reduction={self.reduction!r}, ignore={self.ignore_index}"


def sigmoid_loss_floor(hierarchy: Hierarchy, targets: Tensor) -> Tensor:
    """[B] infimum of the ``scores="sigmoid"`` combinatorial loss for each label (0 for negative
    targets).

    The probability of the label's subtree is increasing in the scores of the label, its
    ancestors and its descendants, and decreasing in every other score, so the infimum over
    scores in (0, 1) is reached in the limit of 1 on those nodes and 0 elsewhere. With 0 scores
    the empty state and the states that leave the label's path still weigh exp(0) or more.
    """
    t = targets.long()
    mask = t >= 0
    t = torch.where(mask, t, torch.zeros_like(t))
    tens = hierarchy.tensors(t.device)
    lev = tens.levels[t]
    # v is in l's subtree iff its ancestor at l's level is l.
    in_subtree = tens.paths.t()[lev - 1] == t[:, None]  # [B, N]
    path = tens.paths[t]
    on_path = torch.zeros(in_subtree.shape, device=t.device).scatter_add_(
        1, path.clamp_min(0), (path >= 0).float()
    )  # [B, N] > 0 at l and its ancestors
    s = (in_subtree | (on_path > 0)).float()
    loss = CombinatorialLoss(hierarchy, scores="logits", reduction="none")
    with torch.no_grad():
        per_sample = loss(s, t)
    return torch.where(mask, per_sample, torch.zeros_like(per_sample))


class HRNLoss(nn.Module):
    """The HRN paper's total loss: ``combinatorial_weight * CombinatorialLoss +
    leaf_weight * cross-entropy`` of a separate leaf head.

    Defaults follow ``benchmarks/results/relabel_study.md`` (issue 12): ``scores="logits"``
    (raw state scores; more accurate than the paper's sigmoid at 50-90 % relabelled labels)
    and ``leaf_loss="ce"``. The paper's exact recipe is ``scores="sigmoid", leaf_loss="ce"``.

    The cross-entropy uses ``leaf_logits`` [B, L] (column j = leaf column
    ``h.tensors().leaves[j]``) and only the samples labelled with a leaf; with ``"mean"`` it is
    averaged over those samples and is 0 when there are none. The combinatorial term uses every
    labelled sample. ``parts(...)`` returns the terms separately, for logging.

    ``leaf_loss`` selects the leaf term: ``"ce"`` is the paper's exact recipe above;
    ``"marginal"`` trains the leaf head on every labelled sample with the leaf-marginal
    likelihood ``-log sum_{leaves l below the label} softmax(leaf_logits)_l`` (a coarse label
    counts through its leaves, as :class:`LeafMarginalLoss`), issue 12 (c).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        scores: str = "logits",
        combinatorial_weight: float = 1.0,
        leaf_weight: float = 1.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        leaf_loss: str = "ce",
    ) -> None:
        super().__init__()
        check_choice("leaf_loss", leaf_loss, LEAF_LOSSES)
        self.leaf_loss = leaf_loss
        self.combinatorial = CombinatorialLoss(hierarchy, scores, reduction, ignore_index)
        self.hierarchy = hierarchy
        self.combinatorial_weight = float(combinatorial_weight)
        self.leaf_weight = float(leaf_weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        leaves = hierarchy.tensors().leaves
        leaf_pos = torch.full((hierarchy.num_nodes,), -1, dtype=torch.long)
        leaf_pos[leaves] = torch.arange(len(leaves))
        self.num_leaves = len(leaves)
        self.register_buffer("leaf_position", leaf_pos, persistent=False)

    def parts(
        self, node_scores: Tensor, targets: Tensor, leaf_logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """{"combinatorial", "leaf_ce", "total"}; each reduced as ``reduction`` says."""
        comb = self.combinatorial(node_scores, targets)
        if leaf_logits is None:
            if self.leaf_weight != 0:
                raise ValueError(
                    "HRNLoss needs `leaf_logits` (the model's leaf head output, "
                    "HeadOutput.leaf_logits) unless leaf_weight=0"
                )
            leaf_ce = torch.zeros_like(comb)
        else:
            n_leaves = self.num_leaves
            if leaf_logits.ndim != 2 or leaf_logits.shape != (node_scores.shape[0], n_leaves):
                raise ValueError(
                    f"Expected `leaf_logits` of shape [{node_scores.shape[0]}, {n_leaves}] (one "
                    f"column per leaf), but got {list(leaf_logits.shape)}"
                )
            mask, t = _labelled(self.hierarchy, node_scores, targets, self.ignore_index)
            z = upcast_half(leaf_logits)
            if self.leaf_loss == "marginal":  # -log of the label's leaves' summed softmax
                node_lp = leaf_to_node_log_probs(self.hierarchy, F.log_softmax(z, 1))  # [B, N]
                nll = -node_lp.gather(1, t[:, None]).squeeze(1)
                leaf_ce = _reduce(nll, mask, self.reduction)
            else:
                leaf_t = self.leaf_position.to(t.device)[t]
                mask = mask & (leaf_t >= 0)
                ce = F.cross_entropy(z, leaf_t.clamp_min(0), reduction="none")
                leaf_ce = _reduce(ce, mask, self.reduction)
        total = self.combinatorial_weight * comb + self.leaf_weight * leaf_ce
        return {"combinatorial": comb, "leaf_ce": leaf_ce, "total": total}

    def forward(self, node_scores: Tensor, targets: Tensor, leaf_logits: Tensor | None = None):
        return self.parts(node_scores, targets, leaf_logits)["total"]

    def extra_repr(self) -> str:
        return (
            f"combinatorial_weight={self.combinatorial_weight}, leaf_weight={self.leaf_weight}, "
            f"leaf_loss={self.leaf_loss!r}"
        )


class _BaselineLoss(nn.Module):
    """Shared options of the baseline losses: the hierarchy, ``reduction`` and ``ignore_index``."""

    def __init__(
        self, hierarchy: Hierarchy, reduction: str = "mean", ignore_index: int = -100
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, _REDUCTIONS)
        self.hierarchy = hierarchy
        self.reduction = reduction
        self.ignore_index = ignore_index


class PerLevelCrossEntropy(_BaselineLoss):
    """Baseline for "level_logits" heads: one softmax cross-entropy per level, on the level's
    slice of ``node_scores``, summed over the levels a sample is labelled at (levels below a
    coarse label are unknown and skipped). ``"mean"`` averages the per-sample sums over the
    labelled samples."""

    def forward(self, node_scores: Tensor, targets: Tensor, leaf_logits: Tensor | None = None):
        h = self.hierarchy
        mask, t = _labelled(h, node_scores, targets, self.ignore_index)
        s = upcast_half(node_scores)
        level_t = h.level_targets(torch.where(mask, t, torch.full_like(t, -1)))  # [B, D]
        per_sample = s.new_zeros(s.shape[0])
        for d in range(1, h.num_levels + 1):
            sl = h.level_slice(d)
            td = level_t[:, d - 1]
            known = td >= 0
            ce = F.cross_entropy(s[:, sl], (td - sl.start).clamp_min(0), reduction="none")
            per_sample = per_sample + torch.where(known, ce, torch.zeros_like(ce))
        return _reduce(per_sample, mask, self.reduction)


class LeafMarginalLoss(_BaselineLoss):
    """Baseline for "leaf_log_probs" heads (one softmax over the leaves): the negative log
    probability of the label, where a coarse label's probability is the sum of its leaves'.

    ``node_scores`` must already be log P(node) (see :func:`hmc.models.leaf_log_marginals`,
    which the LeafHead applies), so the loss is ``-node_scores[b, target[b]]``."""

    def forward(self, node_scores: Tensor, targets: Tensor, leaf_logits: Tensor | None = None):
        mask, t = _labelled(self.hierarchy, node_scores, targets, self.ignore_index)
        per_sample = -upcast_half(node_scores).gather(1, t[:, None]).squeeze(1)
        return _reduce(per_sample, mask, self.reduction)


# Named after the heads they fit (a head's ``default_loss``), plus "combinatorial".
LOSSES: dict[str, type[nn.Module]] = {
    "hrn": HRNLoss,
    "combinatorial": CombinatorialLoss,
    "flat": PerLevelCrossEntropy,
    "leaf": LeafMarginalLoss,
}


def build_loss(hierarchy: Hierarchy, name: str, **loss_kwargs: Any) -> nn.Module:
    """A loss by name (:data:`LOSSES`): "hrn" (:class:`HRNLoss`), "combinatorial"
    (:class:`CombinatorialLoss`), "flat" (:class:`PerLevelCrossEntropy`) or "leaf"
    (:class:`LeafMarginalLoss`); ``loss_kwargs`` go to its constructor."""
    check_choice("loss", name, LOSSES)
    return LOSSES[name](hierarchy, **loss_kwargs)
