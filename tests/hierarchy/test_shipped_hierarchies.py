"""Every shipped hierarchy loads, has the documented shape and ids, and ships in a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

import hmc
from hmc.hierarchy import Hierarchy
from hmc.hierarchy.io import format_tree

REPO = Path(__file__).resolve().parents[2]

EXPECTED = {
    "cub200": {"order": 13, "family": 37, "species": 200},
    "cub200-hrn": {"order": 13, "family": 38, "species": 200},
    "cub200-4level": {"order": 13, "family": 37, "genus": 121, "species": 200},
    "aircraft": {"manufacturer": 30, "family": 70, "variant": 100},
    "cars": {"type": 9, "model": 196},
    "cifar100": {"superclass": 20, "class": 100},
    "fashion-mnist": {"domain": 3, "type": 6, "class": 10},
}


def test_list_hierarchies():
    assert hmc.list_hierarchies() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_shape_and_provenance(name):
    h = hmc.load_hierarchy(name)
    assert h.level_sizes() == EXPECTED[name]
    # Every leaf sits at the deepest level (none of the shipped trees is ragged).
    assert all(h.level(leaf) == h.num_levels for leaf in h.leaves)
    assert len(h.leaves) == list(EXPECTED[name].values())[-1]
    meta = h.metadata
    assert meta["name"] == name
    for key in ("description", "source", "licence", "citation"):
        assert meta.get(key), f"{name}.tree lacks @{key}"
    # The file is exactly what format_tree writes (round trip is exact and stable).
    text = (REPO / "hierarchies" / f"{name}.tree").read_text(encoding="utf-8")
    assert format_tree(Hierarchy.from_tree_text(text)) == text
    # Leaves that carry a class_index cover 0..L-1 once (the datasets' label order).
    idx = [h.attributes(leaf).get("class_index") for leaf in h.leaves]
    if idx[0] is not None:
        assert sorted(idx) == list(range(len(h.leaves)))


def _cub_folders() -> list[str]:
    h = hmc.load_hierarchy("cub200")
    return sorted(h.leaves, key=lambda leaf: h.attributes(leaf)["cub_class_id"])


@pytest.mark.parametrize("name", ["cub200", "cub200-hrn", "cub200-4level"])
def test_cub_species(name):
    h = hmc.load_hierarchy(name)
    folders = _cub_folders()
    assert len(folders) == 200 and folders[0] == "001.Black_footed_Albatross"
    assert folders[-1] == "200.Common_Yellowthroat"
    assert set(h.leaves) == set(folders)
    for k, folder in enumerate(folders, 1):
        assert folder.startswith(f"{k:03d}.")
        assert h.attributes(folder)["cub_class_id"] == k
    assert h.name("001.Black_footed_Albatross") == "Black-footed Albatross"
    assert h.name("022.Chuck_will_Widow") == "Chuck-will's-widow"
    assert h.name("141.Artic_Tern") == "Arctic Tern"
    assert h.attributes("001.Black_footed_Albatross")["scientific_name"] == "Phoebastria nigripes"
    errata = {int(f[:3]) for f in h.leaves if "erratum" in h.attributes(f)}
    assert errata == {44, 91, 92, 103, 110, 130}
    genus_level = {int(f[:3]) for f in h.leaves if h.attributes(f).get("resolves_to") == "genus"}
    assert genus_level == {44, 92, 103, 110}
    assert "Spizelloides" in h.attributes("130.Tree_Sparrow")["erratum"]


def test_cub_taxonomy_agrees_across_files():
    flat = hmc.load_hierarchy("cub200")
    four = hmc.load_hierarchy("cub200-4level")
    hrn = hmc.load_hierarchy("cub200-hrn")
    assert flat.level_nodes("order")[0] == "Procellariiformes"
    for sp in flat.leaves:
        order, family, _ = flat.ancestors(sp)
        assert four.ancestors(sp)[:2] == (order, family)
        genus = four.ancestors(sp)[2]
        sci = flat.attributes(sp)["scientific_name"]
        assert sci == genus or sci.split()[0] == genus  # genus-level classes: the genus
        if sp != "084.Red_legged_Kittiwake":
            hrn_order, hrn_family, _ = hrn.ancestors(sp)
            # Paper taxa that match a real taxon are keyed by its scientific name.
            assert hrn_order == order or hrn_order.startswith("hrn-order-")
            assert hrn_family == family or hrn_family.startswith("hrn-family-")
    assert four.parent("044.Frigatebird") == "Fregata"
    assert four.parent("090.Red_breasted_Merganser") == "Mergus"
    assert flat.parent("110.Geococcyx") == "Cuculidae"
    # The HRN paper's one deviation: the kittiwake is a family of its own (the 38th).
    assert hrn.ancestors("084.Red_legged_Kittiwake") == (
        "hrn-order-5",
        "hrn-family-8",
        "084.Red_legged_Kittiwake",
    )
    assert set(hrn.children("hrn-order-5")) == {"Alcedinidae", "hrn-family-8"}
    assert hrn.attributes("hrn-order-5")["nearest_taxon"] == "Coraciiformes"
    assert [hrn.attributes(o)["hrn_order_id"] for o in hrn.level_nodes("order")] == list(
        range(1, 14)
    )
    assert [hrn.attributes(f)["hrn_family_id"] for f in hrn.level_nodes("family")] == list(
        range(1, 39)
    )


def test_aircraft():
    h = hmc.load_hierarchy("aircraft")
    assert h.ancestors("variant:A321") == ("manufacturer:Airbus", "family:A320", "variant:A321")
    assert h.name("variant:F/A-18") == "F/A-18"
    assert h.parent("variant:F/A-18") == "family:F/A-18"
    assert h.parent("family:F/A-18") == "manufacturer:McDonnell Douglas"
    assert h.parent("variant:Model B200") == "family:King Air"
    assert h.parent("family:Dash 8") == "manufacturer:de Havilland"
    assert h.parent("family:C-130") == "manufacturer:Lockheed Corporation"
    for prefix, level in (("manufacturer:", 1), ("family:", 2), ("variant:", 3)):
        nodes = h.level_nodes(level)
        assert all(n.startswith(prefix) and h.name(n) == n[len(prefix) :] for n in nodes)
        # class_index = position in FGVC-Aircraft's sorted list (torchvision's class index).
        names = sorted(h.name(n) for n in nodes)
        assert all(h.attributes(n)["class_index"] == names.index(h.name(n)) for n in nodes)
    assert h.attributes("variant:707-320")["class_index"] == 0


def test_cars():
    h = hmc.load_hierarchy("cars")
    assert h.level_nodes("type") == (
        "Cab", "Convertible", "Coupe", "Hatchback", "Minivan", "Sedan", "SUV", "Van", "Wagon"
    )  # fmt: skip
    by_index = sorted(h.leaves, key=lambda m: h.attributes(m)["class_index"])
    assert by_index[0] == "AM General Hummer SUV 2000"
    assert by_index[-1] == "smart fortwo Convertible 2012"
    assert by_index[173] == "Ram C/V Cargo Van Minivan 2012"
    assert h.attributes("Ram C/V Cargo Van Minivan 2012")["dir"] == "Ram_CV_Cargo_Van_Minivan_2012"
    assert h.parent("AM General Hummer SUV 2000") == "SUV"
    for m in h.leaves:
        if m != by_index[173]:
            assert h.attributes(m)["dir"] == m.replace(" ", "_")
    assert Counter(h.parent(m) for m in h.leaves)["Sedan"] == 50


def test_cifar100():
    h = hmc.load_hierarchy("cifar100")
    assert h.children("aquatic_mammals") == ("beaver", "dolphin", "otter", "seal", "whale")
    assert all(len(h.children(s)) == 5 for s in h.level_nodes("superclass"))
    assert len(set(h.leaves)) == 100
    # torchvision CIFAR100.classes = the fine label names in alphabetical order.
    by_index = sorted(h.leaves, key=lambda c: h.attributes(c)["class_index"])
    assert by_index == sorted(h.leaves)
    assert by_index[:3] == ["apple", "aquarium_fish", "baby"]
    assert h.parent("maple_tree") == "trees" and h.parent("lawn_mower") == "vehicles_2"


def test_fashion_mnist_matches_torchvision():
    from torchvision.datasets import FashionMNIST

    h = hmc.load_hierarchy("fashion-mnist")
    by_index = sorted(h.leaves, key=lambda c: h.attributes(c)["class_index"])
    assert by_index == FashionMNIST.classes
    assert h.ancestors("Ankle boot") == ("footwear", "closed-shoes", "Ankle boot")
    assert h.level_targets(torch.tensor([h.index("Bag")])).tolist() == [
        [h.index("accessories"), h.index("bags"), h.index("Bag")]
    ]


def test_restrict_cub_to_a_subset_of_species():
    h = hmc.load_hierarchy("cub200")
    species = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "017.Cardinal"]
    r = h.restrict(species)
    assert r.level_sizes() == {"order": 2, "family": 2, "species": 3}
    assert r.leaves == tuple(species)
    targets = h.indices(species)
    assert [r.nodes[c] for c in h.column_map(r)[targets]] == species


@pytest.mark.slow
def test_shipped_files_load_after_a_plain_install(tmp_path):
    """A non-editable install (a wheel's layout) carries hierarchies/*.tree as hmc.hierarchies."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("hmc", "hierarchies"):
        shutil.copytree(REPO / item, src / item, ignore=ignore)
    for item in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / item).is_file():
            shutil.copy(REPO / item, src / item)
    # A copy, so the build never writes build/ or *.egg-info into the shared checkout.
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    cmd += [
        "--no-compile",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(site),
        str(src),
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path, timeout=300)
    assert not (site / "hmc" / "hierarchies" / "_derive").exists()
    code = textwrap.dedent(
        f"""
        import hmc
        assert hmc.__file__.startswith({str(site)!r}), hmc.__file__
        names = hmc.list_hierarchies()
        assert names == {sorted(EXPECTED)!r}, names
        h = hmc.load_hierarchy("cub200")
        print(h.level_sizes())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'order': 13, 'family': 37, 'species': 200}"
