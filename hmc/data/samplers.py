"""Class-balanced sampling at any level, the resumable training order, and the collate function
for skipped samples."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler, default_collate

from hmc.hierarchy import Hierarchy

__all__ = [
    "EpochIterator",
    "EpochSampler",
    "SeededSamples",
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


# ------------------------------------------------------------ resumable order
class EpochSampler(Sampler[tuple[int, int]]):
    """The training order as a function of ``(seed, epoch)`` only: a permutation of
    ``range(n)``, or with ``weights`` ([n], e.g. :func:`balanced_weights`) ``n`` draws with
    replacement. Yields ``(index, sample_seed)`` pairs for :class:`SeededSamples`.

    Why: a resumed run must see the same batches, with the same augmentation, as the
    uninterrupted one. With no generator state to carry, a resumable loader
    (torchdata's ``StatefulDataLoader``) restores the position by skipping the batches already
    seen. Each epoch has its own order: the epoch is ``epoch_of()`` when given (HMCDataModule
    passes the trainer's ``current_epoch``: Lightning's ``set_epoch`` value is one ahead after
    a resume from an epoch-end checkpoint), else the last ``set_epoch``. The same order comes
    out for any ``num_workers``.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        epoch_of: Callable[[], int] | None = None,
    ) -> None:
        if weights is not None and len(weights) != n:
            raise ValueError(f"EpochSampler: {len(weights)} weights for {n} samples")
        self.n = int(n)
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.epoch_of = epoch_of

    def current_epoch(self) -> int:
        """``epoch_of()`` if given (a trainer's epoch counter), else the last ``set_epoch``."""
        return self.epoch if self.epoch_of is None else int(self.epoch_of())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return EpochIterator(self.draws, self.current_epoch)

    def draws(self, epoch: int) -> list[tuple[int, int]]:
        """Epoch ``epoch``'s ``(index, sample_seed)`` pairs, in order."""
        g = torch.Generator().manual_seed((self.seed * 100_003 + epoch) % 2**63)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return list(zip(order.tolist(), seeds.tolist(), strict=True))


class EpochIterator(Iterator[tuple[int, int]]):
    """One epoch of ``draws(epoch)`` (a list of ``(index, sample_seed)`` pairs); its state
    (epoch, position) is what torchdata's ``StatefulDataLoader`` saves, so a resumed iterator
    continues where it stopped. The epoch is ``current_epoch()`` at the first draw (a loader
    may build its iterator before Lightning's ``set_epoch``) unless a loaded state fixes it.
    Serves :class:`EpochSampler` and any sampler that derives its draws from one."""

    def __init__(
        self,
        draws: Callable[[int], list[tuple[int, int]]],
        current_epoch: Callable[[], int],
    ) -> None:
        self._draws_of, self._current_epoch, self.yielded = draws, current_epoch, 0
        self.epoch: int | None = None
        self.draws: list[tuple[int, int]] = []

    def __next__(self) -> tuple[int, int]:
        if self.epoch is None:
            self._start(self._current_epoch())
        if self.yielded >= len(self.draws):
            raise StopIteration
        self.yielded += 1
        return self.draws[self.yielded - 1]

    def _start(self, epoch: int) -> None:
        self.epoch, self.draws = epoch, self._draws_of(epoch)

    def state_dict(self) -> dict[str, int]:
        epoch = self._current_epoch() if self.epoch is None else self.epoch
        return {"epoch": epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start(state["epoch"])
        self.yielded = state["yielded"]


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(index, sample_seed)``: each sample's random augmentation draws
    from torch, numpy and python RNGs seeded with ``sample_seed``, and the global RNG states are
    left as they were. So augmentation depends neither on the process (main or worker) nor on
    what ran before, which is what makes a resumed run repeat the uninterrupted one exactly.
    Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if not isinstance(key, tuple):  # a plain index (e.g. a callback's look): unseeded
            return self.dataset[key]
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG transforms use)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


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
