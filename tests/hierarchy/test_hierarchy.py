"""Hierarchy core: builders, column order, tensor views and distances against networkx."""

from __future__ import annotations

import pickle

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hmc.hierarchy import VIRTUAL_ROOT, Hierarchy, HierarchyError, UnknownLabelError

# A small ragged tree: animal > {bird > {gull, tern}, fish}, plant > {tree > {oak}}
EDGES = [
    ("animal", "bird"),
    ("animal", "fish"),
    ("bird", "gull"),
    ("bird", "tern"),
    ("plant", "tree"),
    ("tree", "oak"),
]


@pytest.fixture
def h() -> Hierarchy:
    return Hierarchy.from_edges(
        EDGES,
        names={"gull": "Gull"},
        attributes={"oak": {"genus": "Quercus", "n": 3}},
        level_names=["kingdom", "class", "species"],
        metadata={"name": "toy"},
    )


# ------------------------------------------------------------------- random trees
@st.composite
def random_forests(draw) -> list[tuple[str, str]]:
    """(parent, child) edges of a random forest in shuffled order; parent "" = top level.

    Parents are drawn among earlier nodes, so depths (and leaf depths) vary: ragged trees."""
    n = draw(st.integers(2, 40))
    single_root = draw(st.booleans())
    parents = []
    for i in range(n):
        low = 0 if (single_root and i > 0) else -1
        p = draw(st.integers(low, i - 1)) if i > 0 else -1
        parents.append(p)
    rows = [(f"n{p}" if p >= 0 else "", f"n{i}") for i, p in enumerate(parents)]
    return draw(st.permutations(rows))


def _reference(rows: list[tuple[str, str]]):
    """The Hierarchy, a reference networkx tree with an explicit root, the root, depths."""
    g = nx.DiGraph()
    g.add_nodes_from(child for _, child in rows)
    g.add_edges_from((p, c) for p, c in rows if p)
    roots = [n for n in g if g.in_degree(n) == 0]
    h = Hierarchy.from_networkx(g)
    ref = g.copy()
    if len(roots) > 1:
        ref.add_edges_from(("ROOT", r) for r in roots)
        root = "ROOT"
    else:
        root = roots[0]
    return h, ref, root, nx.single_source_shortest_path_length(ref, root)


@given(random_forests())
def test_column_order_is_level_major_and_subtrees_contiguous(rows):
    h, ref, root, depth = _reference(rows)
    if h.num_nodes == 0:
        return
    assert set(h.nodes) == set(ref) - {root}
    levels = [depth[n] for n in h.nodes]
    assert levels == sorted(levels)
    # Within a level: sorted by parent column.
    for d in range(2, h.num_levels + 1):
        parents = [h.index(h.parent(n)) for n in h.level_nodes(d)]
        assert parents == sorted(parents)
    # Descendants at every level form one contiguous column range.
    for n in h.nodes:
        cols = sorted(h.index(x) for x in nx.descendants(ref, n))
        by_level: dict[int, list[int]] = {}
        for c in cols:
            by_level.setdefault(h.level(c), []).append(c)
        for cs in by_level.values():
            assert cs == list(range(cs[0], cs[-1] + 1))


@given(random_forests())
def test_tensor_views_match_networkx(rows):
    h, ref, root, depth = _reference(rows)
    t = h.tensors()
    n, d = h.num_nodes, h.num_levels
    assert t.parent.shape == (n,) and t.paths.shape == (n, d) and t.levels.shape == (n,)
    assert t.level_offsets.tolist() == [
        sum(1 for x in h.nodes if depth[x] <= k) for k in range(d + 1)
    ]
    for i, node in enumerate(h.nodes):
        path = nx.shortest_path(ref, root, node)[1:]  # level 1 .. node
        assert t.paths[i].tolist() == [h.index(x) for x in path] + [-1] * (d - len(path))
        assert t.levels[i] == len(path) == h.level(node)
        p = next(iter(ref.predecessors(node)))
        assert t.parent[i] == (-1 if p == root else h.index(p))
        assert bool(t.is_leaf[i]) == (ref.out_degree(node) == 0) == h.is_leaf(node)
        below = {x for x in nx.descendants(ref, node) | {node} if ref.out_degree(x) == 0}
        assert set(h.leaves_below(node).tolist()) == {h.index(x) for x in below}
        assert h.ancestors(node) == tuple(path)
    assert t.leaves.tolist() == sorted(h.index(x) for x in h.leaves)
    assert h.leaves == tuple(x for x in h.nodes if ref.out_degree(x) == 0)
    # level_targets: rows of paths, -1 for unlabelled.
    targets = torch.tensor([*range(n), -100, -1])
    lt = h.level_targets(targets)
    assert torch.equal(lt[:n], t.paths)
    assert (lt[n:] == -1).all()


@given(random_forests(), st.data())
def test_distances_match_networkx(rows, data):
    h, ref, root, depth = _reference(rows)
    n = h.num_nodes
    a = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=12)))
    b = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=len(a), max_size=len(a))))
    lca = h.lca_level(a, b)
    dist = h.tree_distance(a, b)
    und = ref.to_undirected()
    for i in range(len(a)):
        u, v = h.nodes[a[i]], h.nodes[b[i]]
        assert lca[i] == depth[nx.lowest_common_ancestor(ref, u, v)]
        assert dist[i] == nx.shortest_path_length(und, u, v)
    # Broadcasting [K, 1] x [1, K] -> [K, K] without a dense precomputed matrix.
    full = h.tree_distance(a[:, None], a[None, :])
    assert full.shape == (len(a), len(a))
    assert torch.equal(full, full.T)
    assert (full.diagonal() == 0).all()


def test_distances_of_unlabelled_are_minus_one(h):
    a = torch.tensor([0, -100, 3])
    b = torch.tensor([-1, 2, 3])
    assert h.lca_level(a, b).tolist() == [-1, -1, 2]
    assert h.tree_distance(a, b).tolist() == [-1, -1, 0]


# ------------------------------------------------------------------- API on a toy tree
def test_toy_structure(h):
    assert h.nodes == ("animal", "plant", "bird", "fish", "tree", "gull", "tern", "oak")
    assert h.num_nodes == len(h) == 8 and h.num_levels == 3
    assert h.root == VIRTUAL_ROOT
    assert h.level_names == ("kingdom", "class", "species")
    assert h.level_slice(2) == h.level_slice("class") == slice(2, 5)
    assert h.level_nodes("species") == ("gull", "tern", "oak")
    assert h.level_sizes() == {"kingdom": 2, "class": 3, "species": 3}
    assert h.leaves == ("fish", "gull", "tern", "oak")  # fish is a leaf at level 2 (ragged)
    assert h.children() == ("animal", "plant")
    assert h.children("bird") == ("gull", "tern")
    assert h.parent("gull") == "bird" and h.parent("animal") == VIRTUAL_ROOT
    assert h.parent(h.root) is None
    assert h.ancestors("gull") == ("animal", "bird", "gull")
    assert h.name("gull") == h.name(5) == "Gull" and h.name("oak") == "oak"
    assert h.names[5] == "Gull"
    assert h.attributes("oak") == {"genus": "Quercus", "n": 3}
    assert h.index("tern") == 6 and h.indices(["oak", "animal"]).tolist() == [7, 0]
    assert h.level("oak") == 3 and h.level(h.root) == 0
    assert "oak" in h and "pine" not in h
    assert h.leaves_below("animal").tolist() == [3, 5, 6]
    assert h.leaves_below(h.root).tolist() == [3, 5, 6, 7]
    assert h.leaves_below(np.int64(3)).tolist() == [3]  # numpy integers are columns too
    assert h.level_targets(torch.tensor([6, 3, -100])).tolist() == [
        [0, 2, 6],
        [0, 3, -1],
        [-1, -1, -1],
    ]
    assert "toy" in repr(h) and "species=3" in repr(h)
    text = h.describe()
    assert "Gull [gull]" in text and "kingdom: animal" in text


def test_immutability(h):
    h.attributes("oak")["genus"] = "changed"
    h.metadata["name"] = "changed"
    d = h.to_dict()
    d["nodes"][-1][3]["genus"] = "changed"
    d["metadata"]["name"] = "changed"
    assert h.attributes("oak")["genus"] == "Quercus" and h.metadata["name"] == "toy"
    with pytest.raises(AttributeError):
        h.nodes = ()


def test_single_parentless_node_is_the_root():
    h = Hierarchy.from_edges([("Aves", "Passeriformes"), ("Passeriformes", "Parulidae")])
    assert h.root == "Aves" and h.nodes == ("Passeriformes", "Parulidae")
    assert h.level("Aves") == 0 and h.num_levels == 2
    with pytest.raises(UnknownLabelError, match="root"):
        h.index("Aves")


def test_from_paths_ragged_and_from_networkx():
    rows = [
        ("animal", "bird", "gull"),
        ("animal", "bird", "tern"),
        ("animal", "fish", ""),
        ("plant", "tree", "oak"),
        ("animal",),  # a repeated prefix is fine
    ]
    h = Hierarchy.from_paths(rows, level_names=["kingdom", "class", "species"])
    ref = Hierarchy.from_edges(EDGES, level_names=["kingdom", "class", "species"])
    assert h.fingerprint() == ref.fingerprint()
    # from_paths: one top node still gets a column (the root is implicit).
    one = Hierarchy.from_paths([("Aves", "A"), ("Aves", "B")])
    assert one.root == VIRTUAL_ROOT and one.nodes == ("Aves", "A", "B")
    g = ref.to_networkx()
    assert g.nodes[VIRTUAL_ROOT]["level"] == 0 and g.nodes["oak"]["level"] == 3
    assert g.graph["level_names"] == ["kingdom", "class", "species"]
    back = Hierarchy.from_networkx(g)
    assert back == ref
    # Non-string ids are converted.
    ints = Hierarchy.from_networkx(nx.DiGraph([(0, 1), (0, 2), (1, 3)]))
    assert ints.nodes == ("1", "2", "3") and ints.root == "0"


def test_to_dict_from_dict_pickle_roundtrip(h):
    d = h.to_dict()
    assert Hierarchy.from_dict(d) == h
    assert pickle.loads(pickle.dumps(h)) == h
    import json

    assert Hierarchy.from_dict(json.loads(json.dumps(d))) == h  # JSON-able
    h2 = pickle.loads(pickle.dumps(h))
    assert torch.equal(h2.tensors().paths, h.tensors().paths)
    assert hash(h2) == hash(h)
    torch.save({"hierarchy": d}, buf := __import__("io").BytesIO())
    buf.seek(0)
    assert Hierarchy.from_dict(torch.load(buf, weights_only=True)["hierarchy"]) == h


def test_fingerprint_ignores_names_but_not_order():
    a = Hierarchy.from_edges([("r", "x"), ("r", "y")], names={"x": "X"})
    b = Hierarchy.from_edges([("r", "x"), ("r", "y")])
    c = Hierarchy.from_edges([("r", "y"), ("r", "x")])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a != b  # equality includes names


def test_tensors_cached_per_device(h):
    assert h.tensors() is h.tensors("cpu") is h.tensors(torch.device("cpu"))
    assert h.tensors("meta") is h.tensors("meta")
    assert h.tensors("meta").paths.device.type == "meta"
    t = h.tensors()
    assert t.is_leaf.sum() == 4
    assert t.parent.tolist() == [-1, -1, 0, 0, 1, 2, 2, 4]
    assert t.levels.tolist() == [1, 1, 2, 2, 2, 3, 3, 3]


def test_restrict(h):
    r = h.restrict(["gull", "fish"])
    assert r.nodes == ("animal", "bird", "fish", "gull")
    assert r.level_names == h.level_names and r.name("gull") == "Gull"
    assert r.metadata["restricted_from"].startswith("toy (")
    # Trailing empty levels are dropped; columns map back and forth.
    r2 = h.restrict(["fish"])
    assert r2.level_names == ("kingdom", "class") and r2.nodes == ("animal", "fish")
    m = h.column_map(r)
    assert m.tolist() == [0, -1, 1, 2, -1, 3, -1, -1]
    targets = torch.tensor([5, 3])
    assert [r.nodes[i] for i in m[targets]] == ["gull", "fish"]
    # descendants=True keeps whole subtrees; columns and ids are accepted.
    r3 = h.restrict([h.index("bird"), "tree"], descendants=True)
    assert r3.nodes == ("animal", "plant", "bird", "tree", "gull", "tern", "oak")
    with pytest.raises(UnknownLabelError, match="'pine'"):
        h.restrict(["pine"])
    with pytest.raises(HierarchyError, match="at least one"):
        h.restrict([])


def test_map_targets_keeps_unlabelled_targets_negative(h):
    r = h.restrict(["gull", "fish"])
    targets = torch.tensor([5, -100, 3, 1, -1])  # gull, unlabelled, fish, plant (gone), unlabelled
    assert h.map_targets(targets, r).tolist() == [3, -100, 2, -1, -1]
    with pytest.raises(HierarchyError, match="integer tensor"):
        h.map_targets(torch.tensor([0.0]), r)
    with pytest.raises(HierarchyError, match="target 99 is not a column"):
        h.map_targets(torch.tensor([99]), r)


# ------------------------------------------------------------------- validation
def test_unknown_label_names_it_and_suggests(h):
    with pytest.raises(
        UnknownLabelError, match=r"'tren' is not a node of toy; did you mean \[.*'tern'.*\]"
    ):
        h.index("tren")
    with pytest.raises(UnknownLabelError, match="display name of"):
        h.index("Gull")
    with pytest.raises(KeyError):  # UnknownLabelError is also a KeyError
        h.name("pine")
    with pytest.raises(IndexError, match="column 99"):
        h.name(99)
    with pytest.raises(UnknownLabelError, match="given for 'pine'"):
        Hierarchy.from_edges(EDGES, names={"pine": "Pine"})


def test_cycle_is_named():
    with pytest.raises(HierarchyError, match=r"cycle 'a' -> 'b' -> 'c' -> 'a'"):
        Hierarchy.from_edges([("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(HierarchyError, match="'a' is its own parent"):
        Hierarchy.from_edges([("a", "a")])


def test_two_parents_are_named():
    with pytest.raises(
        HierarchyError, match=r"edge 1: node 'x' has two parents, 'a' \(edge 0\) and 'b'"
    ):
        Hierarchy.from_edges([("a", "x"), ("b", "x")])
    with pytest.raises(HierarchyError, match=r"row 1: node 'x' has two parents, 'a' \(row 0\)"):
        Hierarchy.from_paths([("a", "x"), ("b", "x")])
    g = nx.DiGraph([("a", "x"), ("b", "x")])
    with pytest.raises(HierarchyError, match=r"node 'x' has 2 parents: \['a', 'b'\]"):
        Hierarchy.from_networkx(g)


def test_duplicate_ids_are_named():
    d = Hierarchy.from_edges(EDGES).to_dict()
    d["nodes"].append(["oak", "bird", "oak", {}])
    with pytest.raises(HierarchyError, match=r"duplicate id 'oak' \(nodes\[8\]\)"):
        Hierarchy.from_dict(d)
    with pytest.raises(HierarchyError, match="duplicate id '1'"):
        Hierarchy.from_networkx(nx.DiGraph([(0, 1), (0, "1")]))


def test_empty_level_and_bad_level_names():
    with pytest.raises(HierarchyError, match="level 3 is empty"):
        Hierarchy.from_edges([("r", "a"), ("a", "b")], level_names=["x", "y", "z"])
    with pytest.raises(HierarchyError, match="level 2 is unnamed"):
        Hierarchy.from_edges([("r", "a"), ("a", "b")], level_names=["x"])
    with pytest.raises(HierarchyError, match="duplicate level names"):
        Hierarchy.from_edges([("r", "a"), ("a", "b")], level_names=["x", "x"])
    with pytest.raises(HierarchyError, match="sequence of names"):
        Hierarchy.from_edges([("r", "a")], level_names="x")
    with pytest.raises(HierarchyError, match="no nodes below its root"):
        Hierarchy(nx.DiGraph([("r", "r2")]).subgraph(["r"]).copy())
    with pytest.raises(HierarchyError, match="unknown level 'genus'"):
        Hierarchy.from_edges(EDGES).level_slice("genus")


def test_bad_inputs():
    with pytest.raises(HierarchyError, match="empty cell inside the path"):
        Hierarchy.from_paths([("a", "", "c")])
    with pytest.raises(HierarchyError, match="expected a sequence of ids"):
        Hierarchy.from_paths(["abc"])
    with pytest.raises(HierarchyError, match=r"edge 0: expected \(parent, child\)"):
        Hierarchy.from_edges([("a", "b", "c")])
    with pytest.raises(HierarchyError, match="networkx.DiGraph"):
        Hierarchy.from_networkx(nx.Graph([("a", "b")]))
    with pytest.raises(HierarchyError, match="lacks the key"):
        Hierarchy.from_dict({"root": "r"})
    with pytest.raises(HierarchyError, match="Expected format"):
        Hierarchy.from_dict({"format": "other/2", "root": "r", "level_names": [], "nodes": []})
    with pytest.raises(HierarchyError, match="integer tensor"):
        Hierarchy.from_edges(EDGES).level_targets(torch.tensor([0.5]))


def test_copies_share_the_immutable_hierarchy():
    import copy

    h = Hierarchy.from_paths([("a", "b"), ("a", "c")], level_names=["l1", "l2"])
    assert copy.copy(h) is h
    assert copy.deepcopy({"h": h})["h"] is h


def test_derived_values_are_built_once_per_name_and_device(h):
    calls = []

    def build():
        calls.append(1)
        return object()

    first = h.derived("x", "cpu", build)
    assert h.derived("x", None, build) is first and len(calls) == 1  # None means cpu
    assert h.derived("y", "cpu", build) is not first and len(calls) == 2
