"""Fashion-MNIST, the offline demo dataset: in memory as uint8, optionally subsampled."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from hmc.data._base import (
    SPLITS,
    ArrayDataset,
    as_hierarchy,
    check_choice,
    limit_per_class,
    split_rows,
)
from hmc.data._layout import LabelResolver
from hmc.hierarchy import Hierarchy

__all__ = ["FashionMNIST", "DEBIAN_DIR"]

log = logging.getLogger(__name__)

# Where the Debian package ``dataset-fashion-mnist`` installs the raw gz files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class FashionMNIST(ArrayDataset):
    """Fashion-MNIST in torchvision's layout, ``<root>/FashionMNIST/raw/*-ubyte``.

    If those files are absent but ``system_dir`` (default: the Debian package's
    ``/usr/share/datasets/fashion-mnist``) holds the ``.gz`` files, they are decompressed into
    ``<root>/FashionMNIST/raw/`` (nothing is downloaded; torchvision's checksums would reject
    the re-compressed Debian files, so its download is not used for them). Gzipped files left
    in ``raw/`` by a torchvision download are decompressed the same way.

    Images are 28x28 grey, held as uint8; the transforms make them 3-channel. Leaf ids are
    torchvision's class names (``T-shirt/top``, ...). ``max_per_class`` keeps the first n of
    each class (before the train/val division) for quick CPU demos.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        hierarchy: str | Path | Hierarchy = "fashion-mnist",
        *,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_per_class: int | None = None,
        transform: Callable | None = None,
        on_bad_sample: str = "raise",
        system_dir: str | Path | None = DEBIAN_DIR,
    ) -> None:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST
        from torchvision.datasets.mnist import read_image_file, read_label_file

        check_choice("split", split, SPLITS)
        h = as_hierarchy(hierarchy)
        self.root = Path(root).expanduser()
        self.split = split
        raw = self.raw_folder(self.root)
        files = RAW_FILES["test" if split == "test" else "train"]
        ensure_raw_files(raw, files, system_dir)
        images = read_image_file(str(raw / files[0]))  # [n, 28, 28] uint8
        labels = read_label_file(str(raw / files[1])).long()  # [n] in 0..9
        if len(images) != len(labels):
            raise ValueError(f"{raw}: {len(images)} images but {len(labels)} labels")
        resolve = LabelResolver(h, allow_names=False)
        class_cols = torch.tensor(
            [resolve(c, f"FashionMNIST class {i}") for i, c in enumerate(TVFashionMNIST.classes)]
        )
        bad = (labels < 0) | (labels >= len(class_cols))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"{raw / files[1]}: label {int(labels[i])} of image {i} is not a class index "
                f"0..{len(class_cols) - 1}"
            )
        targets = class_cols[labels]
        super().__init__(
            images.numpy(), targets, h, transform=transform, on_bad_sample=on_bad_sample
        )
        if max_per_class is not None:
            kept = limit_per_class(self, max_per_class)
            self.data, self.targets = kept.data, kept.targets
        is_train = torch.full((len(self.targets),), split != "test", dtype=torch.bool)
        rows = split_rows(self.targets, is_train, split, val_fraction, seed)
        if len(rows) != len(self.targets):
            self.data, self.targets = self.data[rows.numpy()], self.targets[rows]
        self.bad_samples = type(self.bad_samples)(len(self.targets))

    @staticmethod
    def raw_folder(root: str | Path) -> Path:
        return Path(root).expanduser() / "FashionMNIST" / "raw"

    def extra_repr(self) -> str:
        return f"split={self.split!r}, root='{self.root}'"


def ensure_raw_files(raw: Path, files: tuple[str, ...], system_dir: str | Path | None) -> None:
    """Decompress missing raw files from ``raw/*.gz`` or ``system_dir/*.gz``; raise naming
    what is missing otherwise."""
    for name in files:
        target = raw / name
        if target.is_file():
            continue
        sources = [raw / f"{name}.gz"]
        if system_dir is not None:
            sources.append(Path(system_dir) / f"{name}.gz")
        source = next((s for s in sources if s.is_file()), None)
        if source is None:
            looked = ", ".join(str(s) for s in sources)
            raise FileNotFoundError(
                f"FashionMNIST: {name} not found under {raw} (also looked for {looked}); "
                f"install the Debian package dataset-fashion-mnist, or download with "
                f"HMCDataModule(..., download=True)"
            )
        raw.mkdir(parents=True, exist_ok=True)
        log.info("decompressing %s into %s", source, raw)
        tmp = raw / f"{name}.{os.getpid()}.part"
        with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)  # atomic, so a parallel reader never sees half a file
