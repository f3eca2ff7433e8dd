"""Argument checks shared by every layer (the bottom layer: imports nothing from hmc).

Errors read like torchmetrics': "Expected argument `average` to be one of [...], but got 'x'".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_choice", "check_node_scores", "upcast_half"]


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming the argument unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {choices}, but got {value!r}")


def upcast_half(x: Tensor) -> Tensor:
    """``x`` in float32 if it is float16/bfloat16 (autocast outputs), else ``x`` itself: the
    losses and decoders compute in float32 or float64, never in half."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_node_scores(hierarchy: Any, node_scores: Tensor, name: str = "node_scores") -> Tensor:
    """``node_scores`` checked to be [B, N] (N = ``hierarchy.num_nodes``), upcast from half."""
    n = hierarchy.num_nodes
    if node_scores.ndim != 2 or node_scores.shape[1] != n:
        raise ValueError(
            f"Expected `{name}` of shape [B, {n}] (one column per node of {hierarchy!r}), "
            f"but got {list(node_scores.shape)}"
        )
    return upcast_half(node_scores)
