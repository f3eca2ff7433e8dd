"""What every hmc dataset shares: node-column targets, label lookup, bad samples, splits.

A dataset here is a table of samples (image paths or in-memory pixels) plus one LongTensor of
targets, each the column of the observed label's node in ``hierarchy.nodes``, at any depth
(negative = unlabelled). Splits, per-class limits and relabelling make shallow copies with
fewer rows or other targets (:meth:`HierarchicalDataset.subset`, :meth:`.with_targets`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hmc.hierarchy import Hierarchy, load_hierarchy

__all__ = [
    "BadSampleError",
    "BadSampleLog",
    "HierarchicalDataset",
    "ImageFileDataset",
    "ArrayDataset",
    "level_counts",
    "limit_per_class",
    "pil_loader",
    "rank_within_groups",
    "stratified_split",
]

ON_BAD_SAMPLE = ("raise", "skip")
SPLITS = ("train", "val", "trainval", "test")
IGNORE = -100


class BadSampleError(RuntimeError):
    """An image that is missing or cannot be decoded."""


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(
            f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}"
        )


def as_hierarchy(hierarchy: str | Path | Hierarchy) -> Hierarchy:
    """A Hierarchy from an object, a shipped name or a path."""
    return hierarchy if isinstance(hierarchy, Hierarchy) else load_hierarchy(hierarchy)


def pil_loader(path: str, decode_size: int | None = None) -> Image.Image:
    """Open and fully decode an image as RGB (decoding errors surface here, not later).

    With ``decode_size`` S, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8)
    that keeps both sides >= S, which is several times faster when the transform shrinks
    the image anyway; other formats ignore it.
    """
    with open(path, "rb") as f:
        img = Image.open(f)
        if decode_size:
            img.draft("RGB", (decode_size, decode_size))
        return img.convert("RGB")


# Exceptions PIL and the OS raise for missing, truncated or undecodable files.
_LOAD_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadSampleLog:
    """Counts of samples that failed to load, kept in shared memory so that the counts made
    in DataLoader worker processes add up in the main process.

    Each process writes its own slot (slot 0: the main process, slot 1 + worker id % 63: a
    worker), so increments never race as long as there are at most 63 workers. ``flags``
    marks the dataset indices that failed, to name their paths.
    """

    SLOTS = 64

    def __init__(self, num_samples: int) -> None:
        self.counts = torch.zeros(self.SLOTS, dtype=torch.int64).share_memory_()
        self.flags = torch.zeros(max(num_samples, 1), dtype=torch.bool).share_memory_()

    def record(self, index: int) -> None:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (self.SLOTS - 1)
        self.counts[slot] += 1
        self.flags[index] = True

    @property
    def count(self) -> int:
        """Samples skipped since the last :meth:`reset` (summed over workers)."""
        return int(self.counts.sum())

    def indices(self) -> list[int]:
        """Dataset indices that have ever failed to load."""
        return self.flags.nonzero().flatten().tolist()

    def reset(self) -> None:
        self.counts.zero_()


class HierarchicalDataset(Dataset):
    """Base class: ``(image, target)`` samples whose targets are hierarchy node columns.

    Subclasses implement :meth:`load` (index -> PIL image) and list their per-sample
    attributes in ``_sample_fields`` so that :meth:`subset` can slice them.

    Args:
        hierarchy: the label tree; ``targets`` index its columns.
        targets: [n] long, node column per sample (negative = unlabelled).
        transform: applied to the PIL image.
        on_bad_sample: ``"raise"`` (default) raises :class:`BadSampleError` naming the path;
            ``"skip"`` returns ``None`` instead, counted in :attr:`bad_samples`; batch such
            datasets with :func:`hmc.data.skip_bad_collate`, which drops the ``None``s.
    """

    _sample_fields: tuple[str, ...] = ()

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
        self.bad_samples = BadSampleLog(len(targets))

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        try:
            image = self.load(index)
        except BadSampleError:
            if self.on_bad_sample == "raise":
                raise
            self.bad_samples.record(index)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def sample_name(self, index: int) -> str:
        """What to call sample ``index`` in messages (its path for file datasets)."""
        return f"sample {index}"

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
        new.bad_samples = BadSampleLog(len(idx))
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
        new.bad_samples = BadSampleLog(len(targets))
        return new

    # ------------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{k}={v}" for k, v in level_counts(self.targets, self.hierarchy).items()
        )
        extra = self.extra_repr()
        extra = f"{extra}, " if extra else ""
        return f"{type(self).__name__}({extra}n={len(self)}, labels per level: {counts})"


class ImageFileDataset(HierarchicalDataset):
    """Images on disk, decoded lazily by ``loader`` (default: PIL, RGB).

    Args:
        paths: [n] image paths.
        targets: [n] node columns.
        boxes: optional [n, 4] float boxes (x, y, width, height) to crop to before
            ``transform``.

    ``decode_size`` (attribute, default None) lets the default loader decode JPEGs at a
    reduced scale whose sides stay >= that size (see :func:`pil_loader`); the data module
    sets it to the side its transform resizes to. Not used with boxes or a custom loader.
    """

    decode_size: int | None = None

    _sample_fields = ("paths", "boxes")

    def __init__(
        self,
        paths: Sequence[str],
        targets: torch.Tensor,
        hierarchy: Hierarchy,
        *,
        boxes: torch.Tensor | None = None,
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

    def sample_name(self, index: int) -> str:
        return str(self.paths[index])


class ArrayDataset(HierarchicalDataset):
    """Images held in memory as a uint8 array [n, H, W] (grey) or [n, H, W, 3] (RGB)."""

    _sample_fields = ("data",)

    def __init__(
        self,
        data: np.ndarray | torch.Tensor,
        targets: torch.Tensor,
        hierarchy: Hierarchy,
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
def level_counts(targets: torch.Tensor, hierarchy: Hierarchy) -> dict[str, int]:
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


def split_rows(
    targets: torch.Tensor, is_train: torch.Tensor, split: str, val_fraction: float, seed: int
) -> torch.Tensor:
    """Indices of ``split`` given an official train/test flag: train and val are carved from
    the official training set by :func:`stratified_split`; trainval is all of it."""
    check_choice("split", split, SPLITS)
    train_idx = is_train.nonzero().flatten()
    if split == "test":
        return (~is_train).nonzero().flatten()
    if split == "trainval":
        return train_idx
    keep, held = stratified_split(targets[train_idx], val_fraction, seed)
    return train_idx[keep if split == "train" else held]


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
