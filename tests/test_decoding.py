"""Decoders, node probabilities and leaf marginals against plain per-sample references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_strategies import trees

from hmc.decoding import (
    DECODERS,
    DEFAULT_PROBABILITIES,
    PROBABILITIES,
    SCORE_KINDS,
    Decoded,
    check_decoder,
    decode,
    node_log_probabilities,
    node_marginals,
    node_probabilities,
    resolve_probabilities,
)
from hmc.hierarchy import Hierarchy
from hmc.models import leaf_log_marginals


@pytest.fixture(scope="module")
def ragged() -> Hierarchy:
    """Three levels; "c" is a leaf at level 1 and "b1"/"a2" are leaves at level 2."""
    edges = [
        ("R", "a"), ("R", "b"), ("R", "c"),
        ("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"),
        ("a1", "x"), ("a1", "y"), ("b2", "z"), ("b2", "w"),
    ]  # fmt: skip
    return Hierarchy.from_edges(edges)


@pytest.fixture(scope="module")
def balanced() -> Hierarchy:
    rows = [
        (f"o{i}", f"f{i}{j}", f"s{i}{j}{k}") for i in range(3) for j in range(2) for k in range(3)
    ]
    return Hierarchy.from_paths(rows)


TREES = ["ragged", "balanced"]


def _scores(h: Hierarchy, kind: str, seed: int, b: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h.num_nodes, generator=gen) * 3
    if kind == "leaf_log_probs":
        return leaf_log_marginals(h, x[:, h.tensors().leaves])
    return x


def _path_of(h: Hierarchy, node: int) -> list[int]:
    cols = [h.index(a) for a in h.ancestors(node)]
    return cols + [-1] * (h.num_levels - len(cols))


def test_leaf_log_marginals(request):
    h = request.getfixturevalue("ragged")
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, len(h.leaves), generator=gen) * 4).requires_grad_()
    out = leaf_log_marginals(h, logits)
    probs = torch.softmax(logits.double(), 1)
    leaf_cols = h.tensors().leaves.tolist()
    for v in range(h.num_nodes):
        below = [leaf_cols.index(c) for c in h.leaves_below(v).tolist()]
        ref = probs[:, below].sum(1).log()
        torch.testing.assert_close(out[:, v].double(), ref.detach(), rtol=1e-5, atol=1e-6)
    # Leaf columns are exactly the log-softmax; level sums are 1 where every leaf is deepest.
    torch.testing.assert_close(out[:, h.tensors().leaves], torch.log_softmax(logits, 1))
    torch.testing.assert_close(out[:, h.level_slice(1)].exp().sum(1), torch.ones(5))
    out[:, h.index("b")].sum().backward()
    assert torch.isfinite(logits.grad).all()
    extreme = leaf_log_marginals(h, torch.tensor([[1e4, -1e4, 0.0, 5.0, -1e4, 1e4, -1e4]]))
    assert torch.isfinite(extreme).all()
    half = leaf_log_marginals(h, logits.detach().bfloat16())
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match=r"leaf_logits` of shape \[B, 7\]"):
        leaf_log_marginals(h, logits[:, :4])


@pytest.mark.parametrize("tree", TREES)
def test_node_probabilities_by_kind(request, tree):
    h = request.getfixturevalue(tree)
    x = _scores(h, "level_logits", 1)
    p = node_probabilities(h, x, score_kind="level_logits")
    for d in range(1, h.num_levels + 1):
        sl = h.level_slice(d)
        torch.testing.assert_close(p[:, sl], torch.softmax(x[:, sl], 1))
    lp = _scores(h, "leaf_log_probs", 1)
    torch.testing.assert_close(node_probabilities(h, lp, score_kind="leaf_log_probs"), lp.exp())
    torch.testing.assert_close(
        node_probabilities(h, x, score_kind="states", scores="logits"),
        node_marginals(h, x, scores="logits"),
    )
    assert node_marginals(h, x.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_argmax_is_independent_per_level(request, tree, kind):
    h = request.getfixturevalue(tree)
    x = _scores(h, kind, 2)
    out = decode(h, x, "argmax", score_kind=kind)
    assert isinstance(out, Decoded) and out.nodes.dtype == torch.long
    assert out.nodes.shape == out.probs.shape == (x.shape[0], h.num_levels)
    ranked = x if kind == "states" else out.node_probs
    for d in range(1, h.num_levels + 1):
        sl = h.level_slice(d)
        assert torch.equal(out.nodes[:, d - 1], ranked[:, sl].argmax(1) + sl.start)
    torch.testing.assert_close(out.probs, out.node_probs.gather(1, out.nodes))


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_marginal_is_greedy_and_consistent(request, tree, kind):
    h = request.getfixturevalue(tree)
    x = _scores(h, kind, 3)
    out = decode(h, x, "marginal", score_kind=kind)
    p = out.node_probs
    for b in range(x.shape[0]):  # the per-sample reference
        path, children = [], h.children(None)
        while children:
            cols = [h.index(c) for c in children]
            best = max(cols, key=lambda c: float(p[b, c]))
            path.append(best)
            children = h.children(best)
        path += [-1] * (h.num_levels - len(path))
        assert out.nodes[b].tolist() == path
        assert out.nodes[b].tolist() == _path_of(h, max(c for c in path if c >= 0))
    assert (out.probs[out.nodes < 0] == 0).all()


def _path_score(h: Hierarchy, x: torch.Tensor, kind: str, leaf: int) -> torch.Tensor:
    cols = [h.index(a) for a in h.ancestors(leaf)]
    if kind == "leaf_log_probs":
        return x[:, leaf]
    if kind == "states":
        return torch.sigmoid(x)[:, cols].sum(1)
    lsm = torch.cat(
        [torch.log_softmax(x[:, h.level_slice(d)], 1) for d in range(1, h.num_levels + 1)], 1
    )
    return lsm[:, cols].sum(1)


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_map_is_best_complete_path(request, tree, kind):
    h = request.getfixturevalue(tree)
    x = _scores(h, kind, 4)
    out = decode(h, x, "map", score_kind=kind)
    leaves = h.tensors().leaves.tolist()
    scores = torch.stack([_path_score(h, x, kind, leaf) for leaf in leaves], 1)  # [B, L]
    best = [leaves[i] for i in scores.argmax(1).tolist()]
    assert out.nodes.tolist() == [_path_of(h, leaf) for leaf in best]
    if kind == "states":  # with sigmoid scores, the best leaf state is the best state overall
        all_states = [_path_score(h, x, kind, v) for v in range(h.num_nodes)]
        overall = torch.stack(all_states, 1).argmax(1)
        assert overall.tolist() == best


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("kind", ["states", "leaf_log_probs"])
@pytest.mark.parametrize("t", [0.5, 0.7, 0.9])
def test_threshold_stops_at_deepest_confident_node(request, tree, kind, t):
    h = request.getfixturevalue(tree)
    x = _scores(h, kind, 5, b=64)
    out = decode(h, x, "threshold", score_kind=kind, threshold=t, scores="logits")
    p, levels = out.node_probs, h.tensors().levels
    stopped = 0
    for b in range(x.shape[0]):
        confident = [v for v in range(h.num_nodes) if p[b, v] >= t]
        if not confident:
            assert (out.nodes[b] == -1).all()
            continue
        deepest = max(confident, key=lambda v: int(levels[v]))
        assert out.nodes[b].tolist() == _path_of(h, deepest)
        stopped += not h.is_leaf(deepest)
    assert stopped > 0  # the test saw early stops
    assert (out.probs[out.nodes >= 0] >= t).all() and (out.probs[out.nodes < 0] == 0).all()


def test_threshold_level_logits_cuts_the_greedy_path(balanced):
    x = _scores(balanced, "level_logits", 6, b=32)
    full = decode(balanced, x, "marginal", score_kind="level_logits")
    cut = decode(balanced, x, "threshold", score_kind="level_logits", threshold=0.6)
    keep = (full.probs >= 0.6).long().cumprod(1).bool()
    assert torch.equal(cut.nodes, torch.where(keep, full.nodes, -1))


def test_decode_errors(ragged):
    x = torch.randn(2, ragged.num_nodes)
    with pytest.raises(ValueError, match=r"`decoder` to be one of \['argmax', 'marginal'"):
        decode(ragged, x, "beam")
    with pytest.raises(ValueError, match="`score_kind`"):
        decode(ragged, x, score_kind="probs")
    with pytest.raises(ValueError, match=r"node_scores` of shape \[B, 11\]"):
        decode(ragged, x[:, :5])
    with pytest.raises(ValueError, match=r"`decoder_kwargs` of decoder 'argmax'.*\['threshold'\]"):
        decode(ragged, x, "argmax", threshold=0.7)
    with pytest.raises(TypeError, match="`.node_scores`"):
        decode(ragged, {"node_scores": x})


def test_check_decoder_fills_in_the_defaults():
    assert check_decoder("threshold") == {"threshold": 0.5}
    assert check_decoder("threshold", {"threshold": 0.8}) == {"threshold": 0.8}
    assert {d: check_decoder(d) for d in DECODERS if d != "threshold"} == {
        "argmax": {},
        "marginal": {},
        "map": {},
        "paper": {},
    }


@pytest.mark.parametrize("decoder", [d for d in DECODERS if d != "paper"])
def test_decode_takes_the_head_output_as_well_as_its_node_scores(balanced, decoder):
    from hmc.models import HeadOutput

    x = _scores(balanced, "states", 7)
    out = HeadOutput(x, None, [])
    a, b = decode(balanced, out, decoder), decode(balanced, x, decoder)
    assert torch.equal(a.nodes, b.nodes) and torch.equal(a.node_probs, b.node_probs)


# ------------------------------------------------------- HRN probability models, "paper"
def _hrn_output(h: Hierarchy, seed: int, b: int = 6, scale: float = 3.0):
    from hmc.models import HeadOutput

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h.num_nodes, generator=gen, dtype=torch.float64) * scale
    z = torch.randn(b, len(h.leaves), generator=gen, dtype=torch.float64) * scale
    return HeadOutput(x, z, [])


def _brute_node_probs(h, out, probabilities, scores, t_node=1.0, t_leaf=1.0):
    """P(v) by explicit enumeration: every state (the empty one and the path to each node) or
    every leaf, one Python loop over them, float64."""
    w = torch.sigmoid(out.node_scores) if scores == "sigmoid" else out.node_scores
    b = w.shape[0]
    paths = {v: [h.index(a) for a in h.ancestors(v)] for v in range(h.num_nodes)}
    leaves = h.tensors().leaves.tolist()
    if probabilities == "states":
        ends = list(range(h.num_nodes))
        energy = torch.stack([w[:, paths[v]].sum(1) / t_node for v in ends], 1)
        energy = torch.cat([torch.zeros(b, 1, dtype=energy.dtype), energy], 1)  # empty state
        p_state = torch.softmax(energy, 1)[:, 1:]
    else:
        ends = leaves
        energy = out.leaf_logits / t_leaf
        if probabilities == "product":
            energy = energy + torch.stack([w[:, paths[v]].sum(1) / t_node for v in ends], 1)
        p_state = torch.softmax(energy, 1)
    p = torch.zeros(b, h.num_nodes, dtype=torch.float64)
    for k, v in enumerate(ends):
        for u in paths[v]:
            p[:, u] += p_state[:, k]
    return p


@given(h=trees(max_depth=4, max_nodes=25), seed=st.integers(0, 10_000), data=st.data())
@settings(max_examples=60, deadline=None)
def test_hrn_probability_models_are_consistent_and_match_brute_force(h, seed, data):
    probabilities = data.draw(st.sampled_from(PROBABILITIES))
    scores = data.draw(st.sampled_from(["sigmoid", "logits"]))
    t_node = data.draw(st.sampled_from([1.0, 0.25, 3.0]))
    t_leaf = data.draw(st.sampled_from([1.0, 0.5, 2.0]))
    out = _hrn_output(h, seed)
    temps = {"node_scores": t_node, "leaf_logits": t_leaf}
    p = node_probabilities(h, out, "states", scores, probabilities, temps).double()
    ref = _brute_node_probs(h, out, probabilities, scores, t_node, t_leaf)
    torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-7)
    for d in range(1, h.num_levels + 1):  # each level sums to at most 1
        assert (p[:, h.level_slice(d)].sum(1) <= 1 + 1e-6).all()
    parent = h.tensors().parent
    below_top = parent >= 0
    child, par = p[:, below_top], p[:, parent[below_top]]
    assert (child <= par + 1e-7).all()  # never increases down a path
    logp = node_log_probabilities(h, out, "states", scores, probabilities, temps)
    torch.testing.assert_close(logp.exp().double(), p, rtol=1e-5, atol=1e-7)


def test_probability_models_need_leaf_logits_and_default_to_product(ragged):
    from hmc.models import HeadOutput

    out = _hrn_output(ragged, 0)
    assert DEFAULT_PROBABILITIES in PROBABILITIES
    assert resolve_probabilities(out, "states", None) == DEFAULT_PROBABILITIES
    assert resolve_probabilities(out.node_scores, "states", None) == "states"
    torch.testing.assert_close(
        decode(ragged, out).node_probs,
        node_probabilities(ragged, out, probabilities=DEFAULT_PROBABILITIES),
    )
    no_leaf = HeadOutput(out.node_scores, None, [])
    for probabilities in ("leafhead", "product"):
        with pytest.raises(ValueError, match=rf"probabilities='{probabilities}'.*'states' head"):
            node_probabilities(ragged, no_leaf, probabilities=probabilities)
    with pytest.raises(ValueError, match="Expected argument `probabilities`"):
        decode(ragged, out, probabilities="softmax")
    with pytest.raises(ValueError, match="temperatures for"):
        node_probabilities(ragged, out, temperatures={"scores": 2.0})


def test_paper_decoder_hand_worked():
    """Per-level argmax of the node scores above the species level, the leaf head's argmax at
    it: the levels may disagree with the tree, as in the paper's evaluation."""
    from hmc.models import HeadOutput

    h = Hierarchy.from_paths(
        [("A", "A1", "a1x"), ("A", "A1", "a1y"), ("A", "A2", "a2x"), ("B", "B1", "b1x")]
    )
    x = torch.zeros(1, h.num_nodes)
    x[0, h.index("B")] = 0.9  # order: B (over A = 0)
    x[0, h.index("A1")] = 2.0  # family: A1 (over A2 = 0, B1 = 0.5)
    x[0, h.index("B1")] = 0.5
    x[0, h.index("b1x")] = 5.0  # ignored at the leaf level
    leaves = h.tensors().leaves.tolist()
    z = torch.zeros(1, len(leaves))
    z[0, leaves.index(h.index("a2x"))] = 3.0
    got = decode(h, HeadOutput(x, z, []), "paper")
    want = [h.index("B"), h.index("A1"), h.index("a2x")]
    assert got.nodes.tolist() == [want]
    p = node_probabilities(h, HeadOutput(x, z, []))
    torch.testing.assert_close(got.probs, p[:, want])
    # The leaf head on its own gives the leaf-level argmax of "argmax" for probabilities
    # "leafhead" (whose leaf probabilities are the leaf head's softmax).
    lh = decode(h, HeadOutput(x, z, []), "argmax", probabilities="leafhead")
    assert lh.nodes[0, 2] == h.index("a2x")


def test_paper_decoder_on_a_ragged_tree_takes_the_deepest_level_leaves(ragged):
    from hmc.models import HeadOutput

    x = torch.zeros(1, ragged.num_nodes)
    x[0, ragged.index("b")] = 1.0
    x[0, ragged.index("a2")] = 1.0
    leaves = ragged.tensors().leaves.tolist()
    z = torch.zeros(1, len(leaves))
    z[0, leaves.index(ragged.index("c"))] = 9.0  # a level-1 leaf: not a level-3 answer
    z[0, leaves.index(ragged.index("z"))] = 4.0
    got = decode(ragged, HeadOutput(x, z, []), "paper").nodes.tolist()
    assert got == [[ragged.index("b"), ragged.index("a2"), ragged.index("z")]]


@pytest.mark.parametrize("score_kind", ["states", "level_logits"])
def test_paper_decoder_without_leaf_logits_names_decoder_and_head_kind(balanced, score_kind):
    from hmc.models import HeadOutput

    x = _scores(balanced, score_kind, 1)
    kw = {"probabilities": "states"} if score_kind == "states" else {}
    for output in (HeadOutput(x, None, []), x):
        with pytest.raises(ValueError, match=rf"decoder 'paper'.*'{score_kind}' head"):
            decode(balanced, output, "paper", score_kind=score_kind, **kw)
