"""Coarse-label simulation: counts, choice of samples, targets, determinism (incl. workers)."""

from __future__ import annotations

import math

import pytest
import torch
from data_fixtures import bird_hierarchy, make_cub
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import hmc.data as D
from hmc.data import relabel_targets
from hmc.hierarchy import Hierarchy


def _targets(h: Hierarchy, per_class: list[int]) -> torch.Tensor:
    """Leaf targets, each class's samples contiguous, class i has per_class[i] samples."""
    leaves = h.tensors().leaves
    return torch.cat([leaves[i].repeat(n) for i, n in enumerate(per_class)])


def test_parent_relabel_counts_follow_the_paper():
    h = bird_hierarchy()
    t = _targets(h, [30, 10, 7, 1, 0])
    new = relabel_targets(h, t, 0.7, to="parent")
    leaves = h.tensors().leaves
    for i, n in enumerate([30, 10, 7, 1]):
        rows = t == leaves[i]
        moved = int((new[rows] != t[rows]).sum())
        # The paper keeps ceil((1 - r) n) fine; 0.3 * 30 is 9.000000000000002 in floats, the
        # paper's code would keep 10, we keep the intended 9.
        assert moved == n - math.ceil(round((1 - 0.7) * n, 9)), (i, n, moved)
        assert set(new[rows][new[rows] != t[rows]].tolist()) <= {
            h.index(h.parent(h.nodes[leaves[i]]))
        }
    assert D.level_counts(h, new) == {
        "order": 0,
        "family": 21 + 7 + 4 + 0,
        "species": 9 + 3 + 3 + 1,
    }


def test_first_selection_relabels_the_tail_of_each_class_in_list_order():
    h = bird_hierarchy()
    leaves = h.tensors().leaves
    # Two classes interleaved: A B A B A B A B
    t = leaves[[0, 1] * 4]
    new = relabel_targets(h, t, 0.5, selection="first")
    changed = (new != t).nonzero().flatten().tolist()
    assert changed == [4, 5, 6, 7]  # the last two of each class


def test_levels_and_random_levels():
    h = bird_hierarchy()
    t = _targets(h, [20, 20, 20, 20, 20])
    to_order = relabel_targets(h, t, 1.0, to="order")
    assert (h.tensors().levels[to_order] == 1).all()
    assert torch.equal(to_order, relabel_targets(h, t, 1.0, to=1))
    rnd = relabel_targets(h, t, 1.0, to="random", seed=3)
    lv = h.tensors().levels[rnd]
    assert set(lv.tolist()) == {1, 2}  # both ancestor levels occur; species never stays
    assert torch.equal(
        h.tensors().paths[t].gather(1, (lv - 1)[:, None]).flatten(), rnd
    )  # true ancestors


def test_coarse_unlabelled_and_level_one_leaves_are_left_alone():
    h = Hierarchy.from_paths([("a", "a1"), ("a", "a2"), ("b",)], level_names=["top", "leaf"])
    t = torch.tensor([h.index("a1")] * 4 + [h.index("a")] * 3 + [h.index("b")] * 2 + [-100])
    new = relabel_targets(h, t, 1.0)
    assert new.tolist() == [h.index("a")] * 7 + [h.index("b")] * 2 + [-100]
    assert t[0] == h.index("a1")  # input untouched


def test_seeded_random_selection_is_deterministic_and_seed_dependent():
    h = bird_hierarchy()
    t = _targets(h, [40, 40, 40, 40, 40])
    a = relabel_targets(h, t, 0.5, selection="random", seed=7)
    torch.manual_seed(0)
    b = relabel_targets(h, t, 0.5, selection="random", seed=7)
    torch.manual_seed(1)
    c = relabel_targets(h, t, 0.5, selection="random", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int((a != t).sum()) == int((c != t).sum()) == 100
    first = relabel_targets(h, t, 0.5, selection="first")
    assert not torch.equal(a, first)


def test_bad_arguments():
    h = bird_hierarchy()
    t = _targets(h, [2, 2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"`ratio` to be in \[0, 1\], but got 1.5"):
        relabel_targets(h, t, 1.5)
    with pytest.raises(ValueError, match=r"`to` to be one of \['parent', 'random', 'order'"):
        relabel_targets(h, t, 0.5, to="genus")
    with pytest.raises(ValueError, match=r"`selection` to be one of \['first', 'random'\]"):
        relabel_targets(h, t, 0.5, selection="last")
    with pytest.raises(ValueError, match=r"or a level in 1..3, but got 4"):
        relabel_targets(h, t, 0.5, to=4)
    assert torch.equal(relabel_targets(h, t, 1.0, to="2"), relabel_targets(h, t, 1.0, to=2))


@pytest.mark.parametrize(
    "options, message",
    [({"ratio": -0.1}, r"`ratio` to be in \[0, 1\], but got -0.1"),
     ({"ratio": 1.5}, r"`ratio` to be in \[0, 1\]"),
     ({"selection": "last"}, r"`selection` to be one of \['first', 'random'\]")],
)  # fmt: skip
def test_relabel_config_is_checked_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        D.RelabelConfig(**options)


def test_relabel_config_checks_its_level_against_the_hierarchy():
    D.RelabelConfig(ratio=0.5, to="family").check(bird_hierarchy())
    with pytest.raises(ValueError, match=r"`to` to be one of \['parent', 'random', 'order'"):
        D.RelabelConfig(ratio=0.5, to="genus").check(bird_hierarchy())


@given(
    per_class=st.lists(st.integers(0, 25), min_size=5, max_size=5),
    ratio=st.floats(0.0, 1.0),
    selection=st.sampled_from(["first", "random"]),
    seed=st.integers(0, 2**31),
)
def test_relabel_properties(per_class, ratio, selection, seed):
    h = bird_hierarchy()
    t = _targets(h, per_class)
    new = relabel_targets(h, t, ratio, "parent", selection, seed)
    moved = new != t
    paths = h.tensors().paths
    # Every changed label is the parent; per class about ratio * n move (within float rounding).
    assert torch.equal(new[moved], h.tensors().parent[t[moved]])
    leaves = h.tensors().leaves
    for i, n in enumerate(per_class):
        k = int(moved[t == leaves[i]].sum())
        assert math.floor(ratio * n) - 1 <= k <= math.ceil(ratio * n)
    assert torch.equal(paths[new][:, :2], paths[t][:, :2])  # ancestors above are kept


def _collect(ds, num_workers):
    loader = DataLoader(ds, batch_size=7, num_workers=num_workers, shuffle=False)
    return torch.cat([y for _, y in loader])


def test_relabelled_dataset_is_identical_in_every_worker(tmp_path):
    make_cub(tmp_path, train_per_class=8, test_per_class=1)
    tf = D.build_transforms("small", train=False, image_size=8)
    ds = D.CUB200(tmp_path, "trainval", hierarchy=bird_hierarchy(), transform=tf)
    new = relabel_targets(ds.hierarchy, ds.targets, 0.5, selection="random", seed=11)
    rel = ds.with_targets(new)
    assert torch.equal(_collect(rel, 0), new)
    assert torch.equal(_collect(rel, 2), new)
    assert torch.equal(ds.targets, _collect(ds, 0))  # the original is unchanged
    assert "family=20, species=20" in repr(rel)
