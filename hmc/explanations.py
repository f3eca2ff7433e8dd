"""Per-level class-activation maps: where the model looks when it decides each level.

The module is ``explanations`` and its function :func:`explain` (``hmc.explain``): a module
of the function's own name would shadow the function in the package face once imported.

:func:`explain` runs one forward pass with gradients and then one backward pass per level
(torchcam's extractors take the scores of a forward pass the caller ran and backpropagate with
``retain_graph``), so explaining D levels costs one forward and D backward passes, never one
forward per level. torchcam was chosen over pytorch-grad-cam (``grad-cam``) for that reason:
grad-cam's ``BaseCAM.__call__`` always runs its own forward, so reusing one forward across
levels would mean driving its internals; torchcam also adds no dependency (grad-cam pulls in
OpenCV, scikit-learn and ttach). The CAM maths is torchcam's; this module picks targets and
layers, resizes the maps to the image and draws them.

Targets (``target=``): ``"score"`` is the head's own output column for the node (HRN: the
node's state score; flat head: its level logit; leaf head: its log-probability), the
pre-softmax quantity Grad-CAM is defined on. ``"probability"`` is the node's probability under
:func:`hmc.decoding.node_probabilities`, the model the decoders use.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from hmc.checks import check_choice
from hmc.decoding import decode, node_probabilities
from hmc.hierarchy import Hierarchy, UnknownLabelError
from hmc.models.backbone import probe_forward

__all__ = [
    "METHODS",
    "PANEL_PX",
    "TARGETS",
    "Explanation",
    "explain",
    "explain_files",
    "find_target_layer",
    "node_column",
    "overlay",
    "render_explanation",
    "strip_titles",
    "to_display",
    "write_explanations",
]

TARGETS = ("score", "probability")
PANEL_PX = 224  # smallest side of a panel in render_explanation's picture


def _torchcam_methods() -> dict[str, Callable[..., Any]]:
    # Gradient methods only: they read the caller's scores, so one forward serves every level
    # (torchcam's Score-CAM family runs its own forward passes per channel).
    from torchcam.methods import GradCAM, GradCAMpp, LayerCAM, XGradCAM

    return {"gradcam": GradCAM, "gradcampp": GradCAMpp, "xgradcam": XGradCAM, "layercam": LayerCAM}


METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam")


class Explanation(NamedTuple):
    """maps: [B, K, H, W] float in [0, 1], one map per image and explained level, at the input
    images' size (zeros where ``nodes`` is -1). nodes: [B, K] long, the column explained
    (-1 below a decoder's early stop). probs: [B, K] float, P(node) under the decoder's
    probability model. levels: the K level numbers (1..D)."""

    maps: Tensor
    nodes: Tensor
    probs: Tensor
    levels: tuple[int, ...]

    def for_image(self, i: int) -> Explanation:
        """Image ``i``'s explanation: maps [K, H, W], nodes [K], probs [K]."""
        return Explanation(self.maps[i], self.nodes[i], self.probs[i], self.levels)


def _unpack(predictor_or_model: Any) -> tuple[nn.Module, Hierarchy, str, dict[str, Any], str]:
    """(model, hierarchy, decoder, decoder_kwargs, scores) of a Predictor or a
    HierarchicalClassifier."""
    model = getattr(predictor_or_model, "model", predictor_or_model)
    hierarchy = getattr(model, "hierarchy", None)
    if not isinstance(model, nn.Module) or not hasattr(model, "head") or hierarchy is None:
        raise TypeError(
            "Expected an hmc Predictor (hmc.load_model) or HierarchicalClassifier "
            f"(hmc.build_model), got {type(predictor_or_model).__name__}"
        )
    decoder = getattr(predictor_or_model, "decoder", "argmax")
    decoder_kwargs = dict(getattr(predictor_or_model, "decoder_kwargs", None) or {})
    scores = getattr(predictor_or_model, "scores", "sigmoid")
    return model, hierarchy, decoder, decoder_kwargs, scores


def node_column(hierarchy: Hierarchy, node: str | int) -> int:
    """Column of a node given by id, column or unique display name; otherwise
    :class:`hmc.UnknownLabelError` with close matches."""
    if isinstance(node, (int, np.integer)) and not isinstance(node, bool):
        if not 0 <= int(node) < hierarchy.num_nodes:
            raise UnknownLabelError(
                f"column {int(node)} out of range for {hierarchy.num_nodes} nodes"
            )
        return int(node)
    if node not in hierarchy:
        by_name = [i for i, n in enumerate(hierarchy.names) if n == node]
        if len(by_name) == 1:
            return by_name[0]
    return hierarchy.index(node)  # raises UnknownLabelError (did you mean ...?)


# ----------------------------------------------------------------------------- layers
def find_target_layer(model: nn.Module) -> str:
    """Name (in ``model.named_modules()``) of the backbone module whose output is the feature
    map the head reads: the last stage (``backbone.layer4`` for ResNets, ``backbone.bn2`` for
    EfficientNets). Found by one small probe forward; raises ``ValueError`` saying how to pass
    ``target_layer`` when no module returns that tensor (e.g. it ends in a functional op)."""
    backbone = model.backbone
    done: list[tuple[str, Any]] = []  # (name, output) in the order modules finish
    feat = probe_forward(backbone, lambda name, _mod, out: done.append((name, out)))
    # Outer modules finish after inner ones, so the last match is the whole stage.
    modules = dict(backbone.named_modules())
    same = [n for n, out in done if out is feat and not isinstance(modules[n], nn.Identity)]
    if same:
        return f"backbone.{same[-1]}"
    maps = [name for name, out in done if isinstance(out, Tensor) and out.ndim == 4]
    examples = ", ".join(repr(f"backbone.{n}") for n in maps[-3:]) or "'backbone.<module>'"
    raise ValueError(
        f"cannot find a target layer in backbone {type(backbone).__name__}: no module returns "
        "the feature map that forward_features gives the head. Pass one with "
        f"target_layer= (CLI: --target_layer), a name from model.named_modules() whose output "
        f"is a [B, C, H, W] map, e.g. {examples}"
    )


def _resolve_layer(model: nn.Module, target_layer: str | nn.Module | None) -> str:
    if target_layer is None:
        return find_target_layer(model)
    names = dict(model.named_modules())
    if isinstance(target_layer, nn.Module):
        for name, m in names.items():
            if m is target_layer:
                return name
        raise ValueError("`target_layer` is a module that is not part of the model")
    for name in (target_layer, f"backbone.{target_layer}"):
        if name and name in names:
            return name
    close = difflib.get_close_matches(target_layer, list(names), n=3)
    hint = f"; did you mean {close}?" if close else " (see model.named_modules())"
    raise ValueError(f"`target_layer` {target_layer!r} is not a module of the model{hint}")


# --------------------------------------------------------------------------- explain
def explain(
    predictor_or_model: Any,
    images: Tensor,
    method: str = "gradcam",
    levels: Sequence[int | str] | None = None,
    *,
    node: str | int | None = None,
    target: str = "score",
    target_layer: str | nn.Module | None = None,
    decoder: str | None = None,
    decoder_kwargs: dict[str, Any] | None = None,
) -> Explanation:
    """Class-activation maps of each image for the node decoded at each level.

    Args:
        predictor_or_model: a :class:`hmc.predict.Predictor` (its decoder and score mode are
            used) or a :class:`hmc.models.HierarchicalClassifier` (argmax, sigmoid scores).
        images: [B, 3, H, W], already transformed as the model expects.
        method: a torchcam gradient method, one of :data:`METHODS`.
        levels: level numbers (1..D) or names to explain; default all.
        node: explain this node (id, column or unique display name) for every image instead of
            the decoded ones; only its level is returned.
        target: ``"score"`` (the head's output) or ``"probability"`` (see the module doc).
        target_layer: a module name of the model (``"backbone.layer3"``) or the module;
            default :func:`find_target_layer`.
        decoder: override the predictor's decoder (:data:`hmc.decoding.DECODERS`), with
            ``decoder_kwargs`` as its options.

    Cost: one forward pass and one backward pass per level (K + 1 passes for K levels).
    """
    check_choice("method", method, METHODS)
    check_choice("target", target, TARGETS)
    model, h, decoder_name, options, scores_mode = _unpack(predictor_or_model)
    # The predictor's probability model (e.g. calibration temperatures), where it has one.
    probability_options = {
        k: getattr(predictor_or_model, k)
        for k in ("probabilities", "temperatures")
        if getattr(predictor_or_model, k, None) is not None
    }
    if decoder is not None:
        decoder_name, options = decoder, {}
    options.update(decoder_kwargs or {})
    if images.ndim != 4:
        raise ValueError(f"Expected `images` of shape [B, C, H, W], got {list(images.shape)}")
    if node is not None:
        col = node_column(h, node)
        level_list: tuple[int, ...] = (h.level(col),)
    else:
        col = None
        level_list = tuple(h.level_number(d) for d in (levels or range(1, h.num_levels + 1)))
    layer = _resolve_layer(model, target_layer)
    score_kind = str(model.head.score_kind)
    param = next(model.parameters())
    x = images.detach().to(param.device, param.dtype).requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with _torchcam_methods()[method](model, target_layer=layer) as cam, torch.enable_grad():
            out = model(x)  # (B, 3, H, W) -> HeadOutput(node_scores (B, N), ...)
            with torch.no_grad():
                dec = decode(
                    h,
                    out,
                    decoder_name,
                    score_kind=score_kind,
                    scores=scores_mode,
                    **probability_options,
                    **options,
                )
            y = out.node_scores.float()
            if target == "probability":
                y = node_probabilities(
                    h, out, score_kind=score_kind, scores=scores_mode, **probability_options
                ).float()
            b = x.shape[0]
            maps, nodes = [], []
            for k, d in enumerate(level_list):
                cols = torch.full((b,), col) if col is not None else dec.nodes[:, d - 1].cpu()
                (cam_map,) = cam(
                    class_idx=cols.clamp_min(0).tolist(),
                    scores=y,
                    retain_graph=k < len(level_list) - 1,
                )  # (B, h', w')
                up = F.interpolate(cam_map[:, None].float(), size=x.shape[-2:], mode="bilinear")
                maps.append(torch.where(cols[:, None, None].to(up.device) >= 0, up[:, 0], 0.0))
                nodes.append(cols)
    finally:
        model.train(was_training)
    node_t = torch.stack(nodes, 1)  # [B, K]
    probs = dec.node_probs.cpu().gather(1, node_t.clamp_min(0))
    probs = torch.where(node_t >= 0, probs, 0.0)
    maps_t = torch.stack(maps, 1).clamp_(0.0, 1.0).cpu()  # [B, K, H, W]
    return Explanation(maps_t, node_t, probs, level_list)


# --------------------------------------------------------------------------- display
def _mean_std(transform: Any) -> tuple[Tensor, Tensor] | None:
    """Normalisation constants found inside a (nested) torchvision/timm transform."""
    stack = [transform]
    while stack:
        t = stack.pop()
        mean, std = getattr(t, "mean", None), getattr(t, "std", None)
        if mean is not None and std is not None:
            return torch.as_tensor(mean).float(), torch.as_tensor(std).float()
        stack.extend(reversed(list(getattr(t, "transforms", []) or [])))
    return None


def to_display(images: Tensor, transform: Any = None) -> list[Image.Image]:
    """Transformed images [B, 3, H, W] -> B RGB PIL images of what the model saw: the
    transform's normalisation undone if found in ``transform``, else each image stretched to
    its own min..max. Grey images [B, 1, H, W] come out as grey RGB."""
    x = images.detach().float().cpu()
    ms = _mean_std(transform) if transform is not None else None
    if ms is not None:
        x = x * ms[1][:, None, None] + ms[0][:, None, None]
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-8)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).convert("RGB") for a in u8]


def overlay(image: Image.Image, cam_map: Tensor, alpha: float = 0.5) -> Image.Image:
    """The map [H, W] in [0, 1] as a jet heat map over ``image`` (torchcam's overlay_mask)."""
    from torchcam.utils import overlay_mask

    mask = Image.fromarray(cam_map.detach().float().cpu().numpy(), mode="F")
    return overlay_mask(image.convert("RGB"), mask, alpha=alpha)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_explanation(
    hierarchy: Hierarchy,
    image: Image.Image,
    maps: Tensor,
    nodes: Tensor,
    probs: Tensor,
    levels: Sequence[int],
) -> Image.Image:
    """One image's explanation as a picture: the photo, then one overlay per level, each
    titled with the level, the node's name and its probability. maps: [K, H, W]; nodes,
    probs: [K]. Panels are the image's size, enlarged to at least :data:`PANEL_PX` on the
    longer side (small model inputs stay legible)."""
    scale = max(1.0, PANEL_PX / max(image.size))
    w, h = round(image.size[0] * scale), round(image.size[1] * scale)
    font_size = max(10, min(16, w // 14))
    font, band = _font(font_size), 2 * font_size + 10
    panels = [(image, "input", "")]
    for m, c, p, d in zip(maps, nodes.tolist(), probs.tolist(), levels, strict=True):
        level = hierarchy.level_names[d - 1]
        if c < 0:
            panels.append((image, level, "(decoder stopped)"))
        else:
            panels.append((overlay(image, m), level, f"{hierarchy.name(c)} {p:.2f}"))
    pad = 4
    canvas = Image.new("RGB", (len(panels) * (w + pad) + pad, h + band + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, line1, line2) in enumerate(panels):
        x0 = pad + i * (w + pad)
        draw.text((x0, 3), _fit(draw, line1, font, w), fill=(90, 90, 90), font=font)
        draw.text((x0, font_size + 6), _fit(draw, line2, font, w), fill="black", font=font)
        canvas.paste(img.resize((w, h), Image.Resampling.BILINEAR), (x0, band))
    return canvas


def explain_files(
    predictor: Any,
    paths: Sequence[str | Path] | str | Path,
    *,
    batch_size: int = 8,
    **explain_kwargs: Any,
) -> list[tuple[Path, Image.Image, Explanation]]:
    """``(file, what the model saw, its one-image Explanation)`` for image files and folders
    (searched recursively), read with the predictor's evaluation transform."""
    from hmc.data import list_images
    from hmc.files import predict_images  # the one bad-image loop; raise mode: rows are ours

    transform = getattr(predictor, "transform", None)
    if transform is None:
        raise ValueError("the predictor has no transform; load it with hmc.load_model")

    def explained(batch: list[Tensor], names: list[str]) -> list[tuple[Path, Image.Image, Any]]:
        x = torch.stack(batch)
        e = explain(predictor, x, **explain_kwargs)
        shown = to_display(x, transform)
        return [
            (Path(f), s, e.for_image(i)) for i, (f, s) in enumerate(zip(names, shown, strict=True))
        ]

    return predict_images(
        list_images(paths), lambda img: transform(img.convert("RGB")), explained, (), batch_size
    )


def strip_titles(hierarchy: Hierarchy, e: Explanation) -> list[str]:
    """Captions ``"<level>: <name> <prob>"`` for each level of a one-image Explanation."""
    out = []
    for c, p, d in zip(e.nodes.tolist(), e.probs.tolist(), e.levels, strict=True):
        level = hierarchy.level_names[d - 1]
        out.append(f"{level}: {hierarchy.name(c)} {p:.2f}" if c >= 0 else f"{level}: -")
    return out


def write_explanations(
    predictor: Any,
    paths: Sequence[str | Path] | str | Path,
    output: str | Path,
    *,
    batch_size: int = 8,
    **explain_kwargs: Any,
) -> list[Path]:
    """Write one PNG per image file to the folder ``output`` (:func:`render_explanation`:
    the photo and one titled overlay per level), named after the image (``a.jpg`` ->
    ``a.png``; ``a_2.png``... when names repeat). Returns the files written."""
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    taken: set[str] = set()
    h = predictor.hierarchy
    for f, shown, e in explain_files(predictor, paths, batch_size=batch_size, **explain_kwargs):
        stem, k = f.stem, 1
        while stem in taken:
            k += 1
            stem = f"{f.stem}_{k}"
        taken.add(stem)
        target = out_dir / f"{stem}.png"
        render_explanation(h, shown, e.maps, e.nodes, e.probs, e.levels).save(target)
        written.append(target)
    return written
