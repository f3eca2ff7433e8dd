"""What every hmc dataset shares: node-column targets, loading, bad samples, splits.

A dataset here is a table of samples (image paths or in-memory pixels) plus one LongTensor of
targets, each the column of the observed label's node in ``hierarchy.nodes``, at any depth
(negative = unlabelled). Splits, per-class limits and relabelling make shallow copies with
fewer rows or other targets (:meth:`HierarchicalDataset.subset`, :meth:`.with_targets`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hmc.checks import check_choice
from hmc.data._layout import unique_rows
from hmc.hierarchy import Hierarchy, load_hierarchy

__all__ = [
    "ArrayDataset",
    "BadSampleError",
    "HierarchicalDataset",
    "ImageFileDataset",
    "level_counts",
    "limit_per_class",
    "pil_loader",
    "stratified_split",
    "train_val_split",
]

log = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("raise", "skip")
SPLITS = ("train", "val", "trainval", "test")
IGNORE = -100


class BadSampleError(RuntimeError):
    """An image that is missing or cannot be decoded."""


def pil_loader(path: str, decode_size: int | None = None) -> Image.Image:
    """Open and fully decode an image as RGB (decoding errors surface here, not later).

    16-bit grey images (PIL modes ``I;16*`` and ``I``) are scaled from 0..65535 to 0..255;
    PIL's own conversion would clip them, so that a 16-bit PNG would come out nearly white.
    With ``decode_size`` S, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8)
    that keeps both sides >= S, which is several times faster when the transform shrinks
    the image anyway (benchmarks/data.py: 1.4-1.5x end to end); other formats ignore it.
    """
    with open(path, "rb") as f:
        img = Image.open(f)
        if decode_size:
            img.draft("RGB", (decode_size, decode_size))
        if img.mode.startswith("I"):
            grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
            img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
        return img.convert("RGB")


# Exceptions PIL and the OS raise for missing, truncated or undecodable files.
_LOAD_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class HierarchicalDataset(Dataset):
    """Base class: ``(image, target)`` samples whose targets are hierarchy node columns.

    Subclasses implement :meth:`load` (index -> PIL image) and list their per-sample
    attributes in ``_sample_fields`` so that :meth:`subset` can slice them.

    A dataset with a layout on disk (the classes of :data:`hmc.data.DATASETS`) also answers
    for itself through the class attributes and classmethods below, which
    :class:`hmc.training.HMCDataModule` asks instead of switching on dataset names.

    Args:
        hierarchy: the label tree; ``targets`` index its columns.
        targets: [n] long, node column per sample (negative = unlabelled).
        transform: applied to the PIL image.
        on_bad_sample: ``"raise"`` (default) raises :class:`BadSampleError` naming the path;
            ``"skip"`` returns ``None`` instead; batch such datasets with
            :func:`hmc.data.skip_bad_collate`, which drops the ``None``s and warns once.
    """

    _sample_fields: tuple[str, ...] = ()

    #: Name of the shipped hierarchy used when none is given (None: see default_hierarchy).
    hierarchy_name: ClassVar[str | None] = None
    #: Transform preset and image side that suit the images (see build_transforms).
    default_preset: ClassVar[str] = "paper"
    default_image_size: ClassVar[int | None] = None

    def __init__(
        self,
        hierarchy: Hierarchy,
        targets: torch.Tensor,
        *,
        transform: Callable | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        check_choice("on_bad_sample", on_bad_sample, ON_BAD_SAMPLE)
        targets = torch.as_tensor(targets, dtype=torch.long)
        if targets.ndim != 1:
            raise ValueError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
        if targets.numel() and int(targets.max()) >= hierarchy.num_nodes:
            raise ValueError(
                f"target {int(targets.max())} out of range for {hierarchy.num_nodes} nodes"
            )
        self.hierarchy = hierarchy
        self.targets = targets
        self.transform = transform
        self.on_bad_sample = on_bad_sample

    # ----------------------------------------- the dataset on disk, for HMCDataModule
    @classmethod
    def default_hierarchy(cls, root: str | Path) -> Hierarchy:
        """The hierarchy used when none is given: the shipped ``hierarchy_name`` tree."""
        if cls.hierarchy_name is None:
            raise ValueError(f"{cls.__name__} needs a `hierarchy` (a name or a file)")
        return load_hierarchy(cls.hierarchy_name)

    @classmethod
    def has_val_split(cls, root: str | Path) -> bool:
        """Whether the data ships a validation split; if not, train and val are carved from
        ``"trainval"`` by :func:`train_val_split`."""
        return False

    @classmethod
    def prepare(cls, root: str | Path, download: bool = False, **dataset_kwargs: Any) -> None:
        """Make the files ready under ``root`` (download only when ``download``). Receives
        the constructor's keyword arguments; this default can download nothing."""
        if download:
            raise ValueError(
                f"{cls.__name__} cannot be downloaded automatically; download it by hand and "
                f"extract it under {root}"
            )

    @classmethod
    def from_split(
        cls, root: str | Path, split: str, hierarchy: Hierarchy, **dataset_kwargs: Any
    ) -> HierarchicalDataset:
        """The official ``split`` ("train", "val", "trainval" or "test") under ``root``."""
        return cls(root, split, hierarchy=hierarchy, **dataset_kwargs)

    # ------------------------------------------------------------------ samples
    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        try:
            image = self.load(index)
        except BadSampleError as e:
            if self.on_bad_sample == "raise":
                raise
            log.debug("skipping sample %d: %s", index, e)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    # --------------------------------------------------------- derived copies
    def subset(self, indices: torch.Tensor | Sequence[int]) -> HierarchicalDataset:
        """A shallow copy holding only rows ``indices`` (in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        new = copy.copy(self)
        new.targets = self.targets[idx]
        np_idx = idx.numpy()
        for field in self._sample_fields:
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                setattr(new, field, value[idx])
            else:
                setattr(new, field, np.asarray(value)[np_idx])
        return new

    def with_targets(self, targets: torch.Tensor) -> HierarchicalDataset:
        """A shallow copy with other targets ([n] long, same rows), e.g. after relabelling."""
        targets = torch.as_tensor(targets, dtype=torch.long)
        if targets.shape != self.targets.shape:
            raise ValueError(
                f"expected {tuple(self.targets.shape)} targets, got {tuple(targets.shape)}"
            )
        new = copy.copy(self)
        new.targets = targets
        return new

    # ------------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        split = getattr(self, "split", None)
        root = getattr(self, "root", None)
        parts = ([f"split={split!r}"] if split else []) + ([f"root='{root}'"] if root else [])
        return ", ".join(parts)

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{k}={v}" for k, v in level_counts(self.hierarchy, self.targets).items()
        )
        extra = self.extra_repr()
        extra = f"{extra}, " if extra else ""
        return f"{type(self).__name__}({extra}n={len(self)}, labels per level: {counts})"


class ImageFileDataset(HierarchicalDataset):
    """Images on disk, decoded lazily by ``loader`` (default: :func:`pil_loader`, RGB).

    Args:
        hierarchy: the label tree.
        paths: [n] image paths.
        targets: [n] node columns.
        boxes: optional [n, 4] float boxes (x, y, width, height) to crop to before
            ``transform``.
        origins: optional [n] where each row was read (``file:line``), named in errors.

    An image listed more than once with the same target is kept once, with one warning that
    counts the duplicates; listed with two different targets it is an error naming both
    origins and the image (so that a train/val carve never puts one image in both splits).

    ``decode_size`` (attribute, default None) lets the default loader decode JPEGs at a
    reduced scale whose sides stay >= that size (see :func:`pil_loader`); the data module
    sets it to the side its transform resizes to. Not used with boxes or a custom loader.
    """

    decode_size: int | None = None

    _sample_fields = ("paths", "boxes")
    _unique_paths = True

    def __init__(
        self,
        hierarchy: Hierarchy,
        paths: Sequence[str],
        targets: torch.Tensor,
        *,
        boxes: torch.Tensor | None = None,
        origins: Sequence[str] | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        transform: Callable | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        super().__init__(hierarchy, targets, transform=transform, on_bad_sample=on_bad_sample)
        # A numpy string array, not a list: no per-item refcounts for forked workers to copy.
        self.paths = np.asarray([str(p) for p in paths], dtype=str)
        if len(self.paths) != len(self.targets):
            raise ValueError(f"{len(self.paths)} paths but {len(self.targets)} targets")
        self.boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float64)
        self.loader = loader or pil_loader
        if self._unique_paths and len(self.paths):
            nodes = hierarchy.nodes
            labels = [nodes[t] if t >= 0 else None for t in self.targets.tolist()]
            keep = unique_rows(
                self.paths.tolist(),
                labels,
                origins or [f"row {i}" for i in range(len(self.paths))],
                what="label",
            )
            if len(keep) < len(self.paths):
                kept = self.subset(keep)
                self.paths, self.targets, self.boxes = kept.paths, kept.targets, kept.boxes

    def load(self, index: int) -> Image.Image:
        path = str(self.paths[index])
        try:
            if self.loader is pil_loader and self.decode_size and self.boxes is None:
                image = pil_loader(path, self.decode_size)
            else:
                image = self.loader(path)
        except _LOAD_ERRORS as e:
            reason = "not found" if isinstance(e, FileNotFoundError) else f"{type(e).__name__}: {e}"
            raise BadSampleError(f"cannot load image {path} ({reason})") from e
        if self.boxes is not None:
            x, y, w, h = self.boxes[index].tolist()
            image = image.crop((round(x), round(y), round(x + w), round(y + h)))
        return image


class ArrayDataset(HierarchicalDataset):
    """Images held in memory as a uint8 array [n, H, W] (grey) or [n, H, W, 3] (RGB)."""

    _sample_fields = ("data",)

    def __init__(
        self,
        hierarchy: Hierarchy,
        data: np.ndarray | torch.Tensor,
        targets: torch.Tensor,
        *,
        transform: Callable | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        super().__init__(hierarchy, targets, transform=transform, on_bad_sample=on_bad_sample)
        self.data = np.asarray(data, dtype=np.uint8)
        if len(self.data) != len(self.targets):
            raise ValueError(f"{len(self.data)} images but {len(self.targets)} targets")

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.data[index])


# ---------------------------------------------------------- counts and splits
def level_counts(hierarchy: Hierarchy, targets: torch.Tensor) -> dict[str, int]:
    """Number of labels at each level (by level name), plus ``unlabelled`` if any."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    valid = targets >= 0
    levels = hierarchy.tensors().levels[targets[valid]]
    per_level = torch.bincount(levels, minlength=hierarchy.num_levels + 1)[1:]
    out = {name: int(c) for name, c in zip(hierarchy.level_names, per_level, strict=True)}
    unlabelled = int((~valid).sum())
    if unlabelled:
        out["unlabelled"] = unlabelled
    return out


def rank_within_groups(groups: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[n] rank of each element among the elements of its group, ordered by ``keys`` (ties by
    position). groups: [n] long; keys: [n] any sortable. Vectorised, no loop over groups."""
    n = len(groups)
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - first
    return rank


def group_sizes(groups: torch.Tensor) -> torch.Tensor:
    """[n] size of each element's group."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return counts[inverse]


def stratified_split(
    targets: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split: (keep, held_out) ascending index tensors.

    Each class (target value) with n samples gives round(fraction * n) of them, at most n - 1,
    chosen by a ``torch.Generator`` seeded with ``seed`` (the global RNG is not touched), so the
    split is the same on every machine.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"Expected argument `val_fraction` to be in [0, 1), but got {fraction}")
    targets = torch.as_tensor(targets, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    keys = torch.rand(len(targets), generator=gen, dtype=torch.float64)
    rank = rank_within_groups(targets, keys)
    n = group_sizes(targets)
    take = torch.minimum(torch.floor(fraction * n + 0.5).long(), n - 1)
    held = rank < take
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def train_val_split(
    pool: HierarchicalDataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[HierarchicalDataset, HierarchicalDataset]:
    """(train, val) carved from a training pool (a dataset's ``"trainval"`` split) by
    :func:`stratified_split`: ``val_fraction`` of each class, rounded, goes to val.

    The only place where hmc divides training data: datasets load their official splits,
    and :class:`hmc.training.HMCDataModule` calls this for datasets without a val split.
    """
    keep, held = stratified_split(pool.targets, val_fraction, seed)
    train, val = pool.subset(keep), pool.subset(held)
    if hasattr(pool, "split"):  # the repr names the split each now is
        train.split, val.split = "train", "val"
    return train, val


def limit_per_class(dataset: HierarchicalDataset, max_per_class: int | None) -> HierarchicalDataset:
    """The first ``max_per_class`` samples of each target (in dataset order); the dataset
    itself when ``max_per_class`` is None."""
    if max_per_class is None:
        return dataset
    if max_per_class < 1:
        raise ValueError(f"Expected argument `max_per_class` to be >= 1, but got {max_per_class}")
    t = dataset.targets
    rank = rank_within_groups(t, torch.arange(len(t)))
    return dataset.subset((rank < max_per_class).nonzero().flatten())


def check_split(dataset: type, split: str, official: Sequence[str]) -> None:
    """Raise naming the official splits (and :func:`train_val_split`) for any other."""
    check_choice("split", split, SPLITS)
    if split not in official:
        raise ValueError(
            f"{dataset.__name__} has no official {split!r} split (it has {list(official)}); "
            f"load 'trainval' and divide it with hmc.data.train_val_split(dataset, "
            f"val_fraction, seed), as HMCDataModule does"
        )
