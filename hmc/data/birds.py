"""CUB-200-2011 and NABirds, both in the Caltech-UCSD / Visipedia layout they ship in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from hmc.data._base import SPLITS, ImageFileDataset, as_hierarchy, check_choice, split_rows
from hmc.data._layout import LabelResolver, find_root, read_rows, require
from hmc.hierarchy import Hierarchy

__all__ = ["CUB200", "NABirds"]


class _VisipediaDataset(ImageFileDataset):
    """Shared reader of ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``classes.txt``, ``bounding_boxes.txt`` and ``images/``."""

    _name = "dataset"
    _folder = ""
    _default_hierarchy = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        hierarchy: str | Path | Hierarchy | None = None,
        *,
        val_fraction: float = 0.1,
        seed: int = 0,
        crop_to_bbox: bool = False,
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_choice("split", split, SPLITS)
        hierarchy = as_hierarchy(self.default_hierarchy(root) if hierarchy is None else hierarchy)
        self.root = root = find_root(root, self._folder, "images.txt", self._name)
        files = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
        files += ["bounding_boxes.txt"] if crop_to_bbox else []
        require(root, [*files, "images"], self._name)
        self.split = split

        image_ids: list[str] = []
        rel_paths: list[str] = []
        for _, (image_id, rel) in read_rows(root / "images.txt", 2, split_all=False):
            image_ids.append(image_id)
            rel_paths.append(rel.strip())
        row_of = {image_id: i for i, image_id in enumerate(image_ids)}

        def per_image(name: str, num_fields: int) -> list[list[str]]:
            """Rows of ``name`` keyed to images.txt order; every image needs exactly one."""
            rows: list[list[str] | None] = [None] * len(image_ids)
            for lineno, parts in read_rows(root / name, num_fields):
                i = row_of.get(parts[0])
                if i is None:
                    raise ValueError(
                        f"{root / name}:{lineno}: image id {parts[0]!r} is not in images.txt"
                    )
                rows[i] = parts[1:]
            missing = [image_ids[i] for i, r in enumerate(rows) if r is None]
            if missing:
                raise ValueError(
                    f"{root / name}: no row for {len(missing)} image(s) of images.txt, "
                    f"e.g. id {missing[0]!r}"
                )
            return rows  # type: ignore[return-value]

        class_node = self._class_nodes(root / "classes.txt")
        resolve = LabelResolver(hierarchy, allow_names=False)
        labels = per_image("image_class_labels.txt", 2)
        targets = []
        where = root / "image_class_labels.txt"
        for image_id, (class_id,) in zip(image_ids, labels, strict=True):
            if class_id not in class_node:
                raise ValueError(
                    f"{where}: image {image_id!r} has class id {class_id!r}, "
                    f"which classes.txt does not list"
                )
            targets.append(
                resolve(class_node[class_id], f"{where} (image {image_id}, class {class_id})")
            )
        targets_t = torch.tensor(targets, dtype=torch.long)
        flags = per_image("train_test_split.txt", 2)
        is_train = torch.tensor([f[0] == "1" for f in flags], dtype=torch.bool)
        boxes = None
        if crop_to_bbox:
            boxes = torch.tensor(
                [[float(v) for v in b] for b in per_image("bounding_boxes.txt", 5)],
                dtype=torch.float64,
            )

        rows = split_rows(targets_t, is_train, split, val_fraction, seed)
        image_dir = root / "images"
        super().__init__(
            [str(image_dir / rel_paths[i]) for i in rows.tolist()],
            targets_t[rows],
            hierarchy,
            boxes=None if boxes is None else boxes[rows],
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )

    @classmethod
    def default_hierarchy(cls, root: str | Path) -> Hierarchy:
        """The hierarchy used when none is given (a shipped tree by default)."""
        return as_hierarchy(cls._default_hierarchy)

    def _class_nodes(self, path: Path) -> dict[str, str]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"split={self.split!r}, root='{self.root}'"


class CUB200(_VisipediaDataset):
    """CUB-200-2011 as distributed (``CUB_200_2011.tgz``).

    ``root`` is ``CUB_200_2011/`` or its parent, holding ``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``, ``images/`` and,
    for ``crop_to_bbox=True``, ``bounding_boxes.txt``.

    Splits: ``"test"`` is the official test set; ``"trainval"`` the official training set;
    ``"train"`` and ``"val"`` divide it per class, deterministically from ``seed``
    (``val_fraction`` of each class, rounded, to val), so that checkpoints are selected
    without touching the test set.

    Targets are columns of ``hierarchy`` (default the shipped ``cub200``; ``cub200-hrn``,
    ``cub200-4level`` or any hierarchy whose species ids are CUB's class folder names, such as
    ``001.Black_footed_Albatross``).
    """

    _name = "CUB200"
    _folder = "CUB_200_2011"
    _default_hierarchy = "cub200"

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
