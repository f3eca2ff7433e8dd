"""Node probabilities and decoders for every head's score kind.

Score kinds (``score_kind`` of a head, :data:`SCORE_KINDS`):

- ``"states"``: HRN scores of the combinatorial state distribution (``scores="sigmoid"`` applies
  a sigmoid first, as the paper does), plus the leaf head's ``leaf_logits``. P(v) comes from
  one of the probability models :data:`PROBABILITIES` (``probabilities=``): ``"states"``, the
  state distribution's node marginals (:func:`node_marginals`); ``"leafhead"``, the leaf
  head's softmax summed up the tree; ``"product"`` (:data:`DEFAULT_PROBABILITIES`), the two
  combined, P(leaf) proportional to the leaf head's probability times the state
  distribution's probability of the leaf's complete path. Why "product" by default: in
  ``benchmarks/relabel_study.py`` it is the most accurate HRN model with consistent decoding,
  while "states" with sigmoid scores cannot express confidence (a 200-species tree caps a
  species near 7 %) and is the least accurate.
- ``"level_logits"``: one softmax per level; P(v) is v's softmax probability in its level.
- ``"leaf_log_probs"``: node_scores are already log P(v) (the LeafHead marginalises its leaf
  softmax, :func:`hmc.models.leaf_log_marginals`).

Calibration temperatures (``temperatures={"node_scores": T, "leaf_logits": T}``, fitted by
:mod:`hmc.calibration`) divide the leaf logits and the (post-sigmoid) state scores, or the
level logits, inside the probability model.

Decoders (:data:`DECODERS`) turn a head's output into :class:`Decoded`: one column per level
(-1 below an early stop), the probability of each chosen node, and the [B, N] node
probabilities. Every entry point takes the head's whole output (a
:class:`hmc.models.HeadOutput`); a bare ``node_scores`` tensor works only where the leaf logits
are not needed (the "paper" decoder and the "leafhead" / "product" models raise a ValueError
naming themselves and the score kind).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hmc.checks import check_choice, check_node_scores, upcast_half
from hmc.hierarchy import Hierarchy
from hmc.hierarchy.marginals import leaf_to_node_log_probs
from hmc.numpy_decoding import (
    DECODER_OPTIONS,
    DECODERS,
    DEFAULT_PROBABILITIES,
    PROBABILITIES,
    SCORE_KINDS,
    SCORES,
    TEMPERATURE_FIELDS,
    check_decoder,
)
from hmc.sweeps import log_conditionals, marginals_from_log_conditionals, path_sums, state_plan

__all__ = [
    "DECODERS",
    "DECODER_OPTIONS",
    "DEFAULT_PROBABILITIES",
    "PROBABILITIES",
    "SCORES",
    "SCORE_KINDS",
    "Decoded",
    "check_decoder",
    "decode",
    "node_log_probabilities",
    "resolve_probabilities",
    "node_marginals",
    "node_probabilities",
]


# The tables (score kinds, probability models, each decoder's options and defaults, the head
# outputs a temperature may apply to) have one copy, in the torch-free module that the ONNX
# predictor shares.
class Decoded(NamedTuple):
    """nodes: [B, D] long, the column chosen at each level, -1 below an early stop.
    probs: [B, D] float, probability of each chosen node (0 where -1).
    node_probs: [B, N] float, the node probabilities the decoder used."""

    nodes: Tensor
    probs: Tensor
    node_probs: Tensor


def _node_scores(hierarchy: Hierarchy, output: Any) -> Tensor:
    """The [B, N] node scores of a head's output (a HeadOutput or the tensor itself)."""
    scores = output if isinstance(output, Tensor) else getattr(output, "node_scores", None)
    if not isinstance(scores, Tensor):
        raise TypeError(
            "Expected `output` to be a head's output (with `.node_scores`) or a [B, N] tensor, "
            f"but got {type(output).__name__}"
        )
    return check_node_scores(hierarchy, scores)


def _leaf_logits(hierarchy: Hierarchy, output: Any, needed_by: str, score_kind: str) -> Tensor:
    """The [B, L] leaf logits of ``output``; a clear error when the output has none."""
    z = None if isinstance(output, Tensor) else getattr(output, "leaf_logits", None)
    if z is None:
        raise ValueError(
            f"{needed_by} needs the head's leaf logits (HeadOutput.leaf_logits), but the output "
            f"of this {score_kind!r} head has none"
            + (
                " (a bare node-score tensor was given; pass the whole head output)"
                if isinstance(output, Tensor)
                else ""
            )
        )
    n_leaves = len(hierarchy.leaves)
    if z.ndim != 2 or z.shape[1] != n_leaves:
        raise ValueError(
            f"Expected `leaf_logits` of shape [B, {n_leaves}] (one column per leaf of "
            f"{hierarchy!r}), but got {list(z.shape)}"
        )
    return upcast_half(z)


def resolve_probabilities(output: Any, score_kind: str, probabilities: str | None) -> str:
    """The probability model used for ``output``: ``probabilities`` when given (checked);
    None = :data:`DEFAULT_PROBABILITIES` for an HRN output with leaf logits, ``"states"`` for
    one without (a bare node-score tensor, or an HRN head built without its leaf head). Only
    "states" heads have a choice; other score kinds return their kind's model, "states"."""
    if probabilities is not None:
        check_choice("probabilities", probabilities, PROBABILITIES)
        return probabilities
    has_leaf = getattr(output, "leaf_logits", None) is not None
    return DEFAULT_PROBABILITIES if score_kind == "states" and has_leaf else "states"


def _temperature(temperatures: Mapping[str, Any] | None, name: str) -> Any:
    if not temperatures:
        return 1.0
    unknown = set(temperatures) - set(TEMPERATURE_FIELDS)
    if unknown:
        raise ValueError(
            f"Expected temperatures for {list(TEMPERATURE_FIELDS)}, but got {sorted(unknown)}"
        )
    return temperatures.get(name, 1.0)


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


def node_log_probabilities(
    hierarchy: Hierarchy,
    output: Any,
    score_kind: str = "states",
    scores: str = "sigmoid",
    probabilities: str | None = None,
    temperatures: Mapping[str, Any] | None = None,
) -> Tensor:
    """[B, N] log P(v), differentiable (also in the temperatures), O(B x N). See
    :func:`node_probabilities`; log 0 = -inf is possible for "states" only."""
    check_choice("score_kind", score_kind, SCORE_KINDS)
    check_choice("scores", scores, SCORES)
    s = upcast_half(_node_scores(hierarchy, output))
    t_node = _temperature(temperatures, "node_scores")
    if score_kind == "level_logits":
        levels = range(1, hierarchy.num_levels + 1)
        st = s / t_node
        return torch.cat([F.log_softmax(st[:, hierarchy.level_slice(d)], 1) for d in levels], 1)
    if score_kind == "leaf_log_probs":
        t_leaf = _temperature(temperatures, "leaf_logits")
        if isinstance(t_leaf, float) and t_leaf == 1.0:
            return s
        z = _leaf_logits(hierarchy, output, "a leaf_logits temperature", score_kind)
        return leaf_to_node_log_probs(hierarchy, F.log_softmax(z / t_leaf, 1))
    probabilities = resolve_probabilities(output, score_kind, probabilities)
    w = torch.sigmoid(s) if scores == "sigmoid" else s
    if probabilities == "states":
        return node_marginals(hierarchy, w / t_node, scores="logits").log()
    z = _leaf_logits(hierarchy, output, f"probabilities={probabilities!r}", score_kind)
    t_leaf = _temperature(temperatures, "leaf_logits")
    logits = z / t_leaf
    if probabilities == "product":
        plan = state_plan(hierarchy, s.device)
        leaves = plan.is_leaf.nonzero().flatten()
        state_paths = path_sums(plan, (w / t_node).t().contiguous()).t()  # [B, N]
        logits = logits + state_paths[:, leaves]
    return leaf_to_node_log_probs(hierarchy, F.log_softmax(logits, 1))


def node_probabilities(
    hierarchy: Hierarchy,
    output: Any,
    score_kind: str = "states",
    scores: str = "sigmoid",
    probabilities: str | None = None,
    temperatures: Mapping[str, Any] | None = None,
) -> Tensor:
    """[B, N] probability of each node for a head of ``score_kind`` (module docstring);
    ``probabilities=None`` is :func:`resolve_probabilities`'s default.

    "level_logits": a softmax per level (of node_scores / T). "leaf_log_probs":
    ``exp(node_scores)``, or with a ``leaf_logits`` temperature the leaf softmax of
    leaf_logits / T summed up the tree. "states" (HRN), by ``probabilities``
    (:data:`PROBABILITIES`; ``scores`` says how the state scores were trained):

    - ``"states"``: :func:`node_marginals` of the state scores (after the sigmoid) / T_node;
    - ``"leafhead"``: the leaf head's softmax of leaf_logits / T_leaf, summed up the tree;
    - ``"product"``: the leaf head's distribution times the state distribution's
      complete-path probability, renormalised over complete paths, summed up the tree:
      P(leaf l) = softmax_l(z_l / T_leaf + S_l / T_node), S_l the sum of the (sigmoid) state
      scores on l's path.

    Every node has one probability; it never increases down a path and each level sums to
    <= 1 (= 1 where every leaf is at or below that level). ``temperatures``
    ({"node_scores": T, "leaf_logits": T}, missing = 1) come from :mod:`hmc.calibration`.
    """
    return node_log_probabilities(
        hierarchy, output, score_kind, scores, probabilities, temperatures
    ).exp()


# ------------------------------------------------------------------------------ decoders
class _Inputs(NamedTuple):
    """What a decoder may read: the head output, its node scores [B, N], the node
    probabilities [B, N] (of the probability model), the score kind, scores, probabilities."""

    output: Any
    s: Tensor
    probs: Tensor
    score_kind: str
    scores: str
    probabilities: str


def _argmax(h: Hierarchy, x: _Inputs) -> Tensor:
    raw = x.score_kind == "states" and x.probabilities == "states"
    ranked = x.s if raw else x.probs
    levels = [h.level_slice(d) for d in range(1, h.num_levels + 1)]
    return torch.stack([ranked[:, sl].argmax(1) + sl.start for sl in levels], 1)


def _paper(h: Hierarchy, x: _Inputs) -> Tensor:
    """Per-level argmax of the node scores above the deepest level; at the deepest level the
    argmax of the leaf head over that level's nodes (all leaves)."""
    z = _leaf_logits(h, x.output, "decoder 'paper'", x.score_kind)
    d = h.num_levels
    levels = [h.level_slice(k) for k in range(1, d)]
    cols = [x.s[:, sl].argmax(1) + sl.start for sl in levels]
    plan = state_plan(h, z.device)
    leaves = plan.is_leaf.nonzero().flatten()
    deepest = (plan.levels[leaves] == d).nonzero().flatten()  # leaf-head columns at level D
    cols.append(leaves[deepest][z[:, deepest].argmax(1)])
    return torch.stack(cols, 1)


def _greedy(h: Hierarchy, x: _Inputs) -> Tensor:
    """Top-down path: the most probable level-1 node, then the most probable child of the
    previous choice; -1 below a leaf."""
    probs = x.probs
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


def _map_path(h: Hierarchy, x: _Inputs) -> Tensor:
    """The complete path (level 1 to a leaf, leaves at any depth) of highest score."""
    s = x.s
    plan = state_plan(h, s.device)
    if x.score_kind == "leaf_log_probs" or (
        x.score_kind == "states" and x.probabilities != "states"
    ):
        path_score = x.probs  # a leaf model: P(leaf) is the probability of its complete path
    else:
        if x.score_kind == "states":
            w = torch.sigmoid(s) if x.scores == "sigmoid" else s
        else:
            levels = range(1, h.num_levels + 1)
            w = torch.cat([F.log_softmax(s[:, h.level_slice(d)], 1) for d in levels], 1)
        path_score = path_sums(plan, w.t().contiguous()).t()
    leaves = plan.is_leaf.nonzero().flatten()
    best = leaves[path_score[:, leaves].argmax(1)]  # [B]
    return plan.paths[best]


def _threshold(h: Hierarchy, x: _Inputs, threshold: float) -> Tensor:
    nodes = _greedy(h, x)
    chosen = x.probs.gather(1, nodes.clamp_min(0))
    # Kept until the first node below the threshold; cumsum, not cumprod: ONNX has CumSum only.
    keep = ((chosen < threshold).long().cumsum(1) == 0) & (nodes >= 0)
    return torch.where(keep, nodes, torch.full_like(nodes, -1))


_DECODER_FNS: dict[str, Callable[..., Tensor]] = {
    "argmax": _argmax,
    "marginal": _greedy,
    "map": _map_path,
    "threshold": _threshold,
    "paper": _paper,
}


def decode(
    hierarchy: Hierarchy,
    output: Any,
    decoder: str = "argmax",
    *,
    score_kind: str = "states",
    scores: str = "sigmoid",
    probabilities: str | None = None,
    temperatures: Mapping[str, Any] | None = None,
    **decoder_kwargs: Any,
) -> Decoded:
    """Decode a head's output (or its [B, N] node scores) into one node per level.

    P = :func:`node_probabilities` (``probabilities`` and the calibration ``temperatures``
    matter there; "leafhead" and "product" need the whole head output). Decoders:

    - ``"argmax"``: independent argmax of P in each level (for "states" with
      ``probabilities="states"``: of the raw scores, the sigmoid keeps the order). The levels
      can disagree with the tree.
    - ``"paper"``: the HRN paper's evaluation (MonsterZhZh/HRN ``CUB_Aircraft/train_test.py``):
      per-level argmax of the node scores above the deepest level, argmax of the leaf head
      (``leaf_logits``) at the deepest level. On a ragged tree the deepest level holds leaves
      only, and the leaf head's argmax is taken over them (a shallower leaf is reached, as
      in "argmax", by its own level's scores). Needs ``leaf_logits`` (ValueError otherwise,
      naming the decoder and the score kind). ``probs`` are P of the chosen nodes.
    - ``"marginal"``: consistent, top-down: the most probable level-1 node by P, then the most
      probable child of each choice, down to a leaf.
    - ``"map"``: the most probable complete path, from level 1 to a leaf (on ragged trees,
      leaves at any depth are complete paths). Leaf models ("leaf_log_probs", and "states"
      with "leafhead" / "product"): the leaf of highest P (P(path) = P(leaf)). "states" with
      "states": the highest-scoring state among the states that end at a leaf (with sigmoid
      scores every score is positive, so this is also the best state overall; stopping early
      is what "threshold" is for). "level_logits": the path maximising the sum over its levels
      of the per-level log-softmax.
    - ``"threshold"`` (option ``threshold=0.5``): the "marginal" path cut just above its first
      node with P < threshold ("a warbler, species unsure"). Except for "level_logits", P never
      increases down a path, and for threshold > 0.5 this is exactly the deepest node with
      P >= threshold.

    ``decoder_kwargs`` are the decoder's options (:data:`DECODER_OPTIONS`). ``probs`` holds P
    of each chosen node (0 below a stop).
    """
    options = check_decoder(decoder, decoder_kwargs)  # score_kind, scores: node_probabilities
    probabilities = resolve_probabilities(output, score_kind, probabilities)
    s = _node_scores(hierarchy, output)
    with torch.no_grad():
        probs = node_probabilities(
            hierarchy, output, score_kind, scores, probabilities, temperatures
        )
        x = _Inputs(output, s, probs, score_kind, scores, probabilities)
        nodes = _DECODER_FNS[decoder](hierarchy, x, **options)
        chosen = torch.where(nodes >= 0, probs.gather(1, nodes.clamp_min(0)), 0.0)
    return Decoded(nodes, chosen, probs)
