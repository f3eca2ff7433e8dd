"""hmc.numpy_decoding against hmc.decoding: the same nodes and probabilities (within 1e-5) for
every score kind, HRN probability model, scores setting, temperature and decoder, on random
ragged and balanced trees; and the torch-free tables equal hmc.decoding's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_strategies import trees

import hmc.decoding as td
import hmc.numpy_decoding as nd
from hmc.hierarchy import Hierarchy
from hmc.models import HeadOutput


def raw_outputs(h: Hierarchy, batch: int, seed: int, scale: float = 3.0, leaf: bool = True):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, h.num_nodes, generator=g) * scale
    z = torch.randn(batch, len(h.leaves), generator=g) * scale if leaf else None
    return s, z


def assert_same(h, s, z, decoder, **kw):
    """decode() of both implementations on the same raw outputs."""
    options = kw.pop("decoder_kwargs", {})
    ref = td.decode(h, HeadOutput(s, z, []), decoder, **kw, **options)
    got = nd.decode(
        nd.TreePlan(h.to_dict()),
        s.numpy(),
        None if z is None else z.numpy(),
        decoder,
        **kw,
        **options,
    )
    assert got.nodes.dtype == np.int64 and got.probs.dtype == got.node_probs.dtype == np.float32
    np.testing.assert_allclose(got.node_probs, ref.node_probs.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.nodes, ref.nodes.numpy())
    np.testing.assert_allclose(got.probs, ref.probs.numpy(), atol=1e-5, rtol=0)
    return got


# Every (score kind, scores, probabilities, has leaf logits) a checkpoint can hold.
MODELS = [
    ("states", "sigmoid", "states", False),
    ("states", "logits", "states", False),
    ("states", "sigmoid", "leafhead", True),
    ("states", "logits", "leafhead", True),
    ("states", "sigmoid", "product", True),
    ("states", "logits", "product", True),
    ("states", "logits", None, True),  # the default: product
    ("states", "logits", None, False),  # an HRN head without its leaf head: states
    ("level_logits", "sigmoid", None, False),
    ("leaf_log_probs", "sigmoid", None, True),
]
DECODER_CASES = [
    ("argmax", {}),
    ("marginal", {}),
    ("map", {}),
    ("threshold", {"threshold": 0.5}),
    ("threshold", {"threshold": 0.2}),
    ("paper", {}),
]
TEMPERATURES = [None, {"node_scores": 0.7, "leaf_logits": 1.8}, {"leaf_logits": 0.5}]


def leaf_log_probs_scores(h: Hierarchy, z: torch.Tensor) -> torch.Tensor:
    """A LeafHead's node_scores for leaf logits z."""
    from hmc.models import leaf_log_marginals

    return leaf_log_marginals(h, z)


@settings(max_examples=40, deadline=None)
@given(
    tree=trees(max_depth=4, max_nodes=30),
    model=st.sampled_from(MODELS),
    decoder=st.sampled_from(DECODER_CASES),
    temperatures=st.sampled_from(TEMPERATURES),
    seed=st.integers(0, 2**16),
)
def test_numpy_decoding_equals_torch_decoding(tree, model, decoder, temperatures, seed):
    score_kind, scores, probabilities, leaf = model
    name, options = decoder
    s, z = raw_outputs(tree, 7, seed, leaf=leaf)
    if score_kind == "leaf_log_probs":
        s = leaf_log_probs_scores(tree, z)
    kw = dict(score_kind=score_kind, scores=scores, probabilities=probabilities)
    kw.update(temperatures=temperatures, decoder_kwargs=options)
    if name == "paper" and z is None:
        with pytest.raises(ValueError, match="decoder 'paper' needs the head's leaf logits"):
            nd.decode(nd.TreePlan(tree.to_dict()), s.numpy(), None, "paper", score_kind=score_kind)
        return
    assert_same(tree, s, z, name, **kw)


BALANCED = Hierarchy.from_paths(
    [(f"o{i}", f"f{i}{j}", f"s{i}{j}{k}") for i in range(3) for j in range(4) for k in range(3)],
    level_names=["order", "family", "species"],
)
RAGGED = Hierarchy.from_paths(
    [("a", "a1", "a11"), ("a", "a1", "a12"), ("a", "a2"), ("b", "b1", "b11"), ("c",)],
    level_names=["l1", "l2", "l3"],
)


@pytest.mark.parametrize("tree", [BALANCED, RAGGED], ids=["balanced", "ragged"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: "-".join(map(str, m)))
@pytest.mark.parametrize("decoder", DECODER_CASES, ids=lambda d: f"{d[0]}{d[1] or ''}")
def test_every_decoder_and_model_on_fixed_trees(tree, model, decoder):
    score_kind, scores, probabilities, leaf = model
    if decoder[0] == "paper" and not leaf:
        pytest.skip("the paper decoder needs leaf logits (tested above)")
    s, z = raw_outputs(tree, 64, seed=3, leaf=leaf)
    if score_kind == "leaf_log_probs":
        s = leaf_log_probs_scores(tree, z)
    kw = dict(score_kind=score_kind, scores=scores, probabilities=probabilities)
    got = assert_same(tree, s, z, decoder[0], decoder_kwargs=decoder[1], **kw)
    if decoder[0] == "threshold" and decoder[1]["threshold"] == 0.5 and score_kind == "states":
        assert (got.nodes == -1).any()  # the early stop is exercised, not only full paths


def test_extreme_scores_stay_finite_and_agree():
    # Large scores: the log-space sweeps neither overflow nor lose the small probabilities.
    s, z = raw_outputs(BALANCED, 16, seed=5, scale=40.0)
    for probabilities in ("states", "leafhead", "product"):
        got = assert_same(
            BALANCED, s, z, "marginal", score_kind="states", scores="logits",
            probabilities=probabilities,
        )  # fmt: skip
        assert np.isfinite(got.node_probs).all()


def test_interleaved_siblings_give_the_same_decoding():
    # Hierarchy groups siblings; a to_dict() whose level-3 columns interleave them exercises
    # the plan's reordering. Decoding the permuted columns and mapping back changes nothing.
    h = BALANCED
    d = h.to_dict()
    lo, hi = h.level_slice(3).start, h.level_slice(3).stop
    perm = np.r_[np.arange(lo), lo + np.random.default_rng(0).permutation(hi - lo)]
    d["nodes"] = [d["nodes"][i] for i in perm]
    plan, shuffled = nd.TreePlan(h.to_dict()), nd.TreePlan(d)
    assert any(o is not None for o, *_ in shuffled._segments[2:])
    s, z = raw_outputs(h, 9, seed=1)
    s = s.numpy()
    for decoder in nd.DECODERS:
        kw = dict(score_kind="states", scores="logits")
        ref = nd.decode(plan, s, z.numpy(), decoder, **kw)
        got = nd.decode(shuffled, s[:, perm], z.numpy()[:, perm[lo:] - lo], decoder, **kw)
        np.testing.assert_array_equal(np.where(got.nodes >= 0, perm[got.nodes], -1), ref.nodes)
        np.testing.assert_allclose(got.node_probs, ref.node_probs[:, perm], atol=1e-6)


def test_plan_matches_the_hierarchys_own_index_tensors():
    from hmc.sweeps import state_plan

    for h in (BALANCED, RAGGED):
        ref = state_plan(h)
        plan = nd.TreePlan(h.to_dict())
        assert plan.offsets == ref.offsets
        np.testing.assert_array_equal(plan.paths, ref.paths.numpy())
        np.testing.assert_array_equal(plan.is_leaf, ref.is_leaf.numpy())
        np.testing.assert_array_equal(plan.leaves, h.tensors().leaves.numpy())


def test_a_large_tree_decodes_without_an_n_by_n_matrix():
    # iNaturalist-2021 size (~16k nodes, 7 levels): every array is [B, N] or smaller.
    sizes = (3840, 960, 240, 60, 20, 5, 1)  # nested blocks: 4, 13, 50, 200, 600, 2400, 12000
    h = Hierarchy.from_paths(
        [tuple(f"{k}{i // n}" for k, n in zip("abcdefg", sizes, strict=True)) for i in range(12000)]
    )
    assert h.num_nodes > 15000
    s, z = raw_outputs(h, 4, seed=0)
    plan = nd.TreePlan(h.to_dict())
    got = nd.decode(plan, s.numpy(), z.numpy(), "marginal", score_kind="states", scores="logits")
    ref = td.decode(h, HeadOutput(s, z, []), "marginal", score_kind="states", scores="logits")
    np.testing.assert_array_equal(got.nodes, ref.nodes.numpy())


def test_check_decoder_fills_defaults_and_names_bad_options_as_hmc_decoding():
    assert nd.check_decoder("threshold") == td.check_decoder("threshold") == {"threshold": 0.5}
    with pytest.raises(ValueError, match=r"decoder_kwargs.*'argmax'.*\['bogus'\]"):
        nd.check_decoder("argmax", {"bogus": 1})
    with pytest.raises(ValueError, match="Expected argument `decoder` to be one of"):
        nd.check_decoder("nope")


def test_bad_shapes_are_named():
    plan = nd.TreePlan(RAGGED.to_dict())
    with pytest.raises(ValueError, match=r"node_scores.*\[B, 9\].*\[2, 7\]"):
        nd.decode(plan, np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"leaf_logits.*\[2, 5\]"):
        nd.decode(plan, np.zeros((2, 9)), np.zeros((2, 4)))
