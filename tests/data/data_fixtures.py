"""Builders of tiny datasets in each dataset's real on-disk layout (no tests here).

Every builder writes into a tmp folder and returns what the tests need to check against.
Images are 8x8 (or 16x12 for box crops) so that everything stays fast.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmc.hierarchy import Hierarchy

# ------------------------------------------------------------------ hierarchies
BIRD_PATHS = [
    ("Procellariiformes", "Diomedeidae", "001.Black_footed_Albatross"),
    ("Procellariiformes", "Diomedeidae", "002.Laysan_Albatross"),
    ("Passeriformes", "Parulidae", "003.Yellow_Warbler"),
    ("Passeriformes", "Parulidae", "004.Wilson_Warbler"),
    ("Passeriformes", "Corvidae", "005.Blue_Jay"),
]
BIRD_CLASSES = [p[-1] for p in BIRD_PATHS]


def bird_hierarchy() -> Hierarchy:
    """order > family > species with CUB-style species ids (a 5-species stand-in for cub200)."""
    names = {c: c.split(".", 1)[1].replace("_", " ") for c in BIRD_CLASSES}
    names["Parulidae"] = "New World Warblers"
    return Hierarchy.from_paths(
        BIRD_PATHS,
        level_names=["order", "family", "species"],
        names=names,
        metadata={"name": "birds-test"},
    )


AIRCRAFT = [  # (manufacturer, family, variant)
    ("Boeing", "Boeing 707", "707-320"),
    ("Boeing", "Boeing 737", "737-200"),
    ("Boeing", "Boeing 737", "737-300"),
    ("Airbus", "A320", "A320"),
]


def aircraft_hierarchy() -> Hierarchy:
    rows = [(f"manufacturer:{m}", f"family:{f}", f"variant:{v}") for m, f, v in AIRCRAFT]
    names = {node: node.split(":", 1)[1] for row in rows for node in row}
    return Hierarchy.from_paths(
        rows, level_names=["manufacturer", "family", "variant"], names=names
    )


CARS = [("SUV", "AM General Hummer SUV 2000"), ("Sedan", "Acura RL Sedan 2012"),
        ("Sedan", "Acura TL Sedan 2012")]  # fmt: skip


def cars_hierarchy() -> Hierarchy:
    return Hierarchy.from_paths(CARS, level_names=["type", "model"])


CIFAR = [("aquatic_mammals", "beaver"), ("aquatic_mammals", "dolphin"),
         ("fruit_and_vegetables", "apple"), ("fruit_and_vegetables", "orange")]  # fmt: skip
CIFAR_FINE = ["apple", "beaver", "dolphin", "orange"]  # alphabetical, as CIFAR's meta
CIFAR_COARSE = ["aquatic_mammals", "fruit_and_vegetables"]


def cifar_hierarchy() -> Hierarchy:
    return Hierarchy.from_paths(CIFAR, level_names=["superclass", "class"])


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
_FASHION_TYPE = {"T-shirt/top": "tops", "Pullover": "tops", "Shirt": "tops", "Coat": "tops",
                 "Dress": "one-piece", "Trouser": "bottoms", "Sandal": "shoes",
                 "Sneaker": "shoes", "Ankle boot": "shoes", "Bag": "bags"}  # fmt: skip
_FASHION_DOMAIN = {"tops": "clothing", "one-piece": "clothing", "bottoms": "clothing",
                   "shoes": "footwear", "bags": "accessories"}  # fmt: skip


def fashion_hierarchy() -> Hierarchy:
    rows = [(_FASHION_DOMAIN[_FASHION_TYPE[c]], _FASHION_TYPE[c], c) for c in FASHION_CLASSES]
    return Hierarchy.from_paths(rows, level_names=["domain", "type", "class"])


# ------------------------------------------------------------------------ images
def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", size, color).save(path, format=fmt)


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image")


# --------------------------------------------------------------------------- CUB
def make_cub(
    root: Path,
    classes: list[str] = BIRD_CLASSES,
    train_per_class: int = 10,
    test_per_class: int = 3,
) -> dict:
    """CUB_200_2011/ under ``root``; image ids interleave train and test like the original."""
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for cid, cls in enumerate(classes, 1):
        for j in range(train_per_class + test_per_class):
            image_id += 1
            rel = f"{cls}/{cls.split('.', 1)[1]}_{j:04d}_{image_id}.jpg"
            write_image(base / "images" / rel, (cid * 40 % 256, j * 10, 100), size=(16, 12))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
            split.append(f"{image_id} {int(j < train_per_class)}")
            boxes.append(f"{image_id} 2.0 1.0 10.0 8.0")
    _write(base / "images.txt", images)
    _write(base / "image_class_labels.txt", labels)
    _write(base / "train_test_split.txt", split)
    _write(base / "classes.txt", [f"{i} {c}" for i, c in enumerate(classes, 1)])
    _write(base / "bounding_boxes.txt", boxes)
    return {"base": base, "num_train": train_per_class * len(classes),
            "num_test": test_per_class * len(classes)}  # fmt: skip


# ----------------------------------------------------------------------- NABirds
NABIRDS_CLASSES = {  # id: name; 0 is the root
    0: "Birds", 1: "Ducks", 2: "Songbirds", 3: "Dabbling Ducks", 4: "Mallard",
    5: "American Wigeon", 6: "Wood Duck", 7: "Warblers", 8: "Yellow Warbler",
    9: "Myrtle Warbler (adult male)", 10: "Myrtle Warbler (female)", 11: "Yellow-rumped Warbler",
}  # fmt: skip
NABIRDS_PARENTS = {1: 0, 2: 0, 3: 1, 4: 3, 5: 3, 6: 1, 7: 2, 8: 7, 11: 7, 9: 11, 10: 11}
NABIRDS_IMAGES = {4: 4, 5: 3, 6: 4, 8: 4, 9: 3, 10: 3, 11: 2}  # class id: images (11: inner)


def make_nabirds(root: Path) -> dict:
    """nabirds/ with a ragged tree (leaves at depth 2, 3 and 4) and UUID image ids; class 11
    is an inner node with images of its own."""
    base = root / "nabirds"
    (base / "images").mkdir(parents=True)
    images, labels, split = [], [], []
    n = 0
    for cid, count in NABIRDS_IMAGES.items():
        for j in range(count):
            n += 1
            uuid = f"{n:08x}-0000-4000-8000-{cid:012x}"
            rel = f"{cid:04d}/{uuid.replace('-', '')}.jpg"
            write_image(base / "images" / rel, (cid * 20, j * 30, 60))
            images.append(f"{uuid} {rel}")
            labels.append(f"{uuid} {cid}")
            split.append(f"{uuid} {int(j != 0)}")
    _write(base / "images.txt", images)
    _write(base / "image_class_labels.txt", labels)
    _write(base / "train_test_split.txt", split)
    _write(base / "classes.txt", [f"{i} {name}" for i, name in NABIRDS_CLASSES.items()])
    _write(base / "hierarchy.txt", [f"{c} {p}" for c, p in NABIRDS_PARENTS.items()])
    return {"base": base, "num_images": n, "num_test": len(NABIRDS_IMAGES)}


# ---------------------------------------------------------------------- Aircraft
def make_aircraft(root: Path, per_variant: dict[str, int] | None = None) -> dict:
    """fgvc-aircraft-2013b/data/ with variant/family/manufacturer files for each split."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    per_split = {"train": 2, "val": 1, "test": 2}
    rows: dict[str, dict[str, list[str]]] = {
        lvl: {s: [] for s in per_split} for lvl in ("variant", "family", "manufacturer")
    }
    n = 1000000
    for m, f, v in AIRCRAFT:
        for split, count in per_split.items():
            for _ in range(count):
                n += 1
                write_image(data / "images" / f"{n:07d}.jpg", (n % 256, 50, 50))
                rows["variant"][split].append(f"{n:07d} {v}")
                rows["family"][split].append(f"{n:07d} {f}")
                rows["manufacturer"][split].append(f"{n:07d} {m}")
    for lvl, splits in rows.items():
        for split, lines in splits.items():
            _write(data / f"images_{lvl}_{split}.txt", lines)
        trainval = splits["train"] + splits["val"]
        _write(data / f"images_{lvl}_trainval.txt", trainval)
    _write(data / "variants.txt", [v for _, _, v in AIRCRAFT])
    _write(data / "families.txt", sorted({f for _, f, _ in AIRCRAFT}))
    _write(data / "manufacturers.txt", sorted({m for m, _, _ in AIRCRAFT}))
    return {"data": data, "per_split": {s: c * len(AIRCRAFT) for s, c in per_split.items()}}


# -------------------------------------------------------------------------- Cars
def make_cars(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> dict:
    """stanford_cars/ as torchvision expects, .mat files written with scipy."""
    import scipy.io

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    class_names = [m for _, m in CARS]
    meta = np.empty((len(class_names),), dtype=object)
    meta[:] = class_names
    scipy.io.savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": meta[None, :]})
    for split, count, mat in (
        ("train", train_per_class, base / "devkit" / "cars_train_annos.mat"),
        ("test", test_per_class, base / "cars_test_annos_withlabels.mat"),
    ):
        recs = []
        for cls in range(1, len(class_names) + 1):
            for j in range(count):
                fname = f"{len(recs) + 1:05d}.jpg"
                write_image(base / f"cars_{split}" / fname, (cls * 60, j * 40, 0), size=(16, 12))
                recs.append((3, 2, 12, 9, cls, fname))  # x1 y1 x2 y2 (1-based inclusive)
        dtype = [(k, "O") for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
        arr = np.array(recs, dtype=dtype)
        scipy.io.savemat(str(mat), {"annotations": arr[None, :]})
    return {"base": base, "num_train": train_per_class * len(CARS),
            "num_test": test_per_class * len(CARS)}  # fmt: skip


# ---------------------------------------------------------------------- CIFAR-100
def make_cifar100(root: Path, train_per_class: int = 10, test_per_class: int = 3) -> dict:
    """cifar-100-python/{train,test,meta} pickles in the real format."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    coarse_of = {f: CIFAR_COARSE.index(c) for c, f in CIFAR}
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        fine = [i for i, _ in enumerate(CIFAR_FINE) for _ in range(count)]
        data = np.zeros((len(fine), 3072), dtype=np.uint8)
        data[:, :1024] = np.array(fine, dtype=np.uint8)[:, None] * 50  # red channel = class
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(fine))],
            "batch_label": f"{split} batch",
            "fine_labels": fine,
            "coarse_labels": [coarse_of[CIFAR_FINE[f]] for f in fine],
            "data": data,
        }
        with open(base / split, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR_FINE, "coarse_label_names": CIFAR_COARSE}, f)
    return {"base": base, "num_train": train_per_class * 4, "num_test": test_per_class * 4}


# ----------------------------------------------------------------- Fashion-MNIST
def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An IDX file (the MNIST format): magic 0x0000080N, big-endian dims, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion(folder: Path, train_per_class: int = 6, test_per_class: int = 2, gz=False):
    """The four Fashion-MNIST raw files (optionally .gz, as the Debian package has them)."""
    for prefix, count in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), count)  # class order 0..9, 0..9, ...
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        images[:, :, :14] = labels[:, None, None] * 25
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return {"num_train": 10 * train_per_class, "num_test": 10 * test_per_class}


# ---------------------------------------------------------------- CSV and folders
def make_folder_tree(root: Path) -> dict:
    """order/family/species/img.jpg plus two family-level images (mixed granularity)."""
    n = 0
    for order, family, species in BIRD_PATHS:
        for j in range(4):
            write_image(root / order / family / species / f"{j}.jpg")
            n += 1
    write_image(root / "Passeriformes" / "Parulidae" / "warbler_a.png")
    write_image(root / "Passeriformes" / "Parulidae" / "warbler_b.png")
    (root / "README.txt").write_text("not an image\n")
    return {"num_images": n + 2}


def node_ids(ds) -> list[str]:
    return [ds.hierarchy.nodes[t] for t in ds.targets.tolist()]


def check_contract(ds, n: int) -> None:
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


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
