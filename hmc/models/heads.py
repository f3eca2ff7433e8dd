"""Heads that turn a feature map [B, C, H, W] into node scores [B, N] in hierarchy column order.

Every head returns :class:`HeadOutput` and has two class attributes: ``score_kind``, telling
losses and decoders how to read ``node_scores``, and ``default_loss``, the name of the loss that
fits it in :func:`hmc.losses.build_loss` (the head's own name for the three below):

- :class:`HRNHead` (``"states"``): the HRN paper's head (Chen et al., CVPR 2022).
- :class:`FlatHead` (``"level_logits"``): one linear softmax classifier per level.
- :class:`LeafHead` (``"leaf_log_probs"``): one softmax over the leaves, marginalised upwards.

Heads are registered by name (``register_head``/``create_head``/``list_heads``), timm-style.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import Tensor, nn

from hmc.checks import upcast_half
from hmc.hierarchy import Hierarchy
from hmc.hierarchy.marginals import (
    leaf_ancestor_pairs,
    leaf_to_node_log_probs,
    scatter_logsumexp,
)

__all__ = [
    "FlatHead",
    "HRNHead",
    "HeadOutput",
    "LeafHead",
    "create_head",
    "leaf_log_marginals",
    "list_heads",
    "register_head",
]


class HeadOutput(NamedTuple):
    """node_scores: [B, N] in hierarchy column order. leaf_logits: [B, L] (column j scores leaf
    column ``h.tensors().leaves[j]``) or None. level_features: D tensors [B, F]."""

    node_scores: Tensor
    leaf_logits: Optional[Tensor]  # noqa: UP045 - TorchScript needs typing.Optional/List
    level_features: list[Tensor]


_HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a head available to :func:`create_head` / ``build_model(head=name)``.
    A head is constructed as ``cls(hierarchy, in_features, **head_kwargs)`` and exposes
    ``score_kind``, ``default_loss`` (a :func:`hmc.losses.build_loss` name) and a JSON-able
    ``config`` (the kwargs that rebuild it)."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"a head named {name!r} is already registered ({_HEADS[name]})")
        _HEADS[name] = cls
        return cls

    return add


def list_heads() -> list[str]:
    """Names of the registered heads."""
    return sorted(_HEADS)


def create_head(hierarchy: Hierarchy, name: str, in_features: int, **head_kwargs: Any) -> nn.Module:
    """Build a registered head for ``hierarchy`` on a feature map [B, in_features, H, W]
    (``in_features`` = the backbone's ``num_features``, as timm names it)."""
    if name not in _HEADS:
        raise ValueError(f"Expected argument `head` to be one of {list_heads()}, but got {name!r}")
    accepted = _options(_HEADS[name])
    unknown = sorted(set(head_kwargs) - accepted) if accepted is not None else []
    if unknown:
        owners = sorted(
            h for h in _HEADS if h != name and set(unknown) <= (_options(_HEADS[h]) or set())
        )
        raise ValueError(
            f"head_kwargs {unknown} do not apply to head {name!r} (its options: "
            f"{sorted(accepted)})" + (f"; they are options of {owners}" if owners else "")
        )
    return _HEADS[name](hierarchy, in_features, **head_kwargs)


def _options(cls: type) -> set[str] | None:
    """Keyword options of a head class after (hierarchy, in_features); None: it takes any."""
    import inspect

    params = list(inspect.signature(cls).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_hierarchy(hierarchy: object) -> Hierarchy:
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(
            f"Expected argument `hierarchy` to be an hmc.Hierarchy, got {type(hierarchy).__name__}"
        )
    return hierarchy


# --------------------------------------------------------------------------------- HRN


class _LevelBranch(nn.Module):
    """One granularity-specific branch: conv block -> GAP -> MLP embedding, plus the level's
    classifier (applied by the head to the residual sum, not to this branch's embedding)."""

    def __init__(
        self,
        in_features: int,
        mid_channels: int,
        block_channels: int,
        hidden: int,
        feature_dim: int,
        num_classes: int,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        bn = {"momentum": bn_momentum}
        self.block = nn.Sequential(
            ConvNormAct(in_features, mid_channels, 1, norm_kwargs=bn),
            ConvNormAct(mid_channels, block_channels, 3, norm_kwargs=bn),
        )
        self.fc = nn.Sequential(
            nn.BatchNorm1d(block_channels),
            nn.Linear(block_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ELU(),
            nn.Linear(hidden, feature_dim),
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, feature_dim] (before the hierarchical residual)."""
        return self.fc(self.block(x).mean(dim=(2, 3)))


@register_head("hrn")
class HRNHead(nn.Module):
    """The HRN head: one granularity-specific branch per level and hierarchical residuals.

    Branch d: 1x1 conv C->mid, 3x3 conv mid->block (each conv -> BN -> ReLU), global average
    pooling, BN -> Linear(block, hidden) -> BN -> ELU -> Linear(hidden, feature_dim), giving
    ``e_d`` [B, F]. Level d's feature is ``f_d = ReLU(e_1 + ... + e_d)`` (the sum over the level
    and all its ancestor levels), and level d's classifier ``Linear(F, n_d)`` scores exactly the
    level's nodes, so concatenating the levels gives ``node_scores`` [B, N] in column order.
    These are pre-sigmoid scores (the paper applies a sigmoid; losses and decoders take
    ``scores="sigmoid"``). Gradients of deeper levels flow into every ancestor branch.

    A separate leaf classifier ``Linear(F, L)`` on the deepest feature ``f_D`` gives
    ``leaf_logits`` [B, L] for the paper's cross-entropy term, over *all* leaves.

    Ragged trees: a leaf at level d < D is a column of level d, scored by level d's classifier
    like any node of that level (it has no column at deeper levels). The leaf classifier still
    scores it from ``f_D``, which contains every level's embedding, so the softmax over all
    leaves (and its cross-entropy) covers shallow and deep leaves alike.

    Defaults are the paper's widths: mid = C/2, block = C, hidden = 1024, feature_dim = 512,
    conv BN momentum 0.01 as in the authors' code. ``residual=False`` is the paper's ablation
    without hierarchical residuals.
    """

    score_kind = "states"
    default_loss = "hrn"

    def __init__(
        self,
        hierarchy: Hierarchy,
        in_features: int,
        *,
        mid_channels: int | None = None,
        block_channels: int | None = None,
        hidden: int = 1024,
        feature_dim: int = 512,
        residual: bool = True,
        leaf_classifier: bool = True,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.hierarchy = _check_hierarchy(hierarchy)
        mid_channels = mid_channels or max(1, in_features // 2)
        block_channels = block_channels or in_features
        self.config = dict(
            mid_channels=mid_channels,
            block_channels=block_channels,
            hidden=hidden,
            feature_dim=feature_dim,
            residual=residual,
            leaf_classifier=leaf_classifier,
            bn_momentum=bn_momentum,
        )
        self.residual = residual
        self.feature_dim = feature_dim
        self.levels = nn.ModuleList(
            _LevelBranch(
                in_features, mid_channels, block_channels, hidden, feature_dim, n, bn_momentum
            )
            for n in hierarchy.level_sizes().values()
        )
        num_leaves = len(hierarchy.leaves)
        self.leaf_classifier = nn.Linear(feature_dim, num_leaves) if leaf_classifier else None

    def forward(self, x: Tensor) -> HeadOutput:
        """x: [B, C, H, W] -> HeadOutput([B, N], [B, L] or None, D x [B, feature_dim])."""
        acc = x.new_zeros(x.shape[0], self.feature_dim)
        scores: list[Tensor] = []
        features: list[Tensor] = []
        for branch in self.levels:
            e = branch.embed(x)  # (B, C, H, W) -> (B, F)
            acc = acc + e if self.residual else e
            f = F.relu(acc)
            features.append(f)
            scores.append(branch.classifier(f))  # (B, F) -> (B, n_d)
        leaf_logits: Optional[Tensor] = None  # noqa: UP045
        if self.leaf_classifier is not None:
            leaf_logits = self.leaf_classifier(features[-1])  # (B, F) -> (B, L)
        return HeadOutput(torch.cat(scores, dim=1), leaf_logits, features)


# ----------------------------------------------------------------------------- baselines
@register_head("flat")
class FlatHead(nn.Module):
    """Global average pooling, then one linear softmax classifier per level (independent).
    ``node_scores`` level slice d holds level d's logits. ``level_features`` are D references
    to the pooled feature [B, C]; ``leaf_logits`` is None."""

    score_kind = "level_logits"
    default_loss = "flat"

    def __init__(self, hierarchy: Hierarchy, in_features: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.hierarchy = _check_hierarchy(hierarchy)
        self.config = dict(dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifiers = nn.ModuleList(
            nn.Linear(in_features, n) for n in hierarchy.level_sizes().values()
        )

    def forward(self, x: Tensor) -> HeadOutput:
        """x: [B, C, H, W] -> HeadOutput([B, N], None, D x [B, C])."""
        pooled = x.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        z = self.dropout(pooled)
        scores = [clf(z) for clf in self.classifiers]
        features = [pooled for _ in self.classifiers]
        return HeadOutput(torch.cat(scores, dim=1), None, features)


@register_head("leaf")
class LeafHead(nn.Module):
    """Global average pooling, one softmax over all leaves, coarser levels by marginalisation:
    ``node_scores[:, v] = log P(v) = logsumexp`` of the leaf log-softmax over the leaves below
    ``v`` (a leaf's own column is its log-probability; shallow leaves of ragged trees included).
    ``leaf_logits`` are the raw leaf logits [B, L]."""

    score_kind = "leaf_log_probs"
    default_loss = "leaf"

    def __init__(self, hierarchy: Hierarchy, in_features: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.hierarchy = _check_hierarchy(hierarchy)
        self.config = dict(dropout=dropout)
        self.num_levels = hierarchy.num_levels
        self.num_nodes = hierarchy.num_nodes
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, len(hierarchy.leaves))
        pair_leaf, pair_node = (t.clone() for t in leaf_ancestor_pairs(hierarchy))
        self.register_buffer("pair_leaf", pair_leaf, persistent=False)
        self.register_buffer("pair_node", pair_node, persistent=False)

    def forward(self, x: Tensor) -> HeadOutput:
        """x: [B, C, H, W] -> HeadOutput([B, N] log-probabilities, [B, L], D x [B, C])."""
        pooled = x.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        leaf_logits = self.classifier(self.dropout(pooled))  # (B, C) -> (B, L)
        log_p = F.log_softmax(leaf_logits, dim=-1)
        scores = scatter_logsumexp(log_p, self.pair_leaf, self.pair_node, self.num_nodes)
        features = [pooled for _ in range(self.num_levels)]
        return HeadOutput(scores, leaf_logits, features)


def leaf_log_marginals(hierarchy: Hierarchy, leaf_logits: Tensor) -> Tensor:
    """[B, N] log P(v) = logsumexp of the leaf log-softmax over the leaves below v, the
    LeafHead's ``node_scores``; a leaf's column is exactly its log-softmax.

    leaf_logits: [B, L], column j = leaf column ``hierarchy.tensors().leaves[j]``.
    Differentiable; half inputs are computed in float32.
    """
    n_leaves = len(hierarchy.leaves)
    if leaf_logits.ndim != 2 or leaf_logits.shape[1] != n_leaves:
        raise ValueError(
            f"Expected `leaf_logits` of shape [B, {n_leaves}] (one column per leaf of "
            f"{hierarchy!r}), but got {list(leaf_logits.shape)}"
        )
    x = upcast_half(leaf_logits)
    with torch.autocast(x.device.type, enabled=False):
        return leaf_to_node_log_probs(hierarchy, F.log_softmax(x, dim=-1))
