"""FGVC-Aircraft (``fgvc-aircraft-2013b``), labelled by variant, family or manufacturer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hmc.checks import check_choice
from hmc.data._base import SPLITS, ImageFileDataset, check_split
from hmc.data._layout import LabelResolver, find_root, read_rows, require, unique_rows
from hmc.hierarchy import Hierarchy, HierarchyError, load_hierarchy

__all__ = ["FGVCAircraft"]

LEVELS = ("variant", "family", "manufacturer")


class FGVCAircraft(ImageFileDataset):
    """FGVC-Aircraft as distributed: ``root`` is ``fgvc-aircraft-2013b/`` or its parent (what
    torchvision's ``FGVCAircraft(download=True)`` extracts), holding
    ``data/images_<level>_<split>.txt`` for level in variant/family/manufacturer,
    ``data/variants.txt`` and ``data/images/``.

    Splits are the official ``train``, ``val``, ``trainval`` and ``test``. Each image is
    labelled at ``annotation_level`` (default ``variant``) with node id ``<level>:<name>``,
    as in the shipped ``aircraft`` hierarchy. The other levels' files, when present, must
    agree with the hierarchy (an image whose family file says X while its variant sits under
    Y is an error naming both), which catches a hierarchy that does not fit the data.
    ``prepare(root, download=True)`` downloads it through torchvision.
    """

    hierarchy_name = "aircraft"

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        *,
        hierarchy: str | Path | Hierarchy | None = None,
        annotation_level: str = "variant",
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_split(type(self), split, SPLITS)
        check_choice("annotation_level", annotation_level, LEVELS)
        h = load_hierarchy(self.default_hierarchy(root) if hierarchy is None else hierarchy)
        self.root = base = find_root(root, "fgvc-aircraft-2013b", "data", "FGVCAircraft")
        data = base / "data"
        label_file = f"images_{annotation_level}_{split}.txt"
        require(
            base, ["data", "data/images", "data/variants.txt", f"data/{label_file}"], "FGVCAircraft"
        )
        self.split = split
        self.annotation_level = annotation_level

        labels = {level: _read_labels(data / f"images_{level}_{split}.txt") for level in LEVELS}
        image_names = list(labels[annotation_level])
        resolve = LabelResolver(h, allow_names=False)
        targets, origins = [], []
        for lineno, label in labels[annotation_level].values():
            origins.append(f"{data / label_file}:{lineno}")
            targets.append(resolve(f"{annotation_level}:{label}", origins[-1]))
        self._check_levels(h, labels, annotation_level, data, split)
        super().__init__(
            h,
            [str(data / "images" / f"{n}.jpg") for n in image_names],
            torch.tensor(targets, dtype=torch.long),
            origins=origins,
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )

    @staticmethod
    def _check_levels(
        h: Hierarchy,
        labels: dict[str, dict[str, tuple[int, str]] | None],
        annotated: str,
        data: Path,
        split: str,
    ) -> None:
        """Every level file present must name the hierarchy ancestor of the image's label."""
        primary = labels[annotated] or {}
        cache: dict[tuple[str, str], set[str]] = {}
        for level in LEVELS:
            other = labels[level]
            if level == annotated or other is None:
                continue
            for image, (lineno, label) in other.items():
                if image not in primary:
                    continue
                node = f"{annotated}:{primary[image][1]}"
                key = (node, level)
                if key not in cache:
                    cache[key] = {a for a in h.ancestors(node) if a.startswith(f"{level}:")}
                ancestors = cache[key]
                expect = f"{level}:{label}"
                if expect in h and ancestors and expect not in ancestors:
                    raise HierarchyError(
                        f"{data / f'images_{level}_{split}.txt'}:{lineno}: image {image} is a "
                        f"{expect!r}, but the hierarchy puts {node!r} under {sorted(ancestors)}"
                    )

    @classmethod
    def has_val_split(cls, root: str | Path) -> bool:
        return True

    @classmethod
    def prepare(cls, root: str | Path, download: bool = False, **dataset_kwargs: Any) -> None:
        """Download through torchvision when ``download`` (into ``root/fgvc-aircraft-2013b``)."""
        if download:
            from torchvision.datasets import FGVCAircraft as TV

            TV(str(root), download=True)

    def extra_repr(self) -> str:
        return (
            f"split={self.split!r}, annotation_level={self.annotation_level!r}, root='{self.root}'"
        )


def _read_labels(path: Path) -> dict[str, tuple[int, str]] | None:
    """image name -> (line number, label) of an ``images_<level>_<split>.txt`` file; a
    repeated line is dropped with a warning, a contradicting one is an error."""
    if not path.is_file():
        return None
    rows = [(lineno, name, label) for lineno, (name, label) in read_rows(path, 2, split_all=False)]
    keep = unique_rows(
        [name for _, name, _ in rows], [label for *_, label in rows],
        [f"{path}:{lineno}" for lineno, *_ in rows],
    )  # fmt: skip
    return {rows[i][1]: (rows[i][0], rows[i][2]) for i in keep}
