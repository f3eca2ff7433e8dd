"""Class-balanced sampling at any level, and the collate function for skipped samples."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler, default_collate

from hmc.hierarchy import Hierarchy

__all__ = [
    "SkippedSamplesWarning",
    "balanced_weights",
    "class_balanced_sampler",
    "skip_bad_collate",
]


def balanced_weights(hierarchy: Hierarchy, targets: torch.Tensor, level: int | str) -> torch.Tensor:
    """[n] float64 sampling weights that give every node of ``level`` the same total mass.

    A sample counts at its ancestor on ``level``; a sample labelled above ``level`` counts at
    its own node (a group of its own beside that level's nodes); unlabelled samples (< 0) form
    one more group. Each group's samples share weight 1 / group size.
    """
    d = hierarchy.level_number(level)
    targets = torch.as_tensor(targets, dtype=torch.long)
    paths = hierarchy.tensors().paths
    valid = targets >= 0
    at_level = paths[targets.clamp_min(0), d - 1]
    group = torch.where(at_level >= 0, at_level, targets.clamp_min(0))
    group = torch.where(valid, group, torch.full_like(group, hierarchy.num_nodes))
    counts = torch.bincount(group, minlength=hierarchy.num_nodes + 1).double()
    return 1.0 / counts[group]


def class_balanced_sampler(
    hierarchy: Hierarchy,
    targets: torch.Tensor,
    level: int | str,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` (with replacement) drawing each node of ``level`` equally
    often; ``num_samples`` defaults to ``len(targets)`` (one epoch = one dataset's worth)."""
    weights = balanced_weights(hierarchy, targets, level)
    return WeightedRandomSampler(
        weights, num_samples or len(weights), replacement=True, generator=generator
    )


# ----------------------------------------------------------------- bad samples
class SkippedSamplesWarning(UserWarning):
    """Samples skipped because their images were missing or could not be decoded."""


_warned = False  # per process: each DataLoader worker warns at most once too


def skip_bad_collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` after dropping the ``None`` markers of skipped samples
    (``on_bad_sample="skip"``), warning once per process with the count of the first batch
    that had any. The paths are logged at DEBUG level by the dataset.

    A batch in which every sample failed raises: with a batch of two or more that means the
    data, not one file, is broken.
    """
    global _warned
    kept = [b for b in batch if b is not None]
    if not kept:
        raise RuntimeError(
            f"all {len(batch)} samples of a batch failed to load (on_bad_sample='skip'); "
            f"check the image files, or use on_bad_sample='raise' to see the first error"
        )
    if len(kept) < len(batch) and not _warned:
        _warned = True
        warnings.warn(
            f"skipped {len(batch) - len(kept)} of {len(batch)} samples of a batch: their images "
            f"failed to load (on_bad_sample='skip'). Shown once; log hmc.data at DEBUG level to "
            f"list every skipped file, or use on_bad_sample='raise' to stop at the first",
            SkippedSamplesWarning,
            stacklevel=2,
        )
    return default_collate(kept)
