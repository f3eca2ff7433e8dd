"""CUB-200 and NABirds on fixtures in their real layout (targets, splits, layout errors,
unknown labels, duplicate rows), bad images and skipping them across workers, subsets and the
one train/val carve."""

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
    trainval = D.CUB200(root / "CUB_200_2011", "trainval", hierarchy=h)  # root at either level
    train, val = D.train_val_split(D.CUB200(root, "trainval", hierarchy=h), 0.1)
    test = D.CUB200(root, "test", hierarchy=h)
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
    assert "split='train'" in repr(train) and "split='val'" in repr(val)


def test_cub_val_split_is_seeded_and_deterministic(cub):
    root, _ = cub
    pool = D.CUB200(root, "trainval", hierarchy=bird_hierarchy())
    a = D.train_val_split(pool, 0.3, seed=1)[1]
    torch.manual_seed(123)  # the global RNG must not matter
    b = D.train_val_split(pool, 0.3, seed=1)[1]
    c = D.train_val_split(pool, 0.3, seed=2)[1]
    assert list(a.paths) == list(b.paths)
    assert list(a.paths) != list(c.paths)
    assert len(a) == 15  # round(0.3 * 10) per class


@pytest.mark.parametrize("split", ["train", "val"])
def test_datasets_without_a_val_split_do_not_carve_one_themselves(cub, split):
    """Train/val is carved in one place (train_val_split); the dataset only loads."""
    with pytest.raises(ValueError, match=rf"no official '{split}' split .*train_val_split"):
        D.CUB200(cub[0], split, hierarchy=bird_hierarchy())
    assert not D.CUB200.has_val_split(cub[0])


def test_cub_bounding_box_crop(cub):
    root, _ = cub
    image, _ = D.CUB200(root, "test", hierarchy=bird_hierarchy(), crop_to_bbox=True)[0]
    assert image.size == (10, 8)  # boxes are x=2 y=1 w=10 h=8 on 16x12 images
    assert D.CUB200(root, "test", hierarchy=bird_hierarchy())[0][0].size == (16, 12)


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
        D.CUB200(root, "trainval", hierarchy=bird_hierarchy())


def test_cub_bounding_boxes_required_only_to_crop(cub):
    root, _ = cub
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    D.CUB200(root, "trainval", hierarchy=bird_hierarchy())
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt not found"):
        D.CUB200(root, "trainval", hierarchy=bird_hierarchy(), crop_to_bbox=True)


def test_cub_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder .*nowhere not found"):
        D.CUB200(tmp_path / "nowhere", "trainval", hierarchy=bird_hierarchy())


def test_cub_unknown_class_names_it(cub):
    root, _ = cub
    h = bird_hierarchy().restrict(BIRD_CLASSES[:4])  # no 005.Blue_Jay
    with pytest.raises(UnknownLabelError, match=r"image_class_labels.txt.*'005.Blue_Jay'"):
        D.CUB200(root, "trainval", hierarchy=h)


def test_cub_malformed_rows_name_file_and_line(cub):
    root, _ = cub
    labels = root / "CUB_200_2011" / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[2] = "3"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt:3: expected 2 fields"):
        D.CUB200(root, "trainval", hierarchy=bird_hierarchy())
    lines[2] = "3 99"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"class id '99', which classes.txt does not list"):
        D.CUB200(root, "trainval", hierarchy=bird_hierarchy())


def test_bad_split_argument(cub):
    root, _ = cub
    with pytest.raises(ValueError, match=r"Expected argument `split` to be one of .*'tra'"):
        D.CUB200(root, "tra", hierarchy=bird_hierarchy())


# ------------------------------------------------------------------ bad samples
def _first_paths(ds, k):
    return [ds.paths[i] for i in range(k)]


def test_missing_and_corrupt_images_raise_with_the_path(cub):
    root, _ = cub
    ds = D.CUB200(root, "test", hierarchy=bird_hierarchy())
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
def test_skip_bad_samples_drops_them_and_warns_once(cub, num_workers, monkeypatch):
    root, _ = cub
    monkeypatch.setattr(D.samplers, "_warned", False)  # once per process: start afresh
    tf = D.build_transforms("small", train=False, image_size=8)
    ds = D.CUB200(root, "trainval", hierarchy=bird_hierarchy(), on_bad_sample="skip", transform=tf)
    bad = [3, 17, 31, 44]  # spread so that both workers meet some
    for i in bad[:2]:
        corrupt(Path(ds.paths[i]))
    for i in bad[2:]:
        os.remove(ds.paths[i])
    assert ds[3] is None
    loader = DataLoader(
        ds, batch_size=4, num_workers=num_workers, collate_fn=D.skip_bad_collate,
        persistent_workers=num_workers > 0,
    )  # fmt: skip
    if num_workers:
        with warnings.catch_warnings():  # a worker's warning, raised, reaches the main process
            warnings.simplefilter("error", D.SkippedSamplesWarning)
            one_off = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=D.skip_bad_collate)
            with pytest.raises(D.SkippedSamplesWarning, match="skipped 1 of 4 samples"):
                next(iter(one_off))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(2):
            assert sum(len(y) for _, y in loader) == 50 - len(bad)
    shown = [w for w in rec if issubclass(w.category, D.SkippedSamplesWarning)]
    if num_workers == 0:  # two passes, one warning
        assert len(shown) == 1 and "skipped 1 of 4 samples" in str(shown[0].message)


def test_skip_collate_all_bad_batch():
    with pytest.raises(RuntimeError, match="all 2 samples of a batch failed"):
        D.skip_bad_collate([None, None])


def test_no_warning_without_bad_samples(cub, monkeypatch):
    root, _ = cub
    monkeypatch.setattr(D.samplers, "_warned", False)
    tf = D.build_transforms("small", train=False, image_size=8)
    ds = D.CUB200(root, "test", hierarchy=bird_hierarchy(), on_bad_sample="skip", transform=tf)
    loader = DataLoader(ds, batch_size=8, collate_fn=D.skip_bad_collate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(len(y) for _, y in loader) == 15


def test_on_bad_sample_choice(cub):
    with pytest.raises(ValueError, match=r"`on_bad_sample` to be one of \['raise', 'skip'\]"):
        D.CUB200(cub[0], "test", hierarchy=bird_hierarchy(), on_bad_sample="ignore")


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
        D.NABirds(tmp_path, "trainval")
    # With an explicit hierarchy hierarchy.txt is not needed, but images.txt is.
    (tmp_path / "nabirds" / "images.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images.txt not found under"):
        D.NABirds(tmp_path, "trainval", hierarchy=bird_hierarchy())


# ------------------------------------------------------------------- generic bits
def test_subset_and_limit_per_class_keep_rows_aligned(cub):
    root, _ = cub
    ds = D.CUB200(root, "trainval", hierarchy=bird_hierarchy())
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


# ------------------------------------------------------------------ duplicate rows
def _edit(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def test_cub_repeated_rows_are_dropped_with_one_warning(cub):
    root, info = cub
    base = root / "CUB_200_2011"
    _edit(base / "image_class_labels.txt", lambda ls: [*ls, ls[0], ls[1]])
    _edit(base / "images.txt", lambda ls: [*ls, ls[2]])
    with pytest.warns(D.DuplicateRowsWarning, match=r"dropped 2 duplicate row\(s\)") as rec:
        ds = D.CUB200(root, "trainval", hierarchy=bird_hierarchy())
    assert len(ds) == info["num_train"] and len(set(ds.paths)) == len(ds)
    assert any("dropped 1 duplicate" in str(w.message) for w in rec)  # images.txt's own


def test_cub_conflicting_rows_name_the_file_lines_and_image(cub):
    root, _ = cub
    base = root / "CUB_200_2011"
    labels = base / "image_class_labels.txt"
    _edit(labels, lambda ls: [*ls, "1 5"])  # image 1 is class 1 on line 1
    n = len(labels.read_text().splitlines())
    with pytest.raises(
        ValueError, match=rf"image_class_labels.txt:1 and .*image_class_labels.txt:{n}: image 1 "
    ):
        D.CUB200(root, "trainval", hierarchy=bird_hierarchy())
    _edit(labels, lambda ls: ls[:-1])
    # One image file under a second id, with another class: one image, two labels.
    first = (base / "images.txt").read_text().split("\n", 1)[0].split(" ", 1)[1]
    _edit(base / "images.txt", lambda ls: [*ls, f"999 {first}"])
    _edit(labels, lambda ls: [*ls, "999 5"])
    _edit(base / "train_test_split.txt", lambda ls: [*ls, "999 1"])
    with pytest.raises(ValueError, match=rf"images.txt:1 and .*images.txt:\d+: image {first} "):
        D.CUB200(root, "trainval", hierarchy=bird_hierarchy())


def test_one_image_in_train_and_test_is_an_error(cub):
    root, _ = cub
    base = root / "CUB_200_2011"
    first = (base / "images.txt").read_text().split("\n", 1)[0].split(" ", 1)[1]
    _edit(base / "images.txt", lambda ls: [*ls, f"999 {first}"])
    _edit(base / "image_class_labels.txt", lambda ls: [*ls, "999 1"])
    _edit(base / "train_test_split.txt", lambda ls: [*ls, "999 0"])  # image 1 is train
    with pytest.raises(
        ValueError,
        match=r"twice, with \(label, split\) \('001.Black_footed_Albatross', 'trainval'\) and",
    ):
        D.CUB200(root, "test", hierarchy=bird_hierarchy())


# -------------------------------------------------------------------- 16-bit images
def test_16_bit_grey_png_is_scaled_to_8_bit(tmp_path):
    from PIL import Image

    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)
    path = tmp_path / "a" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    image = D.pil_loader(str(path))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image)[..., 0], (ramp // 257).astype(np.uint8))
    assert D.HierarchyFolder(tmp_path)[0][0].getpixel((15, 15)) == (255, 255, 255)
    assert D.HierarchyFolder(tmp_path)[0][0].getpixel((0, 8)) == (128, 128, 128)
