"""Every loader on fixtures in the dataset's real layout: targets, splits, layout errors,
unknown labels, bad images."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_fixtures import (
    AIRCRAFT,
    BIRD_CLASSES,
    CIFAR_FINE,
    FASHION_CLASSES,
    NABIRDS_IMAGES,
    aircraft_hierarchy,
    bird_hierarchy,
    cars_hierarchy,
    cifar_hierarchy,
    corrupt,
    fashion_hierarchy,
    make_aircraft,
    make_cars,
    make_cifar100,
    make_cub,
    make_fashion,
    make_folder_tree,
    make_nabirds,
    write_image,
)
from torch.utils.data import DataLoader

import hmc.data as D
from hmc.hierarchy import HierarchyError, UnknownLabelError


def _ids(ds) -> list[str]:
    return [ds.hierarchy.nodes[t] for t in ds.targets.tolist()]


def _check_contract(ds, n: int) -> None:
    """(image, target) samples, .targets [n] long matching __getitem__, one-line repr."""
    assert len(ds) == n
    assert ds.targets.dtype == torch.long and ds.targets.shape == (n,)
    image, target = ds[n - 1]
    assert isinstance(target, int) and target == int(ds.targets[n - 1])
    assert image.mode == "RGB" or image.mode == "L"
    r = repr(ds)
    assert "\n" not in r and f"n={n}" in r
    for level in ds.hierarchy.level_names:
        assert f"{level}=" in r


# ---------------------------------------------------------------------- CUB-200
@pytest.fixture
def cub(tmp_path):
    info = make_cub(tmp_path)
    return tmp_path, info


def test_cub_splits_and_targets(cub):
    root, info = cub
    h = bird_hierarchy()
    train = D.CUB200(root, "train", h)
    val = D.CUB200(root, "val", h)
    trainval = D.CUB200(root / "CUB_200_2011", "trainval", h)  # root at either level
    test = D.CUB200(root, "test", h)
    _check_contract(train, 45)
    _check_contract(test, info["num_test"])
    assert len(trainval) == info["num_train"] and len(val) == 5  # 10 % of 10 per class
    assert sorted(set(train.paths) | set(val.paths)) == sorted(trainval.paths)
    assert not set(train.paths) & set(val.paths)
    assert not set(trainval.paths) & set(test.paths)
    # Stratified: one val image per class; every target is the species of the image's folder.
    assert sorted(_ids(val)) == BIRD_CLASSES
    for path, node in zip(train.paths, _ids(train), strict=True):
        assert f"/{node}/" in path
    assert "species=45" in repr(train) and "order=0" in repr(train)


def test_cub_val_split_is_seeded_and_deterministic(cub):
    root, _ = cub
    h = bird_hierarchy()
    a = D.CUB200(root, "val", h, val_fraction=0.3, seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    b = D.CUB200(root, "val", h, val_fraction=0.3, seed=1)
    c = D.CUB200(root, "val", h, val_fraction=0.3, seed=2)
    assert list(a.paths) == list(b.paths)
    assert list(a.paths) != list(c.paths)
    assert len(a) == 15  # round(0.3 * 10) per class


def test_cub_bounding_box_crop(cub):
    root, _ = cub
    image, _ = D.CUB200(root, "test", bird_hierarchy(), crop_to_bbox=True)[0]
    assert image.size == (10, 8)  # boxes are x=2 y=1 w=10 h=8 on 16x12 images
    assert D.CUB200(root, "test", bird_hierarchy())[0][0].size == (16, 12)


@pytest.mark.parametrize(
    "missing", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                "images"],
)  # fmt: skip
def test_cub_layout_errors_name_what_is_missing(cub, missing):
    root, _ = cub
    target = root / "CUB_200_2011" / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(missing)} not found under .*CUB_200_2011"
    ):
        D.CUB200(root, "train", bird_hierarchy())


def test_cub_bounding_boxes_required_only_to_crop(cub):
    root, _ = cub
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    D.CUB200(root, "train", bird_hierarchy())
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt not found"):
        D.CUB200(root, "train", bird_hierarchy(), crop_to_bbox=True)


def test_cub_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder .*nowhere not found"):
        D.CUB200(tmp_path / "nowhere", "train", bird_hierarchy())


def test_cub_unknown_class_names_it(cub):
    root, _ = cub
    h = bird_hierarchy().restrict(BIRD_CLASSES[:4])  # no 005.Blue_Jay
    with pytest.raises(UnknownLabelError, match=r"image_class_labels.txt.*'005.Blue_Jay'"):
        D.CUB200(root, "train", h)


def test_cub_malformed_rows_name_file_and_line(cub):
    root, _ = cub
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[2] = "3"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt:3: expected 2 fields"):
        D.CUB200(root, "train", bird_hierarchy())
    lines[2] = "3 99"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"class id '99', which classes.txt does not list"):
        D.CUB200(root, "train", bird_hierarchy())


def test_bad_split_argument(cub):
    root, _ = cub
    with pytest.raises(ValueError, match=r"Expected argument `split` to be one of .*'tra'"):
        D.CUB200(root, "tra", bird_hierarchy())


# ------------------------------------------------------------------ bad samples
def _first_paths(ds, k):
    return [ds.paths[i] for i in range(k)]


def test_missing_and_corrupt_images_raise_with_the_path(cub):
    root, _ = cub
    ds = D.CUB200(root, "test", bird_hierarchy())
    missing, broken = _first_paths(ds, 2)
    os.remove(missing)
    corrupt(Path(broken))
    with pytest.raises(D.BadSampleError, match=rf"{re.escape(missing)} \(not found\)"):
        ds[0]
    with pytest.raises(D.BadSampleError, match=re.escape(broken)):
        ds[1]
    # In a worker process the error still names the path.
    loader = DataLoader(ds, batch_size=4, num_workers=1)
    with pytest.raises(D.BadSampleError, match=re.escape(missing)):
        next(iter(loader))


def test_truncated_jpeg_raises(tmp_path):
    path = tmp_path / "a" / "x.jpg"
    write_image(path, size=(32, 32))
    path.write_bytes(path.read_bytes()[:200])
    ds = D.HierarchyFolder(tmp_path)
    with pytest.raises(D.BadSampleError, match=re.escape(str(path))):
        ds[0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_bad_samples_counts_across_workers(cub, num_workers):
    root, _ = cub
    tf = D.build_transforms("small", train=False, image_size=8)
    ds = D.CUB200(root, "trainval", bird_hierarchy(), on_bad_sample="skip", transform=tf)
    bad = [3, 17, 31, 44]  # spread so that both workers meet some
    for i in bad[:2]:
        corrupt(Path(ds.paths[i]))
    for i in bad[2:]:
        os.remove(ds.paths[i])
    assert ds[3] is None
    loader = D.HMCDataLoader(
        ds, batch_size=4, num_workers=num_workers, collate_fn=D.skip_bad_collate,
        persistent_workers=num_workers > 0,
    )  # fmt: skip
    for _ in range(2):  # a second pass reports its own count again
        with pytest.warns(D.SkippedSamplesWarning, match=r"skipped 4 of 50 samples") as rec:
            n = sum(len(y) for _, y in loader)
        assert n == 50 - len(bad)
        assert loader.skipped == 4
        assert ds.paths[3] in str(rec[0].message)
    assert sorted(ds.bad_samples.indices()) == bad


def test_skip_collate_all_bad_batch():
    with pytest.raises(RuntimeError, match="all 2 samples of a batch failed"):
        D.skip_bad_collate([None, None])


def test_no_warning_without_bad_samples(cub):
    root, _ = cub
    tf = D.build_transforms("small", train=False, image_size=8)
    ds = D.CUB200(root, "test", bird_hierarchy(), on_bad_sample="skip", transform=tf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            sum(len(y) for _, y in D.HMCDataLoader(ds, batch_size=8, collate_fn=D.skip_bad_collate))
            == 15
        )


def test_on_bad_sample_choice(cub):
    with pytest.raises(ValueError, match=r"`on_bad_sample` to be one of \['raise', 'skip'\]"):
        D.CUB200(cub[0], "test", bird_hierarchy(), on_bad_sample="ignore")


# ----------------------------------------------------------------------- NABirds
def test_nabirds_ragged_tree_and_inner_labels(tmp_path):
    info = make_nabirds(tmp_path)
    trainval = D.NABirds(tmp_path, "trainval")
    test = D.NABirds(tmp_path / "nabirds", "test")
    h = trainval.hierarchy
    assert h.num_levels == 4 and set(h.leaves) == {"4", "5", "6", "8", "9", "10"}
    _check_contract(trainval, info["num_images"] - info["num_test"])
    assert len(test) == info["num_test"]
    # Class 11 (Yellow-rumped Warbler) is an inner node with images of its own.
    all_ids = _ids(trainval) + _ids(test)
    assert {i: all_ids.count(str(i)) for i in NABIRDS_IMAGES} == NABIRDS_IMAGES
    assert h.level("11") == 3 and h.level("6") == 2
    assert "level_4=" in repr(test)


def test_nabirds_layout_errors(tmp_path):
    make_nabirds(tmp_path)
    (tmp_path / "nabirds" / "hierarchy.txt").unlink()
    with pytest.raises(FileNotFoundError, match="hierarchy.txt not found under"):
        D.NABirds(tmp_path, "train")
    # With an explicit hierarchy hierarchy.txt is not needed, but images.txt is.
    (tmp_path / "nabirds" / "images.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images.txt not found under"):
        D.NABirds(tmp_path, "train", hierarchy=bird_hierarchy())


# ---------------------------------------------------------------------- Aircraft
def test_aircraft_official_splits_and_levels(tmp_path):
    info = make_aircraft(tmp_path)
    h = aircraft_hierarchy()
    for split in ("train", "val", "test"):
        ds = D.FGVCAircraft(tmp_path, split, h)
        _check_contract(ds, info["per_split"][split])
        assert {i.split(":")[0] for i in _ids(ds)} == {"variant"}
    trainval = D.FGVCAircraft(tmp_path / "fgvc-aircraft-2013b", "trainval", h)
    assert sorted(_ids(trainval)) == sorted(
        f"variant:{v}" for _, _, v in AIRCRAFT for _ in range(3)
    )
    fam = D.FGVCAircraft(tmp_path, "test", h, annotation_level="family")
    assert set(_ids(fam)) == {f"family:{f}" for _, f, _ in AIRCRAFT}
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
        D.FGVCAircraft(tmp_path, "test", aircraft_hierarchy())


def test_aircraft_layout_and_label_errors(tmp_path):
    info = make_aircraft(tmp_path)
    (info["data"] / "images_variant_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="data/images_variant_val.txt not found under"):
        D.FGVCAircraft(tmp_path, "val", aircraft_hierarchy())
    h = aircraft_hierarchy().restrict(["variant:707-320", "variant:737-200", "variant:737-300"])
    with pytest.raises(UnknownLabelError, match=r"images_variant_test.txt:\d+: .*'variant:A320'"):
        D.FGVCAircraft(tmp_path, "test", h)
    shutil.rmtree(info["data"] / "images")
    with pytest.raises(FileNotFoundError, match="data/images not found"):
        D.FGVCAircraft(tmp_path, "test", aircraft_hierarchy())


# -------------------------------------------------------------------------- Cars
def test_cars_mat_layout(tmp_path):
    info = make_cars(tmp_path)
    h = cars_hierarchy()
    train = D.StanfordCars(tmp_path, "train", h, val_fraction=0.25)
    val = D.StanfordCars(tmp_path, "val", h, val_fraction=0.25)
    test = D.StanfordCars(tmp_path / "stanford_cars", "test", h)
    _check_contract(train, 9)
    _check_contract(test, info["num_test"])
    assert len(val) == 3 and sorted(_ids(val)) == sorted(h.leaves)
    # Record k of class c was written with colour (c * 60, j * 40, 0): targets follow the .mat.
    for i in range(len(test)):
        r = test[i][0].getpixel((8, 6))[0]
        assert h.leaves[round(r / 60) - 1] == _ids(test)[i]
    box = D.StanfordCars(tmp_path, "test", h, crop_to_bbox=True)[0][0]
    assert box.size == (10, 8)  # x1=3..x2=12, y1=2..y2=9 inclusive, 1-based


def test_cars_layout_errors(tmp_path):
    info = make_cars(tmp_path)
    (info["base"] / "cars_test_annos_withlabels.mat").unlink()
    D.StanfordCars(tmp_path, "train", cars_hierarchy())
    with pytest.raises(FileNotFoundError, match="cars_test_annos_withlabels.mat not found under"):
        D.StanfordCars(tmp_path, "test", cars_hierarchy())
    (info["base"] / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match="devkit/cars_meta.mat not found"):
        D.StanfordCars(tmp_path, "train", cars_hierarchy())


def test_cars_unknown_class(tmp_path):
    make_cars(tmp_path)
    h = cars_hierarchy().restrict(["Acura RL Sedan 2012", "Acura TL Sedan 2012"])
    with pytest.raises(UnknownLabelError, match="'AM General Hummer SUV 2000'"):
        D.StanfordCars(tmp_path, "train", h)


# ----------------------------------------------------------------------- CIFAR-100
def test_cifar100_pickles(tmp_path):
    info = make_cifar100(tmp_path)
    h = cifar_hierarchy()
    train = D.CIFAR100(tmp_path, "train", h)
    test = D.CIFAR100(tmp_path, "test", h)
    _check_contract(train, 36)
    _check_contract(test, info["num_test"])
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
        D.CIFAR100(tmp_path, "test", wrong)


def test_cifar100_and_fashion_label_out_of_range(tmp_path):
    import pickle

    from test_data_fixtures import write_idx

    make_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    entry = pickle.loads(path.read_bytes())
    entry["fine_labels"][5] = 7
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=r"test: fine label 7 of image 5 is not an index"):
        D.CIFAR100(tmp_path, "test", cifar_hierarchy())
    raw = tmp_path / "FashionMNIST" / "raw"
    make_fashion(raw)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 12] + [0] * 17, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: label 12 of image 2"):
        D.FashionMNIST(tmp_path, "test", fashion_hierarchy(), system_dir=None)


def test_cifar100_layout_error(tmp_path):
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta not found under"):
        D.CIFAR100(tmp_path, "test", cifar_hierarchy())


# ------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_raw_files(tmp_path):
    make_fashion(tmp_path / "FashionMNIST" / "raw")
    h = fashion_hierarchy()
    train = D.FashionMNIST(tmp_path, "train", h, system_dir=None)
    test = D.FashionMNIST(tmp_path, "test", h, system_dir=None)
    _check_contract(train, 50)
    assert len(test) == 20
    image, target = test[3]
    assert image.size == (28, 28) and image.mode == "L"
    assert h.nodes[target] == FASHION_CLASSES[3]
    assert image.getpixel((0, 0)) == 3 * 25


def test_fashion_mnist_from_system_gz_and_limit(tmp_path):
    make_fashion(tmp_path / "debian", gz=True)
    h = fashion_hierarchy()
    ds = D.FashionMNIST(tmp_path / "data", "trainval", h, system_dir=tmp_path / "debian",
                        max_per_class=2)  # fmt: skip
    assert (tmp_path / "data/FashionMNIST/raw/train-images-idx3-ubyte").is_file()
    assert len(ds) == 20
    assert torch.bincount(ds.targets).max() == 2
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte not found under .*raw"):
        D.FashionMNIST(tmp_path / "elsewhere", "test", h, system_dir=tmp_path / "none")


@pytest.mark.skipif(
    not Path(D.mnist.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_package(tmp_path):
    ds = D.FashionMNIST(tmp_path, "test", fashion_hierarchy(), max_per_class=5)
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
    ds = D.CSVDataset(tmp_path / "labels.csv", h)
    assert [h.nodes[t] if t >= 0 else None for t in ds.targets.tolist()] == [
        "001.Black_footed_Albatross", "Parulidae", "Parulidae", "Passeriformes", None,
    ]  # fmt: skip
    assert "order=1, family=2, species=1, unlabelled=1" in repr(ds)
    assert ds[2][1] == h.index("Parulidae")


def test_csv_tsv_without_header_and_root(tmp_path):
    make_folder_tree(tmp_path / "img")
    lines = ["Passeriformes/Parulidae/warbler_a.png\tParulidae"]
    (tmp_path / "x.tsv").write_text("\n".join(lines) + "\n")
    ds = D.CSVDataset(tmp_path / "x.tsv", bird_hierarchy(), root=tmp_path / "img")
    assert len(ds) == 1 and ds[0][0].size == (8, 8)


def test_csv_errors_name_file_and_line(tmp_path):
    h = bird_hierarchy()
    (tmp_path / "a.csv").write_text("path,label\nx.jpg,Parulidae\ny.jpg,Parulidea\n")
    with pytest.raises(UnknownLabelError, match=r"a.csv:3: label 'Parulidea' .*did you mean"):
        D.CSVDataset(tmp_path / "a.csv", h)
    (tmp_path / "b.csv").write_text("path,label\nx.jpg\n")
    with pytest.raises(ValueError, match=r"b.csv:2: expected a path and a label"):
        D.CSVDataset(tmp_path / "b.csv", h)
    with pytest.raises(FileNotFoundError, match="nothere.csv not found"):
        D.CSVDataset(tmp_path / "nothere.csv", h)
    # A display name shared by two nodes is ambiguous.
    twins = type(h).from_paths([("A", "x1"), ("B", "x2")], names={"x1": "X", "x2": "X"})
    (tmp_path / "c.csv").write_text("x.jpg,X\n")
    with pytest.raises(UnknownLabelError, match=r"c.csv:1: label 'X' is ambiguous"):
        D.CSVDataset(tmp_path / "c.csv", twins)


def test_csv_missing_image_raises_with_path(tmp_path):
    (tmp_path / "a.csv").write_text("gone.jpg,Parulidae\n")
    ds = D.CSVDataset(tmp_path / "a.csv", bird_hierarchy())
    with pytest.raises(D.BadSampleError, match=re.escape(str(tmp_path / "gone.jpg"))):
        ds[0]


# ------------------------------------------------------------------------ folder
def test_hierarchy_folder_is_its_own_hierarchy(tmp_path):
    info = make_folder_tree(tmp_path)
    ds = D.HierarchyFolder(tmp_path, level_names=["order", "family", "species"])
    h = ds.hierarchy
    _check_contract(ds, info["num_images"])
    assert h.level_sizes() == {"order": 2, "family": 3, "species": 5}
    assert h.name("Passeriformes/Parulidae") == "Parulidae"
    ids = _ids(ds)
    assert ids.count("Passeriformes/Parulidae") == 2  # family-level images
    assert ids.count("Passeriformes/Corvidae/005.Blue_Jay") == 4


def test_hierarchy_folder_with_given_hierarchy(tmp_path):
    make_folder_tree(tmp_path)
    ds = D.HierarchyFolder(tmp_path, bird_hierarchy())
    assert sorted(set(_ids(ds))) == sorted([*BIRD_CLASSES, "Parulidae"])
    shutil.rmtree(tmp_path / "Procellariiformes")
    write_image(tmp_path / "Gaviiformes" / "x.jpg")
    with pytest.raises(UnknownLabelError, match="Gaviiformes"):
        D.HierarchyFolder(tmp_path, bird_hierarchy())


def test_hierarchy_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder .*nope not found"):
        D.HierarchyFolder(tmp_path / "nope")
    write_image(tmp_path / "top.jpg")
    with pytest.raises(FileNotFoundError, match="no images"):
        D.HierarchyFolder(tmp_path)


# ------------------------------------------------------------------- generic bits
def test_subset_and_limit_per_class_keep_rows_aligned(cub):
    root, _ = cub
    ds = D.CUB200(root, "trainval", bird_hierarchy())
    small = D.limit_per_class(ds, 3)
    assert len(small) == 15 and torch.bincount(small.targets).max() == 3
    for i in range(len(small)):
        assert f"/{small.hierarchy.nodes[int(small.targets[i])]}/" in small.paths[i]
    assert isinstance(small.paths, np.ndarray)
    with pytest.raises(ValueError, match="expected .*50.* targets"):
        ds.with_targets(torch.zeros(3, dtype=torch.long))


def test_stratified_split_properties():
    targets = torch.tensor([0] * 10 + [1] * 3 + [2] * 1)
    keep, held = D.stratified_split(targets, 0.5, seed=0)
    assert torch.bincount(targets[held], minlength=3).tolist() == [5, 2, 0]
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(14))
    with pytest.raises(ValueError, match="`val_fraction` to be in"):
        D.stratified_split(targets, 1.0)
