"""Leaf log-probabilities summed up the tree: one routine for the leaf head, the decoders and
the leaf-marginal loss. It imports torch at the top (TorchScript compiles
:func:`scatter_logsumexp` into the LeafHead), so ``hmc.hierarchy`` itself does not import it."""

from __future__ import annotations

import torch
from torch import Tensor

from hmc.hierarchy.tree import Hierarchy

__all__ = ["leaf_ancestor_pairs", "leaf_to_node_log_probs", "scatter_logsumexp"]


def leaf_ancestor_pairs(h: Hierarchy, device: torch.device | str | None = None):
    """(leaf position j, ancestor column v) for every leaf and every ancestor of it including
    itself: two [E] long tensors on ``device`` (cached), E = sum of leaf depths."""

    def build() -> tuple[Tensor, Tensor]:
        t = h.tensors(device)
        paths = t.paths[t.leaves]  # (L, D), -1 padded
        valid = paths >= 0
        leaf_pos = torch.arange(paths.shape[0], device=paths.device)[:, None].expand_as(paths)
        return leaf_pos[valid], paths[valid]

    return h.derived("leaf_ancestor_pairs", device, build)


def scatter_logsumexp(values: Tensor, src: Tensor, dst: Tensor, num_out: int) -> Tensor:
    """out[b, v] = logsumexp over pairs e with dst[e] == v of values[b, src[e]].
    values: [B, L]; src, dst: [E]; -> [B, num_out]. Stable: subtracts each group's max, so
    probabilities far below float32's range stay finite in log space (a sum of softmax
    probabilities would give log 0). O(B x E); index tensors only, so the LeafHead scripts,
    traces and exports (tests/models/test_models.py)."""
    gathered = values.index_select(1, src)  # (B, E)
    index = dst.unsqueeze(0).expand_as(gathered)
    shape = (values.shape[0], num_out)
    group_max = values.new_full(shape, float("-inf")).scatter_reduce(
        1, index, gathered, reduce="amax", include_self=True
    )
    group_max = torch.where(torch.isinf(group_max), torch.zeros_like(group_max), group_max)
    group_max = group_max.detach()  # a shift only; keeps the gradient of amax out
    total = values.new_zeros(shape).scatter_add(
        1, index, (gathered - group_max.gather(1, index)).exp()
    )
    return total.log() + group_max


def leaf_to_node_log_probs(h: Hierarchy, leaf_log_probs: Tensor) -> Tensor:
    """[B, L] log P(leaf) (column j = leaf column ``h.tensors().leaves[j]``) -> [B, N]
    log P(v) = logsumexp over the leaves below v (a leaf's column is its own value)."""
    src, dst = leaf_ancestor_pairs(h, leaf_log_probs.device)
    return scatter_logsumexp(leaf_log_probs, src, dst, h.num_nodes)
