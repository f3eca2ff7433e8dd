"""FGVC-Aircraft (``fgvc-aircraft-2013b``), labelled by variant, family or manufacturer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from hmc.data._base import SPLITS, ImageFileDataset, as_hierarchy, check_choice
from hmc.data._layout import LabelResolver, find_root, read_rows, require
from hmc.hierarchy import Hierarchy, HierarchyError

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
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        hierarchy: str | Path | Hierarchy = "aircraft",
        *,
        annotation_level: str = "variant",
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_choice("split", split, SPLITS)
        check_choice("annotation_level", annotation_level, LEVELS)
        h = as_hierarchy(hierarchy)
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
        targets = []
        for lineno, label in labels[annotation_level].values():
            targets.append(resolve(f"{annotation_level}:{label}", f"{data / label_file}:{lineno}"))
        self._check_levels(h, labels, annotation_level, data, split)
        super().__init__(
            [str(data / "images" / f"{n}.jpg") for n in image_names],
            torch.tensor(targets, dtype=torch.long),
            h,
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

    def extra_repr(self) -> str:
        return (
            f"split={self.split!r}, annotation_level={self.annotation_level!r}, root='{self.root}'"
        )


def _read_labels(path: Path) -> dict[str, tuple[int, str]] | None:
    """image name -> (line number, label) of an ``images_<level>_<split>.txt`` file."""
    if not path.is_file():
        return None
    return {name: (lineno, label) for lineno, (name, label) in read_rows(path, 2, split_all=False)}
