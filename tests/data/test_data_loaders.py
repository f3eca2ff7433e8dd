"""FGVC-Aircraft, Stanford Cars, CIFAR-100, Fashion-MNIST, CSV and folder loaders on fixtures in
their real layout: targets, splits, layout errors, unknown labels, bad images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    AIRCRAFT,
    BIRD_CLASSES,
    CIFAR_FINE,
    FASHION_CLASSES,
    aircraft_hierarchy,
    bird_hierarchy,
    cars_hierarchy,
    check_contract,
    cifar_hierarchy,
    fashion_hierarchy,
    make_aircraft,
    make_cars,
    make_cifar100,
    make_fashion,
    make_folder_tree,
    node_ids,
    write_image,
)

import hmc.data as D
from hmc.hierarchy import HierarchyError, UnknownLabelError


# ---------------------------------------------------------------------- Aircraft
def test_aircraft_official_splits_and_levels(tmp_path):
    info = make_aircraft(tmp_path)
    h = aircraft_hierarchy()
    for split in ("train", "val", "test"):
        ds = D.FGVCAircraft(tmp_path, split, hierarchy=h)
        check_contract(ds, info["per_split"][split])
        assert {i.split(":")[0] for i in node_ids(ds)} == {"variant"}
    trainval = D.FGVCAircraft(tmp_path / "fgvc-aircraft-2013b", "trainval", hierarchy=h)
    assert sorted(node_ids(trainval)) == sorted(
        f"variant:{v}" for _, _, v in AIRCRAFT for _ in range(3)
    )
    fam = D.FGVCAircraft(tmp_path, "test", hierarchy=h, annotation_level="family")
    assert set(node_ids(fam)) == {f"family:{f}" for _, f, _ in AIRCRAFT}
    assert "family=8" in repr(fam)


def test_aircraft_disagreeing_family_file_is_an_error(tmp_path):
    info = make_aircraft(tmp_path)
    fam = info["data"] / "images_family_test.txt"
    lines = fam.read_text().splitlines()
    image = lines[0].split()[0]
    lines[0] = f"{image} A320"  # its variant is a 707-320
    fam.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        HierarchyError, match=rf"images_family_test.txt:1: image {image} is a 'family:A320'"
    ):
        D.FGVCAircraft(tmp_path, "test", hierarchy=aircraft_hierarchy())


def test_aircraft_layout_and_label_errors(tmp_path):
    info = make_aircraft(tmp_path)
    (info["data"] / "images_variant_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="data/images_variant_val.txt not found under"):
        D.FGVCAircraft(tmp_path, "val", hierarchy=aircraft_hierarchy())
    h = aircraft_hierarchy().restrict(["variant:707-320", "variant:737-200", "variant:737-300"])
    with pytest.raises(UnknownLabelError, match=r"images_variant_test.txt:\d+: .*'variant:A320'"):
        D.FGVCAircraft(tmp_path, "test", hierarchy=h)
    shutil.rmtree(info["data"] / "images")
    with pytest.raises(FileNotFoundError, match="data/images not found"):
        D.FGVCAircraft(tmp_path, "test", hierarchy=aircraft_hierarchy())


# -------------------------------------------------------------------------- Cars
def test_cars_mat_layout(tmp_path):
    info = make_cars(tmp_path)
    h = cars_hierarchy()
    train, val = D.train_val_split(D.StanfordCars(tmp_path, hierarchy=h), 0.25)
    test = D.StanfordCars(tmp_path / "stanford_cars", "test", hierarchy=h)
    check_contract(train, 9)
    check_contract(test, info["num_test"])
    assert len(val) == 3 and sorted(node_ids(val)) == sorted(h.leaves)
    # Record k of class c was written with colour (c * 60, j * 40, 0): targets follow the .mat.
    for i in range(len(test)):
        r = test[i][0].getpixel((8, 6))[0]
        assert h.leaves[round(r / 60) - 1] == node_ids(test)[i]
    box = D.StanfordCars(tmp_path, "test", hierarchy=h, crop_to_bbox=True)[0][0]
    assert box.size == (10, 8)  # x1=3..x2=12, y1=2..y2=9 inclusive, 1-based


def test_cars_layout_errors(tmp_path):
    info = make_cars(tmp_path)
    (info["base"] / "cars_test_annos_withlabels.mat").unlink()
    D.StanfordCars(tmp_path, "trainval", hierarchy=cars_hierarchy())
    with pytest.raises(FileNotFoundError, match="cars_test_annos_withlabels.mat not found under"):
        D.StanfordCars(tmp_path, "test", hierarchy=cars_hierarchy())
    (info["base"] / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match="devkit/cars_meta.mat not found"):
        D.StanfordCars(tmp_path, "trainval", hierarchy=cars_hierarchy())


def test_cars_unknown_class(tmp_path):
    make_cars(tmp_path)
    h = cars_hierarchy().restrict(["Acura RL Sedan 2012", "Acura TL Sedan 2012"])
    with pytest.raises(UnknownLabelError, match="'AM General Hummer SUV 2000'"):
        D.StanfordCars(tmp_path, "trainval", hierarchy=h)


# ----------------------------------------------------------------------- CIFAR-100
def test_cifar100_pickles(tmp_path):
    info = make_cifar100(tmp_path)
    h = cifar_hierarchy()
    train = D.CIFAR100(tmp_path, "trainval", hierarchy=h)
    test = D.CIFAR100(tmp_path, "test", hierarchy=h)
    check_contract(train, info["num_train"])
    check_contract(test, info["num_test"])
    image, target = test[0]
    assert image.size == (32, 32) and image.mode == "RGB"
    # The red channel was written as 50 * fine label index (alphabetical CIFAR order).
    assert CIFAR_FINE[image.getpixel((0, 0))[0] // 50] == h.nodes[target]


def test_cifar100_superclass_must_match(tmp_path):
    make_cifar100(tmp_path)
    wrong = type(cifar_hierarchy()).from_paths(
        [("aquatic_mammals", "apple"), ("aquatic_mammals", "dolphin"),
         ("fruit_and_vegetables", "beaver"), ("fruit_and_vegetables", "orange")],
        level_names=["superclass", "class"],
    )  # fmt: skip
    with pytest.raises(HierarchyError, match="class 'apple' has superclass 'fruit_and_vegetables'"):
        D.CIFAR100(tmp_path, "test", hierarchy=wrong)


def test_cifar100_and_fashion_label_out_of_range(tmp_path):
    import pickle

    from data_fixtures import write_idx

    make_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    entry = pickle.loads(path.read_bytes())
    entry["fine_labels"][5] = 7
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=r"test: fine label 7 of image 5 is not an index"):
        D.CIFAR100(tmp_path, "test", hierarchy=cifar_hierarchy())
    raw = tmp_path / "FashionMNIST" / "raw"
    make_fashion(raw)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 12] + [0] * 17, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: label 12 of image 2"):
        D.FashionMNIST(tmp_path, "test", hierarchy=fashion_hierarchy(), system_dir=None)


def test_cifar100_layout_error(tmp_path):
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta not found under"):
        D.CIFAR100(tmp_path, "test", hierarchy=cifar_hierarchy())


# ------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_raw_files(tmp_path):
    make_fashion(tmp_path / "FashionMNIST" / "raw")
    h = fashion_hierarchy()
    train = D.FashionMNIST(tmp_path, hierarchy=h, system_dir=None)
    test = D.FashionMNIST(tmp_path, "test", hierarchy=h, system_dir=None)
    check_contract(train, 60)
    assert len(test) == 20
    image, target = test[3]
    assert image.size == (28, 28) and image.mode == "L"
    assert h.nodes[target] == FASHION_CLASSES[3]
    assert image.getpixel((0, 0)) == 3 * 25


def test_fashion_mnist_from_system_gz_and_limit(tmp_path):
    make_fashion(tmp_path / "debian", gz=True)
    h = fashion_hierarchy()
    ds = D.FashionMNIST(tmp_path / "data", hierarchy=h, system_dir=tmp_path / "debian")
    ds = D.limit_per_class(ds, 2)
    assert (tmp_path / "data/FashionMNIST/raw/train-images-idx3-ubyte").is_file()
    assert len(ds) == 20
    assert torch.bincount(ds.targets).max() == 2
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte not found under .*raw"):
        D.FashionMNIST(tmp_path / "elsewhere", "test", hierarchy=h, system_dir=tmp_path / "none")


@pytest.mark.skipif(
    not Path(D.mnist.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_package(tmp_path):
    ds = D.limit_per_class(D.FashionMNIST(tmp_path, "test", hierarchy=fashion_hierarchy()), 5)
    assert len(ds) == 50 and ds.hierarchy.nodes[int(ds.targets[0])] in FASHION_CLASSES


# --------------------------------------------------------------------------- CSV
def test_csv_mixed_granularity(tmp_path):
    make_folder_tree(tmp_path / "img")
    h = bird_hierarchy()
    rows = [
        "path,label,comment",
        "img/Procellariiformes/Diomedeidae/001.Black_footed_Albatross/0.jpg,001.Black_footed_Albatross,x",
        "img/Passeriformes/Parulidae/warbler_a.png,Parulidae,family",
        "img/Passeriformes/Parulidae/warbler_b.png,New World Warblers,display name",
        "img/Passeriformes/Corvidae/005.Blue_Jay/1.jpg,Passeriformes,order",
        "img/Passeriformes/Corvidae/005.Blue_Jay/2.jpg,,unlabelled",
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = D.CSVDataset(h, tmp_path / "labels.csv")
    assert [h.nodes[t] if t >= 0 else None for t in ds.targets.tolist()] == [
        "001.Black_footed_Albatross", "Parulidae", "Parulidae", "Passeriformes", None,
    ]  # fmt: skip
    assert "order=1, family=2, species=1, unlabelled=1" in repr(ds)
    assert ds[2][1] == h.index("Parulidae")


def test_csv_tsv_without_header_and_root(tmp_path):
    make_folder_tree(tmp_path / "img")
    lines = ["Passeriformes/Parulidae/warbler_a.png\tParulidae"]
    (tmp_path / "x.tsv").write_text("\n".join(lines) + "\n")
    ds = D.CSVDataset(bird_hierarchy(), tmp_path / "x.tsv", root=tmp_path / "img")
    assert len(ds) == 1 and ds[0][0].size == (8, 8)


def test_csv_errors_name_file_and_line(tmp_path):
    h = bird_hierarchy()
    (tmp_path / "a.csv").write_text("path,label\nx.jpg,Parulidae\ny.jpg,Parulidea\n")
    with pytest.raises(UnknownLabelError, match=r"a.csv:3: label 'Parulidea' .*did you mean"):
        D.CSVDataset(h, tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,label\nx.jpg\n")
    with pytest.raises(ValueError, match=r"b.csv:2: expected a path and a label"):
        D.CSVDataset(h, tmp_path / "b.csv")
    with pytest.raises(FileNotFoundError, match="nothere.csv not found"):
        D.CSVDataset(h, tmp_path / "nothere.csv")
    # A display name shared by two nodes is ambiguous.
    twins = type(h).from_paths([("A", "x1"), ("B", "x2")], names={"x1": "X", "x2": "X"})
    (tmp_path / "c.csv").write_text("x.jpg,X\n")
    with pytest.raises(UnknownLabelError, match=r"c.csv:1: label 'X' is ambiguous"):
        D.CSVDataset(twins, tmp_path / "c.csv")


def test_csv_missing_image_raises_with_path(tmp_path):
    (tmp_path / "a.csv").write_text("gone.jpg,Parulidae\n")
    ds = D.CSVDataset(bird_hierarchy(), tmp_path / "a.csv")
    with pytest.raises(D.BadSampleError, match=re.escape(str(tmp_path / "gone.jpg"))):
        ds[0]


# ------------------------------------------------------------------------ folder
def test_hierarchy_folder_is_its_own_hierarchy(tmp_path):
    info = make_folder_tree(tmp_path)
    ds = D.HierarchyFolder(tmp_path, level_names=["order", "family", "species"])
    h = ds.hierarchy
    check_contract(ds, info["num_images"])
    assert h.level_sizes() == {"order": 2, "family": 3, "species": 5}
    assert h.name("Passeriformes/Parulidae") == "Parulidae"
    ids = node_ids(ds)
    assert ids.count("Passeriformes/Parulidae") == 2  # family-level images
    assert ids.count("Passeriformes/Corvidae/005.Blue_Jay") == 4


def test_hierarchy_folder_with_given_hierarchy(tmp_path):
    make_folder_tree(tmp_path)
    ds = D.HierarchyFolder(tmp_path, hierarchy=bird_hierarchy())
    assert sorted(set(node_ids(ds))) == sorted([*BIRD_CLASSES, "Parulidae"])
    shutil.rmtree(tmp_path / "Procellariiformes")
    write_image(tmp_path / "Gaviiformes" / "x.jpg")
    with pytest.raises(UnknownLabelError, match="Gaviiformes"):
        D.HierarchyFolder(tmp_path, hierarchy=bird_hierarchy())


def test_hierarchy_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder .*nope not found"):
        D.HierarchyFolder(tmp_path / "nope")
    write_image(tmp_path / "top.jpg")
    with pytest.raises(FileNotFoundError, match="no images"):
        D.HierarchyFolder(tmp_path)


# ---------------------------------------------------------------- duplicate rows
def test_csv_duplicate_rows_are_dropped_and_never_reach_two_splits(tmp_path):
    make_folder_tree(tmp_path / "img")
    images = sorted((tmp_path / "img").rglob("*.jpg"))
    rows = ["path,label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in images]
    rows += rows[1:4]  # three images listed twice with the same label
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(D.DuplicateRowsWarning, match=r"dropped 3 duplicate row\(s\).*a.csv:22"):
        ds = D.CSVDataset(bird_hierarchy(), tmp_path / "a.csv")
    assert len(ds) == len(images) == len(set(ds.paths))
    train, val = D.train_val_split(ds, 0.5)
    assert not set(train.paths) & set(val.paths)


def test_csv_conflicting_labels_name_the_file_lines_and_image(tmp_path):
    text = "path,label\nx.jpg,Parulidae\ny.jpg,Corvidae\nx.jpg,New World Warblers\nx.jpg,Corvidae\n"
    (tmp_path / "a.csv").write_text(text)  # line 4 repeats line 2 (a display name of it)
    with pytest.raises(
        ValueError, match=r"a.csv:2 and .*a.csv:5: image .*x.jpg is listed twice, with label "
        r"'Parulidae' and 'Corvidae'",
    ):  # fmt: skip
        D.CSVDataset(bird_hierarchy(), tmp_path / "a.csv")


def test_aircraft_duplicate_and_conflicting_lines(tmp_path):
    info = make_aircraft(tmp_path)
    variants = info["data"] / "images_variant_test.txt"
    lines = variants.read_text().splitlines()
    variants.write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.warns(D.DuplicateRowsWarning, match="dropped 1 duplicate"):
        ds = D.FGVCAircraft(tmp_path, "test", hierarchy=aircraft_hierarchy())
    assert len(ds) == info["per_split"]["test"]
    image = lines[0].split()[0]
    variants.write_text("\n".join([*lines, f"{image} A320"]) + "\n")
    with pytest.raises(
        ValueError, match=rf"images_variant_test.txt:1 and .*:{len(lines) + 1}: image {image} "
    ):
        D.FGVCAircraft(tmp_path, "test", hierarchy=aircraft_hierarchy())


def test_cars_conflicting_annotations(tmp_path):
    import scipy.io

    info = make_cars(tmp_path)
    mat = info["base"] / "cars_test_annos_withlabels.mat"
    annos = scipy.io.loadmat(str(mat))["annotations"]
    annos[0, 1]["fname"] = annos[0, 0]["fname"]  # record 1 names record 0's image, same class
    scipy.io.savemat(str(mat), {"annotations": annos})
    with pytest.warns(D.DuplicateRowsWarning, match=r"\(annotation 1\) repeats .*\(annotation 0\)"):
        assert len(D.StanfordCars(tmp_path, "test", hierarchy=cars_hierarchy())) == 5
    annos[0, 2]["fname"] = annos[0, 0]["fname"]
    annos[0, 2]["class"] = annos[0, 4]["class"]  # another class
    scipy.io.savemat(str(mat), {"annotations": annos})
    with pytest.raises(ValueError, match=r"\(annotation 0\) and .*\(annotation 2\): image .*00001"):
        D.StanfordCars(tmp_path, "test", hierarchy=cars_hierarchy())
