"""Per-level confusion counts with bounded, DDP-summable state.

A level with at most ``max_dense`` nodes keeps a dense [n, n + 1] count matrix (rows: true
node, columns: predicted node, last column: no prediction at this level). A bigger level keeps
its mistakes (true != predicted) in an invertible Bloom lookup table (Goodrich & Mitzenmacher,
2011): every (true, predicted) pair is hashed into one cell of each of three partitions, and
each cell sums the count, the pair keys and a checksum of the keys. All fields are sums, so
tables from several processes add up exactly; reading the table back ("peeling") recovers
every pair with its exact count as long as the level has fewer distinct confused pairs than
about 0.8 x ``capacity``. Beyond that, the pairs that can still be peeled are exact and a
warning says that others are missing.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from hmc.hierarchy import Hierarchy
from hmc.metrics.batch import MetricBatch
from hmc.metrics.levels import HierarchicalMetric

__all__ = ["LevelConfusion"]

_P = (1 << 31) - 1  # Mersenne prime: products of two residues stay below 2**62
_PARTS = 3
# (a, b, c) per hash; the last triple is the checksum. Fixed, so every process agrees.
_HASH = ((1103515245, 12345, 2654435761 % _P), (69069, 1, 40503), (1664525, 1013904223, 97),
         (22695477, 1, 48271))  # fmt: skip


def _mix(key: Tensor, which: int) -> Tensor:
    """A 2-universal style hash of non-negative int64 keys (< 2**62) into [0, 2**31 - 1)."""
    a, b, c = _HASH[which]
    lo, hi = key & _P, key >> 31
    return ((a * lo) % _P + (b * hi) % _P + c) % _P


def _checksum(key: Tensor) -> Tensor:
    """A non-linear key check in [0, 2**31 - 1). It must not be affine: the average of two keys
    in one cell would otherwise pass as a pure cell."""
    x = _mix(key, _PARTS)
    return (x * x % _P + x) % _P


def _cells(key: Tensor, width: int) -> Tensor:
    """[M] keys -> [M, 3] cell indices, one per partition of ``width`` cells."""
    return torch.stack([p * width + _mix(key, p) % width for p in range(_PARTS)], dim=1)


class LevelConfusion(HierarchicalMetric):
    """Per-level confusion counts for logging; ``compute()`` returns no scalars.

    Use :meth:`confusions` for the top confused (true, predicted) pairs of every level and
    :meth:`confusion_matrix` for the dense matrix of a small level. Samples count at the
    levels they are labelled at.
    """

    higher_is_better = None
    needs_probs = False

    def __init__(
        self,
        hierarchy: Hierarchy,
        max_dense: int = 256,
        capacity: int = 3 * 4096,
        top_k: int = 20,
        **kwargs: Any,
    ):
        super().__init__(hierarchy, **kwargs)
        for name, v, lo in (
            ("max_dense", max_dense, 0),
            ("capacity", capacity, _PARTS),
            ("top_k", top_k, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(
                    f"Expected argument `{name}` to be an integer >= {lo}, but got {v!r}"
                )
        self.max_dense, self.top_k = max_dense, top_k
        self.width = capacity // _PARTS
        self.dense_levels: list[bool] = []
        for d in range(1, hierarchy.num_levels + 1):
            n = len(hierarchy.level_nodes(d))
            dense = n <= max_dense
            self.dense_levels.append(dense)
            shape = (n, n + 1) if dense else (3, _PARTS * self.width)
            self._add_count(f"confusion_{d}", shape)

    def _update(self, batch: MetricBatch) -> None:
        h = self.hierarchy
        for d in range(1, h.num_levels + 1):
            col = batch.level_targets[:, d - 1]
            counted = col >= 0
            if not bool(counted.any()):
                continue
            sl = h.level_slice(d)
            n = sl.stop - sl.start
            t = col[counted] - sl.start
            p = batch.predictions[counted, d - 1]
            p = torch.where(p >= 0, p - sl.start, n)  # n: no prediction at this level
            state = getattr(self, f"confusion_{d}")
            if self.dense_levels[d - 1]:
                state += torch.bincount(t * (n + 1) + p, minlength=state.numel()).view_as(state)
                continue
            key = (t * (n + 1) + p)[t != p]
            if not key.numel():
                continue
            cells = _cells(key, self.width).flatten()
            rep = key.repeat_interleave(_PARTS)
            state[0].index_add_(0, cells, torch.ones_like(rep))
            state[1].index_add_(0, cells, rep)
            state[2].index_add_(0, cells, _checksum(rep))

    def compute(self) -> dict[str, Tensor]:
        return {}

    def confusion_matrix(self, level: int | str) -> Tensor:
        """[n, n + 1] counts of a dense level (rows true, columns predicted, last column: no
        prediction at this level), in the level's column order. Synced across processes."""
        d = self.hierarchy.level_number(level)
        if not self.dense_levels[d - 1]:
            raise ValueError(
                f"level {self.hierarchy.level_names[d - 1]!r} has more than max_dense="
                f"{self.max_dense} nodes, so only its top confused pairs are kept; use confusions()"
            )
        with self.sync_context():
            return getattr(self, f"confusion_{d}").clone()

    def confusions(self, top_k: int | None = None) -> dict[str, list[tuple[str, str, int]]]:
        """Per level name, the ``top_k`` most frequent mistakes as (true id, predicted id,
        count), most frequent first (ties by column). Early stops are not listed."""
        top_k = self.top_k if top_k is None else top_k
        h = self.hierarchy
        out: dict[str, list[tuple[str, str, int]]] = {}
        with self.sync_context():
            for d in range(1, h.num_levels + 1):
                state = getattr(self, f"confusion_{d}")
                sl = h.level_slice(d)
                n = sl.stop - sl.start
                if self.dense_levels[d - 1]:
                    counts = state[:, :n].clone()
                    counts.fill_diagonal_(0)
                    keys = counts.flatten().nonzero().squeeze(1)
                    t, p, c = keys // n, keys % n, counts.flatten()[keys]
                else:
                    keys, c = self._peel(state, n, h.level_names[d - 1])
                    t, p = keys // (n + 1), keys % (n + 1)
                    keep = p < n
                    t, p, c = t[keep], p[keep], c[keep]
                # Most frequent first, ties by (true, predicted) column: two stable sorts.
                order = torch.sort(t * n + p, stable=True).indices
                order = order[torch.sort(-c[order], stable=True).indices][:top_k]
                nodes = h.nodes
                out[h.level_names[d - 1]] = [
                    (nodes[sl.start + ti], nodes[sl.start + pi], ci)
                    for ti, pi, ci in zip(
                        t[order].tolist(), p[order].tolist(), c[order].tolist(), strict=True
                    )
                ]
        return out

    def _peel(self, state: Tensor, n: int, level: str) -> tuple[Tensor, Tensor]:
        """Recover (keys, counts) from a table; exact for every key returned."""
        count, keysum, check = (x.clone() for x in state)
        width, max_key = self.width, n * (n + 1)
        part = torch.arange(count.numel(), device=count.device) // width
        keys_out, counts_out = [], []
        while True:
            key = keysum // count.clamp_min(1)
            pure = (count > 0) & (key * count == keysum) & (key >= 0) & (key < max_key)
            key = torch.where(pure, key, 0)
            pure &= _checksum(key) * count == check
            pure &= _cells(key, width).gather(1, part[:, None]).squeeze(1) == torch.arange(
                count.numel(), device=count.device
            )
            if not bool(pure.any()):
                break
            found, first = _unique_first(key[pure])
            c = count[pure][first]
            keys_out.append(found)
            counts_out.append(c)
            cells = _cells(found, width).flatten()
            rep_k, rep_c = found.repeat_interleave(_PARTS), c.repeat_interleave(_PARTS)
            count.index_add_(0, cells, -rep_c)
            keysum.index_add_(0, cells, -rep_k * rep_c)
            check.index_add_(0, cells, -_checksum(rep_k) * rep_c)
        if bool((count != 0).any()):
            warnings.warn(
                f"the confusion table of level {level!r} holds more distinct mistakes than it can "
                f"recover; the pairs listed are exact but some are missing (raise "
                f"`confusion_capacity`, now {_PARTS * width})",
                stacklevel=3,
            )
        if not keys_out:
            empty = torch.zeros(0, dtype=torch.long, device=count.device)
            return empty, empty
        return torch.cat(keys_out), torch.cat(counts_out)


def _unique_first(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique values of ``x`` and the index of one occurrence of each."""
    uniq, inverse = torch.unique(x, return_inverse=True)
    first = torch.zeros_like(uniq).scatter_(0, inverse, torch.arange(x.numel(), device=x.device))
    return uniq, first
