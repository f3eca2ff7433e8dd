"""CUB-200-2011 and NABirds, both in the Caltech-UCSD / Visipedia layout they ship in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from hmc.data._base import ImageFileDataset, check_split
from hmc.data._layout import LabelResolver, find_root, read_rows, require, unique_rows
from hmc.hierarchy import Hierarchy, load_hierarchy

__all__ = ["CUB200", "NABirds"]

SPLITS = ("trainval", "test")


class _Annotations(NamedTuple):
    """The Visipedia tables joined on image id, in ``images.txt`` order (n images)."""

    image_ids: list[str]
    paths: list[str]  # relative to images/
    class_ids: list[str]
    is_train: torch.Tensor  # [n] bool
    boxes: torch.Tensor | None  # [n, 4] float64 (x, y, width, height)
    origins: list[str]  # "images.txt:<line>"


def _read_visipedia(root: Path, boxes: bool) -> _Annotations:
    """Read ``images.txt`` and join ``image_class_labels.txt``, ``train_test_split.txt`` (and
    ``bounding_boxes.txt``) to it. Every image needs exactly one row in each file; a row
    repeated verbatim is dropped with a warning, a contradicting one is an error."""
    image_ids: list[str] = []
    rel_paths: list[str] = []
    origins: list[str] = []
    for lineno, (image_id, rel) in read_rows(root / "images.txt", 2, split_all=False):
        image_ids.append(image_id)
        rel_paths.append(rel.strip())
        origins.append(f"{root / 'images.txt'}:{lineno}")
    keep = unique_rows(image_ids, rel_paths, origins, what="path")
    image_ids, rel_paths, origins = ([v[i] for i in keep] for v in (image_ids, rel_paths, origins))
    row_of = {image_id: i for i, image_id in enumerate(image_ids)}

    def per_image(name: str, num_fields: int) -> list[list[str]]:
        where = root / name
        ids, fields, lines = [], [], []
        for lineno, (image_id, *rest) in read_rows(where, num_fields):
            if image_id not in row_of:
                raise ValueError(f"{where}:{lineno}: image id {image_id!r} is not in images.txt")
            ids.append(image_id)
            fields.append(rest)
            lines.append(f"{where}:{lineno}")
        rows = {row_of[ids[i]]: fields[i] for i in unique_rows(ids, fields, lines, what="row")}
        missing = [image_ids[i] for i in range(len(image_ids)) if i not in rows]
        if missing:
            raise ValueError(
                f"{where}: no row for {len(missing)} image(s) of images.txt, e.g. id {missing[0]!r}"
            )
        return [rows[i] for i in range(len(image_ids))]

    class_ids = [c for (c,) in per_image("image_class_labels.txt", 2)]
    is_train = torch.tensor([f == "1" for (f,) in per_image("train_test_split.txt", 2)])
    box_t = None
    if boxes:
        rows = per_image("bounding_boxes.txt", 5)
        box_t = torch.tensor([[float(v) for v in b] for b in rows], dtype=torch.float64)
    return _Annotations(image_ids, rel_paths, class_ids, is_train, box_t, origins)


class _VisipediaDataset(ImageFileDataset):
    """Shared reader of ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``classes.txt``, ``bounding_boxes.txt`` and ``images/``."""

    _name = "dataset"
    _folder = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        *,
        hierarchy: str | Path | Hierarchy | None = None,
        crop_to_bbox: bool = False,
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_split(type(self), split, SPLITS)
        hierarchy = load_hierarchy(self.default_hierarchy(root) if hierarchy is None else hierarchy)
        self.root = root = find_root(root, self._folder, "images.txt", self._name)
        files = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
        files += ["bounding_boxes.txt"] if crop_to_bbox else []
        require(root, [*files, "images"], self._name)
        self.split = split

        ann = _read_visipedia(root, boxes=crop_to_bbox)
        class_node = self._class_nodes(root / "classes.txt")
        resolve = LabelResolver(hierarchy, allow_names=False)
        where = root / "image_class_labels.txt"
        targets = []
        for image_id, class_id in zip(ann.image_ids, ann.class_ids, strict=True):
            if class_id not in class_node:
                raise ValueError(
                    f"{where}: image {image_id!r} has class id {class_id!r}, "
                    f"which classes.txt does not list"
                )
            targets.append(
                resolve(class_node[class_id], f"{where} (image {image_id}, class {class_id})")
            )
        # One image under two ids: both rows must agree on label and split.
        split_of = ("test", "trainval")
        labels = [
            (hierarchy.nodes[t], split_of[s])
            for t, s in zip(targets, ann.is_train.tolist(), strict=True)
        ]
        unique = torch.zeros(len(labels), dtype=torch.bool)
        unique[unique_rows(ann.paths, labels, ann.origins, what="(label, split)")] = True
        in_split = ann.is_train if split == "trainval" else ~ann.is_train
        rows = (unique & in_split).nonzero().flatten()
        super().__init__(
            hierarchy,
            [str(root / "images" / ann.paths[i]) for i in rows.tolist()],
            torch.tensor(targets, dtype=torch.long)[rows],
            boxes=None if ann.boxes is None else ann.boxes[rows],
            origins=[ann.origins[i] for i in rows.tolist()],
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )

    def _class_nodes(self, path: Path) -> dict[str, str]:
        raise NotImplementedError


class CUB200(_VisipediaDataset):
    """CUB-200-2011 as distributed (``CUB_200_2011.tgz``).

    ``root`` is ``CUB_200_2011/`` or its parent, holding ``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``images/`` and,
    for ``crop_to_bbox=True``, ``bounding_boxes.txt``.

    Splits: the official ``"trainval"`` (training set) and ``"test"``. There is no official
    val split: :func:`hmc.data.train_val_split` carves one from ``"trainval"``, so that
    checkpoints are selected without touching the test set.

    Targets are columns of ``hierarchy`` (default the shipped ``cub200``; ``cub200-hrn``,
    ``cub200-4level`` or any hierarchy whose species ids are CUB's class folder names, such as
    ``001.Black_footed_Albatross``).
    """

    _name = "CUB200"
    _folder = "CUB_200_2011"
    hierarchy_name = "cub200"

    def _class_nodes(self, path: Path) -> dict[str, str]:
        # classes.txt: "<class id> <NNN.Class_Name>"; the folder name is the species' node id.
        return {cid: name.strip() for _, (cid, name) in read_rows(path, 2, split_all=False)}


class NABirds(_VisipediaDataset):
    """NABirds as distributed (``nabirds.tar.gz``): ``root`` is ``nabirds/`` or its parent,
    holding ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``classes.txt``, ``hierarchy.txt``, ``images/`` (and ``bounding_boxes.txt`` to crop).

    The hierarchy defaults to NABirds' own ragged tree (``classes.txt`` + ``hierarchy.txt``,
    read by :meth:`Hierarchy.from_file`), whose node ids are the class ids; every image is
    labelled at its annotated node. Splits as in :class:`CUB200`.
    """

    _name = "NABirds"
    _folder = "nabirds"

    @classmethod
    def default_hierarchy(cls, root: str | Path) -> Hierarchy:
        """NABirds' own tree from ``classes.txt`` + ``hierarchy.txt`` under ``root``."""
        folder = find_root(root, cls._folder, "hierarchy.txt", cls._name)
        require(folder, ["classes.txt", "hierarchy.txt"], cls._name)
        return Hierarchy.from_file(folder)

    def _class_nodes(self, path: Path) -> dict[str, str]:
        # Node ids are the class ids themselves (as strings), as Hierarchy.from_file reads them.
        return {cid: cid for _, (cid, _name) in read_rows(path, 2, split_all=False)}
