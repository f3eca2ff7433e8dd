"""Class-balanced sampling at any level, and the loader machinery for skipped samples."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler, default_collate

from hmc.hierarchy import Hierarchy

__all__ = [
    "HMCDataLoader",
    "SkippedSamplesWarning",
    "balanced_weights",
    "class_balanced_sampler",
    "skip_bad_collate",
]

log = logging.getLogger(__name__)


def balanced_weights(targets: torch.Tensor, hierarchy: Hierarchy, level: int | str) -> torch.Tensor:
    """[n] float64 sampling weights that give every node of ``level`` the same total mass.

    A sample counts at its ancestor on ``level``; a sample labelled above ``level`` counts at
    its own node (a group of its own beside that level's nodes); unlabelled samples (< 0) form
    one more group. Each group's samples share weight 1 / group size.
    """
    d = _level_number(hierarchy, level)
    targets = torch.as_tensor(targets, dtype=torch.long)
    paths = hierarchy.tensors().paths
    valid = targets >= 0
    at_level = paths[targets.clamp_min(0), d - 1]
    group = torch.where(at_level >= 0, at_level, targets.clamp_min(0))
    group = torch.where(valid, group, torch.full_like(group, hierarchy.num_nodes))
    counts = torch.bincount(group, minlength=hierarchy.num_nodes + 1).double()
    return 1.0 / counts[group]


def class_balanced_sampler(
    targets: torch.Tensor,
    hierarchy: Hierarchy,
    level: int | str,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` (with replacement) drawing each node of ``level`` equally
    often; ``num_samples`` defaults to ``len(targets)`` (one epoch = one dataset's worth)."""
    weights = balanced_weights(targets, hierarchy, level)
    return WeightedRandomSampler(
        weights, num_samples or len(weights), replacement=True, generator=generator
    )


def _level_number(hierarchy: Hierarchy, level: int | str) -> int:
    if isinstance(level, str) and level in hierarchy.level_names:
        return hierarchy.level_names.index(level) + 1
    if isinstance(level, int) and 1 <= level <= hierarchy.num_levels:
        return level
    raise ValueError(
        f"Expected argument `level` to be one of {list(hierarchy.level_names)} or in "
        f"1..{hierarchy.num_levels}, but got {level!r}"
    )


# ----------------------------------------------------------------- bad samples
class SkippedSamplesWarning(UserWarning):
    """Images skipped in an epoch because they were missing or could not be decoded."""


def skip_bad_collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` after dropping the ``None`` markers of skipped samples.

    A batch in which every sample failed raises, naming none of them (the dataset's
    ``bad_samples`` log has their indices): with a batch of two or more that means the data,
    not one file, is broken.
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        raise RuntimeError(
            f"all {len(batch)} samples of a batch failed to load (on_bad_sample='skip'); "
            f"check the image files, or use on_bad_sample='raise' to see the first error"
        )
    return default_collate(kept)


class HMCDataLoader(DataLoader):
    """A DataLoader that, for a dataset with ``on_bad_sample="skip"``, reports at the end of
    each pass how many samples were skipped (a :class:`SkippedSamplesWarning` and a log line
    naming up to 5 paths).

    The count lives in the dataset's :class:`~hmc.data.BadSampleLog`, in shared memory, so the
    counts made in worker processes (persistent or not) add up in the main process; it is
    reset when a pass starts and read as soon as the pass's last batch has been produced (just
    before it is handed out), by which time every sample has been loaded. :attr:`skipped` keeps
    the count of the last full pass; a pass cut short (``limit_train_batches``) reports nothing.
    """

    skipped: int = 0
    _passes: int = 0

    def __iter__(self) -> Iterator[Any]:
        if getattr(self.dataset, "on_bad_sample", "raise") != "skip":
            return super().__iter__()
        # Reset before the workers start prefetching this pass (they do so inside
        # super().__iter__()), or their first failures would be wiped.
        self.dataset.bad_samples.reset()
        return self._report_after(super().__iter__())

    def _report_after(self, it: Iterator[Any]) -> Iterator[Any]:
        # Look one batch ahead and report before handing out the last batch: Lightning stops
        # asking a sized loader for batches after the last one, so code placed after the
        # final ``yield`` would never run. Once the inner iterator has produced its last
        # batch, every sample of the pass has been loaded (batches come back in order).
        batch = _END = object()
        for nxt in it:
            if batch is not _END:
                yield batch
            batch = nxt
        self._report()
        if batch is not _END:
            yield batch

    def _report(self) -> None:
        bad = self.dataset.bad_samples
        self._passes += 1
        self.skipped = n = bad.count
        if n:
            idx = bad.indices()[:5]
            names = ", ".join(self.dataset.sample_name(i) for i in idx)
            msg = (
                f"skipped {n} of {len(self.dataset)} samples that failed to load in pass "
                f"{self._passes} over {type(self.dataset).__name__} (e.g. {names})"
            )
            log.warning(msg)
            warnings.warn(msg, SkippedSamplesWarning, stacklevel=3)
