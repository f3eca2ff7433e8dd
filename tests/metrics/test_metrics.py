"""Hand-worked examples, the collection API (names, clone, reset, forward, devices), input
validation, evaluate() on arrays, and the confusion counts of dense and wide levels."""

from __future__ import annotations

import copy
import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from hmc.hierarchy import Hierarchy
from hmc.metrics import (
    METRIC_GROUPS,
    HierarchicalMetrics,
    LevelAccuracy,
    LevelConfusion,
    MetricBatch,
    TopKAccuracy,
    binned_average_precision,
    evaluate,
)


@pytest.fixture
def tree() -> Hierarchy:
    # order: A=0 B=1 | family: A1=2 A2=3 B1=4 | species: a=5 b=6 c=7 d=8
    return Hierarchy.from_paths(
        [("A", "A1", "a"), ("A", "A1", "b"), ("A", "A2", "c"), ("B", "B1", "d")],
        level_names=["order", "family", "species"],
    )


def _hand_case(h: Hierarchy):
    c = h.index
    targets = torch.tensor([c("a"), c("b"), c("c"), c("A1"), c("d"), -100, c("a")])
    pred = torch.tensor(
        [
            [0, 2, 5],  # A A1 a: all right
            [0, 2, 5],  # b -> a: species wrong, LCA A1, height 1
            [1, 4, 8],  # c -> d: all wrong, LCA root, height 3
            [0, 3, 7],  # family label A1 -> A2 (species not looked at), height 1
            [1, -1, -1],  # d -> stop after B: height 3 - 1 = 2
            [0, 4, 5],  # unlabelled: ignored although inconsistent
            [1, 2, 5],  # a -> B A1 a: order wrong, inconsistent, species right
        ]
    )
    return targets, pred


def test_hand_worked_prediction_metrics(tree):
    targets, pred = _hand_case(tree)
    m = HierarchicalMetrics(tree, metrics=["acc", "fpa", "tice", "hf1", "mistake_severity"])
    m.update(None, targets, pred)
    got = {k: float(v) for k, v in m.compute().items()}
    want = {
        "acc/order": 4 / 6,
        "acc/family": 3 / 6,
        "acc/species": 2 / 5,
        "acc/mean": (4 / 6 + 3 / 6 + 2 / 5) / 3,
        "fpa": 1 / 6,
        "tice": 1 / 6,
        # |P n T|, |P|, |T| per sample: (3,3,3) (2,3,3) (0,3,3) (1,2,2) (1,1,3) (3,4,3)
        "hp": 10 / 16,
        "hr": 10 / 17,
        "hf1": 20 / 33,
        "hf1/macro": (1 + 4 / 6 + 0 + 2 / 4 + 2 / 4 + 6 / 7) / 6,
        "mistake_severity": (1 + 3 + 1 + 2) / 4,
    }
    assert got == pytest.approx(want, abs=1e-6)


def test_hand_worked_confusions(tree):
    targets, pred = _hand_case(tree)
    for max_dense in (256, 0):  # dense matrices, and mistake keys for every level
        m = LevelConfusion(tree, max_dense=max_dense)
        m.update(None, targets, pred)
        assert m.confusions() == {
            "order": [("A", "B", 2)],
            "family": [("A1", "A2", 1), ("A2", "B1", 1)],
            "species": [("b", "a", 1), ("c", "d", 1)],
        }
    m = LevelConfusion(tree)
    m.update(None, targets, pred)
    fam = m.confusion_matrix("family")  # rows true A1 A2 B1, columns predicted + stop
    assert fam.tolist() == [[3, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    both = HierarchicalMetrics(tree, metrics=["confusion"])
    both.update(None, targets, pred)
    assert torch.equal(both.confusion_matrix("family"), fam)
    with pytest.raises(ValueError, match="max_dense"):
        LevelConfusion(tree, max_dense=2).confusion_matrix("species")


def test_topk_ties_go_to_the_lower_column_like_argmax():
    h = Hierarchy.from_paths([("x",), ("y",), ("z",)])
    probs = torch.tensor([[0.3, 0.3, 0.4], [0.3, 0.3, 0.4], [0.5, 0.5, 0.5]])
    targets = torch.tensor([1, 0, 2])  # ranks 2, 1, 2
    m = TopKAccuracy(h, top_k=(1, 2, 3))
    m.update(probs, targets)
    got = m.compute()
    assert [float(got[f"top{k}/level_1"]) for k in (1, 2, 3)] == pytest.approx([0, 1 / 3, 1])
    acc = LevelAccuracy(h)
    acc.update(probs, targets)  # argmax picks the first maximum: col 2, 2, 0
    assert float(acc.compute()["acc/level_1"]) == 0
    # The same through the collection, whose metrics share one formatted batch.
    both = HierarchicalMetrics(h, metrics=["acc", "topk", "ece"])
    both.update(probs, targets)
    assert float(both.compute()["acc/level_1"]) == 0
    both.update(probs[2:], torch.tensor([0]))
    assert float(both.compute()["acc/level_1"]) == 1 / 4


def test_ahd_and_severity_by_hand(tree):
    c = tree.index
    probs = torch.zeros(2, tree.num_nodes)
    # species ranking for sample 0: b > c > a > d; label a (height of b: 1, c: 2, a: 0, d: 3)
    probs[0, [c("b"), c("c"), c("a"), c("d")]] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    # family label A2 for sample 1: ranking B1 > A2 > A1 (heights 2, 0, 1)
    probs[1, [c("B1"), c("A2"), c("A1")]] = torch.tensor([0.5, 0.3, 0.2])
    targets = torch.tensor([c("a"), c("A2")])
    m = HierarchicalMetrics(tree, metrics=["ahd"], k=(1, 2, 5))
    m.update(probs, targets)
    got = {k: float(v) for k, v in m.compute().items()}
    # k clipped to the level size: 4 species, 3 families
    assert got == pytest.approx({"ahd@1": (1 + 2) / 2, "ahd@2": (3 + 2) / 4, "ahd@5": (6 + 3) / 7})


def test_ece_matches_torchmetrics(tree):
    g = torch.Generator().manual_seed(0)
    b = 200
    logits = torch.randn(b, tree.num_nodes, generator=g) * 2
    probs = torch.cat([logits[:, tree.level_slice(d)].softmax(1) for d in (1, 2, 3)], 1)
    targets = torch.randint(0, tree.num_nodes, (b,), generator=g)
    m = HierarchicalMetrics(tree, metrics=["ece"])
    m.update(probs, targets)
    got = m.compute()
    lt = tree.level_targets(targets)
    for d, name in enumerate(tree.level_names, start=1):
        sl = tree.level_slice(d)
        rows = lt[:, d - 1] >= 0
        want = multiclass_calibration_error(
            probs[rows, sl], lt[rows, d - 1] - sl.start, num_classes=sl.stop - sl.start, n_bins=15
        )
        assert float(got[f"ece/{name}"]) == pytest.approx(float(want), abs=1e-6)


def test_ap_by_hand_including_scores_at_zero_and_one():
    # Positives 1.0, 0.5; negatives 0.5, 0.0: thresholds -> P@1.0 = 1, R = .5; P@0.5 = 2/3, R = 1
    pos = torch.zeros(4, dtype=torch.long)
    neg = torch.zeros(4, dtype=torch.long)
    for s in (1.0, 0.5):
        pos[min(int(s * 4), 3)] += 1
    for s in (0.5, 0.0):
        neg[min(int(s * 4), 3)] += 1
    assert float(binned_average_precision(pos, neg)) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    h = Hierarchy.from_paths([("x",), ("y",)])
    m = HierarchicalMetrics(h, metrics=["ap"], thresholds=4)
    m.update(torch.tensor([[1.0, 0.5], [0.5, 0.0]]), torch.tensor([0, 0]))
    assert float(m.compute()["ap/micro"]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert math.isnan(float(binned_average_precision(neg * 0, neg)))  # no positives


def test_result_names_are_stable(tree):
    m = HierarchicalMetrics(tree)
    probs = torch.rand(4, tree.num_nodes)
    m.update(probs, torch.tensor([5, 6, 2, -1]))
    levels = tree.level_names
    want = (
        [f"acc/{n}" for n in levels]
        + ["acc/mean"]
        + [f"top5/{n}" for n in levels]
        + ["fpa", "tice", "hp", "hr", "hf1", "hf1/macro", "mistake_severity", "ahd@1", "ahd@5"]
        + ["ap/micro"]
        + [f"ap/{n}" for n in levels]
        + [f"ece/{n}" for n in levels]
    )
    assert sorted(m.compute()) == sorted(want)
    val = m.clone(prefix="val/")
    assert sorted(val.compute()) == sorted(f"val/{k}" for k in want)
    assert set(METRIC_GROUPS) == {
        "acc", "topk", "fpa", "tice", "hf1", "mistake_severity", "ahd", "ap", "ece", "confusion"
    }  # fmt: skip


def test_update_reset_forward_clone_to(tree):
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(20, tree.num_nodes, generator=g)
    targets = torch.randint(-1, tree.num_nodes, (20,), generator=g)
    one = HierarchicalMetrics(tree)
    one.update(probs, targets)
    want = one.compute()

    m = HierarchicalMetrics(tree).to("cpu")
    first = m(probs[:8], targets[:8])  # forward: batch values, and accumulates
    part = HierarchicalMetrics(tree)
    part.update(probs[:8], targets[:8])
    torch.testing.assert_close(first, part.compute(), equal_nan=True)
    m(probs[8:], targets[8:])
    torch.testing.assert_close(m.compute(), want, equal_nan=True)

    twin = m.clone(prefix="test/")
    assert twin.hierarchy is m.hierarchy  # immutable: shared by clones, not rebuilt
    m.reset()
    m.update(probs[:3], targets[:3])
    assert float(twin.compute()["test/fpa"]) == float(want["fpa"])  # clones keep their own state
    m.reset()
    m.update(probs, targets)
    torch.testing.assert_close(m.compute(), want, equal_nan=True)
    again = pickle.loads(pickle.dumps(m))
    torch.testing.assert_close(again.compute(), want, equal_nan=True)
    assert copy.deepcopy(m).confusions() == m.confusions()


def test_target_and_prediction_formats_are_equivalent(tree):
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(12, tree.num_nodes, generator=g)
    targets = torch.randint(-1, tree.num_nodes, (12,), generator=g)
    nodes = torch.randint(0, tree.num_nodes, (12,), generator=g)
    a, b = HierarchicalMetrics(tree), HierarchicalMetrics(tree)
    a.update(probs, targets, tree.level_targets(nodes))
    b.update(probs.numpy(), tree.level_targets(targets).numpy(), nodes.numpy())
    torch.testing.assert_close(a.compute(), b.compute(), equal_nan=True)
    assert a.confusions() == b.confusions()


def test_empty_and_unlabelled_batches_give_nan(tree):
    m = HierarchicalMetrics(tree)
    m.update(torch.rand(0, tree.num_nodes), torch.zeros(0, dtype=torch.long))
    m.update(torch.rand(3, tree.num_nodes), torch.full((3,), -100))
    out = m.compute()
    assert all(math.isnan(float(v)) for v in out.values())


def test_sample_counts_only_at_its_labelled_levels(tree):
    c = tree.index
    probs = torch.zeros(1, tree.num_nodes)
    probs[0, [c("A"), c("A1"), c("d")]] = 1.0  # species prediction d is wrong, but unlabelled
    m = HierarchicalMetrics(tree)
    m.update(probs, torch.tensor([c("A1")]))
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["acc/order"] == out["acc/family"] == out["fpa"] == out["hf1"] == 1
    assert math.isnan(out["acc/species"]) and math.isnan(out["ap/species"])
    assert out["tice"] == 0  # A A1 d is inconsistent, but d is below the label
    assert math.isnan(out["mistake_severity"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.rand(2, 5), torch.tensor([0, 1])), r"shape \[B, 9\]"),
        ((torch.rand(2, 9) + 1, torch.tensor([0, 1])), r"probabilities in \[0, 1\]"),
        ((torch.full((2, 9), float("nan")), torch.tensor([0, 1])), r"probabilities"),
        ((torch.rand(2, 9), torch.tensor([0, 9])), r"targets\[1\] = 9"),
        ((torch.rand(2, 9), torch.tensor([0.0, 1.0])), "integer"),
        ((torch.rand(3, 9), torch.tensor([0, 1])), "2 rows"),
        ((torch.rand(2, 9), torch.tensor([[0, 3, 6], [0, 3, -1]])), r"paths of the tree.*row 0"),
        ((torch.rand(2, 9), torch.tensor([0, 1]), torch.tensor([[0, 5, -1], [0, 2, 5]])),
         r"level 'family'.*predictions\[0, 1\] = 5"),
        ((torch.rand(2, 9), torch.tensor([0, 1]), torch.tensor([[0, 2], [0, 2]])),
         r"shape \[B, 3\]"),
        ((None, torch.tensor([0, 1]), torch.tensor([[0, 2, 5], [1, 4, 8]])), "node_probs"),
    ],
)  # fmt: skip
def test_bad_input_names_the_problem(tree, args, match):
    with pytest.raises(ValueError, match=match):
        HierarchicalMetrics(tree).update(*args)


def test_bad_arguments(tree):
    with pytest.raises(ValueError, match="Expected argument `metrics`"):
        HierarchicalMetrics(tree, metrics=["acc", "f1"])
    with pytest.raises(ValueError, match="top_k"):
        HierarchicalMetrics(tree, top_k=0)
    with pytest.raises(ValueError, match="thresholds"):
        HierarchicalMetrics(tree, thresholds=1)
    with pytest.raises(ValueError, match="ahd_k"):  # an old option name fails loudly
        HierarchicalMetrics(tree, ahd_k=(1, 5))
    with pytest.raises(TypeError, match="hmc.Hierarchy"):
        LevelAccuracy("cub200")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confusion"):
        HierarchicalMetrics(tree, metrics=["acc"]).confusions()
    # Rounding slack is accepted; validation can be turned off.
    HierarchicalMetrics(tree).update(torch.full((1, 9), 1 + 1e-6), torch.tensor([5]))
    HierarchicalMetrics(tree, validate_args=False).update(torch.rand(1, 9) + 5, torch.tensor([5]))


def test_evaluate_reads_memory_mapped_arrays_in_chunks(tree, tmp_path):
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(50, tree.num_nodes, generator=g)
    targets = torch.randint(-1, tree.num_nodes, (50,), generator=g)
    path = tmp_path / "probs.npy"
    np.save(path, probs.numpy())
    mm = np.load(path, mmap_mode="r")
    got = evaluate(tree, mm, targets.numpy(), batch_size=16)
    m = HierarchicalMetrics(tree, metrics=[g for g in METRIC_GROUPS if g != "confusion"])
    m.update(probs, targets)
    want = {k: float(v) for k, v in m.compute().items()}
    assert got.keys() == want.keys()
    assert all(type(v) is float for v in got.values())
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="neither"):
        evaluate(tree, None, targets)
    with pytest.raises(ValueError, match="49 rows"):
        evaluate(tree, probs, targets[:49])


def test_wide_level_confusions_equal_a_brute_force_count():
    h = Hierarchy.from_paths([(f"g{i}", f"g{i}s{j}") for i in range(20) for j in range(20)])
    g = torch.Generator().manual_seed(4)
    b = 3000
    # Skewed mistakes: a few frequent pairs and many rare ones; some early stops.
    targets = torch.randint(20, 420, (b,), generator=g)
    pred = torch.where(torch.rand(b, generator=g) < 0.5, targets, 20 + (targets * 7 + 3) % 400)
    noise = torch.rand(b, generator=g) < 0.3
    pred[noise] = torch.randint(20, 420, (int(noise.sum()),), generator=g)
    pred = h.level_targets(pred)
    pred[::11, 1] = -1
    want = Counter(
        (h.nodes[t], h.nodes[p])
        for t, p in zip(targets.tolist(), pred[:, 1].tolist(), strict=True)
        if p >= 0 and t != p
    )
    expect = sorted(want.items(), key=lambda kv: (-kv[1], h.index(kv[0][0]), h.index(kv[0][1])))
    expect = [(t, p, c) for (t, p), c in expect]
    wide = LevelConfusion(h, max_dense=50, max_pairs=10_000)  # level_2 (400 nodes) is wide
    dense = LevelConfusion(h, max_dense=400, max_pairs=10_000)
    wide(None, targets[:1000], pred[:1000])  # forward: merges the batch's keys into the state
    for rows in (slice(1000, 1000), slice(1000, None)):  # an empty update too
        wide.update(None, targets[rows], pred[rows])
    dense.update(None, targets, pred)
    assert not wide.dense_levels[1] and dense.dense_levels[1]
    assert wide.confusions()["level_2"] == expect
    assert dense.confusions() == wide.confusions()
    assert wide.confusions(max_pairs=5)["level_2"] == expect[:5]
    assert pickle.loads(pickle.dumps(wide)).confusions() == wide.confusions()
    wide.reset()
    assert wide.confusions()["level_2"] == []


def test_update_takes_a_formatted_batch_or_tensors_not_both(tree):
    targets, pred = _hand_case(tree)
    a, b = LevelAccuracy(tree), LevelAccuracy(tree)
    a.update(None, targets, pred)
    b.update(batch=MetricBatch(tree, None, targets, pred))
    torch.testing.assert_close(a.compute(), b.compute())
    with pytest.raises(ValueError, match="both"):
        b.update(None, targets, batch=MetricBatch(tree, None, targets, pred))
    other = Hierarchy.from_paths([("x", "y", "z")])
    with pytest.raises(ValueError, match="hierarchy"):
        b.update(batch=MetricBatch(other, None, torch.tensor([2]), torch.tensor([[0, 1, 2]])))


def test_docstring_examples_run():
    import doctest

    import hmc.metrics.collection

    result = doctest.testmod(hmc.metrics.collection)
    assert result.attempted > 0 and result.failed == 0
