"""Per-level confusion counts, exact and DDP-safe.

A level with at most ``max_dense`` nodes keeps a dense [n, n + 1] count matrix (rows: true
node, columns: predicted node, last column: no prediction at this level), summed across
processes. A wider level keeps the key ``true * n + predicted`` of every mistake (8 bytes per
mistake, gathered across processes) and counts them with ``torch.unique`` when asked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from hmc.hierarchy import Hierarchy
from hmc.metrics.batch import MetricBatch
from hmc.metrics.levels import HierarchicalMetric, check_int

__all__ = ["LevelConfusion"]


class LevelConfusion(HierarchicalMetric):
    """Per-level confusion counts for logging; ``compute()`` returns no scalars.

    Use :meth:`confusions` for the most frequent (true, predicted) mistakes of every level and
    :meth:`confusion_matrix` for the dense matrix of a level with at most ``max_dense`` nodes.
    Samples count at the levels they are labelled at.

    Args:
        hierarchy: the label tree.
        max_dense: levels with at most this many nodes keep a dense matrix, wider ones a list
            of mistake keys.
        max_pairs: mistakes per level returned by :meth:`confusions`.
    """

    higher_is_better = None
    needs_probs = False

    def __init__(
        self, hierarchy: Hierarchy, max_dense: int = 256, max_pairs: int = 20, **kwargs: Any
    ):
        super().__init__(hierarchy, **kwargs)
        self.max_dense = check_int(max_dense, "max_dense", 0)
        self.max_pairs = check_int(max_pairs, "max_pairs", 1)
        self.dense_levels: list[bool] = []
        for d in range(1, hierarchy.num_levels + 1):
            n = len(hierarchy.level_nodes(d))
            self.dense_levels.append(n <= max_dense)
            if n <= max_dense:
                self._add_sum(f"confusion_{d}", (n, n + 1))
            else:
                self.add_state(f"mistakes_{d}", default=[], dist_reduce_fx="cat")

    def _update(self, batch: MetricBatch) -> None:
        h = self.hierarchy
        for d in range(1, h.num_levels + 1):
            counted = batch.level_targets[:, d - 1] >= 0
            sl = h.level_slice(d)
            n = sl.stop - sl.start
            t = batch.level_targets[counted, d - 1] - sl.start
            p = batch.predictions[counted, d - 1]
            p = torch.where(p >= 0, p - sl.start, n)  # n: no prediction at this level
            if self.dense_levels[d - 1]:
                state = getattr(self, f"confusion_{d}")
                state += torch.bincount(t * (n + 1) + p, minlength=state.numel()).view_as(state)
            else:
                mistake = (p != t) & (p < n)
                getattr(self, f"mistakes_{d}").append(t[mistake] * n + p[mistake])

    def sync(self, *args: Any, **kwargs: Any) -> None:
        # torchmetrics gathers an empty list state as a float tensor, which gloo cannot gather
        # with the other processes' int64 keys: give a process without batches an int64 one.
        for d, dense in enumerate(self.dense_levels, start=1):
            state = None if dense else getattr(self, f"mistakes_{d}")
            if isinstance(state, list) and not state:
                state.append(torch.zeros(0, dtype=torch.long, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        return {}

    def confusion_matrix(self, level: int | str) -> Tensor:
        """[n, n + 1] counts of a dense level (rows true, columns predicted, last column: no
        prediction at this level), in the level's column order. Synced across processes."""
        d = self.hierarchy.level_number(level)
        if not self.dense_levels[d - 1]:
            raise ValueError(
                f"level {self.hierarchy.level_names[d - 1]!r} has more than max_dense="
                f"{self.max_dense} nodes, so only its mistakes are kept; use confusions()"
            )
        with self.sync_context():
            return getattr(self, f"confusion_{d}").clone()

    def confusions(self, max_pairs: int | None = None) -> dict[str, list[tuple[str, str, int]]]:
        """Per level name, the ``max_pairs`` most frequent mistakes as (true id, predicted id,
        count), most frequent first (ties by true, then predicted column). Early stops are not
        listed. Synced across processes."""
        max_pairs = self.max_pairs if max_pairs is None else max_pairs
        h = self.hierarchy
        out: dict[str, list[tuple[str, str, int]]] = {}
        with self.sync_context():
            for d in range(1, h.num_levels + 1):
                sl = h.level_slice(d)
                n = sl.stop - sl.start
                if self.dense_levels[d - 1]:
                    counts = getattr(self, f"confusion_{d}")[:, :n].clone()
                    counts.fill_diagonal_(0)
                    keys = counts.flatten().nonzero().squeeze(1)  # sorted, as torch.unique's
                    c = counts.flatten()[keys]
                else:
                    state = getattr(self, f"mistakes_{d}")
                    keys = dim_zero_cat(state) if len(state) else torch.zeros(0, device=self.device)
                    keys, c = torch.unique(keys.long(), return_counts=True)
                # Most frequent first; the stable sort keeps ties in key order.
                order = torch.sort(-c, stable=True).indices[:max_pairs]
                t, p = (keys[order] // n).tolist(), (keys[order] % n).tolist()
                out[h.level_names[d - 1]] = [
                    (h.nodes[sl.start + ti], h.nodes[sl.start + pi], ci)
                    for ti, pi, ci in zip(t, p, c[order].tolist(), strict=True)
                ]
        return out
