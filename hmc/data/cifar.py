"""CIFAR-100 (20 superclasses > 100 classes) from its pickled python layout."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmc.data._base import ArrayDataset, check_split
from hmc.data._layout import LabelResolver, find_root, require
from hmc.hierarchy import Hierarchy, HierarchyError, load_hierarchy

__all__ = ["CIFAR100"]


class CIFAR100(ArrayDataset):
    """CIFAR-100 in the layout torchvision downloads: ``root`` is ``cifar-100-python/`` or its
    parent, holding the pickles ``train``, ``test`` and ``meta``.

    The files are read directly (torchvision's loader insists on the official checksums), all
    50k/10k images in memory as uint8. Each image is labelled at its fine class (node id =
    torchvision's class name, e.g. ``apple``); the pickled superclass must be that class's
    ancestor whenever the hierarchy has a node of that name. Splits: the official
    ``trainval`` (training set) and ``test``; :func:`hmc.data.train_val_split` carves a val
    split. ``prepare(root, download=True)`` downloads it through torchvision.
    """

    hierarchy_name = "cifar100"
    default_preset = "small"
    default_image_size = 32

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        *,
        hierarchy: str | Path | Hierarchy | None = None,
        transform: Callable | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_split(type(self), split, ("trainval", "test"))
        h = load_hierarchy(self.default_hierarchy(root) if hierarchy is None else hierarchy)
        self.root = base = find_root(root, "cifar-100-python", "meta", "CIFAR100")
        file = "test" if split == "test" else "train"
        require(base, ["meta", file], "CIFAR100")
        self.split = split
        meta = _unpickle(base / "meta")
        entry = _unpickle(base / file)
        for key, where in (("fine_label_names", meta), ("coarse_label_names", meta)):
            if key not in where:
                raise ValueError(f"{base / 'meta'}: no key {key!r}")
        for key in ("data", "fine_labels", "coarse_labels"):
            if key not in entry:
                raise ValueError(f"{base / file}: no key {key!r}")
        fine_names, coarse_names = meta["fine_label_names"], meta["coarse_label_names"]
        resolve = LabelResolver(h, allow_names=False)
        class_cols = torch.tensor(
            [resolve(n, f"{base / 'meta'} fine_label_names[{i}]") for i, n in enumerate(fine_names)]
        )
        fine = torch.as_tensor(entry["fine_labels"], dtype=torch.long)
        coarse = torch.as_tensor(entry["coarse_labels"], dtype=torch.long)
        for name, values, names in (("fine", fine, fine_names), ("coarse", coarse, coarse_names)):
            bad = (values < 0) | (values >= len(names))
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(
                    f"{base / file}: {name} label {int(values[i])} of image {i} is not an index "
                    f"into meta's {len(names)} {name}_label_names"
                )
        _check_superclasses(h, fine, coarse, fine_names, coarse_names, base / file)
        targets = class_cols[fine]
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        data = data.transpose(0, 2, 3, 1)  # [n, H, W, C] for PIL
        super().__init__(
            h, np.ascontiguousarray(data), targets, transform=transform, on_bad_sample=on_bad_sample
        )

    @classmethod
    def prepare(cls, root: str | Path, download: bool = False, **dataset_kwargs: Any) -> None:
        """Download through torchvision when ``download`` (into ``root/cifar-100-python``)."""
        if download:
            from torchvision.datasets import CIFAR100 as TV

            for train in (True, False):
                TV(str(root), train=train, download=True)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _check_superclasses(h, fine, coarse, fine_names, coarse_names, where) -> None:
    """Each (fine, coarse) pair seen must agree with the hierarchy when it has the coarse node."""
    pairs = torch.unique(torch.stack([fine, coarse], dim=1), dim=0)
    for f, c in pairs.tolist():
        sup = coarse_names[c]
        if sup in h and sup not in h.ancestors(fine_names[f]):
            raise HierarchyError(
                f"{where}: class {fine_names[f]!r} has superclass {sup!r} in the data, but the "
                f"hierarchy puts it under {list(h.ancestors(fine_names[f])[:-1])}"
            )
