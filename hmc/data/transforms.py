"""Image transform presets. Every preset takes a PIL image of any mode (grey included) and
returns a float tensor [3, S, S], normalised."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from hmc.checks import check_choice

__all__ = ["PRESETS", "build_transforms", "decode_size", "default_image_size"]

PRESETS = ("paper", "imagenet", "small")

# The HRN paper's recipe: resize to 550 x 550, crop 448 (random + 8 px padding in training,
# centre in evaluation), flip, normalise to [-1, 1].
PAPER_RESIZE, PAPER_CROP, PAPER_PAD = 550, 448, 8
HALF = (0.5, 0.5, 0.5)


def default_image_size(preset: str) -> int:
    """Side of the output image when ``image_size`` is not given."""
    check_choice("preset", preset, PRESETS)
    return {"paper": PAPER_CROP, "imagenet": 224, "small": 64}[preset]


def decode_size(preset: str, image_size: int | None = None) -> int | None:
    """The side every image is resized to first (so it can be decoded no larger), or None
    when the preset may zoom in (``imagenet``'s random-resized crop)."""
    check_choice("preset", preset, PRESETS)
    size = int(image_size or default_image_size(preset))
    if preset == "paper":
        return round(size * PAPER_RESIZE / PAPER_CROP)
    return size if preset == "small" else None


def build_transforms(
    preset: str = "paper",
    train: bool = True,
    image_size: int | None = None,
    *,
    data_config: Mapping[str, Any] | None = None,
) -> Callable:
    """The transform of a preset, for training (augmenting) or evaluation.

    Args:
        preset: ``"paper"``: resize 550, random crop 448 with padding 8, horizontal flip,
            normalise with mean = std = 0.5; evaluation resizes to 550 and centre-crops 448.
            With ``image_size`` S the resize is round(S * 550 / 448). ``"imagenet"``: timm's
            ``create_transform`` (random-resized crop, flip, colour jitter; evaluation
            resize + centre crop at crop_pct), ImageNet mean/std, or the timm
            ``data_config`` given (e.g. ``timm.data.resolve_data_config(model=m)``).
            ``"small"``: for CPU runs: resize to S x S, random crop S with S/8 padding and flip
            in training, normalise with 0.5.
        train: training (random augmentation) or evaluation (deterministic).
        image_size: output side S; default :func:`default_image_size`.
        data_config: timm data config for ``"imagenet"`` (keys ``input_size``, ``mean``,
            ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``); ignored otherwise.

    Returns:
        A callable PIL image -> float tensor [3, S, S].
    """
    from torchvision.transforms import v2  # imported here: `import hmc.data` stays light

    check_choice("preset", preset, PRESETS)
    size = int(image_size or default_image_size(preset))
    if size < 1:
        raise ValueError(f"Expected argument `image_size` to be positive, but got {size}")
    if preset == "imagenet":
        return _timm_transforms(train, image_size, data_config)
    if preset == "paper":
        resize = round(size * PAPER_RESIZE / PAPER_CROP)
        pad = PAPER_PAD if size == PAPER_CROP else max(1, round(size * PAPER_PAD / PAPER_CROP))
    else:
        resize, pad = size, max(1, size // 8)
    ops: list[Callable] = [v2.RGB(), v2.Resize((resize, resize), antialias=True)]
    if train:
        ops += [v2.RandomCrop(size, padding=pad), v2.RandomHorizontalFlip()]
    elif resize != size:
        ops += [v2.CenterCrop(size)]
    ops += [ToNormalizedTensor(HALF, HALF)]
    return v2.Compose(ops)


class ToNormalizedTensor:
    """PIL RGB image (or uint8 tensor [3, H, W]) -> contiguous float32 [3, H, W] equal to
    (x / 255 - mean) / std, in one multiply-subtract, returned as a plain tensor.

    Kept over ``v2.ToImage/ToDtype/Normalize/ToPureTensor`` (same values) because it is
    faster end to end: ``benchmarks/data.py --presets small+draft small+draft+tv`` on CUB
    JPEGs (0 workers, train transform, a busy 2-core machine) gave 94 vs 77 images/s for the
    small preset at 64 px (1.2x; ``benchmarks/results/data_normalize.md``). Timed alone, the
    same two pipelines took 4.3 vs 7.5 ms per image (small, 64 px) and 30 vs 35 ms (paper)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(mean, dtype=torch.float32)[:, None, None] / std_t

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            x = image.as_subclass(torch.Tensor)
        else:
            x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # [H, W, 3]
            x = x.permute(2, 0, 1)
        if x.dtype.is_floating_point:  # already in [0, 1]
            x = x.to(torch.float32) * 255.0
        return x.contiguous().to(torch.float32).mul_(self._scale).sub_(self._shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def _timm_transforms(
    train: bool, image_size: int | None, data_config: Mapping[str, Any] | None
) -> Callable:
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import v2

    cfg = dict(resolve_data_config(args=dict(data_config or {"input_size": (3, 224, 224)})))
    if image_size is not None:
        cfg["input_size"] = (3, int(image_size), int(image_size))
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    tf = create_transform(is_training=train, **{k: cfg[k] for k in keys if k in cfg})
    # timm's pipeline keeps grey images 1-channel; convert first so every preset gives 3.
    return v2.Compose([v2.RGB(), tf])
