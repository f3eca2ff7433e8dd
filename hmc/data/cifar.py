"""CIFAR-100 (20 superclasses > 100 classes) from its pickled python layout."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hmc.data._base import SPLITS, ArrayDataset, as_hierarchy, check_choice, split_rows
from hmc.data._layout import LabelResolver, find_root, require
from hmc.hierarchy import Hierarchy, HierarchyError

__all__ = ["CIFAR100"]


class CIFAR100(ArrayDataset):
    """CIFAR-100 in the layout torchvision downloads: ``root`` is ``cifar-100-python/`` or its
    parent, holding the pickles ``train``, ``test`` and ``meta``.

    The files are read directly (torchvision's loader insists on the official checksums), all
    50k/10k images in memory as uint8. Each image is labelled at its fine class (node id =
    torchvision's class name, e.g. ``apple``); the pickled superclass must be that class's
    ancestor whenever the hierarchy has a node of that name. Splits: official ``test`` and
    ``trainval``; ``train``/``val`` divide the training set per class from ``seed``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        hierarchy: str | Path | Hierarchy = "cifar100",
        *,
        val_fraction: float = 0.1,
        seed: int = 0,
        transform: Callable | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_choice("split", split, SPLITS)
        h = as_hierarchy(hierarchy)
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
        rows = split_rows(
            targets,
            torch.full_like(targets, split != "test", dtype=torch.bool),
            split,
            val_fraction,
            seed,
        )
        super().__init__(
            np.ascontiguousarray(data[rows.numpy()]),
            targets[rows],
            h,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )

    def extra_repr(self) -> str:
        return f"split={self.split!r}, root='{self.root}'"


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
