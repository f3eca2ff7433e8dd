"""Input validation and formatting shared by every metric in :mod:`hmc.metrics`.

One update's inputs become one :class:`MetricBatch`: per-level targets and predictions as
``[B, D]`` columns (-1 where a level does not count), and cached per-level views of the node
probabilities (max, top-k) that several metrics reuse. A metric collection formats a batch once
and hands the same object to all of its metrics.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hmc.hierarchy import Hierarchy, HierarchyTensors

__all__ = ["MetricBatch", "as_tensor", "PROB_TOLERANCE"]

#: node_probs may leave [0, 1] by this much (float rounding) before validation fails.
PROB_TOLERANCE = 1e-3


def as_tensor(x: Any, name: str, device: torch.device | None = None) -> Tensor:
    """A tensor from a tensor, numpy array or nested list, without copying when possible."""
    if isinstance(x, Tensor):
        return x.detach() if device is None else x.detach().to(device)
    if isinstance(x, (np.ndarray, list, tuple)):
        arr = np.asarray(x)
        if not arr.flags.writeable:  # read-only memmaps: metrics never write to their inputs
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.as_tensor(arr, device=device)
        return torch.as_tensor(arr, device=device)
    raise TypeError(
        f"Expected argument `{name}` to be a torch.Tensor or numpy array, "
        f"but got {type(x).__name__}"
    )


class MetricBatch:
    """One update's inputs, validated and in the package's column convention.

    Attributes:
        level_targets: [B, D] long, the label's ancestor column per level, -1 at levels the
            sample is not labelled at (below a coarse label, and everywhere if unlabelled).
        label_level: [B] long, the level 1..D of the label, 0 for an unlabelled sample.
        probs: [B, N] float probabilities, or None when only predictions were given.
        predictions: [B, D] long per-level predicted columns, -1 where nothing was predicted;
            the per-level argmax of ``probs`` when no predictions were given.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        node_probs: Any = None,
        targets: Any = None,
        predictions: Any = None,
        *,
        validate_args: bool = True,
    ) -> None:
        self.hierarchy = hierarchy
        if targets is None:
            raise ValueError("Expected argument `targets` to be given, but got None")
        if node_probs is None and predictions is None:
            raise ValueError(
                "Expected at least one of `node_probs` and `predictions` to be given, "
                "but got neither"
            )
        probs = None if node_probs is None else as_tensor(node_probs, "node_probs")
        targets_t = as_tensor(targets, "targets", None if probs is None else probs.device)
        self.device = targets_t.device
        self.tensors: HierarchyTensors = hierarchy.tensors(self.device)

        self.level_targets = self._format_targets(targets_t, validate_args)
        batch = self.level_targets.shape[0]
        self.label_level = (self.level_targets >= 0).sum(1)
        self.labelled = self.label_level > 0
        self.probs: Tensor | None = (
            None if probs is None else self._format_probs(probs, batch, validate_args)
        )
        self._max_cache: dict[int, tuple[Tensor, Tensor]] = {}
        self._topk_cache: dict[int, tuple[Tensor, Tensor]] = {}

        if predictions is not None:
            pred = as_tensor(predictions, "predictions", self.device)
            self.predictions = self._format_predictions(pred, batch, validate_args)
        else:
            levels = range(1, hierarchy.num_levels + 1)
            self.predictions = torch.stack([self.level_max(d)[1] for d in levels], dim=1)

    # ------------------------------------------------------------------ formatting
    def _format_probs(self, probs: Tensor, batch: int, validate: bool) -> Tensor:
        num_nodes = self.hierarchy.num_nodes
        if probs.ndim != 2 or probs.shape[1] != num_nodes:
            raise ValueError(
                f"Expected argument `node_probs` to have shape [B, {num_nodes}] (one column "
                f"per node of the hierarchy), but got shape {list(probs.shape)}"
            )
        if not probs.is_floating_point():
            raise ValueError(
                "Expected argument `node_probs` to be a floating point tensor, "
                f"but got {probs.dtype}"
            )
        if probs.dtype not in (torch.float32, torch.float64):
            probs = probs.float()
        _check_batch(probs, batch, "node_probs")
        if validate and probs.numel():
            lo, hi = torch.aminmax(probs)
            # Slack for rounding (exp of a log-sum can give 1 + 1e-7); metrics clamp.
            if not (lo >= -PROB_TOLERANCE and hi <= 1 + PROB_TOLERANCE):  # NaN fails too
                raise ValueError(
                    "Expected argument `node_probs` to hold probabilities in [0, 1], but got "
                    f"values in [{lo.item():.4g}, {hi.item():.4g}]; convert scores with "
                    "hmc.decoding.node_probabilities() first"
                )
        return probs

    def _format_targets(self, targets: Tensor, validate: bool) -> Tensor:
        h = self.hierarchy
        targets = _integers(targets, "targets")
        if targets.ndim == 1:
            if validate:
                _check_nodes(h, targets, "targets", " or a negative value for unlabelled")
            return h.level_targets(targets)
        if targets.ndim == 2 and targets.shape[1] == h.num_levels:
            # Per-level targets: the deepest labelled column is the label.
            levels = torch.where(targets >= 0, targets, -1)
            if validate:
                self._check_levels(levels, "targets")
            depth = (levels >= 0).sum(1)
            label = levels.gather(1, (depth - 1).clamp_min(0)[:, None]).squeeze(1)
            label = torch.where(depth > 0, label, -1)
            out = h.level_targets(label)
            if validate and not torch.equal(out, levels):
                bad = int((out != levels).any(1).nonzero()[0])
                ids = [h.nodes[c] if c >= 0 else None for c in levels[bad].tolist()]
                raise ValueError(
                    f"Expected argument `targets` rows to be paths of the tree (each column the "
                    f"parent of the next, -1 only below the label), but row {bad} is "
                    f"{levels[bad].tolist()} ({ids})"
                )
            return out
        raise ValueError(
            f"Expected argument `targets` to have shape [B] (node columns) or [B, {h.num_levels}] "
            f"(per-level columns), but got shape {list(targets.shape)}"
        )

    def _format_predictions(self, pred: Tensor, batch: int, validate: bool) -> Tensor:
        h = self.hierarchy
        pred = _integers(pred, "predictions")
        _check_batch(pred, batch, "predictions")
        if pred.ndim == 1:
            if validate:
                _check_nodes(h, pred, "predictions")
            return h.level_targets(pred)
        if pred.ndim == 2 and pred.shape[1] == h.num_levels:
            pred = torch.where(pred >= 0, pred, -1)
            if validate:
                self._check_levels(pred, "predictions")
            return pred
        raise ValueError(
            f"Expected argument `predictions` to have shape [B, {h.num_levels}] (Decoded.nodes) "
            f"or [B] (one node per sample), but got shape {list(pred.shape)}"
        )

    def _check_levels(self, cols: Tensor, name: str) -> None:
        off = self.tensors.level_offsets
        ok = (cols < 0) | ((cols >= off[:-1]) & (cols < off[1:]))
        if not bool(ok.all()):
            row, d = (int(i) for i in (~ok).nonzero()[0])
            level = self.hierarchy.level_names[d]
            raise ValueError(
                f"Expected `{name}[:, {d}]` to hold columns of level {level!r} "
                f"([{int(off[d])}, {int(off[d + 1])})) or -1, but got {name}[{row}, {d}] = "
                f"{int(cols[row, d])}"
            )

    # ------------------------------------------------------------ shared views
    def level_probs(self, d: int) -> Tensor:
        """[B, n_d] probabilities of level d's nodes (a view)."""
        if self.probs is None:
            raise ValueError("this metric needs `node_probs`, but update() got None")
        sl = self.hierarchy.level_slice(d)
        return self.probs[:, sl]

    def level_max(self, d: int) -> tuple[Tensor, Tensor]:
        """Top-1 within level d: ([B] probability, [B] column); ties go to the lower column."""
        if d not in self._max_cache:
            values, idx = self.level_probs(d).max(1)  # torch.max: the first maximum
            self._max_cache[d] = (values, idx + self.hierarchy.level_slice(d).start)
        return self._max_cache[d]

    def level_topk(self, d: int, k: int) -> tuple[Tensor, Tensor]:
        """Top-k within level d, k clipped to the level's size: ([B, k'] probs, [B, k'] columns),
        best first. The order of equal probabilities is unspecified."""
        cached = self._topk_cache.get(d)
        if cached is None or cached[0].shape[1] < k:
            p = self.level_probs(d)
            values, idx = p.topk(min(k, p.shape[1]), 1)
            cached = (values, idx + self.hierarchy.level_slice(d).start)
            self._topk_cache[d] = cached
        return cached[0][:, :k], cached[1][:, :k]

    def target_probs(self, d: int) -> Tensor:
        """[B] probability of the level-d target (0 where unlabelled at d)."""
        assert self.probs is not None
        col = self.level_targets[:, d - 1]
        return self.probs.gather(1, col.clamp_min(0)[:, None]).squeeze(1) * (col >= 0)

    def deepest_target(self) -> Tensor:
        """[B] the label column (-1 for unlabelled)."""
        idx = (self.label_level - 1).clamp_min(0)[:, None]
        return torch.where(self.labelled, self.level_targets.gather(1, idx).squeeze(1), -1)

    def predictions_within_labels(self) -> Tensor:
        """[B, D] predictions with the levels the sample is not labelled at set to -1."""
        return torch.where(self.level_targets >= 0, self.predictions, -1)

    def __len__(self) -> int:
        return self.level_targets.shape[0]


def _check_batch(x: Tensor, batch: int, name: str) -> None:
    if x.shape[0] != batch:
        raise ValueError(
            f"Expected argument `{name}` to have {batch} rows (one per target), but got "
            f"shape {list(x.shape)}"
        )


def _integers(x: Tensor, name: str) -> Tensor:
    if x.is_floating_point() or x.dtype == torch.bool:
        raise ValueError(f"Expected argument `{name}` to be an integer tensor, but got {x.dtype}")
    return x.long()


def _check_nodes(h: Hierarchy, cols: Tensor, name: str, negative: str = "") -> None:
    """[B] node columns must be < num_nodes (negative ones mean "none")."""
    if cols.numel() and int(cols.max()) >= h.num_nodes:
        bad = int(cols.argmax())
        raise ValueError(
            f"Expected argument `{name}` to hold node columns in [0, {h.num_nodes}){negative}, "
            f"but got {name}[{bad}] = {int(cols[bad])}"
        )
