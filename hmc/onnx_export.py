"""``hmc export``: one self-describing ONNX file from an hmc checkpoint (:func:`export`).

Input ``images`` [B, 3, S, S] float32 (B dynamic, S fixed by the checkpoint's evaluation
transform). Two modes (``decode_in_graph``, recorded in the metadata):

- default (False): the graph is the model alone and outputs the head's raw outputs,
  ``node_scores`` [B, N] and, where the head has them, ``leaf_logits`` [B, L] float32;
  :mod:`hmc.onnx_predictor` decodes them in numpy (:mod:`hmc.numpy_decoding`, the rules of
  :mod:`hmc.decoding`), with the stored decoder or one chosen at predict time.
- True: the graph is :class:`hmc.Predictor`'s whole computation, traced by
  ``torch.onnx.export`` (dynamo): the model, the calibration and :func:`hmc.decoding.decode`
  with the decoder fixed at export; outputs ``nodes`` [B, D] int64, ``probs`` [B, D] and
  ``node_probs`` [B, N] float32 (see :class:`hmc.decoding.Decoded`).

The metadata entry ``"hmc"`` (JSON) holds what :class:`hmc.onnx_predictor.OnnxPredictor` needs:
the format, the hmc version, the hierarchy (``to_dict()``) and its fingerprint, the decoder and
its ``decoder_kwargs``, ``score_kind``, ``scores`` and ``probabilities``, the calibration if
any, ``decode_in_graph`` and the output names, the model config, and the evaluation transform
spelled out as resize / centre crop / interpolation / mean / std. Needs the ``export`` extra
(onnx, onnxscript); checking the file needs onnxruntime.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hmc.decoding import check_decoder
from hmc.onnx_predictor import (
    DECODED_OUTPUTS,
    FORMAT,
    INPUT,
    METADATA_KEY,
    RAW_OUTPUTS,
    OnnxPredictor,
    hmc_version,
    preprocess,
)
from hmc.predict import Predictor, load_model

__all__ = ["ExportError", "export", "transform_spec"]


class ExportError(RuntimeError):
    """A model that cannot be exported; the message names the module that failed."""


def transform_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The evaluation transform of a checkpoint's ``transform`` entry (the keyword arguments of
    :func:`hmc.data.transforms.build_transforms`) spelled out for
    :func:`hmc.onnx_predictor.preprocess`: ``resize``, ``resize_mode``, ``crop``,
    ``interpolation``, ``mean``, ``std`` (and ``config``, the entry itself)."""
    from hmc.data.transforms import HALF, PAPER_CROP, PAPER_RESIZE, default_image_size

    unknown = sorted(set(config) - {"preset", "image_size", "data_config"})
    if unknown:
        raise ExportError(
            f"the evaluation transform {config} has options {unknown} that the ONNX "
            "predictor cannot reproduce (it knows preset, image_size and data_config)"
        )
    preset = config.get("preset", "paper")
    size = int(config.get("image_size") or default_image_size(preset))
    spec: dict[str, Any] = {"config": dict(config), "crop": size}
    if preset == "paper":
        spec.update(resize=round(size * PAPER_RESIZE / PAPER_CROP), resize_mode="square")
        spec.update(interpolation="bilinear", mean=list(HALF), std=list(HALF))
    elif preset == "small":
        spec.update(resize=size, resize_mode="square", interpolation="bilinear")
        spec.update(mean=list(HALF), std=list(HALF))
    else:
        spec.update(_timm_spec(config.get("data_config"), config.get("image_size")))
    return spec


def _timm_spec(data_config: dict[str, Any] | None, image_size: int | None) -> dict[str, Any]:
    """timm's evaluation transform (``transforms_imagenet_eval``) as a spec."""
    from timm.data import resolve_data_config
    from timm.data.constants import DEFAULT_CROP_PCT

    cfg = dict(resolve_data_config(args=dict(data_config or {"input_size": (3, 224, 224)})))
    if image_size is not None:
        cfg["input_size"] = (3, int(image_size), int(image_size))
    h, w = cfg["input_size"][-2:]
    mode = cfg.get("crop_mode") or "center"
    if h != w or mode not in ("center", "squash"):
        raise ExportError(
            f"the evaluation transform (timm data config {cfg}) is not reproducible by the "
            "ONNX predictor: it needs a square input_size and crop_mode 'center' or 'squash'"
        )
    scale = math.floor(h / (cfg.get("crop_pct") or DEFAULT_CROP_PCT))
    return {
        "crop": int(h),
        "resize": scale,
        "resize_mode": "square" if mode == "squash" else "shorter",
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
    }


class _Raw(nn.Module):
    """The model's raw outputs as a tuple: the graph of the default mode."""

    def __init__(self, predictor: Predictor, leaf_logits: bool):
        super().__init__()
        self.model = predictor.model
        self.leaf_logits = leaf_logits

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return (out.node_scores, out.leaf_logits) if self.leaf_logits else (out.node_scores,)


class _Deployed(nn.Module):
    """``predictor(images)`` as a module: the graph of ``decode_in_graph=True``."""

    def __init__(self, predictor: Predictor, decoder: str, decoder_kwargs: dict[str, Any]):
        super().__init__()
        self.model = predictor.model
        self.predictor = predictor
        self.decoder = decoder
        self.decoder_kwargs = decoder_kwargs

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Predictor.__call__ runs in inference mode, whose tensors torch.export cannot trace.
        call = type(self.predictor).__call__
        call = getattr(call, "__wrapped__", call)
        d = call(self.predictor, images, self.decoder, self.decoder_kwargs)
        return d.nodes, d.probs, d.node_probs  # [B, D], [B, D], [B, N]


def export(
    checkpoint: str | Path | Predictor,
    output: str | Path,
    *,
    decoder: str | None = None,
    decoder_kwargs: dict[str, Any] | None = None,
    transform_kwargs: dict[str, Any] | None = None,
    decode_in_graph: bool = False,
    check: bool = True,
) -> Path:
    """Write ``checkpoint`` as one self-describing ONNX file (see the module docstring).

    Args:
        checkpoint: an hmc ``.ckpt`` (``hmc fit``), or a :class:`hmc.Predictor`.
        output: the ``.onnx`` file to write.
        decoder, decoder_kwargs: the file's decoder; default the checkpoint's (with its
            options). With ``decode_in_graph`` the only one the file can use, else the
            predictor's default (another can be chosen at predict time).
        transform_kwargs: the evaluation transform (``build_transforms`` keywords), if the
            checkpoint has none or another is wanted.
        decode_in_graph: export the decoding into the graph (outputs ``nodes``, ``probs``,
            ``node_probs``) instead of the head's raw outputs (module docstring).
        check: run ``onnx.checker`` and compare :class:`hmc.onnx_predictor.OnnxPredictor` on
            the file with the PyTorch predictor on a few images (same nodes, probabilities
            within 1e-4); raise if they differ.

    Returns:
        The path written.

    Raises:
        ExportError: the model cannot be traced (the message names the module that failed) or
            its transform cannot be reproduced without torch.
    """
    import onnx

    source = "the predictor" if isinstance(checkpoint, Predictor) else repr(str(checkpoint))
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_model(checkpoint)
    predictor.to("cpu")
    # Predictor's own rule: its decoder keeps its options, another decoder starts from defaults.
    if decoder is None or decoder == predictor.decoder:
        decoder, decoder_kwargs = (
            predictor.decoder,
            {**predictor.decoder_kwargs, **(decoder_kwargs or {})},
        )
    decoder_kwargs = check_decoder(decoder, decoder_kwargs)
    tcfg = dict(transform_kwargs if transform_kwargs is not None else predictor.transform_config)
    if not tcfg:
        raise ExportError(
            f"{source} has no evaluation transform; pass transform_kwargs (e.g. "
            "{'preset': 'imagenet', 'image_size': 224})"
        )
    spec = transform_spec(tcfg)
    size = spec["crop"]
    x = _probe_images(size)
    with torch.no_grad():
        has_leaf = predictor.model(x).leaf_logits is not None
    if decode_in_graph:
        wrapper: nn.Module = _Deployed(predictor, decoder, decoder_kwargs).eval()
        outputs = list(DECODED_OUTPUTS)
    else:
        wrapper = _Raw(predictor, has_leaf).eval()
        outputs = list(RAW_OUTPUTS[: 2 if has_leaf else 1])
    decoding = f"the decoding (decoder {decoder!r})" if decode_in_graph else None
    with torch.no_grad():
        wrapper(x)  # builds the hierarchy's index tensors outside the trace
        program = _trace(wrapper, x, source, outputs, decoding)
    meta = _metadata(predictor, decoder, decoder_kwargs, spec)
    meta.update(decode_in_graph=bool(decode_in_graph), outputs=outputs)
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(output))
    if check:
        onnx.checker.check_model(str(output), full_check=True)
        _check_transform(tcfg, spec)
        _check_against_torch(output, predictor, decoder, decoder_kwargs, size)
    return output


def _probe_images(size: int, batch: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g)


def _trace(wrapper: nn.Module, x: Tensor, source: str, outputs: list[str], decoding: str | None):
    batch = torch.export.Dim("batch", min=1)
    kwargs = dict(
        input_names=[INPUT],
        output_names=outputs,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(wrapper, (x,), None, **kwargs)
    except Exception as err:
        name, module = _failing_module(wrapper, x, decoding)
        raise ExportError(
            f"cannot export {source} to ONNX: {name} ({type(module).__name__}) cannot be "
            f"traced by torch.onnx.export: {_root_cause(err)}"
        ) from err


def _root_cause(err: BaseException) -> str:
    """First line of the innermost chained exception (torch.onnx wraps the real one), plain."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _exports(module: nn.Module, args: tuple[Any, ...]) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, None, dynamo=True, verbose=False)
        return True
    except Exception:
        return False


def _failing_module(wrapper: nn.Module, x: Tensor, decoding: str | None) -> tuple[str, Any]:
    """The deepest module of ``wrapper.model`` that fails to export on its own with the inputs
    it got in an eager forward: ``"module 'head.levels.0'"``, or ``decoding`` (the decoding in
    the graph, with the Predictor) when the whole model exports."""
    model = wrapper.model
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, n=n: seen.setdefault(n, args))
        for n, m in model.named_modules()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if decoding is not None and _exports(model, seen[""]):
        return decoding, wrapper.predictor
    modules = dict(model.named_modules())
    name = ""
    while True:
        for sub in _runs_below(name, seen):
            if not _exports(modules[sub], seen[sub]):
                name = sub
                break
        else:
            return f"module {name or 'model'!r}", modules[name]


def _runs_below(name: str, seen: dict[str, Any]) -> list[str]:
    """The modules run inside module ``name`` with no other run module between (containers
    such as ModuleList are never called, so their members count as direct)."""
    prefix = f"{name}." if name else ""
    below = [n for n in seen if n.startswith(prefix) and n != name]
    return [n for n in below if not any(n.startswith(f"{m}.") for m in below if m != n)]


def _metadata(
    predictor: Predictor, decoder: str, decoder_kwargs: dict[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    h = predictor.hierarchy
    calibration = getattr(predictor, "calibration", None)
    return {
        "format": FORMAT,
        "hmc_version": hmc_version(),
        "torch_version": torch.__version__,
        "hierarchy": h.to_dict(),
        "fingerprint": h.fingerprint(),
        "decoder": decoder,
        "decoder_kwargs": decoder_kwargs,
        "score_kind": predictor.score_kind,
        "scores": predictor.scores,
        "probabilities": predictor.probabilities,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "model_config": predictor.model.config,
        "transform": spec,
        "input": INPUT,
    }


def _check_transform(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The torch transform and :func:`preprocess` agree on two probe images (portrait and
    landscape), else the predictor would see other pixels than evaluation did."""
    from PIL import Image

    from hmc.data.transforms import build_transforms

    tf = build_transforms(**{**config, "train": False})
    rng = np.random.default_rng(0)
    for shape in ((53, 37, 3), (41, 67, 3)):
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        ref = tf(img).numpy()
        got = preprocess(img, spec)
        if ref.shape != got.shape or not np.allclose(ref, got, atol=1e-4):
            raise ExportError(
                f"the ONNX predictor's preprocessing {spec} does not reproduce the evaluation "
                f"transform {config} (max difference "
                f"{np.abs(ref - got).max() if ref.shape == got.shape else ref.shape})"
            )


def _check_against_torch(
    path: Path, predictor: Predictor, decoder: str, decoder_kwargs: dict[str, Any], size: int
) -> None:
    """The file, run by :class:`OnnxPredictor`, decodes probe images as the PyTorch predictor."""
    x = _probe_images(size, batch=3)
    got = OnnxPredictor(path, threads=1)(x.numpy())
    ref = predictor(x, decoder, decoder_kwargs)
    same_nodes = np.array_equal(got.nodes, ref.nodes.numpy())
    pairs = [(got.probs, ref.probs), (got.node_probs, ref.node_probs)]
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in pairs)
    if not same_nodes or diff > 1e-4:
        raise ExportError(
            f"{str(path)!r}: ONNX Runtime and PyTorch disagree on probe images (nodes equal: "
            f"{same_nodes}, max probability difference {diff:.2g})"
        )
