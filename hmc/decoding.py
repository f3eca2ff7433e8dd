"""Node probabilities and decoders for every head kind.

Head kinds (``score_kind`` of a head):

- ``"states"``: HRN scores of the combinatorial state distribution (``scores="sigmoid"`` applies
  a sigmoid first, as the paper does). P(v) is the marginal probability that v lies on the
  state's path (:func:`node_marginals`).
- ``"level_logits"``: one softmax per level; P(v) is v's softmax probability in its level.
- ``"leaf_log_probs"``: node_scores are already log P(v) (:func:`leaf_log_marginals`).

Decoders return :class:`Decoded`: one column per level (-1 below an early stop), the
probability of each chosen node, and the [B, N] node probabilities.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hmc.hierarchy import Hierarchy
from hmc.sweeps import log_conditionals, marginals_from_log_conditionals, path_sums, state_plan

__all__ = [
    "Decoded",
    "KINDS",
    "METHODS",
    "decode",
    "leaf_log_marginals",
    "node_marginals",
    "node_probabilities",
]

KINDS = ("states", "level_logits", "leaf_log_probs")
METHODS = ("argmax", "marginal", "map", "threshold")


class Decoded(NamedTuple):
    """nodes: [B, D] long, the column chosen at each level, -1 below an early stop.
    probs: [B, D] float, probability of each chosen node (0 where -1).
    node_probs: [B, N] float, the node probabilities the decoder used."""

    nodes: Tensor
    probs: Tensor
    node_probs: Tensor


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}"
        )


def _check_scores(h: Hierarchy, node_scores: Tensor) -> Tensor:
    if node_scores.ndim != 2 or node_scores.shape[1] != h.num_nodes:
        raise ValueError(
            f"Expected `node_scores` of shape [B, {h.num_nodes}] (one column per node of "
            f"{h!r}), but got {list(node_scores.shape)}"
        )
    return (
        node_scores.float() if node_scores.dtype in (torch.float16, torch.bfloat16) else node_scores
    )


def node_marginals(h: Hierarchy, node_scores: Tensor, scores: str = "sigmoid") -> Tensor:
    """[B, N] probability, under the combinatorial state distribution, that each node lies on
    the state's path. Exact, O(B x N), differentiable. Along any path the marginals do not
    increase; the level-d marginals sum to P(the state's path reaches level d) <= 1.

    node_scores: [B, N] HRN scores; ``scores="sigmoid"`` applies a sigmoid first.
    """
    _check_choice("scores", scores, ("sigmoid", "logits"))
    s = _check_scores(h, node_scores)
    if scores == "sigmoid":
        s = torch.sigmoid(s)
    plan = state_plan(h, s.device)
    with torch.autocast(s.device.type, enabled=False):
        marg = marginals_from_log_conditionals(plan, log_conditionals(plan, s.t().contiguous()))
    return marg.t().contiguous()


def leaf_log_marginals(h: Hierarchy, leaf_logits: Tensor) -> Tensor:
    """[B, N] log P(v) = logsumexp of the leaf log-softmax over the leaves below v.

    leaf_logits: [B, L], column j = leaf column ``h.tensors().leaves[j]``. Vectorised as one
    scatter over the (leaf, ancestor) pairs of ``h.tensors().paths``; differentiable; a leaf's
    column is exactly its log-softmax. Half inputs are computed in float32.
    """
    t = h.tensors(leaf_logits.device)
    n_leaves = t.leaves.numel()
    if leaf_logits.ndim != 2 or leaf_logits.shape[1] != n_leaves:
        raise ValueError(
            f"Expected `leaf_logits` of shape [B, {n_leaves}] (one column per leaf of {h!r}), "
            f"but got {list(leaf_logits.shape)}"
        )
    x = leaf_logits.float() if leaf_logits.dtype in (torch.float16, torch.bfloat16) else leaf_logits
    with torch.autocast(x.device.type, enabled=False):
        lp_t = F.log_softmax(x, 1).t()  # [L, B]
        anc = t.paths[t.leaves]  # [L, D]: each leaf's ancestors (itself included)
        valid = anc >= 0
        node = anc[valid]  # [P] ancestor column of each (leaf, ancestor) pair
        src = torch.arange(n_leaves, device=x.device)[:, None].expand_as(anc)[valid]  # [P]
        vals = lp_t.index_select(0, src)  # [P, B]
        # Exact per-node max (node-major scatters are fast); detached, the result is independent.
        m = vals.new_full((h.num_nodes, vals.shape[1]), -torch.inf)
        m = m.scatter_reduce_(0, node[:, None].expand_as(vals), vals.detach(), "amax")
        tot = torch.zeros_like(m).index_add(0, node, torch.exp(vals - m.index_select(0, node)))
        out = m + torch.log(tot)
    return out.t().contiguous()


def node_probabilities(
    h: Hierarchy, node_scores: Tensor, kind: str = "states", scores: str = "sigmoid"
) -> Tensor:
    """[B, N] probability of each node for a head of ``kind`` (see the module docstring).
    For "states" these are :func:`node_marginals`; for "level_logits" a softmax per level; for
    "leaf_log_probs" ``exp(node_scores)``."""
    _check_choice("kind", kind, KINDS)
    s = _check_scores(h, node_scores)
    if kind == "states":
        return node_marginals(h, s, scores=scores)
    if kind == "leaf_log_probs":
        return s.exp()
    return torch.cat(
        [torch.softmax(s[:, h.level_slice(d)], 1) for d in range(1, h.num_levels + 1)], 1
    )


def _greedy(h: Hierarchy, probs: Tensor) -> Tensor:
    """[B, D] top-down path: the most probable level-1 node, then the most probable child of
    the previous choice; -1 below a leaf."""
    plan = state_plan(h, probs.device)
    b = probs.shape[0]
    out = torch.full((b, h.num_levels), -1, dtype=torch.long, device=probs.device)
    prev = None  # [B] local index of the previous choice, -1 when the path ended
    for d in range(1, h.num_levels + 1):
        sl = plan.level(d)
        pd = probs[:, sl]
        if prev is None:
            allowed = torch.ones_like(pd, dtype=torch.bool)
        else:
            allowed = plan.parents[d - 1][None, :] == prev[:, None]
        pick = torch.where(allowed, pd, torch.full_like(pd, -torch.inf)).argmax(1)
        ok = allowed.any(1)
        prev = torch.where(ok, pick, torch.full_like(pick, -1))
        out[:, d - 1] = torch.where(ok, pick + sl.start, prev)
    return out


def _map_path(h: Hierarchy, s: Tensor, kind: str, scores: str) -> Tensor:
    """[B, D] the complete path (level 1 to a leaf, leaves at any depth) of highest score."""
    plan = state_plan(h, s.device)
    if kind == "leaf_log_probs":
        path_score = s  # log P(leaf) is the probability of its complete path
    else:
        if kind == "states":
            w = torch.sigmoid(s) if scores == "sigmoid" else s
        else:
            w = torch.cat(
                [F.log_softmax(s[:, h.level_slice(d)], 1) for d in range(1, h.num_levels + 1)], 1
            )
        path_score = path_sums(plan, w.t().contiguous()).t()
    leaves = plan.is_leaf.nonzero().flatten()
    best = leaves[path_score[:, leaves].argmax(1)]  # [B]
    return plan.paths[best]


def decode(
    h: Hierarchy,
    node_scores: Tensor,
    method: str = "argmax",
    *,
    kind: str = "states",
    scores: str = "sigmoid",
    threshold: float = 0.5,
) -> Decoded:
    """Decode [B, N] node scores of a head of ``kind`` into one node per level.

    Methods (P = :func:`node_probabilities`):

    - ``"argmax"``: independent argmax in each level, the HRN paper's evaluation. For "states"
      it is the argmax of the raw scores (as the paper; the sigmoid keeps the order), for the
      other kinds of P (the same as of the logits). The levels can disagree with the tree.
    - ``"marginal"``: consistent, top-down: the most probable level-1 node by P, then the most
      probable child of each choice, down to a leaf.
    - ``"map"``: the most probable complete path, from level 1 to a leaf (on ragged trees,
      leaves at any depth are complete paths). "states": the highest-scoring state among the
      states that end at a leaf. We exclude the empty state and the states that stop early so
      that "map" always names a node at each level of a complete path: with the default
      sigmoid scores every node score is positive, so extending a path always raises its score
      and this is also the best state overall; stopping early is what "threshold" is for, with
      a calibrated probability. "leaf_log_probs": the leaf of highest probability (P(path) =
      P(leaf)). "level_logits": the path maximising the sum over its levels of the per-level
      log-softmax (a product of independent per-level factors, renormalised over complete
      paths; a shallower leaf has fewer factors).
    - ``"threshold"``: the "marginal" path cut just above its first node with P < threshold
      ("a warbler, species unsure"). For "states" and "leaf_log_probs" P never increases down
      a path, and for threshold > 0.5 this is exactly the deepest node with P >= threshold.

    ``probs`` holds P of each chosen node (0 below a stop).
    """
    _check_choice("method", method, METHODS)
    _check_choice("kind", kind, KINDS)
    _check_choice("scores", scores, ("sigmoid", "logits"))
    s = _check_scores(h, node_scores)
    with torch.no_grad():
        probs = node_probabilities(h, s, kind=kind, scores=scores)
        if method == "argmax":
            ranked = s if kind == "states" else probs
            nodes = torch.stack(
                [
                    ranked[:, h.level_slice(d)].argmax(1) + h.level_slice(d).start
                    for d in range(1, h.num_levels + 1)
                ],
                1,
            )
        elif method == "map":
            nodes = _map_path(h, s, kind, scores)
        else:
            nodes = _greedy(h, probs)
        chosen = torch.where(nodes >= 0, probs.gather(1, nodes.clamp_min(0)), 0.0)
        if method == "threshold":
            keep = (chosen >= threshold).long().cumprod(1).bool() & (nodes >= 0)
            nodes = torch.where(keep, nodes, torch.full_like(nodes, -1))
            chosen = torch.where(keep, chosen, torch.zeros_like(chosen))
    return Decoded(nodes, chosen, probs)
