"""Coarse-label simulation: give a fraction of the fine-labelled training samples a coarser
label (an ancestor), as in the HRN paper's experiments.

Determinism: every random choice comes from a ``torch.Generator`` seeded with ``seed`` (CPU
generators give the same stream on every machine), never from the global RNG, and the
relabelling runs once in the main process before any DataLoader worker starts, so every
worker sees the same targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmc.checks import check_choice
from hmc.data._base import group_sizes, rank_within_groups
from hmc.hierarchy import Hierarchy

__all__ = ["RelabelConfig", "relabel_targets", "SELECTIONS"]

SELECTIONS = ("first", "random")


@dataclass(frozen=True)
class RelabelConfig:
    """How :class:`~hmc.training.HMCDataModule` coarsens its training labels.

    ratio: fraction of each class's fine-labelled training samples to relabel (0 = off; the
        paper sweeps 0.3 / 0.5 / 0.7 / 0.9).
    to: ``"parent"``, a level name (``"family"``) or number, or ``"random"`` (a uniformly
        random ancestor level per sample).
    selection: ``"first"`` keeps the first ceil((1 - ratio) * n) samples of each class (in
        dataset order) fine and relabels the rest, as the paper's code does; ``"random"``
        picks them with ``seed``.
    seed: seed of the random choices (selection and ancestor level), independent of all
        other seeds.

    ``ratio`` and ``selection`` are checked when the config is built (a config file's
    ``relabel.ratio: -0.1`` fails as it is read); ``to`` needs the hierarchy:
    :meth:`check` (``HMCDataModule`` calls it in ``__init__``).
    """

    ratio: float = 0.0
    to: str = "parent"
    selection: str = "first"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_options(self.ratio, self.selection)

    def check(self, hierarchy: Hierarchy) -> None:
        """Raise unless ``to`` names a level of ``hierarchy`` (or is parent/random)."""
        _parse_to(hierarchy, self.to)

    def apply(self, hierarchy: Hierarchy, targets: torch.Tensor) -> torch.Tensor:
        """:func:`relabel_targets` with these settings."""
        return relabel_targets(hierarchy, targets, self.ratio, self.to, self.selection, self.seed)


def _check_options(ratio: float, selection: str) -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"Expected argument `ratio` to be in [0, 1], but got {ratio!r}")
    check_choice("selection", selection, SELECTIONS)


def relabel_targets(
    hierarchy: Hierarchy,
    targets: torch.Tensor,
    ratio: float,
    to: str | int = "parent",
    selection: str = "first",
    seed: int = 0,
) -> torch.Tensor:
    """Relabel a fraction of the fine-labelled samples of each class to an ancestor.

    A sample is fine-labelled when its target is a leaf. For each leaf class with n such
    samples, n - ceil((1 - ratio) * n) of them (= floor(ratio * n) up to float rounding) get
    the ancestor named by ``to``; samples already labelled at or above that level, coarse
    labels and unlabelled samples (< 0) are left alone.

    Args:
        hierarchy: the tree the columns index.
        targets: [n] node columns.
        ratio: in [0, 1].
        to: ``"parent"``, a level name or number 1..D, or ``"random"``.
        selection: ``"first"`` (dataset order; the paper's behaviour) or ``"random"``.
        seed: seeds a private ``torch.Generator``.

    Returns:
        [n] long, new node columns (a new tensor; ``targets`` is not modified).
    """
    _check_options(ratio, selection)
    targets = torch.as_tensor(targets, dtype=torch.long)
    t = hierarchy.tensors()
    out = targets.clone()
    if ratio == 0.0 or targets.numel() == 0:
        return out
    mode, level = _parse_to(hierarchy, to)

    fine = (targets >= 0) & t.is_leaf[targets.clamp_min(0)]
    if selection == "first":
        keys = torch.arange(len(targets), dtype=torch.float64)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        keys = torch.rand(len(targets), generator=gen, dtype=torch.float64)
    # Group non-fine samples apart (-1) so they do not take part in any class's count.
    groups = torch.where(fine, targets, torch.full_like(targets, -1))
    rank = rank_within_groups(groups, keys)
    n = group_sizes(groups).double()
    keep = torch.ceil((1.0 - ratio) * n - 1e-9).long()  # guard 0.7 * 30 = 21.000000000000004
    chosen = fine & (rank >= keep)

    cols = targets[chosen]
    lvl = t.levels[cols]
    if mode == "parent":
        new_level = lvl - 1
    elif mode == "level":
        new_level = torch.minimum(torch.full_like(lvl, level), lvl)
    else:  # random ancestor level in 1..lvl-1, drawn from a second, independent stream
        gen_level = torch.Generator().manual_seed(int(seed) + 1_000_003)
        u = torch.rand(len(targets), generator=gen_level, dtype=torch.float64)[chosen]
        new_level = torch.floor(u * (lvl - 1).double()).long() + 1
    new_level = torch.maximum(new_level, torch.ones_like(lvl))  # level-1 leaves stay
    out[chosen] = t.paths[cols, new_level - 1]
    return out


def _parse_to(hierarchy: Hierarchy, to: str | int) -> tuple[str, int]:
    """("parent" | "random", 0) or ("level", level number); a level by name or number."""
    if to in ("parent", "random"):
        return str(to), 0
    if isinstance(to, str) and to.isdigit():  # "2" from a command line
        to = int(to)
    try:
        return "level", hierarchy.level_number(to)
    except (ValueError, TypeError):
        raise ValueError(
            f"Expected argument `to` to be one of "
            f"{['parent', 'random', *hierarchy.level_names]} or a level in "
            f"1..{hierarchy.num_levels}, but got {to!r}"
        ) from None
