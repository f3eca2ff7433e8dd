"""Hierarchy files: the .tree format, CSV/TSV tables, node-link JSON, NABirds; errors name the
file and line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hmc
from hmc.hierarchy import VIRTUAL_ROOT, Hierarchy, HierarchyError
from hmc.hierarchy.io import format_tree

TOY_TREE = """\
# hmc-hierarchy 1
@name\ttoy
@description:=\t{"note": "a dict value", "n": 2}
@levels\tkingdom\tclass\tspecies
# id\tparent\tname\tattributes
animal\t\tAnimals\tkind=fauna
plant\t\tPlants

bird\tanimal\tBirds
fish\tanimal\tFish\tcount:=3\tlegs:=null
gull\tbird\tGull\tscientific_name=Larus\tweights:=[1, 2.5]
tree\tplant\tTree
oak\ttree\t\tgenus=Quercus
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def err(path: Path, line: int | None = None) -> str:
    """Regex prefix of an error naming ``path`` (and ``line``)."""
    return re.escape(f"{path}:{line}" if line is not None else str(path))


# ------------------------------------------------------------------- .tree
def test_parse_tree_reads_everything():
    h = Hierarchy.from_tree_text(TOY_TREE, source="toy.tree")
    assert h.nodes == ("animal", "plant", "bird", "fish", "tree", "gull", "oak")
    assert h.root == VIRTUAL_ROOT
    assert h.level_names == ("kingdom", "class", "species")
    assert h.metadata == {"name": "toy", "description": {"note": "a dict value", "n": 2}}
    assert h.name("animal") == "Animals" and h.name("oak") == "oak"  # empty name -> id
    assert h.attributes("fish") == {"count": 3, "legs": None}
    assert h.attributes("gull") == {"scientific_name": "Larus", "weights": [1, 2.5]}
    assert h.attributes("animal") == {"kind": "fauna"}


def test_tree_text_roundtrip_is_exact(tmp_path):
    h = Hierarchy.from_tree_text(TOY_TREE)
    text = format_tree(h)
    assert Hierarchy.from_tree_text(text) == h
    assert format_tree(Hierarchy.from_tree_text(text)) == text  # stable text, diff-friendly
    h.save(tmp_path / "toy.tree")
    assert (tmp_path / "toy.tree").read_text(encoding="utf-8") == text
    assert Hierarchy.from_file(tmp_path / "toy.tree") == h
    # CRLF files read the same.
    crlf = write(tmp_path / "crlf.tree", text.replace("\n", "\r\n"))
    assert Hierarchy.from_file(crlf) == h


def test_tree_roots_roundtrip():
    real_root = Hierarchy.from_edges([("Aves", "A"), ("A", "a1"), ("Aves", "B")])
    single_top = Hierarchy.from_paths([("Aves", "A"), ("Aves", "B")])  # virtual root, 1 child
    named_root = Hierarchy.from_dict(
        {"root": VIRTUAL_ROOT, "root_name": "all", "level_names": ["l1"], "nodes": []}
        | {"nodes": [["a", VIRTUAL_ROOT, "a", {}], ["b", VIRTUAL_ROOT, "b", {}]]}
    )
    for h in (real_root, single_top, named_root):
        back = Hierarchy.from_tree_text(format_tree(h))
        assert back == h and back.root == h.root and back.nodes == h.nodes


names_st = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
    max_size=8,
)
values_st = st.one_of(
    st.text(max_size=6),  # may hold tabs/newlines: written as JSON
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=3),
)


@given(
    parents=st.lists(st.integers(-1, 30), min_size=2, max_size=30),
    names=st.lists(names_st, min_size=30, max_size=30),
    attrs=st.lists(
        st.dictionaries(st.sampled_from(["a", "b_c", "x.y", "ü"]), values_st, max_size=2),
        min_size=30,
        max_size=30,
    ),
    meta=st.dictionaries(st.sampled_from(["name", "source", "k"]), values_st, max_size=3),
)
def test_tree_and_json_roundtrip_random(tmp_path_factory, parents, names, attrs, meta):
    edges = []
    g = nx.DiGraph()
    for i, p in enumerate(parents):
        g.add_node(f"n {i}", name=names[i], **attrs[i])  # ids may hold spaces
        p = p if 0 <= p < i else -1
        if p >= 0:
            edges.append((f"n {p}", f"n {i}"))
    g.add_edges_from(edges)
    try:
        h = Hierarchy.from_networkx(g, metadata=meta)
    except HierarchyError:
        return  # e.g. a single node: nothing below the root
    assert Hierarchy.from_tree_text(format_tree(h)) == h
    folder = tmp_path_factory.mktemp("rt")
    h.save(folder / "h.json")
    assert Hierarchy.from_file(folder / "h.json") == h
    assert Hierarchy.from_dict(json.loads(json.dumps(h.to_dict()))) == h


def test_tree_errors_name_file_and_line(tmp_path):
    head = "# hmc-hierarchy 1\n@levels\ta\tb\n"
    cases = {
        "dup.tree": (
            head + "x\t\tX\ny\tx\tY\nx\t\tX2\n",
            5,
            r"duplicate id 'x' \(first defined on line 3\)",
        ),
        "parent.tree": (head + "x\t\tX\ny\tz\tY\n", 4, r"parent 'z' of 'y' is not defined"),
        "row.tree": (
            head + "x\t\tX\ny\tx\n",
            4,
            r"malformed row, expected 'id<TAB>parent<TAB>name",
        ),
        "attr.tree": (
            head + "x\t\tX\ny\tx\tY\tnovalue\n",
            4,
            r"attribute 'novalue' is not key=value",
        ),
        "json.tree": (head + "x\t\tX\ny\tx\tY\tn:={bad\n", 4, r"bad JSON value"),
        "reserved.tree": (
            head + "x\t\tX\ny\tx\tY\tname=Z\n",
            4,
            r"node 'y': attribute key 'name' is reserved",
        ),
        "twice.tree": (
            head + "x\t\tX\ny\tx\tY\tk=1\tk=2\n",
            4,
            r"node 'y': attribute 'k' given twice",
        ),
        # r is the root; a <-> b form a cycle off to the side (each has one parent).
        "cycle.tree": (head + "r\t\tR\nx\tr\tX\na\tb\tA\nb\ta\tB\n", 5, r"cycle 'a' -> 'b' -> 'a'"),
        "meta.tree": ("# hmc-hierarchy 1\n@\tvalue\n", 2, r"metadata line without a key"),
        "levels.tree": ("# hmc-hierarchy 1\n@levels\ta\t\tb\n", 2, r"empty level name"),
    }
    for fname, (text, line, msg) in cases.items():
        path = write(tmp_path / fname, text)
        with pytest.raises(HierarchyError, match=err(path, line) + ": " + msg):
            Hierarchy.from_file(path)
    empty_level = write(
        tmp_path / "empty.tree", "# hmc-hierarchy 1\n@levels\ta\tb\tc\nx\t\tX\nw\t\tW\ny\tx\tY\n"
    )
    with pytest.raises(HierarchyError, match=err(empty_level) + r": .*level 3 is empty"):
        Hierarchy.from_file(empty_level)
    nothing = write(tmp_path / "nothing.tree", "# hmc-hierarchy 1\n@name\tx\n")
    with pytest.raises(HierarchyError, match=err(nothing) + ": no nodes"):
        Hierarchy.from_file(nothing)


def test_tree_write_errors(tmp_path):
    def one(node="a", name="A", attrs=None, meta=None):
        g = nx.DiGraph()
        g.add_node(node, name=name, **(attrs or {}))
        g.add_edge("r", node)
        return Hierarchy.from_networkx(g, metadata=meta)

    with pytest.raises(HierarchyError, match=r"node '#a': in the .tree format an id"):
        one(node="#a").save(tmp_path / "x.tree")
    with pytest.raises(HierarchyError, match=r"node ' a'"):
        one(node=" a").save(tmp_path / "x.tree")
    with pytest.raises(HierarchyError, match=r"display name 'A\\tB' has a tab"):
        one(name="A\tB").save(tmp_path / "x.tree")
    with pytest.raises(HierarchyError, match=r"node 'a': attribute key 'k=v'"):
        one(attrs={"k=v": 1}).save(tmp_path / "x.tree")
    with pytest.raises(HierarchyError, match=r"metadata key 'levels' is reserved"):
        one(meta={"levels": "x"}).save(tmp_path / "x.tree")
    with pytest.raises(HierarchyError, match=r"cannot write format 'csv'"):
        one().save(tmp_path / "x.csv", format="csv")


# ------------------------------------------------------------------- tables and JSON
def test_edges_csv_and_tsv(tmp_path):
    csv_path = write(
        tmp_path / "edges.csv",
        'parent,child,name\nAves,Laridae,Gulls\nLaridae,Larus,"Larus, gulls"\nAves,Alcidae,Auks\n',
    )
    h = Hierarchy.from_file(csv_path)
    assert h.root == "Aves" and h.nodes == ("Laridae", "Alcidae", "Larus")
    assert h.name("Larus") == "Larus, gulls" and h.metadata["source"] == "edges.csv"
    tsv = write(tmp_path / "edges.tsv", "parent\tchild\nAves\tLaridae\nLaridae\tLarus\n")
    assert Hierarchy.from_file(tsv).nodes == ("Laridae", "Larus")


def test_edges_errors(tmp_path):
    two = write(tmp_path / "two.csv", "parent,child\na,x\nb,y\n\nc,x\n")
    with pytest.raises(
        HierarchyError, match=err(two, 5) + r": node 'x' has two parents, 'a' \(line 2\) and 'c'"
    ):
        Hierarchy.from_file(two)
    bad = write(tmp_path / "bad.csv", "parent,child\na,x,extra\n")
    with pytest.raises(HierarchyError, match=err(bad, 2) + ": malformed row, expected 2 fields"):
        Hierarchy.from_file(bad)
    empty = write(tmp_path / "empty.csv", "parent,child\na,\n")
    with pytest.raises(HierarchyError, match=err(empty, 2) + ": empty parent or child"):
        Hierarchy.from_file(empty)
    cyc = write(tmp_path / "cyc.csv", "parent,child\nr,x\na,b\nb,a\n")
    with pytest.raises(HierarchyError, match=err(cyc) + ": cycle 'a' -> 'b' -> 'a'"):
        Hierarchy.from_file(cyc)
    header = write(tmp_path / "header.csv", "child,parent\nx,y\n")
    with pytest.raises(HierarchyError, match=err(header, 1) + ": expected a header 'parent,child"):
        Hierarchy.from_file(header, format="edges")


def test_paths_table_ragged(tmp_path):
    path = write(
        tmp_path / "paths.csv",
        "order,family,genus\nCharadriiformes,Laridae,Larus\nCharadriiformes,Alcidae,\n"
        "Suliformes,Fregatidae,Fregata\n",
    )
    h = Hierarchy.from_file(path)
    assert h.level_names == ("order", "family", "genus")
    assert h.level_sizes() == {"order": 2, "family": 3, "genus": 2}
    assert h.is_leaf("Alcidae") and h.level("Alcidae") == 2  # ragged: ends at level 2
    assert h.metadata["source"] == "paths.csv"


def test_paths_errors(tmp_path):
    wide = write(tmp_path / "wide.csv", "a,b\nx,y,z\n")
    with pytest.raises(
        HierarchyError, match=err(wide, 2) + ": malformed row, 3 fields but 2 levels"
    ):
        Hierarchy.from_file(wide)
    two = write(tmp_path / "two.tsv", "a\tb\nx\tz\ny\tz\n")
    with pytest.raises(
        HierarchyError, match=err(two, 3) + r": node 'z' has two parents, 'x' \(line 2\)"
    ):
        Hierarchy.from_file(two)
    hole = write(tmp_path / "hole.csv", "a,b,c\nx,,z\n")
    with pytest.raises(HierarchyError, match=err(hole, 2) + ": empty cell inside the path"):
        Hierarchy.from_file(hole)
    shallow = write(tmp_path / "shallow.csv", "a,b,c\nx,y\n")
    assert Hierarchy.from_file(shallow).level_names == ("a", "b")  # unused trailing columns


def test_json_link_to_an_undeclared_node_is_an_error(tmp_path):
    data = {"directed": True, "nodes": [{"id": "r"}, {"id": "a"}]}
    data["links"] = [{"source": "r", "target": "a"}, {"source": "a", "target": "ghost"}]
    path = write(tmp_path / "ghost.json", json.dumps(data))
    with pytest.raises(HierarchyError, match=r"links\[1\] target 'ghost' is not a declared node"):
        Hierarchy.from_file(path)


def test_json_node_link(tmp_path):
    h = Hierarchy.from_tree_text(TOY_TREE)
    h.save(tmp_path / "toy.json")
    data = json.loads((tmp_path / "toy.json").read_text(encoding="utf-8"))
    assert "links" in data and data["graph"]["level_names"] == list(h.level_names)
    assert Hierarchy.from_file(tmp_path / "toy.json") == h
    # "edges" as the key (networkx >= 3.4 default) and int ids work too.
    g = nx.DiGraph([(0, 1), (0, 2), (2, 3)])
    (tmp_path / "edges.json").write_text(json.dumps(nx.node_link_data(g, edges="edges")))
    h2 = Hierarchy.from_file(tmp_path / "edges.json")
    assert h2.root == "0" and h2.nodes == ("1", "2", "3")
    bad = write(tmp_path / "bad.json", '{"nodes": [\n  {"id": 1},\n  oops]}')
    with pytest.raises(HierarchyError, match=err(bad, 3) + ": invalid JSON"):
        Hierarchy.from_file(bad)
    other = write(tmp_path / "other.json", '{"a": 1}')
    with pytest.raises(HierarchyError, match=err(other) + ": not networkx node-link JSON"):
        Hierarchy.from_file(other)
    cyc = {"directed": True, "nodes": [{"id": "r"}, {"id": "x"}, {"id": "a"}, {"id": "b"}]}
    cyc["links"] = [
        {"source": "r", "target": "x"},
        {"source": "a", "target": "b"},
        {"source": "b", "target": "a"},
    ]
    cyc_path = write(tmp_path / "cyc.json", json.dumps(cyc))
    with pytest.raises(HierarchyError, match=err(cyc_path) + ": graph: cycle"):
        Hierarchy.from_file(cyc_path)


# ------------------------------------------------------------------- NABirds
# An excerpt of NABirds' own files (classes.txt "<id> <name>", hierarchy.txt "<child> <parent>"),
# with the real ids: leaves at depth 2 (none here), 3 and 4.
NABIRDS_CLASSES = """\
0 Birds
1 Ducks, Geese, and Swans
2 Grouse, Quail, and Allies
22 Perching Birds
24 Black-bellied Whistling-Duck
25 Tyrant Flycatchers
33 Snow Goose
43 Scaled Quail
256 Western Wood-Pewee
270 Eastern Wood-Pewee
313 Snow Goose (White morph)
466 Scaled Quail
610 Black-bellied Whistling-Duck
611 Snow Goose (Blue morph)
923 Western Wood-Pewee
924 Eastern Wood-Pewee
"""
NABIRDS_HIERARCHY = """\
1 0
2 0
22 0
24 1
25 22
33 1
43 2
256 25
270 25
313 33
466 43
610 24
611 33
923 256
924 270
"""


@pytest.fixture
def nabirds(tmp_path) -> Path:
    folder = tmp_path / "nabirds"
    folder.mkdir()
    write(folder / "classes.txt", NABIRDS_CLASSES)
    write(folder / "hierarchy.txt", NABIRDS_HIERARCHY)
    return folder


def test_nabirds_folder(nabirds):
    h = Hierarchy.from_file(nabirds)
    assert h.root == "0" and h.name(h.root) == "Birds"
    assert h.level_sizes() == {"level_1": 3, "level_2": 4, "level_3": 6, "level_4": 2}
    assert sorted(h.level(x) for x in h.leaves) == [3, 3, 3, 3, 4, 4]  # ragged
    assert h.name("313") == "Snow Goose (White morph)"
    assert h.ancestors("923") == ("22", "25", "256", "923")
    assert h.name("1") == "Ducks, Geese, and Swans"
    assert h.metadata["name"] == "nabirds"
    # Either file of the pair, or load_hierarchy, finds the same tree.
    assert Hierarchy.from_file(nabirds / "hierarchy.txt") == h
    assert hmc.load_hierarchy(nabirds) == h
    assert hmc.load_hierarchy(str(nabirds / "classes.txt")) == h


def test_nabirds_errors(nabirds):
    classes, hier = nabirds / "classes.txt", nabirds / "hierarchy.txt"
    write(hier, NABIRDS_HIERARCHY + "999 0\n")
    with pytest.raises(HierarchyError, match=err(hier, 16) + ": class '999' is not in classes.txt"):
        Hierarchy.from_file(nabirds)
    write(hier, NABIRDS_HIERARCHY + "313 1\n")
    with pytest.raises(
        HierarchyError,
        match=err(hier, 16) + r": node '313' has two parents, '\d+' \(line 10\) and '1'",
    ):
        Hierarchy.from_file(nabirds)
    write(hier, NABIRDS_HIERARCHY + "610 24 1\n")
    with pytest.raises(HierarchyError, match=err(hier, 16) + ": malformed row"):
        Hierarchy.from_file(nabirds)
    write(hier, NABIRDS_HIERARCHY)
    write(classes, NABIRDS_CLASSES + "24 Duplicate\n")
    with pytest.raises(HierarchyError, match=err(classes, 17) + ": duplicate id '24'"):
        Hierarchy.from_file(nabirds)
    write(classes, NABIRDS_CLASSES + "x Not a number\n")
    with pytest.raises(HierarchyError, match=err(classes, 17) + ": malformed row"):
        Hierarchy.from_file(nabirds)
    (classes).unlink()
    with pytest.raises(HierarchyError, match="NABirds: classes.txt not found"):
        Hierarchy.from_file(hier)


# ------------------------------------------------------------------- format detection
def test_unknown_format_is_named(tmp_path):
    yaml = write(tmp_path / "tree.yaml", "a: b\n")
    with pytest.raises(HierarchyError, match=err(yaml) + r": unknown hierarchy format '.yaml'"):
        Hierarchy.from_file(yaml)
    bare = write(tmp_path / "classes_flat.txt", "1 Phoebastria nigripes\n2 Phoebetria fusca\n")
    with pytest.raises(HierarchyError, match=err(bare, 1) + ": unknown hierarchy format"):
        Hierarchy.from_file(bare)
    ok = write(tmp_path / "t.txt", format_tree(Hierarchy.from_tree_text(TOY_TREE)))
    assert Hierarchy.from_file(ok) == Hierarchy.from_tree_text(
        TOY_TREE
    )  # magic line wins over the suffix
    with pytest.raises(HierarchyError, match=err(ok) + r": unknown format 'xml'; expected one of"):
        Hierarchy.from_file(ok, format="xml")
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    with pytest.raises(HierarchyError, match=err(folder) + ": a folder is read only as NABirds"):
        Hierarchy.from_file(folder)
    with pytest.raises(FileNotFoundError, match="missing.tree"):
        Hierarchy.from_file(tmp_path / "missing.tree")


def test_load_hierarchy(tmp_path, monkeypatch):
    h = Hierarchy.from_tree_text(TOY_TREE)
    assert hmc.load_hierarchy(h) is h
    h.save(tmp_path / "toy.tree")
    assert hmc.load_hierarchy(tmp_path / "toy.tree") == h
    assert hmc.load_hierarchy(str(tmp_path / "toy.tree")) == h
    with pytest.raises(HierarchyError, match=r"got 'cub2000'; did you mean \['cub200'"):
        hmc.load_hierarchy("cub2000")
    with pytest.raises(HierarchyError, match="Expected argument `name_or_path`"):
        hmc.load_hierarchy(3)
    # A data folder named like a shipped hierarchy does not shadow it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cub200").mkdir()
    assert hmc.load_hierarchy("cub200").metadata["name"] == "cub200"
    assert "cub200" in hmc.list_hierarchies()
