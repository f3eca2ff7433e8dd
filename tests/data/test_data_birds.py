"""CUB-200 and NABirds on fixtures in their real layout (targets, splits, layout errors,
unknown labels), bad images and skipping them across workers, subsets and splits."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    BIRD_CLASSES,
    NABIRDS_IMAGES,
    bird_hierarchy,
    check_contract,
    corrupt,
    make_cub,
    make_nabirds,
    node_ids,
    write_image,
)
from torch.utils.data import DataLoader

import hmc.data as D
from hmc.hierarchy import UnknownLabelError


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
    check_contract(train, 45)
    check_contract(test, info["num_test"])
    assert len(trainval) == info["num_train"] and len(val) == 5  # 10 % of 10 per class
    assert sorted(set(train.paths) | set(val.paths)) == sorted(trainval.paths)
    assert not set(train.paths) & set(val.paths)
    assert not set(trainval.paths) & set(test.paths)
    # Stratified: one val image per class; every target is the species of the image's folder.
    assert sorted(node_ids(val)) == BIRD_CLASSES
    for path, node in zip(train.paths, node_ids(train), strict=True):
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
    check_contract(trainval, info["num_images"] - info["num_test"])
    assert len(test) == info["num_test"]
    # Class 11 (Yellow-rumped Warbler) is an inner node with images of its own.
    all_ids = node_ids(trainval) + node_ids(test)
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
