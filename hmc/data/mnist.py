"""Fashion-MNIST, the offline demo dataset: in memory as uint8."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hmc.data._base import ArrayDataset, check_split
from hmc.data._layout import LabelResolver
from hmc.hierarchy import Hierarchy, load_hierarchy

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
    torchvision's class names (``T-shirt/top``, ...). Splits: the official ``trainval``
    (60k training images) and ``test``; :func:`hmc.data.train_val_split` carves a val split
    and :func:`hmc.data.limit_per_class` subsamples for quick CPU demos.
    """

    hierarchy_name = "fashion-mnist"
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
        system_dir: str | Path | None = DEBIAN_DIR,
    ) -> None:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST
        from torchvision.datasets.mnist import read_image_file, read_label_file

        check_split(type(self), split, ("trainval", "test"))
        h = load_hierarchy(self.default_hierarchy(root) if hierarchy is None else hierarchy)
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
        super().__init__(
            h, images.numpy(), class_cols[labels], transform=transform, on_bad_sample=on_bad_sample
        )

    @staticmethod
    def raw_folder(root: str | Path) -> Path:
        return Path(root).expanduser() / "FashionMNIST" / "raw"

    @classmethod
    def prepare(
        cls,
        root: str | Path,
        download: bool = False,
        system_dir: str | Path | None = DEBIAN_DIR,
        **dataset_kwargs: Any,
    ) -> None:
        """Decompress the raw files from ``system_dir`` (the Debian package) or ``raw/*.gz``;
        failing that, download through torchvision when ``download``."""
        try:
            ensure_raw_files(
                cls.raw_folder(root), RAW_FILES["train"] + RAW_FILES["test"], system_dir
            )
        except FileNotFoundError:
            if not download:
                raise
            from torchvision.datasets import FashionMNIST as TV

            for train in (True, False):
                TV(str(Path(root).expanduser()), train=train, download=True)


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
