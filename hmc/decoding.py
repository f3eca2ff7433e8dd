"""Node probabilities and decoders for every head's score kind.

Score kinds (``score_kind`` of a head, :data:`SCORE_KINDS`):

- ``"states"``: HRN scores of the combinatorial state distribution (``scores="sigmoid"`` applies
  a sigmoid first, as the paper does). P(v) is the marginal probability that v lies on the
  state's path (:func:`node_marginals`).
- ``"level_logits"``: one softmax per level; P(v) is v's softmax probability in its level.
- ``"leaf_log_probs"``: node_scores are already log P(v) (the LeafHead marginalises its leaf
  softmax, :func:`hmc.models.leaf_log_marginals`).

Decoders (:data:`DECODERS`) turn a head's output into :class:`Decoded`: one column per level
(-1 below an early stop), the probability of each chosen node, and the [B, N] node
probabilities. Every entry point takes the head's output (a :class:`hmc.models.HeadOutput`, or
its ``node_scores`` tensor alone), so a decoder that needs more than the node scores (e.g. the
leaf logits) can be added without changing a caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hmc.checks import check_choice, check_node_scores
from hmc.hierarchy import Hierarchy
from hmc.sweeps import log_conditionals, marginals_from_log_conditionals, path_sums, state_plan

__all__ = [
    "DECODERS",
    "DECODER_OPTIONS",
    "SCORES",
    "SCORE_KINDS",
    "Decoded",
    "check_decoder",
    "decode",
    "node_marginals",
    "node_probabilities",
]

SCORE_KINDS = ("states", "level_logits", "leaf_log_probs")
SCORES = ("sigmoid", "logits")
# Each decoder's options (``decoder_kwargs``) and their defaults.
DECODER_OPTIONS: dict[str, dict[str, Any]] = {
    "argmax": {},
    "marginal": {},
    "map": {},
    "threshold": {"threshold": 0.5},
}
DECODERS = tuple(DECODER_OPTIONS)


class Decoded(NamedTuple):
    """nodes: [B, D] long, the column chosen at each level, -1 below an early stop.
    probs: [B, D] float, probability of each chosen node (0 where -1).
    node_probs: [B, N] float, the node probabilities the decoder used."""

    nodes: Tensor
    probs: Tensor
    node_probs: Tensor


def check_decoder(decoder: str, decoder_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a decoder name and its options; return the options with their defaults filled in
    (e.g. ``check_decoder("threshold") == {"threshold": 0.5}``)."""
    check_choice("decoder", decoder, DECODERS)
    allowed = DECODER_OPTIONS[decoder]
    given = dict(decoder_kwargs or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"Expected `decoder_kwargs` of decoder {decoder!r} to be among {sorted(allowed)}, "
            f"but got {unknown}"
        )
    return {**allowed, **given}


def _node_scores(hierarchy: Hierarchy, output: Any) -> Tensor:
    """The [B, N] node scores of a head's output (a HeadOutput or the tensor itself)."""
    scores = output if isinstance(output, Tensor) else getattr(output, "node_scores", None)
    if not isinstance(scores, Tensor):
        raise TypeError(
            "Expected `output` to be a head's output (with `.node_scores`) or a [B, N] tensor, "
            f"but got {type(output).__name__}"
        )
    return check_node_scores(hierarchy, scores)


def node_marginals(hierarchy: Hierarchy, output: Any, scores: str = "sigmoid") -> Tensor:
    """[B, N] probability, under the combinatorial state distribution, that each node lies on
    the state's path. Exact, O(B x N), differentiable. Along any path the marginals do not
    increase; the level-d marginals sum to P(the state's path reaches level d) <= 1.

    output: an HRN head's output, or its [B, N] node scores; ``scores="sigmoid"`` applies a
    sigmoid first.
    """
    check_choice("scores", scores, SCORES)
    s = _node_scores(hierarchy, output)
    if scores == "sigmoid":
        s = torch.sigmoid(s)
    plan = state_plan(hierarchy, s.device)
    with torch.autocast(s.device.type, enabled=False):
        marg = marginals_from_log_conditionals(plan, log_conditionals(plan, s.t().contiguous()))
    return marg.t().contiguous()


def node_probabilities(
    hierarchy: Hierarchy, output: Any, score_kind: str = "states", scores: str = "sigmoid"
) -> Tensor:
    """[B, N] probability of each node for a head of ``score_kind`` (see the module
    docstring). For "states" these are :func:`node_marginals`; for "level_logits" a softmax
    per level; for "leaf_log_probs" ``exp(node_scores)``. ``scores`` matters for "states" only.
    """
    check_choice("score_kind", score_kind, SCORE_KINDS)
    s = _node_scores(hierarchy, output)
    if score_kind == "states":
        return node_marginals(hierarchy, s, scores=scores)
    if score_kind == "leaf_log_probs":
        return s.exp()
    levels = range(1, hierarchy.num_levels + 1)
    return torch.cat([torch.softmax(s[:, hierarchy.level_slice(d)], 1) for d in levels], 1)


# ------------------------------------------------------------------------------ decoders
# Each decoder: (hierarchy, node scores [B, N], node probabilities [B, N], score_kind, scores,
# **its options) -> nodes [B, D] (-1 below an early stop).
def _argmax(h: Hierarchy, s: Tensor, probs: Tensor, score_kind: str, scores: str) -> Tensor:
    ranked = s if score_kind == "states" else probs
    levels = [h.level_slice(d) for d in range(1, h.num_levels + 1)]
    return torch.stack([ranked[:, sl].argmax(1) + sl.start for sl in levels], 1)


def _greedy(h: Hierarchy, s: Tensor, probs: Tensor, score_kind: str, scores: str) -> Tensor:
    """Top-down path: the most probable level-1 node, then the most probable child of the
    previous choice; -1 below a leaf."""
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


def _map_path(h: Hierarchy, s: Tensor, probs: Tensor, score_kind: str, scores: str) -> Tensor:
    """The complete path (level 1 to a leaf, leaves at any depth) of highest score."""
    plan = state_plan(h, s.device)
    if score_kind == "leaf_log_probs":
        path_score = s  # log P(leaf) is the probability of its complete path
    else:
        if score_kind == "states":
            w = torch.sigmoid(s) if scores == "sigmoid" else s
        else:
            levels = range(1, h.num_levels + 1)
            w = torch.cat([F.log_softmax(s[:, h.level_slice(d)], 1) for d in levels], 1)
        path_score = path_sums(plan, w.t().contiguous()).t()
    leaves = plan.is_leaf.nonzero().flatten()
    best = leaves[path_score[:, leaves].argmax(1)]  # [B]
    return plan.paths[best]


def _threshold(
    h: Hierarchy, s: Tensor, probs: Tensor, score_kind: str, scores: str, threshold: float
) -> Tensor:
    nodes = _greedy(h, s, probs, score_kind, scores)
    chosen = probs.gather(1, nodes.clamp_min(0))
    # Kept until the first node below the threshold; cumsum, not cumprod: ONNX has CumSum only.
    keep = ((chosen < threshold).long().cumsum(1) == 0) & (nodes >= 0)
    return torch.where(keep, nodes, torch.full_like(nodes, -1))


_DECODER_FNS: dict[str, Callable[..., Tensor]] = {
    "argmax": _argmax,
    "marginal": _greedy,
    "map": _map_path,
    "threshold": _threshold,
}


def decode(
    hierarchy: Hierarchy,
    output: Any,
    decoder: str = "argmax",
    *,
    score_kind: str = "states",
    scores: str = "sigmoid",
    **decoder_kwargs: Any,
) -> Decoded:
    """Decode a head's output (or its [B, N] node scores) into one node per level.

    Decoders (P = :func:`node_probabilities`):

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
    - ``"threshold"`` (option ``threshold=0.5``): the "marginal" path cut just above its first
      node with P < threshold ("a warbler, species unsure"). For "states" and
      "leaf_log_probs" P never increases down a path, and for threshold > 0.5 this is exactly
      the deepest node with P >= threshold.

    ``decoder_kwargs`` are the decoder's options (:data:`DECODER_OPTIONS`). ``probs`` holds P
    of each chosen node (0 below a stop).
    """
    options = check_decoder(decoder, decoder_kwargs)
    check_choice("score_kind", score_kind, SCORE_KINDS)
    check_choice("scores", scores, SCORES)
    s = _node_scores(hierarchy, output)
    with torch.no_grad():
        # The whole output, so that a probability model may read more than the node scores.
        probs = node_probabilities(hierarchy, output, score_kind=score_kind, scores=scores)
        nodes = _DECODER_FNS[decoder](hierarchy, s, probs, score_kind, scores, **options)
        chosen = torch.where(nodes >= 0, probs.gather(1, nodes.clamp_min(0)), 0.0)
    return Decoded(nodes, chosen, probs)
