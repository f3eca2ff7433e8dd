"""Write the shipped ``hierarchies/*.tree`` files from the team's shared reference data.

Not part of the package (never imported, never installed). Run from the repository root:

    .venv/bin/python tools/derive_hierarchies.py --shared ../shared
    .venv/bin/python tools/derive_hierarchies.py --shared ../shared --check

``--check`` regenerates in memory and fails if a shipped file differs. Every fact that is not
read from ``--shared`` (English bird names' punctuation, FGVC-Aircraft family/manufacturer
names, the CIFAR-100 superclass table, the Fashion-MNIST design) is a table in this file, and
the script asserts the counts and groupings it relies on, so a changed input fails loudly.
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from hmc.hierarchy import Hierarchy
from hmc.hierarchy.io import format_tree

GENERATED_BY = "tools/derive_hierarchies.py"
SEMEMB = "cvjena/semantic-embeddings@0d4177422bafbba685fb6a0f976675864f31e09f"
HRN = "MonsterZhZh/HRN (Apache-2.0)"
HRN_CITE = (
    "Chen, Wang, Liu, Qian, Label Relation Graphs Enhanced Hierarchical Residual Network for "
    "Hierarchical Multi-Granularity Classification, CVPR 2022 (arXiv:2201.03194)"
)


# ---------------------------------------------------------------------------- helpers
def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def build(
    top: list[str],
    edges: list[tuple[str, str]],
    names: Mapping[str, str],
    attributes: Mapping[str, Mapping[str, Any]],
    level_names: list[str],
    metadata: dict[str, Any],
) -> Hierarchy:
    """A hierarchy whose level-1 nodes come in the order ``top`` and whose siblings come in
    edge order (several parentless nodes get the virtual root)."""
    g = nx.DiGraph()
    g.add_nodes_from(top)
    g.add_edges_from(edges)
    assert [n for n in g if g.in_degree(n) == 0] == list(top), "top must list every root"
    for node, name in names.items():
        g.nodes[node]["name"] = name
    for node, attrs in attributes.items():
        g.nodes[node].update(attrs)
    meta = dict(metadata)
    meta["generated_by"] = GENERATED_BY
    return Hierarchy.from_networkx(g, level_names=level_names, metadata=meta)


def group(rows: list[dict[str, str]], key: str, value: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = collections.defaultdict(set)
    for r in rows:
        out[r[key]].add(r[value])
    return dict(out)


# ---------------------------------------------------------------------------- CUB
# CUB folder names drop hyphens and apostrophes. The generic rule turns "Black_footed" into
# "Black-footed" (a lower-case token joins the previous one); these need more.
CUB_POSSESSIVE = {9, 23, 61, 67, 93, 98, 113, 115, 122, 123, 125, 178, 180, 193}
CUB_NAME_OVERRIDES = {
    22: "Chuck-will's-widow",
    34: "Gray-crowned Rosy-Finch",
    102: "Western Wood-Pewee",
    105: "Whip-poor-will",
    124: "LeConte's Sparrow",
    126: "Nelson's Sharp-tailed Sparrow",
    141: "Arctic Tern",  # CUB folder misspells it "Artic_Tern"
    146: "Forster's Tern",
}
# From README.md "Known Issues" of cvjena/semantic-embeddings CUB-Hierarchy.
CUB_ERRATA = {
    44: (
        "genus",
        "CUB class Frigatebird resolves to the genus Fregata, which encompasses 5 species of "
        "quite different appearance",
    ),
    91: (
        None,
        "Mockingbird is an informal group of species from 3 genera of Mimidae; the images "
        "mainly show Mimus polyglottos, the only mockingbird commonly found in North America, "
        "so the class is mapped to that species",
    ),
    92: (
        "genus",
        "CUB class Nighthawk resolves to the genus Chordeiles, which comprises 6 species",
    ),
    103: ("genus", "CUB class Sayornis is at the genus level, comprising 3 species"),
    110: (
        "genus",
        "CUB class Geococcyx is at the genus level; there are only 2 possible species with "
        "minor visual differences",
    ),
    130: (
        None,
        "Tree Sparrow mixes two species from different families: 34 images of Spizelloides "
        "arborea (American Tree Sparrow, Passerellidae) and 26 of Passer montanus (Eurasian "
        "Tree Sparrow, Passeridae); the class is mapped to Spizelloides arborea",
    ),
}
CUB_COMMON = {
    "Procellariiformes": "albatrosses and petrels",
    "Cuculiformes": "cuckoos",
    "Charadriiformes": "shorebirds, gulls and auks",
    "Suliformes": "cormorants, frigatebirds and allies",
    "Piciformes": "woodpeckers and allies",
    "Anseriformes": "waterfowl",
    "Podicipediformes": "grebes",
    "Trochiliformes": "hummingbirds",
    "Coraciiformes": "kingfishers and allies",
    "Gaviiformes": "loons",
    "Pelecaniformes": "pelicans and allies",
    "Passeriformes": "perching birds",
    "Caprimulgiformes": "nightjars and allies",
    "Procellariidae": "petrels and shearwaters",
    "Diomedeidae": "albatrosses",
    "Cuculidae": "cuckoos",
    "Alcidae": "auks",
    "Laridae": "gulls and terns",
    "Stercorariidae": "skuas and jaegers",
    "Phalacrocoracidae": "cormorants",
    "Fregatidae": "frigatebirds",
    "Picidae": "woodpeckers",
    "Anatidae": "ducks, geese and swans",
    "Podicipedidae": "grebes",
    "Trochilidae": "hummingbirds",
    "Alcedinidae": "kingfishers",
    "Gaviidae": "loons",
    "Pelecanidae": "pelicans",
    "Icteridae": "New World blackbirds",
    "Icteriidae": "yellow-breasted chat",
    "Cardinalidae": "cardinals and allies",
    "Passerellidae": "New World sparrows",
    "Passeridae": "Old World sparrows",
    "Fringillidae": "finches",
    "Alaudidae": "larks",
    "Sittidae": "nuthatches",
    "Parulidae": "New World warblers",
    "Motacillidae": "wagtails and pipits",
    "Ptilonorhynchidae": "bowerbirds",
    "Mimidae": "mockingbirds and thrashers",
    "Sturnidae": "starlings",
    "Bombycillidae": "waxwings",
    "Certhiidae": "treecreepers",
    "Troglodytidae": "wrens",
    "Corvidae": "crows and jays",
    "Laniidae": "shrikes",
    "Vireonidae": "vireos",
    "Hirundinidae": "swallows",
    "Tyrannidae": "tyrant flycatchers",
    "Caprimulgidae": "nightjars",
}
CUB_LICENCE = (
    f"taxonomy MIT (c) 2020 Bjorn Barz ({SEMEMB}); class folder names from CUB-200-2011 "
    "(Wah et al. 2011, Caltech; images are for non-commercial research)"
)
CUB_CITATION = (
    "Barz & Denzler, Deep Learning on Small Datasets without Pre-Training using Cosine Loss, "
    "WACV 2020 (arXiv:1901.09054); Wah et al., The Caltech-UCSD Birds-200-2011 Dataset, "
    "CNS-TR-2011-001"
)


def cub_english(class_id: int, folder: str) -> str:
    if class_id in CUB_NAME_OVERRIDES:
        return CUB_NAME_OVERRIDES[class_id]
    words: list[str] = []
    for token in folder.split(".", 1)[1].split("_"):
        if words and token[:1].islower():
            words[-1] += "-" + token
        else:
            words.append(token)
    if class_id in CUB_POSSESSIVE:
        words[0] += "'s"
    return " ".join(words)


class Cub:
    """CUB-200-2011 facts read from ``reference/cub``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders = {}
        for line in (root / "cub_classes.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                k, folder = line.split()
                self.folders[int(k)] = folder
        assert sorted(self.folders) == list(range(1, 201)), "cub_classes.txt: expected 1..200"
        names = {}
        for line in (root / "classes_flat.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                k, name = line.strip().split(" ", 1)
                names[int(k)] = name
        parent = {}
        for line in (root / "cub_flat.parent-child.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                p, c = map(int, line.split())
                assert c not in parent, f"cub_flat.parent-child.txt: {c} has two parents"
                parent[c] = p
        self.sci = {k: names[k] for k in range(1, 201)}
        chains = {}
        for k in range(1, 201):
            chain, n = [], k
            while n in parent:
                n = parent[n]
                chain.append(names[n])
            chains[k] = chain[::-1]  # Aves, order, family[, genus]
        # Genus-level classes (44, 92, 103, 110) sit at depth 3: Aves > order > family > class.
        self.genus_level = sorted(k for k, c in chains.items() if len(c) == 3)
        assert self.genus_level == [44, 92, 103, 110], self.genus_level
        self.order = {k: c[1] for k, c in chains.items()}
        self.family = {k: c[2] for k, c in chains.items()}
        self.flat_genus = {k: (c[3] if len(c) == 4 else self.sci[k]) for k, c in chains.items()}
        # Display order of orders/families/genera: first appearance in hierarchy_flat.txt.
        self.text_order = []
        for line in (root / "hierarchy_flat.txt").read_text(encoding="utf-8").splitlines():
            if line.startswith("--"):
                self.text_order.append(line.split(" ", 1)[1].strip())
        self.rank = {n: i for i, n in reversed(list(enumerate(self.text_order)))}
        assert len(set(self.order.values())) == 13 and len(set(self.family.values())) == 37

    def species_attrs(self, k: int) -> dict[str, Any]:
        attrs: dict[str, Any] = {"scientific_name": self.sci[k], "cub_class_id": k}
        if k in CUB_ERRATA:
            resolves_to, note = CUB_ERRATA[k]
            attrs["erratum"] = note
            if resolves_to:
                attrs["resolves_to"] = resolves_to
        return attrs

    def taxon_attrs(self, name: str) -> dict[str, Any]:
        return {"scientific_name": name, "common_name": CUB_COMMON[name]}

    def sorted_taxa(self, values) -> list[str]:
        return sorted(set(values), key=lambda n: self.rank[n])


def derive_cub200(cub: Cub) -> Hierarchy:
    edges, names, attrs = [], {}, {}
    for o in cub.sorted_taxa(cub.order.values()):
        attrs[o] = cub.taxon_attrs(o)
    for f in cub.sorted_taxa(cub.family.values()):
        o = cub.order[next(k for k in cub.family if cub.family[k] == f)]
        edges.append((o, f))
        attrs[f] = cub.taxon_attrs(f)
    for k in range(1, 201):
        sp = cub.folders[k]
        edges.append((cub.family[k], sp))
        names[sp] = cub_english(k, sp)
        attrs[sp] = cub.species_attrs(k)
    return build(
        cub.sorted_taxa(cub.order.values()),
        edges,
        names,
        attrs,
        ["order", "family", "species"],
        {
            "name": "cub200",
            "description": (
                "CUB-200-2011 birds: 13 orders > 37 families > 200 classes, from the flat "
                "Wikispecies-based taxonomy of Barz & Denzler (genus level dropped). Class ids "
                "are CUB folder names, display names the English names (hyphens and apostrophes "
                "restored, 'Artic' corrected to 'Arctic'); orders and families are keyed by "
                "scientific name. Classes 44, 91, 92, 103, 110 and 130 carry an 'erratum' "
                "attribute (Barz & Denzler's known issues); 44, 92, 103 and 110 are genus-level "
                "classes (resolves_to=genus) placed directly under their family."
            ),
            "source": (
                f"{SEMEMB} CUB-Hierarchy/hierarchy_flat.txt, classes_flat.txt, "
                "cub_flat.parent-child.txt, README.md (errata); CUB-200-2011 classes.txt"
            ),
            "licence": CUB_LICENCE,
            "citation": CUB_CITATION,
        },
    )


def derive_cub200_4level(cub: Cub) -> Hierarchy:
    edges, names, attrs = [], {}, {}
    genus = dict(cub.flat_genus)
    genus_notes = {}
    for k, g in genus.items():
        binomial_genus = cub.sci[k].split()[0]
        if " " in cub.sci[k] and g != binomial_genus:
            # hierarchy_flat.txt keeps the subfamily Merginae where Wikispecies has no genus.
            assert (k, g, binomial_genus) == (90, "Merginae", "Mergus"), (k, g)
            genus[k] = binomial_genus
            genus_notes[binomial_genus] = (
                "hierarchy_flat.txt lists the subfamily Merginae at the genus level for Mergus "
                "serrator; replaced by its genus Mergus"
            )
    for o in cub.sorted_taxa(cub.order.values()):
        attrs[o] = cub.taxon_attrs(o)
    for f in cub.sorted_taxa(cub.family.values()):
        o = cub.order[next(k for k in cub.family if cub.family[k] == f)]
        edges.append((o, f))
        attrs[f] = cub.taxon_attrs(f)
    rank = dict(cub.rank)
    rank["Mergus"] = rank["Merginae"]
    for g in sorted(set(genus.values()), key=lambda n: rank[n]):
        fams = {cub.family[k] for k in genus if genus[k] == g}
        assert len(fams) == 1, (g, fams)
        edges.append((fams.pop(), g))
        attrs[g] = {"scientific_name": g}
        if g in genus_notes:
            attrs[g]["note"] = genus_notes[g]
    for k in range(1, 201):
        sp = cub.folders[k]
        edges.append((genus[k], sp))
        names[sp] = cub_english(k, sp)
        attrs[sp] = cub.species_attrs(k)
    n_genera = len(set(genus.values()))
    return build(
        cub.sorted_taxa(cub.order.values()),
        edges,
        names,
        attrs,
        ["order", "family", "genus", "species"],
        {
            "name": "cub200-4level",
            "description": (
                f"CUB-200-2011 birds: 13 orders > 37 families > {n_genera} genera > 200 "
                "classes, the full flat taxonomy of Barz & Denzler (hierarchy_flat.txt). Every "
                "class is at depth 4: the four genus-level classes (044.Frigatebird = Fregata, "
                "092.Nighthawk = Chordeiles, 103.Sayornis, 110.Geococcyx), which the flat file "
                "has as depth-3 leaves, sit under a genus node of that name as its only child "
                "(resolves_to=genus). hierarchy_flat.txt puts Mergus serrator under the "
                "subfamily Merginae; here its genus is Mergus. That makes {n_genera} genera "
                f"({n_genera - 4} with species plus the four genus-level classes); the HRN "
                "repository's unused *_4_level_V1 tree has 122 because it splits Anas and "
                "Ammodramus in two and merges Passer with Spizelloides."
            ),
            "source": (
                f"{SEMEMB} CUB-Hierarchy/hierarchy_flat.txt, classes_flat.txt, "
                "cub_flat.parent-child.txt, README.md (errata); CUB-200-2011 classes.txt"
            ),
            "licence": CUB_LICENCE,
            "citation": CUB_CITATION,
        },
    )


def _hrn_label(
    cub: Cub, level: str, hrn_id: str, members: set[int], ref: dict[int, str]
) -> tuple[str, str, dict[str, Any]]:
    """Id, display name and attributes of an HRN paper order/family with species ``members``."""
    by_taxon = collections.defaultdict(set)
    for k, t in ref.items():
        by_taxon[t].add(k)
    for taxon, ks in by_taxon.items():
        if ks == members:
            attrs = cub.taxon_attrs(taxon)
            attrs[f"hrn_{level}_id"] = int(hrn_id)
            return taxon, taxon, attrs
    taxon = collections.Counter(ref[k] for k in members).most_common(1)[0][0]
    extra = sorted(members - by_taxon[taxon])
    missing = sorted(by_taxon[taxon] - members)

    def sp(ks: list[int]) -> str:
        return ", ".join(f"{cub.folders[k]} ({cub.sci[k]}, {ref[k]})" for k in ks)

    if len(members) <= 2:
        name = " + ".join(cub.sci[k] for k in sorted(members)) + f" (HRN {level} {hrn_id})"
        note = f"HRN paper {level} {hrn_id} holds only {sp(sorted(members))}"
    elif extra and not missing:
        name = f"{taxon} + " + ", ".join(cub.sci[k] for k in extra)
        note = f"HRN paper {level} {hrn_id} = {taxon} plus {sp(extra)}"
    elif missing and not extra:
        name = f"{taxon} excl. " + ", ".join(cub.sci[k] for k in missing)
        note = f"HRN paper {level} {hrn_id} = {taxon} without {sp(missing)}"
    else:
        raise AssertionError(f"HRN {level} {hrn_id}: no simple description")
    attrs = {"nearest_taxon": taxon, "note": note, f"hrn_{level}_id": int(hrn_id)}
    return f"hrn-{level}-{hrn_id}", name, attrs


def derive_cub200_hrn(cub: Cub) -> Hierarchy:
    rows = read_tsv(cub.root / "hrn_paper_tree.tsv")
    assert len(rows) == 200
    for r in rows:
        assert r["species_dir"] == cub.folders[int(r["species_id"])], r
    orders = group(rows, "order_id", "species_id")
    families = group(rows, "family_id", "species_id")
    assert (len(orders), len(families)) == (13, 38)
    fam_order = {}
    for r in rows:
        assert fam_order.setdefault(r["family_id"], r["order_id"]) == r["order_id"], r
    edges, names, attrs, ids = [], {}, {}, {}
    for oid in sorted(orders, key=int):
        node, name, a = _hrn_label(cub, "order", oid, set(map(int, orders[oid])), cub.order)
        ids[("o", oid)], names[node], attrs[node] = node, name, a
    for fid in sorted(families, key=int):
        node, name, a = _hrn_label(cub, "family", fid, set(map(int, families[fid])), cub.family)
        ids[("f", fid)], names[node], attrs[node] = node, name, a
        edges.append((ids[("o", fam_order[fid])], node))
    for r in sorted(rows, key=lambda r: int(r["species_id"])):
        k, sp = int(r["species_id"]), r["species_dir"]
        edges.append((ids[("f", r["family_id"])], sp))
        names[sp] = cub_english(k, sp)
        attrs[sp] = cub.species_attrs(k)
    descriptive = sorted(n for n in ids.values() if n.startswith("hrn-"))
    # The description below states these facts; fail if the input changes them.
    assert descriptive == ["hrn-family-5", "hrn-family-8", "hrn-order-4", "hrn-order-5"], (
        descriptive
    )
    return build(
        [ids[("o", oid)] for oid in sorted(orders, key=int)],
        edges,
        names,
        attrs,
        ["order", "family", "species"],
        {
            "name": "cub200-hrn",
            "description": (
                "The exact CUB-200-2011 tree the HRN paper trained with (trees_CUB in "
                "CUB_Aircraft/utils.py): 13 orders > 38 families > 200 classes; paper ids are "
                "kept as hrn_order_id/hrn_family_id attributes and orders/families appear in "
                "paper id order. It differs from cub200 in one species: 084.Red_legged_Kittiwake "
                "(Rissa brevirostris, a gull of Laridae, Charadriiformes) is a family of its own "
                "(the 38th family, hrn-family-8) under the kingfishers' order, so paper order 5 "
                "(hrn-order-5) is Coraciiformes plus the kittiwake, and paper order 4 "
                "(hrn-order-4) and family 5 (hrn-family-5) are Charadriiformes and Laridae "
                "without it. Every other paper order and family matches a taxon of "
                "hierarchy_flat.txt exactly and is keyed by its scientific name. Species ids, "
                "names and attributes are as in cub200."
            ),
            "source": (
                f"{HRN} CUB_Aircraft/utils.py trees_CUB (ids only); names from {SEMEMB} "
                "CUB-Hierarchy/hierarchy_flat.txt and classes_flat.txt; CUB-200-2011 classes.txt"
            ),
            "licence": f"tree: Apache-2.0 (HRN code); names: {CUB_LICENCE}",
            "citation": f"{HRN_CITE}; {CUB_CITATION}",
        },
    )


# ---------------------------------------------------------------------------- aircraft
# FGVC-Aircraft 2013b families.txt / manufacturers.txt names for the HRN paper's 1-based
# family_id / maker_id, which are numbered by first appearance in the paper's variant list.
AIRCRAFT_FAMILIES = (
    "A300", "A310", "A320", "A330", "A340", "A380", "An-12", "ATR-42", "ATR-72", "BAE 146",
    "BAE-125", "Beechcraft 1900", "Boeing 707", "Boeing 717", "Boeing 727", "Boeing 737",
    "Boeing 747", "Boeing 757", "Boeing 767", "Boeing 777", "C-130", "C-47", "Cessna 172",
    "Cessna 208", "Cessna Citation", "Challenger 600", "CRJ-200", "CRJ-700", "Dash 8", "DC-10",
    "DC-3", "DC-6", "DC-8", "DC-9", "DH-82", "DHC-1", "DHC-6", "Dornier 328", "DR-400",
    "EMB-120", "Embraer E-Jet", "Embraer ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon",
    "F/A-18", "F-16", "Falcon 2000", "Falcon 900", "Fokker 100", "Fokker 50", "Fokker 70",
    "Global Express", "Gulfstream", "Hawk T1", "Il-76", "King Air", "L-1011", "MD-11", "MD-80",
    "MD-90", "Metroliner", "PA-28", "Saab 2000", "Saab 340", "Spitfire", "SR-20", "Tornado",
    "Tu-134", "Tu-154", "Yak-42",
)  # fmt: skip
AIRCRAFT_MAKERS = (
    "Airbus", "Antonov", "ATR", "Beechcraft", "Boeing", "Bombardier Aerospace",
    "British Aerospace", "Canadair", "Cessna", "Cirrus Aircraft", "Dassault Aviation",
    "de Havilland", "Dornier", "Douglas Aircraft Company", "Embraer", "Eurofighter", "Fairchild",
    "Fokker", "Gulfstream Aerospace", "Ilyushin", "Lockheed Corporation", "Lockheed Martin",
    "McDonnell Douglas", "Panavia", "Piper", "Robin", "Saab", "Supermarine", "Tupolev",
    "Yakovlev",
)  # fmt: skip
# Spot checks of the inferred names against the variants they hold.
AIRCRAFT_CHECKS = {
    "A320": {"A318", "A319", "A320", "A321"},
    "Cessna Citation": {"Cessna 525", "Cessna 560"},
    "Dash 8": {"DHC-8-100", "DHC-8-300"},
    "Embraer E-Jet": {"E-170", "E-190", "E-195"},
    "Embraer ERJ 145": {"ERJ 135", "ERJ 145"},
    "King Air": {"Model B200"},
    "MD-80": {"MD-80", "MD-87"},
    "CRJ-700": {"CRJ-700", "CRJ-900"},
    "Gulfstream": {"Gulfstream IV", "Gulfstream V"},
    "DC-9": {"DC-9-30"},
    "F-16": {"F-16A/B"},
}
AIRCRAFT_MAKER_CHECKS = {
    "Lockheed Corporation": {"C-130", "L-1011"},
    "Lockheed Martin": {"F-16"},
    "Douglas Aircraft Company": {"C-47", "DC-3", "DC-6", "DC-8"},
    "McDonnell Douglas": {"DC-10", "DC-9", "F/A-18", "MD-11", "MD-80", "MD-90"},
    "Canadair": {"Challenger 600", "CRJ-200", "CRJ-700"},
    "British Aerospace": {"BAE 146", "BAE-125", "Hawk T1"},
    "de Havilland": {"Dash 8", "DH-82", "DHC-1", "DHC-6"},
}


def derive_aircraft(shared: Path) -> Hierarchy:
    rows = read_tsv(shared / "reference" / "aircraft" / "hrn_paper_tree.tsv")
    assert len(rows) == 100 and len(AIRCRAFT_FAMILIES) == 70 and len(AIRCRAFT_MAKERS) == 30
    fam = {str(i + 1): n for i, n in enumerate(AIRCRAFT_FAMILIES)}
    maker = {str(i + 1): n for i, n in enumerate(AIRCRAFT_MAKERS)}
    fam_maker: dict[str, str] = {}
    for r in rows:
        # Each paper family id belongs to one maker id, so each family name to one maker.
        assert fam_maker.setdefault(r["family_id"], r["maker_id"]) == r["maker_id"], r
    variants = group(rows, "family_id", "variant_name")
    assert set(variants) == set(fam), "paper family ids are not 1..70"
    for name, expected in AIRCRAFT_CHECKS.items():
        fid = next(i for i, n in fam.items() if n == name)
        assert variants[fid] == expected, (name, variants[fid])
    for name, expected in AIRCRAFT_MAKER_CHECKS.items():
        mid = next(i for i, n in maker.items() if n == name)
        got = {fam[f] for f, m in fam_maker.items() if m == mid}
        assert got == expected, (name, got)
    # torchvision FGVCAircraft / the dataset's *.txt lists are sorted by code point.
    index = {lvl: {n: i for i, n in enumerate(sorted(names))} for lvl, names in (
        ("variant", [r["variant_name"] for r in rows]),
        ("family", AIRCRAFT_FAMILIES),
        ("manufacturer", AIRCRAFT_MAKERS),
    )}  # fmt: skip
    edges, names, attrs = [], {}, {}
    for mid in sorted(maker, key=int):
        node = f"manufacturer:{maker[mid]}"
        names[node] = maker[mid]
        attrs[node] = {"class_index": index["manufacturer"][maker[mid]], "hrn_id": int(mid)}
    for fid in sorted(fam, key=int):
        node = f"family:{fam[fid]}"
        edges.append((f"manufacturer:{maker[fam_maker[fid]]}", node))
        names[node] = fam[fid]
        attrs[node] = {"class_index": index["family"][fam[fid]], "hrn_id": int(fid)}
    for r in sorted(rows, key=lambda r: int(r["variant_id"])):
        node = f"variant:{r['variant_name']}"
        edges.append((f"family:{fam[r['family_id']]}", node))
        names[node] = r["variant_name"]
        attrs[node] = {
            "class_index": index["variant"][r["variant_name"]],
            "hrn_id": int(r["variant_id"]),
        }
    return build(
        [f"manufacturer:{maker[mid]}" for mid in sorted(maker, key=int)],
        edges,
        names,
        attrs,
        ["manufacturer", "family", "variant"],
        {
            "name": "aircraft",
            "description": (
                "FGVC-Aircraft 2013b: 30 manufacturers > 70 families > 100 variants, the tree "
                "the HRN paper trained with. The paper code has variant names and numeric "
                "family/maker ids only; the family and manufacturer names are FGVC-Aircraft's "
                "own (families.txt, manufacturers.txt), matched to the ids through the variants "
                "each id holds. class_index is the 0-based index in the dataset's sorted "
                "variants.txt/families.txt/manufacturers.txt (torchvision FGVCAircraft's class "
                "index at that annotation_level); hrn_id is the paper's 1-based id."
            ),
            "source": (
                f"{HRN} CUB_Aircraft/utils.py trees_Air and dataset.py AirDataset.map; "
                "FGVC-Aircraft 2013b variants.txt, families.txt, manufacturers.txt"
            ),
            "licence": (
                "tree: Apache-2.0 (HRN code); names: FGVC-Aircraft (Maji et al. 2013), "
                "images for non-commercial research"
            ),
            "citation": (
                f"{HRN_CITE}; Maji, Rahtu, Kannala, Blaschko, Vedaldi, Fine-Grained Visual "
                "Classification of Aircraft, arXiv:1306.5151, 2013"
            ),
        },
    )


# ---------------------------------------------------------------------------- cars
def cars_class_name(model_dir: str) -> str:
    """cars_meta.mat class name (what torchvision StanfordCars.classes gives) of a folder name.

    The HRN folder names replace spaces by underscores; 'Ram C/V Cargo Van Minivan 2012'
    also lost its slash, because a folder name cannot hold one."""
    if model_dir == "Ram_CV_Cargo_Van_Minivan_2012":
        return "Ram C/V Cargo Van Minivan 2012"
    assert "/" not in model_dir
    return model_dir.replace("_", " ")


def derive_cars(shared: Path) -> Hierarchy:
    rows = read_tsv(shared / "reference" / "cars" / "hrn_paper_tree.tsv")
    assert len(rows) == 196
    assert [int(r["model_id"]) for r in rows] == list(range(1, 197))
    type_name: dict[str, str] = {}
    for r in rows:
        assert (
            type_name.setdefault(r["type_id"], r["type_name_inferred"]) == (r["type_name_inferred"])
        ), r
    assert len(type_name) == 9 and len(set(type_name.values())) == 9
    edges, names, attrs = [], {}, {}
    for tid in sorted(type_name, key=int):
        attrs[type_name[tid]] = {"hrn_id": int(tid)}
    for r in rows:
        node = cars_class_name(r["model_dir"])
        edges.append((type_name[r["type_id"]], node))
        attrs[node] = {
            "class_index": int(r["model_id"]) - 1,
            "dir": r["model_dir"],
            "hrn_id": int(r["model_id"]),
        }
    return build(
        [type_name[tid] for tid in sorted(type_name, key=int)],
        edges,
        names,
        attrs,
        ["type", "model"],
        {
            "name": "cars",
            "description": (
                "Stanford Cars: 9 body types > 196 models, the tree the HRN paper trained with "
                "(trees_Car). Model ids are the class names of the devkit's cars_meta.mat, as "
                "torchvision StanfordCars.classes gives them; class_index is that 0-based "
                "class order (= the paper's model id - 1) and dir the paper's folder name "
                "(spaces as underscores; 'Ram C/V Cargo Van Minivan 2012' has no slash there, "
                "'Ram_CV_Cargo_Van_Minivan_2012'). The paper code has numeric type ids only; "
                "the type names are read off the model names and kept as the paper grouped "
                "them (e.g. Chevrolet HHR SS 2010 is a Minivan, Ford E-Series Wagon Van 2012 a "
                "Wagon)."
            ),
            "source": f"{HRN} Stanford_Cars/utils_car.py trees_Car; Stanford Cars devkit",
            "licence": (
                "tree: Apache-2.0 (HRN code); class names: Stanford Cars (Krause et al. 2013), "
                "images for non-commercial research"
            ),
            "citation": (
                f"{HRN_CITE}; Krause, Stark, Deng, Fei-Fei, 3D Object Representations for "
                "Fine-Grained Categorization, 3dRR 2013"
            ),
        },
    )


# ---------------------------------------------------------------------------- CIFAR-100
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def derive_cifar100() -> Hierarchy:
    fine = [c for cs in CIFAR100_SUPERCLASSES.values() for c in cs]
    assert len(CIFAR100_SUPERCLASSES) == 20 and len(fine) == 100 and len(set(fine)) == 100
    # CIFAR-100's meta lists fine_label_names and coarse_label_names alphabetically.
    fine_index = {c: i for i, c in enumerate(sorted(fine))}
    assert list(CIFAR100_SUPERCLASSES) == sorted(CIFAR100_SUPERCLASSES)
    edges, names, attrs = [], {}, {}
    for i, (sup, classes) in enumerate(CIFAR100_SUPERCLASSES.items()):
        names[sup] = sup.replace("_", " ")
        attrs[sup] = {"class_index": i}
        for c in classes:
            edges.append((sup, c))
            names[c] = c.replace("_", " ")
            attrs[c] = {"class_index": fine_index[c]}
    return build(
        list(CIFAR100_SUPERCLASSES),
        edges,
        names,
        attrs,
        ["superclass", "class"],
        {
            "name": "cifar100",
            "description": (
                "CIFAR-100: 20 superclasses (coarse labels) > 100 classes (fine labels), five "
                "classes each. Ids are CIFAR-100's meta label names (torchvision "
                "CIFAR100.classes for the fine level); class_index is the 0-based fine or "
                "coarse label."
            ),
            "source": "CIFAR-100 superclass table (Krizhevsky 2009, Appendix D; dataset meta)",
            "licence": "class names and grouping: CIFAR-100 (Krizhevsky 2009)",
            "citation": "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
        },
    )


# ---------------------------------------------------------------------------- Fashion-MNIST
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_TREE = {
    ("clothing", "Clothing"): {
        ("tops", "Tops"): ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        ("bottoms", "Bottoms"): ["Trouser"],
        ("one-piece", "One-piece"): ["Dress"],
    },
    ("footwear", "Footwear"): {
        ("open-shoes", "Open shoes"): ["Sandal"],
        ("closed-shoes", "Closed shoes"): ["Sneaker", "Ankle boot"],
    },
    ("accessories", "Accessories"): {("bags", "Bags"): ["Bag"]},
}


def derive_fashion_mnist() -> Hierarchy:
    edges, names, attrs = [], {}, {}
    for (dom, dom_name), types in FASHION_TREE.items():
        names[dom] = dom_name
        for (typ, typ_name), classes in types.items():
            edges.append((dom, typ))
            names[typ] = typ_name
            for c in classes:
                edges.append((typ, c))
                attrs[c] = {"class_index": FASHION_CLASSES.index(c)}
    leaves = [c for types in FASHION_TREE.values() for cs in types.values() for c in cs]
    assert sorted(leaves) == sorted(FASHION_CLASSES)
    return build(
        [dom for dom, _ in FASHION_TREE],
        edges,
        names,
        attrs,
        ["domain", "type", "class"],
        {
            "name": "fashion-mnist",
            "description": (
                "Fashion-MNIST: 3 domains > 6 garment types > 10 classes, designed for hmc "
                "(the dataset has no hierarchy). Grouped by what the 28x28 silhouette shows: "
                "clothing splits into upper-body tops (T-shirt/top, Pullover, Coat, Shirt: the "
                "classes most often confused with each other), bottoms (Trouser) and one-piece "
                "garments (Dress); footwear into open shoes (Sandal) and closed shoes (Sneaker, "
                "Ankle boot); accessories hold bags (Bag). Leaf ids are torchvision "
                "FashionMNIST.classes; class_index is the dataset label."
            ),
            "source": "hmc design over the Fashion-MNIST classes (Xiao, Rasul, Vollgraf 2017)",
            "licence": "class names: MIT (Fashion-MNIST); tree: Apache-2.0 (hmc)",
            "citation": (
                "Xiao, Rasul, Vollgraf, Fashion-MNIST: a Novel Image Dataset for Benchmarking "
                "Machine Learning Algorithms, arXiv:1708.07747, 2017"
            ),
        },
    )


# ---------------------------------------------------------------------------- main
def derive_all(shared: Path) -> dict[str, Hierarchy]:
    cub = Cub(shared / "reference" / "cub")
    return {
        "cub200": derive_cub200(cub),
        "cub200-hrn": derive_cub200_hrn(cub),
        "cub200-4level": derive_cub200_4level(cub),
        "aircraft": derive_aircraft(shared),
        "cars": derive_cars(shared),
        "cifar100": derive_cifar100(),
        "fashion-mnist": derive_fashion_mnist(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, required=True, help="path of the shared folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "hierarchies",
        help="output folder",
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if not (args.shared / "reference").is_dir():
        parser.error(f"--shared {args.shared}: expected a folder with reference/ inside")
    stale = []
    for name, h in derive_all(args.shared).items():
        text = format_tree(h)
        path = args.out / f"{name}.tree"
        sizes = ", ".join(f"{k}={v}" for k, v in h.level_sizes().items())
        if args.check:
            ok = path.is_file() and path.read_text(encoding="utf-8") == text
            stale += [] if ok else [path]
            print(f"{'ok   ' if ok else 'STALE'} {path} ({sizes})")
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({sizes})")
    if stale:
        print(f"{len(stale)} file(s) differ; rerun without --check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
