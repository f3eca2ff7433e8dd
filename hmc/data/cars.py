"""Stanford Cars in torchvision's layout (``stanford_cars/`` with the devkit .mat files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hmc.data._base import ImageFileDataset, check_split
from hmc.data._layout import LabelResolver, find_root, require
from hmc.hierarchy import Hierarchy, load_hierarchy

__all__ = ["StanfordCars"]


class StanfordCars(ImageFileDataset):
    """Stanford Cars as torchvision's ``StanfordCars`` expects it: ``root`` is
    ``stanford_cars/`` or its parent, holding ``devkit/cars_meta.mat``,
    ``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``, ``cars_train/`` and
    ``cars_test/``.

    Targets are columns of ``hierarchy`` (default the shipped ``cars``, whose model ids are the
    class names of ``cars_meta.mat``, e.g. ``AM General Hummer SUV 2000``). Splits: the
    official ``trainval`` (training set) and ``test``; :func:`hmc.data.train_val_split`
    carves a val split. ``crop_to_bbox`` crops to the annotated box.
    """

    hierarchy_name = "cars"

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
        import scipy.io  # only this loader needs scipy

        check_split(type(self), split, ("trainval", "test"))
        h = load_hierarchy(self.default_hierarchy(root) if hierarchy is None else hierarchy)
        self.root = base = find_root(root, "stanford_cars", "devkit", "StanfordCars")
        test = split == "test"
        annos = "cars_test_annos_withlabels.mat" if test else "devkit/cars_train_annos.mat"
        image_dir = "cars_test" if test else "cars_train"
        require(base, ["devkit", "devkit/cars_meta.mat", annos, image_dir], "StanfordCars")
        self.split = split

        meta = scipy.io.loadmat(str(base / "devkit/cars_meta.mat"), squeeze_me=True)
        class_names = [str(c) for c in np.atleast_1d(meta["class_names"]).tolist()]
        records = np.atleast_1d(scipy.io.loadmat(str(base / annos), squeeze_me=True)["annotations"])
        for field in ("fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"):
            if field not in (records.dtype.names or ()):
                raise ValueError(f"{base / annos}: annotations have no field {field!r}")
        resolve = LabelResolver(h, allow_names=False)
        targets = []
        for i, rec in enumerate(records):
            cls = int(rec["class"])  # 1-based index into cars_meta.mat's class_names
            if not 1 <= cls <= len(class_names):
                raise ValueError(
                    f"{base / annos}: annotation {i} ({rec['fname']}) has class {cls}, but "
                    f"cars_meta.mat lists {len(class_names)} classes"
                )
            targets.append(resolve(class_names[cls - 1], f"{base / annos} (annotation {i})"))
        targets_t = torch.tensor(targets, dtype=torch.long)
        x1, y1, x2, y2 = (
            torch.tensor([float(r[k]) for r in records], dtype=torch.float64)
            for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
        )
        # Boxes are 1-based inclusive pixel coordinates in the devkit.
        boxes = torch.stack([x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], dim=1)
        super().__init__(
            h,
            [str(base / image_dir / str(r["fname"])) for r in records],
            targets_t,
            boxes=boxes if crop_to_bbox else None,
            origins=[f"{base / annos} (annotation {i})" for i in range(len(records))],
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )
