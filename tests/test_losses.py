"""Losses: numerical safety, reductions, unlabelled samples, HRNLoss and the baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmc.hierarchy import Hierarchy
from hmc.losses import (
    CombinatorialLoss,
    HRNLoss,
    LeafMarginalLoss,
    PerLevelCrossEntropy,
    build_loss,
    sigmoid_loss_floor,
)
from hmc.models import leaf_log_marginals


@pytest.fixture(scope="module")
def ragged() -> Hierarchy:
    """Three levels; "c" is a leaf at level 1 and "b1"/"a2" are leaves at level 2."""
    edges = [
        ("R", "a"), ("R", "b"), ("R", "c"),
        ("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"),
        ("a1", "x"), ("a1", "y"), ("b2", "z"),
    ]  # fmt: skip
    return Hierarchy.from_edges(edges)


@pytest.fixture(scope="module")
def big() -> Hierarchy:
    """A seeded random 3-level tree, 4 / 12 / 40 nodes."""
    gen = torch.Generator().manual_seed(0)
    edges = [("R", f"o{i}") for i in range(4)]
    edges += [(f"o{int(torch.randint(0, 4, (1,), generator=gen))}", f"f{i}") for i in range(12)]
    edges += [(f"f{int(torch.randint(0, 12, (1,), generator=gen))}", f"s{i}") for i in range(40)]
    return Hierarchy.from_edges(edges)


def _col(h: Hierarchy, *ids: str) -> torch.Tensor:
    return torch.tensor([h.index(i) for i in ids])


def _all_losses(h: Hierarchy):
    return [
        CombinatorialLoss(h, scores="sigmoid"),
        CombinatorialLoss(h, scores="logits"),
        HRNLoss(h),
        PerLevelCrossEntropy(h),
        LeafMarginalLoss(h),
    ]


def _call(loss, h, x, t, leaf_logits):
    if isinstance(loss, LeafMarginalLoss):
        x = leaf_log_marginals(h, leaf_logits)
    return loss(x, t, leaf_logits=leaf_logits)


# Which inputs each loss must differentiate: the node scores, the leaf logits, or both.
# (LeafMarginalLoss reads node scores computed from the leaf logits, see _call.)
GRADIENTS = {
    CombinatorialLoss: {"node_scores"},
    HRNLoss: {"node_scores", "leaf_logits"},
    PerLevelCrossEntropy: {"node_scores"},
    LeafMarginalLoss: {"leaf_logits"},
}


def _finite_step(loss, h, x, t):
    x = x.clone().requires_grad_()
    leaf = x.detach()[:, h.tensors().leaves].clone().requires_grad_()
    value = _call(loss, h, x, t, leaf)
    value.backward()
    assert torch.isfinite(value).all(), value
    grads = {"node_scores": x.grad, "leaf_logits": leaf.grad}
    assert {k for k, g in grads.items() if g is not None} == GRADIENTS[type(loss)], type(loss)
    for name, g in grads.items():
        assert g is None or torch.isfinite(g).all(), name
    return value


@pytest.mark.parametrize("pattern", ["mixed", "all+", "all-"])
def test_extreme_scores_give_finite_loss_and_gradients(big, pattern):
    gen = torch.Generator().manual_seed(1)
    signs = torch.randint(0, 2, (8, big.num_nodes), generator=gen) * 2.0 - 1
    signs = {"mixed": signs, "all+": signs.abs(), "all-": -signs.abs()}[pattern]
    x = signs * 1e4
    t = torch.randint(0, big.num_nodes, (8,), generator=gen)
    for loss in _all_losses(big):
        _finite_step(loss, big, x.float(), t)


def test_batch_of_one_and_only_coarse_labels(ragged):
    coarse = _col(ragged, "a", "b", "b")  # no leaf label: HRNLoss's leaf term must be 0, not NaN
    x = torch.randn(3, ragged.num_nodes)
    for loss in _all_losses(ragged):
        _finite_step(loss, ragged, x[:1], coarse[:1])
        _finite_step(loss, ragged, x, coarse)
    parts = HRNLoss(ragged).parts(x, coarse, torch.randn(3, len(ragged.leaves)))
    assert parts["leaf_ce"] == 0
    torch.testing.assert_close(parts["total"], parts["combinatorial"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast(big, dtype):
    layer = torch.nn.Linear(16, big.num_nodes)
    leaf_layer = torch.nn.Linear(16, len(big.leaves))
    feats = torch.randn(6, 16)
    t = torch.randint(0, big.num_nodes, (6,))
    for loss in _all_losses(big):
        layer.zero_grad()
        leaf_layer.zero_grad()
        try:
            with torch.autocast("cpu", dtype=dtype):
                x, leaf = layer(feats) * 100, leaf_layer(feats)
                assert x.dtype == dtype
                value = _call(loss, big, x, t, leaf)
        except RuntimeError as err:  # pragma: no cover - depends on the torch build
            if dtype == torch.float16 and "autocast" in str(err).lower():
                pytest.skip(f"CPU autocast with float16 unsupported: {err}")
            raise
        assert value.dtype == torch.float32 and torch.isfinite(value)
        value.backward()
        grads = [m.weight.grad for m in (layer, leaf_layer) if m.weight.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_reductions_and_unlabelled(ragged):
    x = torch.randn(5, ragged.num_nodes)
    t = torch.tensor([3, -100, 0, -1, 7])
    none = CombinatorialLoss(ragged, reduction="none")(x, t)
    assert none.shape == (5,) and none[1] == 0 and none[3] == 0 and (none[[0, 2, 4]] > 0).all()
    torch.testing.assert_close(CombinatorialLoss(ragged, reduction="sum")(x, t), none.sum())
    torch.testing.assert_close(CombinatorialLoss(ragged)(x, t), none.sum() / 3)
    # A custom ignore_index; an all-unlabelled batch gives 0 (not NaN) and zero gradients.
    none2 = CombinatorialLoss(ragged, reduction="none", ignore_index=7)(x, t)
    assert none2[4] == 0
    xg = x.clone().requires_grad_()
    for loss in _all_losses(ragged):
        value = _call(loss, ragged, xg, torch.full((5,), -100), torch.randn(5, 6))
        assert value == 0
    CombinatorialLoss(ragged)(xg, torch.full((5,), -100)).backward()
    assert (xg.grad == 0).all()


def test_sigmoid_floor(ragged):
    t = torch.arange(ragged.num_nodes)
    floor = sigmoid_loss_floor(ragged, t)
    assert (floor > 0.05).all()
    loss = CombinatorialLoss(ragged, reduction="none")
    x = torch.randn(200, ragged.num_nodes) * 4
    tt = t.repeat(20)[:200]
    assert (loss(x, tt) >= floor.repeat(20)[:200] - 1e-6).all()
    # Logits of +-30 on the optimal pattern reach the floor; raw logits can go to 0.
    paths, levels = ragged.tensors().paths, ragged.tensors().levels
    pattern = torch.full((len(t), ragged.num_nodes), -30.0)
    for i in range(len(t)):  # +30 on the label's path and subtree
        inside = (paths[:, levels[i] - 1] == i) | torch.isin(torch.arange(len(t)), paths[i])
        pattern[i, inside] = 30.0
    torch.testing.assert_close(loss(pattern, t), floor, atol=1e-4, rtol=0)
    assert CombinatorialLoss(ragged, "logits", "none")(pattern * 10, t).max() < 1e-3
    assert sigmoid_loss_floor(ragged, torch.tensor([-100]))[0] == 0


def test_hrn_loss_is_weighted_sum(ragged):
    x = torch.randn(4, ragged.num_nodes)
    leaf = torch.randn(4, len(ragged.leaves))
    t = _col(ragged, "x", "a", "c", "b1")
    leaf_cols = ragged.tensors().leaves.tolist()
    leaf_t = torch.tensor([leaf_cols.index(int(c)) for c in t[[0, 2, 3]]])
    ce = F.cross_entropy(leaf[[0, 2, 3]], leaf_t)
    comb = CombinatorialLoss(ragged, "logits")(x, t)  # HRNLoss's default scores
    total = HRNLoss(ragged, combinatorial_weight=0.5, leaf_weight=2.0)(x, t, leaf)
    torch.testing.assert_close(total, 0.5 * comb + 2.0 * ce)
    none = HRNLoss(ragged, reduction="none")(x, t, leaf)
    assert none.shape == (4,)
    with pytest.raises(ValueError, match="leaf_logits"):
        HRNLoss(ragged)(x, t)
    assert torch.isfinite(HRNLoss(ragged, leaf_weight=0)(x, t))
    with pytest.raises(ValueError, match=r"Expected `leaf_logits` of shape \[4, 6\]"):
        HRNLoss(ragged)(x, t, leaf[:, :3])


def test_hrn_loss_leaf_marginal_variant_counts_coarse_labels_through_their_leaves(ragged):
    """leaf_loss="marginal": every labelled sample trains the leaf head, a coarse label by
    the sum of its leaves' softmax (-log P(label)), beside the same combinatorial term."""
    x = torch.randn(4, ragged.num_nodes)
    leaf = torch.randn(4, len(ragged.leaves))
    t = _col(ragged, "x", "a", "c", "b")
    node_scores = leaf_log_marginals(ragged, leaf)
    ref = LeafMarginalLoss(ragged, reduction="none")(node_scores, t)
    got = HRNLoss(ragged, "sigmoid", leaf_loss="marginal", reduction="none").parts(x, t, leaf)
    torch.testing.assert_close(got["leaf_ce"], ref)
    torch.testing.assert_close(
        got["combinatorial"], CombinatorialLoss(ragged, "sigmoid", "none")(x, t)
    )
    with pytest.raises(ValueError, match=r"Expected argument `leaf_loss` to be one of"):
        HRNLoss(ragged, leaf_loss="bce")


def test_per_level_cross_entropy(ragged):
    x = torch.randn(3, ragged.num_nodes)
    t = _col(ragged, "x", "b", "c")
    lv = [ragged.level_slice(d) for d in (1, 2, 3)]
    col = {n: i for i, n in enumerate(ragged.nodes)}

    def ce(row, d, node):
        return F.cross_entropy(x[row : row + 1, lv[d]], torch.tensor([col[node] - lv[d].start]))

    expected = [
        ce(0, 0, "a") + ce(0, 1, "a1") + ce(0, 2, "x"),  # leaf at level 3
        ce(1, 0, "b"),  # coarse label: levels 2 and 3 are unknown
        ce(2, 0, "c"),  # leaf at level 1 of a ragged tree
    ]
    got = PerLevelCrossEntropy(ragged, reduction="none")(x, t)
    torch.testing.assert_close(got, torch.stack(expected))


def test_leaf_marginal_loss_sums_leaf_probabilities(ragged):
    leaf_logits = torch.randn(4, len(ragged.leaves))
    probs = torch.softmax(leaf_logits.double(), 1)
    leaf_cols = ragged.tensors().leaves.tolist()
    t = _col(ragged, "a", "b", "y", "a1")
    below = [ragged.leaves_below(int(c)).tolist() for c in t]
    ref = torch.stack(
        [-probs[i, [leaf_cols.index(c) for c in b]].sum().log() for i, b in enumerate(below)]
    )
    node_scores = leaf_log_marginals(ragged, leaf_logits)
    got = LeafMarginalLoss(ragged, reduction="none")(node_scores, t)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_build_loss_and_errors(ragged):
    assert isinstance(build_loss(ragged, "hrn", leaf_weight=0.5), HRNLoss)
    assert isinstance(build_loss(ragged, "combinatorial", scores="logits"), CombinatorialLoss)
    assert isinstance(build_loss(ragged, "flat"), PerLevelCrossEntropy)
    assert isinstance(build_loss(ragged, "leaf"), LeafMarginalLoss)
    with pytest.raises(ValueError, match=r"Expected argument `loss` to be one of .*'hrn'"):
        build_loss(ragged, "tree")
    with pytest.raises(ValueError, match="`scores`"):
        CombinatorialLoss(ragged, scores="softmax")
    with pytest.raises(ValueError, match="`reduction`"):
        CombinatorialLoss(ragged, reduction="avg")
    loss = CombinatorialLoss(ragged)
    with pytest.raises(ValueError, match=r"node_scores` of shape \[B, 10\]"):
        loss(torch.randn(2, 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`targets` of shape \[2\]"):
        loss(torch.randn(2, 10), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"in \[0, 10\).*got 10"):
        loss(torch.randn(2, 10), torch.tensor([0, 10]))
    with pytest.raises(TypeError, match="integer"):
        loss(torch.randn(2, 10), torch.tensor([0.0, 1.0]))


def test_no_grad_and_grad_paths_agree(big):
    x = torch.randn(7, big.num_nodes)
    t = torch.randint(-1, big.num_nodes, (7,))
    for scores in ("sigmoid", "logits"):
        loss = CombinatorialLoss(big, scores=scores, reduction="none")
        with torch.no_grad():
            a = loss(x, t)
        b = loss(x.clone().requires_grad_(), t)
        torch.testing.assert_close(a, b.detach())
