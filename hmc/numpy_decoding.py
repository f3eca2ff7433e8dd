"""The rules of :mod:`hmc.decoding` (and the sweeps of :mod:`hmc.sweeps`) in numpy, for the
torch-free ONNX predictor (:mod:`hmc.onnx_predictor`), which decodes a head's raw outputs.

Rule for rule the same as :func:`hmc.decoding.decode`: the score kinds, the HRN probability
models ``states | leafhead | product`` with ``scores`` and the calibration temperatures, and
every decoder with its ``decoder_kwargs``; ``tests/test_numpy_decoding.py`` checks parity on
random ragged and balanced trees. Arrays are [B, N] batch-major, in hierarchy column order;
every step is vectorised over the batch, in log space, one pass per level (O(B x N), no
[N, N] matrix), computed in float64 (results as float32, like the torch decoders'). The
hierarchy is its ``Hierarchy.to_dict()`` (:class:`TreePlan`), so nothing here needs torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DECODERS",
    "DECODER_OPTIONS",
    "DEFAULT_PROBABILITIES",
    "PROBABILITIES",
    "SCORES",
    "SCORE_KINDS",
    "Decoded",
    "TreePlan",
    "check_decoder",
    "decode",
    "node_log_probabilities",
    "resolve_probabilities",
]

# The one copy of the decoding tables; hmc.decoding (which imports torch) takes them from here.
SCORE_KINDS = ("states", "level_logits", "leaf_log_probs")
SCORES = ("sigmoid", "logits")
PROBABILITIES = ("states", "leafhead", "product")
DEFAULT_PROBABILITIES = "product"
DECODER_OPTIONS: dict[str, dict[str, Any]] = {
    "argmax": {},
    "marginal": {},
    "map": {},
    "threshold": {"threshold": 0.5},
    "paper": {},
}
DECODERS = tuple(DECODER_OPTIONS)
TEMPERATURE_FIELDS = ("node_scores", "leaf_logits")


class Decoded(NamedTuple):
    """nodes: [B, D] int64, the column chosen at each level, -1 below an early stop.
    probs: [B, D] float32, probability of each chosen node (0 where -1).
    node_probs: [B, N] float32, the node probabilities the decoder used."""

    nodes: np.ndarray
    probs: np.ndarray
    node_probs: np.ndarray


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(
            f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}"
        )


def check_decoder(decoder: str, decoder_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a decoder name and its options; return the options with their defaults filled in
    (e.g. ``check_decoder("threshold") == {"threshold": 0.5}``). :mod:`hmc.decoding` re-exports
    it."""
    _check_choice("decoder", decoder, DECODERS)
    allowed = DECODER_OPTIONS[decoder]
    given = dict(decoder_kwargs or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"Expected `decoder_kwargs` of decoder {decoder!r} to be among {sorted(allowed)}, "
            f"but got {unknown}"
        )
    return {**allowed, **given}


def resolve_probabilities(has_leaf_logits: bool, score_kind: str, probabilities: str | None) -> str:
    """:func:`hmc.decoding.resolve_probabilities` for an output with or without leaf logits."""
    if probabilities is not None:
        _check_choice("probabilities", probabilities, PROBABILITIES)
        return probabilities
    return DEFAULT_PROBABILITIES if score_kind == "states" and has_leaf_logits else "states"


# ---------------------------------------------------------------------------- the tree
class TreePlan:
    """Index arrays of a hierarchy for the level sweeps, from its ``Hierarchy.to_dict()``.

    offsets: D + 1 ints, level d (1..D) is columns offsets[d-1]:offsets[d]. parents[d]: the
    [n_d] index of each level-d node's parent within level d-1 (None for d = 1). levels: [N]
    in 1..D. is_leaf: [N] bool. leaves: [L] leaf columns, ascending (the leaf head's column
    order). paths: [N, D] columns of each node's path from level 1, -1 below the node.
    """

    def __init__(self, hierarchy: Mapping[str, Any]) -> None:
        rows = hierarchy["nodes"]
        column = {row[0]: i for i, row in enumerate(rows)}
        n, depth = len(rows), len(hierarchy["level_names"])
        parent = np.array([column.get(row[1], -1) for row in rows], dtype=np.int64)
        levels = np.ones(n, dtype=np.int64)
        for _ in range(depth - 1):  # parents come first in the level-major column order
            levels = np.where(parent >= 0, levels[np.maximum(parent, 0)] + 1, 1)
        if np.any(np.diff(levels) < 0) or (n and levels.max() > depth):
            raise ValueError(
                "the hierarchy's columns are not level-major with "
                f"{depth} levels; it is not a Hierarchy.to_dict()"
            )
        self.num_nodes, self.num_levels = n, depth
        self.offsets = tuple(int(i) for i in np.searchsorted(levels, np.arange(1, depth + 2)))
        self.levels = levels
        children = np.bincount(parent[parent >= 0], minlength=n)
        self.is_leaf = children == 0
        self.leaves = np.flatnonzero(self.is_leaf)
        self.parents: list[np.ndarray | None] = [None, None]
        self._segments: list[Any] = [None, None]
        for d in range(2, depth + 1):
            local = parent[self.level(d)] - self.offsets[d - 2]
            self.parents.append(local)
            order = np.argsort(local, kind="stable")
            ordered = local[order]
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            same = bool(np.array_equal(order, np.arange(len(order))))
            n_par = self.offsets[d - 1] - self.offsets[d - 2]
            self._segments.append((None if same else order, starts, ordered[starts], n_par))
        self.paths = np.full((n, depth), -1, dtype=np.int64)
        node = np.arange(n)
        for _ in range(depth):
            ok = np.flatnonzero(node >= 0)
            self.paths[ok, levels[node[ok]] - 1] = node[ok]
            node = np.where(node >= 0, parent[np.maximum(node, 0)], -1)

    def level(self, d: int) -> slice:
        return slice(self.offsets[d - 1], self.offsets[d])

    def segment(self, d: int, x: np.ndarray, ufunc: np.ufunc, fill: float) -> np.ndarray:
        """[B, n_d] values of level d's nodes -> [B, n_{d-1}] ``ufunc``-reduced over each
        parent's children; ``fill`` for a parent without children."""
        order, starts, parents, n_par = self._segments[d]
        out = np.full((x.shape[0], n_par), fill, dtype=x.dtype)
        if x.shape[0]:
            out[:, parents] = ufunc.reduceat(x if order is None else x[:, order], starts, axis=1)
        return out


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(1, keepdims=True)))


def _level_log_softmax(plan: TreePlan, x: np.ndarray) -> np.ndarray:
    levels = range(1, plan.num_levels + 1)
    return np.concatenate([_log_softmax(x[:, plan.level(d)]) for d in levels], 1)


def log_conditionals(plan: TreePlan, w: np.ndarray) -> np.ndarray:
    """:func:`hmc.sweeps.log_conditionals`, batch-major: w [B, N] state scores (after the
    sigmoid if any) -> [B, N] log P(the path goes on to v | it reached v's parent)."""
    out = np.empty_like(w)
    r = None  # R of the current level's nodes (log of their subtree's state mass); None = 0
    for d in range(plan.num_levels, 0, -1):
        sl = plan.level(d)
        x = w[:, sl] if r is None else w[:, sl] + r
        p = plan.parents[d]
        if p is None:  # level 1: one segment, the root; m >= 0 covers the "stop" term
            m = np.maximum(x.max(1, keepdims=True), 0.0)
            z = x - m
            out[:, sl] = z - np.log(np.exp(-m) + np.exp(z).sum(1, keepdims=True))
        else:
            m = np.maximum(plan.segment(d, x, np.maximum, -np.inf), 0.0)
            z = x - m[:, p]
            log_tot = np.log(np.exp(-m) + plan.segment(d, np.exp(z), np.add, 0.0))
            out[:, sl] = z - log_tot[:, p]
            r = m + log_tot
    return out


def path_sums(plan: TreePlan, w: np.ndarray) -> np.ndarray:
    """:func:`hmc.sweeps.path_sums`: [B, N] sum of ``w`` over each node's path from level 1."""
    out = np.empty_like(w)
    prev = None
    for d in range(1, plan.num_levels + 1):
        sl = plan.level(d)
        prev = w[:, sl] if prev is None else prev[:, plan.parents[d]] + w[:, sl]
        out[:, sl] = prev
    return out


def leaf_to_nodes(plan: TreePlan, leaf_log_probs: np.ndarray) -> np.ndarray:
    """[B, L] log P(leaf) -> [B, N] log P(v) = logsumexp over the leaves below v, bottom-up
    one level at a time (each group shifted by its max, so tiny probabilities stay finite)."""
    out = np.full((leaf_log_probs.shape[0], plan.num_nodes), -np.inf)
    out[:, plan.leaves] = leaf_log_probs
    with np.errstate(divide="ignore"):
        for d in range(plan.num_levels, 1, -1):
            x = out[:, plan.level(d)]
            m = plan.segment(d, x, np.maximum, -np.inf)
            m = np.where(np.isfinite(m), m, 0.0)
            tot = plan.segment(d, np.exp(x - m[:, plan.parents[d]]), np.add, 0.0)
            above = plan.level(d - 1)
            out[:, above] = np.where(plan.is_leaf[above], out[:, above], np.log(tot) + m)
    return out


# ----------------------------------------------------------------- probability models
def _temperature(temperatures: Mapping[str, Any] | None, name: str) -> float:
    if not temperatures:
        return 1.0
    unknown = set(temperatures) - set(TEMPERATURE_FIELDS)
    if unknown:
        raise ValueError(
            f"Expected temperatures for {list(TEMPERATURE_FIELDS)}, but got {sorted(unknown)}"
        )
    return float(temperatures.get(name, 1.0))


def _need_leaf(leaf_logits: np.ndarray | None, needed_by: str, score_kind: str) -> np.ndarray:
    if leaf_logits is None:
        raise ValueError(
            f"{needed_by} needs the head's leaf logits (HeadOutput.leaf_logits), but the output "
            f"of this {score_kind!r} head has none"
        )
    return leaf_logits


def _checked(
    plan: TreePlan, node_scores: Any, leaf_logits: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    s = np.asarray(node_scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != plan.num_nodes:
        raise ValueError(
            f"Expected `node_scores` of shape [B, {plan.num_nodes}] (one column per node), but "
            f"got {list(s.shape)}"
        )
    if leaf_logits is None:
        return s, None
    z = np.asarray(leaf_logits, dtype=np.float64)
    if z.shape != (s.shape[0], len(plan.leaves)):
        raise ValueError(
            f"Expected `leaf_logits` of shape [{s.shape[0]}, {len(plan.leaves)}] (one column "
            f"per leaf), but got {list(z.shape)}"
        )
    return s, z


def node_log_probabilities(
    plan: TreePlan,
    node_scores: Any,
    leaf_logits: Any = None,
    score_kind: str = "states",
    scores: str = "sigmoid",
    probabilities: str | None = None,
    temperatures: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """[B, N] float64 log P(v): :func:`hmc.decoding.node_log_probabilities` for a head's raw
    ``node_scores`` [B, N] and ``leaf_logits`` [B, L] (or None)."""
    _check_choice("score_kind", score_kind, SCORE_KINDS)
    _check_choice("scores", scores, SCORES)
    s, z = _checked(plan, node_scores, leaf_logits)
    t_node = _temperature(temperatures, "node_scores")
    if score_kind == "level_logits":
        return _level_log_softmax(plan, s / t_node)
    t_leaf = _temperature(temperatures, "leaf_logits")
    if score_kind == "leaf_log_probs":
        if t_leaf == 1.0:
            return s
        z = _need_leaf(z, "a leaf_logits temperature", score_kind)
        return leaf_to_nodes(plan, _log_softmax(z / t_leaf))
    probabilities = resolve_probabilities(z is not None, score_kind, probabilities)
    w = np.exp(_log_sigmoid(s)) if scores == "sigmoid" else s
    if probabilities == "states":  # log of the marginals = sum of log q down the path
        return path_sums(plan, log_conditionals(plan, w / t_node))
    logits = _need_leaf(z, f"probabilities={probabilities!r}", score_kind) / t_leaf
    if probabilities == "product":
        logits = logits + path_sums(plan, w / t_node)[:, plan.leaves]
    return leaf_to_nodes(plan, _log_softmax(logits))


# --------------------------------------------------------------------------- decoders
class _Inputs(NamedTuple):
    s: np.ndarray  # [B, N] raw node scores (float64)
    z: np.ndarray | None  # [B, L] raw leaf logits
    probs: np.ndarray  # [B, N] float32 node probabilities, what the torch decoders compare
    score_kind: str
    scores: str
    probabilities: str


def _argmax(plan: TreePlan, x: _Inputs) -> np.ndarray:
    raw = x.score_kind == "states" and x.probabilities == "states"
    ranked = x.s if raw else x.probs
    levels = [plan.level(d) for d in range(1, plan.num_levels + 1)]
    return np.stack([ranked[:, sl].argmax(1) + sl.start for sl in levels], 1)


def _paper(plan: TreePlan, x: _Inputs) -> np.ndarray:
    z = _need_leaf(x.z, "decoder 'paper'", x.score_kind)
    d = plan.num_levels
    cols = [x.s[:, plan.level(k)].argmax(1) + plan.offsets[k - 1] for k in range(1, d)]
    deepest = np.flatnonzero(plan.levels[plan.leaves] == d)  # leaf-head columns at level D
    cols.append(plan.leaves[deepest][z[:, deepest].argmax(1)])
    return np.stack(cols, 1)


def _greedy(plan: TreePlan, x: _Inputs) -> np.ndarray:
    """Top-down: the most probable level-1 node, then the most probable child of each
    choice; -1 below a leaf. [B, n_d] per level, no per-sample loop."""
    b = x.probs.shape[0]
    out = np.full((b, plan.num_levels), -1, dtype=np.int64)
    prev = None  # [B] local index of the previous choice, -1 once the path ended
    for d in range(1, plan.num_levels + 1):
        sl = plan.level(d)
        pd = x.probs[:, sl]
        if prev is None:
            allowed = np.ones(pd.shape, dtype=bool)
        else:
            allowed = plan.parents[d][None, :] == prev[:, None]
        pick = np.where(allowed, pd, -np.inf).argmax(1)
        ok = allowed.any(1)
        prev = np.where(ok, pick, -1)
        out[:, d - 1] = np.where(ok, pick + sl.start, -1)
    return out


def _map_path(plan: TreePlan, x: _Inputs) -> np.ndarray:
    leaf_model = x.score_kind == "leaf_log_probs" or (
        x.score_kind == "states" and x.probabilities != "states"
    )
    if leaf_model:  # P(leaf) is the probability of its complete path
        path_score = x.probs
    else:
        if x.score_kind == "states":
            w = np.exp(_log_sigmoid(x.s)) if x.scores == "sigmoid" else x.s
        else:
            w = _level_log_softmax(plan, x.s)
        path_score = path_sums(plan, w)
    best = plan.leaves[path_score[:, plan.leaves].argmax(1)]
    return plan.paths[best]


def _threshold(plan: TreePlan, x: _Inputs, threshold: float) -> np.ndarray:
    nodes = _greedy(plan, x)
    chosen = np.take_along_axis(x.probs, np.maximum(nodes, 0), 1)
    # torch compares its float32 probabilities with the threshold in float32.
    keep = (np.cumsum(chosen < np.float32(threshold), 1) == 0) & (nodes >= 0)
    return np.where(keep, nodes, -1)


_DECODER_FNS: dict[str, Callable[..., np.ndarray]] = {
    "argmax": _argmax,
    "marginal": _greedy,
    "map": _map_path,
    "threshold": _threshold,
    "paper": _paper,
}


def decode(
    plan: TreePlan,
    node_scores: Any,
    leaf_logits: Any = None,
    decoder: str = "argmax",
    *,
    score_kind: str = "states",
    scores: str = "sigmoid",
    probabilities: str | None = None,
    temperatures: Mapping[str, Any] | None = None,
    **decoder_kwargs: Any,
) -> Decoded:
    """:func:`hmc.decoding.decode` of a head's raw outputs: node_scores [B, N], leaf_logits
    [B, L] or None -> :class:`Decoded` (nodes [B, D], probs [B, D], node_probs [B, N])."""
    options = check_decoder(decoder, decoder_kwargs)
    _check_choice("score_kind", score_kind, SCORE_KINDS)
    _check_choice("scores", scores, SCORES)
    s, z = _checked(plan, node_scores, leaf_logits)
    probabilities = resolve_probabilities(z is not None, score_kind, probabilities)
    log_p = node_log_probabilities(plan, s, z, score_kind, scores, probabilities, temperatures)
    probs = np.exp(log_p).astype(np.float32)
    x = _Inputs(s, z, probs, score_kind, scores, probabilities)
    nodes = _DECODER_FNS[decoder](plan, x, **options).astype(np.int64)
    chosen = np.take_along_axis(probs, np.maximum(nodes, 0), 1)
    return Decoded(nodes, np.where(nodes >= 0, chosen, np.float32(0)), probs)
