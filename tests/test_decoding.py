"""Decoders, node probabilities and leaf marginals against plain per-sample references."""

from __future__ import annotations

import pytest
import torch

from hmc.decoding import (
    DECODERS,
    SCORE_KINDS,
    Decoded,
    check_decoder,
    decode,
    node_marginals,
    node_probabilities,
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
    }


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_takes_the_head_output_as_well_as_its_node_scores(balanced, decoder):
    from hmc.models import HeadOutput

    x = _scores(balanced, "states", 7)
    out = HeadOutput(x, None, [])
    a, b = decode(balanced, out, decoder), decode(balanced, x, decoder)
    assert torch.equal(a.nodes, b.nodes) and torch.equal(a.node_probs, b.node_probs)
