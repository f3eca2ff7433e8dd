"""The combinatorial loss, its gradients and the node marginals against a brute force that
enumerates every state (float64, here in the test only), on random trees of depth 1 to 5."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_strategies import trees

from hmc.decoding import node_marginals
from hmc.hierarchy import Hierarchy
from hmc.losses import CombinatorialLoss


def states_matrix(h: Hierarchy) -> torch.Tensor:
    """[N + 1, N] float64 0/1: row 0 is the empty state, row 1 + v the path to node v."""
    m = torch.zeros(h.num_nodes + 1, h.num_nodes, dtype=torch.float64)
    for v, node in enumerate(h.nodes):
        for a in h.ancestors(node):
            m[1 + v, h.index(a)] = 1.0
    return m


def brute_loss(h: Hierarchy, s: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B] -log sum_{states containing l} e^score + log sum_{states} e^score, in float64."""
    m = states_matrix(h)
    score = s.double() @ m.T  # [B, N + 1]
    contains = m[:, targets].T > 0  # [B, N + 1]
    num = torch.logsumexp(score.masked_fill(~contains, -torch.inf), 1)
    return torch.logsumexp(score, 1) - num


def brute_state_probs(h: Hierarchy, s: torch.Tensor) -> torch.Tensor:
    return torch.softmax(s.double() @ states_matrix(h).T, 1)  # [B, N + 1]


def _inputs(h: Hierarchy, data, scale: float):
    b = data.draw(st.integers(1, 5))
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h.num_nodes, generator=gen) * scale
    t = torch.randint(0, h.num_nodes, (b,), generator=gen)
    return x, t


@settings(max_examples=40, deadline=None)
@given(h=trees(), data=st.data(), scores=st.sampled_from(["logits", "sigmoid"]))
def test_loss_and_gradient_match_brute_force(h, data, scores):
    x, t = _inputs(h, data, scale=data.draw(st.sampled_from([0.5, 3.0])))
    x32 = x.clone().requires_grad_()
    loss = CombinatorialLoss(h, scores=scores, reduction="none")(x32, t)
    loss.sum().backward()

    x64 = x.double().requires_grad_()
    s64 = torch.sigmoid(x64) if scores == "sigmoid" else x64
    ref = brute_loss(h, s64, t)
    ref.sum().backward()

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(h=trees(), data=st.data(), scores=st.sampled_from(["logits", "sigmoid"]))
def test_marginals_match_brute_force_and_sum_correctly(h, data, scores):
    x, _ = _inputs(h, data, scale=3.0)
    marg = node_marginals(h, x, scores=scores).double()
    s = torch.sigmoid(x.double()) if scores == "sigmoid" else x.double()
    states = brute_state_probs(h, s)  # [B, N + 1]
    ref = states @ states_matrix(h)  # P(v on path) = sum of the states that contain v
    torch.testing.assert_close(marg, ref, rtol=1e-5, atol=1e-5)

    # Level d's marginals sum to 1 - P(empty) - P(states ending above level d), exactly.
    levels = h.tensors().levels
    for d in range(1, h.num_levels + 1):
        level_sum = marg[:, h.level_slice(d)].sum(1)
        shallower = states[:, 1:][:, levels < d].sum(1)
        torch.testing.assert_close(level_sum, 1 - states[:, 0] - shallower, rtol=0, atol=1e-5)
        assert (level_sum <= 1 + 1e-6).all()


@settings(max_examples=30, deadline=None)
@given(h=trees(), data=st.data())
def test_marginals_are_differentiable(h, data):
    x, _ = _inputs(h, data, scale=2.0)
    w = torch.randn(h.num_nodes, dtype=torch.float64)
    x32 = x.clone().requires_grad_()
    (node_marginals(h, x32, scores="logits").double() @ w).sum().backward()
    x64 = x.double().requires_grad_()
    ((brute_state_probs(h, x64) @ states_matrix(h)) @ w).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
